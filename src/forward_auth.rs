//! `/auth/verify`: the original request from forwarded headers, and the
//! answers a proxy's auth subrequest expects.
//!
//! nginx `auth_request`, Traefik `ForwardAuth`, Caddy `forward_auth`, Envoy
//! `ext_authz` (HTTP) and HAProxy ask before they pass a request on. They
//! describe the request being authorised — "the original request" — in
//! headers, or (Envoy) by appending its path to ours:
//!
//! * method: `X-Forwarded-Method` or `X-Original-Method`, else the
//!   request's own method (Envoy sends the original method);
//! * URI: `X-Forwarded-Uri`, `X-Original-URI`, the path and query of
//!   `X-Original-URL`, or what follows `/auth/verify` in our own path (empty
//!   means `/`).
//!
//! Which of them are read is the [`Dialect`] (`--forward-auth-headers`): by
//! default any one, and a request carrying two descriptions is refused, since
//! a client can add a field the proxy does not overwrite. The path must pass
//! `crate::path`'s rule and is percent-normalised as routing does; the
//! query is dropped, a `#` refused. A header given twice, or a method that
//! is not a method, makes the original request unknowable: 403, never a 5xx
//! (Envoy with `failure_mode_allow` lets a 5xx through; nginx turns anything
//! but 401/403 into a 500).

use std::borrow::Cow;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_LENGTH};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};

use crate::keys::Key;
use crate::responses::{self, Body, Prebuilt, Refusals};
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
pub(crate) const KEY_LABEL: HeaderName = HeaderName::from_static("x-auth-key-label");
const ENVOY_REMOVE: HeaderName = HeaderName::from_static("x-envoy-auth-headers-to-remove");
const REASON: HeaderName = HeaderName::from_static("x-tokengate-reason");
const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");

/// Which proxy's fields describe the original request
/// (`--forward-auth-headers`). A client can add a field to the auth request,
/// never remove the proxy's: reading only the deployed proxy's fields (or,
/// with `auto`, refusing a request that carries more than one description)
/// means an added one cannot change what is authorised.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Dialect {
    /// Every form below is understood, but a request with more than one
    /// method source or more than one URI source (a header beside another,
    /// or beside a path after the mount) is refused.
    #[default]
    Auto,
    /// `X-Original-Method` and `X-Original-URI`, both required (the shipped
    /// nginx and HAProxy configurations set them).
    Original,
    /// `X-Forwarded-Method` and `X-Forwarded-Uri`, both required (Traefik's
    /// `ForwardAuth` and Caddy's `forward_auth` set them).
    Forwarded,
    /// The request's own method and the path after the mount (Envoy's HTTP
    /// `ext_authz` with a `path_prefix`); forwarding fields are ignored.
    Path,
}

/// The original request of `req`, served on `mount` (`/auth/verify`), as
/// `dialect` describes it. `None` when its fields contradict themselves,
/// one is malformed or missing, or its path is one `crate::path` refuses
/// (every forwarding header present must be well-formed, even one the
/// dialect does not read: a malformed one means something is off).
pub(crate) fn original<'a, B>(
    req: &'a Request<B>,
    mount: &str,
    dialect: Dialect,
) -> Option<Original<'a>> {
    let found = Forwarded::scan(req.headers())?;
    let url_path = match found.original_url {
        Some(url) => Some(path_of_url(url)?),
        None => None,
    };
    if ![found.forwarded_method, found.original_method]
        .into_iter()
        .flatten()
        .all(is_method)
    {
        return None;
    }
    if ![found.forwarded_uri, found.original_uri, url_path]
        .into_iter()
        .flatten()
        .all(is_target)
    {
        return None;
    }
    let appended = req.uri().path().strip_prefix(mount).unwrap_or("");
    let (method, target) = match dialect {
        Dialect::Auto => {
            let appended = (!appended.is_empty()).then_some(appended);
            let methods = [found.forwarded_method, found.original_method];
            let targets = [found.forwarded_uri, found.original_uri, url_path, appended];
            // Two descriptions of one request: a client added one.
            if methods.iter().flatten().count() > 1 || targets.iter().flatten().count() > 1 {
                return None;
            }
            let method = found.forwarded_method.or(found.original_method);
            let target = (found.forwarded_uri)
                .or(found.original_uri)
                .or(url_path)
                .or(appended)
                .unwrap_or("/");
            (method, target)
        }
        Dialect::Original => (Some(found.original_method?), found.original_uri?),
        Dialect::Forwarded => (Some(found.forwarded_method?), found.forwarded_uri?),
        Dialect::Path => (None, if appended.is_empty() { "/" } else { appended }),
    };
    let method = match method {
        Some(value) => Method::from_bytes(value.as_bytes()).ok()?,
        None => req.method().clone(),
    };
    Some(Original {
        method,
        path: target_path(target)?,
    })
}

