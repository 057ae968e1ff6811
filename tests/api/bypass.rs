//! The gate cannot be walked around: what the upstream acts on is what
//! tokengate authorised. One test per way around it that was found (issue
//! 21); each failed on the code before the fix. The upstream is the
//! recording one of `gateway.rs`; a real nginx serving files behind the
//! gateway is in `proxies.rs`.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use http::{Method, StatusCode};
use tokengate::TrustedProxies;
use tokengate::gateway::parse_public;
use tokengate::throttle::ThrottleConfig;
use tokengate::{AppConfig, Limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::gateway::{KEYS, Upstream_, gateway_config};
use crate::support::{Proto, TestServer, keys_from, raw, send, statuses};

/// A gateway with `--public GET:/open/*` in front of a recording upstream.
async fn gate(adjust: impl FnOnce(&mut AppConfig)) -> (TestServer, Upstream_, SocketAddr) {
    let up = Upstream_::default();
    let addr = up.start().await;
    (gate_in_front_of(addr, adjust).await, up, addr)
}

/// A gateway with `--public GET:/open/*` in front of `upstream`.
async fn gate_in_front_of(upstream: SocketAddr, adjust: impl FnOnce(&mut AppConfig)) -> TestServer {
    let mut config = gateway_config(upstream, Duration::from_secs(30));
    if let Some(g) = config.gateway.as_mut() {
        g.public.push(parse_public("GET:/open/*").unwrap());
    }
    adjust(&mut config);
    TestServer::with(keys_from(KEYS), config, Limits::default()).await
}

fn get(target: &str, extra: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: t\r\n{extra}Connection: close\r\n\r\n").into_bytes()
}

/// Item 3: dot segments and escaped separators are refused before the
/// `--public` match and never reach the upstream; ordinary escapes pass
/// byte for byte.
#[tokio::test]
async fn dot_segments_and_escaped_separators_never_reach_the_upstream() {
    let (s, up, _) = gate(|_| {}).await;
    for target in [
        "/open/../admin/secret",
        "/open/./../admin/secret",
        "/open/%2e%2e/admin/secret",
        "/open/.%2e/admin/secret",
        "/open/..%2fadmin%2fsecret",
        "/open/..%5cadmin%5csecret",
        "/open/..\\admin\\secret",
        "/open/..;/admin/secret",
        "/open/secret%00.txt",
        "/open/%c0%ae%c0%ae/admin/secret",
        "/open/%EF%BC%8E%EF%BC%8E%EF%BC%8Fadmin",
        "/open/%252e%252e/admin/secret",
        "http://t/open/../admin/secret",
    ] {
        for key in ["", "X-Token: reports-only-key\r\n"] {
            let got = raw(s.addr, &get(target, key)).await;
            assert_eq!(statuses(&got), [400], "{target}: {got}");
            assert!(got.ends_with(r#"{"detail":"Bad Request"}"#), "{got}");
        }
    }
    // Raw bytes >= 0x80 in the target (full-width dots sent unescaped).
    let mut full_width = b"GET /open/".to_vec();
    full_width.extend_from_slice(
        "．．／admin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".as_bytes(),
    );
    let got = raw(s.addr, &full_width).await;
    assert_eq!(statuses(&got), [400], "{got}");
    assert_eq!(up.count(), 0, "a refused path reached the upstream");
    // Ordinary paths still pass, byte for byte.
    for target in [
        "/open/a%20b",
        "/open/caf%C3%A9",
        "/open/.well-known/x",
        "/open/a..b",
    ] {
        let got = raw(s.addr, &get(target, "")).await;
        assert_eq!(statuses(&got), [200], "{target}: {got}");
        assert_eq!(up.last().target, target);
    }
}

/// Item 2: `Upgrade: h2c` is never passed (the upstream sees a plain
/// request), and a 101 that does not answer an allowed upgrade opens no
/// tunnel: 502, and nothing the client sends next reaches the upstream
/// unchecked.
#[tokio::test]
async fn no_tunnel_but_a_checked_websocket() {
    let (s, up, _) = gate(|_| {}).await;
    let h2c = "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n";
    let got = raw(s.addr, &get("/open/x", h2c)).await;
    assert_eq!(statuses(&got), [200], "{got}");
    let seen = up.last().headers;
    for gone in ["upgrade", "http2-settings", "connection"] {
        assert!(
            seen.get(gone).is_none(),
            "{gone} reached the upstream: {seen:?}"
        );
    }

    // A route that answers a bare 101 to a WebSocket handshake.
    let before = up.count();
    let handshake = "GET /reflect-101 HTTP/1.1\r\nHost: t\r\nX-Token: full-access-key-1\r\n\
        Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let mut stream = TcpStream::connect(s.addr).await.unwrap();
    stream.write_all(handshake.as_bytes()).await.unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    // What would have gone through the tunnel is an ordinary request now,
    // checked like any other: no key, 401.
    stream
        .write_all(b"DELETE /admin/secret HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut rest = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_string(&mut rest)).await;
    assert!(
        statuses(&format!("{head}{rest}")).ends_with(&[401]),
        "{head}{rest}"
    );
    assert!(
        !up.seen_targets().iter().any(|t| t.contains("admin")),
        "the upstream saw {:?}",
        up.seen_targets()
    );
    assert_eq!(
        up.count(),
        before + 1,
        "only the handshake reached the upstream"
    );
    // Without an upgrade asked for, a 101 is a 502 too.
    let got = raw(
        s.addr,
        &get("/reflect-101", "X-Token: full-access-key-1\r\n"),
    )
    .await;
    assert_eq!(statuses(&got), [502], "{got}");
    // And to an HTTP/2 client.
    let r = send(
        Proto::H2,
        s.addr,
        Method::GET,
        "/reflect-101",
        &[("x-token", "full-access-key-1")],
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
}

async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut byte))
            .await
            .expect("a response head")
            .unwrap();
        assert_eq!(n, 1, "closed after {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Item 4: fields an upstream framework reads as routing or identity never
/// pass from an untrusted client, in the head or as trailers.
#[tokio::test]
async fn routing_and_identity_fields_are_stripped() {
    let (s, up, _) = gate(|_| {}).await;
    let forged = [
        "X-HTTP-Method-Override: DELETE",
        "X-HTTP-Method: DELETE",
        "X-Method-Override: DELETE",
        "X-Original-URL: /admin/secret",
        "X-Rewrite-URL: /admin/secret",
        "X_Auth_Key_Label: full",
        "X_Forwarded_For: 6.6.6.6",
        "Forwarded: for=6.6.6.6;proto=https",
        "X-Real-IP: 6.6.6.6",
        "X-Forwarded-Ssl: on",
        "X-Forwarded-Port: 443",
        "X-Forwarded-Prefix: /admin",
        "X-Forwarded-Server: evil",
        "Client-IP: 6.6.6.6",
        "True-Client-IP: 6.6.6.6",
    ];
    let extra: String = forged.iter().map(|f| format!("{f}\r\n")).collect();
    let got = raw(
        s.addr,
        &get(
            "/reports/1",
            &format!("X-Token: reports-only-key\r\n{extra}"),
        ),
    )
    .await;
    assert_eq!(statuses(&got), [200], "{got}");
    let h = up.last().headers;
    for field in forged {
        let name = field.split(':').next().unwrap().to_ascii_lowercase();
        if name == "x-real-ip" {
            assert_eq!(h["x-real-ip"], "127.0.0.1");
        } else {
            assert!(h.get(&name).is_none(), "{name} reached the upstream");
        }
    }
    assert_eq!(h["x-auth-key-label"], "reports");

    // Trailers: HTTP/1.1 chunked, declared and not.
    let chunked = "POST /reports/1 HTTP/1.1\r\nHost: t\r\nX-Token: full-access-key-1\r\n\
        Transfer-Encoding: chunked\r\nTrailer: x-auth-key-label\r\nConnection: close\r\n\r\n\
        5\r\nhello\r\n0\r\nx-auth-key-label: forged\r\nx-token: full-access-key-1\r\n\r\n";
    let got = raw(s.addr, chunked.as_bytes()).await;
    assert_eq!(statuses(&got), [200], "{got}");
    let seen = up.last();
    assert_eq!(seen.body_len, 5);
    assert!(
        seen.trailers.is_none(),
        "trailers passed: {:?}",
        seen.trailers
    );
    assert!(seen.headers.get("trailer").is_none());
    assert_eq!(seen.headers["x-auth-key-label"], "ops");
}

/// Item 4, HTTP/2: trailers after DATA never pass; two `cookie` fields
/// reach an HTTP/1.1 upstream as one (RFC 9113 §8.2.3).
#[tokio::test]
async fn http2_trailers_and_cookies() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    let (s, up, _) = gate(|_| {}).await;
    let stream = TcpStream::connect(s.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-auth-key-label", "forged".parse().unwrap());
    let body = Full::new(Bytes::from_static(b"hello")).with_trailers(Box::pin(async move {
        Some(Ok::<_, std::convert::Infallible>(trailers))
    }));
    let req = http::Request::post("http://t/reports/1")
        .header("x-token", "full-access-key-1")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(body)
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(30), sender.send_request(req))
        .await
        .expect("answered")
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let seen = up.last();
    assert_eq!(seen.body_len, 5);
    assert!(
        seen.trailers.is_none(),
        "trailers passed: {:?}",
        seen.trailers
    );
    let cookies: Vec<_> = seen.headers.get_all("cookie").iter().collect();
    assert_eq!(cookies, ["a=1; b=2"]);
}

/// Item 5: the host is the authority (HTTP/2 `:authority`, an absolute-form
/// target's); a `Host` naming another is a 400. With `--upstream-host`, the
/// client's host is not passed as `X-Forwarded-Host`; `--allowed-hosts`
/// refuses others.
#[tokio::test]
async fn host_is_the_authority() {
    let (s, up, _) = gate(|c| {
        if let Some(g) = c.gateway.as_mut() {
            g.upstream_host = Some("api.internal".parse().unwrap());
        }
    })
    .await;
    let got = raw(
        s.addr,
        b"GET http://api.example/open/x HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&got), [400], "{got}");
    let r = send(
        Proto::H2,
        s.addr,
        Method::GET,
        "/open/x",
        &[("host", "evil.example")],
    )
    .await;
    // The test client sends `:authority` from its address; `host` differs.
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(up.count(), 0);
    let got = raw(
        s.addr,
        b"GET /open/x HTTP/1.1\r\nHost: evil.example\r\nX-Forwarded-Host: evil.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&got), [200], "{got}");
    let h = up.last().headers;
    assert_eq!(h["host"], "api.internal");
    assert!(h.get("x-forwarded-host").is_none(), "{h:?}");

    let (s, up, _) = gate(|c| {
        if let Some(g) = c.gateway.as_mut() {
            g.allowed_hosts = Some(vec!["api.example".to_owned()]);
        }
    })
    .await;
    let got = raw(s.addr, &get("/open/x", "").replace_host("evil.example")).await;
    assert_eq!(statuses(&got), [400], "{got}");
    let got = raw(s.addr, &get("/open/x", "").replace_host("API.example")).await;
    assert_eq!(statuses(&got), [200], "{got}");
    assert_eq!(up.last().headers["x-forwarded-host"], "API.example");
}

trait ReplaceHost {
    fn replace_host(self, host: &str) -> Vec<u8>;
}

impl ReplaceHost for Vec<u8> {
    fn replace_host(self, host: &str) -> Vec<u8> {
        String::from_utf8(self)
            .unwrap()
            .replace("Host: t\r\n", &format!("Host: {host}\r\n"))
            .into_bytes()
    }
}

/// Item 6: behind a proxy that overwrites `X-Real-IP`, a client's own
/// `X-Forwarded-For` names nobody: its failures are its own, and another
/// client's valid key still works.
#[tokio::test]
async fn the_throttle_counts_the_field_the_operator_named() {
    let config = AppConfig {
        trusted_proxies: TrustedProxies::parse("127.0.0.1")
            .unwrap()
            .reading_real_ip(true),
        throttle: Some(ThrottleConfig {
            failures: NonZeroU32::new(1).unwrap(),
            period: Duration::from_secs(3600),
            burst: NonZeroU32::new(2).unwrap(),
            ..ThrottleConfig::default()
        }),
        ..AppConfig::default()
    };
    let s = TestServer::with(keys_from(KEYS), config, Limits::default()).await;
    let attacker = [
        ("x-real-ip", "203.0.113.9"),
        ("x-forwarded-for", "198.51.100.7"),
    ];
    let mut codes = Vec::new();
    for _ in 0..4 {
        let mut h = attacker.to_vec();
        h.push(("x-token", "wrong-key-000000000"));
        codes.push(
            send(Proto::H1, s.addr, Method::GET, "/protected", &h)
                .await
                .status,
        );
    }
    assert_eq!(
        codes.last(),
        Some(&StatusCode::TOO_MANY_REQUESTS),
        "{codes:?}"
    );
    let victim = [
        ("x-real-ip", "198.51.100.7"),
        ("x-token", "full-access-key-1"),
    ];
    let r = send(Proto::H1, s.addr, Method::GET, "/protected", &victim).await;
    assert_eq!(r.status, StatusCode::OK, "the victim was locked out");
}

/// An upstream that supports the h2c upgrade (Go's `h2c.NewHandler`, Jetty,
/// Tomcat do): to `Upgrade: h2c` it answers 101 and serves HTTP/2 (the `h2`
/// crate) on the connection; otherwise a plain 200 `plain`. Records every
/// request head it reads, raw, and every path it serves over HTTP/2.
#[derive(Clone, Default)]
struct H2cUpstream {
    heads: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    h2_paths: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl H2cUpstream {
    async fn start(&self) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let me = self.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(me.clone().serve(stream));
            }
        });
        addr
    }

    async fn serve(self, mut stream: TcpStream) {
        loop {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match stream.read(&mut byte).await {
                    Ok(1) => head.push(byte[0]),
                    _ => return,
                }
            }
            let head = String::from_utf8_lossy(&head).into_owned();
            self.heads.lock().unwrap().push(head.clone());
            if head.to_ascii_lowercase().contains("\r\nupgrade: h2c") {
                let _ = stream
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
                    .await;
                let Ok(mut conn) = h2::server::handshake(stream).await else {
                    return;
                };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    self.h2_paths
                        .lock()
                        .unwrap()
                        .push(req.uri().path().to_owned());
                    if let Ok(mut send) = respond.send_response(http::Response::new(()), false) {
                        let _ = send.send_data(bytes::Bytes::from_static(b"secret"), true);
                    }
                }
                return;
            }
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nplain")
                .await;
        }
    }
}

