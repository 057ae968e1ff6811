//! Requests a Redis store must count first ([`App::call`]): a valid key with
//! limits is answered once the store has counted it (or once
//! `--limits-store-failure` decided for a store that is down); every other
//! request is answered at once, as [`App::handle`] does.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use http::{Method, Request, Response, Version};

use super::record::{Key, Line};
use super::{Answer, App, limit_headers};
use crate::guard::Pending;
use crate::keys::Outcome;
use crate::limits::Stored;
use crate::responses::{self, Body};

/// An answer now, or once the limits store answered.
pub(crate) enum Call {
    Ready(Response<Body>),
    Pending(Pin<Box<dyn Future<Output = Response<Body>> + Send>>),
}

/// What the answer to a key the store must count still needs.
#[derive(Debug)]
pub(crate) struct Deferred {
    pub(super) pending: Pending,
    pub(super) head: bool,
    /// `/auth/verify`: its refusals (`--forward-auth-throttle-status`).
    pub(super) forward: bool,
}

/// What the access-log line of a deferred request needs once `req` is gone.
struct Owned {
    peer: IpAddr,
    client: IpAddr,
    original: Option<(String, String)>,
    method: Method,
    path: String,
    version: Version,
}

impl Owned {
    fn line(&self, outcome: Option<Outcome>) -> Line<'_> {
        Line {
            peer: self.peer,
            client: self.client,
            upstream: false,
            original: self
                .original
                .as_ref()
                .map(|(m, p)| (m.as_str(), p.as_str())),
            method: &self.method,
            path: &self.path,
            version: self.version,
            key: Key::from(outcome),
            grpc: None,
        }
    }
}

impl App {
    /// Answers a request and records it. With a Redis store, a valid key
    /// with limits is answered after one store call (bounded by
    /// `--limits-store-timeout`); without one this is [`App::handle`].
    pub(crate) fn call<B>(self: &Arc<Self>, req: &Request<B>, peer: IpAddr) -> Call {
        if !self.deferring {
            return Call::Ready(self.handle(req, peer));
        }
        let start = Instant::now();
        let mut answer = self.answer(req, peer);
        let Some(deferred) = answer.deferred.take() else {
            self.record_answer(req, peer, &answer, start);
            return Call::Ready(answer.response);
        };
        let owned = self.access_log.then(|| Owned {
            peer,
            client: answer.client,
            original: answer
                .original
                .as_ref()
                .map(|o| (o.method.as_str().to_owned(), o.path.to_string())),
            method: req.method().clone(),
            path: req.uri().path().to_owned(),
            version: req.version(),
        });
        let app = Arc::clone(self);
        let Answer {
            mut response,
            route,
            auth,
            ..
        } = answer;
        Call::Pending(Box::pin(async move {
            let Deferred {
                pending,
                head,
                forward,
            } = *deferred;
            let stored = pending.ask().await;
            let outcome = app.settle(&mut response, auth, head, forward, stored);
            app.record(route, &response, start.elapsed(), || {
                owned.as_ref().map(|o| o.line(outcome))
            });
            response
        }))
    }

    /// `deferred` decided by the per-process counters (no waiting).
    pub(super) fn settle_locally(
        &self,
        response: &mut Response<Body>,
        outcome: Option<Outcome>,
        deferred: Deferred,
    ) -> Option<Outcome> {
        let stored = Stored::Checked(deferred.pending.local());
        self.settle(response, outcome, deferred.head, deferred.forward, stored)
    }

    /// Turns the prepared answer (the success) into the one the store's
    /// verdict calls for; the outcome, counted.
    fn settle(
        &self,
        response: &mut Response<Body>,
        outcome: Option<Outcome>,
        head: bool,
        forward: bool,
        stored: Stored,
    ) -> Option<Outcome> {
        let metrics = self.metrics_on.then_some(&self.metrics);
        let outcome = outcome?;
        match stored {
            Stored::Unavailable => {
                *response = responses::with_retry_after(
                    self.responses.unavailable.respond(head),
                    std::time::Duration::from_secs(1),
                );
                Some(self.guard.settle(outcome, None, metrics))
            }
            Stored::Checked(checked) => {
                let outcome = self.guard.settle(outcome, Some(&checked), metrics);
                let refusals = if forward {
                    &self.forward.refusals
                } else {
                    &self.responses.refusals
                };
                if let Some(denied) = self.denial(&outcome, head, refusals) {
                    *response = denied;
                }
                limit_headers(response, Some(checked));
                Some(outcome)
            }
        }
    }
}
