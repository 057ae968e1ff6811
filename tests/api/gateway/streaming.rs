//! Bodies streamed both ways, server-sent events event by event, upgrades
//! handed through and closed at the drain deadline, an h2c client in front of
//! an HTTP/1.1 upstream.

use super::*;

#[tokio::test]
async fn bodies_stream_both_ways() {
    let (s, up) = gateway(Duration::from_secs(30)).await;
    // Upload 16 MiB in 64 KiB chunks, produced as they are sent.
    let stream = TcpStream::connect(s.addr).await.unwrap();
    let (mut send_req, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let chunk = Bytes::from(vec![b'u'; 64 * 1024]);
        for _ in 0..256 {
            if tx.send(Ok(chunk.clone())).await.is_err() {
                return;
            }
        }
    });
    let req = Request::post("/upload")
        .header("host", "t")
        .header("x-token", "full-access-key-1")
        .body(ChannelBody(rx))
        .unwrap();
    let resp = send_req.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.into_body().collect().await.unwrap();
    assert_eq!(up.last().body_len, 16 * 1024 * 1024);
    // Download 16 MiB, counted as it arrives.
    let resp = get_with_key(s.addr, "/download").await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.body.len(), 16 * 1024 * 1024);
}

/// Both bodies at once: the upstream answers before the request body is
/// over and echoes each chunk as it comes; the client (HTTP/1.1, then h2c)
/// sends the next chunk only once the previous one came back through the
/// gateway.
#[tokio::test]
async fn request_and_response_bodies_stream_at_the_same_time() {
    type Sent =
        Pin<Box<dyn std::future::Future<Output = hyper::Result<Response<Incoming>>> + Send>>;
    let (s, _up) = gateway(Duration::from_secs(30)).await;
    for h2 in [false, true] {
        let io = TokioIo::new(TcpStream::connect(s.addr).await.unwrap());
        let (tx, rx) = mpsc::channel(1);
        let req = Request::post(format!("http://{}/echo", s.addr))
            .header("x-token", "full-access-key-1")
            .body(ChannelBody(rx))
            .unwrap();
        let sent: Sent = if h2 {
            let (mut send_req, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .unwrap();
            tokio::spawn(conn);
            Box::pin(send_req.send_request(req))
        } else {
            let (mut send_req, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            let (mut parts, body) = req.into_parts();
            parts.uri = "/echo".parse().unwrap();
            parts.headers.insert("host", "t".parse().unwrap());
            Box::pin(send_req.send_request(Request::from_parts(parts, body)))
        };
        let exchange = async move {
            let resp = sent.await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            let mut body = resp.into_body();
            for chunk in ["one", "two", "three"] {
                tx.send(Ok(Bytes::from_static(chunk.as_bytes())))
                    .await
                    .unwrap();
                let mut got = Vec::new();
                while got.len() < chunk.len() {
                    let frame = body.frame().await.expect("more of the echo").unwrap();
                    got.extend_from_slice(&frame.into_data().unwrap());
                }
                assert_eq!(got, chunk.as_bytes());
            }
            drop(tx);
            while let Some(frame) = body.frame().await {
                assert!(frame.unwrap().data_ref().is_none_or(|d| d.is_empty()));
            }
        };
        tokio::time::timeout(Duration::from_secs(30), exchange)
            .await
            .unwrap_or_else(|_| panic!("h2 {h2}: each chunk came back before the next was sent"));
    }
}

#[tokio::test]
async fn server_sent_events_arrive_event_by_event() {
    let (s, up) = gateway(Duration::from_secs(30)).await;
    let (release, gate) = mpsc::channel(1);
    *up.sse_gate.lock().await = Some(gate);
    let mut stream = TcpStream::connect(s.addr).await.unwrap();
    stream
        .write_all(b"GET /sse HTTP/1.1\r\nHost: t\r\nX-Token: full-access-key-1\r\n\r\n")
        .await
        .unwrap();
    // The first event arrives while the upstream is still holding the second.
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let first = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed early");
            got.extend_from_slice(&buf[..n]);
            if got.windows(9).any(|w| w == b"data: one") {
                return;
            }
        }
    })
    .await;
    assert!(first.is_ok(), "{}", String::from_utf8_lossy(&got));
    assert!(!got.windows(9).any(|w| w == b"data: two"));
    release.send(()).await.unwrap();
    let second = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed early");
            got.extend_from_slice(&buf[..n]);
            if got.windows(9).any(|w| w == b"data: two") {
                return;
            }
        }
    })
    .await;
    assert!(second.is_ok(), "{}", String::from_utf8_lossy(&got));
}

#[tokio::test]
async fn upgrades_are_handed_through() {
    let (s, _up) = gateway(Duration::from_secs(30)).await;
    let mut stream = TcpStream::connect(s.addr).await.unwrap();
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: t\r\nX-Token: full-access-key-1\r\nConnection: Upgrade\r\n\
              Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(stream.read(&mut byte).await.unwrap(), 1, "{head:?}");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    stream.write_all(b"ping through the gateway").await.unwrap();
    let mut echo = vec![0u8; 24];
    tokio::time::timeout(Duration::from_secs(30), stream.read_exact(&mut echo))
        .await
        .expect("echo")
        .unwrap();
    assert_eq!(&echo, b"ping through the gateway");
}

#[tokio::test]
async fn h2c_client_in_front_of_an_http1_upstream() {
    let (s, up) = gateway(Duration::from_secs(30)).await;
    let r = send(
        Proto::H2,
        s.addr,
        Method::GET,
        "/orders?id=7",
        &[("x-token", "full-access-key-1")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "upstream saw /orders");
    let seen = up.last();
    assert_eq!(seen.target, "/orders?id=7");
    assert_eq!(seen.headers["host"], s.addr.to_string());
}
