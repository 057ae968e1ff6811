//! The key set: SHA-256 digests of the accepted tokens, the credential a
//! request carries, and the check of one against the other. The key-file
//! format and loading live in `mod@file`.
//!
//! # Why this is timing-safe
//!
//! A presented token is hashed once with SHA-256 and its digest selects the key
//! in a hash map. Equality of two digests is decided by [`subtle`]'s
//! constant-time comparison (see the `PartialEq` impl of [`Digest`]), so the
//! only secret-dependent comparison ever made is between *digests*:
//!
//! * The plain-text token is never compared with anything, so the position of
//!   the first differing byte, or a difference in length, cannot show in the
//!   response time.
//! * What an attacker could at best learn from timing is where a digest of
//!   their choosing lands in the table — a function of SHA-256 output, which
//!   tells nothing about a preimage (the secret).
//! * The cost of a check is one SHA-256 of the presented token plus one map
//!   probe: it does not grow with the number of configured keys.
//!
//! The map hashes a digest by taking its first eight bytes. SHA-256 output is
//! uniform, and a client can only *look up* digests, never insert them, so a
//! client cannot lengthen any probe sequence (no hash-flooding).

use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasherDefault;
use std::sync::{Arc, OnceLock};

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::limits::Limits;

mod credential;
mod digest;
pub(crate) mod file;
mod listing;
pub(crate) mod scope;
pub(crate) mod token;

use credential::credential;
pub use digest::Digest;
use digest::DigestHasher;

pub use crate::limits::{LimitKind, LimitProblem};
pub use file::{
    KeyError, KeySources, LineProblem, MIN_TOKEN_LEN, TOKEN_ENV, TokenProblem, hash_token_line,
    parse_key_file,
};
pub use listing::{KeygenAttributes, KeygenError, describe, keygen};
pub use scope::{Methods, PathPattern, Scope, ScopeProblem};

/// What the guard decided about a request's credential (here, beside the
/// key ids it names, so that the guard, the metrics and the key set share it
/// without importing one another).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A configured key was presented.
    Valid(KeyId),
    /// No credential was presented.
    Missing,
    /// A credential was presented and is wrong (or ambiguous: repeated fields).
    Invalid,
    /// A configured key whose `expires=` has passed: refused like a wrong one.
    Expired(KeyId),
    /// A `canary` key: refused like a wrong one, logged and counted.
    Canary(KeyId),
    /// A valid key whose scopes do not cover the request: 403.
    Forbidden(KeyId),
    /// The client is over its failed-credential limit: 429 for this long.
    Throttled(Duration),
    /// A valid key over its owner's rate or quota: 429 for this long.
    Limited(KeyId, LimitKind, Duration),
}

/// Where a key came from, for start-up logs and error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// The built-in demo key (`mysecrettoken`).
    Demo,
    /// The `TOKENGATE_TOKEN` environment variable.
    Env,
    /// A key file, with the 1-based line number.
    File {
        /// The file's path as given.
        path: String,
        /// The line number of the key.
        line: usize,
    },
}

/// One accepted key: its digest, its label (logs name the label, never the
/// token), and what it may do: its scopes (none: everything) and expiry.
#[derive(Clone)]
pub struct Key {
    digest: Digest,
    label: Arc<str>,
    /// The label as a header value (`x-auth-key-label`), built once.
    label_value: HeaderValue,
    source: KeySource,
    scopes: Box<[Scope]>,
    expires: Option<SystemTime>,
    /// `owner=`: keys of one owner share their limits' counters (`None`: the
    /// key is its own owner, by label).
    owner: Option<Arc<str>>,
    /// `rate=`, `burst=`, `quota=`.
    limits: Limits,
    /// The headers of a forward-auth "allow" naming this key, built on first
    /// use (`crate::forward_auth`): a request then clones a map instead of
    /// hashing three header names.
    allow_headers: OnceLock<HeaderMap>,
    /// `Sunset`'s value (the expiry as an IMF-fixdate), built with it.
    sunset: Option<HeaderValue>,
    /// `canary`: the key never grants; its use is answered as a wrong key's,
    /// logged and counted (a leaked key planted where a thief would look).
    canary: bool,
    /// The encoded gRPC Check "allow" naming this key, built on first use
    /// (`crate::grpc::authz`).
    allow_check: OnceLock<bytes::Bytes>,
}

