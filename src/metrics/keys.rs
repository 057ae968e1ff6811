//! The per-key series: `tokengate_auth_total{key}` (resolved at each key
//! load), the last use, the client-network sketch, canary hits.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use super::Metrics;
use super::labels::{AuthLabels, KeyLabel};
use super::networks;
use crate::keys::{Key, KeySet};

/// A key's own series of `tokengate_auth_total`, resolved at each key load.
#[derive(Debug)]
pub(crate) struct KeyCounters {
    /// `outcome="ok"`.
    pub(super) ok: Counter,
    /// `outcome="rate_limited"` and `"quota_exhausted"`, for a key with limits.
    pub(super) limited: Option<[Counter; 2]>,
    /// `tokengate_canary_hits_total{key}`, for a canary key.
    pub(super) canary: Option<Counter>,
    /// `tokengate_key_last_used_timestamp_seconds{key}`, and the second it
    /// was last set (set at most once a second: one atomic load otherwise).
    pub(super) last_used: Gauge,
    pub(super) last_second: AtomicU64,
    /// The key's label, and its client-network sketch once it was used.
    pub(super) label: Arc<str>,
    pub(super) networks: networks::Slot,
}

impl Metrics {
    pub(crate) fn key_counters(&self, keys: &KeySet) -> Vec<KeyCounters> {
        self.keys_loaded
            .set(i64::try_from(keys.len()).unwrap_or(i64::MAX));
        self.key_expiry.clear();
        self.networks
            .retain(&keys.keys().iter().map(Key::label_arc).collect());
        for key in keys.keys() {
            if let Some(at) = key.expires() {
                let secs = at
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
                self.key_expiry
                    .get_or_create(&KeyLabel {
                        key: key.label_arc(),
                    })
                    .set(secs);
            }
        }
        keys.keys()
            .iter()
            .map(|k| {
                let counter = |outcome| {
                    self.auth_family.get_or_create_owned(&AuthLabels {
                        outcome,
                        key: Some(k.label_arc()),
                    })
                };
                let label = KeyLabel { key: k.label_arc() };
                KeyCounters {
                    ok: counter("ok"),
                    limited: k
                        .limits()
                        .is_limited()
                        .then(|| [counter("rate_limited"), counter("quota_exhausted")]),
                    canary: k
                        .is_canary()
                        .then(|| self.canary_hits.get_or_create_owned(&label)),
                    last_used: self.key_last_used.get_or_create_owned(&label),
                    last_second: AtomicU64::new(0),
                    networks: self
                        .networks
                        .existing(&label.key)
                        .map(std::sync::OnceLock::from)
                        .unwrap_or_default(),
                    label: label.key,
                }
            })
            .collect()
    }

    /// A valid key was presented by `client`: its last-use gauge (set at
    /// most once a second; no lock, two requests in the same second may both
    /// set it) and its client-network sketch (made at its first use).
    #[inline]
    pub(crate) fn key_used(
        &self,
        key_counters: &[KeyCounters],
        id: crate::keys::KeyId,
        client: std::net::IpAddr,
    ) {
        let Some(c) = key_counters.get(id.index()) else {
            return;
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if c.last_second.load(Ordering::Relaxed) != now {
            c.last_second.store(now, Ordering::Relaxed);
            c.last_used.set(i64::try_from(now).unwrap_or(i64::MAX));
        }
        c.networks
            .get_or_init(|| self.networks.get_or_make(&c.label))
            .insert(client, now);
    }
}
