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
/// `None` when its headers contradict themselves or one is malformed (every
/// forwarding header present must be well-formed, even one that a header of
/// higher precedence overrides: a malformed one means something is off).
pub fn original<'a, B>(req: &'a Request<B>, mount: &str) -> Option<Original<'a>> {
    let headers = req.headers();
    let forwarded_method = single(headers, "x-forwarded-method")?;
    let original_method = single(headers, "x-original-method")?;
    let forwarded_uri = single(headers, "x-forwarded-uri")?;
    let original_uri = single(headers, "x-original-uri")?;
    let original_url = single(headers, "x-original-url")?;
    let url_path = match original_url {
        Some(url) => Some(path_of_url(url)?),
        None => None,
    };
    if ![forwarded_method, original_method]
        .into_iter()
        .flatten()
        .all(is_method)
    {
        return None;
    }
    if ![forwarded_uri, original_uri, url_path]
        .into_iter()
        .flatten()
        .all(is_target)
    {
        return None;
    }
    let method = match forwarded_method.or(original_method) {
        Some(value) => Method::from_bytes(value.as_bytes()).ok()?,
        None => req.method().clone(),
    };
    let target = match forwarded_uri.or(original_uri).or(url_path) {
        Some(target) => target,
        None => {
            let rest = req.uri().path().strip_prefix(mount).unwrap_or("");
            if rest.is_empty() { "/" } else { rest }
        }
    };
    let path = target.split(['?', '#']).next().unwrap_or("");
    let path = if path.is_empty() { "/" } else { path };
    Some(Original {
        method,
        path: normalize(path),
    })
}

/// The value of header `name`: `Some(None)` if absent, `None` if it is
/// present twice or is not text.
fn single<'h>(headers: &'h HeaderMap, name: &str) -> Option<Option<&'h str>> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (None, _) => Some(None),
        (Some(v), None) => v.to_str().ok().map(|s| Some(s.trim())),
        (Some(_), Some(_)) => None,
    }
}

/// Origin-form, visible ASCII only.
fn is_target(target: &str) -> bool {
    target.starts_with('/') && target.bytes().all(|b| b.is_ascii_graphic())
}

/// A method as proxies send it: 1 to 32 upper-case letters.
fn is_method(value: &str) -> bool {
    (1..=32).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_uppercase())
}

/// `https://host/p?q` → `/p?q` (`/` without a path); `None` unless it is an
/// absolute `http(s)` URL with a host.
fn path_of_url(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let (authority, path) = match rest.find(['/', '?', '#']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], &rest[i..]),
        Some(i) => (&rest[..i], "/"),
        None => (rest, "/"),
    };
    (!authority.is_empty()).then_some(path)
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
        for (name, value) in [
            ("x-forwarded-method", "GE T"),
            ("x-forwarded-method", "get"),
            ("x-original-uri", "relative"),
            ("x-original-uri", "/with space"),
            ("x-original-url", "{}"),
            ("x-original-url", "ftp://h/x"),
            ("x-original-url", "https:///nohost"),
        ] {
            let r = req(Method::GET, "/auth/verify", &[(name, value)]);
            assert_eq!(orig(&r), None, "{name}: {value}");
        }
    }
}
