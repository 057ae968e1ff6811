//! Keys, the credential rules, and the configurable header and realm.

use http::{HeaderName, StatusCode};
use tokengate::{AppConfig, Limits};

use crate::support::{BOTH, KEY, TestServer, get, keys};

#[tokio::test]
async fn every_configured_key_works() {
    let server = TestServer::with(
        keys(&["first-key", "second-key", "third-key"]),
        AppConfig::default(),
        Limits::default(),
    )
    .await;
    for proto in BOTH {
        for k in ["first-key", "second-key", "third-key"] {
            let r = get(proto, server.addr, "/protected", &[("x-token", k)]).await;
            assert_eq!(r.status, StatusCode::OK, "{proto:?} {k}");
        }
        let r = get(proto, server.addr, "/protected", &[("x-token", KEY)]).await;
        assert_eq!(
            r.status,
            StatusCode::UNAUTHORIZED,
            "the demo key is not configured here"
        );
    }
}

#[tokio::test]
async fn repeated_credential_fields_are_401_in_any_order() {
    let server = TestServer::start().await;
    for proto in BOTH {
        for headers in [
            vec![("x-token", KEY), ("x-token", "wrong")],
            vec![("x-token", "wrong"), ("x-token", KEY)],
            vec![("x-token", KEY), ("x-token", KEY)],
            vec![
                ("authorization", "Bearer mysecrettoken"),
                ("authorization", "Bearer wrong"),
            ],
            vec![
                ("authorization", "Bearer wrong"),
                ("authorization", "Bearer mysecrettoken"),
            ],
        ] {
            let r = get(proto, server.addr, "/protected", &headers).await;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{proto:?} {headers:?}");
            assert_eq!(
                r.header("www-authenticate"),
                Some(r#"Bearer realm="tokengate", error="invalid_token""#)
            );
        }
    }
}

#[tokio::test]
async fn custom_header_and_realm() {
    let app = AppConfig {
        token_header: HeaderName::from_static("x-api-key"),
        realm: tokengate::Realm::new("orders api").unwrap(),
        ..AppConfig::default()
    };
    let server = TestServer::with(keys(&[KEY]), app, Limits::default()).await;
    for proto in BOTH {
        let r = get(proto, server.addr, "/protected", &[("X-Api-Key", KEY)]).await;
        assert_eq!(r.status, StatusCode::OK);
        let r = get(
            proto,
            server.addr,
            "/protected",
            &[("authorization", "Bearer mysecrettoken")],
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        // X-Token is just another header now.
        let r = get(proto, server.addr, "/protected", &[("x-token", KEY)]).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            r.header("www-authenticate"),
            Some(r#"Bearer realm="orders api""#)
        );
        let r = get(proto, server.addr, "/protected", &[("x-api-key", "nope")]).await;
        assert_eq!(
            r.header("www-authenticate"),
            Some(r#"Bearer realm="orders api", error="invalid_token""#)
        );
    }
}
