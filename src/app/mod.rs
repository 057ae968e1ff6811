//! The application: the one entry point of a request ([`App::handle`]) —
//! head limits, route match, guard, response — and around it the timing,
//! the metrics and the access log.

mod config;
mod deferred;
mod fields;
mod forward;
mod gateway;
mod grpc;
mod record;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderName, Method, Request, Response};

use crate::client::TrustedProxies;
use crate::cors::Cors;
use crate::forward_auth::{self, Original};
use crate::gateway::proxy::Gateway;
use crate::guard::Guard;
use crate::head::{self, HeadProblem};
use crate::keys::KeySet;
use crate::keys::Outcome;
use crate::lifecycle::{Lifecycle, Phase};
use crate::limits::LimitKind;
use crate::metrics::{DroppedSource, Metrics};
use crate::openapi;
use crate::responses::{self, Body, Refusals, Responses};
use crate::routes::{
    Access, Compiled, Handler, Match, ROUTES, Route, RouteIndex, Router, RouterOptions,
};
pub use config::AppConfig;
pub(crate) use deferred::Call;
use deferred::Deferred;
pub(crate) use fields::{limit_headers, sunset_header};
pub(crate) use gateway::{GatewayService, Step};
use record::{Key, Line};

/// The `route` label of requests passed on to the upstream.
pub(crate) const UPSTREAM_LABEL: &str = "upstream";

/// The `route` label of gRPC calls.
const GRPC_LABEL: &str = "grpc";

/// A request's answer, and what the metrics and the access log need of it.
#[derive(Debug)]
pub struct Answer<'a> {
    /// The response.
    pub response: Response<Body>,
    /// The route it matched (the table's length for none).
    pub route: RouteIndex,
    /// The guard's decision; `None` when no credential was checked.
    pub auth: Option<Outcome>,
    /// The client address (the peer, or what a trusted proxy says).
    pub client: IpAddr,
    /// For `/auth/verify`: the request that was authorised.
    pub original: Option<Original<'a>>,
    /// With a Redis store: the limits still to count (see `App::call`).
    pub(crate) deferred: Option<Box<Deferred>>,
}

/// The application: route table, guard and prebuilt responses.
pub struct App {
    router: Router,
    /// `/openapi.json`, built at its first request (`None`: `--openapi off`).
    openapi: Option<openapi::Lazy>,
    guard: Guard,
    responses: Responses,
    forward: forward_auth::Answers,
    forward_dialect: forward_auth::Dialect,
    trusted: TrustedProxies,
    /// Gateway mode: taken by the main listener's [`GatewayService`].
    gateway: Option<Arc<Gateway>>,
    /// `--admin-listen`: the main listener passes even tokengate's own paths on.
    admin_listener: bool,
    token_header: HeaderName,
    metrics: Metrics,
    lifecycle: Arc<Lifecycle>,
    max_header_bytes: usize,
    /// The route index that stands for "no route".
    other: RouteIndex,
    /// The route index of requests passed on upstream (gateway mode).
    upstream_route: RouteIndex,
    access_log: bool,
    /// Metrics are recorded (`--metrics on`).
    metrics_on: bool,
    /// A Redis store: answers to keys with limits wait for it (`App::call`).
    deferring: bool,
    /// gRPC is served (`--grpc on`): how long a call without a
    /// `grpc-timeout` may take.
    grpc: Option<std::time::Duration>,
    /// The route index of gRPC calls.
    grpc_route: RouteIndex,
    /// `--cors-origin`.
    cors: Option<Cors>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("router", &self.router)
            .finish_non_exhaustive()
    }
}

impl App {
    /// The application with tokengate's route table.
    pub fn new(keys: KeySet, config: &AppConfig) -> Self {
        Self::build(ROUTES, keys, config, None)
    }

