//! Per-key rate limits and quotas (`rate=`, `burst=`, `quota=`, `owner=`)
//! with the memory store: 429s, `retry-after`, the `RateLimit` fields, on
//! `/protected`, `/auth/verify` and through the gateway, and an owner's
//! counters kept across a key rotation.

use std::convert::Infallible;
use std::time::Duration;

use http::{Method, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokengate::{AppConfig, Limits};
use tokio::net::TcpListener;

use crate::gateway::gateway_config;
use crate::support::{Proto, Resp, Spawned, TempDir, TestServer, keys_from, send, wait_until};

const KEYS: &str = "\
rated-key-0000001 rated rate=2/m
quota-key-0000001 quotaed quota=3/day
plain-key-0000001 plain
";

async fn protected(proto: Proto, server: &TestServer, token: &str) -> Resp {
    send(
        proto,
        server.addr,
        Method::GET,
        "/protected",
        &[("x-token", token)],
    )
    .await
}

fn seconds(r: &Resp, name: &str) -> u64 {
    r.header(name)
        .unwrap_or_else(|| panic!("no {name}"))
        .parse()
        .unwrap()
}

/// The `t` of the first item of `RateLimit`.
fn reset(r: &Resp) -> u64 {
    let field = r.header("ratelimit").expect("RateLimit");
    field
        .split(";t=")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_rate_admits_its_burst_then_429_until_one_more_fits() {
    let server = TestServer::with(keys_from(KEYS), AppConfig::default(), Limits::default()).await;
    // 2 a minute, burst 2: one request every 30 s.
    let first = protected(Proto::H1, &server, "rated-key-0000001").await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(
        first.text(),
        r#"{"message":"You have access to the protected route!"}"#
    );
    assert_eq!(first.header("ratelimit-policy"), Some(r#""rate";q=2;w=60"#));
    assert_eq!(first.header("ratelimit"), Some(r#""rate";r=1;t=30"#));
    let second = protected(Proto::H2, &server, "rated-key-0000001").await;
    assert_eq!(second.status, StatusCode::OK);
    // Full again in 60 s, less what the two requests took (a slow machine).
    assert!(
        second
            .header("ratelimit")
            .unwrap()
            .starts_with(r#""rate";r=0;t="#)
    );
    assert!((50..=60).contains(&reset(&second)), "{second:?}");
    // The counters are the key's, whatever the protocol.
    for proto in [Proto::H1, Proto::H2] {
        let over = protected(proto, &server, "rated-key-0000001").await;
        assert_eq!(over.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(over.text(), r#"{"detail":"Too Many Requests"}"#);
        assert_eq!(over.header("cache-control"), Some("no-store"));
        assert!(
            (20..=30).contains(&seconds(&over, "retry-after")),
            "{over:?}"
        );
        assert!(
            over.header("ratelimit")
                .unwrap()
                .starts_with(r#""rate";r=0;t="#)
        );
        assert_eq!(over.header("ratelimit-policy"), Some(r#""rate";q=2;w=60"#));
    }
    // A key without limits is not limited and gets no fields.
    for _ in 0..5 {
        let plain = protected(Proto::H1, &server, "plain-key-0000001").await;
        assert_eq!(plain.status, StatusCode::OK);
        assert!(plain.header("ratelimit").is_none() && plain.header("ratelimit-policy").is_none());
    }
    // A wrong key is the throttle's business, not a limit's.
    let wrong = protected(Proto::H1, &server, "not-a-key-at-all-1").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.header("ratelimit").is_none());
    // Counted by key and limit.
    let metrics = send(
        Proto::H1,
        server.addr,
        Method::GET,
        "/metrics",
        &[("x-token", "plain-key-0000001")],
    )
    .await;
    for needle in [
        r#"tokengate_auth_total{outcome="ok",key="rated"} 2"#,
        r#"tokengate_auth_total{outcome="rate_limited",key="rated"} 2"#,
        r#"tokengate_auth_total{outcome="quota_exhausted",key="rated"} 0"#,
    ] {
        assert!(
            metrics.text().contains(needle),
            "no {needle} in\n{}",
            metrics.text()
        );
    }
    assert!(
        !metrics
            .text()
            .contains(r#"outcome="rate_limited",key="plain""#)
    );
}

#[tokio::test]
async fn a_quota_refuses_until_the_next_utc_day() {
    let day = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            / 86_400
    };
    let started = day();
    let server = TestServer::with(keys_from(KEYS), AppConfig::default(), Limits::default()).await;
    for left in [2, 1, 0] {
        let r = protected(Proto::H1, &server, "quota-key-0000001").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("ratelimit-policy"), Some(r#""day";q=3;w=86400"#));
        assert!(
            r.header("ratelimit")
                .unwrap()
                .starts_with(&format!("\"day\";r={left};t="))
        );
    }
    let over = protected(Proto::H1, &server, "quota-key-0000001").await;
    if day() != started {
        // The test ran across a UTC midnight: the quota rightly started over.
        return;
    }
    assert_eq!(over.status, StatusCode::TOO_MANY_REQUESTS);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let to_midnight = 86_400 - now % 86_400;
    let retry = seconds(&over, "retry-after");
    // Within a second or two of the UTC midnight, however long the test took.
    assert!(
        retry.abs_diff(to_midnight) <= 2,
        "retry-after {retry}, midnight in {to_midnight}"
    );
    assert_eq!(reset(&over), retry);
}

#[tokio::test]
async fn forward_auth_refuses_with_the_throttle_status_and_names_the_limit() {
    let server = TestServer::with(
        keys_from("verify-key-000001 v quota=1/hour\nrate-key-00000001 r rate=1/h\n"),
        AppConfig::default(),
        Limits::default(),
    )
    .await;
    let verify = |token: &'static str| async move {
        send(
            Proto::H1,
            server.addr,
            Method::GET,
            "/auth/verify",
            &[
                ("x-token", token),
                ("x-original-method", "GET"),
                ("x-original-uri", "/api/orders/7"),
            ],
        )
        .await
    };
    let allowed = verify("verify-key-000001").await;
    assert_eq!(allowed.status, StatusCode::OK);
    // On the 200 too: nginx copies them to its client (auth_request_set).
    assert_eq!(
        allowed.header("ratelimit-policy"),
        Some(r#""hour";q=1;w=3600"#)
    );
    assert!(
        allowed
            .header("ratelimit")
            .unwrap()
            .starts_with(r#""hour";r=0;t="#)
    );
    for (token, reason) in [
        ("verify-key-000001", "quota-exhausted"),
        ("rate-key-00000001", "rate-limited"),
    ] {
        if reason == "rate-limited" {
            assert_eq!(verify(token).await.status, StatusCode::OK);
        }
        let refused = verify(token).await;
        // 403 by default: nginx relays only 401 and 403 from auth_request.
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{reason}");
        assert_eq!(refused.header("x-tokengate-reason"), Some(reason));
        assert!(seconds(&refused, "retry-after") >= 1);
        assert!(refused.header("ratelimit").is_some());
    }
}

/// An upstream that sets its own `RateLimit` fields on every answer.
pub(crate) async fn forging_upstream() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(|_req: http::Request<Incoming>| async {
                    let response = Response::builder()
                        .header("ratelimit", r#""rate";r=999999;t=0"#)
                        .header("ratelimit-policy", r#""rate";q=999999;w=1"#)
                        .body(Full::new(bytes::Bytes::from_static(b"upstream")))
                        .unwrap();
                    Ok::<_, Infallible>(response)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn the_gateway_sets_the_fields_over_the_upstreams_own() {
    let upstream = forging_upstream().await;
    let server = TestServer::with(
        keys_from("gateway-key-00001 g rate=1/m\nfree-key-00000001 free\n"),
        gateway_config(upstream, Duration::from_secs(30)),
        Limits::default(),
    )
    .await;
    let first = protected(Proto::H1, &server, "gateway-key-00001").await;
    assert_eq!((first.status, first.text()), (StatusCode::OK, "upstream"));
    assert_eq!(first.header("ratelimit"), Some(r#""rate";r=0;t=60"#));
    assert_eq!(first.header("ratelimit-policy"), Some(r#""rate";q=1;w=60"#));
    assert_eq!(first.headers.get_all("ratelimit").iter().count(), 1);
    let over = protected(Proto::H2, &server, "gateway-key-00001").await;
    assert_eq!(over.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(over.text(), r#"{"detail":"Too Many Requests"}"#);
    // A key without limits: the upstream's own fields pass untouched.
    let free = protected(Proto::H1, &server, "free-key-00000001").await;
    assert_eq!(free.header("ratelimit"), Some(r#""rate";r=999999;t=0"#));
}

#[tokio::test]
async fn a_rotated_key_keeps_its_owners_quota() {
    let dir = TempDir::new("limits-rotation");
    let file = dir.0.join("keys");
    std::fs::write(&file, "old-key-000000001 old owner=acme quota=2/day\n").unwrap();
    let server = Spawned::start(&["--token-file", file.to_str().unwrap()], &[]).await;
    let status = |token: &'static str| {
        let addr = server.addr;
        async move { crate::support::protected_as(addr, token).await.status }
    };
    assert_eq!(status("old-key-000000001").await, StatusCode::OK);
    std::fs::write(&file, "new-key-000000001 new owner=acme quota=2/day\n").unwrap();
    server.signal("-HUP");
    // Until the reload the new key is unknown (401, not counted); its first
    // 200 is the owner's second request of the day.
    assert!(
        wait_until(Duration::from_secs(30), || async {
            status("new-key-000000001").await != StatusCode::UNAUTHORIZED
        })
        .await,
        "the new key never worked"
    );
    assert_eq!(
        status("new-key-000000001").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(status("old-key-000000001").await, StatusCode::UNAUTHORIZED);
}
