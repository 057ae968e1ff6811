//! The server's phase, shared by `/readyz` and the connection drain: one
//! state instead of a "draining" flag in each.

use std::sync::atomic::{AtomicU8, Ordering::Relaxed};

/// Where the server is in its life. Phases only move forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Phase {
    /// Accepting and ready.
    Serving = 0,
    /// The shutdown signal arrived: `/readyz` answers 503, but connections are
    /// still accepted and served normally for `--shutdown-delay`.
    Stopping = 1,
    /// Accepting has stopped; every connection is told to finish.
    Draining = 2,
}

/// The current [`Phase`], readable from any thread.
#[derive(Debug, Default)]
pub struct Lifecycle(AtomicU8);

impl Lifecycle {
    /// The current phase.
    #[inline]
    pub fn phase(&self) -> Phase {
        match self.0.load(Relaxed) {
            0 => Phase::Serving,
            1 => Phase::Stopping,
            _ => Phase::Draining,
        }
    }

    /// Moves to `phase`, unless the server is already past it.
    pub fn advance(&self, phase: Phase) {
        self.0.fetch_max(phase as u8, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_only_move_forward() {
        let l = Lifecycle::default();
        assert_eq!(l.phase(), Phase::Serving);
        l.advance(Phase::Draining);
        l.advance(Phase::Stopping);
        assert_eq!(l.phase(), Phase::Draining);
    }
}
