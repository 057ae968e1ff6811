//! Limits and rules on the request head, checked before routing: target
//! length (414), header count and bytes (431), `Host` (400), and the
//! request-target forms of RFC 9112 §3.2 (400; `CONNECT` is answered 405).

use http::header::HOST;
use http::{Method, Request, Version};

/// Most header fields a request may carry (431 past it).
pub(crate) const MAX_HEADER_FIELDS: usize = 100;
/// Longest request target, in bytes (414 past it).
pub(crate) const MAX_TARGET_BYTES: usize = 8 * 1024;
/// Default for `--max-header-bytes`.
pub(crate) const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;

/// What is wrong with a request head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HeadProblem {
    /// The target is longer than [`MAX_TARGET_BYTES`]: 414.
    UriTooLong,
    /// Too many header fields, or too many bytes of them: 431.
    HeaderFieldsTooLarge,
    /// Missing or repeated `Host`, a `Host` that is not the target's or
    /// `:authority`'s authority, or a target in a form the method does not
    /// allow (`GET public`, `GET *`): 400.
    BadRequest,
    /// A path `crate::path` refuses (a dot segment, an escaped separator,
    /// …): 400, or the forward-auth refusal under `/auth/verify/`.
    UnsafePath,
    /// `CONNECT`: no route tunnels, so 405.
    Connect,
}

/// Checks the head of `req` against `max_header_bytes` (`--max-header-bytes`).
#[inline(always)]
pub(crate) fn validate<B>(req: &Request<B>, max_header_bytes: usize) -> Result<(), HeadProblem> {
    let uri = req.uri();
    if target_len(uri) > MAX_TARGET_BYTES {
        return Err(HeadProblem::UriTooLong);
    }
    let headers = req.headers();
    if headers.len() > MAX_HEADER_FIELDS {
        return Err(HeadProblem::HeaderFieldsTooLarge);
    }
    // One pass: total header bytes, and the `Host` fields (HTTP/1 only).
    let mut bytes = 0usize;
    let mut hosts = 0usize;
    let mut host = None;
    for (name, value) in headers {
        bytes += name.as_str().len() + value.len() + 4;
        if name == HOST {
            hosts += 1;
            host = Some(value);
        }
    }
    if bytes > max_header_bytes {
        return Err(HeadProblem::HeaderFieldsTooLarge);
    }
    if !host_ok(req.version(), hosts) {
        return Err(HeadProblem::BadRequest);
    }
    if req.method() == Method::CONNECT {
        return Err(HeadProblem::Connect);
    }
    // HTTP/2's `:authority` or an absolute-form target's authority is the
    // request's host (RFC 9113 §8.3.1, RFC 9112 §3.2.2); a `Host` beside it
    // that names another would let the upstream route by what was not
    // checked.
    if let (Some(authority), Some(host)) = (uri.authority(), host)
        && !authority
            .as_str()
            .as_bytes()
            .eq_ignore_ascii_case(host.as_bytes())
    {
        return Err(HeadProblem::BadRequest);
    }
    // Origin-form (`/path`) or absolute-form (`http://host/path`) only:
    // authority-form (`public`) belongs to CONNECT, asterisk-form to OPTIONS.
    let path = uri.path();
    let origin_or_absolute = path.starts_with('/') || (uri.scheme().is_some() && path.is_empty());
    let asterisk = path == "*" && req.method() == Method::OPTIONS;
    if !(origin_or_absolute || asterisk) {
        return Err(HeadProblem::BadRequest);
    }
    // Dot segments, escaped separators and the rest of `crate::path`'s list.
    if !asterisk && !crate::path::is_safe(path) {
        return Err(HeadProblem::UnsafePath);
    }
    Ok(())
}

fn target_len(uri: &http::Uri) -> usize {
    let path_and_query = uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    match (uri.scheme_str(), uri.authority()) {
        (Some(scheme), Some(authority)) => {
            scheme.len() + 3 + authority.as_str().len() + path_and_query
        }
        (None, Some(authority)) => authority.as_str().len(),
        _ => path_and_query,
    }
}

/// RFC 9112 §3.2: an HTTP/1.1 request has exactly one `Host`; no request
/// has two (HTTP/2 carries `:authority`, and at most one `host` beside it,
/// which must agree: checked with the authority).
fn host_ok(version: Version, hosts: usize) -> bool {
    match version {
        Version::HTTP_11 => hosts == 1,
        _ => hosts <= 1,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn req(method: Method, target: &str) -> Request<()> {
        Request::builder()
            .method(method)
            .uri(target)
            .header(HOST, "t")
            .body(())
            .unwrap()
    }

    #[test]
    fn request_target_forms() {
        let ok = |m: Method, t: &str| validate(&req(m, t), DEFAULT_MAX_HEADER_BYTES);
        assert_eq!(ok(Method::GET, "/public"), Ok(()));
        assert_eq!(ok(Method::GET, "http://t/public"), Ok(()));
        assert_eq!(ok(Method::GET, "http://t"), Ok(()));
        assert_eq!(ok(Method::OPTIONS, "*"), Ok(()));
        assert_eq!(ok(Method::GET, "public"), Err(HeadProblem::BadRequest));
        assert_eq!(ok(Method::GET, "*"), Err(HeadProblem::BadRequest));
        assert_eq!(ok(Method::CONNECT, "host:443"), Err(HeadProblem::Connect));
    }

    #[test]
    fn host_must_be_the_authority() {
        let ok = |target: &str, host: &str| {
            let r = Request::get(target).header(HOST, host).body(()).unwrap();
            validate(&r, DEFAULT_MAX_HEADER_BYTES)
        };
        assert_eq!(ok("http://api.example/x", "API.example"), Ok(()));
        assert_eq!(
            ok("http://api.example/x", "evil.example"),
            Err(HeadProblem::BadRequest)
        );
        assert_eq!(
            ok("http://api.example:8080/x", "api.example"),
            Err(HeadProblem::BadRequest)
        );
        let mut h2 = Request::get("https://api.example/x")
            .header(HOST, "evil")
            .body(())
            .unwrap();
        *h2.version_mut() = Version::HTTP_2;
        assert_eq!(
            validate(&h2, DEFAULT_MAX_HEADER_BYTES),
            Err(HeadProblem::BadRequest)
        );
        // Two `host` fields, one of them the authority's.
        let mut two = Request::get("https://api.example/x")
            .header(HOST, "api.example")
            .header(HOST, "evil")
            .body(())
            .unwrap();
        *two.version_mut() = Version::HTTP_2;
        assert_eq!(
            validate(&two, DEFAULT_MAX_HEADER_BYTES),
            Err(HeadProblem::BadRequest)
        );
    }

    #[test]
    fn sizes() {
        let long = format!("/{}", "a".repeat(MAX_TARGET_BYTES));
        assert_eq!(
            validate(&req(Method::GET, &long), DEFAULT_MAX_HEADER_BYTES),
            Err(HeadProblem::UriTooLong)
        );
        let mut r = req(Method::GET, "/public");
        r.headers_mut()
            .insert("x-big", "v".repeat(2000).parse().unwrap());
        assert_eq!(validate(&r, 1024), Err(HeadProblem::HeaderFieldsTooLarge));
        assert_eq!(validate(&r, 4096), Ok(()));
    }
}
