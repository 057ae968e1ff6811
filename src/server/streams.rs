//! HTTP/2 streams served inside their connection's task.
//!
//! hyper hands every HTTP/2 request (its service future and response body) to
//! an executor, which by default spawns a task for it. A spawned stream's
//! answer wakes the connection task, and tokio runs a woken task next (its
//! LIFO slot): the connection writes and flushes one answer at a time
//! (`scripts/syscalls`: 0.85 writes per h2c request, actix-web 0.10).
//!
//! On standalone listeners every answer is ready at once, so the connection's
//! own task runs its streams instead: once a connection is known to speak
//! HTTP/2 (its first request), hyper hands its streams over through a
//! task-local list set around the connection's poll, [`Streams`] polls them
//! right after, and the connection is polled again in the same turn (up to
//! three times, with the turn's own waker: [`Turn`]), so the answers to
//! everything one read brought in leave in one write, and no task is spawned
//! per request. Gateway listeners keep a task per stream: their
//! answers come from the upstream and may take long, and separate tasks let
//! one connection's streams run on several cores.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed};
use std::sync::atomic::{AtomicBool, AtomicU8};
use std::task::{Context, Poll, Wake, Waker};

use atomic_waker::AtomicWaker;
use futures_util::stream::{FuturesUnordered, StreamExt};

type StreamFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

tokio::task_local! {
    /// Where streams hyper hands over during the current poll of the
    /// connection go.
    static HANDED: RefCell<Handing>;
}

/// Lent to the task-local [`HANDED`] for one poll of the connection.
#[derive(Default)]
struct Handing {
    /// Streams to run after the poll.
    streams: Vec<StreamFuture>,
    /// Streams handed over during the poll (run at once or kept).
    count: usize,
    /// Set: run each stream at once, inside the connection's poll (see
    /// [`Streams`]), with the turn's wakes muted meanwhile.
    at_once: Option<Arc<TurnState>>,
}

/// The executor of every connection: hands HTTP/2 streams to the connection's
/// task (`local`, during [`Streams::poll_conn`]) or spawns them.
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
        // The turn's state, to run the stream at once; `None` outside a poll
        // of the connection (spawned) or to keep it for after the poll.
        let at_once = HANDED.try_with(|handed| {
            let mut handed = handed.borrow_mut();
            handed.count += 1;
            handed.at_once.take()
        });
        let Ok(at_once) = at_once else {
            // Not during a poll of the connection (its first request).
            tokio::spawn(fut);
            return;
        };
        let mut stream: StreamFuture = Box::pin(fut);
        if let Some(turn) = at_once {
            // Its wakes of the connection (h2 has its frames to write) are
            // covered by the connection's poll that hyper makes right after
            // handing a stream over: muted, they do not make the task run
            // once more for nothing.
            let before = turn.mute();
            let polled = stream
                .as_mut()
                .poll(&mut Context::from_waker(Waker::noop()));
            turn.unmute(before);
            HANDED.with(|handed| handed.borrow_mut().at_once = Some(turn));
            if polled.is_ready() {
                return;
            }
            // Waits (no window yet): kept, and polled again with a waker of
            // its own after this poll of the connection.
        }
        HANDED.with(|handed| handed.borrow_mut().streams.push(stream));
    }
}

