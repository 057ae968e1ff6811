//! Raw command-line arguments and environment → a validated, typed [`Config`].
//!
//! Parsing is one pure step: [`Config::from_args`] takes the parsed [`Args`]
//! and the value of `TOKENGATE_TOKEN` as inputs and reads only the key file it
//! names, so tests build configurations without touching the process
//! environment. Secrets never appear in an error message.

mod args;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::num::NonZeroU32;

use http::{HeaderName, StatusCode};

pub use args::{
    Args, ClientAddressHeader, Command, ForwardAuthHeaders, Keygen, LogFormat, Switch,
    ThrottleStatus, parse_duration, parse_duration_or_zero,
};

use crate::app::AppConfig;
use crate::client::{BadNetwork, TrustedProxies};
pub use crate::cors::{BadOrigin, CorsConfig};
use crate::forward_auth::Dialect;
use crate::gateway::upgrade::{BadProtocol, Upgrades};
use crate::gateway::upstream::{Upstream, UpstreamError};
use crate::gateway::{CaError, GatewayConfig, load_ca, parse_public};
use crate::keys::ScopeProblem;
use crate::keys::{KeyError, KeySet, KeySources};
pub use crate::limits::{Failure as StoreFailure, StoreConfig, StoreUrlError};
use crate::responses::{InvalidRealm, Realm};
use crate::server::Limits;
use crate::throttle::ThrottleConfig;

/// The validated configuration of a server run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to bind.
    pub listen: SocketAddr,
    /// The accepted keys.
    pub keys: KeySet,
    /// True when no key source was configured and the demo key is in use.
    pub demo_key: bool,
    /// Where keys come from, to reload them (SIGHUP, --watch-token-file).
    pub sources: KeySources,
    /// `--watch-token-file`.
    pub watch_token_file: bool,
    /// `--reuse-port`.
    pub reuse_port: bool,
    /// `--admin-listen`: a second listener for tokengate's own routes (gateway mode).
    pub admin_listen: Option<SocketAddr>,
    /// `--tls-cert` and `--tls-key`.
    pub tls: Option<crate::tls::TlsFiles>,
    /// Token header, realm, head limits, throttle, metrics and logging.
    pub app: AppConfig,
    /// Connection limits and timeouts.
    pub limits: Limits,
}

/// A configuration problem, reported before the server binds (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `TOKENGATE_TOKEN` or `--token-file` is unusable.
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// The token header name is not a valid header name.
    #[error("--token-header {0:?}: not a valid HTTP header name")]
    TokenHeader(String),
    /// `--auth-failure-limit` is not a rate.
    #[error("--auth-failure-limit {0}")]
    AuthFailureLimit(String),
    /// `--trusted-proxies` is not a list of networks.
    #[error("--trusted-proxies: {0}")]
    TrustedProxies(BadNetwork),
    /// `--upstream` is not a usable URL.
    #[error("--upstream {0}")]
    Upstream(UpstreamError),
    /// `--upstream-host` is not a header value.
    #[error("--upstream-host {0:?}: not a valid host")]
    UpstreamHost(String),
    /// `--upstream-ca` is unusable.
    #[error(transparent)]
    UpstreamCa(#[from] CaError),
    /// A `--public` rule is malformed.
    #[error("--public {0:?}: {1}")]
    Public(String, ScopeProblem),
    /// `--upgrade-protocols` names h2c or something that is not a protocol.
    #[error("--upgrade-protocols: {0}")]
    UpgradeProtocols(BadProtocol),
    /// An `--allowed-hosts` entry is not a host.
    #[error("--allowed-hosts {0:?}: not a host[:port]")]
    AllowedHosts(String),
    /// No key is configured where the demo key would be reachable by
    /// others: gateway mode, or a listener that is not loopback.
    #[error(
        "no key configured: set TOKENGATE_TOKEN or --token-file (the demo key 'mysecrettoken' is used only in standalone mode on a loopback address)"
    )]
    NoKey,
    /// The realm cannot go into a header.
    #[error("--realm {0:?}: {1}")]
    Realm(String, InvalidRealm),
    /// `--limits-store` is neither `memory` nor a Redis URL (never shown: it may hold a password).
    #[error("--limits-store: {0}")]
    LimitsStore(crate::limits::StoreUrlError),
    /// A `--cors-origin` that is not an origin.
    #[error("--cors-origin {0:?}: {1}")]
    CorsOrigin(String, crate::cors::BadOrigin),
}

