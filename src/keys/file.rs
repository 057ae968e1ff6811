//! The key-file format and where keys come from.
//!
//! A key file holds one key per line: `TOKEN` or `sha256:<64 hex>`, optionally
//! followed by whitespace and a label; `#` comments and blank lines are
//! ignored. [`KeySources`] loads the environment key and the file into a
//! validated [`KeySet`], at start-up and on every reload. Secrets never appear
//! in an error message.

use std::ffi::OsString;
use std::path::PathBuf;

use zeroize::{Zeroize, Zeroizing};

use super::{Digest, InsertError, Key, KeySet, KeySource, Scope, ScopeProblem};
use crate::limits::{self, LimitProblem, Limits, Quota, Rate};

/// The token used when no key source is configured.
pub(crate) const DEMO_TOKEN: &str = "mysecrettoken";

/// The environment variable that holds one token.
pub const TOKEN_ENV: &str = "TOKENGATE_TOKEN";

/// Why the keys cannot be loaded (exit 2 at start-up; the old keys stay on reload).
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
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
    /// A `scope=` value is malformed.
    #[error("scope={0}: {1}")]
    BadScope(String, ScopeProblem),
    /// An `expires=` value is malformed.
    #[error("expires: {0}")]
    BadExpiry(String),
    /// A `rate=`, `burst=` or `quota=` value is malformed.
    #[error("{0}={1:?}: {2}")]
    BadLimit(&'static str, String, LimitProblem),
    /// An `owner=` value is not a label.
    #[error("owner={0:?}: an owner is one word of letters, digits and . _ : @ / - (at most 64)")]
    BadOwner(String),
    /// A key of the same owner declares other limits.
    #[error(
        "owner {0:?} declares other limits on {1}: all keys of one owner declare the same rate=, burst= and quota="
    )]
    OwnerLimitsDiffer(String, String),
    /// `canary` where the label goes.
    #[error("`canary` is a flag after the label (a canary key needs a label of its own)")]
    CanaryLabel,
    /// An attribute other than those known.
    #[error(
        "unknown attribute {0:?} (known: scope=, expires=, rate=, burst=, quota=, owner=, and the flag canary)"
    )]
    UnknownAttribute(String),
    /// A token shorter than [`MIN_TOKEN_LEN`]: guessable, and most often a
    /// label typed alone on its line (`reports`), which would be read as a
    /// full-access key.
    #[error(
        "a token must be at least 16 characters (a word alone on a line is a token, not a label; generate one with `openssl rand -base64 24`)"
    )]
    ShortToken,
    /// The same secret appears twice.
    #[error("duplicate key: the same token as {0}")]
    DuplicateKey(String),
    /// The label appears twice.
    #[error("duplicate label: already used by {0}")]
    DuplicateLabel(String),
}

/// The shortest token a key file accepts (`TOKENGATE_TOKEN` shorter gets a
/// warning at start-up).
pub const MIN_TOKEN_LEN: usize = 16;

/// Checks that a token can be sent in a header and compared byte for byte.
pub(super) fn validate_token(token: &str) -> Result<(), TokenProblem> {
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

/// The attribute's name as the error keeps it.
fn limit_name(name: &str) -> &'static str {
    match name {
        "rate" => "rate",
        "burst" => "burst",
        "quota" => "quota",
        _ => "owner",
    }
}

fn describe(source: &KeySource) -> String {
    match source {
        KeySource::Demo => "the demo key".to_owned(),
        KeySource::Env => TOKEN_ENV.to_owned(),
        KeySource::File { line, .. } => format!("line {line}"),
    }
}

