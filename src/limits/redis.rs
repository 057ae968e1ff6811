//! The Redis store (`--limits-store redis://…`): one script call per
//! admitted request applies an owner's rate and quota atomically on Redis's
//! own clock, so every replica counts against the same counters. Each call is
//! bounded by `--limits-store-timeout`; a failed or late call marks the store
//! down, and until a probe (`PING`, every [`PROBE_EVERY`]) succeeds requests
//! follow `--limits-store-failure`: the per-process counters (`local`), admit
//! (`open`) or 503 (`closed`). No call waits on a store known to be down.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tracing::warn;

use super::counters::{Checked, Limiter};
use super::period::{Period, Verdict};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

/// How often a down store is probed.
pub(crate) const PROBE_EVERY: Duration = Duration::from_millis(500);
/// At most one WARN a minute about the store.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// `--limits-store-failure`: what requests get while the store is down.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Failure {
    /// Per-process counters until the store is back.
    Local,
    /// Admit.
    Open,
    /// 503 `{"detail":"Service Unavailable"}` with `retry-after: 1`.
    Closed,
}

/// Why the store URL was refused (never the URL itself: it may hold a password).
#[derive(Debug, thiserror::Error)]
#[error("not a Redis URL (redis://[user:password@]host:port[/db], rediss://…, redis+unix:///path)")]
pub struct StoreUrlError;

/// Most failed-check calls in flight at once (a flood past it keeps only the
/// per-process throttle: no unbounded pile of tasks).
const MAX_FAILURE_CALLS: usize = 256;
/// Client addresses the store found throttled, remembered at most.
const BLOCKED_CAPACITY: usize = 65_536;

/// The `kind` label of `tokengate_limits_store_errors_total`: a failed call
/// timed out, lost its connection, was refused its password, got an error
/// from Redis, got an answer the script does not give, or anything else.
pub(crate) const STORE_ERROR_KINDS: [&str; 6] =
    ["timeout", "io", "auth", "server", "reply", "other"];

/// The limits store's series (with `--limits-store redis://…` only).
#[derive(Clone, Debug)]
pub(crate) struct StoreMetrics {
    /// 1 while calls succeed, 0 from a failure until a probe answers.
    pub(crate) up: Gauge,
    /// Calls by result: `ok`, `error`, `timeout`.
    pub(crate) calls: [Counter; 3],
    /// Failed calls by kind, in the order of [`STORE_ERROR_KINDS`].
    pub(crate) errors: [Counter; 6],
    /// Time a call took (successful ones).
    pub(crate) duration: Histogram,
}

/// The Redis store.
pub(crate) struct RedisStore {
    connection: ConnectionManager,
    script: redis::Script,
    /// The failed-credential throttle, shared (`failures.lua`).
    failures: redis::Script,
    /// `--limits-store-prefix`.
    prefix: Box<str>,
    /// Addresses the store found throttled, until when (this process's clock).
    blocked: std::sync::Mutex<lru::LruCache<std::net::IpAddr, Instant>>,
    /// Failed-check calls in flight.
    failure_calls: std::sync::atomic::AtomicUsize,
    timeout: Duration,
    failure: Failure,
    up: AtomicBool,
    /// A probe task is running.
    probing: AtomicBool,
    /// When the last WARN was written (milliseconds since `epoch`; 0: never).
    warned: AtomicU64,
    epoch: Instant,
    metrics: Option<StoreMetrics>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the URL: it may hold a password.
        f.debug_struct("RedisStore")
            .field("timeout", &self.timeout)
            .field("failure", &self.failure)
            .finish_non_exhaustive()
    }
}

/// What the store says of one request.
pub(crate) enum Stored {
    /// The store decided.
    Checked(Checked),
    /// The store is down and `--limits-store-failure closed`: 503.
    Unavailable,
}

/// Whether `url` is a Redis URL the client accepts.
pub(super) fn validate(url: &str) -> Result<(), StoreUrlError> {
    redis::Client::open(url)
        .map(drop)
        .map_err(|_| StoreUrlError)
}

