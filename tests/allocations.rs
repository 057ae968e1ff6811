//! Heap allocations per request: tokengate against the floor (a bare hyper
//! `service_fn` returning the same static JSON body), counted with dhat.
//!
//! A separate test binary, because it installs a counting global allocator.
//! Client and servers run in one process on a current-thread runtime; the
//! client code is the same for both servers, so any difference per request is
//! the server's.
#![allow(clippy::unwrap_used, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokengate::{App, AppConfig, KeySet, Limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[path = "../benches/common/floor.rs"]
mod floor;

#[path = "../benches/common/bare_proxy.rs"]
mod bare_proxy;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const BODY: &[u8] = br#"{"message":"Welcome to the public route!"}"#;

/// Average heap allocations per request over `n` keep-alive requests.
async fn allocations_per_request(addr: SocketAddr, path: &str, token: Option<&str>, n: u64) -> f64 {
    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let one = async |send: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>| {
        let mut req = Request::get(path).header("host", "t");
        if let Some(t) = token {
            req = req.header("x-token", t);
        }
        let resp = send
            .send_request(req.body(Empty::new()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.unwrap();
    };
    for _ in 0..200 {
        one(&mut send).await;
    }
    let before = dhat::HeapStats::get().total_blocks;
    for _ in 0..n {
        one(&mut send).await;
    }
    let after = dhat::HeapStats::get().total_blocks;
    (after - before) as f64 / n as f64
}

/// One profiler per process (dhat): both measurements run under it, in turn.
#[test]
fn heap_allocations_per_request() {
    let _profiler = dhat::Profiler::builder().testing().build();
    the_request_path_allocates_no_more_than_the_floor();
    the_gateway_allocates_about_what_a_bare_proxy_does();
    an_idle_connection_holds_no_more_heap_than_the_floors();
}

/// Each measurement's runtime: one thread, so that client and servers take
/// turns and what is measured between two points is all of it.
fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The floor and a standalone tokengate (the demo key), each on its own
/// port of this runtime.
async fn floor_and_tokengate() -> (SocketAddr, SocketAddr) {
    let f = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let t = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (floor_addr, tg_addr) = (f.local_addr().unwrap(), t.local_addr().unwrap());
    tokio::spawn(floor::floor(f, BODY));
    let app = Arc::new(App::new(KeySet::demo(), &AppConfig::default()));
    tokio::spawn(tokengate::serve(
        t,
        app,
        Limits::default(),
        std::future::pending(),
    ));
    (floor_addr, tg_addr)
}

fn the_request_path_allocates_no_more_than_the_floor() {
    current_thread().block_on(async {
        let (floor_addr, tg_addr) = floor_and_tokengate().await;

        let n = 2000;
        // The same requests to both (the floor ignores path and token), so
        // client-side and parsing allocations are alike.
        let floor = allocations_per_request(floor_addr, "/public", None, n).await;
        let public = allocations_per_request(tg_addr, "/public", None, n).await;
        let floor_key = allocations_per_request(floor_addr, "/protected", Some("mysecrettoken"), n).await;
        let protected = allocations_per_request(tg_addr, "/protected", Some("mysecrettoken"), n).await;
        eprintln!(
            "allocations per request (client + server): /public floor {floor:.3} tokengate {public:.3}; \
             /protected with key floor {floor_key:.3} tokengate {protected:.3}"
        );
        // The date header is re-rendered once a second (a few allocations per
        // second, on both servers): allow for that, nothing per request.
        assert!(public <= floor + 0.02, "/public: {public:.3} vs floor {floor:.3}");
        assert!(protected <= floor_key + 0.02, "/protected: {protected:.3} vs floor {floor_key:.3}");
    });
}

/// Gateway mode: allocations per proxied request, tokengate against a bare
/// hyper proxy, both in front of the floor. Client, proxy and upstream share
/// the process; only the proxy differs, so the difference is the proxy's.
fn the_gateway_allocates_about_what_a_bare_proxy_does() {
    current_thread().block_on(async {
        let up = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up_addr = up.local_addr().unwrap();
        tokio::spawn(floor::floor(up, BODY));
        let p = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy_addr = p.local_addr().unwrap();
        tokio::spawn(bare_proxy::bare_proxy(p, up_addr));
        let g = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gw_addr = g.local_addr().unwrap();
        let keys = KeySet::demo();
        let config = AppConfig {
            gateway: Some(tokengate::gateway::GatewayConfig::new(
                tokengate::gateway::Upstream::parse(&format!("http://{up_addr}")).unwrap(),
            )),
            ..AppConfig::default()
        };
        let app = Arc::new(App::new(keys, &config));
        tokio::spawn(tokengate::serve(g, app, Limits::default(), std::future::pending()));

        let n = 2000;
        let bare = allocations_per_request(proxy_addr, "/orders", Some("mysecrettoken"), n).await;
        let gateway = allocations_per_request(gw_addr, "/orders", Some("mysecrettoken"), n).await;
        eprintln!(
            "allocations per proxied request (client + proxy + upstream): bare proxy {bare:.3}, tokengate {gateway:.3} ({:+.3})",
            gateway - bare
        );
        // Key check, header hygiene and metrics included, a proxied request
        // allocates what the bare proxy's does (the date header aside).
        assert!(gateway <= bare + 0.02, "gateway {gateway:.3} vs bare proxy {bare:.3}");
    });
}

/// Heap bytes held per idle keep-alive HTTP/1.1 connection after one
/// request: `m` raw connections each get their answer and stay open (in
/// `open`, until the caller is done: a close would free memory meanwhile).
async fn heap_per_idle_connection(addr: SocketAddr, m: usize, open: &mut Vec<TcpStream>) -> f64 {
    let before = dhat::HeapStats::get().curr_bytes;
    for _ in 0..m {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /public HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.ends_with(BODY) {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before the answer");
            got.extend_from_slice(&buf[..n]);
        }
        open.push(s);
    }
    // The servers' tasks finish what follows a response (current thread:
    // each yield runs them).
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let after = dhat::HeapStats::get().curr_bytes;
    (after as f64 - before as f64) / m as f64
}

/// An idle keep-alive connection holds hyper's buffers and the task: no more
/// heap in tokengate than in the floor (hyper-util's auto builder, which
/// hands hyper the first 24 bytes apart, so its read buffer doubles to
/// 16 KiB; tokengate peeks at them instead and keeps 8 KiB).
fn an_idle_connection_holds_no_more_heap_than_the_floors() {
    current_thread().block_on(async {
        let (floor_addr, tg_addr) = floor_and_tokengate().await;
        let m = 64;
        let mut open = Vec::with_capacity(2 * m + 8);
        // Warm-up: lazily built state (the date header, tables) on both.
        heap_per_idle_connection(floor_addr, 4, &mut open).await;
        heap_per_idle_connection(tg_addr, 4, &mut open).await;
        open.reserve(2 * m);
        let floor = heap_per_idle_connection(floor_addr, m, &mut open).await;
        let ours = heap_per_idle_connection(tg_addr, m, &mut open).await;
        eprintln!("heap per idle keep-alive connection: floor {floor:.0} B, tokengate {ours:.0} B");
        assert!(
            ours <= floor,
            "tokengate {ours:.0} B vs floor {floor:.0} B per idle connection"
        );
    });
}
