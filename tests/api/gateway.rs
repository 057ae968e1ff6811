//! Gateway mode: tokengate in front of an upstream written here, which
//! records what it receives. Header hygiene, credential stripping, scopes and
//! `--public`, denials that never reach the upstream, streaming both ways,
//! server-sent events event by event, a WebSocket-style upgrade, 502/504 and
//! a body broken mid-way, and an h2c client in front of an HTTP/1.1 upstream.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokengate::gateway::upstream::Upstream;
use tokengate::gateway::{GatewayConfig, parse_public};
use tokengate::{AppConfig, Limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::support::{Proto, Resp, TestServer, keys_from, raw, send, statuses};

pub(crate) const KEYS: &str = "\
full-access-key-1 ops
reports-only-key reports scope=GET,HEAD:/reports/*
";

/// A response body fed from a channel: the upstream decides when each chunk
/// goes, and can break off with an error.
struct ChannelBody(mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.0.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data)))
    }
}

/// `Sec-WebSocket-Accept` for a key (RFC 6455 §4.2.2).
pub(crate) fn websocket_accept(key: &[u8]) -> http::HeaderValue {
    use base64::Engine as _;
    use sha1::Digest as _;
    let mut sha = sha1::Sha1::new();
    sha.update(key);
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let accept = base64::engine::general_purpose::STANDARD.encode(sha.finalize());
    http::HeaderValue::try_from(accept).unwrap()
}

/// What the upstream saw of one request.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) target: String,
    pub(crate) headers: HeaderMap,
    pub(crate) body_len: usize,
    /// The request's trailers, if any came.
    pub(crate) trailers: Option<HeaderMap>,
}

/// The upstream: records every request; a few paths behave specially.
#[derive(Clone, Default)]
pub(crate) struct Upstream_ {
    seen: Arc<Mutex<Vec<Seen>>>,
    /// `/sse` sends its second event when this receives.
    sse_gate: Arc<tokio::sync::Mutex<Option<mpsc::Receiver<()>>>>,
    /// Connections accepted.
    connections: Arc<AtomicUsize>,
}

impl Upstream_ {
    pub(crate) fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// The targets of every request seen so far.
    pub(crate) fn seen_targets(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.target.clone())
            .collect()
    }

    pub(crate) fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a request reached the upstream")
    }

    pub(crate) async fn start(&self) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let me = self.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                me.connections.fetch_add(1, Ordering::SeqCst);
                let me = me.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let me = me.clone();
                        async move { Ok::<_, Infallible>(me.answer(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        addr
    }

    async fn answer(&self, mut req: Request<Incoming>) -> Response<ChannelBody> {
        let target = req.uri().to_string();
        let headers = req.headers().clone();
        let upgrade = hyper::upgrade::on(&mut req);
        let path = req.uri().path().to_owned();
        if path == "/echo" {
            // Answers at once, then sends back each chunk of the request
            // body as it arrives: both bodies in flight at the same time.
            let (tx, rx) = mpsc::channel(1);
            let mut body = req.into_body();
            tokio::spawn(async move {
                while let Some(Ok(frame)) = body.frame().await {
                    if let Ok(data) = frame.into_data()
                        && tx.send(Ok(data)).await.is_err()
                    {
                        return;
                    }
                }
            });
            return Response::new(ChannelBody(rx));
        }
        // Read the whole request body, counting (never keeping) its bytes.
        let mut body_len = 0;
        let mut trailers = None;
        let mut body = req.into_body();
        if path != "/ws" {
            while let Some(Ok(frame)) = body.frame().await {
                match frame.into_data() {
                    Ok(data) => body_len += data.len(),
                    Err(frame) => trailers = frame.into_trailers().ok(),
                }
            }
        }
        self.seen.lock().unwrap().push(Seen {
            target,
            headers: headers.clone(),
            body_len,
            trailers,
        });
        let (tx, rx) = mpsc::channel(4);
        let mut response = Response::new(ChannelBody(rx));
        match path.as_str() {
            "/download" => {
                tokio::spawn(async move {
                    let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
                    for _ in 0..256 {
                        if tx.send(Ok(chunk.clone())).await.is_err() {
                            return;
                        }
                    }
                });
            }
            "/sse" => {
                response
                    .headers_mut()
                    .insert("content-type", "text/event-stream".parse().unwrap());
                let gate = self.sse_gate.lock().await.take();
                tokio::spawn(async move {
                    let _ = tx.send(Ok(Bytes::from_static(b"data: one\n\n"))).await;
                    if let Some(mut gate) = gate {
                        let _ = gate.recv().await;
                    }
                    let _ = tx.send(Ok(Bytes::from_static(b"data: two\n\n"))).await;
                });
            }
            "/fixed" => {
                response
                    .headers_mut()
                    .insert("content-length", "5".parse().unwrap());
                tokio::spawn(async move {
                    let _ = tx.send(Ok(Bytes::from_static(b"fixed"))).await;
                });
            }
            "/break" => {
                response
                    .headers_mut()
                    .insert("content-length", "100".parse().unwrap());
                tokio::spawn(async move {
                    let _ = tx.send(Ok(Bytes::from(vec![b'y'; 50]))).await;
                    let _ = tx
                        .send(Err(std::io::Error::other("upstream broke off")))
                        .await;
                });
            }
            "/never" => {
                // Never answers: the gateway's timeout must.
                std::future::pending::<()>().await;
            }
            "/ws" | "/reflect-101" => {
                *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                // `/ws` answers the handshake as RFC 6455 says; `/reflect-101`
                // is a route that answers a bare 101 (a status reflected
                // from a parameter, say).
                if path == "/ws" {
                    response
                        .headers_mut()
                        .insert("upgrade", "websocket".parse().unwrap());
                    response
                        .headers_mut()
                        .insert("connection", "upgrade".parse().unwrap());
                    if let Some(key) = headers.get("sec-websocket-key") {
                        response
                            .headers_mut()
                            .insert("sec-websocket-accept", websocket_accept(key.as_bytes()));
                    }
                }
                tokio::spawn(async move {
                    if let Ok(upgraded) = upgrade.await {
                        let mut io = TokioIo::new(upgraded);
                        let mut buf = [0u8; 1024];
                        while let Ok(n) = io.read(&mut buf).await {
                            if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                });
                drop(tx);
            }
            _ => {
                let body = format!("upstream saw {path}");
                tokio::spawn(async move {
                    let _ = tx.send(Ok(Bytes::from(body))).await;
                });
            }
        }
        response
    }
}

/// `GET path` over HTTP/1.1 with the full-access key.
async fn get_with_key(addr: SocketAddr, path: &str) -> Resp {
    send(
        Proto::H1,
        addr,
        Method::GET,
        path,
        &[("x-token", "full-access-key-1")],
    )
    .await
}

pub(crate) fn gateway_config(upstream: SocketAddr, timeout: Duration) -> AppConfig {
    AppConfig {
        gateway: Some(GatewayConfig {
            timeout,
            public: vec![parse_public("GET:/docs/*").unwrap()],
            ..GatewayConfig::new(Upstream::parse(&format!("http://{upstream}")).unwrap())
        }),
        ..AppConfig::default()
    }
}

/// tokengate in gateway mode in front of `upstream`.
async fn gateway_at(upstream: SocketAddr, timeout: Duration) -> TestServer {
    TestServer::with(
        keys_from(KEYS),
        gateway_config(upstream, timeout),
        Limits::default(),
    )
    .await
}

async fn gateway(timeout: Duration) -> (TestServer, Upstream_) {
    let up = Upstream_::default();
    let addr = up.start().await;
    (gateway_at(addr, timeout).await, up)
}

#[tokio::test]
async fn header_hygiene_and_byte_for_byte_targets() {
    let (s, up) = gateway(Duration::from_secs(30)).await;
    let got = raw(
        s.addr,
        b"GET /a%20b/%7e?x=%20&y HTTP/1.1\r\nHost: api.example\r\nX-Token: full-access-key-1\r\n\
          Connection: close, x-auth-key-label, x-forwarded-for, x-secret-hop\r\nX-Secret-Hop: 1\r\n\
          X-Auth-Key-Label: forged\r\nX-Forwarded-For: 6.6.6.6\r\nKeep-Alive: timeout=5\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&got), [200], "{got}");
    assert!(got.contains("upstream saw /a%20b/%7e"), "{got}");
    let seen = up.last();
    assert_eq!(seen.target, "/a%20b/%7e?x=%20&y");
    let h = &seen.headers;
    assert_eq!(h["x-auth-key-label"], "ops");
    assert_eq!(
        h["x-forwarded-for"], "127.0.0.1",
        "an untrusted peer's chain is dropped"
    );
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "api.example");
    assert_eq!(h["host"], "api.example");
    for gone in ["x-token", "x-secret-hop", "keep-alive"] {
        assert!(h.get(gone).is_none(), "{gone} reached the upstream: {h:?}");
    }
    // Bearer is a credential too; another scheme is the upstream's.
    let r = send(
        Proto::H1,
        s.addr,
        Method::GET,
        "/orders",
        &[("authorization", "Bearer full-access-key-1")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(up.last().headers.get("authorization").is_none());
}

#[tokio::test]
async fn denials_never_reach_the_upstream_and_scopes_and_public_apply() {
    let (s, up) = gateway(Duration::from_secs(30)).await;
    for proto in [Proto::H1, Proto::H2] {
        let before = up.count();
        let r = send(proto, s.addr, Method::GET, "/orders", &[]).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        let r = send(
            proto,
            s.addr,
            Method::GET,
            "/orders",
            &[("x-token", "wrong")],
        )
        .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        let r = send(
            proto,
            s.addr,
            Method::POST,
            "/reports/1",
            &[("x-token", "reports-only-key")],
        )
        .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        // The contract routes belong to the upstream now: /public needs a key.
        let r = send(proto, s.addr, Method::GET, "/public", &[]).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(up.count(), before, "a denied request reached the upstream");
        // In scope: passes with the key's label.
        let r = send(
            proto,
            s.addr,
            Method::GET,
            "/reports/1",
            &[("x-token", "reports-only-key")],
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(up.last().headers["x-auth-key-label"], "reports");
        // --public GET:/docs/*: no key, no label.
        let r = send(proto, s.addr, Method::GET, "/docs/intro", &[]).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(up.last().headers.get("x-auth-key-label").is_none());
        let r = send(proto, s.addr, Method::POST, "/docs/intro", &[]).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        // tokengate's own routes stay tokengate's.
        let before = up.count();
        let r = send(proto, s.addr, Method::GET, "/healthz", &[]).await;
        assert_eq!(r.text(), r#"{"status":"ok"}"#);
        assert_eq!(up.count(), before);
    }
}

#[tokio::test]
async fn bodies_stream_both_ways() {
    let (s, up) = gateway(Duration::from_secs(30)).await;
    // Upload 16 MiB in 64 KiB chunks, produced as they are sent.
    let stream = TcpStream::connect(s.addr).await.unwrap();
    let (mut send_req, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let chunk = Bytes::from(vec![b'u'; 64 * 1024]);
        for _ in 0..256 {
            if tx.send(Ok(chunk.clone())).await.is_err() {
                return;
            }
        }
    });
    let req = Request::post("/upload")
        .header("host", "t")
        .header("x-token", "full-access-key-1")
        .body(ChannelBody(rx))
        .unwrap();
    let resp = send_req.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.into_body().collect().await.unwrap();
    assert_eq!(up.last().body_len, 16 * 1024 * 1024);
    // Download 16 MiB, counted as it arrives.
    let resp = get_with_key(s.addr, "/download").await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.body.len(), 16 * 1024 * 1024);
}

/// Both bodies at once: the upstream answers before the request body is
/// over and echoes each chunk as it comes; the client (HTTP/1.1, then h2c)
/// sends the next chunk only once the previous one came back through the
/// gateway.
#[tokio::test]
async fn request_and_response_bodies_stream_at_the_same_time() {
    type Sent =
        Pin<Box<dyn std::future::Future<Output = hyper::Result<Response<Incoming>>> + Send>>;
    let (s, _up) = gateway(Duration::from_secs(30)).await;
    for h2 in [false, true] {
        let io = TokioIo::new(TcpStream::connect(s.addr).await.unwrap());
        let (tx, rx) = mpsc::channel(1);
        let req = Request::post(format!("http://{}/echo", s.addr))
            .header("x-token", "full-access-key-1")
            .body(ChannelBody(rx))
            .unwrap();
        let sent: Sent = if h2 {
            let (mut send_req, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .unwrap();
            tokio::spawn(conn);
            Box::pin(send_req.send_request(req))
        } else {
            let (mut send_req, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            let (mut parts, body) = req.into_parts();
            parts.uri = "/echo".parse().unwrap();
            parts.headers.insert("host", "t".parse().unwrap());
            Box::pin(send_req.send_request(Request::from_parts(parts, body)))
        };
        let exchange = async move {
            let resp = sent.await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            let mut body = resp.into_body();
            for chunk in ["one", "two", "three"] {
                tx.send(Ok(Bytes::from_static(chunk.as_bytes())))
                    .await
                    .unwrap();
                let mut got = Vec::new();
                while got.len() < chunk.len() {
                    let frame = body.frame().await.expect("more of the echo").unwrap();
                    got.extend_from_slice(&frame.into_data().unwrap());
                }
                assert_eq!(got, chunk.as_bytes());
            }
            drop(tx);
            while let Some(frame) = body.frame().await {
                assert!(frame.unwrap().data_ref().is_none_or(|d| d.is_empty()));
            }
        };
        tokio::time::timeout(Duration::from_secs(30), exchange)
            .await
            .unwrap_or_else(|_| panic!("h2 {h2}: each chunk came back before the next was sent"));
    }
}

#[tokio::test]
async fn server_sent_events_arrive_event_by_event() {
    let (s, up) = gateway(Duration::from_secs(30)).await;
    let (release, gate) = mpsc::channel(1);
    *up.sse_gate.lock().await = Some(gate);
    let mut stream = TcpStream::connect(s.addr).await.unwrap();
    stream
        .write_all(b"GET /sse HTTP/1.1\r\nHost: t\r\nX-Token: full-access-key-1\r\n\r\n")
        .await
        .unwrap();
    // The first event arrives while the upstream is still holding the second.
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let first = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed early");
            got.extend_from_slice(&buf[..n]);
            if got.windows(9).any(|w| w == b"data: one") {
                return;
            }
        }
    })
    .await;
    assert!(first.is_ok(), "{}", String::from_utf8_lossy(&got));
    assert!(!got.windows(9).any(|w| w == b"data: two"));
    release.send(()).await.unwrap();
    let second = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed early");
            got.extend_from_slice(&buf[..n]);
            if got.windows(9).any(|w| w == b"data: two") {
                return;
            }
        }
    })
    .await;
    assert!(second.is_ok(), "{}", String::from_utf8_lossy(&got));
}

#[tokio::test]
async fn upgrades_are_handed_through() {
    let (s, _up) = gateway(Duration::from_secs(30)).await;
    let mut stream = TcpStream::connect(s.addr).await.unwrap();
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: t\r\nX-Token: full-access-key-1\r\nConnection: Upgrade\r\n\
              Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).await.unwrap(), 1, "{head:?}");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    stream.write_all(b"ping through the gateway").await.unwrap();
    let mut echo = vec![0u8; 24];
    tokio::time::timeout(Duration::from_secs(30), stream.read_exact(&mut echo))
        .await
        .expect("echo")
        .unwrap();
    assert_eq!(&echo, b"ping through the gateway");
}

#[tokio::test]
async fn failures_are_502_and_504_without_upstream_detail() {
    // Refused: a port that was bound and released.
    let gone = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let s = gateway_at(gone, Duration::from_secs(30)).await;
    let r = get_with_key(s.addr, "/x").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.text(), r#"{"detail":"Bad Gateway"}"#);
    assert!(!r.text().contains(&gone.port().to_string()));
    // No response head in time: 504 (the upstream is hostile here, the
    // 1 s timeout is the gateway's).
    let (s, _up) = gateway(Duration::from_secs(1)).await;
    let r = get_with_key(s.addr, "/never").await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(r.text(), r#"{"detail":"Gateway Timeout"}"#);
    let m = get_with_key(s.addr, "/metrics").await;
    assert!(
        m.text()
            .contains(r#"tokengate_upstream_errors_total{kind="timeout"} 1"#),
        "{}",
        m.text()
    );
}

#[tokio::test]
async fn a_body_broken_mid_way_never_looks_complete() {
    let (s, _up) = gateway(Duration::from_secs(30)).await;
    let mut stream = TcpStream::connect(s.addr).await.unwrap();
    stream
        .write_all(b"GET /break HTTP/1.1\r\nHost: t\r\nX-Token: full-access-key-1\r\n\r\n")
        .await
        .unwrap();
    let got = crate::support::read_to_close(&mut stream).await;
    // The head promised 100 bytes: the client gets at most part of them (or
    // nothing at all, if nothing was flushed yet) and a closed connection.
    assert!(
        got.is_empty() || got.contains("content-length: 100"),
        "{got}"
    );
    let body = got.split("\r\n\r\n").nth(1).unwrap_or("");
    assert!(body.len() < 100, "a truncated body looked complete: {got}");
    // Over HTTP/2 the stream is reset: the client sees an error, not a body.
    let stream = TcpStream::connect(s.addr).await.unwrap();
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get(format!("http://{}/break", s.addr))
        .header("x-token", "full-access-key-1")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    // Reset before the head, or during the body: an error either way.
    if let Ok(resp) = h2.send_request(req).await {
        assert!(resp.into_body().collect().await.is_err());
    }
}

/// Upstream connections are kept alive and shared: requests one after the
/// other, each from a client connection of its own, over HTTP/1.1 and h2c,
/// with chunked, fixed-length and empty responses, all go over the one
/// upstream connection (each went back to the pool when its response ended).
#[tokio::test]
async fn upstream_connections_are_kept_alive_and_shared() {
    let (s, up) = gateway(Duration::from_secs(30)).await;
    for round in 0..3 {
        for (proto, path, body) in [
            (Proto::H1, "/chunked", "upstream saw /chunked"),
            (Proto::H1, "/fixed", "fixed"),
            (Proto::H2, "/chunked", "upstream saw /chunked"),
            (Proto::H2, "/fixed", "fixed"),
        ] {
            let r = send(
                proto,
                s.addr,
                Method::GET,
                path,
                &[("x-token", "full-access-key-1")],
            )
            .await;
            assert_eq!(r.status, StatusCode::OK, "round {round} {proto:?} {path}");
            assert_eq!(r.text(), body);
        }
        let r = send(
            Proto::H1,
            s.addr,
            Method::HEAD,
            "/fixed",
            &[("x-token", "full-access-key-1")],
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.text(), "");
    }
    assert_eq!(up.count(), 15);
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
}

/// A raw upstream's answer to one request: reads its head, writes `200 ok`
/// (keep-alive: nothing says otherwise). `false` if the peer went first.
async fn answer_ok(stream: &mut TcpStream) -> bool {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    stream
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        .await
        .is_ok()
}

/// An upstream that answers one request per connection, keeps the
/// connection open (it says nothing of closing it) until the response is
/// through the gateway, then closes it while it sits in the gateway's pool:
/// the next request must not be a 502 (the closed connection is noticed
/// when it is taken, or the request, refused by it unsent, is sent once more
/// on a new one).
#[tokio::test]
async fn a_pooled_connection_the_upstream_closed_is_not_a_502() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    // The test's word to close the connection, and the upstream's that it did.
    let (close_tx, close_rx) = mpsc::unbounded_channel::<tokio::sync::oneshot::Sender<()>>();
    let close_rx = Arc::new(tokio::sync::Mutex::new(close_rx));
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let close_rx = close_rx.clone();
            tokio::spawn(async move {
                if !answer_ok(&mut stream).await {
                    return;
                }
                let done = close_rx.lock().await.recv().await;
                drop(stream);
                if let Some(done) = done {
                    let _ = done.send(());
                }
            });
        }
    });
    let s = gateway_at(upstream, Duration::from_secs(30)).await;
    for i in 0..3 {
        let r = get_with_key(s.addr, "/x").await;
        assert_eq!(r.status, StatusCode::OK, "request {i}");
        assert_eq!(r.text(), "ok");
        let (done_tx, done) = tokio::sync::oneshot::channel();
        close_tx.send(done_tx).unwrap();
        tokio::time::timeout(Duration::from_secs(30), done)
            .await
            .expect("the upstream closed its connection")
            .unwrap();
    }
}

/// The keep-alive race: the upstream closes a connection that sat idle just
/// as a request arrives on it (here: every connection answers one request
/// and closes when the next one comes in). An idempotent request without a
/// body is sent again on a new connection; a POST is not (it may have been
/// acted on): 502.
#[tokio::test]
async fn an_idempotent_request_the_upstream_dropped_unanswered_is_sent_again() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if answer_ok(&mut stream).await {
                    // The next request's first bytes, then the close.
                    let _ = stream.read(&mut [0u8; 1024]).await;
                }
            });
        }
    });
    // Every reused connection counts as long idle here (the default is
    // `RESEND_IF_IDLE`, 250 ms): no waiting for time to pass.
    let mut config = gateway_config(upstream, Duration::from_secs(30));
    if let Some(gateway) = config.gateway.as_mut() {
        gateway.resend_if_idle = Duration::ZERO;
    }
    let s = TestServer::with(keys_from(KEYS), config, Limits::default()).await;
    let r = get_with_key(s.addr, "/x").await;
    assert_eq!(r.status, StatusCode::OK);
    let r = get_with_key(s.addr, "/x").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(connections.load(Ordering::SeqCst), 2);
    let r = send(
        Proto::H1,
        s.addr,
        Method::POST,
        "/x",
        &[("x-token", "full-access-key-1")],
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        connections.load(Ordering::SeqCst),
        2,
        "a POST is not sent again"
    );
}

/// An idle pooled connection that the upstream closes (its sending half,
/// here, so that it can still see the gateway's end) is closed by the
/// gateway too without any request coming: no socket left half-closed.
#[tokio::test]
async fn an_idle_connection_the_upstream_closed_is_closed_without_a_request() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let (shut_tx, shut) = tokio::sync::oneshot::channel::<()>();
    let (eof_tx, eof) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        assert!(answer_ok(&mut stream).await);
        shut.await.unwrap();
        stream.shutdown().await.unwrap();
        // The gateway's end: EOF (or a reset) once it closed the connection.
        let _ = stream.read(&mut [0u8; 64]).await;
        let _ = eof_tx.send(());
    });
    let s = gateway_at(upstream, Duration::from_secs(30)).await;
    let r = get_with_key(s.addr, "/x").await;
    assert_eq!(r.status, StatusCode::OK);
    shut_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), eof)
        .await
        .expect("the gateway closed the connection the upstream closed")
        .unwrap();
}

#[tokio::test]
async fn h2c_client_in_front_of_an_http1_upstream() {
    let (s, up) = gateway(Duration::from_secs(30)).await;
    let r = send(
        Proto::H2,
        s.addr,
        Method::GET,
        "/orders?id=7",
        &[("x-token", "full-access-key-1")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "upstream saw /orders");
    let seen = up.last();
    assert_eq!(seen.target, "/orders?id=7");
    assert_eq!(seen.headers["host"], s.addr.to_string());
}

/// A request without `Host` (HTTP/1.0) gets the upstream's own, as the
/// address the gateway dials; whatever keys its connection pool never shows.
#[tokio::test]
async fn a_request_without_host_gets_the_upstreams() {
    let up = Upstream_::default();
    let upstream = up.start().await;
    let s = gateway_at(upstream, Duration::from_secs(30)).await;
    let got = raw(
        s.addr,
        b"GET /orders?id=7 HTTP/1.0\r\nX-Token: full-access-key-1\r\n\r\n",
    )
    .await;
    assert!(got.starts_with("HTTP/1.0 200 OK\r\n"), "{got}");
    let seen = up.last();
    assert_eq!(seen.target, "/orders?id=7");
    assert_eq!(seen.headers["host"], upstream.to_string());
    assert!(seen.headers.get("x-forwarded-host").is_none());
}

/// `--admin-listen`: tokengate's own routes there, every path of the main
/// listener upstream (the binary, as an operator runs it).
#[tokio::test]
async fn admin_listener_takes_tokengates_own_routes() {
    let up = Upstream_::default();
    let addr = up.start().await;
    let url = format!("http://{addr}");
    let server = crate::support::Spawned::start(
        &["--upstream", &url, "--admin-listen", "127.0.0.1:0"],
        &[("TOKENGATE_TOKEN", "full-access-key-1")],
    )
    .await;
    server.wait_for_log("admin endpoints on http://").await;
    let log = server.log();
    let admin: SocketAddr = log
        .split("admin endpoints on http://")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no admin address in:\n{log}"));
    // The main listener passes even /healthz on (with a key).
    let r = get_with_key(server.addr, "/healthz").await;
    assert_eq!(r.text(), "upstream saw /healthz");
    let r = send(Proto::H1, server.addr, Method::GET, "/healthz", &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // The admin listener answers itself and passes nothing on.
    let before = up.count();
    let r = send(Proto::H1, admin, Method::GET, "/healthz", &[]).await;
    assert_eq!(r.text(), r#"{"status":"ok"}"#);
    let r = get_with_key(admin, "/orders").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = send(
        Proto::H1,
        admin,
        Method::GET,
        "/auth/verify",
        &[
            ("x-token", "full-access-key-1"),
            ("x-original-uri", "/orders"),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(up.count(), before);
}

/// An `https://` upstream with a private CA (`--upstream-ca`), and HTTP/2 to
/// it by ALPN (`--upstream-http2`).
#[tokio::test]
async fn https_upstream_with_a_private_ca() {
    use std::sync::Arc as StdArc;
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let der = certified.cert.der().clone();
    let key =
        rustls::pki_types::PrivateKeyDer::try_from(certified.signing_key.serialize_der()).unwrap();
    let provider = StdArc::new(rustls::crypto::ring::default_provider());
    for http2 in [false, true] {
        let mut server_config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], key.clone_key())
            .unwrap();
        server_config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(StdArc::new(server_config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = service_fn(|req: Request<Incoming>| async move {
                        let body =
                            format!("tls upstream saw {:?} {}", req.version(), req.uri().path());
                        Ok::<_, Infallible>(Response::new(http_body_util::Full::new(Bytes::from(
                            body,
                        ))))
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        let config = AppConfig {
            gateway: Some(GatewayConfig {
                ca: vec![der.clone()],
                http2,
                ..GatewayConfig::new(Upstream::parse(&format!("https://localhost:{port}")).unwrap())
            }),
            ..AppConfig::default()
        };
        let s = TestServer::with(keys_from(KEYS), config, Limits::default()).await;
        let r = get_with_key(s.addr, "/secure").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let want = if http2 { "HTTP/2.0" } else { "HTTP/1.1" };
        assert_eq!(r.text(), format!("tls upstream saw {want} /secure"));
        // Without the CA the upstream's certificate is refused: 502.
        let untrusting = AppConfig {
            gateway: Some(GatewayConfig {
                http2,
                ..GatewayConfig::new(Upstream::parse(&format!("https://localhost:{port}")).unwrap())
            }),
            ..AppConfig::default()
        };
        let s = TestServer::with(keys_from(KEYS), untrusting, Limits::default()).await;
        let r = get_with_key(s.addr, "/secure").await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    }
}

/// The drain waits for tunnels, and closes those still open at its deadline.
#[tokio::test]
async fn tunnels_still_open_at_the_drain_deadline_are_closed() {
    let up = Upstream_::default();
    let addr = up.start().await;
    let limits = Limits {
        shutdown_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let s = TestServer::with(
        keys_from(KEYS),
        gateway_config(addr, Duration::from_secs(30)),
        limits,
    )
    .await;
    let mut stream = TcpStream::connect(s.addr).await.unwrap();
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: t\r\nX-Token: full-access-key-1\r\nConnection: Upgrade\r\n\
              Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).await.unwrap(), 1);
        head.push(byte[0]);
    }
    stream.write_all(b"hello").await.unwrap();
    let mut echo = [0u8; 5];
    stream.read_exact(&mut echo).await.unwrap();
    // The tunnel is open and idle when shutdown begins: the drain waits the
    // whole deadline for it, then closes it.
    let outcome = s.stop_with_outcome().await;
    assert_eq!(outcome, Some(tokengate::Stopped::DeadlineReached(1)));
    let closed = crate::support::closed_within(&mut stream, Duration::from_secs(30)).await;
    assert!(closed.is_some(), "the tunnel outlived the drain");
}

/// Proxied requests are counted under `route="upstream"` and get an
/// access-log line (the binary, with `--access-log`).
#[tokio::test]
async fn proxied_requests_are_counted_and_logged() {
    let up = Upstream_::default();
    let addr = up.start().await;
    let url = format!("http://{addr}");
    let mut cmd = crate::support::command(
        &[
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &url,
            "--access-log",
        ],
        &[("TOKENGATE_TOKEN", "full-access-key-1")],
    );
    let mut child = cmd.spawn().unwrap();
    let (gw, _lines) = crate::support::wait_for_address(&mut child).await;
    let r = get_with_key(gw, "/orders?secret-query=1").await;
    assert_eq!(r.status, StatusCode::OK);
    let m = get_with_key(gw, "/metrics").await;
    assert!(
        m.text()
            .contains(r#"tokengate_requests_total{route="upstream",status="200"} 1"#),
        "{}",
        m.text()
    );
    assert!(
        m.text()
            .contains(r#"tokengate_upstream_requests_total{status="200"} 1"#)
    );
    let out = crate::support::terminate(child).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.contains("upstream=true"))
        .unwrap_or_else(|| panic!("no access line for the proxied request:\n{stdout}"));
    assert!(
        line.contains("path=/orders") && line.contains("status=200") && line.contains("key=env"),
        "{line}"
    );
    assert!(
        !line.contains("secret-query") && !line.contains("full-access-key-1"),
        "{line}"
    );
}

/// In gateway mode the OpenAPI document no longer claims the contract routes.
#[tokio::test]
async fn openapi_in_gateway_mode_leaves_the_contract_routes_out() {
    let (s, _up) = gateway(Duration::from_secs(30)).await;
    let r = send(Proto::H1, s.addr, Method::GET, "/openapi.json", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    let doc: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert!(doc["paths"]["/public"].is_null());
    assert!(doc["paths"]["/protected"].is_null());
    assert!(doc["paths"]["/auth/verify"].is_object());
}

/// One access-log schema: proxied lines and tokengate's own carry the same
/// fields, typed the same; `bytes` is a number (it was the string `"4155"` on
/// proxied lines), absent only when a streamed body has no length.
#[tokio::test]
async fn access_log_bytes_is_a_number_on_every_line() {
    let up = Upstream_::default();
    let addr = up.start().await;
    let url = format!("http://{addr}");
    let mut cmd = crate::support::command(
        &[
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &url,
            "--access-log",
            "--log-format",
            "json",
        ],
        &[("TOKENGATE_TOKEN", "full-access-key-1")],
    );
    let mut child = cmd.spawn().unwrap();
    let (gw, _lines) = crate::support::wait_for_address(&mut child).await;
    assert_eq!(get_with_key(gw, "/orders").await.status, StatusCode::OK);
    assert_eq!(get_with_key(gw, "/healthz").await.status, StatusCode::OK);
    let out = crate::support::terminate(child).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let fields_of = |path: &str| {
        lines
            .iter()
            .find(|l| l["fields"]["path"] == path)
            .map(|l| l["fields"].as_object().unwrap().clone())
            .unwrap_or_else(|| panic!("no line for {path}:\n{stdout}"))
    };
    let proxied = fields_of("/orders");
    let own = fields_of("/healthz");
    assert!(own["bytes"].is_u64(), "{stdout}");
    // The recording upstream streams its body without a length.
    assert!(proxied.get("bytes").is_none_or(|b| b.is_u64()), "{stdout}");
    let names = |f: &serde_json::Map<String, serde_json::Value>| {
        let mut names: Vec<String> = f.keys().filter(|k| *k != "bytes").cloned().collect();
        names.sort();
        names
    };
    assert_eq!(names(&proxied), names(&own), "{stdout}");
    for (name, value) in &proxied {
        let same_type = std::mem::discriminant(value) == std::mem::discriminant(&own[name]);
        assert!(same_type, "{name} is typed differently: {stdout}");
    }
}
