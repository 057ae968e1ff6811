//! Every response tokengate sends, and the one place where errors become
//! responses. Bytes are built once at start-up: JSON bodies (serialised with
//! `serde_json`), their `content-length` values and the other header values.
//! Per request, a response is assembled from shared [`Bytes`] and
//! [`HeaderValue`]s: nothing is formatted or serialised on the hot path (the
//! `/metrics` exposition and a redirect's query are the exceptions).

use bytes::Bytes;
use http::header::{
    ALLOW, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, RETRY_AFTER, WWW_AUTHENTICATE,
};
use http::{HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use std::time::Duration;

/// The body type of every response tokengate sends.
pub(crate) type Body = Full<Bytes>;

const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");
const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");
const OPENMETRICS: HeaderValue =
    HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8");

/// A response prepared at start-up: status, body and headers.
#[derive(Clone, Debug)]
pub(crate) struct Prebuilt {
    status: StatusCode,
    body: Bytes,
    /// `content-length` of the GET body, sent with HEAD responses.
    head_length: Option<HeaderValue>,
    /// Sends `content-type: application/json` (inserted with a constant name,
    /// which the compiler resolves at build time).
    json: bool,
    /// Further headers (`cache-control`, `www-authenticate`, `allow`).
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Prebuilt {
    /// A JSON response with `content-type` and `content-length` prepared.
    pub(crate) fn json(status: StatusCode, value: &serde_json::Value) -> Self {
        // Serialising a `Value` into a Vec cannot fail: it has string keys and no I/O.
        let body = serde_json::to_vec(value).expect("serialising a json Value cannot fail");
        // Leaked once at start-up (a handful of small bodies): a `&'static`
        // body makes every per-request clone a plain pointer copy, with no
        // reference count to touch.
        let body: &'static [u8] = Box::leak(body.into_boxed_slice());
        Self::with_body(status, Bytes::from_static(body), true)
    }

    /// A JSON response from JSON already serialised for the process's life.
    pub(crate) fn json_bytes(status: StatusCode, json: &'static [u8]) -> Self {
        Self::with_body(status, Bytes::from_static(json), true)
    }

    /// A response with an empty body (`content-length: 0`, none for 204).
    pub(crate) fn empty(status: StatusCode) -> Self {
        Self::with_body(status, Bytes::new(), false)
    }

    fn with_body(status: StatusCode, body: Bytes, json: bool) -> Self {
        Prebuilt {
            json,
            headers: Vec::new(),
            status,
            // hyper writes `content-length` from the body's exact size; only a
            // HEAD response (empty body) needs it set by hand.
            head_length: (status != StatusCode::NO_CONTENT).then(|| HeaderValue::from(body.len())),
            body,
        }
    }

    /// Adds a header (builder style, at start-up).
    pub(crate) fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// The full body bytes (what `GET` sends).
    #[cfg(test)]
    pub(crate) fn body(&self) -> &Bytes {
        &self.body
    }

    /// Assembles the response. With `head`, the body is empty but
    /// `content-length` still gives the length of the `GET` body.
    #[inline]
    pub(crate) fn respond(&self, head: bool) -> Response<Body> {
        let body = if head {
            Bytes::new()
        } else {
            self.body.clone()
        };
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        if self.json {
            headers.insert(CONTENT_TYPE, APPLICATION_JSON);
        }
        for (name, value) in &self.headers {
            headers.insert(name.clone(), value.clone());
        }
        if head && let Some(length) = &self.head_length {
            headers.insert(CONTENT_LENGTH, length.clone());
        }
        response
    }
}

/// `{"detail": text}`, FastAPI's error shape.
pub(crate) fn detail(status: StatusCode, text: &str) -> Prebuilt {
    Prebuilt::json(status, &serde_json::json!({ "detail": text }))
}

/// Builds the JSON body `{"message": text}`.
pub(crate) fn message(text: &str) -> Prebuilt {
    Prebuilt::json(StatusCode::OK, &serde_json::json!({ "message": text }))
}

/// The realm of the `WWW-Authenticate` challenge: 1-64 printable ASCII
/// characters without `"` or `\\`, so it can be quoted in a header as it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Realm(String);

/// Why a realm cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must be 1-64 printable ASCII characters without '\"' or '\\'")]
pub struct InvalidRealm;

impl Realm {
    /// Validates a realm.
    pub fn new(realm: &str) -> Result<Self, InvalidRealm> {
        let ok = !realm.is_empty()
            && realm.len() <= 64
            && realm
                .bytes()
                .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\');
        if ok {
            Ok(Realm(realm.to_owned()))
        } else {
            Err(InvalidRealm)
        }
    }

    /// The realm as configured.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `Bearer realm="…"` followed by `extra`, as a header value.
    fn challenge(&self, extra: &str) -> HeaderValue {
        HeaderValue::try_from(format!("Bearer realm=\"{}\"{extra}", self.0))
            .expect("a validated realm is visible ASCII without quotes: a valid header value")
    }
}

impl Default for Realm {
    fn default() -> Self {
        Realm("tokengate".to_owned())
    }
}

/// The answers to a client over a limit; `retry-after` is added per request.
#[derive(Clone, Debug)]
pub(crate) struct Refusals {
    /// Over the failed-credential limit (the throttle).
    pub(crate) throttled: Prebuilt,
    /// A key over its owner's `rate=`.
    pub(crate) rate_limited: Prebuilt,
    /// A key over its owner's `quota=`.
    pub(crate) quota_exhausted: Prebuilt,
}

impl Refusals {
    /// The same answer for every limit.
    pub(crate) fn all(answer: &Prebuilt) -> Self {
        Refusals {
            throttled: answer.clone(),
            rate_limited: answer.clone(),
            quota_exhausted: answer.clone(),
        }
    }
}

/// Every fixed response the server sends, built once.
#[derive(Clone, Debug)]
pub(crate) struct Responses {
    /// 401, no credential presented.
    pub unauthorized_missing: Prebuilt,
    /// 401, a wrong credential presented.
    pub unauthorized_invalid: Prebuilt,
    /// 404 for unknown paths.
    pub not_found: Prebuilt,
    /// 400 for requests HTTP rejects (missing or repeated `Host`, a target
    /// that is not origin-form).
    pub bad_request: Prebuilt,
    /// 429 for every limit (the throttle, a key's rate or quota).
    pub refusals: Refusals,
    /// 503: the limits store is down and `--limits-store-failure closed`.
    pub unavailable: Prebuilt,
    /// 431 for too many or too large header fields.
    pub header_fields_too_large: Prebuilt,
    /// 414 for a request target over the limit.
    pub uri_too_long: Prebuilt,
    /// 503 `{"status":"draining"}` from `/readyz` once shutdown has begun.
    pub draining: Prebuilt,
    /// 405 to `CONNECT`: no route tunnels.
    pub connect_not_allowed: Prebuilt,
    /// 502: the upstream refused, was unreachable or broke the exchange.
    pub bad_gateway: Prebuilt,
    /// 504: no response head from the upstream within `--upstream-timeout`.
    pub gateway_timeout: Prebuilt,
    /// 403 for a valid key whose scopes do not cover the request
    /// (`error="insufficient_scope"`, RFC 6750 §3.1).
    pub forbidden: Prebuilt,
}

impl Responses {
    /// Builds every response; `realm` goes into `WWW-Authenticate`.
    pub(crate) fn new(realm: &Realm) -> Self {
        let unauthorized =
            detail(StatusCode::UNAUTHORIZED, "Unauthorized").header(CACHE_CONTROL, NO_STORE);
        let too_many = detail(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests")
            .header(CACHE_CONTROL, NO_STORE);
        Responses {
            unauthorized_missing: unauthorized
                .clone()
                .header(WWW_AUTHENTICATE, realm.challenge("")),
            unauthorized_invalid: unauthorized.header(
                WWW_AUTHENTICATE,
                realm.challenge(", error=\"invalid_token\""),
            ),
            not_found: detail(StatusCode::NOT_FOUND, "Not Found"),
            bad_request: detail(StatusCode::BAD_REQUEST, "Bad Request"),
            refusals: Refusals::all(&too_many),
            unavailable: detail(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable")
                .header(CACHE_CONTROL, NO_STORE),
            header_fields_too_large: detail(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "Request Header Fields Too Large",
            ),
            uri_too_long: detail(StatusCode::URI_TOO_LONG, "URI Too Long"),
            draining: status(StatusCode::SERVICE_UNAVAILABLE, "draining"),
            connect_not_allowed: method_not_allowed(HeaderValue::from_static("GET, HEAD, OPTIONS")),
            bad_gateway: detail(StatusCode::BAD_GATEWAY, "Bad Gateway"),
            gateway_timeout: detail(StatusCode::GATEWAY_TIMEOUT, "Gateway Timeout"),
            forbidden: detail(StatusCode::FORBIDDEN, "Forbidden")
                .header(CACHE_CONTROL, NO_STORE)
                .header(
                    WWW_AUTHENTICATE,
                    realm.challenge(", error=\"insufficient_scope\""),
                ),
        }
    }
}

/// Adds `retry-after`: the wait, rounded up to whole seconds (at least 1).
pub(crate) fn with_retry_after(mut response: Response<Body>, wait: Duration) -> Response<Body> {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    response
}

/// `{"status": text}` with `cache-control: no-store` (health and readiness).
pub(crate) fn status(code: StatusCode, text: &str) -> Prebuilt {
    Prebuilt::json(code, &serde_json::json!({ "status": text })).header(CACHE_CONTROL, NO_STORE)
}

/// 204 for `OPTIONS` on a route, with its `allow`.
pub(crate) fn options(allow: HeaderValue) -> Prebuilt {
    Prebuilt::empty(StatusCode::NO_CONTENT).header(ALLOW, allow)
}

/// 405 for a method a route does not answer, with its `allow` (RFC 9110 §15.5.6).
pub(crate) fn method_not_allowed(allow: HeaderValue) -> Prebuilt {
    detail(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed").header(ALLOW, allow)
}

/// 200 with the Prometheus exposition `text` (`ok` carries the route's headers).
pub(crate) fn metrics(ok: &Prebuilt, text: String, head: bool) -> Response<Body> {
    let length = HeaderValue::from(text.len());
    let mut response = ok.respond(head);
    *response.body_mut() = Full::new(if head {
        Bytes::new()
    } else {
        Bytes::from(text)
    });
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, OPENMETRICS);
    headers.insert(CACHE_CONTROL, NO_STORE);
    headers.insert(CONTENT_LENGTH, length);
    response
}

/// The body of a protected route's success: `cache-control: no-store` added.
pub(crate) fn protected(ok: Prebuilt) -> Prebuilt {
    ok.header(CACHE_CONTROL, NO_STORE)
}

/// 307 to `location` (relative: the Host header is never reflected).
pub(crate) fn redirect(location: HeaderValue) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::TEMPORARY_REDIRECT;
    response.headers_mut().insert(LOCATION, location);
    response
        .headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn bodies_are_the_fastapi_bytes() {
        let r = Responses::new(&Realm::default());
        assert_eq!(
            &r.unauthorized_missing.body()[..],
            br#"{"detail":"Unauthorized"}"#
        );
        assert_eq!(&r.not_found.body()[..], br#"{"detail":"Not Found"}"#);
        assert_eq!(
            &message("Welcome to the public route!").body()[..],
            br#"{"message":"Welcome to the public route!"}"#
        );
        let resp = r.unauthorized_invalid.respond(false);
        assert_eq!(
            resp.headers()[WWW_AUTHENTICATE],
            r#"Bearer realm="tokengate", error="invalid_token""#
        );
        assert_eq!(http_body::Body::size_hint(resp.body()).exact(), Some(25));
        assert_eq!(
            r.unauthorized_invalid.respond(true).headers()[CONTENT_LENGTH],
            "25"
        );
    }

    #[test]
    fn head_keeps_length_drops_body() {
        let ok = message("hi");
        let resp = ok.respond(true);
        assert_eq!(resp.headers()[CONTENT_LENGTH], "16");
        assert_eq!(http_body::Body::size_hint(resp.body()).exact(), Some(0));
    }

    #[test]
    fn realm_is_validated() {
        assert!(Realm::new("").is_err());
        assert!(Realm::new("a\"b").is_err());
        assert!(Realm::new("a\\b").is_err());
        assert!(Realm::new("x\ny").is_err());
        assert!(Realm::new(&"r".repeat(65)).is_err());
        assert_eq!(Realm::new("My API v2").unwrap().as_str(), "My API v2");
    }

    #[test]
    fn retry_after_rounds_up() {
        let r = Responses::new(&Realm::default());
        let resp = with_retry_after(
            r.refusals.throttled.respond(false),
            Duration::from_millis(1500),
        );
        assert_eq!(resp.headers()[RETRY_AFTER], "2");
        let resp = with_retry_after(r.refusals.throttled.respond(true), Duration::ZERO);
        assert_eq!(resp.headers()[RETRY_AFTER], "1");
    }
}
