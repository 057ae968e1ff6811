//! The watchdog: one thread per server that samples every connection's
//! counters on a tick and tells a connection task what to do, through an
//! atomic command and its waker. The runtime's timer wheel holds no
//! per-connection entries, and a request costs two plain counter stores.
//!
//! Its clock is injectable: [`ConnectionTable::sweep`] takes the time, so the
//! unit tests below drive it by hand.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use atomic_waker::AtomicWaker;
use tracing::warn;

use super::Limits;
use super::deadlines::{Deadlines, Verdict};
use crate::lifecycle::{Lifecycle, Phase};

/// What a connection shares with the watchdog and the drain.
///
/// The counters have a single writer — the connection's own task (hyper calls
/// the service from the connection future for HTTP/1 and HTTP/2 alike) — so an
/// increment is a plain load and store, not a locked read-modify-write.
#[derive(Default, Debug)]
pub(crate) struct Activity {
    /// Requests whose head was complete (the service was called).
    pub(crate) requests: AtomicU64,
    /// Reads that returned data.
    pub(crate) reads: AtomicU64,
    /// Writes that sent data: a long response (a proxied download, server-sent
    /// events) keeps a connection active while the client only reads.
    pub(crate) writes: AtomicU64,
    /// Set once the connection speaks HTTP/2: frames without a new request
    /// (PING, WINDOW_UPDATE) are then activity, not a request head in progress.
    pub(crate) h2: AtomicBool,
    /// What the connection task must do next: [`Command`] as a byte.
    command: AtomicU8,
    /// The connection task, to be woken when a command is set.
    pub(crate) waker: AtomicWaker,
}

/// What the watchdog or the drain asks of a connection task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub(crate) enum Command {
    /// Carry on.
    None = 0,
    /// Finish what is in flight, then close (HTTP/1) or send GOAWAY (HTTP/2).
    Graceful = 1,
    /// Drop the connection now.
    Abort = 2,
}

impl Activity {
    /// Raises the command (never lowers it) and wakes the task.
    pub(crate) fn command(&self, command: Command) {
        self.command.fetch_max(command as u8, Relaxed);
        self.waker.wake();
    }

    /// The command in force.
    pub(crate) fn pending_command(&self) -> Command {
        match self.command.load(Relaxed) {
            0 => Command::None,
            1 => Command::Graceful,
            _ => Command::Abort,
        }
    }
}

/// Adds one to a counter that only its connection's task writes.
#[inline]
pub(crate) fn bump(counter: &AtomicU64) {
    counter.store(counter.load(Relaxed).wrapping_add(1), Relaxed);
}

/// During a drain, how long a connection that has not completed a request
/// yet may take to do so before it is closed (from the later of its accept
/// and the start of the drain).
pub(crate) const DRAIN_FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);

/// The live connections of one server, for the watchdog and the drain.
pub(crate) struct ConnectionTable {
    connections: Mutex<HashMap<u64, Tracked>>,
    next_id: AtomicU64,
    limits: Limits,
    lifecycle: Arc<Lifecycle>,
    /// When [`ConnectionTable::drain`] was called.
    drain_started: OnceLock<Instant>,
}

struct Tracked {
    activity: Arc<Activity>,
    accepted: Instant,
    deadlines: Deadlines,
    /// A graceful close was requested for idleness; abort at the next tick.
    closing: bool,
}

