//! [`Server::serve`]: the accept loop, the connection cap and the graceful
//! drain with a deadline. One file per concern beside it:
//!
//! * `accept` — accept errors never end the server;
//! * `conn` — one connection: TLS handshake, the protocol (a peek at the first
//!   bytes: hyper's HTTP/1 server, or hyper-util's auto builder for h2c) and
//!   the service;
//! * `drive` — a connection under the watchdog's commands (graceful shutdown,
//!   abort) and, standalone, its HTTP/2 streams;
//! * `watchdog` — the thread that samples every connection, and the table of
//!   live connections it samples;
//! * `deadlines` — one connection's head and idle clock;
//! * `io` — the socket wrapper that counts reads.
//!
//! # Time limits on a connection
//!
//! hyper-util's auto builder reads the protocol preface with no timer at all
//! (hyper issue #3756), and hyper's own `header_read_timeout` also runs while a
//! keep-alive connection is idle, so it cannot be combined with a longer idle
//! timeout. tokengate enforces both limits itself, with no timer work per
//! request: the socket wrapper counts reads, the service counts requests, and
//! one watchdog thread per server samples both for every connection every
//! quarter of the shorter limit.
//!
//! * **Request heads** — a head is in progress from accept until the first
//!   request (the TLS handshake and the protocol peek included), and on HTTP/1
//!   whenever bytes arrive with no new complete head. One still in progress
//!   `header_read_timeout` after it began is dropped without a response. This
//!   covers TLS, protocol detection, the HTTP/2 preface and slowloris
//!   dripping; the limit is
//!   enforced within 1.25× of it for the first head (measured from accept) and
//!   1.5× for later ones (detection waits for a tick).
//! * **Idleness** — no reads and no requests for `idle_timeout`: the connection
//!   is shut down gracefully (HTTP/1 closes, HTTP/2 gets GOAWAY); if it has not
//!   finished one tick later (a client that does not read), it is dropped.

mod accept;
mod conn;
mod deadlines;
mod drive;
mod io;
mod service;
mod streams;
mod watchdog;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{info, warn};

pub use conn::{
    H2_MAX_CONCURRENT_STREAMS, H2_MAX_LOCAL_ERROR_RESET_STREAMS,
    H2_MAX_PENDING_ACCEPT_RESET_STREAMS, hard_head_limit,
};

use crate::app::App;
use crate::lifecycle::Phase;
use crate::tls::Tls;
use accept::AcceptErrors;
use conn::{Connection, Context};
use watchdog::ConnectionTable;

/// Limits on what clients may hold; see the README's configuration table.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Most connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Time from accept (or the first byte of a later request) to a complete head.
    pub header_read_timeout: Duration,
    /// A connection with no reads and no requests for this long is closed.
    pub idle_timeout: Duration,
    /// How long the drain may take after shutdown begins.
    pub shutdown_timeout: Duration,
    /// After the shutdown signal, keep accepting this long while `/readyz`
    /// already answers 503, so load balancers stop sending first.
    pub shutdown_delay: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(10),
            shutdown_delay: Duration::ZERO,
        }
    }
}

/// How [`Server::serve`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// Every connection finished within `--shutdown-timeout`.
    Drained,
    /// The drain deadline passed; this many connections were dropped.
    DeadlineReached(usize),
    /// A second stop signal ended the delay or drain; this many connections
    /// were dropped.
    Forced(usize),
}

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A server: the application, its limits and, optionally, TLS.
pub struct Server {
    app: Arc<App>,
    limits: Limits,
    tls: Option<Arc<Tls>>,
    force: BoxFuture,
    admin: bool,
}

impl Server {
    /// A cleartext server (HTTP/1.1 and h2c on one port).
    pub fn new(app: Arc<App>, limits: Limits) -> Self {
        Server {
            app,
            limits,
            tls: None,
            force: Box::pin(std::future::pending()),
            admin: false,
        }
    }

    /// The `--admin-listen` listener of a gateway: it serves tokengate's own
    /// routes (health, readiness, metrics, forward auth, OpenAPI) and passes
    /// nothing on.
    pub fn admin(mut self) -> Self {
        self.admin = true;
        self
    }

    /// Serves HTTPS instead: each connection first completes a TLS handshake
    /// (within `--header-read-timeout` of accept), then is served exactly like
    /// a cleartext one (ALPN `h2` or `http/1.1`).
    pub fn tls(mut self, tls: Option<Arc<Tls>>) -> Self {
        self.tls = tls;
        self
    }

    /// Once shutdown has begun, `force` completing ends the shutdown delay and
    /// the drain at once (an operator's second Ctrl-C).
    pub fn force_stop_on(mut self, force: impl Future<Output = ()> + Send + 'static) -> Self {
        self.force = Box::pin(force);
        self
    }

