//! A request on its way to the upstream: the client's call (tokengate's
//! HTTP/1.1 pool or hyper-util's client), under `--upstream-timeout`, until
//! the response head.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::client::legacy::{Error as LegacyError, ResponseFuture};

use super::lease::Lease;
use super::pool;
use super::trailers::Untrailed;
use super::upgrade::Expected;

/// The upstream client's work for one request.
pub(super) enum Call {
    Http1(pool::Exchange),
    Legacy(ResponseFuture),
}

/// Why the upstream gave no response, from either client.
pub(crate) enum Failed {
    /// tokengate's HTTP/1.1 client.
    Http1(pool::Failure),
    /// hyper-util's client (`--upstream-http2`).
    Legacy(LegacyError),
}

impl Failed {
    pub(super) fn is_connect(&self) -> bool {
        match self {
            Failed::Http1(e) => matches!(e, pool::Failure::Connect(_)),
            Failed::Legacy(e) => e.is_connect(),
        }
    }
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failed::Http1(e) => e.fmt(f),
            Failed::Legacy(e) => e.fmt(f),
        }
    }
}

type Exchanged = Result<(Response<Incoming>, Option<Lease>), Failed>;

impl Future for Call {
    type Output = Exchanged;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Exchanged> {
        match self.get_mut() {
            Call::Http1(exchange) => Pin::new(exchange).poll(cx).map(|r| {
                r.map(|(response, lease)| (response, Some(lease)))
                    .map_err(Failed::Http1)
            }),
            Call::Legacy(response) => Pin::new(response)
                .poll(cx)
                .map(|r| r.map(|response| (response, None)).map_err(Failed::Legacy)),
        }
    }
}

pin_project_lite::pin_project! {
    /// A request on its way to the upstream, until its response head (or
    /// the timeout). A named future rather than an `async fn`: an async
    /// function keeps its arguments for its whole life beside what it
    /// awaits, so the request was held twice over in the future hyper
    /// moves around; this one holds the client's future, the timer and a
    /// few words.
    pub(crate) struct Sending {
        #[pin]
        pub(super) response: tokio::time::Timeout<Call>,
        pub(super) rest: Option<Rest>,
    }
}

/// What [`Sending`] yields: the upstream's answer (or the client's error, or
/// the timeout) and what [`Gateway::finish`] needs besides.
pub(crate) struct Answered {
    pub(super) result: Result<Exchanged, tokio::time::error::Elapsed>,
    pub(super) rest: Rest,
}

/// What crosses the wait for the upstream besides its response.
pub(super) struct Rest {
    pub(super) client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    /// What the 101 must say to open a tunnel (boxed: upgrades are rare).
    pub(super) expected: Option<Box<Expected>>,
    pub(super) client_h2: bool,
    pub(super) started: Instant,
}

impl Future for Sending {
    type Output = Answered;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Answered> {
        let this = self.project();
        let result = std::task::ready!(this.response.poll(cx));
        match this.rest.take() {
            Some(rest) => Poll::Ready(Answered { result, rest }),
            // Futures are not polled again once they returned `Ready`.
            None => Poll::Pending,
        }
    }
}

/// The upstream's request, ready to send, and the client's side of an
/// upgrade being passed through.
pub(crate) struct Prepared {
    pub(super) request: Request<Untrailed>,
    pub(super) client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    pub(super) expected: Option<Box<Expected>>,
    pub(super) client_h2: bool,
    /// When tokengate started on the request.
    pub(super) start: Instant,
}
