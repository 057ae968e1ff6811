//! `serve(listener, app, limits, shutdown)`: the accept loop, the connection
//! cap, hyper-util's auto builder (HTTP/1.1 and h2c on one port) with a timer,
//! per-connection time limits, and the graceful drain with a deadline.
//!
//! # Time limits on a connection
//!
//! hyper-util's auto builder reads the protocol preface with no timer at all
//! (hyper issue #3756), and hyper's own `header_read_timeout` also runs while a
//! keep-alive connection is idle, so it cannot be combined with a longer idle
//! timeout. tokengate enforces both limits itself, with no timer work per
//! request: the socket wrapper counts reads, the service counts requests, and
//! one watchdog thread per server samples both for every connection every
//! quarter of the shorter limit, then tells a connection task what to do
//! through an atomic command and its waker. The runtime's timer wheel holds no
//! per-connection entries.
//!
//! * **Request heads** — a head is in progress from accept until the first
//!   request, and on HTTP/1 whenever bytes arrive with no new complete head.
//!   One still in progress `header_read_timeout` after it was first seen is
//!   dropped without a response. This covers protocol detection, the HTTP/2
//!   preface and slowloris dripping; the limit is enforced within 1.25× of it
//!   for the first head and 1.5× for later ones (detection waits for a tick).
//! * **Idleness** — no reads and no requests for `idle_timeout`: the connection
//!   is shut down gracefully (HTTP/1 closes, HTTP/2 gets GOAWAY); if it has not
//!   finished one tick later (a client that does not read), it is dropped.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering::Relaxed};

use atomic_waker::AtomicWaker;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::metrics::Protocol;
use crate::routes::App;
use crate::tls::Tls;

/// Limits on what clients may hold; see the README's configuration table.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Most connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Time from accept (or the first byte of a request) to a complete head.
    pub header_read_timeout: Duration,
    /// A connection with no reads and no requests for this long is closed.
    pub idle_timeout: Duration,
    /// How long the drain may take after shutdown begins.
    pub shutdown_timeout: Duration,
    /// The application's `--max-header-bytes`; hyper's own hard limits are set above it.
    pub max_header_bytes: usize,
    /// After the shutdown signal, keep accepting this long while `/readyz`
    /// already answers 503, so load balancers stop sending first.
    pub shutdown_delay: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(10),
            max_header_bytes: crate::routes::DEFAULT_MAX_HEADER_BYTES,
            shutdown_delay: Duration::ZERO,
        }
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then drains.
///
/// Draining: the listener is closed, every connection is told to finish
/// (HTTP/1 closes after the response in progress, HTTP/2 gets GOAWAY), and
/// connections still open after `limits.shutdown_timeout` are dropped.
pub async fn serve<F>(listener: TcpListener, app: Arc<App>, limits: Limits, shutdown: F)
where
    F: Future<Output = ()>,
{
    serve_with(listener, app, limits, None, shutdown).await;
}

