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
//! With `--pool`, upstream connections are shared instead: every request
//! takes an idle one from a pool common to all client connections (or dials
//! one), drives it in the client connection's task while it is in use, and
//! puts it back when it is idle again.
//!
//! Usage: peer-proxy-inline LISTEN_ADDR UPSTREAM_ADDR [--pool]

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Poll, Waker};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

type UpConn = hyper::client::conn::http1::Connection<TokioIo<TcpStream>, Incoming>;

/// An upstream connection: its sender, and the connection future that does
/// its I/O (polled by whichever client connection's task holds it).
struct Upstream {
    sender: SendRequest<Incoming>,
    conn: UpConn,
}

async fn dial(addr: &str) -> Option<Upstream> {
    let stream = TcpStream::connect(addr).await.ok()?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    Some(Upstream { sender, conn })
}

fn bad_gateway() -> Response<Either<Incoming, Empty<Bytes>>> {
    let mut response = Response::new(Either::Right(Empty::new()));
    *response.status_mut() = http::StatusCode::BAD_GATEWAY;
    response
}

fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8003".to_owned());
    let upstream = args.next().unwrap_or_else(|| "127.0.0.1:8001".to_owned());
    let pooled = args.next().as_deref() == Some("--pool");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = TcpListener::bind(&addr).await.expect("bind");
        eprintln!(
            "proxy-inline{} listening on http://{}",
            if pooled { " --pool" } else { "" },
            listener.local_addr().expect("addr")
        );
        let pool: Rc<RefCell<Vec<Upstream>>> = Rc::default();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let upstream = upstream.clone();
            if pooled {
                tokio::task::spawn_local(serve_pooled(stream, upstream, pool.clone()));
            } else {
                tokio::task::spawn_local(serve_sticky(stream, upstream));
            }
        }
    });
}

/// `--pool`: every request takes an idle upstream connection from a pool
/// shared by all client connections (or dials one), drives it in this
/// client connection's task while the request and its response are on it,
/// and puts it back once it is idle again: the shape a pooled client that
/// keeps upstream I/O in the client's task would have. (No retry when a
/// pooled connection turns out closed, no limits: a measuring peer.)
async fn serve_pooled(stream: TcpStream, upstream: String, pool: Rc<RefCell<Vec<Upstream>>>) {
    #[derive(Default)]
    struct Leases {
        active: Vec<Upstream>,
        waker: Option<Waker>,
    }
    let leases: Rc<RefCell<Leases>> = Rc::default();
    let svc = {
        let (pool, leases) = (pool.clone(), leases.clone());
        service_fn(move |mut req: Request<Incoming>| {
            req.headers_mut().remove(http::header::CONNECTION);
            let (pool, leases, upstream) = (pool.clone(), leases.clone(), upstream.clone());
            async move {
                let taken = pool.borrow_mut().pop();
                let up = match taken {
                    Some(up) => Some(up),
                    None => dial(&upstream).await,
                };
                let Some(mut up) = up else {
                    return Ok::<_, Infallible>(bad_gateway());
                };
                let response = up.sender.send_request(req);
                {
                    let mut leases = leases.borrow_mut();
                    leases.active.push(up);
                    if let Some(waker) = leases.waker.take() {
                        waker.wake();
                    }
                }
                Ok(match response.await {
                    Ok(r) => r.map(Either::Left),
                    Err(_) => bad_gateway(),
                })
            }
        })
    };
    let driver = {
        let (pool, leases) = (pool.clone(), leases.clone());
        std::future::poll_fn(move |cx| {
            let mut leases = leases.borrow_mut();
            if !leases
                .waker
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                leases.waker = Some(cx.waker().clone());
            }
            let mut i = 0;
            while i < leases.active.len() {
                let up = &mut leases.active[i];
                if Pin::new(&mut up.conn).poll(cx).is_ready() {
                    leases.active.swap_remove(i);
                    continue;
                }
                if up.sender.is_ready() {
                    let idle = leases.active.swap_remove(i);
                    pool.borrow_mut().push(idle);
                    continue;
                }
                i += 1;
            }
            Poll::<()>::Pending
        })
    };
    let server =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
    tokio::select! {
        _ = server => {}
        _ = driver => {}
    }
    let idle: Vec<Upstream> = leases
        .borrow_mut()
        .active
        .drain(..)
        .filter(|up| up.sender.is_ready())
        .collect();
    pool.borrow_mut().extend(idle);
}

/// The default: one upstream connection for each client connection, for
/// its whole life.
async fn serve_sticky(stream: TcpStream, upstream: String) {
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
                Err(_) => bad_gateway(),
            })
        }
    });
    let server =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
    // Both in this task: whichever ends first ends the other.
    tokio::select! {
        _ = server => {}
        _ = conn => {}
    }
}
