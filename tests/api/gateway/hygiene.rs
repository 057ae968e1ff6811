//! What the upstream receives and what never reaches it: header hygiene,
//! byte-for-byte targets, denials, scopes and `--public`, `Host`, the admin
//! listener, the OpenAPI document in gateway mode.

use super::*;

#[tokio::test]
async fn header_hygiene_and_byte_for_byte_targets() {
    let (s, up) = gateway(Duration::from_secs(30)).await;
    let got = raw(
        s.addr,
        b"GET /a%20b/%7e?x=%20&y HTTP/1.1\r\nHost: api.example\r\nX-Token: full-access-key-1\r\n\
          Connection: close, x-auth-key-label, x-forwarded-for, x-secret-hop\r\nX-Secret-Hop: 1\r\n\
          X-Auth-Key-Label: forged\r\nX-Forwarded-For: 6.6.6.6\r\nKeep-Alive: timeout=5\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&got), [200], "{got}");
    assert!(got.contains("upstream saw /a%20b/%7e"), "{got}");
    let seen = up.last();
    assert_eq!(seen.target, "/a%20b/%7e?x=%20&y");
    let h = &seen.headers;
    assert_eq!(h["x-auth-key-label"], "ops");
    assert_eq!(
        h["x-forwarded-for"], "127.0.0.1",
        "an untrusted peer's chain is dropped"
    );
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "api.example");
    assert_eq!(h["host"], "api.example");
    for gone in ["x-token", "x-secret-hop", "keep-alive"] {
        assert!(h.get(gone).is_none(), "{gone} reached the upstream: {h:?}");
    }
    // Bearer is a credential too; another scheme is the upstream's.
    let r = send(
        Proto::H1,
        s.addr,
        Method::GET,
        "/orders",
        &[("authorization", "Bearer full-access-key-1")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(up.last().headers.get("authorization").is_none());
}

#[tokio::test]
async fn denials_never_reach_the_upstream_and_scopes_and_public_apply() {
    let (s, up) = gateway(Duration::from_secs(30)).await;
    for proto in [Proto::H1, Proto::H2] {
        let before = up.count();
        let r = send(proto, s.addr, Method::GET, "/orders", &[]).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        let r = send(
            proto,
            s.addr,
            Method::GET,
            "/orders",
            &[("x-token", "wrong")],
        )
        .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        let r = send(
            proto,
            s.addr,
            Method::POST,
            "/reports/1",
            &[("x-token", "reports-only-key")],
        )
        .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        // The contract routes belong to the upstream now: /public needs a key.
        let r = send(proto, s.addr, Method::GET, "/public", &[]).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(up.count(), before, "a denied request reached the upstream");
        // In scope: passes with the key's label.
        let r = send(
            proto,
            s.addr,
            Method::GET,
            "/reports/1",
            &[("x-token", "reports-only-key")],
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(up.last().headers["x-auth-key-label"], "reports");
        // --public GET:/docs/*: no key, no label.
        let r = send(proto, s.addr, Method::GET, "/docs/intro", &[]).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(up.last().headers.get("x-auth-key-label").is_none());
        let r = send(proto, s.addr, Method::POST, "/docs/intro", &[]).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        // tokengate's own routes stay tokengate's.
        let before = up.count();
        let r = send(proto, s.addr, Method::GET, "/healthz", &[]).await;
        assert_eq!(r.text(), r#"{"status":"ok"}"#);
        assert_eq!(up.count(), before);
    }
}

/// A request without `Host` (HTTP/1.0) gets the upstream's own, as the
/// address the gateway dials; whatever keys its connection pool never shows.
#[tokio::test]
async fn a_request_without_host_gets_the_upstreams() {
    let up = Upstream_::default();
    let upstream = up.start().await;
    let s = gateway_at(upstream, Duration::from_secs(30)).await;
    let got = raw(
        s.addr,
        b"GET /orders?id=7 HTTP/1.0\r\nX-Token: full-access-key-1\r\n\r\n",
    )
    .await;
    assert!(got.starts_with("HTTP/1.0 200 OK\r\n"), "{got}");
    let seen = up.last();
    assert_eq!(seen.target, "/orders?id=7");
    assert_eq!(seen.headers["host"], upstream.to_string());
    assert!(seen.headers.get("x-forwarded-host").is_none());
}

/// `--admin-listen`: tokengate's own routes there, every path of the main
/// listener upstream (the binary, as an operator runs it).
#[tokio::test]
async fn admin_listener_takes_tokengates_own_routes() {
    let up = Upstream_::default();
    let addr = up.start().await;
    let url = format!("http://{addr}");
    let server = crate::support::Spawned::start(
        &["--upstream", &url, "--admin-listen", "127.0.0.1:0"],
        &[("TOKENGATE_TOKEN", "full-access-key-1")],
    )
    .await;
    let admin = server.admin_addr().await;
    // The main listener passes even /healthz on (with a key).
    let r = get_with_key(server.addr, "/healthz").await;
    assert_eq!(r.text(), "upstream saw /healthz");
    let r = send(Proto::H1, server.addr, Method::GET, "/healthz", &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // The admin listener answers itself and passes nothing on.
    let before = up.count();
    let r = send(Proto::H1, admin, Method::GET, "/healthz", &[]).await;
    assert_eq!(r.text(), r#"{"status":"ok"}"#);
    let r = get_with_key(admin, "/orders").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = send(
        Proto::H1,
        admin,
        Method::GET,
        "/auth/verify",
        &[
            ("x-token", "full-access-key-1"),
            ("x-original-uri", "/orders"),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(up.count(), before);
}

/// In gateway mode the OpenAPI document no longer claims the contract routes.
#[tokio::test]
async fn openapi_in_gateway_mode_leaves_the_contract_routes_out() {
    let (s, _up) = gateway(Duration::from_secs(30)).await;
    let r = send(Proto::H1, s.addr, Method::GET, "/openapi.json", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    let doc: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert!(doc["paths"]["/public"].is_null());
    assert!(doc["paths"]["/protected"].is_null());
    assert!(doc["paths"]["/auth/verify"].is_object());
}
