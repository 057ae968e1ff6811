//! CORS for `--cors-origin`: a browser page from an allowed origin may call
//! tokengate (and, in gateway mode, the API behind it) with a key. The
//! preflight is answered without a key and never forwarded; every answer to
//! an allowed origin — the refusals too, so the page can read why — says so
//! and exposes the fields that explain it. Another origin gets no CORS
//! field, and the browser blocks it. Without the flag nothing changes.

use std::time::Duration;

use http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN,
    VARY,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};

/// The fields a page may read of an answer: why it was refused, how long
/// to wait, what is left of its limits, when its key retires.
const EXPOSE: HeaderValue =
    HeaderValue::from_static("www-authenticate, retry-after, ratelimit, ratelimit-policy, sunset");
const VARY_ORIGIN: HeaderValue = HeaderValue::from_static("origin");
const VARY_PREFLIGHT: HeaderValue = HeaderValue::from_static(
    "origin, access-control-request-method, access-control-request-headers",
);

/// Why an origin cannot be allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an origin is scheme://host[:port] (http or https, no path, no trailing slash) or *")]
pub struct BadOrigin;

/// `--cors-origin` and `--cors-max-age`, checked.
#[derive(Clone, Debug)]
pub struct CorsConfig {
    /// Exact origins; `None`: every origin (`*`).
    origins: Option<Vec<HeaderValue>>,
    max_age: Duration,
}

impl CorsConfig {
    /// `origins` as given (`*` allows every origin).
    pub fn new(origins: &[String], max_age: Duration) -> Result<Self, BadOrigin> {
        if origins.iter().any(|o| o == "*") {
            return Ok(CorsConfig {
                origins: None,
                max_age,
            });
        }
        let origins = origins
            .iter()
            .map(|o| {
                valid(o)
                    .then(|| HeaderValue::try_from(o.as_str()).ok())
                    .flatten()
                    .ok_or(BadOrigin)
            })
            .collect::<Result<_, _>>()?;
        Ok(CorsConfig {
            origins: Some(origins),
            max_age,
        })
    }
}

/// `scheme://host[:port]`: http or https, a host of letters, digits, `.`,
/// `-`, or a bracketed IPv6 address, an optional port; nothing after.
fn valid(origin: &str) -> bool {
    let Some(rest) = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
    else {
        return false;
    };
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || rest.starts_with('[') => {
            if host.is_empty() && !rest.starts_with('[') {
                return false;
            }
            (host, Some(port))
        }
        _ => (rest, None),
    };
    let host_ok = if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        inner.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
    };
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.parse::<u16>().is_ok());
    host_ok && port_ok
}

/// The CORS answers, built once.
#[derive(Debug)]
pub(crate) struct Cors {
    origins: Option<Vec<HeaderValue>>,
    allow_headers: HeaderValue,
    max_age: HeaderValue,
}

impl Cors {
    pub(crate) fn new(config: &CorsConfig, token_header: &HeaderName) -> Self {
        Cors {
            origins: config.origins.clone(),
            allow_headers: HeaderValue::try_from(format!(
                "{}, authorization, content-type",
                token_header.as_str()
            ))
            .expect("a header name and commas are a valid header value"),
            max_age: HeaderValue::from(config.max_age.as_secs()),
        }
    }

    /// The request's `Origin` if it is allowed.
    #[inline]
    pub(crate) fn allowed(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        let origin = headers.get(ORIGIN)?;
        match &self.origins {
            None => Some(origin.clone()),
            Some(list) => list.iter().any(|o| o == origin).then(|| origin.clone()),
        }
    }