impl RedisStore {
    /// A store at `url`; connects on first use, and again after a failure.
    pub(crate) fn new(
        url: &str,
        prefix: &str,
        timeout: Duration,
        failure: Failure,
        metrics: Option<StoreMetrics>,
    ) -> Result<Self, StoreUrlError> {
        let client = redis::Client::open(url).map_err(|_| StoreUrlError)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout.max(Duration::from_millis(250))))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1);
        let connection =
            ConnectionManager::new_lazy_with_config(client, config).map_err(|_| StoreUrlError)?;
        Ok(RedisStore {
            connection,
            script: redis::Script::new(include_str!("limit.lua")),
            failures: redis::Script::new(include_str!("failures.lua")),
            prefix: prefix.into(),
            blocked: std::sync::Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(BLOCKED_CAPACITY).expect("non-zero"),
            )),
            failure_calls: std::sync::atomic::AtomicUsize::new(0),
            timeout,
            failure,
            up: AtomicBool::new(true),
            probing: AtomicBool::new(false),
            warned: AtomicU64::new(0),
            epoch: Instant::now(),
            metrics,
        })
    }

    /// Whether the last call (or probe) succeeded.
    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// `hits` requests against `limiter`'s owner: at most one call, bounded
    /// by the timeout; `mono`/`wall` are the local clocks for the fallback.
    pub(crate) async fn check(
        self: &Arc<Self>,
        limiter: &Limiter,
        mono: u64,
        wall: u64,
        hits: u64,
    ) -> Stored {
        if self.is_up() {
            let mut connection = self.connection.clone();
            let (interval_us, burst) = limiter
                .gcra
                .map_or((0, 0), |g| ((g.interval / 1000).max(1), g.burst));
            let (quota, period) = limiter.limits.quota.map_or((0, 0), |q| {
                let period = match q.period {
                    Period::Hour => 1,
                    Period::Day => 2,
                    Period::Month => 3,
                };
                (q.count, period)
            });
            let mut invocation = self.script.key(&*limiter.store_key);
            invocation
                .arg(interval_us)
                .arg(burst)
                .arg(quota)
                .arg(period)
                .arg(hits);
            let call = invocation.invoke_async::<[i64; 7]>(&mut connection);
            let started = Instant::now();
            match tokio::time::timeout(self.timeout, call).await {
                Ok(Ok(answer)) => {
                    if let Some(m) = &self.metrics {
                        m.calls[0].inc();
                        m.duration.observe(started.elapsed().as_secs_f64());
                    }
                    let checked = checked(limiter, answer);
                    // A refusal of several hits says nothing of fewer.
                    if hits == 1 {
                        limiter.remember(mono, &checked);
                    }
                    return Stored::Checked(checked);
                }
                Ok(Err(e)) => self.down(StoreError::of(&e)),
                Err(_) => self.down(StoreError::Timeout),
            }
        }
        match self.failure {
            Failure::Local => Stored::Checked(limiter.check(mono, wall, hits)),
            Failure::Open => Stored::Checked(limiter.checked(None, None)),
            Failure::Closed => Stored::Unavailable,
        }
    }

    /// Whether the store found `client` over the failed-credential limit,
    /// and for how much longer (no call: what earlier failures learned).
    pub(crate) fn throttled(&self, client: std::net::IpAddr) -> Option<Duration> {
        let mut blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        let until = *blocked.peek(&client)?;
        let wait = until.saturating_duration_since(Instant::now());
        if wait.is_zero() {
            blocked.pop(&client);
            return None;
        }
        Some(wait)
    }

    /// Counts a failed credential check of `client` in the store, in the
    /// background (the answer does not wait): once the store finds the
    /// address over `interval`/`burst`, this process refuses it until the
    /// wait ends, whichever replica the failures went to.
    pub(crate) fn record_failure(
        self: &Arc<Self>,
        client: std::net::IpAddr,
        interval: Duration,
        burst: u32,
    ) {
        if !self.is_up() {
            return;
        }
        if self.failure_calls.fetch_add(1, Ordering::AcqRel) >= MAX_FAILURE_CALLS {
            self.failure_calls.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let store = Arc::clone(self);
        tokio::spawn(async move {
            let key = format!("{}throttle:{{{client}}}", store.prefix);
            let interval_us = u64::try_from(interval.as_micros())
                .unwrap_or(u64::MAX)
                .max(1);
            let mut connection = store.connection.clone();
            let mut invocation = store.failures.key(key);
            invocation.arg(interval_us).arg(burst);
            let call = invocation.invoke_async::<i64>(&mut connection);
            match tokio::time::timeout(store.timeout, call).await {
                Ok(Ok(wait)) if wait > 0 => {
                    let until = Instant::now() + Duration::from_micros(wait.unsigned_abs());
                    store
                        .blocked
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .put(client, until);
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => store.down(StoreError::of(&e)),
                Err(_) => store.down(StoreError::Timeout),
            }
            store.failure_calls.fetch_sub(1, Ordering::AcqRel);
        });
    }

    /// Marks the store down after `error` and starts the probe that brings
    /// it back.
    fn down(self: &Arc<Self>, error: StoreError) {
        self.up.store(false, Ordering::Relaxed);
        if let Some(m) = &self.metrics {
            m.calls[if error == StoreError::Timeout { 2 } else { 1 }].inc();
            m.errors[error as usize].inc();
            m.up.set(0);
        }
        let now = u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let last = self.warned.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= WARN_EVERY.as_millis() as u64)
            && self
                .warned
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            warn!(
                error = error.name(),
                failure = ?self.failure,
                "limits store unreachable: requests follow --limits-store-failure until it answers again"
            );
        }
        if !self.probing.swap(true, Ordering::AcqRel) {
            let store = Arc::clone(self);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(PROBE_EVERY).await;
                    let mut connection = store.connection.clone();
                    let ping = redis::cmd("PING");
                    let answer = ping.query_async::<String>(&mut connection);
                    if let Ok(Ok(_)) = tokio::time::timeout(store.timeout, answer).await {
                        break;
                    }
                }
                store.probing.store(false, Ordering::Release);
                store.up.store(true, Ordering::Relaxed);
                if let Some(m) = &store.metrics {
                    m.up.set(1);
                }
                tracing::info!("limits store answering again");
            });
        }
    }
}

