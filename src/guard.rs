//! The guard of protected routes: the failed-credential throttle, then the
//! key set. Its [`Outcome`] is the one description of the decision that the
//! response, the metrics and the access log all use.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{HeaderMap, HeaderName};
use prometheus_client::metrics::counter::Counter;

use crate::keys::{KeyId, KeySet};
use crate::metrics::Metrics;
use crate::throttle::{Throttle, ThrottleConfig};

/// What the guard decided about a request's credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A configured key was presented.
    Valid(KeyId),
    /// No credential was presented.
    Missing,
    /// A credential was presented and is wrong (or ambiguous: repeated fields).
    Invalid,
    /// The client is over its failed-credential limit: 429 for this long.
    Throttled(Duration),
}

/// The accepted keys and, aligned with them, their `ok` metric counters:
/// swapped together, atomically, on reload.
struct Live {
    keys: KeySet,
    ok: Vec<Counter>,
}

/// Throttle + keys.
pub struct Guard {
    live: ArcSwap<Live>,
    token_header: HeaderName,
    throttle: Option<Throttle>,
}

impl Guard {
    /// A guard over `keys`, reading the credential from `token_header` (or
    /// `Authorization: Bearer`).
    pub fn new(
        keys: KeySet,
        token_header: HeaderName,
        throttle: Option<ThrottleConfig>,
        metrics: &Metrics,
    ) -> Self {
        let ok = metrics.key_counters(&keys);
        Guard {
            live: ArcSwap::from_pointee(Live { keys, ok }),
            token_header,
            throttle: throttle.map(Throttle::new),
        }
    }

    /// Replaces the accepted keys atomically: a request in flight finishes
    /// with the set it started with.
    pub fn replace_keys(&self, keys: KeySet, metrics: &Metrics) {
        let ok = metrics.key_counters(&keys);
        self.live.store(Arc::new(Live { keys, ok }));
    }

    /// Decides on the credential in `headers` from `client`. With `metrics`,
    /// the outcome is counted here, where the per-key counters that match the
    /// key set in use are at hand.
    #[inline]
    pub fn check(&self, headers: &HeaderMap, client: IpAddr, metrics: Option<&Metrics>) -> Outcome {
        if let Some(wait) = self.throttle.as_ref().and_then(|t| t.blocked(client)) {
            return counted(Outcome::Throttled(wait), metrics, &[]);
        }
        let live = self.live.load();
        let outcome = live.keys.check(headers, &self.token_header);
        if !matches!(outcome, Outcome::Valid(_)) {
            if let Some(wait) = self
                .throttle
                .as_ref()
                .and_then(|t| t.record_failure(client))
            {
                return counted(Outcome::Throttled(wait), metrics, &live.ok);
            }
        }
        counted(outcome, metrics, &live.ok)
    }

    /// The label of a key of the set in use (for the access log; `-` when the
    /// keys were swapped since).
    pub fn label(&self, id: KeyId) -> Arc<str> {
        self.live
            .load()
            .keys
            .get(id)
            .map_or_else(|| Arc::from("-"), |k| k.label_arc())
    }

    /// The labels of the keys in use.
    pub fn labels(&self) -> Vec<Arc<str>> {
        self.live
            .load()
            .keys
            .keys()
            .iter()
            .map(|k| k.label_arc())
            .collect()
    }
}

#[inline]
fn counted(outcome: Outcome, metrics: Option<&Metrics>, ok: &[Counter]) -> Outcome {
    if let Some(metrics) = metrics {
        metrics.record_auth(&outcome, ok);
    }
    outcome
}
