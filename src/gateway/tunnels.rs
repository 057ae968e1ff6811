//! Upgraded connections (WebSocket) handed through the gateway: counted, so
//! the drain can wait for them, and closed together at the drain deadline.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use tokio::sync::{Notify, watch};

/// The open tunnels.
#[derive(Debug)]
pub(crate) struct Tunnels {
    open: AtomicUsize,
    closed: Notify,
    stop: watch::Sender<bool>,
}

impl Default for Tunnels {
    fn default() -> Self {
        Tunnels {
            open: AtomicUsize::new(0),
            closed: Notify::new(),
            stop: watch::channel(false).0,
        }
    }
}

impl Tunnels {
    /// Runs `tunnel` on its own task until it ends or [`Tunnels::close_all`].
    pub(crate) fn spawn<F>(self: &std::sync::Arc<Self>, tunnel: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.open.fetch_add(1, SeqCst);
        let me = self.clone();
        let mut stop = self.stop.subscribe();
        tokio::spawn(async move {
            tokio::select! {
                () = tunnel => {}
                _ = stop.wait_for(|stop| *stop) => {}
            }
            me.open.fetch_sub(1, SeqCst);
            me.closed.notify_waiters();
        });
    }

    /// How many tunnels are open.
    pub(crate) fn open(&self) -> usize {
        self.open.load(SeqCst)
    }

    /// Completes when no tunnel is open.
    pub(crate) async fn all_closed(&self) {
        loop {
            let closed = self.closed.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            if self.open.load(SeqCst) == 0 {
                return;
            }
            closed.await;
        }
    }

    /// Closes every tunnel (the drain deadline, or a second stop signal).
    pub(crate) fn close_all(&self) {
        self.stop.send_replace(true);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn tunnels_are_counted_and_closed() {
        let tunnels = Arc::new(Tunnels::default());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tunnels.spawn(async move {
            let _ = rx.await;
        });
        tunnels.spawn(std::future::pending());
        assert_eq!(tunnels.open(), 2);
        tx.send(()).unwrap();
        // One ends by itself, the other only when closed.
        tunnels.close_all();
        tokio::time::timeout(std::time::Duration::from_secs(10), tunnels.all_closed())
            .await
            .unwrap();
        assert_eq!(tunnels.open(), 0);
    }
}
