//! HTTP/2 streams served inside their connection's task.
//!
//! hyper hands every HTTP/2 request (its service future and response body) to
//! an executor, which by default spawns a task for it. A spawned stream's
//! answer wakes the connection task, and tokio runs a woken task next (its
//! LIFO slot): the connection writes and flushes one answer at a time
//! (`scripts/syscalls`: 0.85 writes per h2c request, actix-web 0.10).
//!
//! On standalone listeners every answer is ready at once, so the connection's
//! own task runs its streams instead. The streams hyper hands over while
//! [`Streams::poll_conn`] polls the connection are kept, then run once each
//! right after that poll, with the task's waker: nearly every one ends there
//! (its answer is prebuilt and the client's window has room). Their answers
//! wake the task (h2 has frames to write), and its next poll of the
//! connection writes the answers to everything one read brought in, in one
//! write. A stream that must wait (for flow-control window) is queued and
//! from then on polled with a waker of its own, before each poll of the
//! connection. No task is spawned per request, and nothing here depends on
//! the order in which hyper polls: every wake is the task's or the queue's,
//! and reaches the task. Gateway listeners keep a task per stream: their
//! answers come from the upstream and may take long, and separate tasks let
//! one connection's streams run on several cores.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::stream::{FuturesUnordered, StreamExt};

type StreamFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

tokio::task_local! {
    /// Where the streams hyper hands over go, for the length of one poll of
    /// the connection.
    static HANDED: RefCell<Vec<StreamFuture>>;
}

/// The executor of every connection: hands HTTP/2 streams to the
/// connection's task (`local`, during [`Streams::poll_conn`]) or spawns them.
#[derive(Clone, Copy, Debug)]
pub(super) struct StreamExecutor {
    pub(super) local: bool,
}

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        if !self.local {
            tokio::spawn(fut);
            return;
        }
        let mut stream: Option<StreamFuture> = Some(Box::pin(fut));
        // Outside a poll of the connection (its first request, handed over
        // before it is known to speak HTTP/2) the closure does not run.
        let _ = HANDED.try_with(|handed| {
            if let Some(stream) = stream.take() {
                handed.borrow_mut().push(stream);
            }
        });
        if let Some(stream) = stream {
            tokio::spawn(stream);
        }
    }
}

/// The streams of one connection, run by its task.
#[derive(Default)]
pub(super) struct Streams {
    /// Handed over by the last poll of the connection, not run yet. Lent to
    /// the task-local list during each poll and taken back after, so its
    /// buffer is allocated once per connection.
    fresh: Vec<StreamFuture>,
    /// Streams that did not end at their first poll, each woken on its own.
    /// Made at the first such stream (the queue costs two allocations).
    waiting: Option<FuturesUnordered<StreamFuture>>,
}

impl Streams {
    /// Polls the connection with `conn`, keeping the streams hyper hands over
    /// meanwhile. Only HTTP/2 connections of standalone listeners come here:
    /// an HTTP/1 connection pays nothing.
    pub(super) fn poll_conn<T>(&mut self, conn: impl FnOnce() -> Poll<T>) -> Poll<T> {
        let lent = RefCell::new(std::mem::take(&mut self.fresh));
        HANDED.sync_scope(lent, || {
            let polled = conn();
            self.fresh = HANDED.with(|handed| std::mem::take(&mut *handed.borrow_mut()));
            polled
        })
    }

    /// Runs the streams handed over since the last call once each, and the
    /// waiting ones that were woken; queues those that must wait.
    pub(super) fn run(&mut self, cx: &mut Context<'_>) {
        for mut stream in self.fresh.drain(..) {
            if stream.as_mut().poll(cx).is_pending() {
                // New entries of the queue are ready to run: polled below
                // with their own waker.
                self.waiting
                    .get_or_insert_with(FuturesUnordered::new)
                    .push(stream);
            }
        }
        if let Some(waiting) = self.waiting.as_mut().filter(|w| !w.is_empty()) {
            while let Poll::Ready(Some(())) = waiting.poll_next_unpin(cx) {}
        }
    }

    /// Streams not yet run to their end.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.fresh.len() + self.waiting.as_ref().map_or(0, FuturesUnordered::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Executor;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Wake, Waker};

    /// A task waker that counts its wakes.
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn task() -> (Arc<CountingWaker>, Waker) {
        let count = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        (count, waker)
    }

    fn counting(ran: &Arc<AtomicUsize>) -> impl Future<Output = ()> + Send + 'static {
        let ran = ran.clone();
        async move {
            ran.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn streams_handed_over_during_the_poll_run_right_after_it() {
        let ran = Arc::new(AtomicUsize::new(0));
        let (_, waker) = task();
        let mut cx = Context::from_waker(&waker);
        let local = StreamExecutor { local: true };
        let mut streams = Streams::default();
        let polled = streams.poll_conn(|| {
            local.execute(counting(&ran));
            local.execute(counting(&ran));
            Poll::<()>::Pending
        });
        assert!(polled.is_pending());
        assert_eq!(ran.load(Ordering::SeqCst), 0, "kept during the poll");
        assert_eq!(streams.len(), 2);
        streams.run(&mut cx);
        assert_eq!(ran.load(Ordering::SeqCst), 2);
        assert_eq!(streams.len(), 0, "nothing kept");
    }

    #[tokio::test]
    async fn outside_a_connection_poll_or_when_not_local_streams_are_spawned() {
        let ran = Arc::new(AtomicUsize::new(0));
        StreamExecutor { local: true }.execute(counting(&ran));
        let mut streams = Streams::default();
        let _ = streams.poll_conn(|| {
            StreamExecutor { local: false }.execute(counting(&ran));
            Poll::<()>::Pending
        });
        assert_eq!(streams.len(), 0);
        for _ in 0..1000 {
            if ran.load(Ordering::SeqCst) == 2 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(ran.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_stream_that_must_wait_is_woken_on_its_own() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let done = Arc::new(AtomicUsize::new(0));
        let finished = done.clone();
        let (count, waker) = task();
        let mut cx = Context::from_waker(&waker);
        let mut streams = Streams::default();
        let _ = streams.poll_conn(|| {
            StreamExecutor { local: true }.execute(async move {
                let _ = rx.await;
                finished.fetch_add(1, Ordering::SeqCst);
            });
            Poll::<()>::Pending
        });
        streams.run(&mut cx);
        assert_eq!(streams.len(), 1, "waiting, not dropped");
        // What it waits for happens: its wake reaches the task.
        let before = count.0.load(Ordering::SeqCst);
        tx.send(()).expect("the stream still waits");
        assert!(
            count.0.load(Ordering::SeqCst) > before,
            "the task was not woken"
        );
        streams.run(&mut cx);
        assert_eq!(done.load(Ordering::SeqCst), 1);
        assert_eq!(streams.len(), 0);
    }
}
