//! The service of a gateway listener ([`GatewayService`]): tokengate answers
//! its own routes, head problems and denials, and passes everything else on
//! to the upstream through the [`Gateway`] it owns.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{HeaderValue, Method, Request, Response, Version};
use http_body_util::Either;
use hyper::body::Incoming;

use super::record::{Key, Line};
use super::{App, Call};
use crate::gateway::headers::Peer;
use crate::gateway::proxy::{Forward, Gateway, ServiceBody};
use crate::gateway::sending::{Answered, Sending};
use crate::guard::Pending;
use crate::head;
use crate::keys::Outcome;
use crate::limits::{Checked, Stored};
use crate::responses;
use crate::responses::Body;
use crate::routes::Match;

/// What happens to a request in gateway mode.
pub(crate) enum Step {
    /// tokengate answers it (an admin route, a head problem, a denial).
    Respond(Response<Body>),
    /// It goes to the upstream.
    Forward(Forward),
    /// tokengate answers it once the limits store counted the key (one of
    /// tokengate's own routes).
    Later(Pin<Box<dyn Future<Output = Response<Body>> + Send>>),
    /// It goes to the upstream if the limits store admits it.
    Ask(Box<Ask>),
}

/// A proxied request whose key the limits store must count first.
pub(crate) struct Ask {
    pending: Pending,
    forward: Forward,
    /// The key's decision before the store's.
    outcome: Outcome,
    head: bool,
}

/// The application and the gateway of a listener that passes requests on.
pub(crate) struct GatewayService {
    app: Arc<App>,
    gateway: Arc<Gateway>,
}

impl GatewayService {
    pub(crate) fn new(app: Arc<App>, gateway: Arc<Gateway>) -> Self {
        GatewayService { app, gateway }
    }

    pub(crate) fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// Answer here (admin routes, head problems, denials — which never reach
    /// the upstream) or pass on.
    pub(crate) fn step<B>(&self, req: &Request<B>, peer: &Peer, tls: bool) -> Step {
        let app = &*self.app;
        if head::validate(req, app.max_header_bytes).is_err()
            || (!app.admin_listener && matches!(app.router.find(req), Match::Route(_)))
        {
            return match self.app.call(req, peer.ip) {
                Call::Ready(response) => Step::Respond(response),
                Call::Pending(later) => Step::Later(later),
            };
        }
        let start = Instant::now();
        let head = req.method() == Method::HEAD;
        let client = app.trusted.client(peer.ip, req.headers());
        let line = |key| Line {
            peer: peer.ip,
            client,
            upstream: false,
            original: None,
            method: req.method(),
            path: req.uri().path(),
            version: req.version(),
            key,
            grpc: None,
        };
        if !self.gateway.host_allowed(req) {
            let response = app.responses.bad_request.respond(head);
            app.record(app.other, &response, start.elapsed(), || {
                Some(line(Key::None))
            });
            return Step::Respond(response);
        }
        let path = crate::routes::normalize(req.uri().path());
        let forward = |key_label| Forward {
            peer: peer.ip,
            client,
            peer_trusted: app.trusted.contains(peer.ip),
            proto: if tls { "https" } else { "http" },
            key_label,
            start,
            limit: None,
            sunset: None,
        };
        if self.gateway.is_public(req.method(), &path) {
            return Step::Forward(forward(None));
        }
        let metrics = app.metrics_on.then_some(&app.metrics);
        let mut decided =
            app.guard
                .decide(req.headers(), client, req.method(), &path, metrics, true);
        if let Some(pending) = decided.pending.take() {
            // A Redis store counts the key before the request goes on.
            let mut forward = forward(decided.key().map(|k| k.label_value().clone()));
            forward.sunset = decided.sunset.take();
            return Step::Ask(Box::new(Ask {
                pending,
                forward,
                outcome: decided.outcome,
                head,
            }));
        }
        match app.denial(&decided.outcome, head, &app.responses.refusals) {
            Some(response) => {
                // A denial names no valid key.
                app.record(app.other, &response, start.elapsed(), || {
                    Some(line(Key::None))
                });
                Step::Respond(response)
            }
            None => {
                let mut forward = forward(decided.key().map(|k| k.label_value().clone()));
                forward.limit = decided.limit.map(Box::new);
                forward.sunset = decided.sunset;
                Step::Forward(forward)
            }
        }
    }