/// The streams of one connection, run by its task.
///
/// A stream is run in one of two ways, chosen at each turn of the task from
/// the last one:
/// - **At once**, inside the poll of the connection that hyper hands it over
///   in, when the last turn brought at most one request (a client that waits
///   for each answer): its frames then leave in that same poll, and the
///   connection needs no second poll in the turn.
/// - **After the poll**, when the last turn brought several (a client with
///   many streams in flight): every answer to what one read brought in is
///   queued first, and the connection's next poll writes them all at once
///   (one `writev` instead of one per stream).
///
/// Either way a stream is polled first directly; on standalone listeners
/// nearly every stream ends there (its answer is prebuilt and the client's
/// window has room), so it never costs a place in the [`FuturesUnordered`] (an
/// allocation and its wake-up bookkeeping per stream). Only a stream that has
/// to wait (for flow-control window) goes there, to be woken on its own.
#[derive(Default)]
pub(super) struct Streams {
    /// Handed over by the connection's polls, not polled yet (or, run at once,
    /// still waiting). The vector is lent to the task-local list during each
    /// poll of the connection and taken back after, so its buffer is
    /// allocated once per connection.
    fresh: Vec<StreamFuture>,
    /// Streams that did not end at their first poll. Made at the first such
    /// stream (its queue costs two allocations).
    waiting: Option<FuturesUnordered<StreamFuture>>,
    /// The turn's state, lent to the task-local list when streams run at once.
    turn: Option<Arc<TurnState>>,
    /// Run this turn's streams at once.
    at_once: bool,
    /// Streams handed over in this turn.
    handed: usize,
}

impl Streams {
    /// Begins a turn of the connection's task polled with `turn`'s waker.
    pub(super) fn begin_turn(&mut self, turn: &Turn) {
        if self.turn.is_none() {
            self.turn = Some(turn.shared.clone());
        }
        self.at_once = self.handed <= 1;
        self.handed = 0;
    }

    /// Polls `conn` with a place for the streams hyper hands over during the
    /// poll, and keeps them. Only HTTP/2 connections of standalone listeners
    /// come here: an HTTP/1 connection pays nothing for this.
    pub(super) fn poll_conn<T>(&mut self, conn: impl FnOnce() -> Poll<T>) -> Poll<T> {
        let lent = RefCell::new(Handing {
            streams: std::mem::take(&mut self.fresh),
            count: 0,
            at_once: if self.at_once { self.turn.take() } else { None },
        });
        HANDED.sync_scope(lent, || {
            let polled = conn();
            HANDED.with(|handed| {
                let mut handed = handed.borrow_mut();
                self.fresh = std::mem::take(&mut handed.streams);
                self.handed += handed.count;
                if let Some(turn) = handed.at_once.take() {
                    self.turn = Some(turn);
                }
            });
            polled
        })
    }
    /// Polls the streams handed over since the last call, then every waiting
    /// stream that was woken. Returns whether there was any stream to poll:
    /// what they queued is then on the connection, which should be polled
    /// again.
    pub(super) fn poll(&mut self, cx: &mut Context<'_>) -> bool {
        let mut any = false;
        if !self.fresh.is_empty() {
            any = true;
            for mut stream in self.fresh.drain(..) {
                if stream.as_mut().poll(cx).is_pending() {
                    // Polled again by the queue below (a new entry is ready
                    // to run), which registers the stream's own waker.
                    self.waiting
                        .get_or_insert_with(FuturesUnordered::new)
                        .push(stream);
                }
            }
        }
        if let Some(waiting) = self.waiting.as_mut().filter(|w| !w.is_empty()) {
            any = true;
            while let Poll::Ready(Some(())) = waiting.poll_next_unpin(cx) {}
        }
        any
    }

    /// Whether streams were handed over that [`Streams::poll`] has not run yet.
    pub(super) fn has_fresh(&self) -> bool {
        !self.fresh.is_empty()
    }

    /// Whether streams wait to be woken on their own.
    pub(super) fn has_waiting(&self) -> bool {
        self.waiting.as_ref().is_some_and(|w| !w.is_empty())
    }

    /// Streams not yet run to their end.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.fresh.len() + self.waiting.as_ref().map_or(0, FuturesUnordered::len)
    }
}

