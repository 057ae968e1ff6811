//! The hostile-input battery (issue items 1–11 and 15): each test asserts a
//! status or a connection outcome, then that the server still answers
//! `GET /public`.

use std::time::Duration;

use http::{Method, StatusCode};
use tokengate::{AppConfig, Limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{KEY, Spawned, TestServer, closed_within, keys, raw, send, statuses};

/// Generous caps: tests must pass on a slow machine. The configured timeouts
/// are short; the caps only stop a broken server from hanging the suite.
pub(crate) const CAP: Duration = Duration::from_secs(15);

fn short_limits() -> Limits {
    Limits {
        // Honest clients on this server send whole heads at once; 1 s is the
        // shortest deadline an honest client meets here.
        header_read_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(2),
        ..Limits::default()
    }
}

pub(crate) async fn short_server() -> TestServer {
    TestServer::with(keys(&[KEY]), AppConfig::default(), short_limits()).await
}

pub(crate) async fn still_serves(server: &TestServer) {
    let got = raw(
        server.addr,
        b"GET /public HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&got), [200], "server no longer answers: {got:?}");
}

pub(crate) async fn still_serves_addr(addr: std::net::SocketAddr) {
    let got = raw(
        addr,
        b"GET /public HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&got), [200], "server no longer answers: {got:?}");
}

/// Drips one byte of a never-ending head every `gap`; returns true if the
/// server closed the connection before the cap.
pub(crate) async fn drip(addr: std::net::SocketAddr, gap: Duration) -> bool {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = b"GET /public HTTP/1.1\r\nHost: t\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let deadline = tokio::time::Instant::now() + CAP;
    let mut i = 0;
    let mut buf = [0u8; 1024];
    while tokio::time::Instant::now() < deadline {
        tokio::select! {
            r = s.read(&mut buf) => match r {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            },
            () = tokio::time::sleep(gap) => {
                if s.write_all(&head[i % head.len()..i % head.len() + 1]).await.is_err() {
                    return true;
                }
                i += 1;
            }
        }
    }
    false
}

#[tokio::test]
async fn b05_head_limits_give_json_431_and_414() {
    let server = TestServer::start().await;
    let big = "a".repeat(17 * 1024);
    let over = raw(
        server.addr,
        format!("GET /public HTTP/1.1\r\nHost: t\r\nX-Big: {big}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert_eq!(statuses(&over), [431], "{over:.200}");
    assert!(over.ends_with(r#"{"detail":"Request Header Fields Too Large"}"#));

    let fields: String = (0..101).map(|i| format!("X-F{i}: v\r\n")).collect();
    let many = raw(
        server.addr,
        format!("GET /public HTTP/1.1\r\nHost: t\r\n{fields}Connection: close\r\n\r\n").as_bytes(),
    )
    .await;
    // Over HTTP/1 hyper's parser rejects it (bare 431: hyper's header arrays
    // stay on the stack at 100 fields); over HTTP/2 the JSON 431 (below).
    assert_eq!(statuses(&many), [431], "{many:.200}");
    let ok_fields: String = (0..97).map(|i| format!("X-F{i}: v\r\n")).collect();
    let fine = raw(
        server.addr,
        format!("GET /public HTTP/1.1\r\nHost: t\r\n{ok_fields}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert_eq!(statuses(&fine), [200]);

    let long = format!("/public?q={}", "x".repeat(9 * 1024));
    let uri = raw(
        server.addr,
        format!("GET {long} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(statuses(&uri), [414], "{uri:.200}");
    assert!(uri.ends_with(r#"{"detail":"URI Too Long"}"#));

    // Far past hyper's own hard limit: still 431 (from hyper, without a body), bounded.
    let huge = "a".repeat(200 * 1024);
    let past = raw(
        server.addr,
        format!("GET /public HTTP/1.1\r\nHost: t\r\nX-Big: {huge}\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(statuses(&past), [431], "{past:.200}");

    // The same limits over HTTP/2.
    let many_h2: Vec<(String, &str)> = (0..101).map(|i| (format!("x-f{i}"), "v")).collect();
    let refs: Vec<(&str, &str)> = many_h2.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let r = send(
        crate::support::Proto::H2,
        server.addr,
        Method::GET,
        "/public",
        &refs,
    )
    .await;
    assert_eq!(r.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(r.text(), r#"{"detail":"Request Header Fields Too Large"}"#);
    let r = send(
        crate::support::Proto::H2,
        server.addr,
        Method::GET,
        "/public",
        &[("x-big", &big)],
    )
    .await;
    assert_eq!(r.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    let r = send(
        crate::support::Proto::H2,
        server.addr,
        Method::GET,
        &long,
        &[],
    )
    .await;
    assert_eq!(r.status, StatusCode::URI_TOO_LONG);
    still_serves(&server).await;
}

#[tokio::test]
async fn b07_smuggling_shapes_are_rejected() {
    let server = TestServer::start().await;
    let smuggled = "GET /protected HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    let cases = [
        format!(
            "POST /public HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
        ),
        format!(
            "POST /public HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n{smuggled}"
        ),
        format!(
            "POST /public HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcd{smuggled}"
        ),
        format!("POST /public HTTP/1.1\r\nHost: t\r\nContent-Length: +5\r\n\r\nabcde{smuggled}"),
        format!(
            "POST /public HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n{smuggled}"
        ),
        format!(
            "POST /public HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n\r\n{smuggled}"
        ),
        format!(
            "POST /public HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: xchunked\r\n\r\n{smuggled}"
        ),
        format!("GET /public HTTP/1.1\r\nHost: t\rX-A: b\r\n\r\n{smuggled}"),
        format!("GET /public HTTP/1.1\r\nHost: t\r\nX-Fold: a\r\n  folded\r\n\r\n{smuggled}"),
        format!("POST /public HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nabcde{smuggled}"),
        format!(
            "POST /public HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n0\r\n\r\n{smuggled}"
        ),
    ];
    for (i, case) in cases.iter().enumerate() {
        let got = raw(server.addr, case.as_bytes()).await;
        let st = statuses(&got);
        if i < 9 {
            // Ambiguous framing: at most one response, never one for the smuggled request.
            assert!(
                st == [400] || st == [405] || st.is_empty(),
                "case {i}: {st:?} {got}"
            );
        } else {
            // Controls with valid framing: a second response is for a real
            // second request, and without its own key it is 401
            // (hyper may also just close, as the body was not read).
            assert!(st == [405, 401] || st == [405], "case {i}: {got}");
        }
    }
    still_serves(&server).await;
}

#[tokio::test]
async fn b08_garbage_is_400_or_closed() {
    let server = TestServer::start().await;
    let client_hello: &[u8] = &[
        0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03, 0x5e, 0x8a, 0x12, 0x00,
        0xff, 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c,
    ];
    let endless = {
        let mut v = b"GET /".to_vec();
        v.extend(std::iter::repeat_n(b'a', 1024 * 1024));
        v
    };
    let cases: Vec<Vec<u8>> = vec![
        client_hello.to_vec(),
        b"\x00\x01\x02\x03\xff\xfe\r\n\r\n".to_vec(),
        b"HELLO WORLD\r\n\r\n".to_vec(),
        b"GET\r\n\r\n".to_vec(),
        b"GET / HTTP/9.9\r\nHost: t\r\n\r\n".to_vec(),
        b"GET /public HTTP/1.1\r\nHost: t\r\nBad Header: x\r\n\r\n".to_vec(),
        b"\r\n\r\n\r\n".to_vec(),
        endless,
    ];
    for (i, case) in cases.iter().enumerate() {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        let _ = s.write_all(case).await;
        let got = closed_within(&mut s, CAP).await.expect("closed");
        let st = statuses(&got);
        assert!(
            st.is_empty() || st == [400] || st == [431] || st == [414] || st == [505],
            "case {i}: {got:.200}"
        );
    }
    still_serves(&server).await;
}

#[tokio::test]
async fn b09_odd_bytes_in_the_token() {
    let server = TestServer::start().await;
    let values: [&[u8]; 7] = [
        b"caf\xc3\xa9",
        b"\xff\xfe\xfd",
        b"mysecrettoken\xff",
        b"a\x7fb",
        b"a\x00b",
        b"a\x1bb",
        b"\x80",
    ];
    for v in values {
        let mut req =
            b"GET /protected HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-Token: ".to_vec();
        req.extend_from_slice(v);
        req.extend_from_slice(b"\r\n\r\n");
        let got = raw(server.addr, &req).await;
        let st = statuses(&got);
        assert!(st == [401] || st == [400] || st.is_empty(), "{v:?}: {got}");
    }
    still_serves(&server).await;
}

#[tokio::test]
async fn b10_expect_continue_is_not_honoured_for_a_405() {
    let server = TestServer::start().await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(b"POST /protected HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 104857600\r\n\r\n")
        .await
        .unwrap();
    let got = closed_within(&mut s, CAP)
        .await
        .expect("closed after the 405");
    assert!(!got.contains("100 Continue"), "{got}");
    assert_eq!(statuses(&got), [405], "{got}");
    still_serves(&server).await;
}

#[tokio::test]
async fn b10b_unread_body_closes_the_connection() {
    let server = TestServer::start().await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(b"POST /public HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\nxxxx")
        .await
        .unwrap();
    let got = closed_within(&mut s, CAP)
        .await
        .expect("closed: the body was not consumed");
    assert_eq!(statuses(&got), [405]);
}

#[tokio::test]
async fn b11_large_body_is_not_buffered() {
    let server = Spawned::start(&[], &[]).await;
    let before = server.rss_kib();
    let total = 10 * 1024 * 1024;
    let head = format!("GET /public HTTP/1.1\r\nHost: t\r\nContent-Length: {total}\r\n\r\n");
    let s = TcpStream::connect(server.addr).await.unwrap();
    let (mut rd, wr) = s.into_split();
    let writer = tokio::spawn(async move {
        let chunk = vec![b'x'; 64 * 1024];
        let mut wr = wr;
        let _ = wr.write_all(head.as_bytes()).await;
        let mut sent = 0;
        while sent < total {
            match tokio::time::timeout(Duration::from_secs(2), wr.write_all(&chunk)).await {
                Ok(Ok(())) => sent += chunk.len(),
                _ => break,
            }
        }
        sent
    });
    let mut first = [0u8; 64];
    let n = tokio::time::timeout(CAP, rd.read(&mut first))
        .await
        .expect("answered promptly")
        .unwrap();
    assert!(
        std::str::from_utf8(&first[..n])
            .unwrap()
            .starts_with("HTTP/1.1 200")
    );
    let sent = writer.await.unwrap();
    let after = server.rss_kib();
    assert!(
        after < before + 4 * 1024,
        "RSS grew from {before} KiB to {after} KiB while {sent} body bytes were sent"
    );
    still_serves_addr(server.addr).await;
}