impl Key {
    /// Builds a key from its digest.
    pub fn new(digest: Digest, label: impl Into<Arc<str>>, source: KeySource) -> Self {
        let label: Arc<str> = label.into();
        Key {
            digest,
            // Key-file labels are letters, digits and `._:@/-`: always a
            // valid header value; anything else set by a library user is shown as `-`.
            label_value: HeaderValue::try_from(&*label).unwrap_or(HeaderValue::from_static("-")),
            label,
            source,
            scopes: Box::default(),
            expires: None,
            owner: None,
            limits: Limits::default(),
            allow_headers: OnceLock::new(),
            allow_check: OnceLock::new(),
            canary: false,
            sunset: None,
        }
    }

    /// Limits the key's requests; keys of one `owner` (default: the key's
    /// label) share the counters.
    pub(crate) fn with_limits(mut self, owner: Option<Arc<str>>, limits: Limits) -> Self {
        self.owner = owner;
        self.limits = limits;
        self
    }

    /// Whose counters the key's requests count against.
    pub(crate) fn owner(&self) -> &Arc<str> {
        self.owner.as_ref().unwrap_or(&self.label)
    }

    /// The key's rate and quota.
    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The key's forward-auth "allow" headers, built by `build` the first time.
    #[inline]
    pub fn allow_headers(&self, build: impl FnOnce(&Key) -> HeaderMap) -> &HeaderMap {
        self.allow_headers.get_or_init(|| build(self))
    }

    /// The key's encoded Check "allow", built by `build` the first time.
    #[inline]
    pub(crate) fn allow_check(&self, build: impl FnOnce(&Key) -> bytes::Bytes) -> &bytes::Bytes {
        self.allow_check.get_or_init(|| build(self))
    }

    /// Makes the key a canary: it never grants.
    pub fn as_canary(mut self) -> Self {
        self.canary = true;
        self
    }

    /// Whether the key is a canary.
    pub fn is_canary(&self) -> bool {
        self.canary
    }

    /// Limits the key to these scopes (alternatives; none means everything).
    pub fn with_scopes(mut self, scopes: Vec<Scope>) -> Self {
        self.scopes = scopes.into();
        self
    }

    /// The key is refused from `at` on.
    pub fn with_expiry(mut self, at: SystemTime) -> Self {
        self.expires = Some(at);
        self.sunset = HeaderValue::try_from(httpdate::fmt_http_date(at)).ok();
        self
    }

    /// `Sunset: <the expiry>` (RFC 8594) when the key expires within
    /// `notice` from now; `None` for a key without `expires=` (no clock read).
    #[inline]
    pub(crate) fn sunset(&self, notice: std::time::Duration) -> Option<&HeaderValue> {
        let at = self.expires?;
        let left = at.duration_since(SystemTime::now()).ok()?;
        (left <= notice).then_some(self.sunset.as_ref()?)
    }

    /// When the key stops being accepted, if ever.
    pub fn expires(&self) -> Option<SystemTime> {
        self.expires
    }

    /// The key's scopes (empty: it may do everything).
    pub fn scopes(&self) -> &[Scope] {
        &self.scopes
    }

    /// Whether the key may do `method` on `path` (normalised, no query).
    #[inline]
    pub fn allows(&self, method: &Method, path: &str) -> bool {
        self.scopes.is_empty() || self.scopes.iter().any(|s| s.allows(method, path))
    }

    /// Whether the key has expired by now (reads the clock only for keys
    /// that have an expiry).
    #[inline]
    pub fn expired(&self) -> bool {
        self.expires.is_some_and(|at| SystemTime::now() >= at)
    }

    /// The key's label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The key's label as a header value.
    pub fn label_value(&self) -> &HeaderValue {
        &self.label_value
    }

    /// The key's label, shared.
    pub fn label_arc(&self) -> Arc<str> {
        self.label.clone()
    }

    /// Where the key was configured.
    pub fn source(&self) -> &KeySource {
        &self.source
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("label", &self.label)
            .field("digest", &"<redacted>")
            .field("scopes", &self.scopes.len())
            .field("expires", &self.expires)
            .field("owner", self.owner())
            .field("limits", &self.limits)
            .finish()
    }
}

/// Index of a key in its [`KeySet`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyId(usize);

impl KeyId {
    /// The id of the key at `index` in its set.
    pub fn new(index: usize) -> Self {
        KeyId(index)
    }

    /// The position of the key in its set.
    pub fn index(self) -> usize {
        self.0
    }
}

/// The set of accepted keys, stored only as SHA-256 digests.
#[derive(Clone, Default)]
pub struct KeySet {
    by_digest: HashMap<Digest, KeyId, BuildHasherDefault<DigestHasher>>,
    keys: Vec<Key>,
}

/// Why a key could not be added to a [`KeySet`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InsertError {
    /// The same secret is already configured; holds the earlier key's source.
    DuplicateKey(KeySource),
    /// The label is already used; holds the earlier key's source.
    DuplicateLabel(KeySource),
    /// A key of the same owner declares other limits; holds its source.
    OwnerLimitsDiffer(KeySource),
}

