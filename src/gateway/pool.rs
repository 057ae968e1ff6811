//! The HTTP/1.1 upstream client: keep-alive connections in a pool shared by
//! every client connection, each driven by the task of the request that is
//! using it.
//!
//! hyper-util's legacy client gives every upstream connection a task of its
//! own, hands each request to it over a channel, and spawns one more task
//! per response to put the connection back once its body is read: three
//! task wake-ups and a spawn per request between tasks that share one CPU
//! (`scripts/instructions --gateway` measures the bare proxy against
//! `benches/peers/proxy-inline`: see benches/README.md). Here a request takes an idle connection
//! from the pool (or dials one), polls the connection itself while it waits
//! for the response head, hands it to the response body, which polls it
//! while the body streams, and the connection goes back to the pool when the
//! body is dropped, if the exchange left it ready for another request.
//!
//! What a pooled client owes besides, kept: a request that a reused
//! connection refused before sending any of it (the upstream closed it
//! meanwhile) is sent once more on a new connection, and so is an
//! idempotent request without a body that a connection idle for a while
//! ([`RESEND_IF_IDLE`]) took and then closed unanswered; at most
//! [`MAX_IDLE`] connections stay idle, none longer than [`IDLE_TIMEOUT`],
//! and a sweep every second closes those the upstream closed (or that
//! expired) even when no request comes; upgrades get their
//! connection driven by a task of its own until the upgrade is handed over.
//! HTTP/2 to the upstream (`--upstream-http2`) stays on the legacy client:
//! one connection multiplexed for many client connections needs a task of
//! its own.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use http::{Request, Response, Uri};
use hyper::body::{Body, Incoming};

use super::lease::Lease;

use super::trailers::Untrailed;
use hyper::client::conn::TrySendError;
use hyper::client::conn::http1::{Builder, Connection, SendRequest};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::debug;

/// Idle connections kept at most (hyper-util's client was given the same).
pub(crate) const MAX_IDLE: usize = 256;
/// How long a connection stays idle before it is closed.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often idle connections are looked at, while there are any: those the
/// upstream closed are closed here too within this (nothing polls an idle
/// connection otherwise), and those idle for [`IDLE_TIMEOUT`] are closed.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

type Io = MaybeHttpsStream<TokioIo<TcpStream>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// What goes upstream as a request body: the client's, or nothing (a
/// request sent again from its copied head).
type UpBody = http_body_util::Either<Untrailed, http_body_util::Empty<bytes::Bytes>>;
type Dialing = Pin<Box<dyn Future<Output = Result<(Box<Conn>, Request<UpBody>), Failure>> + Send>>;
type Responding =
    Pin<Box<dyn Future<Output = Result<Response<Incoming>, TrySendError<Request<UpBody>>>> + Send>>;

/// A reused connection idle at least this long may have been closed by the
/// upstream's own keep-alive timeout just as a request goes out on it: an
/// idempotent request without a body sent on one keeps a copy of its head,
/// to be sent again on a new connection if no response comes. Connections
/// reused sooner (a busy gateway's) skip the copy.
pub(crate) const RESEND_IF_IDLE: Duration = Duration::from_millis(250);

/// Why the upstream gave no response.
#[derive(Debug)]
pub(crate) enum Failure {
    /// No connection: refused, unreachable, TLS or handshake failed.
    Connect(BoxError),
    /// The exchange on a connection failed.
    Exchange(hyper::Error),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Connect(e) => write!(f, "connect: {e}"),
            Failure::Exchange(e) => write!(f, "{e}"),
        }
    }
}

/// One upstream connection: the handle requests go through, and the future
/// that does its I/O.
pub(super) struct Conn {
    sender: SendRequest<UpBody>,
    io: Connection<Io, UpBody>,
}

impl Conn {
    /// Does the connection's pending I/O. `false` once the connection is
    /// over (closed by either side, or failed): it must not be polled again.
    pub(super) fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        Pin::new(&mut self.io).poll(cx).is_pending()
    }
}

struct Idle {
    conn: Box<Conn>,
    /// When it went back to the pool (read under the pool's lock: the
    /// deque is in this order, newest at the back).
    since: Instant,
}

/// The pool, and how to dial a new connection.
pub(crate) struct Pool {
    idle: Mutex<VecDeque<Idle>>,
    /// Whether a sweep is scheduled (set and cleared under `idle`'s lock).
    sweeping: AtomicBool,
    connector: HttpsConnector<HttpConnector>,
    /// Scheme, host and port the connector dials.
    upstream: Uri,
    builder: Builder,
    /// See [`RESEND_IF_IDLE`].
    resend_if_idle: Duration,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// An empty pool for connections to `upstream` (scheme, host, port)
    /// made by `connector`.
    pub(crate) fn new(
        connector: HttpsConnector<HttpConnector>,
        upstream: Uri,
        resend_if_idle: Duration,
    ) -> Self {
        Pool {
            idle: Mutex::default(),
            sweeping: AtomicBool::new(false),
            connector,
            upstream,
            builder: Builder::new(),
            resend_if_idle,
        }
    }

