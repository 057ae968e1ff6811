//! The gateway floor: a bare hyper proxy. hyper-util's pooled keep-alive
//! client, no auth, no header work: every request goes to the upstream as it
//! came, every response back as it came. What tokengate's gateway mode is
//! measured against.
//!
//! Usage: peer-proxy LISTEN_ADDR UPSTREAM_ADDR

use std::convert::Infallible;

use http::{Request, Uri};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8002".to_owned());
    let upstream = args.next().unwrap_or_else(|| "127.0.0.1:8001".to_owned());
    let listener = TcpListener::bind(&addr).await.expect("bind");
    eprintln!("proxy listening on http://{}", listener.local_addr().expect("addr"));
    let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build_http();
    let accept = async {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            let client = client.clone();
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |mut req: Request<Incoming>| {
                    let client = client.clone();
                    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
                    *req.uri_mut() = Uri::try_from(format!("http://{upstream}{pq}")).expect("uri");
                    async move {
                        Ok::<_, Infallible>(match client.request(req).await {
                            Ok(resp) => resp.map(hyper_util_body),
                            Err(_) => http::Response::builder()
                                .status(502)
                                .body(hyper_util_body_empty())
                                .expect("response"),
                        })
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    };
    tokio::select! {
        () = accept => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

type Body = http_body_util_either::Either;

fn hyper_util_body(b: Incoming) -> Body {
    Body::Upstream(b)
}

fn hyper_util_body_empty() -> Body {
    Body::Empty
}

mod http_body_util_either {
    //! Incoming, or empty (a 502): no boxing.
    use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
    use std::pin::Pin;
    use std::task::{Context, Poll};

    pub enum Either {
        Upstream(Incoming),
        Empty,
    }

    impl Body for Either {
        type Data = Bytes;
        type Error = hyper::Error;

        fn poll_frame(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
            match self.get_mut() {
                Either::Upstream(b) => Pin::new(b).poll_frame(cx),
                Either::Empty => Poll::Ready(None),
            }
        }

        fn size_hint(&self) -> SizeHint {
            match self {
                Either::Upstream(b) => b.size_hint(),
                Either::Empty => SizeHint::with_exact(0),
            }
        }
    }
}
