//! `/auth/verify`: the original request from forwarded headers, and the
//! answers a proxy's auth subrequest expects.
//!
//! nginx `auth_request`, Traefik `ForwardAuth`, Caddy `forward_auth`, Envoy
//! `ext_authz` (HTTP) and HAProxy ask before they pass a request on. They
//! describe the request being authorised — "the original request" — in
//! headers, or (Envoy) by appending its path to ours:
//!
//! * method: `X-Forwarded-Method`, else `X-Original-Method`, else the
//!   request's own method (Envoy sends the original method);
//! * URI: `X-Forwarded-Uri`, else `X-Original-URI`, else the path and query of
//!   `X-Original-URL`, else what follows `/auth/verify` in our own path (empty
//!   means `/`).
//!
//! The path is percent-normalised as routing does; the query is dropped. A
//! header given twice, or a method that is not a method, makes the original
//! request unknowable: 403, never a 5xx (Envoy with `failure_mode_allow`
//! lets a 5xx through; nginx turns anything but 401/403 into a 500).

use std::borrow::Cow;

use http::header::CACHE_CONTROL;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};

use crate::responses::{self, Prebuilt};
use crate::routes::normalize;

/// The request a proxy asks about.
#[derive(Debug, PartialEq, Eq)]
pub struct Original<'a> {
    /// Its method.
    pub method: Method,
    /// Its path: percent-normalised, without the query.
    pub path: Cow<'a, str>,
}

/// `x-auth-key-label`: the label of the key that was accepted.
pub const KEY_LABEL: HeaderName = HeaderName::from_static("x-auth-key-label");
const ENVOY_REMOVE: HeaderName = HeaderName::from_static("x-envoy-auth-headers-to-remove");
const REASON: HeaderName = HeaderName::from_static("x-tokengate-reason");
const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");

/// The original request of `req`, served on `mount` (`/auth/verify`).
/// `None` when its headers contradict themselves.
pub fn original<'a, B>(req: &'a Request<B>, mount: &str) -> Option<Original<'a>> {
    let headers = req.headers();
    let method = match one_of(headers, &["x-forwarded-method", "x-original-method"])? {
        Some(value) => Method::from_bytes(value.trim().as_bytes()).ok()?,
        None => req.method().clone(),
    };
    let target: &str = match one_of(headers, &["x-forwarded-uri", "x-original-uri"])? {
        Some(uri) => uri,
        None => match one_of(headers, &["x-original-url"])? {
            Some(url) => path_of_url(url),
            None => {
                let rest = req.uri().path().strip_prefix(mount).unwrap_or("");
                if rest.is_empty() { "/" } else { rest }
            }
        },
    };
    let path = target.split(['?', '#']).next().unwrap_or("");
    let path = if path.is_empty() { "/" } else { path };
    Some(Original {
        method,
        path: normalize(path),
    })
}

/// The value of the first of `names` present: `Some(None)` if none is,
/// `None` if that one is present twice or is not text.
fn one_of<'h>(headers: &'h HeaderMap, names: &[&str]) -> Option<Option<&'h str>> {
    for name in names {
        let mut values = headers.get_all(*name).iter();
        match (values.next(), values.next()) {
            (None, _) => continue,
            (Some(v), None) => return v.to_str().ok().map(|s| Some(s.trim())),
            (Some(_), Some(_)) => return None,
        }
    }
    Some(None)
}

/// `https://host/p?q` → `/p?q`; a path is returned as it is.
fn path_of_url(url: &str) -> &str {
    match url.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => url,
    }
}

/// The fixed answers of `/auth/verify`, built once.
#[derive(Clone, Debug)]
pub struct Answers {
    /// 200, empty, with `cache-control` and Envoy's removal list; the key's
    /// label is added per request.
    pub allow: Prebuilt,
    /// Throttled: 403 (or 429 with `--forward-auth-throttle-status 429`)
    /// with `x-tokengate-reason: throttled`; `retry-after` added per request.
    pub throttled: Prebuilt,
    /// The original request cannot be known (contradicting headers).
    pub unknowable: Prebuilt,
}

impl Answers {
    /// `token_header` is named in `x-envoy-auth-headers-to-remove`.
    pub fn new(token_header: &HeaderName, throttle_status: StatusCode) -> Self {
        let remove = HeaderValue::try_from(format!("{}, authorization", token_header.as_str()))
            .expect("a header name and a comma are a valid header value");
        let throttled = if throttle_status == StatusCode::TOO_MANY_REQUESTS {
            responses::detail(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests")
        } else {
            responses::detail(StatusCode::FORBIDDEN, "Forbidden")
        };
        Answers {
            allow: Prebuilt::empty(StatusCode::OK)
                .header(CACHE_CONTROL, NO_STORE)
                .header(ENVOY_REMOVE, remove),
            throttled: throttled
                .header(CACHE_CONTROL, NO_STORE)
                .header(REASON, HeaderValue::from_static("throttled")),
            unknowable: responses::detail(StatusCode::FORBIDDEN, "Forbidden")
                .header(CACHE_CONTROL, NO_STORE)
                .header(REASON, HeaderValue::from_static("bad-original-request")),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn req(method: Method, path: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method(method).uri(path);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    fn orig(r: &Request<()>) -> Option<(Method, String)> {
        original(r, "/auth/verify").map(|o| (o.method, o.path.into_owned()))
    }

    #[test]
    fn header_precedence() {
        let r = req(
            Method::GET,
            "/auth/verify",
            &[
                ("x-forwarded-method", "POST"),
                ("x-original-method", "PUT"),
                ("x-forwarded-uri", "/a/b?secret=1"),
                ("x-original-uri", "/c"),
            ],
        );
        assert_eq!(orig(&r), Some((Method::POST, "/a/b".into())));
        let r = req(
            Method::GET,
            "/auth/verify",
            &[("x-original-method", "PUT"), ("x-original-uri", "/c")],
        );
        assert_eq!(orig(&r), Some((Method::PUT, "/c".into())));
        let r = req(
            Method::GET,
            "/auth/verify",
            &[("x-original-url", "https://api.example:8443/r/%70?x=1")],
        );
        assert_eq!(orig(&r), Some((Method::GET, "/r/p".into())));
    }

    #[test]
    fn envoy_appends_the_path() {
        let r = req(Method::DELETE, "/auth/verify/reports/7", &[]);
        assert_eq!(orig(&r), Some((Method::DELETE, "/reports/7".into())));
        let r = req(Method::HEAD, "/auth/verify", &[]);
        assert_eq!(orig(&r), Some((Method::HEAD, "/".into())));
    }

    #[test]
    fn contradictions_are_unknowable() {
        let mut r = req(Method::GET, "/auth/verify", &[("x-forwarded-uri", "/a")]);
        r.headers_mut()
            .append("x-forwarded-uri", HeaderValue::from_static("/b"));
        assert_eq!(orig(&r), None);
        let r = req(
            Method::GET,
            "/auth/verify",
            &[("x-forwarded-method", "GE T")],
        );
        assert_eq!(orig(&r), None);
    }
}
