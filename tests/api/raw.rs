//! Raw-socket tests for what client libraries normalise away.

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::h2abuse::{HEADERS, PREFACE, SETTINGS, frame, get_block, read_until};
use crate::support::{TestServer, raw, read_to_close, request, statuses};

const KEY_LINE: &str = "X-Token: mysecrettoken\r\n";

async fn status_of(server: &TestServer, request: &[u8]) -> Vec<u16> {
    statuses(&raw(server.addr, request).await)
}

#[tokio::test]
async fn duplicate_token_headers_in_both_orders() {
    let server = TestServer::start().await;
    for extra in [
        "X-Token: mysecrettoken\r\nX-Token: wrong\r\n",
        "X-Token: wrong\r\nX-Token: mysecrettoken\r\n",
        "x-token: mysecrettoken\r\nX-TOKEN: mysecrettoken\r\n",
        "Authorization: Bearer mysecrettoken\r\nAuthorization: Bearer x\r\n",
        "Authorization: Bearer x\r\nAuthorization: Bearer mysecrettoken\r\n",
    ] {
        assert_eq!(
            status_of(&server, &request("GET", "/protected", None, extra)).await,
            [401],
            "{extra:?}"
        );
    }
}

#[tokio::test]
async fn whitespace_and_name_case() {
    let server = TestServer::start().await;
    for extra in [
        "X-Token:mysecrettoken\r\n",
        "X-Token:    mysecrettoken   \r\n",
        "X-Token:\tmysecrettoken\t\r\n",
        "x-tOkEn: mysecrettoken\r\n",
        "AUTHORIZATION: bEaReR mysecrettoken\r\n",
        "Authorization:   Bearer    mysecrettoken  \r\n",
    ] {
        assert_eq!(
            status_of(&server, &request("GET", "/protected", None, extra)).await,
            [200],
            "{extra:?}"
        );
    }
    for extra in [
        "X-Token: mysecret token\r\n",
        "X-Token: mysecrettoken\x01\r\n",
    ] {
        let got = status_of(&server, &request("GET", "/protected", None, extra)).await;
        assert!(got == [401] || got == [400], "{extra:?}: {got:?}");
    }
}

/// RFC 9112 §3.2.2: the absolute-form target's authority is the host; a
/// `Host` that names another is refused, not ignored.
#[tokio::test]
async fn absolute_form_with_another_host_is_refused() {
    let server = TestServer::start().await;
    assert_eq!(
        status_of(
            &server,
            &request("GET", "http://upstream.example/public", None, "")
        )
        .await,
        [400]
    );
}

#[tokio::test]
async fn absolute_form_routes_by_path() {
    let server = TestServer::start().await;
    let abs = "http://t/protected";
    assert_eq!(
        status_of(&server, &request("GET", abs, None, KEY_LINE)).await,
        [200]
    );
    assert_eq!(
        status_of(&server, &request("GET", abs, None, "")).await,
        [401]
    );
    assert_eq!(
        status_of(&server, &request("GET", "http://t/public?q=1", None, "")).await,
        [200]
    );
    assert_eq!(
        status_of(&server, &request("GET", "http://t/nope", None, KEY_LINE)).await,
        [404]
    );
    let redirect = raw(server.addr, &request("GET", "http://t/public/", None, "")).await;
    assert!(redirect.contains("location: /public\r\n"), "{redirect}");
}

#[tokio::test]
async fn percent_encoding_on_the_wire() {
    let server = TestServer::start().await;
    assert_eq!(
        status_of(&server, &request("GET", "/%70ublic", None, "")).await,
        [200]
    );
    assert_eq!(
        status_of(&server, &request("GET", "/%70rotected", None, "")).await,
        [401]
    );
    assert_eq!(
        status_of(&server, &request("GET", "/%70rotected", None, KEY_LINE)).await,
        [200]
    );
    // An escaped separator is refused, never decoded (`crate::path`).
    for target in [
        "/public%2F",
        "/%2Fpublic",
        "/%2fprotected",
        "/.%2e/public",
        "/public/..",
    ] {
        assert_eq!(
            status_of(&server, &request("GET", target, None, KEY_LINE)).await,
            [400],
            "{target}"
        );
    }
}