/// Item 2, with an upstream that really speaks h2c after the upgrade: the
/// client gets a plain 200, the upstream never sees `Upgrade: h2c`, and no
/// HTTP/2 request reaches it (before the fix: 101, then `/admin/secret`
/// over the tunnel with no key).
#[tokio::test]
async fn h2c_upgrade_smuggling_against_a_real_h2c_upstream() {
    let up = H2cUpstream::default();
    let addr = up.start().await;
    let s = gate_in_front_of(addr, |_| {}).await;
    let mut stream = TcpStream::connect(s.addr).await.unwrap();
    stream
        .write_all(
            b"GET /open/x HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\n\
              Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
        )
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    if head.starts_with("HTTP/1.1 101") {
        // The smuggling the fix prevents: HTTP/2 through the tunnel.
        if let Ok((mut sender, conn)) = h2::client::handshake(stream).await {
            tokio::spawn(conn);
            let req = http::Request::get("http://t/admin/secret")
                .body(())
                .unwrap();
            if let Ok((resp, _)) = sender.send_request(req, true) {
                let _ = tokio::time::timeout(Duration::from_secs(10), resp).await;
            }
        }
        panic!(
            "a tunnel opened; the upstream served {:?}",
            up.h2_paths.lock().unwrap()
        );
    }
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let heads = up.heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 1, "{heads:?}");
    let seen = heads[0].to_ascii_lowercase();
    assert!(
        !seen.contains("upgrade") && !seen.contains("http2-settings"),
        "{seen}"
    );
    assert!(up.h2_paths.lock().unwrap().is_empty());
}

