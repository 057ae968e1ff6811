//! One connection: hyper's HTTP/1 server when the first bytes (a peek) or
//! ALPN `http/1.1` already say HTTP/1, else hyper-util's auto builder (h2c
//! and HTTP/1.1 on one port, ALPN `h2`), driving a `service_fn` that calls
//! [`App::handle`], under the watchdog's commands.
//!
//! Cleartext and TLS connections are different tasks, so a cleartext task
//! carries no TLS state (rustls keeps several KiB inline); both share one
//! [`Context`] and one [`Connection::serve`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinSet;
use tracing::debug;

use super::drive::{drive, until_aborted};
use super::io::ReadCounter;
use super::service::{gateway_service, standalone_service};
use super::streams::StreamExecutor;
use super::watchdog::{Activity, ConnectionTable, Entry};
use crate::app::{App, GatewayService};
use crate::head;
use crate::metrics::Protocol;
use crate::tls::Tls;

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
    2 * (max_header_bytes + head::MAX_TARGET_BYTES) + 8192
}

/// What every connection of one server shares (one `Arc` per connection).
pub(super) struct Context {
    pub(super) app: Arc<App>,
    pub(super) builder: auto::Builder<StreamExecutor>,
    /// hyper's HTTP/1 server with the auto builder's HTTP/1 settings, for
    /// connections known to be HTTP/1 before the first read (see [`Sniff`]).
    pub(super) http1: http1::Builder,
    pub(super) table: Arc<ConnectionTable>,
    pub(super) tls: Option<Arc<Tls>>,
    /// This listener passes requests on to the upstream (gateway mode, and
    /// not the `--admin-listen` listener).
    pub(super) gateway: Option<Arc<GatewayService>>,
}

impl Context {
    pub(super) fn new(
        app: Arc<App>,
        table: Arc<ConnectionTable>,
        tls: Option<Arc<Tls>>,
        admin: bool,
    ) -> Self {
        let gateway = (app.gateway())
            .filter(|_| !admin)
            .map(|gateway| Arc::new(GatewayService::new(app.clone(), gateway.clone())));
        Context {
            builder: builder(
                app.max_header_bytes(),
                StreamExecutor {
                    local: gateway.is_none(),
                },
            ),
            gateway,
            http1: http1_builder(app.max_header_bytes()),
            app,
            table,
            tls,
        }
    }
}

/// The HTTP/1 settings, for the auto builder's HTTP/1 part and for hyper's
/// own HTTP/1 builder alike (their setters have the same names and types).
macro_rules! http1_settings {
    ($builder:expr, $hard:expr) => {
        $builder
            .timer(TokioTimer::new())
            // hyper defaults to a 30 s header timeout once a timer is set; it
            // would arm (and box) a timer per request and also run while
            // idle. The watchdog enforces --header-read-timeout instead.
            .header_read_timeout(None)
            .max_buf_size($hard)
            // 100 is hyper's default: its header arrays then live on the
            // stack. Any larger value moves them to the heap (two allocations
            // per request), so HTTP/1 heads with more fields get hyper's bare
            // 431.
            .max_headers(head::MAX_HEADER_FIELDS)
    };
}

/// The auto builder, configured once.
fn builder(max_header_bytes: usize, executor: StreamExecutor) -> auto::Builder<StreamExecutor> {
    let hard = hard_head_limit(max_header_bytes);
    let mut builder = auto::Builder::new(executor);
    http1_settings!(builder.http1(), hard);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(hard).unwrap_or(u32::MAX))
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESET_STREAMS)
        .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESET_STREAMS);
    builder
}

/// hyper's HTTP/1 builder, configured once.
fn http1_builder(max_header_bytes: usize) -> http1::Builder {
    let mut builder = http1::Builder::new();
    http1_settings!(builder, hard_head_limit(max_header_bytes));
    builder
}

/// The HTTP/2 connection preface, which an h2c client sends first.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether the first bytes a client sent already rule HTTP/2 out: then the
/// connection goes to hyper's HTTP/1 server directly.
///
/// hyper-util's auto builder reads up to 24 bytes to tell the protocols apart
/// and hands them to hyper's HTTP/1 server ahead of the rest. hyper reads
/// those 24 into an 8 KiB buffer, finds the head incomplete, and reserves
/// 8 KiB more for the next read: the buffer doubles to 16 KiB and stays so
/// for the connection's life (valgrind's dhat: 16 KiB per connection). A peek
/// leaves the bytes in the socket, and hyper's first read takes the whole
/// head into 8 KiB. Bytes that match the preface so far (or none: the
/// client closed) leave the decision to the auto builder.
fn rules_out_h2(peeked: &[u8]) -> bool {
    !peeked.is_empty() && !H2_PREFACE.starts_with(peeked)
}