    /// The application with any route `table`; `access_log_dropped` reads the
    /// access-log writer's dropped lines at scrape time. Every response is
    /// serialised here, once.
    pub fn build(
        table: &[Route],
        keys: KeySet,
        config: &AppConfig,
        access_log_dropped: Option<DroppedSource>,
    ) -> Self {
        let mut labels = Router::labels(table);
        if config.gateway.is_some() {
            // Requests passed on to the upstream (gateway mode).
            labels.push(UPSTREAM_LABEL);
        }
        let grpc_route = RouteIndex(labels.len());
        if config.grpc.is_some() {
            labels.push(GRPC_LABEL);
        }
        let mut metrics = Metrics::new(
            &labels,
            access_log_dropped,
            config.limits_store.redis.is_some(),
            config.grpc.is_some(),
        );
        let lifecycle = Arc::<Lifecycle>::default();
        metrics.watch_phase(Arc::clone(&lifecycle));
        let openapi = config.openapi.then(|| {
            openapi::Lazy::new(
                table,
                openapi::DocOptions {
                    token_header: config.token_header.as_str().to_owned(),
                    metrics_public: config.metrics_public,
                    metrics_off: !config.metrics,
                    gateway: config.gateway.is_some(),
                },
            )
        });
        App {
            router: Router::new(
                table,
                RouterOptions {
                    metrics_public: config.metrics_public,
                    metrics_off: !config.metrics,
                    openapi: config.openapi,
                    gateway: config.gateway.is_some(),
                },
            ),
            guard: Guard::new(
                keys,
                config.token_header.clone(),
                config.throttle,
                &config.limits_store,
                &metrics,
                config.expiry_notice,
            ),
            responses: Responses::new(&config.realm),
            forward: forward_auth::Answers::new(
                &config.token_header,
                config.forward_auth_throttle_status,
            ),
            forward_dialect: config.forward_auth_dialect,
            trusted: config.trusted_proxies.clone(),
            gateway: config.gateway.as_ref().map(|g| Arc::new(Gateway::new(g))),
            admin_listener: config.admin_listener,
            token_header: config.token_header.clone(),
            openapi,
            metrics,
            lifecycle,
            max_header_bytes: config.max_header_bytes,
            other: RouteIndex(table.len()),
            upstream_route: RouteIndex(table.len() + 1),
            access_log: config.access_log,
            metrics_on: config.metrics,
            deferring: config.limits_store.redis.is_some(),
            grpc: config.grpc,
            grpc_route,
            cors: config
                .cors
                .as_ref()
                .map(|c| Cors::new(c, &config.token_header)),
        }
    }

    /// Replaces the accepted keys atomically: a request in flight finishes
    /// with the set it started with.
    pub fn replace_keys(&self, keys: KeySet) {
        self.guard.replace_keys(keys, &self.metrics);
    }

