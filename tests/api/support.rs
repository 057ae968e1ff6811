//! `TestServer` (binds 127.0.0.1:0, shuts down on drop) and small HTTP/1.1,
//! h2c and raw-TCP clients.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokengate::auth::{Digest, Key, KeySource};
use tokengate::{App, AppConfig, KeySet, Limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const KEY: &str = "mysecrettoken";
pub const WRONG: &str = "not-the-key";

pub struct TestServer {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

pub fn keys(tokens: &[&str]) -> KeySet {
    let mut set = KeySet::new();
    for (i, t) in tokens.iter().enumerate() {
        set.insert(Key::new(
            Digest::of(t.as_bytes()),
            format!("key-{}", i + 1),
            KeySource::Env,
        ))
        .unwrap();
    }
    set
}

impl TestServer {
    /// The default contract: demo key, default realm and header.
    pub async fn start() -> Self {
        Self::with(keys(&[KEY]), AppConfig::default(), Limits::default()).await
    }

    pub async fn with(keys: KeySet, app: AppConfig, limits: Limits) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Arc::new(App::new(keys, &app).unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(tokengate::serve(listener, app, limits, async {
            let _ = rx.await;
        }));
        TestServer {
            addr,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    /// Begins the graceful shutdown and waits for `serve` to return.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(30), handle)
                .await
                .expect("serve returns after shutdown")
                .unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    H1,
    H2,
}

pub const BOTH: [Proto; 2] = [Proto::H1, Proto::H2];

/// One request on a fresh connection, with hyper's client.
pub async fn send(
    proto: Proto,
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> Resp {
    let mut builder = Request::builder().method(method);
    builder = match proto {
        Proto::H1 => builder.uri(path).header("host", addr.to_string()),
        Proto::H2 => builder.uri(format!("http://{addr}{path}")),
    };
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let req = builder.body(Empty::<Bytes>::new()).unwrap();
    let stream = TcpStream::connect(addr).await.unwrap();
    let io = TokioIo::new(stream);
    let resp = match proto {
        Proto::H1 => {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            sender.send_request(req).await.unwrap()
        }
        Proto::H2 => {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .unwrap();
            tokio::spawn(conn);
            sender.send_request(req).await.unwrap()
        }
    };
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Resp {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub async fn get(proto: Proto, addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Resp {
    send(proto, addr, Method::GET, path, headers).await
}

/// Writes `bytes` and reads until the server closes (or 10 s pass).
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    read_to_close(&mut stream).await
}

/// Reads until EOF, a reset, or 10 s; returns what arrived (lossy UTF-8).
pub async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The status codes of every response in a raw HTTP/1.1 transcript, in order.
pub fn statuses(transcript: &str) -> Vec<u16> {
    transcript
        .split("HTTP/1.1 ")
        .skip(1)
        .filter_map(|s| s.get(..3)?.parse().ok())
        .collect()
}
