//! Raw command-line arguments and environment → a validated, typed [`Config`].
//!
//! Parsing is one pure step: [`Config::from_args`] takes the parsed [`Args`]
//! and the value of `TOKENGATE_TOKEN` as inputs and reads only the key file it
//! names, so tests build configurations without touching the process
//! environment. Secrets never appear in an error message.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use http::HeaderName;
use zeroize::{Zeroize, Zeroizing};

use crate::auth::{Digest, InsertError, Key, KeySet, KeySource};
use crate::routes::AppConfig;
use crate::server::Limits;
use crate::throttle::ThrottleConfig;

/// The token used when no key source is configured.
pub const DEMO_TOKEN: &str = "mysecrettoken";

/// The environment variable that holds one token.
pub const TOKEN_ENV: &str = "TOKENGATE_TOKEN";

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
    #[arg(long, env = "TOKENGATE_METRICS", default_value = "on", value_parser = ["on", "off"], value_name = "on|off")]
    pub metrics: String,

    /// Write one access-log line per request to stdout.
    #[arg(long, env = "TOKENGATE_ACCESS_LOG")]
    pub access_log: bool,

    /// Format of every log line: text or json.
    #[arg(long, env = "TOKENGATE_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"], value_name = "FORMAT")]
    pub log_format: String,

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
}

/// Parses `10s`, `500ms`, `2m`, … (humantime); zero is refused.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration_or_zero(s)?;
    if d.is_zero() {
        return Err("must be greater than zero".to_owned());
    }
    Ok(d)
}

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
    /// `--log-format json`.
    pub log_json: bool,
    /// `--watch-token-file`.
    pub watch_token_file: bool,
    /// `--reuse-port`.
    pub reuse_port: bool,
    /// `--tls-cert` and `--tls-key`.
    pub tls: Option<crate::tls::TlsFiles>,
    /// Token header and realm.
    pub app: AppConfig,
    /// Connection limits and timeouts.
    pub limits: Limits,
}

/// A configuration problem, reported before the server binds (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `TOKENGATE_TOKEN` set but unusable.
    #[error("{TOKEN_ENV}: {0}")]
    EnvToken(TokenProblem),
    /// The key file could not be read.
    #[error("--token-file {path}: cannot read the file: {source}")]
    FileRead {
        /// The path as given.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line of the key file is wrong.
    #[error("--token-file {path}, line {line}: {problem}")]
    FileLine {
        /// The path as given.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong (never the secret itself).
        problem: LineProblem,
    },
    /// The key file holds no key.
    #[error("--token-file {0}: the file holds no key (only comments or blank lines)")]
    FileEmpty(String),
    /// The token header name is not a valid header name.
    #[error("--token-header {0:?}: not a valid HTTP header name")]
    TokenHeader(String),
    /// `--auth-failure-limit` is not a rate.
    #[error("--auth-failure-limit {0}")]
    AuthFailureLimit(String),
    /// The realm cannot go into a header.
    #[error("--realm {0:?}: {1}")]
    Realm(String, crate::responses::InvalidRealm),
}

/// What is wrong with a token (the token itself is never shown).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenProblem {
    /// Empty, or only whitespace.
    #[error("the token is empty")]
    Empty,
    /// Not valid UTF-8.
    #[error("the token is not valid UTF-8")]
    NotUtf8,
    /// A byte outside visible ASCII.
    #[error(
        "the token has a space, control or non-ASCII character at position {0}; tokens are visible ASCII (0x21-0x7E)"
    )]
    BadChar(usize),
    /// Too long to be sent in a header.
    #[error("the token is longer than 4096 bytes")]
    TooLong,
}

/// What is wrong with a key-file line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineProblem {
    /// The token is unusable.
    #[error("{0}")]
    Token(TokenProblem),
    /// `sha256:` not followed by 64 hex digits.
    #[error("after 'sha256:' there must be exactly 64 hex digits")]
    BadDigest,
    /// The label is not a single word of `[A-Za-z0-9._:@/-]`.
    #[error("the label must be one word of letters, digits and . _ : @ / - (at most 64)")]
    BadLabel,
    /// The same secret appears twice.
    #[error("duplicate key: the same token as {0}")]
    DuplicateKey(String),
    /// The label appears twice.
    #[error("duplicate label: already used by {0}")]
    DuplicateLabel(String),
}

/// Checks that a token can be sent in a header and compared byte for byte.
pub fn validate_token(token: &str) -> Result<(), TokenProblem> {
    if token.trim().is_empty() {
        return Err(TokenProblem::Empty);
    }
    if token.len() > 4096 {
        return Err(TokenProblem::TooLong);
    }
    if let Some(pos) = token.bytes().position(|b| !(0x21..=0x7e).contains(&b)) {
        return Err(TokenProblem::BadChar(pos + 1));
    }
    Ok(())
}