    /// Serves on `listener` until `shutdown` completes, then drains: `/readyz`
    /// answers 503, accepting goes on for `--shutdown-delay`, the listener is
    /// closed, every connection is told to finish (HTTP/1 closes after the
    /// response in progress, HTTP/2 gets GOAWAY), and connections still open
    /// after `--shutdown-timeout` are dropped.
    pub async fn serve<F>(self, listener: TcpListener, shutdown: F) -> Stopped
    where
        F: Future<Output = ()>,
    {
        let Server {
            app,
            limits,
            tls,
            force,
            admin,
        } = self;
        let lifecycle = app.lifecycle();
        let table = Arc::new(ConnectionTable::new(limits.clone(), lifecycle.clone()));
        table.spawn_watchdog(deadlines::tick(&limits));
        let context = Arc::new(Context::new(app, table.clone(), tls, admin));
        let permits = Arc::new(Semaphore::new(limits.max_connections));
        let mut connections = JoinSet::new();
        let mut accept_errors = AcceptErrors::default();
        let mut forced = false;
        // Resolves when accepting must stop: the shutdown signal, then the
        // `--shutdown-delay` during which `/readyz` already answers 503.
        let stop = async {
            shutdown.await;
            lifecycle.advance(Phase::Stopping);
            let delay = limits.shutdown_delay;
            if !delay.is_zero() {
                info!(delay = ?delay, "shutdown signal: /readyz now answers 503; still accepting for the shutdown delay");
                tokio::time::sleep(delay).await;
            }
        };
        tokio::pin!(stop);
        // `force` completes only after the shutdown signal (a second signal).
        let mut force = force;

        loop {
            // Take a slot first: past the cap, connections wait in the kernel backlog.
            let permit = tokio::select! {
                () = &mut stop => break,
                () = &mut force => { forced = true; break }
                permit = permits.clone().acquire_owned() => {
                    permit.expect("the semaphore is never closed")
                }
            };
            let accepted = tokio::select! {
                () = &mut stop => break,
                () = &mut force => { forced = true; break }
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(ok) => ok,
                Err(e) => {
                    if let Some(pause) = accept_errors.record(&e) {
                        tokio::select! {
                            () = &mut stop => break,
                            () = tokio::time::sleep(pause) => {}
                        }
                    }
                    continue;
                }
            };
            while connections.try_join_next().is_some() {}
            Connection {
                context: context.clone(),
                peer,
                accepted: Instant::now(),
                permit: Some(permit),
            }
            .spawn(&mut connections, stream);
        }

        // From here on, new connections are told to finish at once.
        lifecycle.advance(Phase::Draining);
        if !forced {
            accept_queued(listener, &context, &permits, &mut connections);
        }
        while connections.try_join_next().is_some() {}
        if forced {
            let tunnels = context.app.gateway().map(|g| g.tunnels());
            let open_tunnels = tunnels.map_or(0, |t| t.open());
            if let Some(tunnels) = tunnels {
                tunnels.close_all();
            }
            return force_close(&mut connections, open_tunnels).await;
        }
        info!(
            open_connections = connections.len(),
            "shutting down: stopped accepting, draining connections"
        );
        table.drain(Instant::now());
        // Gateway mode: upgraded connections (tunnels) are drained too.
        let tunnels = context.app.gateway().map(|g| g.tunnels().clone());
        let drained = tokio::select! {
            drained = tokio::time::timeout(limits.shutdown_timeout, async {
                while connections.join_next().await.is_some() {}
                if let Some(tunnels) = &tunnels {
                    tunnels.all_closed().await;
                }
            }) => drained.is_ok(),
            () = &mut force => {
                let open_tunnels = tunnels.as_ref().map_or(0, |t| t.open());
                if let Some(tunnels) = &tunnels {
                    tunnels.close_all();
                }
                return force_close(&mut connections, open_tunnels).await;
            }
        };
        if drained {
            info!("shutdown complete");
            return Stopped::Drained;
        }
        let open_tunnels = tunnels.as_ref().map_or(0, |t| t.open());
        if let Some(tunnels) = &tunnels {
            tunnels.close_all();
        }
        let dropped = connections.len() + open_tunnels;
        warn!(
            dropped_connections = dropped,
            timeout = ?limits.shutdown_timeout,
            "shutdown timeout reached: dropping connections still open"
        );
        connections.shutdown().await;
        info!("shutdown complete");
        Stopped::DeadlineReached(dropped)
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then drains
/// ([`Server::serve`] without TLS or a force signal).
pub async fn serve<F>(listener: TcpListener, app: Arc<App>, limits: Limits, shutdown: F) -> Stopped
where
    F: Future<Output = ()>,
{
    Server::new(app, limits).serve(listener, shutdown).await
}

/// Connections already in the listener's queue would be reset when it closes
/// (Linux, unless net.ipv4.tcp_migrate_req=1 hands them to another
/// SO_REUSEPORT listener): accept and serve them before closing it.
fn accept_queued(
    listener: TcpListener,
    context: &Arc<Context>,
    permits: &Arc<Semaphore>,
    connections: &mut JoinSet<()>,
) {
    let Ok(std_listener) = listener.into_std() else {
        return;
    };
    let _ = std_listener.set_nonblocking(true);
    while let Ok((stream, peer)) = std_listener.accept() {
        let stream = stream
            .set_nonblocking(true)
            .and_then(|()| TcpStream::from_std(stream));
        if let Ok(stream) = stream {
            Connection {
                context: context.clone(),
                peer,
                accepted: Instant::now(),
                permit: permits.clone().try_acquire_owned().ok(),
            }
            .spawn(connections, stream);
        }
    }
}

async fn force_close(connections: &mut JoinSet<()>, open_tunnels: usize) -> Stopped {
    let dropped = connections.len() + open_tunnels;
    warn!(
        dropped_connections = dropped,
        "second stop signal: exiting now, dropping connections still open"
    );
    connections.shutdown().await;
    Stopped::Forced(dropped)
}