    /// The labels of the keys in use.
    pub fn key_labels(&self) -> Vec<Arc<str>> {
        self.guard.labels()
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The server's phase (`/readyz` reads it; the server advances it).
    pub fn lifecycle(&self) -> Arc<Lifecycle> {
        self.lifecycle.clone()
    }

    /// Gateway mode: the gateway (its service, its upgraded connections for
    /// the drain).
    pub(crate) fn gateway(&self) -> Option<&Arc<Gateway>> {
        self.gateway.as_ref()
    }

    /// `--max-header-bytes`.
    pub fn max_header_bytes(&self) -> usize {
        self.max_header_bytes
    }

    /// Answers a request from `peer`, and records it (metrics, access log).
    /// The body is never read: no route takes one.
    #[inline]
    pub fn handle<B>(&self, req: &Request<B>, peer: IpAddr) -> Response<Body> {
        if !self.metrics_on && !self.access_log && !self.deferring {
            return self.answer(req, peer).response;
        }
        let start = Instant::now();
        let mut answer = self.answer(req, peer);
        if let Some(deferred) = answer.deferred.take() {
            // No waiting here: the per-process counters decide (services
            // that can wait use `App::call`).
            answer.auth = self.settle_locally(&mut answer.response, answer.auth, *deferred);
        }
        self.record_answer(req, peer, &answer, start);
        answer.response
    }

    /// Records an answered request (metrics, access log).
    #[inline]
    fn record_answer<B>(&self, req: &Request<B>, peer: IpAddr, answer: &Answer, start: Instant) {
        self.record(answer.route, &answer.response, start.elapsed(), || {
            Some(Line {
                peer,
                client: answer.client,
                upstream: false,
                original: answer
                    .original
                    .as_ref()
                    .map(|o| (o.method.as_str(), &*o.path)),
                method: req.method(),
                path: req.uri().path(),
                version: req.version(),
                key: Key::from(answer.auth),
                grpc: None,
            })
        });
    }

    /// Answers a request, without recording it.
    #[inline]
    pub fn answer<'r, B>(&self, req: &'r Request<B>, peer: IpAddr) -> Answer<'r> {
        let head = req.method() == Method::HEAD;
        let client = self.trusted.client(peer, req.headers());
        let answer = |response, route, auth| Answer {
            response,
            route,
            auth,
            client,
            original: None,
            deferred: None,
        };
        if let Err(problem) = head::validate(req, self.max_header_bytes) {
            let response = match problem {
                // Envoy's form of forward auth (the path after the mount):
                // the original request is unknowable, as with a header.
                HeadProblem::UnsafePath if self.is_forward_auth(req) => {
                    self.forward.unknowable.respond(head)
                }
                problem => self.rejection(problem, head),
            };
            return answer(response, self.other, None);
        }
        let route = match self.router.find(req) {
            Match::Route(route) => route,
            Match::Redirect(location) => {
                return answer(responses::redirect(location), self.other, None);
            }
            Match::NotFound => {
                return answer(self.responses.not_found.respond(head), self.other, None);
            }
        };
        let index = route.index;
        if let Some(cors) = &self.cors
            && Cors::is_preflight(req.method(), req.headers())
            && let Some(origin) = cors.allowed(req.headers())
        {
            return answer(cors.preflight(origin, route.allow.clone()), index, None);
        }
        if !route.route.answers(req.method()) {
            let response = if req.method() == Method::OPTIONS {
                route.options.respond(false)
            } else {
                route.method_not_allowed.respond(head)
            };
            return answer(response, index, None);
        }
        if route.route.handler == Handler::ForwardAuth {
            return self.forward_auth(req, route, client, head);
        }
        if route.access == Access::Public {
            return answer(self.success(route, head), index, None);
        }
        let metrics = self.metrics_on.then_some(&self.metrics);
        let decided = self.guard.decide(
            req.headers(),
            client,
            req.method(),
            route.route.path,
            metrics,
            true,
        );
        let mut response = self
            .denial(&decided.outcome, head, &self.responses.refusals)
            .unwrap_or_else(|| self.success(route, head));
        limit_headers(&mut response, decided.limit);
        sunset_header(&mut response, decided.sunset);
        let mut answer = answer(response, index, Some(decided.outcome));
        answer.deferred = decided.pending.map(|pending| {
            Box::new(Deferred {
                pending,
                head,
                forward: false,
            })
        });
        answer
    }

    /// The one turn of an [`Outcome`] into a denial: the response to a
    /// credential the guard did not accept, or to a client over a limit
    /// (`refusals`, with `retry-after`); `None` for a valid one.
    #[inline]
    fn denial(&self, outcome: &Outcome, head: bool, refusals: &Refusals) -> Option<Response<Body>> {
        Some(match *outcome {
            Outcome::Valid(_) => return None,
            Outcome::Missing => self.responses.unauthorized_missing.respond(head),
            // A canary answers byte for byte as a wrong key.
            Outcome::Invalid | Outcome::Expired(_) | Outcome::Canary(_) => {
                self.responses.unauthorized_invalid.respond(head)
            }
            Outcome::Forbidden(_) => self.responses.forbidden.respond(head),
            Outcome::Throttled(wait) => {
                responses::with_retry_after(refusals.throttled.respond(head), wait)
            }
            Outcome::Limited(_, LimitKind::Rate, wait) => {
                responses::with_retry_after(refusals.rate_limited.respond(head), wait)
            }
            Outcome::Limited(_, LimitKind::Quota, wait) => {
                responses::with_retry_after(refusals.quota_exhausted.respond(head), wait)
            }
        })
    }

    #[inline]
    fn success(&self, route: &Compiled, head: bool) -> Response<Body> {
        match route.route.handler {
            Handler::Message(_) | Handler::Health => route.ok.respond(head),
            Handler::OpenApi => match &self.openapi {
                Some(doc) => doc.response().respond(head),
                // The route is not compiled without the document.
                None => self.responses.not_found.respond(head),
            },
            Handler::Ready if self.lifecycle.phase() != Phase::Serving => {
                self.responses.draining.respond(head)
            }
            Handler::Ready => route.ok.respond(head),
            Handler::Metrics => responses::metrics(&route.ok, self.metrics.render(), head),
            // Answered by `forward_auth` before this point.
            Handler::ForwardAuth => self.responses.not_found.respond(head),
        }
    }

    /// Whether `req` is for `/auth/verify` (or a path under it).
    #[cold]
    fn is_forward_auth<B>(&self, req: &Request<B>) -> bool {
        matches!(self.router.find(req), Match::Route(r) if r.route.handler == Handler::ForwardAuth)
    }

    #[cold]
    fn rejection(&self, problem: HeadProblem, head: bool) -> Response<Body> {
        match problem {
            HeadProblem::UriTooLong => self.responses.uri_too_long.respond(head),
            HeadProblem::HeaderFieldsTooLarge => {
                self.responses.header_fields_too_large.respond(head)
            }
            HeadProblem::BadRequest | HeadProblem::UnsafePath => {
                self.responses.bad_request.respond(head)
            }
            HeadProblem::Connect => self.responses.connect_not_allowed.respond(head),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::routes::GET_HEAD;
    use http::StatusCode;
    use std::net::Ipv4Addr;

    const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    fn get(path: &str) -> Request<()> {
        Request::get(path).header("host", "t").body(()).unwrap()
    }

    /// A route added to a table gets its own metric series, and the routes
    /// after it keep theirs.
    #[test]
    fn a_new_route_gets_its_own_label_series() {
        let mut table = ROUTES.to_vec();
        table.insert(
            1,
            Route {
                path: "/reports",
                subtree: false,
                methods: GET_HEAD,
                access: Access::Public,
                handler: Handler::Message("reports"),
                label: "reports",
            },
        );
        let app = App::build(&table, KeySet::new(), &AppConfig::default(), None);
        assert_eq!(app.handle(&get("/reports"), LOCAL).status(), StatusCode::OK);
        assert_eq!(app.handle(&get("/reports"), LOCAL).status(), StatusCode::OK);
        assert_eq!(app.handle(&get("/healthz"), LOCAL).status(), StatusCode::OK);
        assert_eq!(
            app.handle(&get("/nope"), LOCAL).status(),
            StatusCode::NOT_FOUND
        );
        let text = app.metrics().render();
        for needle in [
            r#"tokengate_requests_total{route="reports",status="200"} 2"#,
            r#"tokengate_requests_total{route="healthz",status="200"} 1"#,
            r#"tokengate_requests_total{route="other",status="404"} 1"#,
            r#"tokengate_requests_total{route="public",status="200"} 0"#,
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
    }

    #[test]
    fn connect_and_authority_form_are_refused() {
        let app = App::new(KeySet::new(), &AppConfig::default());
        let connect = Request::connect("host:443")
            .header("host", "host:443")
            .body(())
            .unwrap();
        let r = app.handle(&connect, LOCAL);
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()["allow"], "GET, HEAD, OPTIONS");
        let r = app.handle(&get("public"), LOCAL);
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    }
}