/// The path a request target (`/p?q`) is authorised for: without the
/// query, normalised; `None` for a target with a fragment or an unsafe
/// path. Shared with gRPC's `Check`, whose request carries the target.
pub(crate) fn target_path(target: &str) -> Option<Cow<'_, str>> {
    // A fragment is never part of a request target: a proxy that forwards
    // `/reports/x#/../../admin` as it came would hand the upstream a path
    // this check never saw.
    let bytes = target.as_bytes();
    let end = bytes
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(bytes.len());
    if bytes[end..].contains(&b'#') {
        return None;
    }
    let path = if end == 0 { "/" } else { &target[..end] };
    if !crate::path::is_safe(path) {
        return None;
    }
    Some(normalize(path))
}

const X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
const X_ORIGINAL_METHOD: HeaderName = HeaderName::from_static("x-original-method");
const X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
const X_ORIGINAL_URI: HeaderName = HeaderName::from_static("x-original-uri");
const X_ORIGINAL_URL: HeaderName = HeaderName::from_static("x-original-url");

/// The forwarding headers of a request, each present at most once.
#[derive(Default)]
struct Forwarded<'h> {
    forwarded_method: Option<&'h str>,
    original_method: Option<&'h str>,
    forwarded_uri: Option<&'h str>,
    original_uri: Option<&'h str>,
    original_url: Option<&'h str>,
}

impl<'h> Forwarded<'h> {
    /// One pass over the headers (cheaper than five map lookups, which
    /// would each parse and hash a name); `None` if one is repeated or is
    /// not text.
    fn scan(headers: &'h HeaderMap) -> Option<Self> {
        let mut found = Forwarded::default();
        for (name, value) in headers {
            let slot = if *name == X_FORWARDED_METHOD {
                &mut found.forwarded_method
            } else if *name == X_ORIGINAL_METHOD {
                &mut found.original_method
            } else if *name == X_FORWARDED_URI {
                &mut found.forwarded_uri
            } else if *name == X_ORIGINAL_URI {
                &mut found.original_uri
            } else if *name == X_ORIGINAL_URL {
                &mut found.original_url
            } else {
                continue;
            };
            if slot.is_some() {
                return None;
            }
            *slot = Some(value.to_str().ok()?.trim());
        }
        Some(found)
    }
}