/// [`serve`], with HTTPS when `tls` is given: each connection first completes
/// a TLS handshake (bounded by `limits.header_read_timeout`), then is served
/// exactly like a cleartext one (ALPN `h2` or `http/1.1`).
pub async fn serve_with<F>(
    listener: TcpListener,
    app: Arc<App>,
    limits: Limits,
    tls: Option<Arc<Tls>>,
    shutdown: F,
) where
    F: Future<Output = ()>,
{
    let builder = Arc::new(builder(&limits));
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let registry = Arc::new(Registry::default());
    spawn_watchdog(&registry, tick(&limits));
    let mut connections = JoinSet::new();
    let mut accept_errors = AcceptErrors::default();
    // Resolves when accepting must stop: the shutdown signal, then the
    // `--shutdown-delay` during which `/readyz` already answers 503.
    let stop = {
        let app = app.clone();
        let delay = limits.shutdown_delay;
        async move {
            shutdown.await;
            app.begin_draining();
            if !delay.is_zero() {
                info!(delay = ?delay, "shutdown signal: /readyz now answers 503; still accepting for the shutdown delay");
                tokio::time::sleep(delay).await;
            }
        }
    };
    tokio::pin!(stop);

    loop {
        // Take a slot first: past the cap, connections wait in the kernel backlog.
        let permit = tokio::select! {
            () = &mut stop => break,
            permit = permits.clone().acquire_owned() => {
                permit.expect("the semaphore is never closed")
            }
        };
        let accepted = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(ok) => ok,
            Err(e) => {
                if let Some(pause) = accept_errors.record(&e) {
                    tokio::select! {
                        () = &mut stop => break,
                        () = tokio::time::sleep(pause) => {}
                    }
                }
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        let conn = Connection {
            app: app.clone(),
            builder: builder.clone(),
            registry: registry.clone(),
            limits: limits.clone(),
            tls: tls.clone(),
            peer,
        };
        conn.spawn(&mut connections, stream, Some(permit));
    }

    app.begin_draining();
    // From here on, new connections are told to finish at once.
    registry.draining.store(true, Relaxed);
    // Connections already in this listener's queue would be reset when it
    // closes (Linux, unless net.ipv4.tcp_migrate_req=1 hands them to another
    // SO_REUSEPORT listener): accept and serve them before closing it.
    if let Ok(std_listener) = listener.into_std() {
        let _ = std_listener.set_nonblocking(true);
        while let Ok((stream, peer)) = std_listener.accept() {
            let stream = stream
                .set_nonblocking(true)
                .and_then(|()| TcpStream::from_std(stream));
            if let Ok(stream) = stream {
                let conn = Connection {
                    app: app.clone(),
                    builder: builder.clone(),
                    registry: registry.clone(),
                    limits: limits.clone(),
                    tls: tls.clone(),
                    peer,
                };
                conn.spawn(
                    &mut connections,
                    stream,
                    permits.clone().try_acquire_owned().ok(),
                );
            }
        }
    }
    while connections.try_join_next().is_some() {}
    let open = connections.len();
    info!(
        open_connections = open,
        "shutting down: stopped accepting, draining connections"
    );
    registry.drain();
    let drained = tokio::time::timeout(limits.shutdown_timeout, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            dropped_connections = connections.len(),
            timeout = ?limits.shutdown_timeout,
            "shutdown timeout reached: dropping connections still open"
        );
        connections.shutdown().await;
    }
    info!("shutdown complete");
}

/// Concurrent HTTP/2 streams per connection; more are refused (`REFUSED_STREAM`).
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 128;
/// Streams a client may reset before the server accepts them (rapid reset,
/// CVE-2023-44487); past it the connection gets GOAWAY (`ENHANCE_YOUR_CALM`).
pub const H2_MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
/// Streams the server may reset for protocol errors before it sends GOAWAY.
pub const H2_MAX_LOCAL_ERROR_RESET_STREAMS: usize = 256;

/// hyper's own limit on a request head, above the application's so that the
/// application answers with its JSON 431/414 first. A head past this gets
/// hyper's bare 431 (HTTP/1) or a stream reset (HTTP/2), and memory stays bounded.
pub fn hard_head_limit(max_header_bytes: usize) -> usize {
    2 * (max_header_bytes + crate::routes::MAX_TARGET_BYTES) + 8192
}

/// The auto builder, configured once.
fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let hard = hard_head_limit(limits.max_header_bytes);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // hyper defaults to a 30 s header timeout once a timer is set; it would
        // arm (and box) a timer per request and also run while idle. The
        // watchdog enforces --header-read-timeout instead.
        .header_read_timeout(None)
        .max_buf_size(hard)
        // 100 is hyper's default: its header arrays then live on the stack.
        // Any larger value moves them to the heap (two allocations per
        // request), so HTTP/1 heads with more fields get hyper's bare 431.
        .max_headers(crate::routes::MAX_HEADER_FIELDS);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(hard).unwrap_or(u32::MAX))
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESET_STREAMS)
        .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESET_STREAMS);
    builder
}

