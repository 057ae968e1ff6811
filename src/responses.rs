//! The response bytes, built once at start-up: JSON bodies (serialised with
//! `serde_json`), their `content-length` values and the other header values.
//! Per request, a response is assembled from shared [`Bytes`] and
//! [`HeaderValue`]s: nothing is formatted or serialised on the hot path.

use bytes::Bytes;
use http::header::{
    ALLOW, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, RETRY_AFTER, WWW_AUTHENTICATE,
};
use http::{HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::Full;

/// The body type of every response tokengate sends.
pub type Body = Full<Bytes>;

const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");
const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");
/// The methods every route answers.
pub const ALLOWED_METHODS: HeaderValue = HeaderValue::from_static("GET, HEAD, OPTIONS");

/// A response prepared at start-up: status, body and headers.
#[derive(Clone, Debug)]
pub struct Prebuilt {
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
    pub fn json(status: StatusCode, value: &serde_json::Value) -> Self {
        // Serialising a `Value` into a Vec cannot fail: it has string keys and no I/O.
        let body = serde_json::to_vec(value).expect("serialising a json Value cannot fail");
        // Leaked once at start-up (a handful of small bodies): a `&'static`
        // body makes every per-request clone a plain pointer copy, with no
        // reference count to touch.
        let body: &'static [u8] = Box::leak(body.into_boxed_slice());
        Self::with_body(status, Bytes::from_static(body), true)
    }

    /// A response with an empty body (`content-length: 0`, none for 204).
    pub fn empty(status: StatusCode) -> Self {
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
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// The full body bytes (what `GET` sends).
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// Assembles the response. With `head`, the body is empty but
    /// `content-length` still gives the length of the `GET` body.
    #[inline]
    pub fn respond(&self, head: bool) -> Response<Body> {
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
        if head {
            if let Some(length) = &self.head_length {
                headers.insert(CONTENT_LENGTH, length.clone());
            }
        }
        response
    }
}

fn detail(status: StatusCode, text: &str) -> Prebuilt {
    Prebuilt::json(status, &serde_json::json!({ "detail": text }))
}

/// Builds the JSON body `{"message": text}`.
pub fn message(text: &str) -> Prebuilt {
    Prebuilt::json(StatusCode::OK, &serde_json::json!({ "message": text }))
}

/// Every fixed response the server sends, built once.
#[derive(Clone, Debug)]
pub struct Responses {
    /// 401, no credential presented.
    pub unauthorized_missing: Prebuilt,
    /// 401, a wrong credential presented.
    pub unauthorized_invalid: Prebuilt,
    /// 204 for `OPTIONS` on a route.
    pub options: Prebuilt,
    /// 405 for other methods on a route.
    pub method_not_allowed: Prebuilt,
    /// 404 for unknown paths.
    pub not_found: Prebuilt,
    /// 400 for requests HTTP rejects (missing or repeated `Host`).
    pub bad_request: Prebuilt,
    /// 429 for a client over its failed-credential limit.
    pub too_many_requests: Prebuilt,
    /// 431 for too many or too large header fields.
    pub header_fields_too_large: Prebuilt,
    /// 414 for a request target over the limit.
    pub uri_too_long: Prebuilt,
}

/// Why a realm cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must be 1-64 printable ASCII characters without '\"' or '\\'")]
pub struct InvalidRealm;

impl Responses {
    /// Builds every response; `realm` goes into `WWW-Authenticate`.
    pub fn new(realm: &str) -> Result<Self, InvalidRealm> {
        let realm_ok = !realm.is_empty()
            && realm.len() <= 64
            && realm
                .bytes()
                .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\');
        if !realm_ok {
            return Err(InvalidRealm);
        }
        let challenge = |extra: &str| {
            HeaderValue::try_from(format!("Bearer realm=\"{realm}\"{extra}"))
                .map_err(|_| InvalidRealm)
        };
        let unauthorized =
            detail(StatusCode::UNAUTHORIZED, "Unauthorized").header(CACHE_CONTROL, NO_STORE);
        Ok(Responses {
            unauthorized_missing: unauthorized
                .clone()
                .header(WWW_AUTHENTICATE, challenge("")?),
            unauthorized_invalid: unauthorized
                .header(WWW_AUTHENTICATE, challenge(", error=\"invalid_token\"")?),
            options: Prebuilt::empty(StatusCode::NO_CONTENT).header(ALLOW, ALLOWED_METHODS),
            method_not_allowed: detail(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed")
                .header(ALLOW, ALLOWED_METHODS),
            not_found: detail(StatusCode::NOT_FOUND, "Not Found"),
            bad_request: detail(StatusCode::BAD_REQUEST, "Bad Request"),
            too_many_requests: detail(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests")
                .header(CACHE_CONTROL, NO_STORE),
            header_fields_too_large: detail(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "Request Header Fields Too Large",
            ),
            uri_too_long: detail(StatusCode::URI_TOO_LONG, "URI Too Long"),
        })
    }
}

/// The body of a protected route's success: `cache-control: no-store` added.
pub fn protected(ok: Prebuilt) -> Prebuilt {
    ok.header(CACHE_CONTROL, NO_STORE)
}

/// 307 to `location` (relative: the Host header is never reflected).
pub fn redirect(location: HeaderValue) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::TEMPORARY_REDIRECT;
    response.headers_mut().insert(LOCATION, location);
    response
        .headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
    response
}

/// Adds `retry-after` (seconds) to a prebuilt 429.
pub fn with_retry_after(mut response: Response<Body>, seconds: u64) -> Response<Body> {
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn bodies_are_the_fastapi_bytes() {
        let r = Responses::new("tokengate").unwrap();
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
        assert!(Responses::new("").is_err());
        assert!(Responses::new("a\"b").is_err());
        assert!(Responses::new("a\\b").is_err());
        assert!(Responses::new("x\ny").is_err());
        assert!(Responses::new(&"r".repeat(65)).is_err());
        assert!(Responses::new("My API v2").is_ok());
    }
}