impl KeySet {
    /// An empty key set.
    pub fn new() -> Self {
        Self::default()
    }

    /// The set tokengate runs with when no key is configured: the demo key
    /// (`file::DEMO_TOKEN`) alone, labelled `demo`.
    pub fn demo() -> Self {
        let mut keys = Self::new();
        let key = Key::new(
            Digest::of(file::DEMO_TOKEN.as_bytes()),
            "demo",
            KeySource::Demo,
        );
        keys.insert(key)
            .expect("the first key of an empty set is unique");
        keys
    }

    /// Adds a key. Digests and labels must be unique.
    pub fn insert(&mut self, key: Key) -> Result<KeyId, InsertError> {
        if let Some(id) = self.by_digest.get(&key.digest) {
            return Err(InsertError::DuplicateKey(self.keys[id.0].source.clone()));
        }
        if let Some(other) = self.keys.iter().find(|k| k.label == key.label) {
            return Err(InsertError::DuplicateLabel(other.source.clone()));
        }
        if let Some(other) = self
            .keys
            .iter()
            .find(|k| k.owner() == key.owner() && k.limits != key.limits)
        {
            return Err(InsertError::OwnerLimitsDiffer(other.source.clone()));
        }
        let id = KeyId(self.keys.len());
        self.by_digest.insert(key.digest, id);
        self.keys.push(key);
        Ok(id)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when no key is configured.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Labels of the keys that expire within `window` from now (or have expired).
    pub fn expiring_within(&self, window: std::time::Duration) -> Vec<&str> {
        let horizon = SystemTime::now() + window;
        self.keys
            .iter()
            .filter(|k| k.expires.is_some_and(|at| at <= horizon))
            .map(Key::label)
            .collect()
    }

    /// Logs a WARN naming the keys that expire within 7 days (at start-up
    /// and on every reload), so that an operator hears of it in time.
    pub fn warn_expiring(&self) {
        let soon = self.expiring_within(std::time::Duration::from_secs(7 * 24 * 3600));
        if !soon.is_empty() {
            tracing::warn!(keys = ?soon, "keys expire within 7 days (or have expired)");
        }
    }

    /// The keys, in the order they were configured.
    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    /// The key with this id, if the set has it.
    pub fn get(&self, id: KeyId) -> Option<&Key> {
        self.keys.get(id.0)
    }

    /// Checks a presented token: one SHA-256, one map probe, constant-time
    /// equality. A token in tokengate's format (`tg_…`) whose checksum
    /// fails is refused before it is hashed.
    pub fn verify(&self, token: &[u8]) -> Option<KeyId> {
        if token::bad_checksum(token) {
            return None;
        }
        self.by_digest.get(&Digest::of(token)).copied()
    }

    /// Extracts the credential from `headers` and checks it: the key set's
    /// part of the guard's [`Outcome`] (`Valid`, `Missing` or `Invalid`).
    ///
    /// `token_header` (default `X-Token`) wins when present; otherwise
    /// `Authorization: Bearer <token>` is used. Two or more fields of the
    /// header that carries the credential are always [`Outcome::Invalid`].
    #[inline]
    pub fn outcome_for(&self, headers: &HeaderMap, token_header: &HeaderName) -> Outcome {
        match credential(headers, token_header) {
            Ok(token) => match self.verify(token) {
                Some(id) => Outcome::Valid(id),
                None => Outcome::Invalid,
            },
            Err(rejected) => rejected,
        }
    }

    /// [`KeySet::outcome_for`], then the key's expiry and scopes against the
    /// request being authorised (`method` on `path`, normalised, no query):
    /// `Expired` and `Forbidden` refine a `Valid`.
    #[inline]
    pub fn authorize(
        &self,
        headers: &HeaderMap,
        token_header: &HeaderName,
        method: &Method,
        path: &str,
    ) -> Outcome {
        match self.outcome_for(headers, token_header) {
            Outcome::Valid(id) => match self.keys.get(id.0) {
                Some(key) if key.canary => Outcome::Canary(id),
                Some(key) if key.expired() => Outcome::Expired(id),
                Some(key) if !key.allows(method, path) => Outcome::Forbidden(id),
                _ => Outcome::Valid(id),
            },
            other => other,
        }
    }
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySet")
            .field(
                "labels",
                &self.keys.iter().map(Key::label).collect::<Vec<_>>(),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http::HeaderValue;

    const X_TOKEN: HeaderName = HeaderName::from_static("x-token");

    fn set(tokens: &[&str]) -> KeySet {
        let mut set = KeySet::new();
        for (i, t) in tokens.iter().enumerate() {
            set.insert(Key::new(
                Digest::of(t.as_bytes()),
                format!("key-{}", i + 1),
                KeySource::Env,
            ))
            .unwrap();
        }
        set
    }

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn verify_finds_only_configured_keys() {
        let keys = set(&["alpha", "beta"]);
        assert_eq!(keys.verify(b"beta"), Some(KeyId(1)));
        assert_eq!(keys.verify(b"alpha"), Some(KeyId(0)));
        assert_eq!(keys.verify(b"alphA"), None);
        assert_eq!(keys.verify(b""), None);
        assert_eq!(keys.get(KeyId(1)).unwrap().label(), "key-2");
        assert!(keys.get(KeyId(2)).is_none());
    }

    #[test]
    fn duplicates_are_rejected() {
        let mut keys = set(&["alpha"]);
        let dup = Key::new(Digest::of(b"alpha"), "other", KeySource::Demo);
        assert_eq!(
            keys.insert(dup),
            Err(InsertError::DuplicateKey(KeySource::Env))
        );
        let dup = Key::new(Digest::of(b"beta"), "key-1", KeySource::Demo);
        assert_eq!(
            keys.insert(dup),
            Err(InsertError::DuplicateLabel(KeySource::Env))
        );
    }

    #[test]
    fn debug_never_shows_secrets() {
        let keys = set(&["supersecret"]);
        let shown = format!("{keys:?} {:?}", keys.keys());
        assert!(!shown.contains("supersecret"));
        assert!(!shown.contains(&Digest::of(b"supersecret").to_hex()));
        assert!(shown.contains("key-1"));
    }

    #[test]
    fn guard_rules() {
        let keys = set(&["s3cret"]);
        let check = |pairs: &[(&str, &[u8])]| keys.outcome_for(&headers(pairs), &X_TOKEN);
        assert_eq!(check(&[]), Outcome::Missing);
        assert_eq!(check(&[("x-token", b"s3cret")]), Outcome::Valid(KeyId(0)));
        assert_eq!(
            check(&[("x-token", b" \ts3cret\t ")]),
            Outcome::Valid(KeyId(0))
        );
        assert_eq!(check(&[("x-token", b"wrong")]), Outcome::Invalid);
        assert_eq!(check(&[("x-token", b"")]), Outcome::Invalid);
        assert_eq!(
            check(&[("x-token", b"s3cret"), ("x-token", b"bad")]),
            Outcome::Invalid
        );
        assert_eq!(
            check(&[("x-token", b"bad"), ("x-token", b"s3cret")]),
            Outcome::Invalid
        );
        assert_eq!(
            check(&[("x-token", b"s3cret"), ("x-token", b"s3cret")]),
            Outcome::Invalid
        );
        assert_eq!(
            check(&[("authorization", b"Bearer s3cret")]),
            Outcome::Valid(KeyId(0))
        );
        assert_eq!(
            check(&[("authorization", b"bEaReR   s3cret ")]),
            Outcome::Valid(KeyId(0))
        );
        assert_eq!(
            check(&[("authorization", b"Bearer wrong")]),
            Outcome::Invalid
        );
        assert_eq!(check(&[("authorization", b"Bearer")]), Outcome::Invalid);
        assert_eq!(check(&[("authorization", b"Bearer  ")]), Outcome::Invalid);
        assert_eq!(
            check(&[("authorization", b"Basic czNjcmV0")]),
            Outcome::Missing
        );
        assert_eq!(
            check(&[("authorization", b"Bearers3cret")]),
            Outcome::Missing
        );
        assert_eq!(
            check(&[
                ("authorization", b"Bearer s3cret"),
                ("authorization", b"Bearer s3cret")
            ]),
            Outcome::Invalid
        );
        // X-Token wins over Bearer, whichever is right.
        assert_eq!(
            check(&[("x-token", b"wrong"), ("authorization", b"Bearer s3cret")]),
            Outcome::Invalid
        );
        assert_eq!(
            check(&[("x-token", b"s3cret"), ("authorization", b"Bearer wrong")]),
            Outcome::Valid(KeyId(0))
        );
        // obs-text bytes are just a wrong key.
        assert_eq!(check(&[("x-token", b"s3cr\xffet")]), Outcome::Invalid);
    }

    #[test]
    fn many_keys_all_found() {
        let tokens: Vec<String> = (0..10_000).map(|i| format!("token-{i}")).collect();
        let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
        let keys = set(&refs);
        for (i, t) in tokens.iter().enumerate() {
            assert_eq!(keys.verify(t.as_bytes()), Some(KeyId(i)));
        }
        assert_eq!(keys.verify(b"token-10000"), None);
    }
}