/// Accept errors never end the server. Per-connection errors are skipped;
/// resource errors (EMFILE, ENFILE, ENOBUFS, ENOMEM…) pause accepting briefly
/// so the loop does not spin, and are logged at most once a second.
#[derive(Default)]
struct AcceptErrors {
    last_log: Option<Instant>,
    suppressed: u64,
}

impl AcceptErrors {
    const PAUSE: Duration = Duration::from_millis(50);

    fn record(&mut self, e: &io::Error) -> Option<Duration> {
        use io::ErrorKind::*;
        if matches!(
            e.kind(),
            ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted | WouldBlock
        ) {
            debug!(error = %e, "accept: connection failed before it was accepted");
            return None;
        }
        let now = Instant::now();
        match self.last_log {
            Some(t) if now.duration_since(t) < Duration::from_secs(1) => self.suppressed += 1,
            _ => {
                warn!(error = %e, suppressed = self.suppressed, "accept failed; pausing before the next accept");
                self.last_log = Some(now);
                self.suppressed = 0;
            }
        }
        Some(Self::PAUSE)
    }
}

/// What a connection shares with the watchdog thread and the drain.
///
/// The counters have a single writer — the connection's own task (hyper calls
/// the service from the connection future for HTTP/1 and HTTP/2 alike) — so an
/// increment is a plain load and store, not a locked read-modify-write.
#[derive(Default, Debug)]
pub(crate) struct Activity {
    /// Requests whose head was complete (the service was called).
    requests: AtomicU64,
    /// Reads that returned data.
    reads: AtomicU64,
    /// Set once the connection speaks HTTP/2: frames without a new request
    /// (PING, WINDOW_UPDATE) are then activity, not a request head in progress.
    h2: AtomicBool,
    /// What the connection task must do next: [`GRACEFUL`] or [`ABORT`].
    command: AtomicU8,
    /// The connection task, to be woken when a command is set.
    waker: AtomicWaker,
}

/// During a drain, how long a connection that has not completed a request
/// yet may take to do so before it is closed.
const DRAIN_FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);

/// Finish what is in flight, then close (HTTP/1) or send GOAWAY (HTTP/2).
const GRACEFUL: u8 = 1;
/// Drop the connection now.
const ABORT: u8 = 2;

impl Activity {
    fn command(&self, command: u8) {
        self.command.fetch_max(command, Relaxed);
        self.waker.wake();
    }
}

#[inline]
fn bump(counter: &AtomicU64) {
    counter.store(counter.load(Relaxed).wrapping_add(1), Relaxed);
}

/// The live connections, for the watchdog thread and the drain.
#[derive(Default)]
struct Registry {
    connections: Mutex<HashMap<u64, Watched>>,
    next_id: AtomicU64,
    /// Shutdown has begun: connections registered from now on finish at once.
    draining: AtomicBool,
}

