//! `tokengate keygen` and `tokengate keys`: a new key with its key-file
//! line, and a key file's keys described — never a secret.

use std::fmt::Write as _;

use zeroize::Zeroizing;

use super::file::{KeyError, parse_key_file};
use super::scope::{Methods, PathPattern};
use super::{Digest, Key, KeySet, token};

/// The attributes `tokengate keygen` writes on the key's line, as the key
/// file spells them.
#[derive(Clone, Debug, Default)]
pub struct KeygenAttributes {
    /// The label.
    pub label: Option<String>,
    /// `owner=`.
    pub owner: Option<String>,
    /// `scope=`, each.
    pub scopes: Vec<String>,
    /// `expires=` (RFC 3339).
    pub expires: Option<String>,
    /// `rate=`.
    pub rate: Option<String>,
    /// `burst=`.
    pub burst: Option<String>,
    /// `quota=`.
    pub quota: Option<String>,
    /// The flag `canary`.
    pub canary: bool,
}

/// Why `tokengate keygen` could not make a key (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum KeygenError {
    /// An attribute the key file would refuse (its message).
    #[error("{0}")]
    Attribute(String),
    /// The OS gave no randomness.
    #[error("the OS's random source failed: {0}")]
    Random(getrandom::Error),
}

/// A new key, and its key-file line (`sha256:<hex> [label] attributes…`),
/// checked as the key file checks it.
pub fn keygen(attributes: &KeygenAttributes) -> Result<(Zeroizing<String>, String), KeygenError> {
    let key = token::generate().map_err(KeygenError::Random)?;
    let mut line = format!("sha256:{}", Digest::of(key.as_bytes()).to_hex());
    let a = attributes;
    if let Some(word) = &a.label {
        let _ = write!(line, " {word}");
    }
    let pairs = [
        ("owner", &a.owner),
        ("expires", &a.expires),
        ("rate", &a.rate),
    ]
    .into_iter()
    .chain([("burst", &a.burst), ("quota", &a.quota)]);
    for (name, value) in pairs {
        if let Some(value) = value {
            let _ = write!(line, " {name}={value}");
        }
    }
    for scope in &a.scopes {
        let _ = write!(line, " scope={scope}");
    }
    if a.canary {
        line.push_str(" canary");
    }
    match parse_key_file(&line, "tokengate keygen", &mut KeySet::new()) {
        Ok(()) => Ok((key, line)),
        Err(KeyError::FileLine { problem, .. }) => Err(KeygenError::Attribute(problem.to_string())),
        Err(other) => Err(KeygenError::Attribute(other.to_string())),
    }
}

/// The keys of `keys`, one line each: label, owner, scopes, limits,
/// expiry, flags (tab-separated, `-` for none, a header line first).
pub fn describe(keys: &KeySet) -> String {
    let mut out = String::from("label\towner\tscopes\tlimits\texpires\tflags\n");
    for key in keys.keys() {
        let _ = writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}",
            key.label(),
            key.owner(),
            or_dash(scopes(key)),
            or_dash(limits(key)),
            key.expires().map_or_else(
                || "-".to_owned(),
                |at| humantime::format_rfc3339(at).to_string()
            ),
            or_dash(if key.is_canary() {
                "canary".to_owned()
            } else {
                String::new()
            }),
        );
    }
    out
}

fn or_dash(s: String) -> String {
    if s.is_empty() { "-".to_owned() } else { s }
}

fn scopes(key: &Key) -> String {
    let mut out = String::new();
    for scope in key.scopes() {
        if !out.is_empty() {
            out.push(' ');
        }
        match &scope.methods {
            Methods::Any => out.push('*'),
            Methods::Only(list) => {
                let names: Vec<&str> = list.iter().map(http::Method::as_str).collect();
                out.push_str(&names.join(","));
            }
        }
        let _ = match &scope.pattern {
            PathPattern::Exact(p) => write!(out, ":{p}"),
            PathPattern::Subtree(p) => write!(out, ":{p}*"),
        };
    }
    out
}

fn limits(key: &Key) -> String {
    let mut out = String::new();
    let limits = key.limits();
    if let Some(rate) = limits.rate {
        let unit = match rate.window {
            1 => "s",
            60 => "m",
            _ => "h",
        };
        let _ = write!(out, "rate={}/{unit} burst={}", rate.count, rate.burst);
    }
    if let Some(quota) = limits.quota {
        if !out.is_empty() {
            out.push(' ');
        }
        let _ = write!(out, "quota={}/{}", quota.count, quota.period.name());
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn keygen_prints_a_key_and_a_line_the_key_file_accepts() {
        let attributes = KeygenAttributes {
            label: Some("ci".to_owned()),
            owner: Some("acme".to_owned()),
            scopes: vec!["GET:/reports/*".to_owned()],
            rate: Some("10/s".to_owned()),
            quota: Some("1000/day".to_owned()),
            ..KeygenAttributes::default()
        };
        let (key, line) = keygen(&attributes).unwrap();
        assert!(!line.contains(key.as_str()), "the line never holds the key");
        let mut keys = KeySet::new();
        parse_key_file(&line, "t", &mut keys).unwrap();
        let id = keys.verify(key.as_bytes()).unwrap();
        assert_eq!(keys.get(id).unwrap().label(), "ci");
        assert_eq!(
            describe(&keys),
            "label\towner\tscopes\tlimits\texpires\tflags\n\
             ci\tacme\tGET:/reports/*\trate=10/s burst=10 quota=1000/day\t-\t-\n"
        );
    }

    #[test]
    fn keygen_refuses_what_the_key_file_refuses() {
        let bad = KeygenAttributes {
            rate: Some("fast".to_owned()),
            ..KeygenAttributes::default()
        };
        let e = keygen(&bad).unwrap_err().to_string();
        assert!(e.contains("a rate is N/s"), "{e}");
        let bad = KeygenAttributes {
            burst: Some("5".to_owned()),
            ..KeygenAttributes::default()
        };
        assert!(
            keygen(&bad)
                .unwrap_err()
                .to_string()
                .contains("burst= needs rate=")
        );
    }
}
