//! The command line: every flag, its environment variable and its default
//! (clap). [`super::Config::from_args`] turns these raw values into a
//! validated configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

/// tokengate: a low-overhead, token-protected HTTP server.
#[derive(Parser, Debug, Clone)]
#[command(name = "tokengate", version, about, long_about = None)]
pub struct Args {
    /// A subcommand; without one, the server runs.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Address to listen on (IPv4 or IPv6; port 0 picks a free port).
    #[arg(
        long,
        env = "TOKENGATE_LISTEN",
        default_value = "127.0.0.1:8000",
        value_name = "ADDR"
    )]
    pub listen: SocketAddr,

    /// Key file: one key per line, `TOKEN` or `sha256:<64 hex>`, optionally
    /// followed by whitespace and a label; `#` comments and blank lines ignored.
    #[arg(long, env = "TOKENGATE_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,

    /// Header that carries the token (`Authorization: Bearer` is also accepted).
    #[arg(
        long,
        env = "TOKENGATE_TOKEN_HEADER",
        default_value = "X-Token",
        value_name = "NAME"
    )]
    pub token_header: String,

    /// Realm named in the `WWW-Authenticate` challenge of a 401.
    #[arg(
        long,
        env = "TOKENGATE_REALM",
        default_value = "tokengate",
        value_name = "REALM"
    )]
    pub realm: String,

    /// How long in-flight requests may take to finish after SIGINT/SIGTERM.
    #[arg(long, env = "TOKENGATE_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub shutdown_timeout: Duration,

    /// Most connections served at once; past it, new ones wait in the kernel backlog.
    #[arg(long, env = "TOKENGATE_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000), value_name = "N")]
    pub max_connections: u32,

    /// Worker threads (default: the CPUs this process may use). With 1, every
    /// connection runs on one thread (tokio's current-thread scheduler: no
    /// work stealing, no cross-thread wake-ups).
    #[arg(long, env = "TOKENGATE_WORKERS", value_parser = clap::value_parser!(u16).range(1..=1024), value_name = "N")]
    pub workers: Option<u16>,

    /// Time allowed from accept (or the first byte of a request) to a complete request head.
    #[arg(long, env = "TOKENGATE_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub header_read_timeout: Duration,

    /// An idle keep-alive connection (no request in progress) is closed after this long.
    #[arg(long, env = "TOKENGATE_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration, value_name = "DURATION")]
    pub idle_timeout: Duration,

    /// Most bytes of request header fields (name + value + 4 each); 431 past it.
    #[arg(long, env = "TOKENGATE_MAX_HEADER_BYTES", default_value_t = 16 * 1024, value_parser = clap::value_parser!(u32).range(1024..=1024 * 1024), value_name = "BYTES")]
    pub max_header_bytes: u32,

    /// Failed credential checks allowed per client address: `N/s`, `N/m`, `N/h`, or `off`.
    #[arg(
        long,
        env = "TOKENGATE_AUTH_FAILURE_LIMIT",
        default_value = "10/s",
        value_name = "RATE"
    )]
    pub auth_failure_limit: String,

    /// Failed credential checks allowed in a burst before the rate applies.
    #[arg(long, env = "TOKENGATE_AUTH_FAILURE_BURST", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1_000_000), value_name = "N")]
    pub auth_failure_burst: u32,

    /// After SIGINT/SIGTERM, keep accepting this long while /readyz answers 503.
    #[arg(long, env = "TOKENGATE_SHUTDOWN_DELAY", default_value = "0s", value_parser = parse_duration_or_zero, value_name = "DURATION")]
    pub shutdown_delay: Duration,

    /// Serve /metrics without a key.
    #[arg(long, env = "TOKENGATE_METRICS_PUBLIC")]
    pub metrics_public: bool,

    /// Record metrics and serve /metrics: on or off.
    #[arg(long, env = "TOKENGATE_METRICS", value_enum, default_value_t = Switch::On)]
    pub metrics: Switch,

    /// Gateway mode: pass every request that is not tokengate's own on to this
    /// service (http:// or https://, with an optional path prefix).
    #[arg(long, env = "TOKENGATE_UPSTREAM", value_name = "URL")]
    pub upstream: Option<String>,

    /// Gateway mode: the Host the upstream gets (default: the client's).
    #[arg(
        long,
        env = "TOKENGATE_UPSTREAM_HOST",
        value_name = "HOST",
        requires = "upstream"
    )]
    pub upstream_host: Option<String>,

    /// Gateway mode: how long to wait for the upstream's response head (504 past it).
    #[arg(long, env = "TOKENGATE_UPSTREAM_TIMEOUT", default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub upstream_timeout: Duration,

    /// Gateway mode: PEM CA certificate(s) trusted for an https:// upstream, besides the webpki roots.
    #[arg(
        long,
        env = "TOKENGATE_UPSTREAM_CA",
        value_name = "PEM",
        requires = "upstream"
    )]
    pub upstream_ca: Option<PathBuf>,

    /// Gateway mode: speak HTTP/2 to the upstream (ALPN over TLS, prior knowledge over cleartext).
    #[arg(long, env = "TOKENGATE_UPSTREAM_HTTP2", requires = "upstream")]
    pub upstream_http2: bool,

    /// Gateway mode: serve /healthz, /readyz, /metrics, /auth/verify and /openapi.json on this
    /// address only, and pass every path of the main listener on to the upstream.
    #[arg(
        long,
        env = "TOKENGATE_ADMIN_LISTEN",
        value_name = "ADDR",
        requires = "upstream"
    )]
    pub admin_listen: Option<SocketAddr>,

    /// Gateway mode: a path passed on without a key, `[METHODS:]PATTERN` (repeatable).
    #[arg(
        long = "public",
        env = "TOKENGATE_PUBLIC",
        value_delimiter = ' ',
        value_name = "RULE",
        requires = "upstream"
    )]
    pub public: Vec<String>,

    /// Gateway mode: the protocols a client may upgrade to, comma-separated, or none; h2c is refused.
    #[arg(
        long,
        env = "TOKENGATE_UPGRADE_PROTOCOLS",
        default_value = "websocket",
        value_name = "PROTOCOLS"
    )]
    pub upgrade_protocols: String,

    /// Gateway mode: pass request fields whose name holds `_` (stripped by default: CGI, WSGI and
    /// Rack read `X_Auth_Key_Label` as `X-Auth-Key-Label`).
    #[arg(
        long,
        env = "TOKENGATE_ALLOW_UNDERSCORE_HEADERS",
        requires = "upstream"
    )]
    pub allow_underscore_headers: bool,

    /// Gateway mode: the only hosts (Host / :authority, with the port if one is sent) passed on,
    /// comma-separated; another host is a 400.
    #[arg(
        long,
        env = "TOKENGATE_ALLOWED_HOSTS",
        value_name = "HOSTS",
        requires = "upstream"
    )]
    pub allowed_hosts: Option<String>,

    /// Serve the OpenAPI document at /openapi.json: on or off.
    #[arg(long, env = "TOKENGATE_OPENAPI", value_enum, default_value_t = Switch::On)]
    pub openapi: Switch,

    /// Answers to a key that expires within this carry `Sunset: <its expiry>` (RFC 8594); 0 turns it off.
    #[arg(long, env = "TOKENGATE_EXPIRY_NOTICE", default_value = "7d", value_parser = parse_duration_or_zero, value_name = "DURATION")]
    pub expiry_notice: Duration,

    /// A page from this origin (`scheme://host[:port]`, or `*`) may call tokengate from a browser:
    /// preflights answered without a key, answers readable by the page. Repeatable; the
    /// variable takes several separated by spaces.
    #[arg(long, env = "TOKENGATE_CORS_ORIGIN", value_name = "ORIGIN")]
    pub cors_origin: Vec<String>,

    /// How long a browser may cache a preflight's answer, in seconds.
    #[arg(
        long,
        env = "TOKENGATE_CORS_MAX_AGE",
        default_value_t = 600,
        value_name = "SECONDS"
    )]
    pub cors_max_age: u32,

    /// Serve gRPC on the HTTP/2 listener (Envoy's ext_authz Check, its
    /// rate-limit service, gRPC health; on --admin-listen in gateway mode): on or off.
    #[arg(long, env = "TOKENGATE_GRPC", value_enum, default_value_t = Switch::On)]
    pub grpc: Switch,

    /// Write one access-log line per request to stdout.
    #[arg(long, env = "TOKENGATE_ACCESS_LOG")]
    pub access_log: bool,

    /// Format of every log line: text or json.
    #[arg(long, env = "TOKENGATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Reload the token file when it changes (also on SIGHUP, always).
    #[arg(long, env = "TOKENGATE_WATCH_TOKEN_FILE")]
    pub watch_token_file: bool,

    /// Bind with SO_REUSEPORT, so a new process can take the port before the old one drains.
    #[arg(long, env = "TOKENGATE_REUSE_PORT")]
    pub reuse_port: bool,

    /// Serve HTTPS with this PEM certificate chain (with --tls-key); reloaded on SIGHUP.
    #[arg(
        long,
        env = "TOKENGATE_TLS_CERT",
        value_name = "PEM",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// Proxies whose --client-address-header is believed: CIDR[,CIDR…] (default none).
    #[arg(
        long,
        env = "TOKENGATE_TRUSTED_PROXIES",
        default_value = "",
        value_name = "CIDRS"
    )]
    pub trusted_proxies: String,

    /// The one field a trusted proxy's client address is read from (no fallback to another).
    #[arg(
        long,
        env = "TOKENGATE_CLIENT_ADDRESS_HEADER",
        value_enum,
        default_value_t = ClientAddressHeader::XForwardedFor
    )]
    pub client_address_header: ClientAddressHeader,

    /// Status of a throttled /auth/verify answer: 403 (nginx turns others into 500) or 429.
    #[arg(
        long,
        env = "TOKENGATE_FORWARD_AUTH_THROTTLE_STATUS",
        value_enum,
        default_value_t = ThrottleStatus::Forbidden
    )]
    pub forward_auth_throttle_status: ThrottleStatus,

    /// Which proxy's fields describe the request /auth/verify decides on; auto reads any one and
    /// refuses a request that carries two descriptions.
    #[arg(
        long,
        env = "TOKENGATE_FORWARD_AUTH_HEADERS",
        value_enum,
        default_value_t = ForwardAuthHeaders::Auto
    )]
    pub forward_auth_headers: ForwardAuthHeaders,

    /// Where the rate= and quota= counters live: memory (this process; lost on restart) or
    /// `redis://[user:password@]host:port[/db]` (also `rediss://`, `redis+unix:///path`), shared by
    /// every replica.
    #[arg(
        long,
        env = "TOKENGATE_LIMITS_STORE",
        default_value = "memory",
        hide_env_values = true,
        value_name = "memory|URL"
    )]
    pub limits_store: String,

    /// Prefix of the store's keys (one hash per owner, in one Redis Cluster hash slot).
    #[arg(
        long,
        env = "TOKENGATE_LIMITS_STORE_PREFIX",
        default_value = "tokengate:"
    )]
    pub limits_store_prefix: String,

    /// Longest wait for the store per request; past it the store counts as down until a probe
    /// succeeds.
    #[arg(long, env = "TOKENGATE_LIMITS_STORE_TIMEOUT", default_value = "50ms", value_parser = parse_duration, value_name = "DURATION")]
    pub limits_store_timeout: Duration,

    /// While the store is down: local (per-process counters), open (admit) or closed (503).
    #[arg(
        long,
        env = "TOKENGATE_LIMITS_STORE_FAILURE",
        value_enum,
        default_value_t = StoreFailure::Local
    )]
    pub limits_store_failure: StoreFailure,

    /// The PEM private key for --tls-cert.
    #[arg(
        long,
        env = "TOKENGATE_TLS_KEY",
        value_name = "PEM",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
}

