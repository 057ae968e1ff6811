//! Request trailers never reach the upstream.
//!
//! A trailer field is a header field that arrives after the body (HTTP/1.1
//! chunked encoding, an HTTP/2 HEADERS frame after DATA). Upstream frameworks
//! that merge trailers into the headers would read a forged
//! `x-auth-key-label`, a token or a method override the gateway never saw in
//! the head it checked and rewrote. No request tokengate passes on needs
//! them, so the client's body is passed without its trailers.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// The client's request body, its trailers dropped.
#[derive(Debug)]
pub(crate) struct Untrailed(Incoming);

impl Untrailed {
    /// Wraps the client's body.
    pub(crate) fn new(body: Incoming) -> Self {
        Untrailed(body)
    }
}

impl Body for Untrailed {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        loop {
            match std::task::ready!(Pin::new(&mut self.0).poll_frame(cx)) {
                Some(Ok(frame)) if frame.is_trailers() => continue,
                other => return Poll::Ready(other),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}
