//! SIGINT and SIGTERM, installed before the server is announced.
//!
//! Kubernetes and systemd send SIGTERM to stop a service; Ctrl-C sends
//! SIGINT. The first of either begins the graceful shutdown; a second one ends
//! the drain at once (an operator's second Ctrl-C must not wait out the
//! shutdown delay and the drain).
//!
//! The handlers are registered when [`Signals::install`] returns — not when a
//! future is first polled — so a signal that arrives while the server starts
//! is never lost, and never kills the process with the default action.

use std::future::Future;

use tokio::sync::watch;
use tracing::info;

/// The process's stop signals, counted.
#[derive(Debug, Clone)]
pub struct Signals {
    received: watch::Receiver<u32>,
}

impl Signals {
    /// Registers the SIGINT and SIGTERM handlers now. Must be called inside a
    /// Tokio runtime.
    pub fn install() -> std::io::Result<Self> {
        let (tx, rx) = watch::channel(0u32);
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let mut term = signal(SignalKind::terminate())?;
            let mut int = signal(SignalKind::interrupt())?;
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        Some(()) = term.recv() => info!("SIGTERM received"),
                        Some(()) = int.recv() => info!("SIGINT received"),
                        else => return,
                    }
                    tx.send_modify(|n| *n += 1);
                }
            });
        }
        #[cfg(not(unix))]
        tokio::spawn(async move {
            while tokio::signal::ctrl_c().await.is_ok() {
                info!("SIGINT received");
                tx.send_modify(|n| *n += 1);
            }
        });
        Ok(Signals { received: rx })
    }

    /// Completes at the first stop signal: begin the graceful shutdown.
    pub fn first(&self) -> impl Future<Output = ()> + Send + 'static {
        self.nth(1)
    }

    /// Completes at the second stop signal: stop draining, exit now.
    pub fn second(&self) -> impl Future<Output = ()> + Send + 'static {
        self.nth(2)
    }

    fn nth(&self, n: u32) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.received.clone();
        async move {
            if rx.wait_for(|&count| count >= n).await.is_err() {
                // The counting task is gone (the runtime is shutting down):
                // nothing will ever arrive.
                std::future::pending::<()>().await;
            }
        }
    }
}