struct Watched {
    activity: Arc<Activity>,
    accepted: std::time::Instant,
    watchdog: Watchdog,
    /// A graceful shutdown was requested for idleness; abort at the next tick.
    closing: bool,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Watched>> {
        self.connections.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(self: &Arc<Self>, activity: Arc<Activity>, limits: &Limits) -> Registered {
        let id = self.next_id.fetch_add(1, Relaxed);
        let accepted = std::time::Instant::now();
        let watchdog = Watchdog::new(limits, accepted);
        let mut connections = self.lock();
        if self.draining.load(Relaxed) {
            activity.command(GRACEFUL);
        }
        connections.insert(
            id,
            Watched {
                activity,
                accepted,
                watchdog,
                closing: false,
            },
        );
        Registered {
            registry: self.clone(),
            id,
        }
    }

    /// One watchdog pass over every connection.
    fn sweep(&self, now: std::time::Instant) {
        let draining = self.draining.load(Relaxed);
        for watched in self.lock().values_mut() {
            let a = &watched.activity;
            if watched.closing {
                a.command(ABORT);
                continue;
            }
            if draining
                && a.requests.load(Relaxed) == 0
                && now.duration_since(watched.accepted) >= DRAIN_FIRST_REQUEST_GRACE
            {
                a.command(ABORT);
                continue;
            }
            let verdict = watched.watchdog.check(
                now,
                a.requests.load(Relaxed),
                a.reads.load(Relaxed),
                a.h2.load(Relaxed),
            );
            match verdict {
                Verdict::Fine => {}
                Verdict::HeadTimeout => a.command(ABORT),
                Verdict::Idle => {
                    watched.closing = true;
                    a.command(GRACEFUL);
                }
            }
        }
    }

    fn drain(&self) {
        for watched in self.lock().values() {
            watched.activity.command(GRACEFUL);
        }
    }
}

/// Removes a connection from the registry when its task ends.
struct Registered {
    registry: Arc<Registry>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

/// Runs the watchdog on a plain thread, so the runtime's timer wheel holds no
/// per-connection entries. It ends once `serve` has returned.
fn spawn_watchdog(registry: &Arc<Registry>, tick: Duration) {
    let weak = Arc::downgrade(registry);
    let spawned = std::thread::Builder::new()
        .name("tokengate-watchdog".to_owned())
        .spawn(move || {
            loop {
                std::thread::sleep(tick);
                let Some(registry) = weak.upgrade() else {
                    return;
                };
                registry.sweep(std::time::Instant::now());
            }
        });
    if let Err(e) = spawned {
        warn!(error = %e, "cannot start the watchdog thread: header and idle timeouts are not enforced");
    }
}

/// The per-connection clock: request-head and idle deadlines, sampled on a
/// tick rather than re-armed per request (no timer work on the hot path).
struct Watchdog {
    header_timeout: Duration,
    idle_timeout: Duration,
    /// `(requests, reads)` at the previous tick.
    last: (u64, u64),
    /// When the connection was last seen doing something.
    active_at: std::time::Instant,
    /// When the request head in progress was first seen (accept, for the first).
    head_since: Option<std::time::Instant>,
}

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Fine,
    HeadTimeout,
    Idle,
}

/// How often the watchdog samples: a quarter of the shorter limit.
fn tick(limits: &Limits) -> Duration {
    (limits.header_read_timeout.min(limits.idle_timeout) / 4).max(Duration::from_millis(1))
}

impl Watchdog {
    fn new(limits: &Limits, accepted: std::time::Instant) -> Self {
        Watchdog {
            header_timeout: limits.header_read_timeout,
            idle_timeout: limits.idle_timeout,
            last: (0, 0),
            active_at: accepted,
            head_since: Some(accepted),
        }
    }

    fn check(&mut self, now: std::time::Instant, requests: u64, reads: u64, h2: bool) -> Verdict {
        let (last_requests, last_reads) = self.last;
        self.last = (requests, reads);
        if requests != last_requests {
            // A head completed since the last tick.
            self.head_since = None;
            self.active_at = now;
        } else if reads != last_reads {
            self.active_at = now;
            if !h2 && self.head_since.is_none() {
                // Bytes, but no complete head: a request head is in progress.
                self.head_since = Some(now);
            }
        }
        if let Some(since) = self.head_since {
            if now.duration_since(since) >= self.header_timeout {
                return Verdict::HeadTimeout;
            }
        }
        if now.duration_since(self.active_at) >= self.idle_timeout {
            return Verdict::Idle;
        }
        Verdict::Fine
    }
}

struct Connection {
    app: Arc<App>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    registry: Arc<Registry>,
    limits: Limits,
    tls: Option<Arc<Tls>>,
    peer: SocketAddr,
}

impl Connection {
    /// Spawns the connection's task. Cleartext and TLS connections are
    /// different tasks, so a cleartext task carries no TLS state (rustls keeps
    /// several KiB inline).
    fn spawn(
        self,
        tasks: &mut JoinSet<()>,
        stream: TcpStream,
        permit: Option<OwnedSemaphorePermit>,
    ) {
        let _ = stream.set_nodelay(true);
        match self.tls.clone() {
            None => {
                tasks.spawn(self.serve_io(stream, permit));
            }
            Some(tls) => {
                tasks.spawn(self.serve_tls(tls, stream, permit));
            }
        }
    }

