//! Every row of the contract table, over HTTP/1.1 and h2c.

use http::{Method, StatusCode};

use crate::support::{BOTH, KEY, TestServer, WRONG, get, send};

const PUBLIC: &str = r#"{"message":"Welcome to the public route!"}"#;
const PROTECTED: &str = r#"{"message":"You have access to the protected route!"}"#;
const UNAUTHORIZED: &str = r#"{"detail":"Unauthorized"}"#;
const CHALLENGE: &str = r#"Bearer realm="tokengate""#;
const CHALLENGE_INVALID: &str = r#"Bearer realm="tokengate", error="invalid_token""#;

#[tokio::test]
async fn public_route() {
    let server = TestServer::start().await;
    for proto in BOTH {
        let r = get(proto, server.addr, "/public", &[]).await;
        assert_eq!(r.status, StatusCode::OK, "{proto:?}");
        assert_eq!(r.text(), PUBLIC);
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.header("content-length"), Some("42"));
        assert_eq!(r.header("cache-control"), None);
        // The query string is ignored.
        let r = get(proto, server.addr, "/public?x=1&y", &[]).await;
        assert_eq!((r.status, r.text()), (StatusCode::OK, PUBLIC));
    }
}

#[tokio::test]
async fn protected_with_key() {
    let server = TestServer::start().await;
    for proto in BOTH {
        for headers in [
            vec![("x-token", KEY)],
            vec![("X-Token", KEY)],
            vec![("authorization", "Bearer mysecrettoken")],
            vec![("authorization", "bearer mysecrettoken")],
            vec![("authorization", "BEARER   mysecrettoken")],
            vec![("x-token", KEY), ("authorization", "Bearer wrong")],
        ] {
            let r = get(proto, server.addr, "/protected", &headers).await;
            assert_eq!(r.status, StatusCode::OK, "{proto:?} {headers:?}");
            assert_eq!(r.text(), PROTECTED);
            assert_eq!(r.header("content-type"), Some("application/json"));
            assert_eq!(r.header("content-length"), Some("53"));
            assert_eq!(r.header("cache-control"), Some("no-store"));
            assert_eq!(r.header("www-authenticate"), None);
        }
    }
}

#[tokio::test]
async fn protected_without_credential() {
    let server = TestServer::start().await;
    for proto in BOTH {
        for headers in [
            vec![],
            vec![("authorization", "Basic bXlzZWNyZXR0b2tlbg==")],
        ] {
            let r = get(proto, server.addr, "/protected", &headers).await;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{proto:?} {headers:?}");
            assert_eq!(r.text(), UNAUTHORIZED);
            assert_eq!(r.header("content-type"), Some("application/json"));
            assert_eq!(r.header("content-length"), Some("25"));
            assert_eq!(r.header("www-authenticate"), Some(CHALLENGE));
            assert_eq!(r.header("cache-control"), Some("no-store"));
        }
        // The query string never carries credentials.
        let r = get(
            proto,
            server.addr,
            "/protected?x-token=mysecrettoken&token=mysecrettoken",
            &[],
        )
        .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(r.header("www-authenticate"), Some(CHALLENGE));
    }
}

#[tokio::test]
async fn protected_with_wrong_credential() {
    let server = TestServer::start().await;
    for proto in BOTH {
        for headers in [
            vec![("x-token", WRONG)],
            vec![("x-token", "mysecrettoke")],
            vec![("x-token", "mysecrettokenx")],
            vec![("x-token", "MYSECRETTOKEN")],
            vec![("x-token", "")],
            vec![("authorization", "Bearer wrong")],
            vec![("authorization", "Bearer")],
            vec![
                ("x-token", WRONG),
                ("authorization", "Bearer mysecrettoken"),
            ],
        ] {
            let r = get(proto, server.addr, "/protected", &headers).await;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{proto:?} {headers:?}");
            assert_eq!(r.text(), UNAUTHORIZED);
            assert_eq!(r.header("www-authenticate"), Some(CHALLENGE_INVALID));
            assert_eq!(r.header("cache-control"), Some("no-store"));
            assert_eq!(r.header("content-length"), Some("25"));
        }
    }
}

