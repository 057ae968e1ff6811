//! Accept-error policy: accept errors never end the server.

use std::io;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, warn};

/// Per-connection errors are skipped; resource errors (EMFILE, ENFILE,
/// ENOBUFS, ENOMEM…) pause accepting briefly so the loop does not spin, and are
/// logged at most once a second (axum's `serve/listener.rs` does the same).
#[derive(Default)]
pub(super) struct AcceptErrors {
    last_log: Option<Instant>,
    suppressed: u64,
}

impl AcceptErrors {
    const PAUSE: Duration = Duration::from_millis(50);

    /// Records a failed accept; `Some(pause)` when accepting should pause.
    pub(super) fn record(&mut self, e: &io::Error) -> Option<Duration> {
        use io::ErrorKind::*;
        if matches!(
            e.kind(),
            ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted | WouldBlock
        ) {
            debug!(error = %e, "accept: connection failed before it was accepted");
            return None;
        }
        let now = Instant::now();
        match self.last_log {
            Some(t) if now.duration_since(t) < Duration::from_secs(1) => self.suppressed += 1,
            _ => {
                warn!(error = %e, suppressed = self.suppressed, "accept failed; pausing before the next accept");
                self.last_log = Some(now);
                self.suppressed = 0;
            }
        }
        Some(Self::PAUSE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_errors_pause_connection_errors_do_not() {
        let mut errors = AcceptErrors::default();
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert_eq!(errors.record(&reset), None);
        let emfile = io::Error::from_raw_os_error(24);
        assert_eq!(errors.record(&emfile), Some(AcceptErrors::PAUSE));
        assert_eq!(errors.record(&emfile), Some(AcceptErrors::PAUSE));
        assert_eq!(errors.suppressed, 1, "the second is not logged");
    }
}
