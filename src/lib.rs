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
//!   handshake), wraps the socket in a read counter sampled by the watchdog
//!   thread, and hands it to hyper-util's auto builder with a `service_fn`
//!   that calls [`App::handle`].
//! * [`app`] is the one entry point: it checks the head against [`head`]'s
//!   limits (and the path against `path`'s rule: no dot segments or escaped
//!   separators, in every mode), matches `(method, path)` in [`routes`]' one table, and for a
//!   protected route asks the [`guard`]: the failed-credential [`throttle`],
//!   then the [`keys`] (SHA-256, one map probe, constant-time equality).
//! * [`responses`] supplies the prebuilt 200 or 401: bodies and header values
//!   are built once at start-up; [`metrics`] records the request (an index and
//!   an atomic increment) and the access log gets one event.
//!
//! Around them: [`config`] turns flags, environment and key files into a
//! validated [`Config`]; [`reload`] swaps keys (and certificates) on SIGHUP or
//! a file change; [`shutdown`] counts SIGINT/SIGTERM; [`lifecycle`] is the
//! phase `/readyz` and the drain share; the binary (`src/main.rs`) only wires
//! these together.

pub mod app;
pub mod client;
pub mod config;
pub mod forward_auth;
pub mod gateway;
pub mod guard;
pub mod head;
pub mod keys;
pub mod lifecycle;
pub mod metrics;
pub mod openapi;
mod path;
pub mod reload;
pub mod responses;
pub mod routes;
pub mod server;
pub mod shutdown;
pub mod throttle;
pub mod tls;

pub use app::{App, AppConfig};
pub use config::{Args, Config, ConfigError};
pub use keys::{Digest, KeySet};
pub use server::{Limits, Server, Stopped, serve};