#[tokio::test]
async fn head_is_get_without_body() {
    let server = TestServer::start().await;
    for proto in BOTH {
        let cases = [
            ("/public", vec![], StatusCode::OK, "42", None),
            (
                "/protected",
                vec![("x-token", KEY)],
                StatusCode::OK,
                "53",
                Some("no-store"),
            ),
            (
                "/protected",
                vec![],
                StatusCode::UNAUTHORIZED,
                "25",
                Some("no-store"),
            ),
            (
                "/protected",
                vec![("x-token", WRONG)],
                StatusCode::UNAUTHORIZED,
                "25",
                Some("no-store"),
            ),
            ("/nowhere", vec![], StatusCode::NOT_FOUND, "22", None),
        ];
        for (path, headers, status, len, cache) in cases {
            let r = send(proto, server.addr, Method::HEAD, path, &headers).await;
            assert_eq!(r.status, status, "{proto:?} HEAD {path} {headers:?}");
            assert!(
                r.body.is_empty(),
                "{proto:?} HEAD {path}: body {:?}",
                r.body
            );
            assert_eq!(
                r.header("content-length"),
                Some(len),
                "{proto:?} HEAD {path}"
            );
            assert_eq!(r.header("content-type"), Some("application/json"));
            assert_eq!(r.header("cache-control"), cache);
        }
        let r = send(proto, server.addr, Method::HEAD, "/protected", &[]).await;
        assert_eq!(r.header("www-authenticate"), Some(CHALLENGE));
    }
}

#[tokio::test]
async fn options_needs_no_credential() {
    let server = TestServer::start().await;
    for proto in BOTH {
        for path in ["/public", "/protected"] {
            for headers in [vec![], vec![("x-token", WRONG)]] {
                let r = send(proto, server.addr, Method::OPTIONS, path, &headers).await;
                assert_eq!(r.status, StatusCode::NO_CONTENT, "{proto:?} {path}");
                assert!(r.body.is_empty());
                assert_eq!(r.header("allow"), Some("GET, HEAD, OPTIONS"));
                assert_eq!(r.header("www-authenticate"), None);
            }
        }
    }
}

#[tokio::test]
async fn other_methods_are_405_before_the_credential() {
    let server = TestServer::start().await;
    let methods = ["POST", "PUT", "DELETE", "PATCH", "TRACE", "PURGE", "get"];
    for proto in BOTH {
        for path in ["/public", "/protected"] {
            for m in methods {
                for headers in [vec![], vec![("x-token", KEY)], vec![("x-token", WRONG)]] {
                    let method = Method::from_bytes(m.as_bytes()).unwrap();
                    let r = send(proto, server.addr, method, path, &headers).await;
                    assert_eq!(
                        r.status,
                        StatusCode::METHOD_NOT_ALLOWED,
                        "{proto:?} {m} {path}"
                    );
                    assert_eq!(r.text(), r#"{"detail":"Method Not Allowed"}"#);
                    assert_eq!(r.header("allow"), Some("GET, HEAD, OPTIONS"));
                    assert_eq!(r.header("content-type"), Some("application/json"));
                    assert_eq!(r.header("www-authenticate"), None);
                }
            }
        }
    }
}

#[tokio::test]
async fn unknown_paths_are_404_with_or_without_key() {
    let server = TestServer::start().await;
    let paths = [
        "/",
        "/Public",
        "/PROTECTED",
        "/publicx",
        "/public/x",
        "/protected//",
        "/public//",
        "/public.json",
        "/protected%20",
    ];
    for proto in BOTH {
        for path in paths {
            for headers in [vec![], vec![("x-token", KEY)]] {
                for method in [Method::GET, Method::POST, Method::OPTIONS] {
                    let r = send(proto, server.addr, method.clone(), path, &headers).await;
                    assert_eq!(r.status, StatusCode::NOT_FOUND, "{proto:?} {method} {path}");
                    assert_eq!(r.text(), r#"{"detail":"Not Found"}"#);
                    assert_eq!(r.header("content-type"), Some("application/json"));
                }
            }
        }
    }
}

#[tokio::test]
async fn trailing_slash_redirects_relative() {
    let server = TestServer::start().await;
    for proto in BOTH {
        let cases = [
            ("/public/", "/public"),
            ("/protected/", "/protected"),
            ("/public/?a=1&b=%20x", "/public?a=1&b=%20x"),
            ("/protected/?x-token=leak", "/protected?x-token=leak"),
            ("/%70ublic/", "/public"),
        ];
        for (path, location) in cases {
            let r = get(
                proto,
                server.addr,
                path,
                &[("x-forwarded-host", "evil.example")],
            )
            .await;
            assert_eq!(r.status, StatusCode::TEMPORARY_REDIRECT, "{proto:?} {path}");
            assert_eq!(r.header("location"), Some(location), "{proto:?} {path}");
            assert!(r.body.is_empty());
        }
    }
}

#[tokio::test]
async fn percent_encoded_unreserved_characters_route() {
    let server = TestServer::start().await;
    for proto in BOTH {
        let r = get(proto, server.addr, "/%70ublic", &[]).await;
        assert_eq!((r.status, r.text()), (StatusCode::OK, PUBLIC));
        let r = get(
            proto,
            server.addr,
            "/%70%72%6F%74%65%63%74%65%64",
            &[("x-token", KEY)],
        )
        .await;
        assert_eq!((r.status, r.text()), (StatusCode::OK, PROTECTED));
        let r = get(proto, server.addr, "/pro%74ected", &[]).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
}
