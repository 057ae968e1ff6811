//! The guard of protected routes: the failed-credential throttle, then the
//! key set. Its [`Outcome`] is the one description of the decision that the
//! response, the metrics and the access log all use.

use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::{HeaderMap, HeaderName, Method};

use crate::keys::{Key, KeyId, KeySet, Outcome};
use crate::limits::{Checked, Counters, Limiter};
use crate::metrics::{KeyCounters, Metrics};
use crate::throttle::{Throttle, ThrottleConfig};

/// The accepted keys and, aligned with them, their `ok` metric counters:
/// swapped together, atomically, on reload.
struct Live {
    keys: KeySet,
    /// Each key's metric series.
    ok: Vec<KeyCounters>,
    /// Each key's limiter (`None`: no limits), its owner's counters.
    limiters: Vec<Option<Arc<Limiter>>>,
}

/// A decision and the key set that made it.
pub(crate) struct Decided {
    /// What was decided.
    pub outcome: Outcome,
    /// For a key with limits: what they said (and the headers that say it).
    pub(crate) limit: Option<Checked>,
    live: arc_swap::Guard<Arc<Live>>,
}

impl Decided {
    /// The key the outcome names (valid, expired or out of scope).
    pub(crate) fn key(&self) -> Option<&Key> {
        match self.outcome {
            Outcome::Valid(id)
            | Outcome::Expired(id)
            | Outcome::Forbidden(id)
            | Outcome::Limited(id, ..) => self.live.keys.get(id),
            _ => None,
        }
    }
}

/// Throttle + keys.
pub(crate) struct Guard {
    live: ArcSwap<Live>,
    /// Rates and quotas, per owner (the memory store).
    counters: Counters,
    token_header: HeaderName,
    throttle: Option<Throttle>,
}

impl Guard {
    /// A guard over `keys`, reading the credential from `token_header` (or
    /// `Authorization: Bearer`).
    pub(crate) fn new(
        keys: KeySet,
        token_header: HeaderName,
        throttle: Option<ThrottleConfig>,
        metrics: &Metrics,
    ) -> Self {
        let ok = metrics.key_counters(&keys);
        let counters = Counters::default();
        let limiters = counters.limiters(&keys);
        Guard {
            live: ArcSwap::from_pointee(Live { keys, ok, limiters }),
            counters,
            token_header,
            throttle: throttle.map(|config| {
                let throttle = Throttle::new(config);
                throttle.report_tracked(metrics.throttle_tracked.clone());
                throttle
            }),
        }
    }

    /// Replaces the accepted keys atomically: a request in flight finishes
    /// with the set it started with.
    pub(crate) fn replace_keys(&self, keys: KeySet, metrics: &Metrics) {
        let ok = metrics.key_counters(&keys);
        let limiters = self.counters.limiters(&keys);
        self.live.store(Arc::new(Live { keys, ok, limiters }));
    }

    /// Decides on the credential in `headers` from `client`, for `method` on
    /// `path` (the request being authorised: normalised, no query). With
    /// `metrics`, the outcome is counted here, where the per-key counters that
    /// match the key set in use are at hand. The [`Decided`] keeps that key
    /// set, so the key the outcome names is read from the set that decided (a
    /// reload in between cannot swap it for another).
    #[inline]
    pub(crate) fn decide(
        &self,
        headers: &HeaderMap,
        client: IpAddr,
        method: &Method,
        path: &str,
        metrics: Option<&Metrics>,
    ) -> Decided {
        let live = self.live.load();
        if let Some(wait) = self.throttle.as_ref().and_then(|t| t.blocked(client)) {
            let outcome = counted(Outcome::Throttled(wait), metrics, &[]);
            return Decided {
                outcome,
                limit: None,
                live,
            };
        }
        let mut outcome = live
            .keys
            .authorize(headers, &self.token_header, method, path);
        // A wrong, missing or expired credential is a failure; a valid key
        // outside its scopes is not.
        if matches!(
            outcome,
            Outcome::Missing | Outcome::Invalid | Outcome::Expired(_)
        ) {
            if let Some(wait) = self
                .throttle
                .as_ref()
                .and_then(|t| t.record_failure(client))
            {
                outcome = Outcome::Throttled(wait);
            }
        }
        // Every request a valid key makes counts against its owner's limits.
        let mut limit = None;
        if let Outcome::Valid(id) = outcome
            && let Some(Some(limiter)) = live.limiters.get(id.index())
        {
            let (mono, wall) = self.counters.now();
            let checked = limiter.check(mono, wall);
            if let Some((kind, wait)) = checked.refused {
                outcome = Outcome::Limited(id, kind, wait);
            }
            limit = Some(checked);
        }
        let outcome = counted(outcome, metrics, &live.ok);
        Decided {
            outcome,
            limit,
            live,
        }
    }

    /// The label of a key of the set in use (for the access log; `-` when the
    /// keys were swapped since).
    pub(crate) fn label(&self, id: KeyId) -> Arc<str> {
        self.live
            .load()
            .keys
            .get(id)
            .map_or_else(|| Arc::from("-"), |k| k.label_arc())
    }

    /// The labels of the keys in use.
    pub(crate) fn labels(&self) -> Vec<Arc<str>> {
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
fn counted(outcome: Outcome, metrics: Option<&Metrics>, ok: &[KeyCounters]) -> Outcome {
    if let Some(metrics) = metrics {
        metrics.record_auth(&outcome, ok);
    }
    outcome
}