    /// A proxied request once the limits store answered: passed on if
    /// admitted, else tokengate's refusal (recorded like a denial).
    pub(crate) async fn after_store(
        self: Arc<Self>,
        req: Request<Incoming>,
        ask: Ask,
        peer: Peer,
    ) -> Response<ServiceBody> {
        let Ask {
            pending,
            mut forward,
            outcome,
            head,
        } = ask;
        let stored = pending.ask().await;
        let app = &*self.app;
        let metrics = app.metrics_on.then_some(&app.metrics);
        let response = match stored {
            Stored::Unavailable => {
                app.guard.settle(outcome, None, metrics);
                Some(responses::with_retry_after(
                    app.responses.unavailable.respond(head),
                    std::time::Duration::from_secs(1),
                ))
            }
            Stored::Checked(checked) => {
                let outcome = app.guard.settle(outcome, Some(&checked), metrics);
                match app.denial(&outcome, head, &app.responses.refusals) {
                    Some(mut denied) => {
                        super::limit_headers(&mut denied, Some(checked));
                        Some(denied)
                    }
                    None => {
                        forward.limit = Some(Box::new(checked));
                        None
                    }
                }
            }
        };
        match response {
            Some(response) => {
                app.record(app.other, &response, forward.start.elapsed(), || {
                    Some(Line::own(peer.ip, forward.client, &req))
                });
                response.map(Either::Left)
            }
            None => self.forward(req, forward, &peer).await,
        }
    }

    /// Rewrites `req` for the upstream and hands it to the client,
    /// synchronously in the service call; the returned future waits for the
    /// upstream's response head.
    pub(crate) fn forward(
        self: &Arc<Self>,
        req: Request<Incoming>,
        mut forward: Forward,
        peer: &Peer,
    ) -> Forwarding {
        let start = forward.start;
        let limit = forward.limit.take();
        let sunset = forward.sunset.take().map(Box::new);
        // Only with the access log: what its line needs once `req` is gone.
        let logged = self.app.access_log.then(|| {
            Box::new(Logged {
                method: req.method().clone(),
                path: req.uri().path().to_owned(),
                version: req.version(),
                peer: forward.peer,
                client: forward.client,
                label: forward.key_label.clone(),
            })
        });
        let prepared = self
            .gateway
            .prepare(req, &forward, peer, &self.app.token_header);
        Forwarding {
            sending: self.gateway.send(prepared),
            done: Some(Done {
                service: Arc::clone(self),
                start,
                logged,
                limit,
                sunset,
            }),
        }
    }

    /// A proxied request's response for the client, recorded.
    fn forwarded(
        &self,
        answered: Answered,
        start: Instant,
        logged: Option<Box<Logged>>,
    ) -> Response<ServiceBody> {
        let app = &*self.app;
        let metrics = app.metrics_on.then_some(&app.metrics);
        let now = Instant::now();
        let response = self.gateway.finish(answered, &app.responses, metrics, now);
        let elapsed = now.saturating_duration_since(start);
        app.record(app.upstream_route, &response, elapsed, || {
            logged.as_deref().map(Logged::line)
        });
        response
    }
}

pin_project_lite::pin_project! {
    /// A proxied request, from the service call until the upstream's
    /// response head: what hyper holds (and moves) for it.
    pub(crate) struct Forwarding {
        #[pin]
        sending: Sending,
        done: Option<Done>,
    }
}

impl Future for Forwarding {
    type Output = Response<ServiceBody>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let answered = std::task::ready!(this.sending.poll(cx));
        match this.done.take() {
            Some(Done {
                service,
                start,
                logged,
                limit,
                sunset,
            }) => {
                let mut response = service.forwarded(answered, start, logged);
                // Set after the upstream's own, which they replace.
                super::limit_headers(&mut response, limit.map(|l| *l));
                super::sunset_header(&mut response, sunset.map(|s| *s));
                Poll::Ready(response)
            }
            // Futures are not polled again once they returned `Ready`.
            None => Poll::Pending,
        }
    }
}

/// What a proxied request needs after the upstream answered.
struct Done {
    service: Arc<GatewayService>,
    /// When tokengate started on the request.
    start: Instant,
    /// Only with the access log.
    logged: Option<Box<Logged>>,
    /// A key with limits: what they said (boxed: most keys have none).
    limit: Option<Box<Checked>>,
    /// A key expiring soon: `Sunset` (boxed: most keys do not).
    sunset: Option<Box<http::HeaderValue>>,
}

/// What a proxied request's access-log line needs once the request is gone
/// (boxed: kept out of the future unless the access log is on).
struct Logged {
    method: Method,
    path: String,
    version: Version,
    peer: std::net::IpAddr,
    client: std::net::IpAddr,
    label: Option<HeaderValue>,
}

impl Logged {
    fn line(&self) -> Line<'_> {
        Line {
            peer: self.peer,
            client: self.client,
            upstream: true,
            original: None,
            method: &self.method,
            path: &self.path,
            version: self.version,
            key: self.label.as_ref().map_or(Key::None, Key::Label),
            grpc: None,
        }
    }
}