/// What a connection's stream tells of its protocol before hyper reads it.
pub(super) trait Sniff {
    /// Ready with `true` when the connection is HTTP/1 for sure, `false`
    /// when the auto builder is to find out. `first`: room to peek into.
    fn poll_http1(&self, cx: &mut std::task::Context<'_>, first: &mut [u8; 24]) -> Poll<bool>;
}

impl Sniff for TcpStream {
    /// Peeks at what the client sent first (ready once it sent something).
    fn poll_http1(&self, cx: &mut std::task::Context<'_>, first: &mut [u8; 24]) -> Poll<bool> {
        let mut buf = tokio::io::ReadBuf::new(first);
        match self.poll_peek(cx, &mut buf) {
            Poll::Ready(Ok(_)) => Poll::Ready(rules_out_h2(buf.filled())),
            // The auto builder's read meets the same error.
            Poll::Ready(Err(_)) => Poll::Ready(false),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Sniff for tokio_rustls::server::TlsStream<TcpStream> {
    /// ALPN settled it in the handshake.
    fn poll_http1(&self, _: &mut std::task::Context<'_>, _: &mut [u8; 24]) -> Poll<bool> {
        Poll::Ready(self.get_ref().1.alpn_protocol() == Some(b"http/1.1"))
    }
}

/// One accepted connection, before its task starts.
pub(super) struct Connection {
    pub(super) context: Arc<Context>,
    pub(super) peer: SocketAddr,
    /// When it was accepted: every deadline of the first request (TLS
    /// handshake and protocol detection included) runs from here.
    pub(super) accepted: Instant,
    /// A connection slot, released when the task ends (`None` for connections
    /// served from the backlog during the drain).
    pub(super) permit: Option<OwnedSemaphorePermit>,
}

impl Connection {
    /// Spawns the connection's task.
    pub(super) fn spawn(self, tasks: &mut JoinSet<()>, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        if self.context.tls.is_some() {
            tasks.spawn(self.serve_tls(stream));
        } else {
            tasks.spawn(self.serve_cleartext(stream));
        }
    }

    fn track(&self) -> (Arc<Activity>, Entry) {
        let activity = Arc::new(Activity::default());
        let entry = self.context.table.add(activity.clone(), self.accepted);
        (activity, entry)
    }

    pub(super) async fn serve_cleartext(self, stream: TcpStream) {
        let (activity, entry) = self.track();
        self.serve(stream, activity, entry).await;
    }

    /// The TLS handshake is watched like a request head: it counts against
    /// `--header-read-timeout` from accept, and the drain can abort it.
    async fn serve_tls(self, stream: TcpStream) {
        let Some(tls) = self.context.tls.clone() else {
            return;
        };
        let (activity, entry) = self.track();
        let handshake = until_aborted(&activity, tls.acceptor().accept(stream)).await;
        match handshake {
            Some(Ok(stream)) => {
                self.context.app.metrics().accepted(Protocol::Tls);
                self.serve(stream, activity, entry).await;
            }
            Some(Err(e)) => debug!(peer = %self.peer, error = %e, "TLS handshake failed"),
            None => {
                debug!(peer = %self.peer, "TLS handshake not complete within the header read timeout")
            }
        }
    }

    /// Serves HTTP on the connection until it ends or the watchdog aborts
    /// it: with hyper's HTTP/1 server if `http1` (known before the first
    /// read), else with the auto builder. In gateway mode the connection can
    /// be upgraded (WebSocket); that path is a separate function so a
    /// standalone connection's task does not carry the larger upgradeable
    /// state.
    async fn serve<I>(self, stream: I, activity: Arc<Activity>, entry: Entry)
    where
        I: Sniff + AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // Watched like the request head it is the start of: the watchdog
        // aborts a client that sends nothing.
        let http1 = {
            let mut first = [0u8; H2_PREFACE.len()];
            let sniff = std::future::poll_fn(|cx| stream.poll_http1(cx, &mut first));
            match until_aborted(&activity, sniff).await {
                Some(http1) => http1,
                None => {
                    debug!(peer = %self.peer, "no request within the header read timeout");
                    return;
                }
            }
        };
        if let Some(gateway) = self.context.gateway.clone() {
            Box::pin(self.serve_upgradeable(stream, gateway, activity, entry, http1)).await;
            return;
        }
        let _permit = self.permit;
        let _entry = entry;
        let _open = OpenConnection::new(self.context.app.clone());
        let io = TokioIo::new(ReadCounter::new(stream, activity.clone()));
        let service = standalone_service(&self.context, &activity, self.peer.ip());
        if http1 {
            let conn = self.context.http1.serve_connection(io, service);
            tokio::pin!(conn);
            log_end(self.peer, drive(conn, &activity, false).await);
        } else {
            let conn = self.context.builder.serve_connection(io, service);
            // Pinned here and lent to `drive`: moving it into `drive`'s
            // future would make this task hold it twice.
            tokio::pin!(conn);
            // Standalone: HTTP/2 streams run in this task (`streams.rs`).
            log_end(self.peer, drive(conn, &activity, true).await);
        }
    }

    async fn serve_upgradeable<I>(
        self,
        stream: I,
        gateway: Arc<GatewayService>,
        activity: Arc<Activity>,
        _entry: Entry,
        http1: bool,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let _permit = self.permit;
        let _open = OpenConnection::new(self.context.app.clone());
        let io = TokioIo::new(ReadCounter::new(stream, activity.clone()));
        let service = gateway_service(
            gateway,
            self.context.tls.is_some(),
            &activity,
            self.peer.ip(),
        );
        if http1 {
            let conn = self
                .context
                .http1
                .serve_connection(io, service)
                .with_upgrades();
            tokio::pin!(conn);
            log_end(self.peer, drive(conn, &activity, false).await);
        } else {
            let conn = self
                .context
                .builder
                .serve_connection_with_upgrades(io, service);
            tokio::pin!(conn);
            log_end(self.peer, drive(conn, &activity, false).await);
        }
    }
}

fn log_end<E: std::fmt::Display>(peer: SocketAddr, result: Option<Result<(), E>>) {
    match result {
        Some(Err(e)) => debug!(peer = %peer, error = %e, "connection ended with an error"),
        Some(Ok(())) => {}
        None => {
            debug!(peer = %peer, "connection dropped by the watchdog (header or idle timeout)")
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

#[cfg(test)]
mod sniff_tests {
    use super::*;

    #[test]
    fn only_bytes_that_leave_the_preface_rule_h2_out() {
        // Nothing yet, or the preface so far: the auto builder decides.
        assert!(!rules_out_h2(b""));
        assert!(!rules_out_h2(b"P"));
        assert!(!rules_out_h2(b"PRI * HTTP/2.0\r\n"));
        assert!(!rules_out_h2(H2_PREFACE));
        // Any other byte: HTTP/1.
        assert!(rules_out_h2(b"G"));
        assert!(rules_out_h2(b"GET / HTTP/1.1\r\n"));
        assert!(rules_out_h2(b"PUT"));
        assert!(rules_out_h2(b"PRI * HTTP/1.1\r\n"));
        assert!(rules_out_h2(b"\r\n"));
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;
    use http::Request;
    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use std::convert::Infallible;
    use tokio::net::TcpListener;

    /// Every idle connection costs its task's future: keep tokengate's close
    /// to a bare hyper-util connection (sizes are fixed at compile time).
    #[tokio::test]
    async fn connection_task_is_close_to_a_bare_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = TcpStream::connect(addr).await.expect("connect");
        let (server, peer) = listener.accept().await.expect("accept");
        let app = Arc::new(App::new(crate::KeySet::new(), &crate::AppConfig::default()));
        let table = Arc::new(ConnectionTable::new(
            super::super::Limits::default(),
            app.lifecycle(),
        ));
        let conn = Connection {
            context: Arc::new(Context::new(app, table, None, false)),
            peer,
            accepted: Instant::now(),
            permit: None,
        };
        let ours = std::mem::size_of_val(&conn.serve_cleartext(server));
        let bare = auto::Builder::new(hyper_util::rt::TokioExecutor::new());
        let svc = service_fn(|_r: Request<Incoming>| async {
            Ok::<_, Infallible>(http::Response::new(crate::responses::Body::new(
                bytes::Bytes::new(),
            )))
        });
        let bare = std::mem::size_of_val(&bare.serve_connection(TokioIo::new(client), svc));
        eprintln!("connection task: {ours} bytes; bare hyper-util connection: {bare} bytes");
        // +640 before the protocol sniff (`Sniff`), which added 96 bytes to
        // the task and took 8 KiB off every HTTP/1 connection's read buffer.
        assert!(
            ours <= bare + 736,
            "connection task grew to {ours} bytes (bare: {bare})"
        );
    }
}