#[tokio::test]
async fn pipelined_requests_answer_in_order() {
    let server = TestServer::start().await;
    let two = format!(
        "GET /protected HTTP/1.1\r\nHost: t\r\n{KEY_LINE}\r\nGET /protected HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    );
    let transcript = raw(server.addr, two.as_bytes()).await;
    assert_eq!(statuses(&transcript), [200, 401], "{transcript}");

    let many: String = (0..50)
        .map(|i| {
            if i % 2 == 0 {
                req_keepalive("/public")
            } else {
                req_keepalive("/nope")
            }
        })
        .chain(std::iter::once(
            String::from_utf8(request("GET", "/protected", None, KEY_LINE)).unwrap(),
        ))
        .collect();
    let got = statuses(&raw(server.addr, many.as_bytes()).await);
    let mut want: Vec<u16> = (0..50)
        .map(|i| if i % 2 == 0 { 200 } else { 404 })
        .collect();
    want.push(200);
    assert_eq!(got, want);
}

fn req_keepalive(target: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n")
}

#[tokio::test]
async fn host_header_rules() {
    let server = TestServer::start().await;
    let bad = raw(
        server.addr,
        b"GET /public HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&bad), [400], "{bad}");
    assert!(bad.ends_with(r#"{"detail":"Bad Request"}"#), "{bad}");
    let two = raw(
        server.addr,
        b"GET /public HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&two), [400], "{two}");
    let old = raw(server.addr, b"GET /public HTTP/1.0\r\n\r\n").await;
    assert!(
        old.starts_with("HTTP/1.0 200") || old.starts_with("HTTP/1.1 200"),
        "{old}"
    );
    assert!(
        old.ends_with(r#"{"message":"Welcome to the public route!"}"#),
        "{old}"
    );
}

/// `CONNECT` gets 405 with `allow`, and the connection goes on serving.
#[tokio::test]
async fn connect_gets_405_and_the_connection_does_not_hang() {
    let server = TestServer::start().await;
    let got = raw(
        server.addr,
        b"CONNECT host:443 HTTP/1.1\r\nHost: host:443\r\n\r\nGET /public HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&got), [405, 200], "{got}");
    assert!(
        got.to_ascii_lowercase()
            .contains("allow: get, head, options"),
        "{got}"
    );
}

/// RFC 9112 §3.2: a target without its leading `/` (authority-form outside
/// CONNECT) or `*` outside OPTIONS is a 400.
#[tokio::test]
async fn targets_that_are_not_origin_form_are_400() {
    let server = TestServer::start().await;
    for target in ["public", "*"] {
        let got = raw(server.addr, &request("GET", target, None, "")).await;
        assert_eq!(statuses(&got), [400], "{target}: {got}");
        assert!(got.ends_with(r#"{"detail":"Bad Request"}"#), "{got}");
    }
}

/// The server tells HTTP/1 from h2c by peeking at the first bytes: whatever
/// arrived first, and however the rest follows, the request is served in
/// the protocol it is in. Bytes that match the HTTP/2 preface so far leave
/// the decision to hyper-util's auto builder; any other byte means HTTP/1.
#[tokio::test]
async fn first_bytes_arriving_in_pieces() {
    let server = TestServer::start().await;
    // HTTP/1: a GET (ruled out at its first byte), a PRI that is not the
    // preface (ruled out at its 10th), and cuts at the start, mid-line and
    // mid-head.
    let get = request("GET", "/public", None, "");
    let pri = b"PRI * HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".to_vec();
    for (bytes, cut, want) in [
        (&get, 1, 200),
        (&get, 3, 200),
        (&get, 20, 200),
        (&pri, 1, 0),
        (&pri, 9, 0),
        (&pri, 12, 0),
    ] {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        s.write_all(&bytes[..cut]).await.unwrap();
        tokio::task::yield_now().await;
        s.write_all(&bytes[cut..]).await.unwrap();
        let got = statuses(&read_to_close(&mut s).await);
        if want == 0 {
            // PRI is no method tokengate routes: some 4xx, on HTTP/1.1.
            assert!(
                got.len() == 1 && (400..500).contains(&got[0]),
                "{cut}: {got:?}"
            );
        } else {
            assert_eq!(got, [want], "cut at {cut}");
        }
    }
    // h2c: the preface cut after 1, 16 and 23 bytes, then the rest with a
    // request: answered on stream 1.
    for cut in [1, 16, 23] {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        s.write_all(&PREFACE[..cut]).await.unwrap();
        tokio::task::yield_now().await;
        let mut rest = PREFACE[cut..].to_vec();
        rest.extend(frame(SETTINGS, 0, 0, &[]));
        rest.extend(frame(HEADERS, 0x1 | 0x4, 1, &get_block()));
        s.write_all(&rest).await.unwrap();
        read_until(&mut s, |f| f.kind == HEADERS && f.stream == 1).await;
    }
}