impl ConnectionTable {
    pub(crate) fn new(limits: Limits, lifecycle: Arc<Lifecycle>) -> Self {
        ConnectionTable {
            connections: Mutex::default(),
            next_id: AtomicU64::new(0),
            limits,
            lifecycle,
            drain_started: OnceLock::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Tracked>> {
        self.connections.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tracks a connection accepted at `accepted` until the returned guard drops.
    pub(crate) fn add(self: &Arc<Self>, activity: Arc<Activity>, accepted: Instant) -> Entry {
        let id = self.next_id.fetch_add(1, Relaxed);
        let deadlines = Deadlines::new(&self.limits, accepted);
        let mut connections = self.lock();
        if self.lifecycle.phase() == Phase::Draining {
            activity.command(Command::Graceful);
        }
        connections.insert(
            id,
            Tracked {
                activity,
                accepted,
                deadlines,
                closing: false,
            },
        );
        Entry {
            table: self.clone(),
            id,
        }
    }

    /// How many connections are open.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// One watchdog pass over every connection, at `now`.
    pub(crate) fn sweep(&self, now: Instant) {
        let drain_started = self.drain_started.get().copied();
        for tracked in self.lock().values_mut() {
            let a = &tracked.activity;
            if tracked.closing {
                a.command(Command::Abort);
                continue;
            }
            let grace_over = drain_started.is_some_and(|started| {
                now.saturating_duration_since(started.max(tracked.accepted))
                    >= DRAIN_FIRST_REQUEST_GRACE
            });
            if grace_over && a.requests.load(Relaxed) == 0 {
                a.command(Command::Abort);
                continue;
            }
            tracked.deadlines.wrote(now, a.writes.load(Relaxed));
            let verdict = tracked.deadlines.verdict(
                now,
                a.requests.load(Relaxed),
                a.reads.load(Relaxed),
                a.h2.load(Relaxed),
            );
            match verdict {
                Verdict::Fine => {}
                Verdict::HeadTimeout => a.command(Command::Abort),
                Verdict::Idle => {
                    tracked.closing = true;
                    a.command(Command::Graceful);
                }
            }
        }
    }

    /// Tells every connection to finish, at `now`.
    pub(crate) fn drain(&self, now: Instant) {
        let _ = self.drain_started.set(now);
        for tracked in self.lock().values() {
            tracked.activity.command(Command::Graceful);
        }
    }

    /// Runs the watchdog on a plain thread, sampling every `tick`, until the
    /// table is dropped (when `serve` returns).
    pub(crate) fn spawn_watchdog(self: &Arc<Self>, tick: Duration) {
        let weak = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("tokengate-watchdog".to_owned())
            .spawn(move || {
                loop {
                    std::thread::sleep(tick);
                    let Some(table) = weak.upgrade() else {
                        return;
                    };
                    table.sweep(Instant::now());
                }
            });
        if let Err(e) = spawned {
            warn!(error = %e, "cannot start the watchdog thread: header and idle timeouts are not enforced");
        }
    }
}

/// Removes a connection from its table when the connection task ends.
pub(crate) struct Entry {
    table: Arc<ConnectionTable>,
    id: u64,
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.table.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> (Arc<ConnectionTable>, Arc<Lifecycle>) {
        let lifecycle = Arc::new(Lifecycle::default());
        let limits = Limits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            ..Limits::default()
        };
        (
            Arc::new(ConnectionTable::new(limits, lifecycle.clone())),
            lifecycle,
        )
    }

    #[test]
    fn idle_connections_are_closed_gracefully_then_aborted() {
        let (table, _) = table();
        let t0 = Instant::now();
        let a = Arc::new(Activity::default());
        let _entry = table.add(a.clone(), t0);
        bump(&a.requests);
        table.sweep(t0 + Duration::from_secs(1));
        assert_eq!(a.pending_command(), Command::None);
        table.sweep(t0 + Duration::from_secs(62));
        assert_eq!(a.pending_command(), Command::Graceful);
        table.sweep(t0 + Duration::from_secs(63));
        assert_eq!(a.pending_command(), Command::Abort);
    }

    #[test]
    fn a_stalled_first_head_is_aborted_from_accept() {
        let (table, _) = table();
        let t0 = Instant::now();
        let a = Arc::new(Activity::default());
        let _entry = table.add(a.clone(), t0);
        bump(&a.reads);
        table.sweep(t0 + Duration::from_secs(9));
        assert_eq!(a.pending_command(), Command::None);
        table.sweep(t0 + Duration::from_secs(10));
        assert_eq!(a.pending_command(), Command::Abort);
    }

    #[test]
    fn draining_gives_a_new_connection_a_grace_for_its_first_request() {
        let (table, lifecycle) = table();
        let t0 = Instant::now();
        let served = Arc::new(Activity::default());
        let silent = Arc::new(Activity::default());
        let _e1 = table.add(served.clone(), t0);
        let _e2 = table.add(silent.clone(), t0);
        bump(&served.requests);
        lifecycle.advance(Phase::Draining);
        // The drain starts 5 s after these connections were accepted: the
        // grace runs from the drain.
        let drain = t0 + Duration::from_secs(5);
        table.drain(drain);
        assert_eq!(served.pending_command(), Command::Graceful);
        table.sweep(drain + DRAIN_FIRST_REQUEST_GRACE / 2);
        assert_eq!(silent.pending_command(), Command::Graceful);
        table.sweep(drain + DRAIN_FIRST_REQUEST_GRACE);
        assert_eq!(silent.pending_command(), Command::Abort);
        assert_eq!(served.pending_command(), Command::Graceful);
        // Connections accepted from now on are told to finish at once.
        let late = Arc::new(Activity::default());
        let _e3 = table.add(late.clone(), t0);
        assert_eq!(late.pending_command(), Command::Graceful);
        assert_eq!(table.len(), 3);
        drop(_e3);
        assert_eq!(table.len(), 2);
    }
}
