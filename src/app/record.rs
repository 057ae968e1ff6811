//! One recording path: every answered request — tokengate's own answer or
//! the upstream's — is counted in the metrics and, with the access log on,
//! written as one line with one schema.

use std::net::IpAddr;
use std::time::Duration;

use http::{HeaderValue, Method, Response, Version};

use super::App;
use crate::keys::{KeyId, Outcome};
use crate::path::Escaped;
use crate::routes::RouteIndex;

/// What an access-log line says of a request besides its response.
pub(super) struct Line<'a> {
    pub(super) peer: IpAddr,
    /// The client (the peer, or what a trusted proxy says).
    pub(super) client: IpAddr,
    /// The upstream answered (gateway mode).
    pub(super) upstream: bool,
    /// For `/auth/verify`: the method and path that were authorised.
    pub(super) original: Option<(&'a str, &'a str)>,
    pub(super) method: &'a Method,
    pub(super) path: &'a str,
    pub(super) version: Version,
    pub(super) key: Key<'a>,
    /// A gRPC call's outcome (`tokengate_grpc_calls_total`'s label).
    pub(super) grpc: Option<&'static str>,
}

impl<'a> Line<'a> {
    /// The line of an answer tokengate gave itself, naming no key.
    pub(super) fn own<B>(peer: IpAddr, client: IpAddr, req: &'a http::Request<B>) -> Self {
        Line {
            peer,
            client,
            upstream: false,
            original: None,
            method: req.method(),
            path: req.uri().path(),
            version: req.version(),
            key: Key::None,
            grpc: None,
        }
    }
}

/// The key a line names.
pub(super) enum Key<'a> {
    None,
    /// A valid key of the set that decided (its label read at logging time).
    Id(KeyId),
    /// A proxied request's key label, kept from the decision.
    Label(&'a HeaderValue),
}

impl From<Option<Outcome>> for Key<'_> {
    fn from(outcome: Option<Outcome>) -> Self {
        match outcome {
            Some(Outcome::Valid(id)) => Key::Id(id),
            _ => Key::None,
        }
    }
}

impl App {
    /// Records an answered request: its metric series (`route`, status,
    /// `elapsed`) and, with the access log, the line `line` describes (built
    /// only then; `None` when the request kept nothing for it).
    #[inline]
    pub(super) fn record<'a, B: http_body::Body>(
        &self,
        route: RouteIndex,
        response: &Response<B>,
        elapsed: Duration,
        line: impl FnOnce() -> Option<Line<'a>>,
    ) {
        if self.metrics_on {
            self.metrics.record(route, response.status(), elapsed);
        }
        if self.access_log
            && let Some(line) = line()
        {
            self.log(&line, response, elapsed);
        }
    }

    /// One access-log event: never a header value, a token or a query string.
    #[cold]
    fn log<B: http_body::Body>(&self, line: &Line, response: &Response<B>, elapsed: Duration) {
        let label;
        let key = match line.key {
            Key::None => "-",
            Key::Id(id) => {
                label = self.guard.label(id);
                &label
            }
            Key::Label(value) => value.to_str().unwrap_or("-"),
        };
        let (original_method, original_path) = line.original.unwrap_or(("-", "-"));
        // A number; absent only for a streamed body without a length.
        let bytes: Option<u64> = response.body().size_hint().exact();
        tracing::info!(
            target: "tokengate::access",
            peer = %line.peer,
            client = %line.client,
            upstream = line.upstream,
            original_method = %original_method,
            original_path = %Escaped(original_path),
            method = %line.method,
            path = %Escaped(line.path),
            protocol = ?line.version,
            status = response.status().as_u16(),
            bytes,
            duration_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            key = %key,
            grpc = %line.grpc.unwrap_or("-"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_fields_are_escaped() {
        assert_eq!(Escaped("/public?x").to_string(), "/public?x");
        assert_eq!(
            Escaped("/a\u{2028}status=200 \"x\\\n\u{e9}").to_string(),
            "/a\\xe2\\x80\\xa8status=200\\x20\\x22x\\x5c\\x0a\\xc3\\xa9"
        );
    }
}
