//! The floor, shared by `benches/roundtrip.rs` and `tests/allocations.rs`: the
//! least a hyper server can do — a bare `service_fn` that answers every request
//! with the same static JSON body and `content-type`, on hyper-util's auto
//! builder (HTTP/1.1 + h2c). No routing, no auth, no limits.
//! (`benches/peers/floor/` is the same server as a standalone binary.)

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// Serves `body` for every request on `listener`, for ever.
pub(crate) async fn floor(listener: TcpListener, body: &'static [u8]) {
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |_req: Request<Incoming>| async move {
                let mut resp = Response::new(Full::new(Bytes::from_static(body)));
                resp.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                Ok::<_, Infallible>(resp)
            });
            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}
