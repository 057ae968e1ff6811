//! tokengate: a low-overhead, token-protected HTTP server on bare hyper.
//!
//! It serves the FastAPI "protected routes" contract byte for byte —
//! `GET /public` for anyone, `GET /protected` only with a configured key in
//! `X-Token` (or `Authorization: Bearer`) — over HTTP/1.1 and h2c on one port.
//!
//! # Layout
//!
//! One request, `GET /protected` with `X-Token`:
//!
//! * [`server`] accepts (taking a connection permit; with [`tls`], after a TLS
//!   handshake), wraps the socket in a read counter watched by the watchdog
//!   thread, and hands it to hyper-util's auto builder with a `service_fn`
//!   that calls [`App::handle`].
//! * [`routes`] matches `(method, path)` in its one route table; the guard
//!   consults [`throttle`] (failed-credential limit), then
//! * [`auth`] checks the credential against the key set: SHA-256, one map
//!   probe, constant-time equality.
//! * [`responses`] supplies the prebuilt 200 or 401: bodies and header values
//!   are built once at start-up; [`metrics`] records the request (an index and
//!   an atomic increment).
//!
//! Around them: [`config`] turns flags, environment and key files into a
//! validated [`Config`]; [`reload`] swaps keys (and certificates) on SIGHUP or
//! a file change; [`shutdown`] resolves on SIGINT/SIGTERM; the binary
//! (`src/main.rs`) only wires these together.

pub mod auth;
pub mod config;
pub mod metrics;
pub mod reload;
pub mod responses;
pub mod routes;
pub mod server;
pub mod shutdown;
pub mod throttle;
pub mod tls;

pub use auth::{Digest, KeySet, Outcome};
pub use config::{Args, Config, ConfigError};
pub use routes::{App, AppConfig};
pub use server::{Limits, serve, serve_with};
