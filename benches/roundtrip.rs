//! One keep-alive HTTP/1.1 request and one h2c request through a real server
//! on loopback: tokengate and the floor (a bare hyper `service_fn` returning
//! the same static JSON body for every request) in the same criterion group,
//! so their ratio comes from one run. `roundtrip/gateway`: one keep-alive
//! HTTP/1.1 request through a proxy to the floor — tokengate `--upstream`
//! (key checked) and the bare hyper-util proxy (`common/bare_proxy.rs`).
#![allow(clippy::unwrap_used, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokengate::{App, AppConfig, KeySet, Limits};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

#[path = "common/floor.rs"]
mod floor;

#[path = "common/bare_proxy.rs"]
mod bare_proxy;

const BODY: &[u8] = br#"{"message":"You have access to the protected route!"}"#;

/// tokengate on `listener`: standalone, or in front of `upstream`.
async fn tokengate_server(listener: TcpListener, upstream: Option<SocketAddr>) {
    let keys = KeySet::demo();
    let config = AppConfig {
        gateway: upstream.map(|up| {
            tokengate::gateway::GatewayConfig::new(
                tokengate::gateway::Upstream::parse(&format!("http://{up}")).unwrap(),
            )
        }),
        ..AppConfig::default()
    };
    let app = Arc::new(App::new(keys, &config));
    tokengate::serve(listener, app, Limits::default(), std::future::pending()).await;
}

enum Client {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

impl Client {
    async fn connect(addr: SocketAddr, h2: bool) -> Client {
        let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
        if h2 {
            let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
            tokio::spawn(conn);
            Client::H2(send)
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            Client::H1(send)
        }
    }

    async fn get(&mut self, addr: SocketAddr) -> usize {
        let req = Request::get(format!("http://{addr}/protected"))
            .header("host", "bench")
            .header("x-token", "mysecrettoken")
            .body(Empty::new())
            .unwrap();
        let resp = match self {
            Client::H1(s) => {
                s.ready().await.unwrap();
                s.send_request(req).await.unwrap()
            }
            Client::H2(s) => {
                s.ready().await.unwrap();
                s.send_request(req).await.unwrap()
            }
        };
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.unwrap().to_bytes().len()
    }
}

fn roundtrip(c: &mut Criterion) {
    let rt = Runtime::new().unwrap();
    let (floor_addr, tg_addr) = rt.block_on(async {
        let f = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let t = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addrs = (f.local_addr().unwrap(), t.local_addr().unwrap());
        tokio::spawn(floor::floor(f, BODY));
        tokio::spawn(tokengate_server(t, None));
        addrs
    });
    for (proto, h2) in [("h1", false), ("h2c", true)] {
        let mut group = c.benchmark_group(format!("roundtrip/{proto}"));
        for (name, addr) in [("floor", floor_addr), ("tokengate", tg_addr)] {
            let mut client = rt.block_on(Client::connect(addr, h2));
            group.bench_function(name, |b| {
                b.iter(|| rt.block_on(client.get(addr)));
            });
        }
        group.finish();
    }
    let (proxy_addr, gateway_addr) = rt.block_on(async {
        let p = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let g = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addrs = (p.local_addr().unwrap(), g.local_addr().unwrap());
        tokio::spawn(bare_proxy::bare_proxy(p, floor_addr));
        tokio::spawn(tokengate_server(g, Some(floor_addr)));
        addrs
    });
    let mut group = c.benchmark_group("roundtrip/gateway");
    for (name, addr) in [("bare-proxy", proxy_addr), ("tokengate", gateway_addr)] {
        let mut client = rt.block_on(Client::connect(addr, false));
        group.bench_function(name, |b| {
            b.iter(|| rt.block_on(client.get(addr)));
        });
    }
    group.finish();
}

criterion_group!(benches, roundtrip);
criterion_main!(benches);
