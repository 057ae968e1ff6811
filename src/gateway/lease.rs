//! A pooled upstream connection on loan to one request ([`Lease`]), and the
//! response body that drives it while it streams ([`UpstreamBody`]).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::pool::{Conn, Pool};

/// A connection on loan to one request: back to the pool when dropped, if
/// the exchange left it ready for another request.
pub(crate) struct Lease {
    pub(super) conn: Option<Box<Conn>>,
    pub(super) pool: Arc<Pool>,
}

impl Lease {
    /// Closes the connection instead of putting it back (the upstream
    /// answered in a way that leaves it unusable: a 101 refused).
    pub(crate) fn discard(mut self) {
        self.conn = None;
    }

    pub(super) fn drive(&mut self, cx: &mut Context<'_>) {
        if let Some(conn) = &mut self.conn
            && !conn.drive(cx)
        {
            self.conn = None;
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.put_back(conn);
        }
    }
}

pin_project_lite::pin_project! {
    /// An upstream response body, streamed: drives its connection while it
    /// is read, and holds the lease until it is dropped.
    pub struct UpstreamBody {
        #[pin]
        body: Incoming,
        lease: Option<Lease>,
    }
}

impl UpstreamBody {
    /// `body`, with the connection it comes on (`None`: a connection of its
    /// own, e.g. from the legacy client).
    pub(crate) fn new(body: Incoming, lease: Option<Lease>) -> Self {
        UpstreamBody { body, lease }
    }
}

impl Body for UpstreamBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        if let Poll::Ready(frame) = this.body.as_mut().poll_frame(cx) {
            return Poll::Ready(frame);
        }
        match this.lease {
            // The body asked for more: the connection reads it, then the
            // body has it.
            Some(lease) => {
                lease.drive(cx);
                this.body.poll_frame(cx)
            }
            None => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