/// Parses a key file's text into `keys`. `path` is only used in messages.
pub fn parse_key_file(text: &str, path: &str, keys: &mut KeySet) -> Result<(), KeyError> {
    let before = keys.len();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let err = |problem| KeyError::FileLine {
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
        // Then an optional label, then attributes (`name=value`).
        let mut label = None;
        let mut scopes = Vec::new();
        let mut expires = None;
        let mut attributes = false;
        let mut rate = None;
        let mut burst = None;
        let mut quota = None;
        let mut owner: Option<std::sync::Arc<str>> = None;
        let mut canary = false;
        let limit = |name: &'static str, value: &str, problem| {
            err(LineProblem::BadLimit(name, value.to_owned(), problem))
        };
        for word in words {
            attributes |= word.contains('=');
            match word.split_once('=') {
                // A flag: after the label (a label `canary` would read as one).
                None if word == "canary" && (label.is_some() || attributes) => canary = true,
                None if word == "canary" => return Err(err(LineProblem::CanaryLabel)),
                None if label.is_none() && !attributes => {
                    if !valid_label(word) {
                        return Err(err(LineProblem::BadLabel));
                    }
                    label = Some(word.to_owned());
                }
                None => return Err(err(LineProblem::BadLabel)),
                Some(("scope", value)) => scopes.push(
                    Scope::parse(value)
                        .map_err(|p| err(LineProblem::BadScope(value.to_owned(), p)))?,
                ),
                Some(("expires", value)) => {
                    if expires.is_some() {
                        return Err(err(LineProblem::BadExpiry("given twice".to_owned())));
                    }
                    let at = humantime::parse_rfc3339(value).map_err(|_| {
                        err(LineProblem::BadExpiry(format!(
                            "{value:?} is not an RFC 3339 UTC time like 2027-01-01T00:00:00Z"
                        )))
                    })?;
                    expires = Some(at);
                }
                Some((name @ ("rate" | "burst" | "quota" | "owner"), value))
                    if match name {
                        "rate" => rate.is_some(),
                        "burst" => burst.is_some(),
                        "quota" => quota.is_some(),
                        _ => owner.is_some(),
                    } =>
                {
                    return Err(err(LineProblem::BadLimit(
                        limit_name(name),
                        value.to_owned(),
                        LimitProblem::Twice,
                    )));
                }
                Some(("rate", value)) => {
                    rate = Some(limits::parse_rate(value).map_err(|p| limit("rate", value, p))?);
                }
                Some(("burst", value)) => {
                    burst = Some(limits::parse_burst(value).map_err(|p| limit("burst", value, p))?);
                }
                Some(("quota", value)) => {
                    quota = Some(limits::parse_quota(value).map_err(|p| limit("quota", value, p))?);
                }
                Some(("owner", value)) => {
                    if !valid_label(value) {
                        return Err(err(LineProblem::BadOwner(value.to_owned())));
                    }
                    owner = Some(value.into());
                }
                Some((name, _)) => {
                    return Err(err(LineProblem::UnknownAttribute(name.to_owned())));
                }
            }
        }
        if burst.is_some() && rate.is_none() {
            let value = burst.map(|b: u32| b.to_string()).unwrap_or_default();
            return Err(limit("burst", &value, LimitProblem::BurstWithoutRate));
        }
        let key_limits = Limits {
            rate: rate.map(|(count, window)| Rate {
                count,
                window,
                burst: burst.unwrap_or(count),
            }),
            quota: quota.map(|(count, period)| Quota { count, period }),
        };
        let label = label.unwrap_or_else(|| format!("key-{}", keys.len() + 1));
        let digest = match secret.strip_prefix("sha256:") {
            Some(hex_digits) => {
                let mut bytes = [0u8; 32];
                hex::decode_to_slice(hex_digits, &mut bytes)
                    .map_err(|_| err(LineProblem::BadDigest))?;
                Digest::from_bytes(bytes)
            }
            None => {
                validate_token(secret).map_err(|p| err(LineProblem::Token(p)))?;
                if secret.len() < MIN_TOKEN_LEN {
                    return Err(err(LineProblem::ShortToken));
                }
                Digest::of(secret.as_bytes())
            }
        };
        let source = KeySource::File {
            path: path.to_owned(),
            line,
        };
        let mut key = Key::new(digest, label, source)
            .with_scopes(scopes)
            .with_limits(owner, key_limits);
        if let Some(at) = expires {
            key = key.with_expiry(at);
        }
        if canary {
            key = key.as_canary();
        }
        let owner_name = key.owner().clone();
        keys.insert(key).map_err(|e| match e {
            InsertError::DuplicateKey(other) => err(LineProblem::DuplicateKey(describe(&other))),
            InsertError::DuplicateLabel(other) => {
                err(LineProblem::DuplicateLabel(describe(&other)))
            }
            InsertError::OwnerLimitsDiffer(other) => err(LineProblem::OwnerLimitsDiffer(
                owner_name.to_string(),
                describe(&other),
            )),
        })?;
    }
    if keys.len() == before {
        return Err(KeyError::FileEmpty(path.to_owned()));
    }
    Ok(())
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
    pub fn load(&self) -> Result<(KeySet, bool), KeyError> {
        let mut keys = KeySet::new();
        if let Some(key) = &self.env_key {
            // The set is empty: the first insert cannot collide.
            keys.insert(key.clone())
                .expect("the first key of an empty set is unique");
        }
        if let Some(path) = &self.token_file {
            let shown = path.display().to_string();
            let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|source| {
                KeyError::FileRead {
                    path: shown.clone(),
                    source,
                }
            })?);
            parse_key_file(&text, &shown, &mut keys)?;
        }
        let demo = keys.is_empty();
        if demo {
            keys = KeySet::demo();
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

impl KeySources {
    /// The sources of a run: `TOKENGATE_TOKEN`'s value (hashed now, then
    /// wiped) and the key file's path.
    pub fn new(env_token: Option<OsString>, token_file: Option<PathBuf>) -> Result<Self, KeyError> {
        let env_key = match env_token {
            None => None,
            Some(raw) => {
                let token = Zeroizing::new(raw.into_string().map_err(|raw| {
                    zeroize_os(raw);
                    KeyError::EnvToken(TokenProblem::NotUtf8)
                })?);
                validate_token(&token).map_err(KeyError::EnvToken)?;
                Some(Key::new(
                    Digest::of(token.as_bytes()),
                    "env",
                    KeySource::Env,
                ))
            }
        };
        Ok(KeySources {
            env_key,
            token_file,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http::{HeaderMap, HeaderName, Method};

    fn parse(text: &str) -> Result<KeySet, KeyError> {
        let mut keys = KeySet::new();
        parse_key_file(text, "keys", &mut keys).map(|()| keys)
    }

    fn problem(text: &str) -> String {
        let e = parse(text).unwrap_err();
        assert!(matches!(e, KeyError::FileLine { line: 1, .. }), "{e}");
        e.to_string()
    }

    /// `canary` is a flag after the label; where the label goes it is
    /// refused (a key labelled `canary` would grant everything).
    #[test]
    fn canary_is_a_flag_never_a_label() {
        let keys = parse("decoy-secret-long decoy canary\nreal-secret-longer real\n").unwrap();
        assert!(keys.keys()[0].is_canary());
        assert!(!keys.keys()[1].is_canary());
        let keys = parse("decoy-secret-long scope=GET:/x canary\n").unwrap();
        assert!(keys.keys()[0].is_canary());
        assert!(
            problem("decoy-secret-long canary\n").contains("`canary` is a flag after the label")
        );
        let outcome = keys.authorize(
            &HeaderMap::from_iter([(
                HeaderName::from_static("x-token"),
                http::HeaderValue::from_static("decoy-secret-long"),
            )]),
            &HeaderName::from_static("x-token"),
            &Method::GET,
            "/x",
        );
        assert!(
            matches!(outcome, crate::keys::Outcome::Canary(_)),
            "{outcome:?}"
        );
    }

    #[test]
    fn attributes() {
        let keys = parse(
            "k-one-secret-long reports scope=GET,HEAD:/reports/* scope=*:/admin expires=2030-05-01T12:00:00Z\n\
             k-two-secret-long scope=GET:/x\n",
        )
        .unwrap();
        let one = &keys.keys()[0];
        assert_eq!(one.label(), "reports");
        assert!(one.allows(&Method::HEAD, "/reports/a"));
        assert!(one.allows(&Method::DELETE, "/admin"));
        assert!(!one.allows(&Method::GET, "/reports"));
        assert_eq!(
            one.expires(),
            Some(humantime::parse_rfc3339("2030-05-01T12:00:00Z").unwrap())
        );
        // Attributes without a label: the default label.
        assert_eq!(keys.keys()[1].label(), "key-2");
        assert!(keys.keys()[1].allows(&Method::GET, "/x"));
    }

    #[test]
    fn limits_and_owners() {
        let keys = parse(
            "orders-key-000001 orders rate=100/s burst=20 quota=10000/day\n\
             orders-key-000002 orders-new owner=orders rate=100/s burst=20 quota=10000/day\n\
             reports-key-00001 reports quota=5/month\n\
             plain-key-0000001 plain\n",
        )
        .unwrap();
        let [old, new, reports, plain] = keys.keys() else {
            panic!("four keys")
        };
        let orders = Limits {
            rate: Some(Rate {
                count: 100,
                window: 1,
                burst: 20,
            }),
            quota: Some(Quota {
                count: 10_000,
                period: limits::period::Period::Day,
            }),
        };
        assert_eq!(*old.limits(), orders);
        // A rotated key (a new line, the same owner) shares the counters.
        assert_eq!(&**old.owner(), "orders");
        assert_eq!(&**new.owner(), "orders");
        assert_eq!(
            reports.limits().quota.map(|q| q.count),
            Some(5),
            "quota alone"
        );
        assert!(reports.limits().rate.is_none());
        // Without burst=, the burst is the rate's count.
        let keys = parse("burst-default-key rate=7/m\n").unwrap();
        assert_eq!(
            keys.keys()[0].limits().rate.map(|r| (r.window, r.burst)),
            Some((60, 7))
        );
        assert!(!plain.limits().is_limited());
    }

    #[test]
    fn one_owner_declares_one_set_of_limits() {
        let e = parse(
            "first-key-0000001 a owner=team rate=10/s\n\
             second-key-000001 b owner=team rate=20/s\n",
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, KeyError::FileLine { line: 2, .. }), "{msg}");
        assert!(
            msg.contains("owner \"team\"") && msg.contains("line 1"),
            "{msg}"
        );
        assert!(!msg.contains("-key-"), "{msg}");
        // A label is its key's owner when it names none.
        assert!(
            parse("first-key-0000001 team rate=10/s\nsecond-key-000001 b owner=team\n").is_err()
        );
    }

    #[test]
    fn malformed_attributes_name_the_problem_never_the_secret() {
        for (text, needle) in [
            ("s3cret-token a scope=GET/x\n", "METHODS:PATTERN"),
            ("s3cret-token a scope=get:/x\n", "upper-case"),
            ("s3cret-token a scope=GET:x\n", "start with /"),
            ("s3cret-token a expires=tomorrow\n", "RFC 3339"),
            (
                "s3cret-token a expires=2030-01-01T00:00:00Z expires=2031-01-01T00:00:00Z\n",
                "twice",
            ),
            (
                "s3cret-token a colour=blue\n",
                "unknown attribute \"colour\"",
            ),
            ("s3cret-token scope=GET:/x label-after\n", "label"),
            (
                "s3cret-token-long a rate=100\n",
                "rate=\"100\": a rate is N/s",
            ),
            ("s3cret-token-long a rate=0/s\n", "rate=\"0/s\""),
            (
                "s3cret-token-long a quota=10/week\n",
                "quota=\"10/week\": a quota is",
            ),
            ("s3cret-token-long a burst=5\n", "burst= needs rate="),
            ("s3cret-token-long a rate=1/s burst=0\n", "burst=\"0\""),
            (
                "s3cret-token-long a rate=1/s rate=2/s\n",
                "rate=\"2/s\": given twice",
            ),
            ("s3cret-token-long a owner=b/c!\n", "owner=\"b/c!\""),
        ] {
            let msg = problem(text);
            assert!(msg.contains(needle), "{text:?}: {msg}");
            assert!(!msg.contains("s3cret"), "{msg}");
        }
    }

    #[test]
    fn expiring_soon() {
        let keys = parse(
            "a-secret-long-01 soon expires=2000-01-01T00:00:00Z\na-secret-long-02 later expires=2999-01-01T00:00:00Z\na-secret-long-03 never\n",
        )
        .unwrap();
        assert_eq!(
            keys.expiring_within(std::time::Duration::from_secs(7 * 86400)),
            ["soon"]
        );
    }
}
