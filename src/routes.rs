//! THE route table, and its match.
//!
//! Each row of [`ROUTES`] carries everything about a route: path, methods,
//! access, handler and metric label; the router, the `allow` headers and the
//! metric families are all built from it, so adding a route is one line.
//!
//! Routing is by path only, exact and case-sensitive, after normalising
//! percent-encoded unreserved characters (RFC 3986 §6.2.2.2). Protection is
//! declared per route and enforced by one guard (`crate::guard`), the way
//! FastAPI's `Depends` declares it per path operation. The method is checked
//! before the credential.

use std::borrow::Cow;

use http::{HeaderValue, Method, Request};

use crate::responses::{self, Prebuilt};

/// Whether a route needs a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone.
    Public,
    /// Only requests that carry a configured key.
    Protected,
}

/// What a route answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handler {
    /// `{"message": …}`, the FastAPI contract.
    Message(&'static str),
    /// Liveness: `{"status":"ok"}` while the process serves.
    Health,
    /// Readiness: `{"status":"ready"}`, or 503 `{"status":"draining"}` once
    /// shutdown has begun.
    Ready,
    /// The Prometheus exposition (`--metrics-public` makes it public;
    /// `--metrics off` removes it).
    Metrics,
    /// Forward auth: decides on the original request a proxy describes in
    /// its headers (`crate::forward_auth`).
    ForwardAuth,
    /// The OpenAPI document (`--openapi off` removes it).
    OpenApi,
}

/// One row of the route table.
#[derive(Clone, Copy, Debug)]
pub struct Route {
    /// The exact path.
    pub path: &'static str,
    /// Whether every path under `path/` is this route too.
    pub subtree: bool,
    /// The methods it answers (`OPTIONS` is always answered too); empty:
    /// every method, `OPTIONS` included, goes to the handler.
    pub methods: &'static [Method],
    /// Whether it needs a key.
    pub access: Access,
    /// What it answers.
    pub handler: Handler,
    /// Its `route` label in the metrics.
    pub label: &'static str,
}

/// `GET` and `HEAD`, what every route of tokengate answers.
pub(crate) const GET_HEAD: &[Method] = &[Method::GET, Method::HEAD];
/// Every method.
pub(crate) const ANY_METHOD: &[Method] = &[];

impl Route {
    /// Whether `path` (normalised) is this route.
    #[inline]
    pub fn matches(&self, path: &str) -> bool {
        match path.strip_prefix(self.path) {
            Some("") => true,
            Some(rest) => self.subtree && rest.starts_with('/'),
            None => false,
        }
    }

    /// Whether the route answers `method` itself (else 405, or 204 to `OPTIONS`).
    #[inline]
    pub fn answers(&self, method: &Method) -> bool {
        self.methods.is_empty() || self.methods.contains(method)
    }
}

/// The route table.
pub const ROUTES: &[Route] = &[
    Route {
        path: "/public",
        subtree: false,
        methods: GET_HEAD,
        access: Access::Public,
        handler: Handler::Message("Welcome to the public route!"),
        label: "public",
    },
    Route {
        path: "/protected",
        subtree: false,
        methods: GET_HEAD,
        access: Access::Protected,
        handler: Handler::Message("You have access to the protected route!"),
        label: "protected",
    },
    Route {
        path: "/healthz",
        subtree: false,
        methods: GET_HEAD,
        access: Access::Public,
        handler: Handler::Health,
        label: "healthz",
    },
    Route {
        path: "/readyz",
        subtree: false,
        methods: GET_HEAD,
        access: Access::Public,
        handler: Handler::Ready,
        label: "readyz",
    },
    Route {
        path: "/metrics",
        subtree: false,
        methods: GET_HEAD,
        access: Access::Protected,
        handler: Handler::Metrics,
        label: "metrics",
    },
    Route {
        path: "/auth/verify",
        subtree: true,
        methods: ANY_METHOD,
        // The handler asks the guard about the original request.
        access: Access::Public,
        handler: Handler::ForwardAuth,
        label: "auth_verify",
    },
    Route {
        path: "/openapi.json",
        subtree: false,
        methods: GET_HEAD,
        access: Access::Public,
        handler: Handler::OpenApi,
        label: "openapi",
    },
];

/// The metric label of requests that matched no route (404s, redirects,
/// requests rejected before routing).
pub(crate) const OTHER_LABEL: &str = "other";

/// A route's position in its table; the table's length stands for "other".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteIndex(pub usize);