    /// Sends `request` upstream on an idle connection, or on a new one once
    /// it is dialled: the returned future yields the response head and the
    /// connection it came on (for the body to drive). `now`: the request's
    /// start.
    pub(crate) fn send(
        self: &Arc<Self>,
        request: Request<Untrailed>,
        upgrade: bool,
        now: Instant,
    ) -> Exchange {
        let mut exchange = Exchange {
            pool: Arc::clone(self),
            upgrade,
            state: State::Done,
        };
        let request = request.map(http_body_util::Either::Left);
        match self.checkout(now) {
            Some((conn, idle_for)) => exchange.send(conn, request, Some(idle_for)),
            None => exchange.state = State::Dialing(self.dial(request)),
        }
        exchange
    }

    /// The newest idle connection, unless it has been idle too long, and
    /// how long it was idle.
    fn checkout(&self, now: Instant) -> Option<(Box<Conn>, Duration)> {
        let mut idle = self.idle.lock().ok()?;
        let newest = idle.pop_back()?;
        let idle_for = now.saturating_duration_since(newest.since);
        if idle_for >= IDLE_TIMEOUT {
            // The newest has expired, so have all the others (closed once
            // the lock is released).
            let expired = std::mem::take(&mut *idle);
            drop(idle);
            drop(expired);
            return None;
        }
        drop(idle);
        // Not polled here: if the upstream closed it while it was idle, its
        // first poll reads the end of the stream before it writes anything,
        // and hands the request back to be sent on a new connection.
        Some((newest.conn, idle_for))
    }

    /// Takes `conn` back if the exchange on it is over and it is ready for
    /// another request; otherwise it is dropped, which closes it.
    pub(super) fn put_back(self: &Arc<Self>, mut conn: Box<Conn>) {
        // Lets hyper finish with the response (keep-alive bookkeeping) and
        // notice a close. The waker does nothing, and is left registered
        // with the socket instead of the task that used the connection last:
        // without this poll, that task was woken once more per request
        // (a spurious poll per proxied request).
        let mut cx = Context::from_waker(Waker::noop());
        if !conn.drive(&mut cx) || !conn.sender.is_ready() {
            return;
        }
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        if idle.len() >= MAX_IDLE {
            return;
        }
        idle.push_back(Idle {
            conn,
            since: Instant::now(),
        });
        if !self.sweeping.swap(true, Ordering::Relaxed) {
            self.schedule_sweep();
        }
    }

    /// Closes idle connections that expired or that the upstream closed,
    /// every [`SWEEP_EVERY`] while any is idle.
    fn schedule_sweep(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.sweeping.store(false, Ordering::Relaxed);
            return;
        };
        let pool = Arc::downgrade(self);
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(pool) = pool.upgrade() else {
                    return;
                };
                if !pool.sweep() {
                    return;
                }
            }
        });
    }

    /// One sweep; `false` when nothing is left idle (and the sweep ends).
    fn sweep(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let Ok(mut idle) = self.idle.lock() else {
            return false;
        };
        let now = Instant::now();
        let mut closed = Vec::new();
        let mut i = 0;
        while i < idle.len() {
            let entry = &mut idle[i];
            if now.saturating_duration_since(entry.since) >= IDLE_TIMEOUT
                || !entry.conn.drive(&mut cx)
            {
                closed.extend(idle.remove(i));
            } else {
                i += 1;
            }
        }
        let left = !idle.is_empty();
        if !left {
            self.sweeping.store(false, Ordering::Relaxed);
        }
        drop(idle);
        drop(closed);
        left
    }

    /// A new connection (boxed: it moves between the pool and its leases,
    /// and is large with TLS), and `request` to send on it.
    fn dial(&self, request: Request<UpBody>) -> Dialing {
        let connecting = self.connect();
        Box::pin(async move { Ok((connecting.await?, request)) })
    }

    fn connect(&self) -> impl Future<Output = Result<Box<Conn>, Failure>> + Send + 'static {
        let connecting =
            tower_service::Service::call(&mut self.connector.clone(), self.upstream.clone());
        let builder = self.builder.clone();
        async move {
            let io = connecting.await.map_err(Failure::Connect)?;
            let (sender, io) = builder
                .handshake(io)
                .await
                .map_err(|e| Failure::Connect(e.into()))?;
            Ok(Box::new(Conn { sender, io }))
        }
    }
}

/// A request on its way: a connection taken or dialled, the request sent,
/// its response head awaited.
pub(crate) struct Exchange {
    pool: Arc<Pool>,
    upgrade: bool,
    state: State,
}

enum State {
    Dialing(Dialing),
    Waiting {
        lease: Lease,
        response: Responding,
        reused: bool,
        /// The head to send again (see [`RESEND_IF_IDLE`]).
        resend: Option<Box<Request<()>>>,
    },
    Done,
}

