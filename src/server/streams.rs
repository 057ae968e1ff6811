//! HTTP/2 streams served inside their connection's task.
//!
//! hyper hands every HTTP/2 request (its service future and response body) to
//! an executor, which by default spawns a task for it. A spawned stream's
//! answer wakes the connection task, and tokio runs a woken task next (its
//! LIFO slot): the connection writes and flushes one answer at a time
//! (`scripts/syscalls`: 0.85 writes per h2c request, actix-web 0.10).
//!
//! On standalone listeners every answer is ready at once, so the connection's
//! own task runs its streams instead: hyper hands them over through a
//! task-local list during the connection's poll, [`Streams`] polls them right
//! after, and the connection is polled once more in the same turn, so the
//! answers to everything one read brought in leave in one write, and no task
//! is spawned per request. Gateway listeners keep a task per stream: their
//! answers come from the upstream and may take long, and separate tasks let
//! one connection's streams run on several cores.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::stream::{FuturesUnordered, StreamExt};

type StreamFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

tokio::task_local! {
    /// Streams hyper handed over during the current poll of the connection.
    static HANDED: RefCell<Vec<StreamFuture>>;
}

/// The executor of every connection: runs HTTP/2 streams in the connection's
/// task (`local`, inside [`scope`]) or spawns them.
#[derive(Clone, Copy, Debug)]
pub(super) struct StreamExecutor {
    pub(super) local: bool,
}

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        if self.local && HANDED.try_with(|_| ()).is_ok() {
            HANDED.with(|handed| handed.borrow_mut().push(Box::pin(fut)));
        } else {
            tokio::spawn(fut);
        }
    }
}

/// Runs a connection's task with a place for the streams hyper hands over.
pub(super) fn scope<F: Future>(task: F) -> impl Future<Output = F::Output> {
    HANDED.scope(RefCell::new(Vec::new()), task)
}

/// The streams of one connection, run by its task.
#[derive(Default)]
pub(super) struct Streams {
    running: FuturesUnordered<StreamFuture>,
}

impl Streams {
    /// Takes the streams handed over since the last call and polls every
    /// stream that can make progress. Returns whether there were any: their
    /// frames are then queued on the connection, which should be polled again.
    pub(super) fn poll(&mut self, cx: &mut Context<'_>) -> bool {
        let mut any = false;
        let _ = HANDED.try_with(|handed| {
            let mut handed = handed.borrow_mut();
            if !handed.is_empty() {
                any = true;
                for stream in handed.drain(..) {
                    self.running.push(stream);
                }
            }
        });
        if self.running.is_empty() {
            return any;
        }
        while let Poll::Ready(Some(())) = self.running.poll_next_unpin(cx) {
            any = true;
        }
        any || !self.running.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Executor;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn counting(ran: &Arc<AtomicUsize>) -> impl Future<Output = ()> + Send + 'static {
        let ran = ran.clone();
        async move {
            ran.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_local_executor_hands_streams_to_the_connection_task() {
        let ran = Arc::new(AtomicUsize::new(0));
        let local = StreamExecutor { local: true };
        let ran_in_scope = ran.clone();
        scope(async move {
            local.execute(counting(&ran_in_scope));
            local.execute(counting(&ran_in_scope));
            // Handed over, not spawned: nothing ran yet.
            tokio::task::yield_now().await;
            assert_eq!(ran_in_scope.load(Ordering::SeqCst), 0);
            let mut streams = Streams::default();
            let progressed = std::future::poll_fn(|cx| Poll::Ready(streams.poll(cx))).await;
            assert!(progressed);
            assert_eq!(ran_in_scope.load(Ordering::SeqCst), 2);
            assert!(streams.running.is_empty());
        })
        .await;
    }

    #[tokio::test]
    async fn outside_a_connection_scope_or_when_not_local_streams_are_spawned() {
        let ran = Arc::new(AtomicUsize::new(0));
        StreamExecutor { local: true }.execute(counting(&ran));
        let ran_in_scope = ran.clone();
        scope(async move {
            StreamExecutor { local: false }.execute(counting(&ran_in_scope));
        })
        .await;
        for _ in 0..1000 {
            if ran.load(Ordering::SeqCst) == 2 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(ran.load(Ordering::SeqCst), 2);
    }
}