/// The gateway settings, when `--upstream` is given.
/// `--cors-origin` (space-separated in its variable) and `--cors-max-age`.
fn cors(args: &Args) -> Result<Option<CorsConfig>, ConfigError> {
    let origins: Vec<String> = args
        .cors_origin
        .iter()
        .flat_map(|o| o.split_whitespace())
        .map(str::to_owned)
        .collect();
    if origins.is_empty() {
        return Ok(None);
    }
    let max_age = std::time::Duration::from_secs(u64::from(args.cors_max_age));
    CorsConfig::new(&origins, max_age).map(Some).map_err(|e| {
        let bad = origins
            .iter()
            .find(|o| CorsConfig::new(std::slice::from_ref(o), max_age).is_err())
            .cloned()
            .unwrap_or_default();
        ConfigError::CorsOrigin(bad, e)
    })
}

fn gateway(args: &Args) -> Result<Option<GatewayConfig>, ConfigError> {
    let Some(url) = &args.upstream else {
        return Ok(None);
    };
    let upstream = Upstream::parse(url.trim()).map_err(ConfigError::Upstream)?;
    let upstream_host = match &args.upstream_host {
        None => None,
        Some(host) => Some(
            http::HeaderValue::try_from(host.trim())
                .ok()
                .filter(|_| !host.trim().is_empty() && !host.contains(['/', ' ']))
                .ok_or_else(|| ConfigError::UpstreamHost(host.clone()))?,
        ),
    };
    let ca = match &args.upstream_ca {
        None => Vec::new(),
        Some(path) => load_ca(path)?,
    };
    let public = args
        .public
        .iter()
        .filter(|r| !r.trim().is_empty())
        .map(|r| parse_public(r.trim()).map_err(|p| ConfigError::Public(r.clone(), p)))
        .collect::<Result<_, _>>()?;
    let upgrades =
        Upgrades::parse(&args.upgrade_protocols).map_err(ConfigError::UpgradeProtocols)?;
    let allowed_hosts = match &args.allowed_hosts {
        None => None,
        Some(list) => Some(
            list.split(',')
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .map(|h| {
                    http::uri::Authority::try_from(h)
                        .ok()
                        .filter(|a| a.as_str() == h && !h.contains('@'))
                        .map(|_| h.to_ascii_lowercase())
                        .ok_or_else(|| ConfigError::AllowedHosts(h.to_owned()))
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    Ok(Some(GatewayConfig {
        upstream_host,
        timeout: args.upstream_timeout,
        ca,
        http2: args.upstream_http2,
        public,
        upgrades,
        underscore_headers: args.allow_underscore_headers,
        allowed_hosts,
        ..GatewayConfig::new(upstream)
    }))
}

/// Whether the demo key may serve: standalone, on a loopback address (so
/// `cargo run --release` serves the contract, and nothing else can reach it).
pub fn demo_allowed(listen: SocketAddr, gateway: bool) -> bool {
    !gateway && listen.ip().is_loopback()
}

impl Config {
    /// Validates parsed arguments. `env_token` is the value of `TOKENGATE_TOKEN`, if set.
    pub fn from_args(args: &Args, env_token: Option<OsString>) -> Result<Config, ConfigError> {
        let sources = KeySources::new(env_token, args.token_file.clone())?;
        let (keys, demo_key) = sources.load()?;

        let token_header = HeaderName::try_from(args.token_header.trim())
            .map_err(|_| ConfigError::TokenHeader(args.token_header.clone()))?;
        let throttle = match args.auth_failure_limit.trim() {
            "off" => None,
            rate => {
                let (failures, period) =
                    ThrottleConfig::parse_rate(rate).map_err(ConfigError::AuthFailureLimit)?;
                Some(ThrottleConfig {
                    failures,
                    period,
                    // clap's range (1..) already refused 0.
                    burst: NonZeroU32::new(args.auth_failure_burst).unwrap_or(NonZeroU32::MIN),
                    ..ThrottleConfig::default()
                })
            }
        };
        let realm =
            Realm::new(&args.realm).map_err(|e| ConfigError::Realm(args.realm.clone(), e))?;
        let gateway = gateway(args)?;
        if demo_key && !demo_allowed(args.listen, gateway.is_some()) {
            return Err(ConfigError::NoKey);
        }
        let limits_store = match args.limits_store.trim() {
            "memory" => StoreConfig {
                prefix: args.limits_store_prefix.clone(),
                ..StoreConfig::memory()
            },
            url => StoreConfig::redis(
                url,
                &args.limits_store_prefix,
                args.limits_store_timeout,
                args.limits_store_failure,
            )
            .map_err(ConfigError::LimitsStore)?,
        };
        let app = AppConfig {
            token_header,
            realm,
            max_header_bytes: args.max_header_bytes as usize,
            throttle,
            metrics_public: args.metrics_public,
            access_log: args.access_log,
            metrics: args.metrics == Switch::On,
            openapi: args.openapi == Switch::On,
            gateway,
            limits_store,
            admin_listener: args.admin_listen.is_some(),
            grpc: (args.grpc == Switch::On).then_some(args.header_read_timeout),
            expiry_notice: args.expiry_notice,
            cors: cors(args)?,
            trusted_proxies: TrustedProxies::parse(&args.trusted_proxies)
                .map_err(ConfigError::TrustedProxies)?
                .reading_real_ip(args.client_address_header == ClientAddressHeader::XRealIp),
            forward_auth_throttle_status: match args.forward_auth_throttle_status {
                ThrottleStatus::Forbidden => StatusCode::FORBIDDEN,
                ThrottleStatus::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            },
            forward_auth_dialect: match args.forward_auth_headers {
                ForwardAuthHeaders::Auto => Dialect::Auto,
                ForwardAuthHeaders::Nginx | ForwardAuthHeaders::Haproxy => Dialect::Original,
                ForwardAuthHeaders::Traefik | ForwardAuthHeaders::Caddy => Dialect::Forwarded,
                ForwardAuthHeaders::Envoy => Dialect::Path,
            },
        };
        Ok(Config {
            listen: args.listen,
            keys,
            demo_key,
            sources,
            watch_token_file: args.watch_token_file,
            reuse_port: args.reuse_port,
            admin_listen: args.admin_listen,
            tls: match (&args.tls_cert, &args.tls_key) {
                (Some(cert), Some(key)) => Some(crate::tls::TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                }),
                _ => None,
            },
            app,
            limits: Limits {
                max_connections: args.max_connections as usize,
                header_read_timeout: args.header_read_timeout,
                idle_timeout: args.idle_timeout,
                shutdown_timeout: args.shutdown_timeout,
                shutdown_delay: args.shutdown_delay,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::keys::file::{DEMO_TOKEN, TOKEN_ENV, TokenProblem, hash_token_line, parse_key_file};
    use crate::keys::{Digest, KeySource};
    use clap::Parser;
    use std::io::Write;
    use std::path::PathBuf;
    use std::time::Duration;

    fn args(extra: &[&str]) -> Args {
        let mut argv = vec!["tokengate"];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv).unwrap()
    }

    #[test]
    fn limits_store_flags() {
        let key = Some("a-long-enough-token".into());
        let c = Config::from_args(&args(&[]), key.clone()).unwrap();
        assert!(c.app.limits_store.redis.is_none());
        let c = Config::from_args(
            &args(&[
                "--limits-store",
                "redis://user:hunter2-secret@127.0.0.1:6379/2",
                "--limits-store-timeout",
                "20ms",
                "--limits-store-failure",
                "closed",
            ]),
            key.clone(),
        )
        .unwrap();
        let redis = c.app.limits_store.redis.as_ref().unwrap();
        assert_eq!(
            (redis.timeout, redis.failure),
            (Duration::from_millis(20), crate::limits::Failure::Closed)
        );
        // Debug output never shows the URL.
        assert!(!format!("{:?}", c.app.limits_store).contains("hunter2"));
        let e = Config::from_args(
            &args(&["--limits-store", "mysql://u:hunter2@h/db"]),
            key.clone(),
        )
        .unwrap_err();
        assert!(
            e.to_string().starts_with("--limits-store: not a Redis URL"),
            "{e}"
        );
        assert!(!e.to_string().contains("hunter2"), "{e}");
        // Gateway mode waits for the store too.
        let c = Config::from_args(
            &args(&[
                "--upstream",
                "http://127.0.0.1:9",
                "--limits-store",
                "redis://127.0.0.1",
            ]),
            key,
        )
        .unwrap();
        assert!(c.app.limits_store.redis.is_some());
    }

    fn temp_file(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tokengate-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::File::create(&path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        path
    }

    #[test]
    fn defaults() {
        let cfg = Config::from_args(&args(&[]), None).unwrap();
        assert_eq!(cfg.listen, "127.0.0.1:8000".parse().unwrap());
        assert!(cfg.demo_key);
        assert!(cfg.keys.verify(DEMO_TOKEN.as_bytes()).is_some());
        assert_eq!(cfg.keys.keys()[0].label(), "demo");
        assert_eq!(cfg.app.token_header, "x-token");
        assert_eq!(cfg.app.realm.as_str(), "tokengate");
        assert_eq!(cfg.limits.shutdown_timeout, Duration::from_secs(10));
        assert_eq!(cfg.limits.header_read_timeout, Duration::from_secs(10));
        assert_eq!(cfg.limits.idle_timeout, Duration::from_secs(60));
        assert_eq!(cfg.limits.max_connections, 10_000);
        assert_eq!(cfg.app.max_header_bytes, 16 * 1024);
        let t = cfg.app.throttle.unwrap();
        assert_eq!(
            (t.failures.get(), t.period, t.burst.get()),
            (10, Duration::from_secs(1), 50)
        );
    }

    #[test]
    fn auth_failure_limit() {
        let cfg = Config::from_args(&args(&["--auth-failure-limit", "off"]), None).unwrap();
        assert!(cfg.app.throttle.is_none());
        let a = args(&["--auth-failure-limit", "30/m", "--auth-failure-burst", "5"]);
        let t = Config::from_args(&a, None).unwrap().app.throttle.unwrap();
        assert_eq!(
            (t.failures.get(), t.period, t.burst.get()),
            (30, Duration::from_secs(60), 5)
        );
        let e = Config::from_args(&args(&["--auth-failure-limit", "lots"]), None).unwrap_err();
        assert!(e.to_string().starts_with("--auth-failure-limit"), "{e}");
        assert!(Args::try_parse_from(["tokengate", "--auth-failure-burst", "0"]).is_err());
        assert!(Args::try_parse_from(["tokengate", "--max-header-bytes", "10"]).is_err());
    }

    #[test]
    fn flags_parse() {
        let a = args(&[
            "--listen",
            "[::1]:0",
            "--shutdown-timeout",
            "500ms",
            "--idle-timeout",
            "2m",
            "--token-header",
            "X-Api-Key",
            "--realm",
            "api",
            "--max-connections",
            "5",
        ]);
        let cfg = Config::from_args(&a, None).unwrap();
        assert_eq!(cfg.listen, "[::1]:0".parse().unwrap());
        assert_eq!(cfg.limits.shutdown_timeout, Duration::from_millis(500));
        assert_eq!(cfg.limits.idle_timeout, Duration::from_secs(120));
        assert_eq!(cfg.app.token_header, "x-api-key");
        assert_eq!(cfg.limits.max_connections, 5);
    }

    #[test]
    fn bad_flags_are_refused() {
        let argv = |a: &[&str]| {
            let mut v = vec!["tokengate"];
            v.extend_from_slice(a);
            Args::try_parse_from(v)
        };
        assert!(argv(&["--shutdown-timeout", "10x"]).is_err());
        assert!(argv(&["--shutdown-timeout", "0s"]).is_err());
        assert!(argv(&["--listen", "localhost"]).is_err());
        assert!(argv(&["--max-connections", "0"]).is_err());
        assert!(
            argv(&["--token", "x"]).is_err(),
            "no secret on the command line"
        );
        let e = Config::from_args(&args(&["--token-header", "bad header"]), None).unwrap_err();
        assert!(e.to_string().contains("--token-header"));
        let e = Config::from_args(&args(&["--realm", "a\"b"]), None).unwrap_err();
        assert!(e.to_string().contains("--realm"));
    }

    #[test]
    fn env_token() {
        let cfg = Config::from_args(&args(&[]), Some("hunter2hunter2".into())).unwrap();
        assert!(!cfg.demo_key);
        assert_eq!(cfg.keys.len(), 1);
        assert!(cfg.keys.verify(b"hunter2hunter2").is_some());
        assert!(cfg.keys.verify(DEMO_TOKEN.as_bytes()).is_none());
        assert_eq!(cfg.keys.keys()[0].label(), "env");

        for (bad, problem) in [
            ("", TokenProblem::Empty),
            ("   ", TokenProblem::Empty),
            ("abc def", TokenProblem::BadChar(4)),
            ("abc\n", TokenProblem::BadChar(4)),
        ] {
            let e = Config::from_args(&args(&[]), Some(bad.into())).unwrap_err();
            assert!(
                matches!(&e, ConfigError::Keys(KeyError::EnvToken(p)) if *p == problem),
                "{bad:?}: {e}"
            );
            assert!(e.to_string().starts_with(TOKEN_ENV));
        }
    }

    #[test]
    fn key_file_lines_hashes_and_labels() {
        let hashed = Digest::of(b"hashed-secret").to_hex();
        let upper = Digest::of(b"upper-hex").to_hex().to_uppercase();
        let text = format!(
            "# keys\n\nplain-secret-long alice\n  sha256:{hashed}   bob  \nanon-secret-long\nsha256:{upper}\n"
        );
        let path = temp_file("keys-ok", &text);
        let a = args(&["--token-file", path.to_str().unwrap()]);
        let cfg = Config::from_args(&a, Some("env-secret".into())).unwrap();
        let labels: Vec<&str> = cfg.keys.keys().iter().map(|k| k.label()).collect();
        assert_eq!(labels, ["env", "alice", "bob", "key-4", "key-5"]);
        assert!(cfg.keys.verify(b"plain-secret-long").is_some());
        assert!(cfg.keys.verify(b"hashed-secret").is_some());
        assert!(cfg.keys.verify(b"anon-secret-long").is_some());
        assert!(cfg.keys.verify(b"env-secret").is_some());
        assert!(cfg.keys.verify(b"upper-hex").is_some());
        assert!(!cfg.demo_key);
        assert_eq!(
            cfg.keys.keys()[2].source(),
            &KeySource::File {
                path: path.display().to_string(),
                line: 4
            }
        );
    }

    #[test]
    fn key_file_errors_name_file_and_line_never_secret() {
        let hashed = Digest::of(b"x").to_hex();
        let cases: &[(&str, usize, &str)] = &[
            (
                "good-one-long-key\nsecret-one-long-k\nsecret-one-long-k\n",
                3,
                "duplicate key: the same token as line 2",
            ),
            (
                "secret-one-long-k a\nsecret-two-long-k a\n",
                2,
                "duplicate label",
            ),
            ("secret-one-long-k two words\n", 1, "label"),
            ("secret-one-long-k bad|label\n", 1, "label"),
            ("sha256:abcd\n", 1, "64 hex"),
            (&format!("sha256:{}zz\n", &hashed[..62]), 1, "64 hex"),
            ("# c\nsecret-\u{e9}t\u{e9}\n", 2, "non-ASCII"),
            // A label typed alone would be a full-access key.
            (
                "good-one-long-key a\nsecret-ab\n",
                2,
                "at least 16 characters",
            ),
        ];
        for (i, (text, line, needle)) in cases.iter().enumerate() {
            let path = temp_file(&format!("keys-bad-{i}"), text);
            let a = args(&["--token-file", path.to_str().unwrap()]);
            let e = Config::from_args(&a, None).unwrap_err();
            let msg = e.to_string();
            assert!(
                matches!(e, ConfigError::Keys(KeyError::FileLine { line: l, .. }) if l == *line),
                "case {i}: {msg}"
            );
            assert!(msg.contains(needle), "case {i}: {msg}");
            assert!(msg.contains(&path.display().to_string()), "case {i}: {msg}");
            assert!(!msg.contains("secret-"), "case {i} leaks the secret: {msg}");
        }
    }

    #[test]
    fn env_and_file_duplicate_is_refused() {
        let path = temp_file("keys-dup-env", "same-secret-long1\n");
        let a = args(&["--token-file", path.to_str().unwrap()]);
        let e = Config::from_args(&a, Some("same-secret-long1".into())).unwrap_err();
        assert!(
            e.to_string()
                .contains("line 1: duplicate key: the same token as TOKENGATE_TOKEN"),
            "{e}"
        );
        assert!(!e.to_string().contains("same-secret-long1"));
    }

    #[test]
    fn unreadable_and_empty_files() {
        let missing = std::env::temp_dir().join("tokengate-no-such-dir/keys");
        let a = args(&["--token-file", missing.to_str().unwrap()]);
        let e = Config::from_args(&a, None).unwrap_err();
        assert!(matches!(e, ConfigError::Keys(KeyError::FileRead { .. })));
        assert!(e.to_string().contains("tokengate-no-such-dir/keys"), "{e}");

        let path = temp_file("keys-empty", "# nothing\n\n");
        let a = args(&["--token-file", path.to_str().unwrap()]);
        let e = Config::from_args(&a, None).unwrap_err();
        assert!(
            matches!(e, ConfigError::Keys(KeyError::FileEmpty(_))),
            "{e}"
        );
    }

    #[test]
    fn hash_token() {
        let line = hash_token_line(b"mysecrettoken\n").unwrap();
        assert_eq!(
            line,
            format!("sha256:{}", Digest::of(b"mysecrettoken").to_hex())
        );
        assert_eq!(hash_token_line(b"mysecrettoken\r\n").unwrap(), line);
        assert_eq!(hash_token_line(b"mysecrettoken").unwrap(), line);
        assert_eq!(hash_token_line(b"\n"), Err(TokenProblem::Empty));
        assert_eq!(hash_token_line(b"a b\n"), Err(TokenProblem::BadChar(2)));
        assert_eq!(hash_token_line(b"\xff\n"), Err(TokenProblem::NotUtf8));
        // The line round-trips through the key-file parser.
        let mut keys = KeySet::new();
        parse_key_file(&line, "f", &mut keys).unwrap();
        assert!(keys.verify(b"mysecrettoken").is_some());
    }
}
