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
//!   thread, peeks at the first bytes to pick hyper's HTTP/1 server or
//!   hyper-util's auto builder, and serves the connection with a `service_fn`
//!   that calls [`App::handle`].
//! * `app` is the one entry point: it checks the head against `head`'s limits
//!   (and the path against `path`'s rule: no dot segments or escaped
//!   separators, in every mode), matches `(method, path)` in `routes`' one
//!   table, and for a protected route asks the `guard`: the failed-credential
//!   [`throttle`], then the [`keys`] (SHA-256, one map probe, constant-time
//!   equality). `/auth/verify` reads the original request (`forward_auth`).
//! * `responses` supplies the prebuilt 200 or 401: bodies and header values
//!   are built once at start-up; `app`'s one recording path counts the
//!   request in `metrics` and writes its access-log line.
//!
//! In gateway mode ([`gateway`]) the main listener's service is the
//! application and the gateway together: tokengate's own routes, head
//! problems and denials are answered as above, everything else goes to the
//! upstream.
//!
//! Around them: [`config`] turns flags, environment and key files into a
//! validated [`Config`]; [`reload`] swaps keys (and certificates) on SIGHUP or
//! a file change; [`shutdown`] counts SIGINT/SIGTERM; `lifecycle` is the
//! phase `/readyz` and the drain share; the binary (`src/main.rs`) only wires
//! these together. Modules outside this list are private to the crate, so
//! the compiler reports what no path uses.

mod app;
mod client;
pub mod config;
mod cors;
mod forward_auth;
pub mod gateway;
mod grpc;
mod guard;
mod head;
pub mod keys;
mod lifecycle;
mod limits;
mod metrics;
mod openapi;
mod path;
pub mod reload;
mod responses;
mod routes;
pub mod server;
pub mod shutdown;
pub mod throttle;
pub mod tls;

pub use app::{App, AppConfig};
pub use client::TrustedProxies;
pub use config::{Args, Config, ConfigError};
pub use keys::{Digest, KeySet};
pub use metrics::DroppedSource;
pub use responses::Realm;
pub use routes::{ROUTES, normalize};
pub use server::{Limits, Server, Stopped, serve};
