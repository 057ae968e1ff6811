//! One connection's clock: request-head and idle deadlines, sampled on the
//! watchdog's tick rather than re-armed per request (no timer work on the hot
//! path). Pure: every method takes the time, so tests drive it by hand.

use std::time::{Duration, Instant};

use super::Limits;

/// The head and idle deadlines of one connection.
pub(super) struct Deadlines {
    header_timeout: Duration,
    idle_timeout: Duration,
    /// `(requests, reads)` at the previous tick.
    last: (u64, u64),
    /// Writes at the previous tick.
    last_writes: u64,
    /// When the connection was last seen doing something.
    active_at: Instant,
    /// When the request head in progress was first seen (accept, for the
    /// first: the TLS handshake and protocol detection count against it).
    head_since: Option<Instant>,
}

/// What the watchdog must do with a connection.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    Fine,
    /// A request head took longer than `--header-read-timeout`: drop it.
    HeadTimeout,
    /// Nothing happened for `--idle-timeout`: close it gracefully.
    Idle,
}

/// How often the watchdog samples: a quarter of the shorter limit.
pub(super) fn tick(limits: &Limits) -> Duration {
    (limits.header_read_timeout.min(limits.idle_timeout) / 4).max(Duration::from_millis(1))
}

impl Deadlines {
    /// The clocks of a connection accepted at `accepted`.
    pub(super) fn new(limits: &Limits, accepted: Instant) -> Self {
        Deadlines {
            header_timeout: limits.header_read_timeout,
            idle_timeout: limits.idle_timeout,
            last: (0, 0),
            last_writes: 0,
            active_at: accepted,
            head_since: Some(accepted),
        }
    }

    /// The connection's write counter at `now`: sending is activity (a long
    /// response is not an idle connection), never the start of a head.
    pub(super) fn wrote(&mut self, now: Instant, writes: u64) {
        if writes != self.last_writes {
            self.last_writes = writes;
            self.active_at = now;
        }
    }

    /// One sample: the connection's request and read counters at `now`.
    pub(super) fn verdict(&mut self, now: Instant, requests: u64, reads: u64, h2: bool) -> Verdict {
        let (last_requests, last_reads) = self.last;
        self.last = (requests, reads);
        if requests != last_requests {
            // A head completed since the last tick.
            self.head_since = None;
            self.active_at = now;
        } else if reads != last_reads {
            self.active_at = now;
            if !h2 && self.head_since.is_none() {
                // Bytes, but no complete head: a request head is in progress.
                self.head_since = Some(now);
            }
        }
        if let Some(since) = self.head_since
            && now.duration_since(since) >= self.header_timeout
        {
            return Verdict::HeadTimeout;
        }
        if now.duration_since(self.active_at) >= self.idle_timeout {
            return Verdict::Idle;
        }
        Verdict::Fine
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock() -> (Deadlines, Instant) {
        let limits = Limits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            ..Limits::default()
        };
        let t0 = Instant::now();
        (Deadlines::new(&limits, t0), t0)
    }

    fn at(t0: Instant, secs: u64) -> Instant {
        t0 + Duration::from_secs(secs)
    }

    #[test]
    fn first_head_is_timed_from_accept() {
        let (mut d, t0) = clock();
        assert_eq!(tick(&Limits::default()), Duration::from_millis(2500));
        assert_eq!(d.verdict(at(t0, 5), 0, 1, false), Verdict::Fine);
        assert_eq!(d.verdict(at(t0, 10), 0, 2, false), Verdict::HeadTimeout);
        let (mut d, t0) = clock();
        assert_eq!(
            d.verdict(at(t0, 10), 0, 0, false),
            Verdict::HeadTimeout,
            "silent connection"
        );
    }

    #[test]
    fn later_heads_are_timed_from_their_first_bytes() {
        let (mut d, t0) = clock();
        assert_eq!(d.verdict(at(t0, 1), 1, 1, false), Verdict::Fine);
        // Idle keep-alive for 30 s is fine.
        assert_eq!(d.verdict(at(t0, 31), 1, 1, false), Verdict::Fine);
        // Slowloris: bytes keep coming, no complete head.
        assert_eq!(d.verdict(at(t0, 33), 1, 2, false), Verdict::Fine);
        assert_eq!(d.verdict(at(t0, 40), 1, 3, false), Verdict::Fine);
        assert_eq!(d.verdict(at(t0, 43), 1, 4, false), Verdict::HeadTimeout);
    }

    #[test]
    fn idle_after_the_idle_timeout() {
        let (mut d, t0) = clock();
        assert_eq!(d.verdict(at(t0, 1), 1, 1, false), Verdict::Fine);
        assert_eq!(d.verdict(at(t0, 60), 1, 1, false), Verdict::Fine);
        assert_eq!(d.verdict(at(t0, 61), 1, 1, false), Verdict::Idle);
    }

    #[test]
    fn a_long_response_is_activity_not_a_head() {
        let (mut d, t0) = clock();
        assert_eq!(d.verdict(at(t0, 1), 1, 1, false), Verdict::Fine);
        // The client only reads a long response for 5 minutes.
        for i in 2..300 {
            d.wrote(at(t0, i), i);
            assert_eq!(d.verdict(at(t0, i), 1, 1, false), Verdict::Fine);
        }
        assert_eq!(d.verdict(at(t0, 360), 1, 1, false), Verdict::Idle);
    }

    #[test]
    fn busy_connections_are_never_closed() {
        let (mut d, t0) = clock();
        for i in 1..1000 {
            assert_eq!(d.verdict(at(t0, i), i, i, false), Verdict::Fine);
        }
    }

    #[test]
    fn http2_frames_are_activity_not_heads() {
        let (mut d, t0) = clock();
        assert_eq!(d.verdict(at(t0, 1), 1, 1, true), Verdict::Fine);
        for i in 2..100 {
            // PINGs every second: no new request, but not a stalled head either.
            assert_eq!(d.verdict(at(t0, i), 1, i, true), Verdict::Fine);
        }
        assert_eq!(d.verdict(at(t0, 160), 1, 99, true), Verdict::Idle);
    }
}