fn valid_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 64
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:@/-".contains(&b))
}

fn describe(source: &KeySource) -> String {
    match source {
        KeySource::Demo => "the demo key".to_owned(),
        KeySource::Env => TOKEN_ENV.to_owned(),
        KeySource::File { line, .. } => format!("line {line}"),
    }
}

/// Parses a key file's text into `keys`. `path` is only used in messages.
pub fn parse_key_file(text: &str, path: &str, keys: &mut KeySet) -> Result<(), ConfigError> {
    let before = keys.len();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let err = |problem| ConfigError::FileLine {
            path: path.to_owned(),
            line,
            problem,
        };
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let mut words = trimmed.split_whitespace();
        // `trimmed` is non-empty and has no leading whitespace: a first word exists.
        let secret = words.next().unwrap_or_default();
        let label = match (words.next(), words.next()) {
            (None, _) => format!("key-{}", keys.len() + 1),
            (Some(label), None) if valid_label(label) => label.to_owned(),
            _ => return Err(err(LineProblem::BadLabel)),
        };
        let digest = match secret.strip_prefix("sha256:") {
            Some(hex_digits) => {
                let mut bytes = [0u8; 32];
                hex::decode_to_slice(hex_digits, &mut bytes)
                    .map_err(|_| err(LineProblem::BadDigest))?;
                Digest::from_bytes(bytes)
            }
            None => {
                validate_token(secret).map_err(|p| err(LineProblem::Token(p)))?;
                Digest::of(secret.as_bytes())
            }
        };
        let source = KeySource::File {
            path: path.to_owned(),
            line,
        };
        keys.insert(Key::new(digest, label, source))
            .map_err(|e| match e {
                InsertError::DuplicateKey(other) => {
                    err(LineProblem::DuplicateKey(describe(&other)))
                }
                InsertError::DuplicateLabel(other) => {
                    err(LineProblem::DuplicateLabel(describe(&other)))
                }
            })?;
    }
    if keys.len() == before {
        return Err(ConfigError::FileEmpty(path.to_owned()));
    }
    Ok(())
}

impl Config {
    /// Validates parsed arguments. `env_token` is the value of `TOKENGATE_TOKEN`, if set.
    pub fn from_args(args: &Args, env_token: Option<OsString>) -> Result<Config, ConfigError> {
        let env_key = match env_token {
            None => None,
            Some(raw) => {
                let token = Zeroizing::new(raw.into_string().map_err(|raw| {
                    zeroize_os(raw);
                    ConfigError::EnvToken(TokenProblem::NotUtf8)
                })?);
                validate_token(&token).map_err(ConfigError::EnvToken)?;
                Some(Key::new(
                    Digest::of(token.as_bytes()),
                    "env",
                    KeySource::Env,
                ))
            }
        };
        let sources = KeySources {
            env_key,
            token_file: args.token_file.clone(),
        };
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
                    burst: NonZeroU32::new(args.auth_failure_burst).ok_or_else(|| {
                        ConfigError::AuthFailureLimit("burst must be at least 1".into())
                    })?,
                    ..ThrottleConfig::default()
                })
            }
        };
        let app = AppConfig {
            token_header,
            realm: args.realm.clone(),
            max_header_bytes: args.max_header_bytes as usize,
            throttle,
            metrics_public: args.metrics_public,
            access_log: args.access_log,
            metrics: args.metrics == "on",
        };
        crate::responses::Responses::new(&app.realm)
            .map_err(|e| ConfigError::Realm(args.realm.clone(), e))?;

        Ok(Config {
            listen: args.listen,
            keys,
            demo_key,
            sources,
            log_json: args.log_format == "json",
            watch_token_file: args.watch_token_file,
            reuse_port: args.reuse_port,
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
                max_header_bytes: args.max_header_bytes as usize,
                shutdown_delay: args.shutdown_delay,
            },
        })
    }
}

/// Where the keys come from: the `TOKENGATE_TOKEN` key (hashed once at
/// start-up; the environment cannot change later) and the key file, which is
/// read again on every reload.
#[derive(Debug, Clone, Default)]
pub struct KeySources {
    /// The key from `TOKENGATE_TOKEN`, if set.
    pub env_key: Option<Key>,
    /// `--token-file`, if set.
    pub token_file: Option<PathBuf>,
}

impl KeySources {
    /// Builds and validates the key set; `true` when the demo key is used.
    pub fn load(&self) -> Result<(KeySet, bool), ConfigError> {
        let mut keys = KeySet::new();
        if let Some(key) = &self.env_key {
            // The set is empty: the first insert cannot collide.
            keys.insert(key.clone())
                .expect("the first key of an empty set is unique");
        }
        if let Some(path) = &self.token_file {
            let shown = path.display().to_string();
            let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|source| {
                ConfigError::FileRead {
                    path: shown.clone(),
                    source,
                }
            })?);
            parse_key_file(&text, &shown, &mut keys)?;
        }
        let demo = keys.is_empty();
        if demo {
            let key = Key::new(Digest::of(DEMO_TOKEN.as_bytes()), "demo", KeySource::Demo);
            keys.insert(key)
                .expect("the first key of an empty set is unique");
        }
        Ok((keys, demo))
    }
}