    /// Whether a request is a preflight (`OPTIONS` asking for a method).
    #[inline]
    pub(crate) fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
        method == Method::OPTIONS && headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
    }

    /// 204 to a preflight from `origin`: `methods` may be used, with the
    /// token header, `authorization` and `content-type`.
    pub(crate) fn preflight<B: Default>(
        &self,
        origin: HeaderValue,
        methods: HeaderValue,
    ) -> Response<B> {
        let mut response = Response::new(B::default());
        *response.status_mut() = StatusCode::NO_CONTENT;
        let headers = response.headers_mut();
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(ACCESS_CONTROL_ALLOW_METHODS, methods);
        headers.insert(ACCESS_CONTROL_ALLOW_HEADERS, self.allow_headers.clone());
        headers.insert(ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        headers.insert(VARY, VARY_PREFLIGHT);
        response
    }

    /// Marks an answer to `origin` readable by its page. Any
    /// `access-control-*` already there (an upstream's) is replaced.
    pub(crate) fn decorate<B>(response: &mut Response<B>, origin: HeaderValue) {
        let headers = response.headers_mut();
        let theirs: Vec<HeaderName> = headers
            .keys()
            .filter(|name| name.as_str().starts_with("access-control-"))
            .cloned()
            .collect();
        for name in theirs {
            headers.remove(name);
        }
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, EXPOSE);
        headers.append(VARY, VARY_ORIGIN);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cors(origins: &[&str]) -> Cors {
        let origins: Vec<String> = origins.iter().map(|s| (*s).to_owned()).collect();
        Cors::new(
            &CorsConfig::new(&origins, Duration::from_secs(600)).unwrap(),
            &HeaderName::from_static("x-token"),
        )
    }

    fn with_origin(origin: &'static str) -> HeaderMap {
        HeaderMap::from_iter([(ORIGIN, HeaderValue::from_static(origin))])
    }

    #[test]
    fn origins_are_checked_when_configured() {
        for good in [
            "https://app.example.com",
            "http://127.0.0.1:5173",
            "http://[::1]:8080",
            "*",
        ] {
            assert!(
                CorsConfig::new(&[good.to_owned()], Duration::ZERO).is_ok(),
                "{good}"
            );
        }
        for bad in [
            "app.example.com",
            "https://app.example.com/",
            "https://app.example.com/x",
            "ftp://x",
            "https://",
            "https://App.example.com",
            "https://x:99999",
            "https://x:",
            "null",
        ] {
            assert_eq!(
                CorsConfig::new(&[bad.to_owned()], Duration::ZERO).unwrap_err(),
                BadOrigin,
                "{bad}"
            );
        }
    }

    #[test]
    fn only_an_allowed_origin_is_echoed() {
        let c = cors(&["https://app.example.com"]);
        assert_eq!(
            c.allowed(&with_origin("https://app.example.com")).unwrap(),
            "https://app.example.com"
        );
        assert!(
            c.allowed(&with_origin("https://evil.example.com"))
                .is_none()
        );
        assert!(
            c.allowed(&with_origin("https://app.example.com.evil.net"))
                .is_none()
        );
        assert!(
            c.allowed(&HeaderMap::new()).is_none(),
            "no Origin: not a CORS request"
        );
        let any = cors(&["*"]);
        assert_eq!(
            any.allowed(&with_origin("https://x.test")).unwrap(),
            "https://x.test"
        );
    }

    #[test]
    fn the_preflight_answer_has_every_field() {
        let c = cors(&["https://app.example.com"]);
        let r: Response<()> = c.preflight(
            HeaderValue::from_static("https://app.example.com"),
            HeaderValue::from_static("GET, HEAD, OPTIONS"),
        );
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        let h = r.headers();
        assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example.com");
        assert_eq!(h[ACCESS_CONTROL_ALLOW_METHODS], "GET, HEAD, OPTIONS");
        assert_eq!(
            h[ACCESS_CONTROL_ALLOW_HEADERS],
            "x-token, authorization, content-type"
        );
        assert_eq!(h[ACCESS_CONTROL_MAX_AGE], "600");
        assert_eq!(
            h[VARY],
            "origin, access-control-request-method, access-control-request-headers"
        );
        assert!(Cors::is_preflight(
            &Method::OPTIONS,
            &HeaderMap::from_iter([(
                ACCESS_CONTROL_REQUEST_METHOD,
                HeaderValue::from_static("GET")
            )])
        ));
        assert!(!Cors::is_preflight(&Method::OPTIONS, &HeaderMap::new()));
    }

    #[test]
    fn decorating_replaces_an_upstreams_fields_and_keeps_its_vary() {
        let mut r = Response::new(());
        r.headers_mut()
            .insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        r.headers_mut().insert(
            HeaderName::from_static("access-control-allow-credentials"),
            HeaderValue::from_static("true"),
        );
        r.headers_mut()
            .insert(VARY, HeaderValue::from_static("accept-encoding"));
        Cors::decorate(&mut r, HeaderValue::from_static("https://app.example.com"));
        let h = r.headers();
        assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example.com");
        assert!(h.get("access-control-allow-credentials").is_none());
        assert_eq!(
            h[ACCESS_CONTROL_EXPOSE_HEADERS],
            "www-authenticate, retry-after, ratelimit, ratelimit-policy, sunset"
        );
        let vary: Vec<_> = h.get_all(VARY).iter().collect();
        assert_eq!(vary, ["accept-encoding", "origin"]);
    }
}
