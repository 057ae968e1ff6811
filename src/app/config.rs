//! [`AppConfig`]: the application's settings that are not keys.

use http::{HeaderName, StatusCode};

use crate::client::TrustedProxies;
use crate::forward_auth;
use crate::gateway::GatewayConfig;
use crate::head;
use crate::limits::StoreConfig;
use crate::responses::Realm;
use crate::throttle::ThrottleConfig;

/// Settings of the application that are not keys.
#[derive(Clone, Debug)]
pub struct AppConfig {
    /// The header that carries the token (default `x-token`).
    pub token_header: HeaderName,
    /// The realm in `WWW-Authenticate` (default `tokengate`).
    pub realm: Realm,
    /// Most bytes of header fields (name + value + 4 each) in a request (431 past it).
    pub max_header_bytes: usize,
    /// The failed-credential limit; `None` disables throttling.
    pub throttle: Option<ThrottleConfig>,
    /// Serve `/metrics` without a key.
    pub metrics_public: bool,
    /// Emit one `tokengate::access` event per request.
    pub access_log: bool,
    /// Record metrics and serve `/metrics` (`--metrics off` turns both off).
    pub metrics: bool,
    /// `--trusted-proxies`: peers whose `X-Forwarded-For`/`X-Real-IP` are believed.
    pub trusted_proxies: TrustedProxies,
    /// `--forward-auth-throttle-status`: 403 (default) or 429.
    pub forward_auth_throttle_status: StatusCode,
    /// `--forward-auth-headers`: which fields describe the original request.
    pub forward_auth_dialect: forward_auth::Dialect,
    /// Serve `/openapi.json` (`--openapi off` removes it).
    pub openapi: bool,
    /// Gateway mode (`--upstream`): pass requests on to this service.
    pub gateway: Option<GatewayConfig>,
    /// Where the `rate=` and `quota=` counters live (`--limits-store`).
    pub limits_store: StoreConfig,
    /// Gateway mode with `--admin-listen`: tokengate's own routes are served
    /// on that listener only, and the main listener passes every path on.
    pub admin_listener: bool,
    /// `--grpc on`: serve gRPC (Check, ShouldRateLimit, Health), and how
    /// long a call without a `grpc-timeout` may take (`--header-read-timeout`).
    pub grpc: Option<std::time::Duration>,
    /// `--expiry-notice`: answers to a key expiring within it carry `Sunset`.
    pub expiry_notice: std::time::Duration,
    /// `--cors-origin`: pages from these origins may call from a browser.
    pub cors: Option<crate::cors::CorsConfig>,
}

impl Default for AppConfig {
    fn default() -> Self {
        AppConfig {
            token_header: HeaderName::from_static("x-token"),
            realm: Realm::default(),
            max_header_bytes: head::DEFAULT_MAX_HEADER_BYTES,
            throttle: Some(ThrottleConfig::default()),
            metrics_public: false,
            access_log: false,
            metrics: true,
            trusted_proxies: TrustedProxies::default(),
            forward_auth_throttle_status: StatusCode::FORBIDDEN,
            forward_auth_dialect: forward_auth::Dialect::Auto,
            openapi: true,
            gateway: None,
            limits_store: StoreConfig::memory(),
            admin_listener: false,
            grpc: Some(std::time::Duration::from_secs(10)),
            expiry_notice: std::time::Duration::from_secs(7 * 86_400),
            cors: None,
        }
    }
}