/// Like [`parse_duration`], but zero is allowed.
pub fn parse_duration_or_zero(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{e} (write durations like 10s, 500ms or 2m)"))
}

/// Subcommands.
#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Read a token on stdin and print its `sha256:` key-file line.
    HashToken,
    /// Generate a key: prints the key, then its key-file line (the digest
    /// and the attributes, never the key), e.g. `tokengate keygen --label ci | tail -1 >> keys`.
    Keygen(Keygen),
    /// Check a key file (--token-file) and list its keys: label, owner,
    /// scopes, limits, expiry, flags; never a secret. Exit 2 naming the line
    /// if the file is wrong.
    Keys {
        /// The key file.
        #[arg(long, value_name = "PATH")]
        token_file: PathBuf,
    },
}

/// `tokengate keygen`'s attributes (the key file's, same rules).
#[derive(clap::Args, Debug, Clone, PartialEq, Eq, Default)]
pub struct Keygen {
    /// The key's label.
    #[arg(long)]
    pub label: Option<String>,
    /// `owner=`: keys of one owner share their limits' counters.
    #[arg(long)]
    pub owner: Option<String>,
    /// `scope=METHODS:PATH` (repeatable).
    #[arg(long = "scope")]
    pub scopes: Vec<String>,
    /// `expires=` (RFC 3339 UTC, e.g. 2027-01-01T00:00:00Z).
    #[arg(long)]
    pub expires: Option<String>,
    /// `rate=N/s|N/m|N/h`.
    #[arg(long)]
    pub rate: Option<String>,
    /// `burst=N`.
    #[arg(long)]
    pub burst: Option<String>,
    /// `quota=N/hour|N/day|N/month`.
    #[arg(long)]
    pub quota: Option<String>,
    /// The flag `canary`: a key that never grants; its use is logged and counted.
    #[arg(long)]
    pub canary: bool,
}