/// The waker an HTTP/2 connection with inline streams is polled with.
///
/// A stream that answers wakes its connection (h2 has frames to write), but the
/// connection's task polls the connection again in the same turn anyway
/// ([`Streams::poll`]); with the task's own waker, tokio would then run the task
/// once more for nothing: ~1,600 instructions per h2c request
/// (`scripts/instructions --h2`). Within a turn a wake is only recorded, and
/// each poll of the connection covers the wakes before it; a wake after the
/// last poll of a turn, or between turns, reaches the task.
pub(super) struct Turn {
    shared: Arc<TurnState>,
    waker: Waker,
}

const IDLE: u8 = 0;
const IN_TURN: u8 = 1;
const WOKEN: u8 = 2;
/// In a turn, while a stream runs inside the connection's poll.
const MUTED: u8 = 3;
const MUTED_WOKEN: u8 = 4;

pub(super) struct TurnState {
    state: AtomicU8,
    /// A wake came while muted (see [`TurnState::unmute`]).
    muted_wake: AtomicBool,
    task: AtomicWaker,
}

impl Wake for TurnState {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let mut state = self.state.load(Acquire);
        loop {
            let recorded = match state {
                IN_TURN => WOKEN,
                MUTED => MUTED_WOKEN,
                WOKEN | MUTED_WOKEN => return,
                _ => {
                    self.task.wake();
                    return;
                }
            };
            // Recorded: the turn ends by waking the task if no poll came after.
            match self
                .state
                .compare_exchange_weak(state, recorded, AcqRel, Acquire)
            {
                Ok(_) => return,
                Err(now) => state = now,
            }
        }
    }
}

impl TurnState {
    /// Mutes the turn's wakes while a stream runs inside the connection's
    /// poll; returns the state to restore.
    fn mute(&self) -> u8 {
        match self.state.swap(MUTED, AcqRel) {
            WOKEN => WOKEN,
            _ => IN_TURN,
        }
    }

    /// Ends [`TurnState::mute`]. A wake while muted came from the stream (h2
    /// has its frames to write: the connection's poll continues and writes
    /// them) or, rarely, from a waiting stream woken meanwhile: recorded for
    /// the end of the turn ([`Turn::end`]).
    fn unmute(&self, before: u8) {
        if self.state.swap(before, AcqRel) == MUTED_WOKEN {
            self.muted_wake.store(true, Relaxed);
        }
    }
}

impl Turn {
    pub(super) fn new() -> Self {
        let shared = Arc::new(TurnState {
            state: AtomicU8::new(IDLE),
            muted_wake: AtomicBool::new(false),
            task: AtomicWaker::new(),
        });
        let waker = Waker::from(shared.clone());
        Turn { shared, waker }
    }

    /// Begins a turn of the task whose waker is `task`.
    pub(super) fn begin(&self, task: &Waker) {
        self.shared.task.register(task);
    }

