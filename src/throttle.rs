//! Failed-credential throttling: per client address, a GCRA token bucket
//! (the `governor` crate) that counts only failed credential checks.
//!
//! An address over its limit gets 429 for every request to a protected route
//! until the bucket has room again — even with a valid key, or a brute-forcer
//! could tell a hit from a miss. Successful checks never consume the bucket,
//! and other addresses are unaffected. IPv6 clients are grouped by /64 (one
//! host usually owns a whole /64).
//!
//! Memory is bounded: the bucket states live in a fixed-size, set-associative
//! table (16 bytes an address, allocated at the first failure; when an
//! address's set is full, the least recently failed of its four is replaced),
//! and the addresses currently over the limit in a fixed-capacity LRU map.

use std::net::IpAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use governor::clock::{Clock, MonotonicClock};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::{Quota, RateLimiter};
use lru::LruCache;
use prometheus_client::metrics::gauge::Gauge;

/// Rate, burst and table size of the failed-credential limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Failures replenished per `period`.
    pub failures: NonZeroU32,
    /// The period over which `failures` are replenished.
    pub period: Duration,
    /// Failures allowed in a burst.
    pub burst: NonZeroU32,
    /// Most client addresses tracked at once.
    pub capacity: NonZeroUsize,
}

/// Default table size: 65 536 addresses (a few MiB at most).
pub const DEFAULT_CAPACITY: NonZeroUsize = NonZeroUsize::new(65_536).expect("non-zero");

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            failures: NonZeroU32::new(10).expect("non-zero"),
            period: Duration::from_secs(1),
            burst: NonZeroU32::new(50).expect("non-zero"),
            capacity: DEFAULT_CAPACITY,
        }
    }
}

impl ThrottleConfig {
    /// Parses `N/s`, `N/m` or `N/h` (a rate); `off` is handled by the caller.
    pub fn parse_rate(s: &str) -> Result<(NonZeroU32, Duration), String> {
        let (n, unit) = s
            .trim()
            .split_once('/')
            .ok_or_else(|| format!("{s:?}: write a rate like 10/s, 30/m or 100/h, or off"))?;
        let n: NonZeroU32 = n
            .trim()
            .parse()
            .map_err(|_| format!("{s:?}: the count must be a whole number from 1"))?;
        let period = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            other => return Err(format!("{s:?}: unknown unit {other:?} (use s, m or h)")),
        };
        Ok((n, period))
    }
}

/// The key of a client: its IPv4 address, or its IPv6 /64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientKey(u128);

impl From<IpAddr> for ClientKey {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => ClientKey(u128::from(u32::from(v4))),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientKey(u128::from(u32::from(v4))),
                // The low 64 bits are zero after masking; bit 32 marks IPv6, so no
                // /64 can equal an IPv4 key (all below 2^32).
                None => ClientKey((u128::from(v6) & (u128::MAX << 64)) | (1 << 32)),
            },
        }
    }
}

/// A fixed-capacity LRU table. The map grows on demand (an idle server holds
/// no table memory) and never past `capacity`: the least recently used entry
/// is evicted first.
struct Bounded<V> {
    map: Mutex<LruCache<ClientKey, V>>,
    capacity: usize,
}

