//! `/auth/verify` in the request shapes of nginx, Traefik, Caddy, Envoy and
//! HAProxy; per-key scopes and expiry; trusted proxies and the client address.

use http::{Method, StatusCode};
use tokengate::TrustedProxies;
use tokengate::throttle::ThrottleConfig;
use tokengate::{AppConfig, Limits};

use crate::support::{BOTH, Proto, Resp, TestServer, keys_from, raw, send, statuses};

const KEYS: &str = "\
full-access-key-1 ops
reports-only-key reports scope=GET,HEAD:/reports/* scope=GET:/reports
expired-key-0001 old expires=2001-01-01T00:00:00Z
future-key-00001 future expires=2999-01-01T00:00:00Z
";

async fn server() -> TestServer {
    TestServer::with(keys_from(KEYS), AppConfig::default(), Limits::default()).await
}

async fn verify(
    proto: Proto,
    s: &TestServer,
    method: Method,
    path: &str,
    h: &[(&str, &str)],
) -> Resp {
    send(proto, s.addr, method, path, h).await
}

fn assert_allowed(r: &Resp, label: &str) {
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert!(r.body.is_empty(), "{r:?}");
    assert_eq!(r.header("x-auth-key-label"), Some(label));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(
        r.header("x-envoy-auth-headers-to-remove"),
        Some("x-token, authorization")
    );
}

fn assert_unauthorized(r: &Resp, challenge: &str) {
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{r:?}");
    assert_eq!(r.text(), r#"{"detail":"Unauthorized"}"#);
    assert_eq!(r.header("www-authenticate"), Some(challenge));
    assert!(r.header("x-auth-key-label").is_none());
}

fn assert_forbidden(r: &Resp) {
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{r:?}");
    assert_eq!(r.text(), r#"{"detail":"Forbidden"}"#);
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Bearer realm="tokengate", error="insufficient_scope""#)
    );
    assert!(r.header("x-auth-key-label").is_none());
}

#[tokio::test]
async fn nginx_shape_allow_and_deny() {
    let s = server().await;
    for proto in BOTH {
        // nginx: GET /auth/verify with X-Original-URI and the client's X-Token.
        let uri = ("x-original-uri", "/reports/2026?page=2");
        let r = verify(proto, &s, Method::GET, "/auth/verify", &[uri]).await;
        assert_unauthorized(&r, r#"Bearer realm="tokengate""#);
        let r = verify(
            proto,
            &s,
            Method::GET,
            "/auth/verify",
            &[uri, ("x-token", "nope")],
        )
        .await;
        assert_unauthorized(&r, r#"Bearer realm="tokengate", error="invalid_token""#);
        let r = verify(
            proto,
            &s,
            Method::GET,
            "/auth/verify",
            &[uri, ("x-token", "full-access-key-1")],
        )
        .await;
        assert_allowed(&r, "ops");
        let r = verify(
            proto,
            &s,
            Method::GET,
            "/auth/verify",
            &[uri, ("x-token", "reports-only-key")],
        )
        .await;
        assert_allowed(&r, "reports");
        let r = verify(
            proto,
            &s,
            Method::GET,
            "/auth/verify",
            &[
                ("x-original-uri", "/admin"),
                ("x-token", "reports-only-key"),
            ],
        )
        .await;
        assert_forbidden(&r);
    }
}

#[tokio::test]
async fn traefik_and_caddy_shape_use_x_forwarded_headers() {
    let s = server().await;
    let base = [
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "api.example"),
        ("x-forwarded-for", "203.0.113.9"),
    ];
    for proto in BOTH {
        let mut h = base.to_vec();
        h.extend([
            ("x-forwarded-method", "POST"),
            ("x-forwarded-uri", "/reports/7"),
            ("authorization", "Bearer reports-only-key"),
        ]);
        // POST is outside the key's scopes.
        assert_forbidden(&verify(proto, &s, Method::GET, "/auth/verify", &h).await);
        let mut h = base.to_vec();
        h.extend([
            ("x-forwarded-method", "HEAD"),
            ("x-forwarded-uri", "/reports/7"),
            ("authorization", "Bearer reports-only-key"),
        ]);
        assert_allowed(
            &verify(proto, &s, Method::GET, "/auth/verify", &h).await,
            "reports",
        );
        // Percent-encoded unreserved characters are normalised like routing does.
        let h = [
            ("x-forwarded-method", "GET"),
            ("x-forwarded-uri", "/%72eports"),
            ("x-token", "reports-only-key"),
        ];
        assert_allowed(
            &verify(proto, &s, Method::GET, "/auth/verify", &h).await,
            "reports",
        );
    }
}

#[tokio::test]
async fn envoy_shape_appends_the_path_and_sends_the_original_method() {
    let s = server().await;
    for proto in BOTH {
        let h = [
            ("authorization", "Bearer reports-only-key"),
            ("content-length", "0"),
        ];
        let r = verify(proto, &s, Method::GET, "/auth/verify/reports/q1", &h).await;
        assert_allowed(&r, "reports");
        let r = verify(proto, &s, Method::DELETE, "/auth/verify/reports/q1", &h).await;
        assert_forbidden(&r);
        // OPTIONS is authorised like any method, not answered with 204.
        let r = verify(proto, &s, Method::OPTIONS, "/auth/verify/reports/q1", &h).await;
        assert_forbidden(&r);
        let h = [
            ("authorization", "Bearer full-access-key-1"),
            ("content-length", "0"),
        ];
        let r = verify(proto, &s, Method::OPTIONS, "/auth/verify/anything", &h).await;
        assert_allowed(&r, "ops");
    }
}

#[tokio::test]
async fn haproxy_shape_head_has_no_body() {
    let s = server().await;
    for proto in BOTH {
        let h = [("x-original-uri", "/x"), ("x-token", "full-access-key-1")];
        assert_allowed(
            &verify(proto, &s, Method::HEAD, "/auth/verify", &h).await,
            "ops",
        );
        let r = verify(
            proto,
            &s,
            Method::HEAD,
            "/auth/verify",
            &[("x-original-uri", "/x")],
        )
        .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert!(r.body.is_empty());
    }
}

#[tokio::test]
async fn scopes_and_expiry_apply_to_protected_too() {
    let s = server().await;
    for proto in BOTH {
        let get = |token: &'static str| {
            let addr = s.addr;
            async move {
                send(
                    proto,
                    addr,
                    Method::GET,
                    "/protected",
                    &[("x-token", token)],
                )
                .await
            }
        };
        assert_eq!(get("full-access-key-1").await.status, StatusCode::OK);
        assert_eq!(get("future-key-00001").await.status, StatusCode::OK);
        assert_forbidden(&get("reports-only-key").await);
        assert_unauthorized(
            &get("expired-key-0001").await,
            r#"Bearer realm="tokengate", error="invalid_token""#,
        );
    }
    // The expiry gauge and the outcomes are in the metrics.
    let m = send(
        Proto::H1,
        s.addr,
        Method::GET,
        "/metrics",
        &[("x-token", "full-access-key-1")],
    )
    .await;
    let text = m.text();
    for needle in [
        r#"tokengate_key_expiry_timestamp_seconds{key="old"} 978307200"#,
        r#"tokengate_key_expiry_timestamp_seconds{key="future"} 32472144000"#,
        r#"tokengate_auth_total{outcome="forbidden"} 2"#,
        r#"tokengate_auth_total{outcome="expired"} 2"#,
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
}

#[tokio::test]
async fn contradicting_headers_are_refused_without_a_5xx() {
    let s = server().await;
    let got = raw(
        s.addr,
        b"GET /auth/verify HTTP/1.1\r\nHost: t\r\nX-Token: full-access-key-1\r\nX-Forwarded-Uri: /a\r\nX-Forwarded-Uri: /b\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&got), [403], "{got}");
    assert!(
        got.contains("x-tokengate-reason: bad-original-request"),
        "{got}"
    );
}

fn throttled_config(status: StatusCode, trusted: &str) -> AppConfig {
    AppConfig {
        throttle: Some(ThrottleConfig {
            burst: std::num::NonZeroU32::new(3).unwrap(),
            failures: std::num::NonZeroU32::new(1).unwrap(),
            period: std::time::Duration::from_secs(3600),
            ..ThrottleConfig::default()
        }),
        trusted_proxies: TrustedProxies::parse(trusted).unwrap(),
        forward_auth_throttle_status: status,
        ..AppConfig::default()
    }
}

async fn verify_from(s: &TestServer, xff: Option<&str>, token: &str) -> (u16, String) {
    let xff = xff
        .map(|a| format!("X-Forwarded-For: {a}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "GET /auth/verify HTTP/1.1\r\nHost: t\r\nX-Original-URI: /x\r\nX-Token: {token}\r\n{xff}Connection: close\r\n\r\n"
    );
    let got = raw(s.addr, req.as_bytes()).await;
    (statuses(&got).first().copied().unwrap_or(0), got)
}

#[tokio::test]
async fn throttled_is_403_by_default_and_429_on_request() {
    for (status, want) in [
        (StatusCode::FORBIDDEN, 403),
        (StatusCode::TOO_MANY_REQUESTS, 429),
    ] {
        let s = TestServer::with(
            keys_from(KEYS),
            throttled_config(status, ""),
            Limits::default(),
        )
        .await;
        for _ in 0..3 {
            assert_eq!(verify_from(&s, None, "wrong").await.0, 401);
        }
        let (code, got) = verify_from(&s, None, "wrong").await;
        assert_eq!(code, want, "{got}");
        assert!(got.contains("x-tokengate-reason: throttled"), "{got}");
        assert!(got.contains("retry-after: "), "{got}");
        // Even the right key, or a brute-forcer could tell a hit.
        assert_eq!(verify_from(&s, None, "full-access-key-1").await.0, want);
    }
}

#[tokio::test]
async fn clients_behind_a_trusted_proxy_are_throttled_separately() {
    let s = TestServer::with(
        keys_from(KEYS),
        throttled_config(StatusCode::FORBIDDEN, "127.0.0.1"),
        Limits::default(),
    )
    .await;
    // Client A fails until throttled…
    for _ in 0..3 {
        assert_eq!(verify_from(&s, Some("198.51.100.1"), "wrong").await.0, 401);
    }
    assert_eq!(verify_from(&s, Some("198.51.100.1"), "wrong").await.0, 403);
    // …client B, behind the same proxy, is not.
    assert_eq!(
        verify_from(&s, Some("6.6.6.6, 198.51.100.2"), "full-access-key-1")
            .await
            .0,
        200
    );
}

#[tokio::test]
async fn an_untrusted_peer_cannot_choose_its_address() {
    // 127.0.0.1 is not trusted here: its X-Forwarded-For is ignored, so a
    // throttled peer stays throttled whatever address it claims.
    let s = TestServer::with(
        keys_from(KEYS),
        throttled_config(StatusCode::FORBIDDEN, "10.0.0.0/8"),
        Limits::default(),
    )
    .await;
    for i in 0..3 {
        let claimed = format!("198.51.100.{i}");
        assert_eq!(verify_from(&s, Some(&claimed), "wrong").await.0, 401);
    }
    assert_eq!(verify_from(&s, Some("198.51.100.3"), "wrong").await.0, 403);
    assert_eq!(
        verify_from(&s, Some("198.51.100.99"), "full-access-key-1")
            .await
            .0,
        403
    );
}

#[tokio::test]
async fn openapi_document_is_served_and_can_be_turned_off() {
    let s = server().await;
    for proto in BOTH {
        let r = send(proto, s.addr, Method::GET, "/openapi.json", &[]).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("content-type"), Some("application/json"));
        let doc: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        for path in [
            "/public",
            "/protected",
            "/auth/verify",
            "/healthz",
            "/readyz",
            "/metrics",
        ] {
            assert!(doc["paths"][path].is_object(), "{path}");
        }
        assert_eq!(
            doc["components"]["securitySchemes"]["apiKey"]["name"],
            "x-token"
        );
    }
    let off = AppConfig {
        openapi: false,
        ..AppConfig::default()
    };
    let s = TestServer::with(keys_from(KEYS), off, Limits::default()).await;
    let r = send(Proto::H1, s.addr, Method::GET, "/openapi.json", &[]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}
