//! Secret hygiene: the whole server runs a battery at TRACE level with a known
//! key and a known wrong key; neither string, nor its hex, nor its SHA-256,
//! appears in any log line.

use std::time::Duration;

use http::Method;
use tokengate::Digest;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::{BOTH, Spawned, closed_within, raw, send};

const GOOD: &str = "Zq8-known-key-7731";
const BAD: &str = "Wr0ng-guess-4410";

#[tokio::test]
async fn no_secret_reaches_the_log_at_trace_level() {
    let server = Spawned::start(
        &[
            "--auth-failure-limit",
            "2/m",
            "--auth-failure-burst",
            "3",
            "--header-read-timeout",
            "300ms",
        ],
        &[("TOKENGATE_TOKEN", GOOD), ("RUST_LOG", "trace")],
    )
    .await;
    let addr = server.addr;

    for proto in BOTH {
        for token in [GOOD, BAD] {
            let bearer = format!("Bearer {token}");
            let big = "b".repeat(20 * 1024);
            for headers in [
                vec![("x-token", token)],
                vec![("authorization", bearer.as_str())],
                vec![("x-token", token), ("x-token", token)],
                vec![("x-token", token), ("x-big", big.as_str())],
            ] {
                for path in [
                    "/protected",
                    "/protected?x-token=Zq8-known-key-7731",
                    "/nope",
                    "/public/",
                ] {
                    send(proto, addr, Method::GET, path, &headers).await;
                }
            }
        }
    }
    for token in [GOOD, BAD] {
        let cases = [
            format!("GET /protected HTTP/1.1\r\nHost: t\r\nX-Token: {token}\r\nBad Header\r\n\r\n"),
            format!("GET /{token} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"),
            format!("GET /protected HTTP/1.1\r\nX-Token: {token}\r\nConnection: close\r\n\r\n"),
            format!(
                "POST /protected HTTP/1.1\r\nHost: t\r\nX-Token: {token}\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
            ),
            format!("GET /protected HTTP/1.1\r\nHost: t\r\nX-Token: {token}\x01\r\n\r\n"),
            format!("{token}\r\n\r\n"),
        ];
        for case in cases {
            raw(addr, case.as_bytes()).await;
        }
        // A head that never completes, carrying the token: closed by the timeout.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET /protected HTTP/1.1\r\nX-Token: {token}\r\n").as_bytes())
            .await
            .unwrap();
        closed_within(&mut s, Duration::from_secs(15)).await;
        // Raw HTTP/2 with the token in a literal header.
        let mut block = crate::h2abuse::get_block();
        block.extend_from_slice(&[0x00, 7]);
        block.extend_from_slice(b"x-token");
        block.push(token.len() as u8);
        block.extend_from_slice(token.as_bytes());
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(crate::h2abuse::frame(crate::h2abuse::SETTINGS, 0, 0, &[]));
        bytes.extend(crate::h2abuse::frame(
            crate::h2abuse::HEADERS,
            0x5,
            1,
            &block,
        ));
        bytes.extend(crate::h2abuse::frame(
            crate::h2abuse::HEADERS,
            0x5,
            2,
            &block,
        )); // protocol error
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&bytes).await.unwrap();
        closed_within(&mut s, Duration::from_secs(15)).await;
    }

    let mut server = server;
    server.signal("-TERM");
    assert!(server.wait().await.success());
    let log = server.log_after_exit().await;
    assert!(
        log.lines().count() > 20,
        "expected a chatty TRACE log:\n{log}"
    );
    for secret in [GOOD, BAD] {
        let forms = [
            secret.to_owned(),
            hex_of(secret.as_bytes()),
            hex_of(secret.as_bytes()).to_uppercase(),
            Digest::of(secret.as_bytes()).to_hex(),
            // Rust's escaped byte-string Debug form, and a partial run of it.
            format!("{:?}", secret.as_bytes()),
            secret[..10].to_owned(),
        ];
        for form in forms {
            assert!(!log.contains(&form), "the log contains {form:?}:\n{log}");
        }
    }
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
