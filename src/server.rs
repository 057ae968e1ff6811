//! `serve(listener, app, limits, shutdown)`: the accept loop, the connection
//! cap, hyper-util's auto builder (HTTP/1.1 and h2c on one port) with a timer,
//! per-connection time limits, and the graceful drain with a deadline.
//!
//! # Time limits on a connection
//!
//! hyper-util's auto builder reads the protocol preface with no timer at all
//! (hyper issue #3756), and hyper's own `header_read_timeout` also starts while
//! a keep-alive connection is idle, so it cannot be combined with a longer idle
//! timeout. tokengate enforces both limits itself:
//!
//! * **Request heads** — `Guarded` wraps the socket. A *head* opens at accept
//!   and, on HTTP/1, whenever bytes arrive after the previous request's head was
//!   complete; it closes when the service sees the request. A head still open
//!   after `header_read_timeout` fails the connection's next read, and hyper
//!   closes it. This covers protocol detection, the HTTP/2 preface and
//!   slowloris-style dripping alike.
//! * **Idleness** — the connection task samples two counters (reads, requests)
//!   every quarter of `idle_timeout`. When neither moved for `idle_timeout`, the
//!   connection is shut down gracefully (HTTP/1 closes, HTTP/2 gets GOAWAY); if it
//!   has not finished one tick later (a client that does not read), it is
//!   dropped. Idle connections therefore close between 1× and 1.25× the timeout.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{Request, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tracing::{debug, info, warn};

use crate::routes::App;

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
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(10),
            max_header_bytes: crate::routes::DEFAULT_MAX_HEADER_BYTES,
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
    let builder = Arc::new(builder(&limits));
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (drain_tx, drain_rx) = watch::channel(());
    let mut connections = JoinSet::new();
    let mut accept_errors = AcceptErrors::default();
    tokio::pin!(shutdown);

    loop {
        // Take a slot first: past the cap, connections wait in the kernel backlog.
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = permits.clone().acquire_owned() => {
                permit.expect("the semaphore is never closed")
            }
        };
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(ok) => ok,
            Err(e) => {
                if let Some(pause) = accept_errors.record(&e) {
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(pause) => {}
                    }
                }
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        let _ = stream.set_nodelay(true);
        let conn = Connection {
            app: app.clone(),
            builder: builder.clone(),
            limits: limits.clone(),
            drain: drain_rx.clone(),
            peer,
        };
        connections.spawn(async move {
            conn.run(stream).await;
            drop(permit);
        });
    }

    drop(listener);
    while connections.try_join_next().is_some() {}
    let open = connections.len();
    info!(
        open_connections = open,
        "shutting down: stopped accepting, draining connections"
    );
    drain_tx.send_replace(());
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
        .max_buf_size(hard)
        .max_headers(2 * crate::routes::MAX_HEADER_FIELDS + 56);
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

/// What the service and the socket wrapper report to the connection's watchdog.
#[derive(Default, Debug)]
pub(crate) struct Activity {
    /// Requests whose head was complete (the service was called).
    requests: AtomicU64,
    /// Reads that returned data.
    reads: AtomicU64,
    /// Set once the connection speaks HTTP/2 (heads are then not timed per request).
    h2: AtomicBool,
}

struct Connection {
    app: Arc<App>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    limits: Limits,
    drain: watch::Receiver<()>,
    peer: SocketAddr,
}

impl Connection {
    async fn run(mut self, stream: TcpStream) {
        let activity = Arc::new(Activity::default());
        let io = Guarded::new(stream, activity.clone(), self.limits.header_read_timeout);
        let app = self.app.clone();
        let seen = activity.clone();
        let peer_ip = self.peer.ip();
        let service = service_fn(move |req: Request<Incoming>| {
            seen.requests.fetch_add(1, Relaxed);
            if req.version() == Version::HTTP_2 {
                seen.h2.store(true, Relaxed);
            }
            // The request (and its body, unread) is dropped here: hyper then
            // closes an HTTP/1 connection whose body was not consumed.
            std::future::ready(Ok::<_, Infallible>(app.handle(&req, peer_ip)))
        });
        let conn = self.builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(conn);

        let tick = (self.limits.idle_timeout / 4).max(Duration::from_millis(1));
        let idle = tokio::time::sleep(tick);
        tokio::pin!(idle);
        let mut last = (0u64, 0u64);
        let mut quiet_since = Instant::now();
        let mut closing = false;
        let mut draining = false;

        loop {
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        debug!(peer = %self.peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = self.drain.changed(), if !draining => {
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                }
                () = &mut idle => {
                    let now = Instant::now();
                    if closing {
                        debug!(peer = %self.peer, "idle connection did not close in time; dropping it");
                        return;
                    }
                    let current = (activity.requests.load(Relaxed), activity.reads.load(Relaxed));
                    if current != last {
                        last = current;
                        quiet_since = now;
                    } else if now.duration_since(quiet_since) >= self.limits.idle_timeout {
                        debug!(peer = %self.peer, "closing idle connection");
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    idle.as_mut().reset(now + tick);
                }
            }
        }
    }
}

/// The socket, with the request-head timer described in the module docs.
pub(crate) struct Guarded {
    inner: TcpStream,
    activity: Arc<Activity>,
    header_timeout: Duration,
    /// A request head is in progress.
    head_open: bool,
    /// The head in progress is complete once `requests` reaches this.
    head_done_at: u64,
    head_deadline: Pin<Box<Sleep>>,
}

impl Guarded {
    fn new(inner: TcpStream, activity: Arc<Activity>, header_timeout: Duration) -> Self {
        Guarded {
            inner,
            activity,
            header_timeout,
            head_open: true,
            head_done_at: 1,
            head_deadline: Box::pin(tokio::time::sleep(header_timeout)),
        }
    }

    /// Data arrived: on HTTP/1, after a complete head it starts the next head.
    fn on_data(&mut self) {
        self.activity.reads.fetch_add(1, Relaxed);
        let requests = self.activity.requests.load(Relaxed);
        if self.head_open && requests < self.head_done_at {
            return;
        }
        if self.activity.h2.load(Relaxed) {
            self.head_open = false;
            return;
        }
        self.head_open = true;
        self.head_done_at = requests + 1;
        let deadline = Instant::now() + self.header_timeout;
        self.head_deadline.as_mut().reset(deadline);
    }

    /// The read would block: has the head in progress run out of time?
    fn head_expired(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.head_open {
            return false;
        }
        if self.activity.requests.load(Relaxed) >= self.head_done_at {
            self.head_open = false;
            return false;
        }
        self.head_deadline.as_mut().poll(cx).is_ready()
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.on_data();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if this.head_expired(cx) {
                    debug!("request head not complete within the header read timeout");
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "request head not complete within the header read timeout",
                    )))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl AsyncWrite for Guarded {
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
        ready!(Pin::new(&mut self.inner).poll_shutdown(cx))?;
        Poll::Ready(Ok(()))
    }
}
