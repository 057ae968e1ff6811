//! Driving one connection under the watchdog's commands: hyper's graceful
//! shutdown on `Graceful`, a drop on `Abort`, and, for a standalone HTTP/2
//! connection, its streams run by the connection's own task.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::task::Poll;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::server::conn::auto;

use super::streams::Streams;
use super::watchdog::{Activity, Command};

/// A hyper or hyper-util connection, with or without upgrades.
pub(super) trait Shutdown: Future {
    fn shutdown(self: Pin<&mut Self>);
}

/// hyper's HTTP/1 connections, with and without upgrades.
macro_rules! http1_shutdown {
    ($($conn:ident),*) => {$(
        impl<I, S, B> Shutdown for http1::$conn<I, S>
        where
            http1::$conn<I, S>: Future,
            S: hyper::service::HttpService<Incoming, ResBody = B>,
            I: hyper::rt::Read + hyper::rt::Write + Unpin,
            B: http_body::Body + 'static,
            B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        {
            fn shutdown(self: Pin<&mut Self>) {
                self.graceful_shutdown();
            }
        }
    )*};
}

http1_shutdown!(Connection, UpgradeableConnection);

/// hyper-util's auto connections, with and without upgrades.
macro_rules! auto_shutdown {
    ($($conn:ident),*) => {$(
        impl<'a, I, S, E, B> Shutdown for auto::$conn<'a, I, S, E>
        where
            auto::$conn<'a, I, S, E>: Future,
            S: hyper::service::HttpService<Incoming, ResBody = B>,
            S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
            I: hyper::rt::Read + hyper::rt::Write + Unpin,
            B: http_body::Body + 'static,
            B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
            E: auto::HttpServerConnExec<S::Future, B>,
        {
            fn shutdown(self: Pin<&mut Self>) {
                self.graceful_shutdown();
            }
        }
    )*};
}

auto_shutdown!(Connection, UpgradeableConnection);

/// Drives a connection under the watchdog's commands; `None` if aborted.
/// With `inline_streams`, an HTTP/2 connection runs its streams itself.
pub(super) async fn drive<C>(
    mut conn: Pin<&mut C>,
    activity: &Activity,
    inline_streams: bool,
) -> Option<C::Output>
where
    C: Shutdown,
{
    let mut graceful = false;
    // The HTTP/2 streams that wait, boxed at the first HTTP/2 poll: an HTTP/1
    // connection's task (and every idle one's) carries one pointer for them.
    let mut inline: Option<Box<Streams>> = None;
    std::future::poll_fn(|cx| {
        loop {
            // Known HTTP/2 once its first request was counted (the first
            // request's stream is spawned: it is handed over before that).
            let h2 = inline_streams && activity.h2.load(Relaxed);
            let polled = if h2 {
                let streams = inline.get_or_insert_with(Box::default);
                let polled = streams.poll_conn(|| conn.as_mut().poll(cx));
                // What the streams answer wakes the task: its next poll of
                // the connection writes their answers, together.
                streams.run(cx);
                polled
            } else {
                conn.as_mut().poll(cx)
            };
            if let Poll::Ready(result) = polled {
                return Poll::Ready(Some(result));
            }
            activity.waker.register(cx.waker());
            match activity.pending_command() {
                Command::Abort => return Poll::Ready(None),
                // hyper-util cancels a connection still detecting its
                // protocol when told to shut down, which would drop a first
                // request still on its way (a connection accepted just as
                // the drain began). Wait for it: during a drain the
                // watchdog aborts a connection that has sent no complete
                // request within DRAIN_FIRST_REQUEST_GRACE.
                Command::Graceful if !graceful && activity.requests.load(Relaxed) == 0 => {
                    return Poll::Pending;
                }
                Command::Graceful if !graceful => {
                    graceful = true;
                    // Must be polled again to take effect.
                    conn.as_mut().shutdown();
                }
                _ => return Poll::Pending,
            }
        }
    })
    .await
}

/// Runs `fut` until it completes (`Some`) or the watchdog aborts the
/// connection (`None`).
pub(super) async fn until_aborted<F: Future>(activity: &Activity, fut: F) -> Option<F::Output> {
    tokio::pin!(fut);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        activity.waker.register(cx.waker());
        if activity.pending_command() == Command::Abort {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::super::streams::StreamExecutor;
    use super::*;
    use hyper::rt::Executor;
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::task::{Context, Wake, Waker};

    /// An HTTP/2 connection that hands two streams over at every poll (new
    /// requests read each time) and never ends.
    struct Handing {
        ran: Arc<AtomicUsize>,
    }

    impl Future for Handing {
        type Output = Result<(), Infallible>;

        fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Self::Output> {
            for _ in 0..2 {
                let ran = self.ran.clone();
                StreamExecutor { local: true }.execute(async move {
                    ran.fetch_add(1, SeqCst);
                });
            }
            Poll::Pending
        }
    }

    impl Shutdown for Handing {
        fn shutdown(self: Pin<&mut Self>) {}
    }

    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, SeqCst);
        }
    }

    #[test]
    fn streams_handed_over_run_inside_each_poll_and_nothing_is_left_behind() {
        let ran = Arc::new(AtomicUsize::new(0));
        let activity = Activity::default();
        activity.h2.store(true, Relaxed);
        let conn = Handing { ran: ran.clone() };
        tokio::pin!(conn);
        let driving = drive(conn.as_mut(), &activity, true);
        tokio::pin!(driving);
        let task = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&waker);

        // Each poll of the task polls the connection once, which hands two
        // streams over; both run right after it, none is left for later.
        for turn in 1..=3 {
            assert!(driving.as_mut().poll(&mut cx).is_pending());
            assert_eq!(ran.load(SeqCst), 2 * turn);
        }
        assert_eq!(task.0.load(SeqCst), 0, "no wake needed: nothing waits");
    }
}
