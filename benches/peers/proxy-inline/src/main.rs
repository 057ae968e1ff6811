//! A reference point below the gateway floor: the least a hyper proxy can
//! do. Each client connection gets one upstream connection of its own
//! (hyper's `client::conn::http1`), driven in the same task as the client
//! connection on a current-thread runtime: no pool, no channel between
//! tasks, no auth, no header work (only `Connection` is dropped, so a
//! client's `close` does not end the upstream connection under it).
//!
//! It is not a usable gateway (one upstream connection per client
//! connection, no limits, no TLS); it shows how much of the bare proxy's
//! cost is hyper-util's pooled client and how close hyper itself comes to
//! nginx. `scripts/loadtest-gateway` and `scripts/instructions --gateway`
//! run it beside the others.
//!
//! Usage: peer-proxy-inline LISTEN_ADDR UPSTREAM_ADDR

use std::cell::RefCell;
use std::convert::Infallible;
use std::rc::Rc;

use http::Request;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8003".to_owned());
    let upstream = args.next().unwrap_or_else(|| "127.0.0.1:8001".to_owned());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = TcpListener::bind(&addr).await.expect("bind");
        eprintln!(
            "proxy-inline listening on http://{}",
            listener.local_addr().expect("addr")
        );
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let upstream = upstream.clone();
            tokio::task::spawn_local(async move {
                let Ok(up) = TcpStream::connect(&upstream).await else {
                    return;
                };
                let _ = up.set_nodelay(true);
                let Ok((sender, conn)) =
                    hyper::client::conn::http1::handshake::<_, Incoming>(TokioIo::new(up)).await
                else {
                    return;
                };
                let sender = Rc::new(RefCell::new(sender));
                let svc = service_fn(move |mut req: Request<Incoming>| {
                    req.headers_mut().remove(http::header::CONNECTION);
                    let response = sender.borrow_mut().send_request(req);
                    async move {
                        Ok::<_, Infallible>(match response.await {
                            Ok(r) => r.map(Either::Left),
                            Err(_) => {
                                http::Response::new(Either::Right(Empty::<bytes::Bytes>::new()))
                            }
                        })
                    }
                });
                let server = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc);
                // Both in this task: whichever ends first ends the other.
                tokio::select! {
                    _ = server => {}
                    _ = conn => {}
                }
            });
        }
    });
}