    /// Polls with the turn's waker; every wake before this call is covered by
    /// it (acquired here, so what the waker published is visible to the poll).
    pub(super) fn poll<T>(&self, poll: impl FnOnce(&mut Context<'_>) -> Poll<T>) -> Poll<T> {
        self.shared.state.swap(IN_TURN, AcqRel);
        poll(&mut Context::from_waker(&self.waker))
    }

    /// Runs `f` with the turn's waker, without covering earlier wakes (for the
    /// streams, whose wakes the next poll of the connection covers).
    pub(super) fn with<T>(&self, f: impl FnOnce(&mut Context<'_>) -> T) -> T {
        f(&mut Context::from_waker(&self.waker))
    }

    /// Ends the turn: whether a wake came after its last poll (the task must
    /// then be polled again). With `waiting` streams, a wake while a stream
    /// ran at once counts too: it may have been theirs.
    pub(super) fn end(&self, waiting: bool) -> bool {
        let woken = self.shared.state.swap(IDLE, AcqRel) == WOKEN;
        let muted = self.shared.muted_wake.swap(false, Relaxed);
        woken || (muted && waiting)
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
        let mut streams = Streams::default();
        // What hyper does inside the connection's poll: hand two streams over.
        let polled = streams.poll_conn(|| {
            local.execute(counting(&ran));
            local.execute(counting(&ran));
            Poll::<()>::Pending
        });
        assert!(polled.is_pending());
        // Handed over, not spawned: nothing ran yet, even after a yield.
        tokio::task::yield_now().await;
        assert_eq!(ran.load(Ordering::SeqCst), 0);
        assert_eq!(streams.len(), 2);
        let progressed = std::future::poll_fn(|cx| Poll::Ready(streams.poll(cx))).await;
        assert!(progressed);
        assert_eq!(ran.load(Ordering::SeqCst), 2);
        assert_eq!(streams.len(), 0);
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
        let mut streams = Streams::default();
        let _ = streams.poll_conn(|| {
            StreamExecutor { local: true }.execute(async move {
                let _ = rx.await;
                finished.fetch_add(1, Ordering::SeqCst);
            });
            Poll::<()>::Pending
        });
        let task = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(streams.poll(&mut cx));
        assert_eq!(streams.len(), 1, "waiting, not dropped");
        // (The queue may wake the task once when it has polled every entry.)
        let before = task.0.load(Ordering::SeqCst);
        // What it waits for happens: its own waker reaches the task.
        tx.send(()).expect("the stream still waits");
        assert_eq!(task.0.load(Ordering::SeqCst), before + 1);
        assert!(streams.poll(&mut cx));
        assert_eq!(done.load(Ordering::SeqCst), 1);
        assert_eq!(streams.len(), 0);
        assert!(!streams.poll(&mut cx), "nothing left to poll");
    }

    /// A stream that wakes the connection when it runs, as an answer does
    /// (h2 then has frames to write), and counts its runs.
    fn answering(
        ran: &Arc<AtomicUsize>,
        connection: &Waker,
    ) -> impl Future<Output = ()> + Send + 'static {
        let ran = ran.clone();
        let connection = connection.clone();
        async move {
            connection.wake_by_ref();
            ran.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A turn begun for a counting task waker: the task's count, the turn,
    /// the waker the connection keeps from it (h2 stores it), a run counter
    /// and no streams yet.
    fn begun() -> (Arc<CountingWaker>, Turn, Waker, Arc<AtomicUsize>, Streams) {
        let task = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let turn = Turn::new();
        turn.begin(&Waker::from(task.clone()));
        let connection = turn.with(|cx| cx.waker().clone());
        let ran = Arc::new(AtomicUsize::new(0));
        (task, turn, connection, ran, Streams::default())
    }

    #[test]
    fn after_a_turn_with_one_stream_streams_run_inside_the_poll_and_their_wakes_are_covered() {
        let (task, turn, connection, ran, mut streams) = begun();
        let local = StreamExecutor { local: true };

        streams.begin_turn(&turn);
        let polled = turn.poll(|_| {
            streams.poll_conn(|| {
                local.execute(answering(&ran, &connection));
                assert_eq!(ran.load(Ordering::SeqCst), 1, "run inside the poll");
                Poll::<()>::Pending
            })
        });
        assert!(polled.is_pending());
        assert!(!streams.has_fresh());
        assert!(
            !turn.with(|cx| streams.poll(cx)),
            "nothing left to run after the poll"
        );
        assert!(
            !turn.end(streams.has_waiting()),
            "its wake is covered by the poll it ran in"
        );
        assert_eq!(task.0.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn after_a_turn_with_several_streams_they_run_after_the_poll() {
        let (_, turn, connection, ran, mut streams) = begun();
        let local = StreamExecutor { local: true };
        let mut turn_handing = |count: usize| {
            streams.begin_turn(&turn);
            let _ = turn.poll(|_| {
                streams.poll_conn(|| {
                    for _ in 0..count {
                        local.execute(answering(&ran, &connection));
                    }
                    Poll::<()>::Pending
                })
            });
            let before = ran.load(Ordering::SeqCst);
            let _ = turn.with(|cx| streams.poll(cx));
            let after = ran.load(Ordering::SeqCst);
            let _ = turn.end(streams.has_waiting());
            after - before
        };
        assert_eq!(turn_handing(2), 0, "first turn: at once");
        assert_eq!(
            turn_handing(3),
            3,
            "after two: after the poll, all together"
        );
        assert_eq!(turn_handing(1), 1, "after three: after the poll");
        assert_eq!(turn_handing(1), 0, "after one: at once again");
        assert_eq!(ran.load(Ordering::SeqCst), 7);
    }

    #[test]
    fn a_wake_while_a_stream_runs_at_once_counts_when_streams_wait() {
        let (_, turn, connection, ran, mut streams) = begun();
        let local = StreamExecutor { local: true };
        let (_tx, rx) = tokio::sync::oneshot::channel::<()>();

        streams.begin_turn(&turn);
        let _ = turn.poll(|_| {
            streams.poll_conn(|| {
                // Waits (kept), then one that answers at once and wakes.
                local.execute(async move {
                    let _ = rx.await;
                });
                local.execute(answering(&ran, &connection));
                Poll::<()>::Pending
            })
        });
        assert!(streams.has_fresh(), "the waiting one is kept");
        assert!(turn.with(|cx| streams.poll(cx)));
        assert!(streams.has_waiting());
        // The muted wake may have been the waiting stream's: the turn must
        // not end without another look.
        assert!(turn.end(streams.has_waiting()));
    }

    /// A task waker that counts its wakes.
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// What the connection keeps of the waker it was polled with (h2 stores it).
    fn polled_with(turn: &Turn) -> Waker {
        match turn.poll(|cx| Poll::Ready(cx.waker().clone())) {
            Poll::Ready(waker) => waker,
            Poll::Pending => unreachable!("the poll above is always ready"),
        }
    }

    /// A turn begun for a counting task waker, and the waker the connection
    /// kept from its first poll.
    fn turn_after_one_poll() -> (Arc<CountingWaker>, Turn, Waker) {
        let count = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let turn = Turn::new();
        turn.begin(&Waker::from(count.clone()));
        let kept = polled_with(&turn);
        (count, turn, kept)
    }

    #[test]
    fn a_wake_between_turns_reaches_the_task() {
        let (count, turn, kept) = turn_after_one_poll();
        assert!(
            !turn.end(false),
            "nothing woke the connection during the turn"
        );
        kept.wake_by_ref();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_wake_after_the_last_poll_of_a_turn_is_recorded_not_passed_on() {
        let (count, turn, kept) = turn_after_one_poll();
        // A stream answers after the connection's last poll in this turn.
        kept.wake_by_ref();
        kept.wake_by_ref();
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            0,
            "not passed on during the turn"
        );
        assert!(
            turn.end(false),
            "the turn must poll again (the caller wakes the task)"
        );
        assert!(!turn.end(false), "recorded once");
    }

    #[test]
    fn a_wake_before_a_later_poll_of_the_same_turn_is_covered_by_it() {
        let (count, turn, kept) = turn_after_one_poll();
        // The streams ran and woke the connection; the turn then polls it again.
        turn.with(|cx| cx.waker().wake_by_ref());
        kept.wake_by_ref();
        let _ = polled_with(&turn);
        assert!(!turn.end(false));
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_wake_from_another_thread_is_never_lost() {
        // Whatever the interleaving, a wake that happens after the turn's
        // last poll either makes `end` report it or reaches the task.
        for _ in 0..200 {
            let (count, turn, kept) = turn_after_one_poll();
            let waker = std::thread::spawn(move || kept.wake());
            let reported = turn.end(false);
            waker.join().expect("the waking thread does not panic");
            let passed_on = count.0.load(Ordering::SeqCst);
            assert!(
                reported || passed_on == 1,
                "reported {reported}, passed on {passed_on}"
            );
        }
    }
}