/// What went wrong with a store call (in the order of
/// [`STORE_ERROR_KINDS`]), as the `kind` of
/// `tokengate_limits_store_errors_total` and the WARN line: the kind only,
/// since an error's text can quote the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StoreError {
    /// No answer within `--limits-store-timeout`.
    Timeout,
    /// The connection failed (refused, reset, closed, TLS).
    Io,
    /// The password or user was refused.
    Auth,
    /// Redis answered with an error (busy script, loading, out of memory…).
    Server,
    /// An answer the script does not give (another program's keys?).
    Reply,
    /// Anything else the client reports.
    Other,
}

impl StoreError {
    fn of(e: &redis::RedisError) -> Self {
        use redis::ErrorKind;
        if e.is_timeout() {
            return StoreError::Timeout;
        }
        if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
            return StoreError::Io;
        }
        match e.kind() {
            ErrorKind::AuthenticationFailed => StoreError::Auth,
            ErrorKind::Server(_) | ErrorKind::Extension => StoreError::Server,
            ErrorKind::Parse | ErrorKind::UnexpectedReturnType => StoreError::Reply,
            _ => StoreError::Other,
        }
    }

    /// The label value (the variants are in the order of the names).
    fn name(self) -> &'static str {
        STORE_ERROR_KINDS[self as usize]
    }
}

/// The script's answer as a decision and its fields.
fn checked(limiter: &Limiter, a: [i64; 7]) -> Checked {
    let n = |v: i64| u64::try_from(v).unwrap_or(0);
    let rate = limiter.gcra.map(|_| {
        if a[0] == 1 {
            Verdict::Admit {
                remaining: n(a[1]),
                reset: n(a[2]),
            }
        } else {
            Verdict::Refuse {
                retry: n(a[3]).saturating_mul(1000),
            }
        }
    });
    let quota = limiter.limits.quota.map(|_| {
        if a[4] == 1 {
            Verdict::Admit {
                remaining: n(a[5]),
                reset: n(a[6]),
            }
        } else {
            Verdict::Refuse { retry: n(a[6]) }
        }
    });
    limiter.checked(rate, quota)
}