impl Exchange {
    /// Sends `request` on `conn`; `idle_for`: how long it was idle, for a
    /// connection from the pool.
    fn send(&mut self, mut conn: Box<Conn>, request: Request<UpBody>, idle_for: Option<Duration>) {
        let resend = idle_for
            .is_some_and(|idle| idle >= self.pool.resend_if_idle)
            .then(|| head_to_resend(&request, self.upgrade))
            .flatten();
        let response = Box::pin(conn.sender.try_send_request(request));
        let conn = if self.upgrade {
            // The connection ends in the upgrade (or closes): hyper hands
            // the upgraded I/O over only from a connection driven to its
            // end, which a task of its own does.
            tokio::spawn(conn.io.with_upgrades());
            None
        } else {
            Some(conn)
        };
        self.state = State::Waiting {
            lease: Lease {
                conn,
                pool: Arc::clone(&self.pool),
            },
            response,
            reused: idle_for.is_some(),
            resend,
        };
    }
}

/// A copy of `request`'s head if it may be sent again: an idempotent
/// method (RFC 9110 §9.2.2), no body, not an upgrade.
fn head_to_resend(request: &Request<UpBody>, upgrade: bool) -> Option<Box<Request<()>>> {
    use http::Method;
    let idempotent = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    );
    if upgrade || !idempotent || !request.body().is_end_stream() {
        return None;
    }
    let mut head = Request::new(());
    *head.method_mut() = request.method().clone();
    *head.uri_mut() = request.uri().clone();
    *head.version_mut() = request.version();
    *head.headers_mut() = request.headers().clone();
    Some(Box::new(head))
}

impl Future for Exchange {
    type Output = Result<(Response<Incoming>, Lease), Failure>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                State::Dialing(dialing) => {
                    let (conn, request) = std::task::ready!(dialing.as_mut().poll(cx))?;
                    this.send(conn, request, None);
                }
                State::Waiting {
                    lease,
                    response,
                    reused,
                    ..
                } => {
                    // The connection first: it writes the request, reads the
                    // head and hands it to `response`.
                    lease.drive(cx);
                    let answered = std::task::ready!(response.as_mut().poll(cx));
                    let reused = *reused;
                    let State::Waiting { lease, resend, .. } =
                        std::mem::replace(&mut this.state, State::Done)
                    else {
                        return Poll::Pending;
                    };
                    match answered {
                        Ok(response) => return Poll::Ready(Ok((response, lease))),
                        Err(mut e) => {
                            drop(lease);
                            match (e.take_message(), resend) {
                                // Nothing was sent: the upstream closed the
                                // idle connection as it was taken. Once more,
                                // on a new connection.
                                (Some(request), _) if reused => {
                                    this.state = State::Dialing(this.pool.dial(request));
                                }
                                // Sent, and no response: the upstream closed
                                // the long-idle connection as the request
                                // arrived. An idempotent one without a body
                                // goes once more, on a new connection.
                                (None, Some(head)) => {
                                    debug!(error = %e.error(), "resending on a new connection");
                                    let request = head.map(|()| {
                                        http_body_util::Either::Right(http_body_util::Empty::new())
                                    });
                                    this.state = State::Dialing(this.pool.dial(request));
                                }
                                _ => {
                                    return Poll::Ready(Err(Failure::Exchange(e.into_error())));
                                }
                            }
                        }
                    }
                }
                State::Done => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn pool_for(addr: std::net::SocketAddr) -> Arc<Pool> {
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        Arc::new(Pool::new(
            connector,
            format!("http://{addr}/").parse().unwrap(),
            RESEND_IF_IDLE,
        ))
    }

    fn idle_count(pool: &Pool) -> usize {
        pool.idle.lock().unwrap().len()
    }

    /// Idle time is counted from when a connection went back to the pool
    /// (not from when its last request started, which for a long response
    /// would make a fresh connection look expired): the newest is taken
    /// first; once the newest has been idle for `IDLE_TIMEOUT`, taking one
    /// closes them all; a sweep closes each one that expired.
    #[tokio::test]
    async fn idle_connections_expire_by_their_own_idle_time() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = tokio::spawn(async move {
            let mut open = Vec::new();
            for _ in 0..3 {
                open.push(listener.accept().await.unwrap().0);
            }
            open
        });
        let pool = pool_for(addr);
        let mut conns = Vec::new();
        for _ in 0..3 {
            conns.push(pool.connect().await.unwrap());
        }
        let _open = accepted.await.unwrap();
        let ids: Vec<*const Conn> = conns.iter().map(|c| &raw const **c).collect();
        for conn in conns {
            pool.put_back(conn);
        }
        assert_eq!(idle_count(&pool), 3);

        let now = Instant::now();
        // The first one back has been idle past the limit, the others not.
        pool.idle.lock().unwrap()[0].since = now.checked_sub(IDLE_TIMEOUT).unwrap();
        let (newest, _) = pool.checkout(now).unwrap();
        assert_eq!(&raw const *newest, ids[2]);
        pool.put_back(newest);
        assert!(pool.sweep());
        assert_eq!(idle_count(&pool), 2, "the sweep closed the expired one");

        // The newest past the limit: every idle connection goes.
        let later = Instant::now() + IDLE_TIMEOUT;
        assert!(pool.checkout(later).is_none());
        assert_eq!(idle_count(&pool), 0);
    }
}