    async fn serve_tls(
        self,
        tls: Arc<Tls>,
        stream: TcpStream,
        permit: Option<OwnedSemaphorePermit>,
    ) {
        let handshake = tokio::time::timeout(
            self.limits.header_read_timeout,
            tls.acceptor().accept(stream),
        );
        match handshake.await {
            Ok(Ok(stream)) => {
                self.app.metrics().accepted(Protocol::Tls);
                self.serve_io(stream, permit).await;
            }
            Ok(Err(e)) => debug!(peer = %self.peer, error = %e, "TLS handshake failed"),
            Err(_) => {
                debug!(peer = %self.peer, "TLS handshake not complete within the header read timeout")
            }
        }
    }

    /// Serves one connection; the permit (a connection slot) is released at the end.
    async fn serve_io<I>(self, stream: I, permit: Option<OwnedSemaphorePermit>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let _permit = permit;
        let activity = Arc::new(Activity::default());
        let _registered = self.registry.add(activity.clone(), &self.limits);
        let _open = OpenConnection::new(self.app.clone());
        let io = Guarded {
            inner: stream,
            activity: activity.clone(),
        };
        let app = self.app.clone();
        let seen = activity.clone();
        let peer_ip = self.peer.ip();
        let service = service_fn(move |req: Request<Incoming>| {
            if seen.requests.load(Relaxed) == 0 {
                let protocol = if req.version() == Version::HTTP_2 {
                    seen.h2.store(true, Relaxed);
                    Protocol::H2
                } else {
                    Protocol::H1
                };
                app.metrics().accepted(protocol);
            }
            bump(&seen.requests);
            // The request (and its body, unread) is dropped here: hyper then
            // closes an HTTP/1 connection whose body was not consumed.
            std::future::ready(Ok::<_, Infallible>(app.handle(&req, peer_ip)))
        });
        let conn = self.builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(conn);

        let mut graceful = false;
        let result = std::future::poll_fn(|cx| {
            loop {
                if let Poll::Ready(result) = conn.as_mut().poll(cx) {
                    return Poll::Ready(Some(result));
                }
                activity.waker.register(cx.waker());
                match activity.command.load(Relaxed) {
                    ABORT => return Poll::Ready(None),
                    // hyper-util cancels a connection still detecting its
                    // protocol when told to shut down, which would drop a first
                    // request still on its way (a connection accepted just as
                    // the drain began). Wait for it: during a drain the
                    // watchdog aborts a connection that has sent no complete
                    // request within DRAIN_FIRST_REQUEST_GRACE.
                    GRACEFUL if !graceful && activity.requests.load(Relaxed) == 0 => {
                        return Poll::Pending;
                    }
                    GRACEFUL if !graceful => {
                        graceful = true;
                        // Must be polled again to take effect.
                        conn.as_mut().graceful_shutdown();
                    }
                    _ => return Poll::Pending,
                }
            }
        })
        .await;
        match result {
            Some(Err(e)) => debug!(peer = %self.peer, error = %e, "connection ended with an error"),
            Some(Ok(())) => {}
            None => {
                debug!(peer = %self.peer, "connection dropped by the watchdog (header or idle timeout)")
            }
        }
    }
}

/// Keeps the open-connections gauge: up while the connection task lives.
struct OpenConnection(Arc<App>);

impl OpenConnection {
    fn new(app: Arc<App>) -> Self {
        app.metrics().connection_opened();
        OpenConnection(app)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.metrics().connection_closed();
    }
}

/// The socket, counting reads that return data for the watchdog.
pub(crate) struct Guarded<I> {
    inner: I,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Guarded<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            bump(&this.activity.reads);
        }
        result
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Guarded<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dog() -> (Watchdog, std::time::Instant) {
        let limits = Limits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            ..Limits::default()
        };
        let t0 = std::time::Instant::now();
        (Watchdog::new(&limits, t0), t0)
    }

    fn at(t0: std::time::Instant, secs: u64) -> std::time::Instant {
        t0 + Duration::from_secs(secs)
    }

    #[test]
    fn first_head_is_timed_from_accept() {
        let (mut w, t0) = dog();
        assert_eq!(tick(&Limits::default()), Duration::from_millis(2500));
        assert_eq!(w.check(at(t0, 5), 0, 1, false), Verdict::Fine);
        assert_eq!(w.check(at(t0, 10), 0, 2, false), Verdict::HeadTimeout);
        let (mut w, t0) = dog();
        assert_eq!(
            w.check(at(t0, 10), 0, 0, false),
            Verdict::HeadTimeout,
            "silent connection"
        );
    }

    #[test]
    fn later_heads_are_timed_from_their_first_bytes() {
        let (mut w, t0) = dog();
        assert_eq!(w.check(at(t0, 1), 1, 1, false), Verdict::Fine);
        // Idle keep-alive for 30 s is fine.
        assert_eq!(w.check(at(t0, 31), 1, 1, false), Verdict::Fine);
        // Slowloris: bytes keep coming, no complete head.
        assert_eq!(w.check(at(t0, 33), 1, 2, false), Verdict::Fine);
        assert_eq!(w.check(at(t0, 40), 1, 3, false), Verdict::Fine);
        assert_eq!(w.check(at(t0, 43), 1, 4, false), Verdict::HeadTimeout);
    }

    #[test]
    fn idle_after_the_idle_timeout() {
        let (mut w, t0) = dog();
        assert_eq!(w.check(at(t0, 1), 1, 1, false), Verdict::Fine);
        assert_eq!(w.check(at(t0, 60), 1, 1, false), Verdict::Fine);
        assert_eq!(w.check(at(t0, 61), 1, 1, false), Verdict::Idle);
    }

    #[test]
    fn busy_connections_are_never_closed() {
        let (mut w, t0) = dog();
        for i in 1..1000 {
            assert_eq!(w.check(at(t0, i), i, i, false), Verdict::Fine);
        }
    }

    #[test]
    fn http2_frames_are_activity_not_heads() {
        let (mut w, t0) = dog();
        assert_eq!(w.check(at(t0, 1), 1, 1, true), Verdict::Fine);
        for i in 2..100 {
            // PINGs every second: no new request, but not a stalled head either.
            assert_eq!(w.check(at(t0, i), 1, i, true), Verdict::Fine);
        }
        assert_eq!(w.check(at(t0, 160), 1, 99, true), Verdict::Idle);
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;

    /// Every idle connection costs its task's future: keep tokengate's close
    /// to a bare hyper-util connection (sizes are fixed at compile time).
    #[tokio::test]
    async fn connection_task_is_close_to_a_bare_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = TcpStream::connect(addr).await.expect("connect");
        let (server, peer) = listener.accept().await.expect("accept");
        let app =
            Arc::new(App::new(crate::KeySet::new(), &crate::AppConfig::default()).expect("app"));
        let limits = Limits::default();
        let conn = Connection {
            app,
            builder: Arc::new(builder(&limits)),
            registry: Arc::new(Registry::default()),
            limits,
            tls: None,
            peer,
        };
        let ours = std::mem::size_of_val(&conn.serve_io(server, None));
        let bare = auto::Builder::new(TokioExecutor::new());
        let svc = service_fn(|_r: Request<Incoming>| async {
            Ok::<_, Infallible>(http::Response::new(crate::responses::Body::new(
                bytes::Bytes::new(),
            )))
        });
        let bare = std::mem::size_of_val(&bare.serve_connection(TokioIo::new(client), svc));
        eprintln!("connection task: {ours} bytes; bare hyper-util connection: {bare} bytes");
        assert!(
            ours <= bare + 640,
            "connection task grew to {ours} bytes (bare: {bare})"
        );
    }
}
