//! THE route table: `(method, path)` → response.
//!
//! Routing is by path only, exact and case-sensitive, after normalising
//! percent-encoded unreserved characters (RFC 3986 §6.2.2.2). Protection is
//! declared per route in [`ROUTES`] and enforced by one guard
//! ([`KeySet::check`]), the way FastAPI's `Depends` declares it per path
//! operation. The method is checked before the credential.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::Full;
use prometheus_client::metrics::counter::Counter;

use crate::auth::{KeyId, KeySet, Outcome};
use crate::metrics::{AuthMetric, Metrics, OTHER_ROUTE};
use crate::responses::{self, Body, Prebuilt, Responses};
use crate::throttle::{Throttle, ThrottleConfig};

/// Most header fields a request may carry (431 past it).
pub const MAX_HEADER_FIELDS: usize = 100;
/// Longest request target, in bytes (414 past it).
pub const MAX_TARGET_BYTES: usize = 8 * 1024;
/// Default for `--max-header-bytes`.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;

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
    /// The Prometheus exposition.
    Metrics,
}

/// The route table: path, access, handler. Adding a protected route is one
/// line here. (`--metrics-public` makes `/metrics` public.)
pub const ROUTES: &[(&str, Access, Handler)] = &[
    (
        "/public",
        Access::Public,
        Handler::Message("Welcome to the public route!"),
    ),
    (
        "/protected",
        Access::Protected,
        Handler::Message("You have access to the protected route!"),
    ),
    ("/healthz", Access::Public, Handler::Health),
    ("/readyz", Access::Public, Handler::Ready),
    ("/metrics", Access::Protected, Handler::Metrics),
];

const OPENMETRICS: HeaderValue =
    HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8");
const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");

struct Route {
    path: &'static str,
    access: Access,
    handler: Handler,
    /// The prebuilt answer (200 for messages, health and readiness).
    ok: Prebuilt,
    /// `location` of the 307 for the path with one trailing slash.
    redirect_to: HeaderValue,
}

/// What the guard decided for a request.
enum Decision {
    /// Let it through.
    Allow(AuthResult),
    /// Answer with this rejection.
    Deny(Response<Body>, AuthResult),
}

/// The accepted keys and, aligned with them, their `ok` metric counters:
/// swapped together, atomically, on reload.
struct Live {
    keys: KeySet,
    ok: Vec<Counter>,
}

/// What the guard decided, for metrics and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthResult {
    /// No credential was looked at (public route, or rejected before the guard).
    NotChecked,
    /// A configured key was presented.
    Valid(KeyId),
    /// No credential.
    Missing,
    /// A wrong (or ambiguous) credential.
    Invalid,
    /// The client is over its failed-credential limit: 429.
    Throttled,
}

/// The application: route table, key set and prebuilt responses.
pub struct App {
    routes: Vec<Route>,
    live: ArcSwap<Live>,
    token_header: HeaderName,
    responses: Responses,
    max_header_bytes: usize,
    throttle: Option<Throttle>,
    metrics: Metrics,
    draining: AtomicBool,
    access_log: bool,
    record: bool,
    ready_draining: Prebuilt,
}

/// Settings of the application that are not keys.
#[derive(Clone, Debug)]
pub struct AppConfig {
    /// The header that carries the token (default `x-token`).
    pub token_header: HeaderName,
    /// The realm in `WWW-Authenticate` (default `tokengate`).
    pub realm: String,
    /// Most bytes of header fields (name + value + 4 each) in a request (431 past it).
    pub max_header_bytes: usize,
    /// The failed-credential limit; `None` disables throttling.
    pub throttle: Option<ThrottleConfig>,
    /// Serve `/metrics` without a key.
    pub metrics_public: bool,
    /// Emit one `tokengate::access` event per request.
    pub access_log: bool,
    /// Record metrics and serve `/metrics` (`--metrics off` turns both off).
    pub metrics: bool,
}

impl Default for AppConfig {
    fn default() -> Self {
        AppConfig {
            token_header: HeaderName::from_static("x-token"),
            realm: "tokengate".to_owned(),
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            throttle: Some(ThrottleConfig::default()),
            metrics_public: false,
            access_log: false,
            metrics: true,
        }
    }
}

fn status_body(status: StatusCode, text: &str) -> Prebuilt {
    Prebuilt::json(status, &serde_json::json!({ "status": text })).header(CACHE_CONTROL, NO_STORE)
}