/// Origin-form, visible ASCII only.
pub(crate) fn is_target(target: &str) -> bool {
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
pub(crate) struct Answers {
    /// The headers of a 200: `cache-control` and Envoy's removal list; the
    /// key's label is added once per key ([`Answers::allow`]).
    allow: HeaderMap,
    /// Over a limit: 403 (or 429 with `--forward-auth-throttle-status 429`)
    /// with `x-tokengate-reason: throttled`, `rate-limited` or
    /// `quota-exhausted`; `retry-after` added per request.
    pub refusals: Refusals,
    /// The original request cannot be known (contradicting headers).
    pub unknowable: Prebuilt,
}

impl Answers {
    /// `token_header` is named in `x-envoy-auth-headers-to-remove`.
    pub(crate) fn new(token_header: &HeaderName, throttle_status: StatusCode) -> Self {
        let remove = HeaderValue::try_from(format!("{}, authorization", token_header.as_str()))
            .expect("a header name and a comma are a valid header value");
        let refused = |reason| {
            let answer = if throttle_status == StatusCode::TOO_MANY_REQUESTS {
                responses::detail(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests")
            } else {
                responses::detail(StatusCode::FORBIDDEN, "Forbidden")
            };
            answer
                .header(CACHE_CONTROL, NO_STORE)
                .header(REASON, HeaderValue::from_static(reason))
        };
        Answers {
            allow: HeaderMap::from_iter([(CACHE_CONTROL, NO_STORE), (ENVOY_REMOVE, remove)]),
            refusals: Refusals {
                throttled: refused("throttled"),
                rate_limited: refused("rate-limited"),
                quota_exhausted: refused("quota-exhausted"),
            },
            unknowable: responses::detail(StatusCode::FORBIDDEN, "Forbidden")
                .header(CACHE_CONTROL, NO_STORE)
                .header(REASON, HeaderValue::from_static("bad-original-request")),
        }
    }
}

impl Answers {
    /// 200 with an empty body, naming `key` in `x-auth-key-label`.
    #[inline]
    pub(crate) fn allow(&self, key: &Key, head: bool) -> Response<Body> {
        let headers = key.allow_headers(|key| {
            let mut headers = self.allow.clone();
            headers.insert(KEY_LABEL, key.label_value().clone());
            headers
        });
        let mut response = Response::new(Body::new(Bytes::new()));
        *response.headers_mut() = headers.clone();
        if head {
            // The length of the (empty) GET body.
            response
                .headers_mut()
                .insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        }
        response
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
        orig_as(r, Dialect::Auto)
    }

    fn orig_as(r: &Request<()>, dialect: Dialect) -> Option<(Method, String)> {
        original(r, "/auth/verify", dialect).map(|o| (o.method, o.path.into_owned()))
    }

    #[test]
    fn one_description_is_read() {
        let r = req(
            Method::GET,
            "/auth/verify",
            &[
                ("x-forwarded-method", "POST"),
                ("x-forwarded-uri", "/a/b?secret=1"),
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
    fn two_descriptions_are_refused_by_auto() {
        // What a client adds beside nginx's X-Original-*: either pair alone
        // would be read, together they are unknowable.
        let nginx = [
            ("x-original-method", "DELETE"),
            ("x-original-uri", "/admin/secret"),
        ];
        for extra in [
            ("x-forwarded-uri", "/reports/x"),
            ("x-forwarded-method", "GET"),
            ("x-original-url", "http://h/reports/x"),
        ] {
            let r = req(Method::GET, "/auth/verify", &[nginx[0], nginx[1], extra]);
            assert_eq!(orig(&r), None, "{extra:?}");
        }
        // A header beside Envoy's appended path.
        let r = req(
            Method::GET,
            "/auth/verify/admin",
            &[("x-forwarded-uri", "/reports/x")],
        );
        assert_eq!(orig(&r), None);
    }

    #[test]
    fn a_named_dialect_reads_only_its_fields() {
        let r = req(
            Method::GET,
            "/auth/verify",
            &[
                ("x-original-method", "DELETE"),
                ("x-original-uri", "/admin/secret"),
                ("x-forwarded-method", "GET"),
                ("x-forwarded-uri", "/reports/x"),
            ],
        );
        assert_eq!(
            orig_as(&r, Dialect::Original),
            Some((Method::DELETE, "/admin/secret".into()))
        );
        assert_eq!(
            orig_as(&r, Dialect::Forwarded),
            Some((Method::GET, "/reports/x".into()))
        );
        let r = req(
            Method::DELETE,
            "/auth/verify/admin",
            &[("x-forwarded-uri", "/reports/x")],
        );
        assert_eq!(
            orig_as(&r, Dialect::Path),
            Some((Method::DELETE, "/admin".into()))
        );
        // The dialect's fields are required.
        let r = req(Method::GET, "/auth/verify", &[("x-original-uri", "/a")]);
        assert_eq!(orig_as(&r, Dialect::Original), None);
        assert_eq!(orig_as(&r, Dialect::Forwarded), None);
    }

    #[test]
    fn fragments_and_unsafe_paths_are_unknowable() {
        for uri in [
            "/reports/x#/../../admin/secret",
            "/reports/../admin",
            "/reports/%2e%2e/admin",
            "/reports/..%2fadmin",
            "/reports/..;/admin",
            "/reports/%00",
            "/reports/%c0%ae%c0%ae/admin",
        ] {
            let r = req(
                Method::GET,
                "/auth/verify",
                &[("x-original-method", "GET"), ("x-original-uri", uri)],
            );
            assert_eq!(orig(&r), None, "{uri}");
        }
        let r = req(Method::GET, "/auth/verify/reports/%2e%2e/admin", &[]);
        assert_eq!(orig(&r), None);
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