/// Parses `10s`, `500ms`, `2m`, … (humantime); zero is refused.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration_or_zero(s)?;
    if d.is_zero() {
        return Err("must be greater than zero".to_owned());
    }
    Ok(d)
}

/// `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

use crate::limits::Failure as StoreFailure;

/// `--forward-auth-throttle-status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ThrottleStatus {
    /// 403: every proxy relays it (nginx turns other statuses into 500).
    #[value(name = "403")]
    Forbidden,
    /// 429: for proxies that relay it.
    #[value(name = "429")]
    TooManyRequests,
}

/// `--client-address-header`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ClientAddressHeader {
    /// `X-Forwarded-For`, read right to left past trusted proxies.
    #[value(name = "x-forwarded-for")]
    XForwardedFor,
    /// `X-Real-IP`: one address.
    #[value(name = "x-real-ip")]
    XRealIp,
}

/// `--forward-auth-headers`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ForwardAuthHeaders {
    /// Any one description; two of them: 403 `bad-original-request`.
    Auto,
    /// `X-Original-Method` and `X-Original-URI` (the shipped nginx.conf).
    Nginx,
    /// `X-Original-Method` and `X-Original-URI` (the shipped haproxy.cfg).
    Haproxy,
    /// `X-Forwarded-Method` and `X-Forwarded-Uri`.
    Traefik,
    /// `X-Forwarded-Method` and `X-Forwarded-Uri`.
    Caddy,
    /// The request's method and the path after `/auth/verify`.
    Envoy,
}

/// An `on|off` flag value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}