impl App {
    /// Builds the application: every response is serialised here, once.
    pub fn new(keys: KeySet, config: &AppConfig) -> Result<Self, responses::InvalidRealm> {
        let routes = ROUTES
            .iter()
            .map(|&(path, access, handler)| {
                let access = match handler {
                    Handler::Metrics if config.metrics_public => Access::Public,
                    _ => access,
                };
                let ok = match handler {
                    Handler::Message(text) => responses::message(text),
                    Handler::Health => status_body(StatusCode::OK, "ok"),
                    Handler::Ready => status_body(StatusCode::OK, "ready"),
                    Handler::Metrics => Prebuilt::empty(StatusCode::OK),
                };
                Route {
                    path,
                    access,
                    handler,
                    ok: match access {
                        Access::Public => ok,
                        Access::Protected => responses::protected(ok),
                    },
                    redirect_to: HeaderValue::from_static(path),
                }
            })
            .collect();
        let metrics = Metrics::new();
        let ok = metrics.key_counters(&keys);
        Ok(App {
            routes,
            live: ArcSwap::from_pointee(Live { keys, ok }),
            token_header: config.token_header.clone(),
            responses: Responses::new(&config.realm)?,
            max_header_bytes: config.max_header_bytes,
            throttle: config.throttle.map(Throttle::new),
            metrics,
            draining: AtomicBool::new(false),
            access_log: config.access_log,
            record: config.metrics,
            ready_draining: status_body(StatusCode::SERVICE_UNAVAILABLE, "draining"),
        })
    }

