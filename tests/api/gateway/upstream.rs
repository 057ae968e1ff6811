//! The upstream connection pool and its failures: 502/504 without detail, a
//! body broken mid-way, keep-alive and sharing, connections the upstream
//! closed, the keep-alive race, an `https://` upstream with a private CA.

use super::*;

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
pub(crate) async fn answer_ok(stream: &mut TcpStream) -> bool {
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
