//! The gateway floor, shared with `tests/allocations.rs`: a bare hyper proxy —
//! hyper-util's pooled client, no auth, no header work; every request goes to
//! the upstream as it came, every response back as it came.
//! (`benches/peers/proxy/` is the same proxy as a standalone binary.)

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Uri};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// Proxies every request on `listener` to `upstream`, for ever.
pub(crate) async fn bare_proxy(listener: TcpListener, upstream: SocketAddr) {
    let client: Client<HttpConnector, Incoming> =
        Client::builder(TokioExecutor::new()).build_http();
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (client, builder) = (client.clone(), builder.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |mut req: Request<Incoming>| {
                let client = client.clone();
                let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
                let uri = Uri::try_from(format!("http://{upstream}{pq}"));
                async move {
                    if let Ok(uri) = uri {
                        *req.uri_mut() = uri;
                    }
                    let resp = client.request(req).await.map_err(std::io::Error::other);
                    Ok::<_, Infallible>(match resp {
                        Ok(resp) => resp.map(http_body_util::Either::Left),
                        Err(_) => http::Response::new(http_body_util::Either::Right(
                            http_body_util::Empty::new(),
                        )),
                    })
                }
            });
            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}