    /// Replaces the accepted keys atomically: a request in flight finishes
    /// with the set it started with.
    pub fn replace_keys(&self, keys: KeySet) {
        let ok = self.metrics.key_counters(&keys);
        self.live.store(Arc::new(Live { keys, ok }));
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Shutdown has begun: `/readyz` answers 503 from now on.
    pub fn begin_draining(&self) {
        self.draining.store(true, Relaxed);
    }

    /// Answers a request from `peer`, and records it (metrics, access log).
    /// The body is never read: no route takes one.
    #[inline]
    pub fn handle<B>(&self, req: &Request<B>, peer: IpAddr) -> Response<Body> {
        if !self.record && !self.access_log {
            return self.route(req, peer).0;
        }
        let start = Instant::now();
        let (response, auth, route) = self.route(req, peer);
        let elapsed = start.elapsed();
        if self.record {
            self.metrics.record(route, response.status(), elapsed);
        }
        if self.access_log {
            self.log_access(req, peer, &response, auth, elapsed);
        }
        response
    }

    /// Answers a request; reports what the guard decided and the route's
    /// metric index.
    #[inline]
    pub fn route<B>(&self, req: &Request<B>, peer: IpAddr) -> (Response<Body>, AuthResult, usize) {
        let head = is_head(req);
        if let Some(rejection) = self.check_head(req) {
            return (rejection.respond(head), AuthResult::NotChecked, OTHER_ROUTE);
        }
        let path = normalize(req.uri().path());
        let found = self.routes.iter().position(|r| r.path == path);
        let found = found.filter(|&i| self.record || self.routes[i].handler != Handler::Metrics);
        let Some(index) = found else {
            return (
                self.not_found_or_redirect(req, &path, head),
                AuthResult::NotChecked,
                OTHER_ROUTE,
            );
        };
        let route = &self.routes[index];
        match *req.method() {
            Method::GET | Method::HEAD => {}
            Method::OPTIONS => {
                return (
                    self.responses.options.respond(false),
                    AuthResult::NotChecked,
                    index,
                );
            }
            _ => {
                return (
                    self.responses.method_not_allowed.respond(head),
                    AuthResult::NotChecked,
                    index,
                );
            }
        }
        let auth = match route.access {
            Access::Public => AuthResult::NotChecked,
            Access::Protected => match self.guard(req, peer, head) {
                Decision::Allow(auth) => auth,
                Decision::Deny(response, auth) => return (response, auth, index),
            },
        };
        (self.answer(route, head), auth, index)
    }

    #[inline]
    fn answer(&self, route: &Route, head: bool) -> Response<Body> {
        match route.handler {
            Handler::Message(_) | Handler::Health => route.ok.respond(head),
            Handler::Ready if self.draining.load(Relaxed) => self.ready_draining.respond(head),
            Handler::Ready => route.ok.respond(head),
            Handler::Metrics => {
                let text = self.metrics.render();
                let length = HeaderValue::from(text.len());
                let mut response = route.ok.respond(head);
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
        }
    }

    /// The one guard of protected routes: throttling, then the key check.
    fn guard<B>(&self, req: &Request<B>, peer: IpAddr, head: bool) -> Decision {
        if let Some(wait) = self.throttle.as_ref().and_then(|t| t.blocked(peer)) {
            self.record_auth(AuthMetric::Throttled, &[]);
            return Decision::Deny(self.too_many(wait, head), AuthResult::Throttled);
        }
        let live = self.live.load();
        let outcome = live.keys.check(req.headers(), &self.token_header);
        let (failed, result, metric) = match outcome {
            Outcome::Valid(id) => {
                self.metrics
                    .record_auth(AuthMetric::Ok(id.index()), &live.ok);
                return Decision::Allow(AuthResult::Valid(id));
            }
            Outcome::Missing => (
                &self.responses.unauthorized_missing,
                AuthResult::Missing,
                AuthMetric::Missing,
            ),
            Outcome::Invalid => (
                &self.responses.unauthorized_invalid,
                AuthResult::Invalid,
                AuthMetric::Invalid,
            ),
        };
        if let Some(wait) = self.throttle.as_ref().and_then(|t| t.record_failure(peer)) {
            self.record_auth(AuthMetric::Throttled, &[]);
            return Decision::Deny(self.too_many(wait, head), AuthResult::Throttled);
        }
        self.record_auth(metric, &live.ok);
        Decision::Deny(failed.respond(head), result)
    }

    #[inline]
    fn record_auth(&self, outcome: AuthMetric, ok: &[Counter]) {
        if self.record {
            self.metrics.record_auth(outcome, ok);
        }
    }

    fn too_many(&self, wait: std::time::Duration, head: bool) -> Response<Body> {
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        responses::with_retry_after(self.responses.too_many_requests.respond(head), seconds)
    }

    /// One access-log event: never a header value, a token or a query string.
    #[cold]
    fn log_access<B>(
        &self,
        req: &Request<B>,
        peer: IpAddr,
        response: &Response<Body>,
        auth: AuthResult,
        elapsed: std::time::Duration,
    ) {
        let live;
        let key = match auth {
            AuthResult::Valid(id) => {
                live = self.live.load();
                live.keys.get(id).map_or("-", |k| k.label())
            }
            _ => "-",
        };
        let bytes = http_body::Body::size_hint(response.body())
            .exact()
            .unwrap_or(0);
        tracing::info!(
            target: "tokengate::access",
            peer = %peer,
            method = %req.method(),
            path = %req.uri().path(),
            protocol = ?req.version(),
            status = response.status().as_u16(),
            bytes,
            duration_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            key = %key,
        );
    }

    /// Limits on the request head, and the `Host` rules; `None` when fine.
    #[inline]
    fn check_head<B>(&self, req: &Request<B>) -> Option<&Prebuilt> {
        if target_len(req.uri()) > MAX_TARGET_BYTES {
            return Some(&self.responses.uri_too_long);
        }
        let headers = req.headers();
        if headers.len() > MAX_HEADER_FIELDS {
            return Some(&self.responses.header_fields_too_large);
        }
        // One pass: total header bytes, and the `Host` fields (HTTP/1 only).
        let mut bytes = 0usize;
        let mut hosts = 0usize;
        for (name, value) in headers {
            bytes += name.as_str().len() + value.len() + 4;
            hosts += usize::from(name == HOST);
        }
        if bytes > self.max_header_bytes {
            return Some(&self.responses.header_fields_too_large);
        }
        if !host_ok(req.version(), hosts) {
            return Some(&self.responses.bad_request);
        }
        None
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

fn target_len(uri: &http::Uri) -> usize {
    let path_and_query = uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    match (uri.scheme_str(), uri.authority()) {
        (Some(scheme), Some(authority)) => {
            scheme.len() + 3 + authority.as_str().len() + path_and_query
        }
        _ => path_and_query,
    }
}

fn is_head<B>(req: &Request<B>) -> bool {
    req.method() == Method::HEAD
}

/// RFC 9112 §3.2: an HTTP/1.1 request has exactly one `Host`; no HTTP/1.x
/// request has two. HTTP/2 carries `:authority` instead.
fn host_ok(version: Version, hosts: usize) -> bool {
    match version {
        Version::HTTP_2 | Version::HTTP_3 => true,
        Version::HTTP_11 => hosts == 1,
        _ => hosts <= 1,
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