/// A route as served: its row and the responses prepared for it.
#[derive(Debug)]
pub(crate) struct Compiled {
    /// The row of the table.
    pub route: Route,
    /// Its position in the table it was compiled from (its metric series).
    pub index: RouteIndex,
    /// Its access after configuration (`--metrics-public`).
    pub access: Access,
    /// The prebuilt success (200 for messages, health and readiness).
    pub ok: Prebuilt,
    /// 204 to `OPTIONS`, with `allow`.
    pub options: Prebuilt,
    /// `allow`'s value (a CORS preflight's allowed methods).
    pub(crate) allow: HeaderValue,
    /// 405 to other methods, with `allow`.
    pub method_not_allowed: Prebuilt,
    /// `location` of the 307 for the path with one trailing slash.
    redirect_to: HeaderValue,
}

/// What a request's path matched.
#[derive(Debug)]
pub(crate) enum Match<'a> {
    /// A route.
    Route(&'a Compiled),
    /// The path of a route plus one `/`: redirect there (query kept).
    Redirect(HeaderValue),
    /// Nothing.
    NotFound,
}

/// Route options that come from the configuration.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RouterOptions {
    /// `--metrics-public`.
    pub metrics_public: bool,
    /// `--metrics off` removes `/metrics`.
    pub metrics_off: bool,
    /// Serve `/openapi.json` (`--openapi off` removes it). The document itself
    /// is built at its first request (`openapi::Lazy`, held by the app).
    pub openapi: bool,
    /// Gateway mode: the upstream owns the path space, so the contract routes
    /// (`/public`, `/protected`) are not served by tokengate.
    pub gateway: bool,
}

/// The compiled route table.
#[derive(Debug)]
pub(crate) struct Router {
    routes: Vec<Compiled>,
}

impl Router {
    /// Compiles `table`; every response is serialised here, once.
    pub(crate) fn new(table: &[Route], options: RouterOptions) -> Self {
        let routes = table
            .iter()
            .enumerate()
            .filter(|(_, r)| match r.handler {
                Handler::Metrics => !options.metrics_off,
                Handler::OpenApi => options.openapi,
                Handler::Message(_) => !options.gateway,
                _ => true,
            })
            .map(|(index, &route)| {
                let access = match route.handler {
                    Handler::Metrics if options.metrics_public => Access::Public,
                    _ => route.access,
                };
                let ok = match route.handler {
                    Handler::Message(text) => responses::message(text),
                    Handler::Health => responses::status(http::StatusCode::OK, "ok"),
                    Handler::Ready => responses::status(http::StatusCode::OK, "ready"),
                    // Answered by the app from what it holds (the metrics
                    // registry, the forward-auth answers, the lazy document).
                    Handler::Metrics | Handler::ForwardAuth | Handler::OpenApi => {
                        Prebuilt::empty(http::StatusCode::OK)
                    }
                };
                let allow = allow(route.methods);
                Compiled {
                    route,
                    index: RouteIndex(index),
                    access,
                    ok: match access {
                        Access::Public => ok,
                        Access::Protected => responses::protected(ok),
                    },
                    options: responses::options(allow.clone()),
                    allow: allow.clone(),
                    method_not_allowed: responses::method_not_allowed(allow),
                    redirect_to: HeaderValue::from_static(route.path),
                }
            })
            .collect();
        Router { routes }
    }

    /// The metric labels, in [`RouteIndex`] order, `other` last.
    pub(crate) fn labels(table: &[Route]) -> Vec<&'static str> {
        table.iter().map(|r| r.label).chain([OTHER_LABEL]).collect()
    }

    /// Matches a request's path.
    #[inline(always)]
    pub(crate) fn find<B>(&self, req: &Request<B>) -> Match<'_> {
        let path = normalize(req.uri().path());
        if let Some(route) = self.routes.iter().find(|r| r.route.matches(&path)) {
            return Match::Route(route);
        }
        if let Some(stripped) = path.strip_suffix('/')
            && let Some(route) = self.routes.iter().find(|r| r.route.path == stripped)
        {
            let location = match req.uri().query() {
                None => route.redirect_to.clone(),
                // A query hyper accepted is URI characters only; if it is
                // still not a valid header value, drop it rather than fail.
                Some(q) => HeaderValue::try_from(format!("{}?{q}", route.route.path))
                    .unwrap_or_else(|_| route.redirect_to.clone()),
            };
            return Match::Redirect(location);
        }
        Match::NotFound
    }
}

/// `GET, HEAD, OPTIONS` for a route that answers GET and HEAD.
fn allow(methods: &[Method]) -> HeaderValue {
    let mut names: Vec<&str> = methods.iter().map(Method::as_str).collect();
    if !methods.contains(&Method::OPTIONS) {
        names.push("OPTIONS");
    }
    HeaderValue::try_from(names.join(", ")).expect("method names are valid header text")
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
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex_val(bytes[i + 1]), hex_val(bytes[i + 2]))
        {
            let c = h * 16 + l;
            if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                out.push(char::from(c));
                i += 3;
                continue;
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
