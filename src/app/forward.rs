//! `/auth/verify`: the guard's decision on the request a proxy describes.

use std::net::IpAddr;

use http::Request;

use super::deferred::Deferred;
use super::{Answer, App, limit_headers, sunset_header};
use crate::forward_auth;
use crate::routes::Compiled;

impl App {
    /// `/auth/verify`: the guard's decision on the original request.
    pub(super) fn forward_auth<'r, B>(
        &self,
        req: &'r Request<B>,
        route: &Compiled,
        client: IpAddr,
        head: bool,
    ) -> Answer<'r> {
        let mut answer = Answer {
            response: self.forward.unknowable.respond(head),
            route: route.index,
            auth: None,
            client,
            original: None,
            deferred: None,
        };
        let Some(original) = forward_auth::original(req, route.route.path, self.forward_dialect)
        else {
            return answer;
        };
        let metrics = self.metrics_on.then_some(&self.metrics);
        let decided = self.guard.decide(
            req.headers(),
            client,
            &original.method,
            &original.path,
            metrics,
            true,
        );
        let denial = self.denial(&decided.outcome, head, &self.forward.refusals);
        answer.response = match (denial, decided.key()) {
            (Some(denied), _) => denied,
            (None, Some(key)) => self.forward.allow(key, head),
            // A valid outcome always names a key of the set that decided.
            (None, None) => self.forward.unknowable.respond(head),
        };
        // On the 200 too: the proxy copies them to its client.
        limit_headers(&mut answer.response, decided.limit);
        sunset_header(&mut answer.response, decided.sunset);
        answer.auth = Some(decided.outcome);
        answer.original = Some(original);
        answer.deferred = decided.pending.map(|pending| {
            Box::new(Deferred {
                pending,
                head,
                forward: true,
            })
        });
        answer
    }
}
