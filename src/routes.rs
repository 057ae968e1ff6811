//! THE route table: `(method, path)` → response.
//!
//! Routing is by path only, exact and case-sensitive, after normalising
//! percent-encoded unreserved characters (RFC 3986 §6.2.2.2). Protection is
//! declared per route in [`ROUTES`] and enforced by one guard
//! ([`KeySet::check`]), the way FastAPI's `Depends` declares it per path
//! operation. The method is checked before the credential.

use std::borrow::Cow;

use http::header::HOST;
use http::{HeaderName, HeaderValue, Method, Request, Response, Version};

use crate::auth::{KeySet, Outcome};
use crate::responses::{self, Body, Prebuilt, Responses};

/// Whether a route needs a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone.
    Public,
    /// Only requests that carry a configured key.
    Protected,
}

/// The route table: path, access, and the `message` of the 200 body.
/// Adding a protected route is one line here.
pub const ROUTES: &[(&str, Access, &str)] = &[
    ("/public", Access::Public, "Welcome to the public route!"),
    (
        "/protected",
        Access::Protected,
        "You have access to the protected route!",
    ),
];

struct Route {
    path: &'static str,
    access: Access,
    ok: Prebuilt,
    /// `location` of the 307 for the path with one trailing slash.
    redirect_to: HeaderValue,
}

/// What the guard decided for a request to a protected route; the server uses
/// it for metrics and throttling, the router for the response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthResult {
    /// The route is public; no credential was looked at.
    NotChecked,
    /// The guard ran.
    Checked(Outcome),
}

/// The application: route table, key set and prebuilt responses.
pub struct App {
    routes: Vec<Route>,
    keys: KeySet,
    token_header: HeaderName,
    responses: Responses,
}

/// Settings of the application that are not keys.
#[derive(Clone, Debug)]
pub struct AppConfig {
    /// The header that carries the token (default `x-token`).
    pub token_header: HeaderName,
    /// The realm in `WWW-Authenticate` (default `tokengate`).
    pub realm: String,
}

impl Default for AppConfig {
    fn default() -> Self {
        AppConfig {
            token_header: HeaderName::from_static("x-token"),
            realm: "tokengate".to_owned(),
        }
    }
}

impl App {
    /// Builds the application: every response is serialised here, once.
    pub fn new(keys: KeySet, config: &AppConfig) -> Result<Self, responses::InvalidRealm> {
        let routes = ROUTES
            .iter()
            .map(|&(path, access, text)| {
                let ok = responses::message(text);
                Route {
                    path,
                    access,
                    ok: match access {
                        Access::Public => ok,
                        Access::Protected => responses::protected(ok),
                    },
                    redirect_to: HeaderValue::from_static(path),
                }
            })
            .collect();
        Ok(App {
            routes,
            keys,
            token_header: config.token_header.clone(),
            responses: Responses::new(&config.realm)?,
        })
    }

    /// The configured keys.
    pub fn keys(&self) -> &KeySet {
        &self.keys
    }

    /// The prebuilt responses.
    pub fn responses(&self) -> &Responses {
        &self.responses
    }

    /// Answers a request. The body is never read: no route takes one.
    pub fn handle<B>(&self, req: &Request<B>) -> Response<Body> {
        self.route(req).0
    }

    /// Answers a request and reports what the guard decided.
    pub fn route<B>(&self, req: &Request<B>) -> (Response<Body>, AuthResult) {
        if !host_ok(req) {
            return (
                self.responses.bad_request.respond(is_head(req)),
                AuthResult::NotChecked,
            );
        }
        let head = is_head(req);
        let path = normalize(req.uri().path());
        let Some(route) = self.routes.iter().find(|r| r.path == path) else {
            return (
                self.not_found_or_redirect(req, &path, head),
                AuthResult::NotChecked,
            );
        };
        match *req.method() {
            Method::GET | Method::HEAD => {}
            Method::OPTIONS => {
                return (
                    self.responses.options.respond(false),
                    AuthResult::NotChecked,
                );
            }
            _ => {
                return (
                    self.responses.method_not_allowed.respond(head),
                    AuthResult::NotChecked,
                );
            }
        }
        match route.access {
            Access::Public => (route.ok.respond(head), AuthResult::NotChecked),
            Access::Protected => {
                let outcome = self.keys.check(req.headers(), &self.token_header);
                let response = match outcome {
                    Outcome::Valid(_) => route.ok.respond(head),
                    Outcome::Missing => self.responses.unauthorized_missing.respond(head),
                    Outcome::Invalid => self.responses.unauthorized_invalid.respond(head),
                };
                (response, AuthResult::Checked(outcome))
            }
        }
    }

    /// `/public/` → 307 `/public` (query kept); anything else → 404.
    fn not_found_or_redirect<B>(&self, req: &Request<B>, path: &str, head: bool) -> Response<Body> {
        if let Some(stripped) = path.strip_suffix('/') {
            if let Some(route) = self.routes.iter().find(|r| r.path == stripped) {
                let location = match req.uri().query() {
                    None => route.redirect_to.clone(),
                    // A query hyper accepted is URI characters only; if it is
                    // still not a valid header value, drop it rather than fail.
                    Some(q) => HeaderValue::try_from(format!("{}?{q}", route.path))
                        .unwrap_or_else(|_| route.redirect_to.clone()),
                };
                return responses::redirect(location);
            }
        }
        self.responses.not_found.respond(head)
    }
}

fn is_head<B>(req: &Request<B>) -> bool {
    req.method() == Method::HEAD
}

/// RFC 9112 §3.2: an HTTP/1.1 request has exactly one `Host`; no HTTP/1.x
/// request has two. HTTP/2 carries `:authority` instead.
fn host_ok<B>(req: &Request<B>) -> bool {
    let version = req.version();
    if version == Version::HTTP_2 || version == Version::HTTP_3 {
        return true;
    }
    let mut hosts = req.headers().get_all(HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => false,
        (None, _) => version != Version::HTTP_11,
        (Some(_), None) => true,
    }
}

/// Decodes percent-encoded *unreserved* characters (ALPHA / DIGIT / `-._~`),
/// which RFC 3986 §6.2.2.2 says are equivalent to their literal form. Every
/// other escape — `%2F` above all — stays as it is, so it never becomes a
/// path separator. Paths without `%` are borrowed unchanged.
pub fn normalize(path: &str) -> Cow<'_, str> {
    if !path.as_bytes().contains(&b'%') {
        return Cow::Borrowed(path);
    }
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex_val(bytes[i + 1]), hex_val(bytes[i + 2])) {
                let c = h * 16 + l;
                if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                    out.push(char::from(c));
                    i += 3;
                    continue;
                }
            }
        }
        // Paths from hyper are ASCII; copy any byte through unchanged.
        out.push(char::from(bytes[i]));
        i += 1;
    }
    Cow::Owned(out)
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_decodes_only_unreserved() {
        assert_eq!(normalize("/public"), "/public");
        assert_eq!(normalize("/%70ublic"), "/public");
        assert_eq!(normalize("/%70%75%62%6C%69%63"), "/public");
        assert_eq!(normalize("/pro%74ected"), "/protected");
        assert_eq!(normalize("%2Fpublic"), "%2Fpublic");
        assert_eq!(normalize("/a%2fb"), "/a%2fb");
        assert_eq!(normalize("/%7e%2D%2e%5F"), "/~-._");
        assert_eq!(normalize("/%"), "/%");
        assert_eq!(normalize("/%7"), "/%7");
        assert_eq!(normalize("/%zz%70"), "/%zzp");
        assert_eq!(normalize("/%25"), "/%25");
    }
}
