//! Gateway mode: tokengate in front of an upstream written here, which
//! records what it receives. Header hygiene, credential stripping, scopes and
//! `--public`, denials that never reach the upstream, streaming both ways,
//! server-sent events event by event, a WebSocket-style upgrade, 502/504 and
//! a body broken mid-way, and an h2c client in front of an HTTP/1.1 upstream.
//! This file holds the upstream and the helpers; the tests are in one file per
//! concern.

mod hygiene;
mod recording;
pub(crate) mod streaming;
pub(crate) mod upstream;

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
use tokengate::gateway::Upstream;
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
pub(crate) async fn get_with_key(addr: SocketAddr, path: &str) -> Resp {
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
pub(crate) async fn gateway_at(upstream: SocketAddr, timeout: Duration) -> TestServer {
    TestServer::with(
        keys_from(KEYS),
        gateway_config(upstream, timeout),
        Limits::default(),
    )
    .await
}

pub(crate) async fn gateway(timeout: Duration) -> (TestServer, Upstream_) {
    let up = Upstream_::default();
    let addr = up.start().await;
    (gateway_at(addr, timeout).await, up)
}
