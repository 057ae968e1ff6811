//! Gateway mode (`--upstream`): tokengate in front of one HTTP service,
//! checking keys and passing requests on. The gateway listener's service
//! (`app::GatewayService`) decides
//! (tokengate's own routes, head problems and denials are answered here);
//! what passes goes through:
//!
//! * `headers` — header hygiene: hop-by-hop fields stripped first (with
//!   every field `Connection` names), then tokengate's own fields set, so a
//!   client cannot remove them (golang/go#50580); the credential and a
//!   client-sent `x-auth-key-label` never reach the upstream.
//! * `upstream` — the `--upstream` URL, and the target the upstream gets:
//!   its path prefix, then the client's path and query byte for byte.
//! * `proxy` — one request upstream and its response back, bodies
//!   streamed, upgrades passed through, 502/504; rustls with the webpki
//!   roots and `--upstream-ca` for `https://` upstreams.
//! * `sending` — a request on its way, until the response head or
//!   `--upstream-timeout`.
//! * `pool` — the HTTP/1.1 keep-alive client: a pool shared by all client
//!   connections, each upstream connection driven by the task of the request
//!   using it (`--upstream-http2` uses hyper-util's legacy client).
//! * `lease` — a pooled connection on loan to a request, driven by the
//!   response body while it streams, back to the pool when the body is dropped.
//! * `upgrade` — which upgrades pass, and which 101 opens a tunnel.
//! * `trailers` — request trailers are dropped.
//! * `tunnels` — upgraded connections, counted so the drain waits for them
//!   and closes them at its deadline.

pub(crate) mod headers;
pub(crate) mod lease;
pub(crate) mod pool;
pub(crate) mod proxy;
pub(crate) mod sending;
pub(crate) mod trailers;
pub(crate) mod tunnels;
pub(crate) mod upgrade;
pub(crate) mod upstream;

pub use upstream::{Upstream, UpstreamError};

use std::path::Path;
use std::time::Duration;

use http::HeaderValue;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::keys::Scope;
use upgrade::Upgrades;

/// The validated gateway settings (`--upstream` and its companions).
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// `--upstream`.
    pub upstream: Upstream,
    /// `--upstream-host`: the `Host` the upstream gets instead of the client's.
    pub upstream_host: Option<HeaderValue>,
    /// `--upstream-timeout`: the wait for the upstream's response head.
    pub timeout: Duration,
    /// `--upstream-ca`: more trusted roots for an `https://` upstream.
    pub ca: Vec<CertificateDer<'static>>,
    /// `--upstream-http2`.
    pub http2: bool,
    /// `--public [METHODS:]PATTERN`: paths passed on without a key.
    pub public: Vec<Scope>,
    /// `--upgrade-protocols`: what a client may upgrade to (default `websocket`).
    pub upgrades: Upgrades,
    /// `--allow-underscore-headers`: request fields named with `_` pass.
    pub underscore_headers: bool,
    /// `--allowed-hosts`, lower case: the only hosts passed on (`None`: any).
    pub allowed_hosts: Option<Vec<String>>,
    /// How long a pooled HTTP/1.1 connection must have been idle for an
    /// idempotent request without a body sent on it to keep a copy of its
    /// head, to be sent again if the upstream closes it unanswered
    /// (`pool::RESEND_IF_IDLE`; no flag: tests set it).
    pub resend_if_idle: std::time::Duration,
}

impl GatewayConfig {
    /// The settings for `upstream` with every companion flag at its default
    /// (`--upstream-timeout 30s`, the client's `Host`, the webpki roots,
    /// HTTP/1.1, no `--public` paths).
    pub fn new(upstream: Upstream) -> Self {
        GatewayConfig {
            upstream,
            upstream_host: None,
            timeout: Duration::from_secs(30),
            ca: Vec::new(),
            http2: false,
            public: Vec::new(),
            upgrades: Upgrades::default(),
            underscore_headers: false,
            allowed_hosts: None,
            resend_if_idle: pool::RESEND_IF_IDLE,
        }
    }
}

/// Why `--upstream-ca` cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("--upstream-ca {path}: {problem}")]
pub struct CaError {
    /// The file.
    pub path: String,
    /// What is wrong.
    pub problem: String,
}

/// Reads the PEM certificates of `--upstream-ca`.
pub fn load_ca(path: &Path) -> Result<Vec<CertificateDer<'static>>, CaError> {
    let err = |problem: String| CaError {
        path: path.display().to_string(),
        problem,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate in the file".to_owned()));
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in &certs {
        roots
            .add(cert.clone())
            .map_err(|e| err(format!("not a usable CA certificate ({e})")))?;
    }
    Ok(certs)
}

/// Parses `--public [METHODS:]PATTERN` (methods default to every method).
pub fn parse_public(rule: &str) -> Result<Scope, crate::keys::ScopeProblem> {
    if rule.starts_with('/') {
        Scope::parse(&format!("*:{rule}"))
    } else {
        Scope::parse(rule)
    }
}