/// Item 8: `OPTIONS *` through a gateway whose upstream has a path prefix
/// goes as the prefix (it went as `/api*`).
#[tokio::test]
async fn options_asterisk_with_a_prefix() {
    let up = Upstream_::default();
    let addr = up.start().await;
    let s = gate_in_front_of(addr, |c| {
        if let Some(g) = c.gateway.as_mut() {
            g.upstream =
                tokengate::gateway::Upstream::parse(&format!("http://{addr}/api")).unwrap();
        }
    })
    .await;
    let got = raw(
        s.addr,
        b"OPTIONS * HTTP/1.1\r\nHost: t\r\nX-Token: full-access-key-1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&got), [200], "{got}");
    assert_eq!(up.last().target, "/api");
    // A scoped key does not reach it: `*` is in no path scope.
    let got = raw(
        s.addr,
        b"OPTIONS * HTTP/1.1\r\nHost: t\r\nX-Token: reports-only-key\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&got), [403], "{got}");
}

/// Item 8: a path cannot forge a field or a line of the text access log:
/// every byte but visible ASCII is written `\xNN`.
#[tokio::test]
async fn a_path_cannot_forge_an_access_log_field() {
    let mut cmd = crate::support::command(
        &["--listen", "127.0.0.1:0", "--access-log"],
        &[("TOKENGATE_TOKEN", "full-access-key-1")],
    );
    let mut child = cmd.spawn().unwrap();
    let (addr, _lines) = crate::support::wait_for_address(&mut child).await;
    // U+2028 (a line separator to many log viewers), then a fake field.
    let mut req = b"GET /x".to_vec();
    req.extend_from_slice("\u{2028}status=200".as_bytes());
    req.extend_from_slice(b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let got = raw(addr, &req).await;
    assert_eq!(statuses(&got), [400], "{got}");
    let out = crate::support::terminate(child).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.contains("path=/x"))
        .unwrap_or_else(|| panic!("no access line:\n{stdout}"));
    assert!(
        line.contains(r"path=/x\xe2\x80\xa8status=200 "),
        "not escaped: {line}"
    );
    assert!(line.contains("status=400"), "{line}");
    assert!(!line.contains('\u{2028}'), "{line}");
}

/// Item 3 in forward auth: an unsafe original path — in a header or after
/// the mount (Envoy's form) — is 403 `bad-original-request`, never a 200
/// nor a 400 (nginx turns every status but 401/403 into a 500).
#[tokio::test]
async fn forward_auth_refuses_unsafe_original_paths() {
    let s = TestServer::with(keys_from(KEYS), AppConfig::default(), Limits::default()).await;
    for (target, extra) in [
        ("/auth/verify/reports/../admin", ""),
        ("/auth/verify/reports/%2e%2e/admin", ""),
        ("/auth/verify/reports/%10", ""),
        (
            "/auth/verify",
            "X-Original-Method: GET\r\nX-Original-URI: /reports/../admin\r\n",
        ),
        (
            "/auth/verify",
            "X-Original-Method: GET\r\nX-Original-URI: /reports/x#/../../admin\r\n",
        ),
        (
            "/auth/verify",
            "X-Original-Method: GET\r\nX-Original-URI: /reports/..%2fadmin\r\n",
        ),
    ] {
        let got = raw(
            s.addr,
            &get(target, &format!("X-Token: reports-only-key\r\n{extra}")),
        )
        .await;
        assert_eq!(statuses(&got), [403], "{target} {extra}: {got}");
        assert!(
            got.contains("x-tokengate-reason: bad-original-request"),
            "{got}"
        );
    }
    // The same key, a path inside its scope: allowed.
    let got = raw(
        s.addr,
        &get(
            "/auth/verify",
            "X-Token: reports-only-key\r\nX-Original-Method: GET\r\nX-Original-URI: /reports/x\r\n",
        ),
    )
    .await;
    assert_eq!(statuses(&got), [200], "{got}");
}