/// Wipes a rejected (non-UTF-8) token before its memory is freed.
fn zeroize_os(raw: OsString) {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStringExt;
        raw.into_vec().zeroize();
    }
    #[cfg(not(unix))]
    drop(raw);
}

/// `tokengate hash-token`: the `sha256:` key-file line for a token read from stdin.
/// One trailing newline (`\n` or `\r\n`) is not part of the token.
pub fn hash_token_line(input: &[u8]) -> Result<String, TokenProblem> {
    let input = input
        .strip_suffix(b"\n")
        .map(|s| s.strip_suffix(b"\r").unwrap_or(s))
        .unwrap_or(input);
    let token = std::str::from_utf8(input).map_err(|_| TokenProblem::NotUtf8)?;
    validate_token(token)?;
    Ok(format!("sha256:{}", Digest::of(token.as_bytes()).to_hex()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::Write;

    fn args(extra: &[&str]) -> Args {
        let mut argv = vec!["tokengate"];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv).unwrap()
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
        assert_eq!(cfg.app.realm, "tokengate");
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
                matches!(&e, ConfigError::EnvToken(p) if *p == problem),
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
            "# keys\n\nplain-secret alice\n  sha256:{hashed}   bob  \nanon-secret\nsha256:{upper}\n"
        );
        let path = temp_file("keys-ok", &text);
        let a = args(&["--token-file", path.to_str().unwrap()]);
        let cfg = Config::from_args(&a, Some("env-secret".into())).unwrap();
        let labels: Vec<&str> = cfg.keys.keys().iter().map(|k| k.label()).collect();
        assert_eq!(labels, ["env", "alice", "bob", "key-4", "key-5"]);
        assert!(cfg.keys.verify(b"plain-secret").is_some());
        assert!(cfg.keys.verify(b"hashed-secret").is_some());
        assert!(cfg.keys.verify(b"anon-secret").is_some());
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
                "good-one\nsecret-one\nsecret-one\n",
                3,
                "duplicate key: the same token as line 2",
            ),
            ("secret-one a\nsecret-two a\n", 2, "duplicate label"),
            ("secret-one two words\n", 1, "label"),
            ("secret-one bad|label\n", 1, "label"),
            ("sha256:abcd\n", 1, "64 hex"),
            (&format!("sha256:{}zz\n", &hashed[..62]), 1, "64 hex"),
            ("# c\nsecret-\u{e9}t\u{e9}\n", 2, "non-ASCII"),
        ];
        for (i, (text, line, needle)) in cases.iter().enumerate() {
            let path = temp_file(&format!("keys-bad-{i}"), text);
            let a = args(&["--token-file", path.to_str().unwrap()]);
            let e = Config::from_args(&a, None).unwrap_err();
            let msg = e.to_string();
            assert!(
                matches!(e, ConfigError::FileLine { line: l, .. } if l == *line),
                "case {i}: {msg}"
            );
            assert!(msg.contains(needle), "case {i}: {msg}");
            assert!(msg.contains(&path.display().to_string()), "case {i}: {msg}");
            assert!(!msg.contains("secret-"), "case {i} leaks the secret: {msg}");
        }
    }

    #[test]
    fn env_and_file_duplicate_is_refused() {
        let path = temp_file("keys-dup-env", "same-secret\n");
        let a = args(&["--token-file", path.to_str().unwrap()]);
        let e = Config::from_args(&a, Some("same-secret".into())).unwrap_err();
        assert!(
            e.to_string()
                .contains("line 1: duplicate key: the same token as TOKENGATE_TOKEN"),
            "{e}"
        );
        assert!(!e.to_string().contains("same-secret"));
    }

    #[test]
    fn unreadable_and_empty_files() {
        let missing = std::env::temp_dir().join("tokengate-no-such-dir/keys");
        let a = args(&["--token-file", missing.to_str().unwrap()]);
        let e = Config::from_args(&a, None).unwrap_err();
        assert!(matches!(e, ConfigError::FileRead { .. }));
        assert!(e.to_string().contains("tokengate-no-such-dir/keys"), "{e}");

        let path = temp_file("keys-empty", "# nothing\n\n");
        let a = args(&["--token-file", path.to_str().unwrap()]);
        let e = Config::from_args(&a, None).unwrap_err();
        assert!(matches!(e, ConfigError::FileEmpty(_)), "{e}");
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