impl<V> Bounded<V> {
    fn new(capacity: NonZeroUsize) -> Self {
        Bounded {
            map: Mutex::new(LruCache::unbounded()),
            capacity: capacity.get(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<ClientKey, V>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Inserts `key` (not in `map`), first evicting the least recently used
/// entries down to `capacity - 1`.
fn bounded_put<V>(map: &mut LruCache<ClientKey, V>, capacity: usize, key: ClientKey, value: V) {
    while map.len() >= capacity {
        map.pop_lru();
    }
    map.put(key, value);
}

/// The limiter's bucket states, a fixed-size table with constant work per
/// failure whatever it holds.
///
/// 4-way set-associative: an address's set (two cache lines: four tags, then
/// four states) is chosen by a hash keyed at random per process, so no client
/// can aim at a set. A new address takes a free way, or else the way whose
/// state has the earliest theoretical arrival time — the bucket nearest to
/// full again, the least recently failed (an expired state is the same as no
/// state, so evicting it changes nothing). The table is allocated zeroed at the
/// first failure (16 bytes an address; pages the kernel maps as they are
/// touched) and never grows: no allocation and no eviction chain per request,
/// which an LRU list paid in cache misses once full (`benches/throttle.rs`).
struct StateTable {
    inner: Mutex<Table>,
    hasher: std::collections::hash_map::RandomState,
    sets: usize,
    /// Set to the number of tracked addresses after each insertion.
    gauge: OnceLock<Gauge>,
}

struct Table {
    /// Per set: 4 tags (0 = free), then 4 states (`Nanos`). Empty until the
    /// first failure.
    words: Vec<u64>,
    len: usize,
}

const WAYS: usize = 4;

impl StateTable {
    fn new(capacity: NonZeroUsize) -> Self {
        StateTable {
            inner: Mutex::new(Table {
                words: Vec::new(),
                len: 0,
            }),
            hasher: std::collections::hash_map::RandomState::new(),
            sets: capacity.get().div_ceil(WAYS),
            gauge: OnceLock::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn len(&self) -> usize {
        self.lock().len
    }

    /// The index of `key`'s set (first word) and its tag (never 0).
    fn locate(&self, key: &ClientKey) -> (usize, u64) {
        use std::hash::BuildHasher;
        let hash = self.hasher.hash_one(key);
        // Multiply-shift onto 0..sets (no power of two needed); fits in usize.
        let set = ((u128::from(hash) * self.sets as u128) >> 64) as usize;
        (set * 2 * WAYS, hash | 1)
    }
}

impl StateStore for StateTable {
    type Key = ClientKey;

    fn measure_and_replace<T, F, E>(&self, key: &ClientKey, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let (base, tag) = self.locate(key);
        let mut table = self.lock();
        if table.words.is_empty() {
            // Zeroed: large enough that the allocator maps fresh pages.
            table.words = vec![0; self.sets * 2 * WAYS];
        }
        let Table { words, len } = &mut *table;
        let set = &mut words[base..base + 2 * WAYS];
        let (tags, states) = set.split_at_mut(WAYS);
        if let Some(way) = tags.iter().position(|&t| t == tag) {
            let (result, next) = f(Some(Nanos::from(states[way])))?;
            states[way] = next.as_u64();
            return Ok(result);
        }
        let (result, next) = f(None)?;
        let way = match tags.iter().position(|&t| t == 0) {
            Some(free) => {
                *len += 1;
                if let Some(gauge) = self.gauge.get() {
                    gauge.set(i64::try_from(*len).unwrap_or(i64::MAX));
                }
                free
            }
            // The earliest theoretical arrival time: the most recovered bucket.
            None => (0..WAYS).min_by_key(|&w| states[w]).unwrap_or(0),
        };
        tags[way] = tag;
        states[way] = next.as_u64();
        Ok(result)
    }
}

/// The table as governor's store, shared with [`Throttle`] (for its size).
struct SharedStates(Arc<StateTable>);

impl StateStore for SharedStates {
    type Key = ClientKey;

    fn measure_and_replace<T, F, E>(&self, key: &ClientKey, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        self.0.measure_and_replace(key, f)
    }
}

/// The failed-credential limiter.
pub struct Throttle {
    limiter: RateLimiter<ClientKey, SharedStates, MonotonicClock, NoOpMiddleware<Instant>>,
    clock: MonotonicClock,
    /// The limiter's bucket states (shared with it), for sizing.
    states: Arc<StateTable>,
    /// Addresses over the limit, with the instant they may try again.
    blocked: Bounded<Instant>,
    /// Entries in `blocked`: lets the common case skip the lock entirely.
    blocked_len: AtomicUsize,
}

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttle")
            .field("blocked", &self.blocked_len.load(Relaxed))
            .finish()
    }
}

impl Throttle {
    /// Builds the limiter.
    pub fn new(config: ThrottleConfig) -> Self {
        let per_cell = config.period / config.failures.get();
        let quota = Quota::with_period(per_cell.max(Duration::from_nanos(1)))
            .expect("the period is at least one nanosecond")
            .allow_burst(config.burst);
        let states = Arc::new(StateTable::new(config.capacity));
        let clock = MonotonicClock;
        Throttle {
            limiter: RateLimiter::new(quota, SharedStates(states.clone()), clock.clone()),
            clock,
            states,
            blocked: Bounded::new(config.capacity),
            blocked_len: AtomicUsize::new(0),
        }
    }

    /// Keeps `gauge` set to the number of tracked addresses.
    pub fn report_tracked(&self, gauge: Gauge) {
        gauge.set(i64::try_from(self.tracked()).unwrap_or(i64::MAX));
        let _ = self.states.gauge.set(gauge);
    }

    /// Number of client addresses whose bucket is tracked.
    pub fn tracked(&self) -> usize {
        self.states.len()
    }

    /// If `ip` is over its limit now, how long until it may try again.
    #[inline]
    pub fn blocked(&self, ip: IpAddr) -> Option<Duration> {
        if self.blocked_len.load(Relaxed) == 0 {
            return None;
        }
        let key = ClientKey::from(ip);
        let mut blocked = self.blocked.lock();
        let until = *blocked.peek(&key)?;
        let now = Instant::now();
        if until > now {
            return Some(until - now);
        }
        blocked.pop(&key);
        self.blocked_len.store(blocked.len(), Relaxed);
        None
    }

    /// Records a failed credential check. Returns the wait when this failure
    /// is over the limit (the address is then blocked for that long).
    pub fn record_failure(&self, ip: IpAddr) -> Option<Duration> {
        let key = ClientKey::from(ip);
        let not_until = self.limiter.check_key(&key).err()?;
        let wait = not_until.wait_time_from(self.clock.now());
        let mut blocked = self.blocked.lock();
        let until = Instant::now() + wait;
        match blocked.get_mut(&key) {
            Some(entry) => *entry = until,
            None => bounded_put(&mut blocked, self.blocked.capacity, key, until),
        }
        self.blocked_len.store(blocked.len(), Relaxed);
        Some(wait)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn config(failures: u32, period: Duration, burst: u32, capacity: usize) -> ThrottleConfig {
        ThrottleConfig {
            failures: NonZeroU32::new(failures).unwrap(),
            period,
            burst: NonZeroU32::new(burst).unwrap(),
            capacity: NonZeroUsize::new(capacity).unwrap(),
        }
    }

    #[test]
    fn burst_then_blocked_other_ips_unaffected() {
        let t = Throttle::new(config(1, Duration::from_secs(60), 3, 100));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(t.blocked(a), None);
            assert_eq!(t.record_failure(a), None);
        }
        let wait = t.record_failure(a).unwrap();
        assert!(
            wait > Duration::from_secs(30) && wait <= Duration::from_secs(60),
            "{wait:?}"
        );
        assert!(t.blocked(a).is_some());
        assert_eq!(t.blocked(b), None);
        assert_eq!(t.record_failure(b), None);
    }

    #[test]
    fn ipv6_is_grouped_by_64_and_mapped_v4_is_v4() {
        let k = |s: &str| ClientKey::from(s.parse::<IpAddr>().unwrap());
        assert_eq!(k("2001:db8:1:2::1"), k("2001:db8:1:2:ffff::9"));
        assert_ne!(k("2001:db8:1:2::1"), k("2001:db8:1:3::1"));
        assert_eq!(k("::ffff:127.0.0.1"), k("127.0.0.1"));
        assert_ne!(k("::1"), k("0.0.0.1"));
    }

    #[test]
    fn memory_is_bounded_and_oldest_evicted() {
        let t = Throttle::new(config(1, Duration::from_secs(3600), 1, 8));
        for i in 0..1000u32 {
            let ip = IpAddr::from(i.to_be_bytes());
            t.record_failure(ip);
            t.record_failure(ip);
        }
        assert_eq!(t.tracked(), 8);
        assert!(t.blocked.lock().len() <= 8);
        // The newest addresses are still blocked; the oldest were evicted.
        assert!(t.blocked(IpAddr::from(999u32.to_be_bytes())).is_some());
        assert!(t.blocked(IpAddr::from(0u32.to_be_bytes())).is_none());
    }

    #[test]
    fn a_full_set_replaces_its_least_recently_failed_address() {
        // Capacity 4: one set, so every address competes for its four ways.
        let t = Throttle::new(config(1, Duration::from_secs(3600), 2, 4));
        let ip = |i: u8| IpAddr::from([10, 0, 0, i]);
        for i in 1..=4 {
            assert_eq!(t.record_failure(ip(i)), None);
            assert_eq!(t.record_failure(ip(i)), None);
        }
        assert_eq!(t.tracked(), 4);
        // A fifth address takes the way of the first (the earliest failures).
        assert_eq!(t.record_failure(ip(5)), None);
        assert_eq!(t.tracked(), 4);
        // The first starts over with a full burst; the second kept its state.
        assert_eq!(t.record_failure(ip(1)), None);
        assert!(t.record_failure(ip(2)).is_some());
    }

    #[test]
    fn the_gauge_follows_the_table() {
        let t = Throttle::new(config(1, Duration::from_secs(3600), 5, 8));
        let gauge = Gauge::default();
        t.report_tracked(gauge.clone());
        assert_eq!(gauge.get(), 0);
        for i in 0..3u32 {
            t.record_failure(IpAddr::from(i.to_be_bytes()));
        }
        assert_eq!(gauge.get(), 3);
        for i in 0..100u32 {
            t.record_failure(IpAddr::from(i.to_be_bytes()));
        }
        assert_eq!(gauge.get(), 8);
    }

    #[test]
    fn rates_parse() {
        assert_eq!(
            ThrottleConfig::parse_rate("10/s").unwrap(),
            (NonZeroU32::new(10).unwrap(), Duration::from_secs(1))
        );
        assert_eq!(
            ThrottleConfig::parse_rate("30/m").unwrap().1,
            Duration::from_secs(60)
        );
        assert!(ThrottleConfig::parse_rate("0/s").is_err());
        assert!(ThrottleConfig::parse_rate("10").is_err());
        assert!(ThrottleConfig::parse_rate("10/d").is_err());
    }
}
