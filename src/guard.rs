//! The guard of protected routes: the failed-credential throttle, then the
//! key set. Its [`Outcome`] is the one description of the decision that the
//! response, the metrics and the access log all use.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::keys::{Key, KeyId, KeySet, Outcome};
use crate::limits::{Checked, Counters, Limiter, RedisStore, StoreConfig, Stored};
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
    /// The limiters by key label (the rate-limit service names keys so).
    by_label: HashMap<Arc<str>, Arc<Limiter>>,
}

impl Live {
    fn new(keys: KeySet, ok: Vec<KeyCounters>, limiters: Vec<Option<Arc<Limiter>>>) -> Self {
        let by_label = keys
            .keys()
            .iter()
            .zip(&limiters)
            .filter_map(|(key, limiter)| Some((key.label_arc(), Arc::clone(limiter.as_ref()?))))
            .collect();
        Live {
            keys,
            ok,
            limiters,
            by_label,
        }
    }
}

/// A decision and the key set that made it.
pub(crate) struct Decided {
    /// What was decided.
    pub outcome: Outcome,
    /// For a key with limits: what they said (and the headers that say it).
    pub(crate) limit: Option<Checked>,
    /// An admitted key expiring within `--expiry-notice`: `Sunset`'s value.
    pub(crate) sunset: Option<HeaderValue>,
    /// With Redis: the limits still to ask the store about (the outcome is
    /// `Valid` until [`Guard::settle`]).
    pub(crate) pending: Option<Pending>,
    live: arc_swap::Guard<Arc<Live>>,
}

/// A store call still to make for a valid key with limits.
#[derive(Debug)]
pub(crate) struct Pending {
    store: Arc<RedisStore>,
    limiter: Arc<Limiter>,
    mono: u64,
    wall: u64,
}

impl Pending {
    /// Asks the store (bounded by its timeout).
    pub(crate) async fn ask(self) -> Stored {
        self.store
            .check(&self.limiter, self.mono, self.wall, 1)
            .await
    }

    /// The per-process counters' verdict instead (no waiting).
    pub(crate) fn local(&self) -> Checked {
        self.limiter.check(self.mono, self.wall, 1)
    }
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
    /// Rates and quotas, per owner (the memory store; with Redis the
    /// per-process fallback and the cache of refusals).
    counters: Counters,
    /// `--limits-store redis://…`.
    redis: Option<Arc<RedisStore>>,
    /// With Redis and the throttle on: its failure interval and burst, for
    /// the count shared by every replica.
    shared_throttle: Option<(std::time::Duration, u32)>,
    token_header: HeaderName,
    throttle: Option<Throttle>,
    /// `--expiry-notice`: answers to a key expiring within it carry `Sunset`.
    expiry_notice: std::time::Duration,
}

impl Guard {
    /// A guard over `keys`, reading the credential from `token_header` (or
    /// `Authorization: Bearer`).
    pub(crate) fn new(
        keys: KeySet,
        token_header: HeaderName,
        throttle: Option<ThrottleConfig>,
        store: &StoreConfig,
        metrics: &Metrics,
        expiry_notice: std::time::Duration,
    ) -> Self {
        let ok = metrics.key_counters(&keys);
        let counters = Counters::new(&store.prefix);
        let redis = store.redis.as_ref().map(|r| {
            Arc::new(
                RedisStore::new(
                    &r.url,
                    &store.prefix,
                    r.timeout,
                    r.failure,
                    metrics.store().cloned(),
                )
                .expect("the URL was validated with the configuration"),
            )
        });
        let limiters = counters.limiters(owners(&keys));
        Guard {
            live: ArcSwap::from_pointee(Live::new(keys, ok, limiters)),
            counters,
            shared_throttle: redis
                .as_ref()
                .and(throttle)
                .map(|t| (t.period / t.failures.get(), t.burst.get())),
            redis,
            token_header,
            throttle: throttle.map(|config| {
                let throttle = Throttle::new(config);
                throttle.report_tracked(metrics.throttle_tracked.clone());
                throttle
            }),
            expiry_notice,
        }
    }

    /// Replaces the accepted keys atomically: a request in flight finishes
    /// with the set it started with.
    pub(crate) fn replace_keys(&self, keys: KeySet, metrics: &Metrics) {
        let ok = metrics.key_counters(&keys);
        let limiters = self.counters.limiters(owners(&keys));
        self.live.store(Arc::new(Live::new(keys, ok, limiters)));
    }

    /// `hits` requests against the limits of the key labelled `label` (the
    /// rate-limit service), in the store HTTP requests use; `None` for no
    /// such key or a key without limits.
    pub(crate) async fn count_hits(
        &self,
        label: &str,
        hits: u64,
    ) -> Option<(Arc<Limiter>, Stored)> {
        let limiter = Arc::clone(self.live.load().by_label.get(label)?);
        let (mono, wall) = self.counters.now();
        let stored = match &self.redis {
            None => Stored::Checked(limiter.check(mono, wall, hits)),
            Some(store) => match limiter.known_refusal(mono) {
                Some(refused) => Stored::Checked(refused),
                None => store.check(&limiter, mono, wall, hits).await,
            },
        };
        Some((limiter, stored))
    }

    /// Decides on the credential in `headers` from `client`, for `method` on
    /// `path` (the request being authorised: normalised, no query). With
    /// `metrics`, the outcome is counted here, where the per-key counters that
    /// match the key set in use are at hand. The [`Decided`] keeps that key
    /// set, so the key the outcome names is read from the set that decided (a
    /// reload in between cannot swap it for another).
    ///
    /// A valid key's limits are counted only with `limits` (false: a gRPC
    /// Check whose limits Envoy's rate-limit filter applies).
    #[inline]
    pub(crate) fn decide(
        &self,
        headers: &HeaderMap,
        client: IpAddr,
        method: &Method,
        path: &str,
        metrics: Option<&Metrics>,
        limits: bool,
    ) -> Decided {
        let live = self.live.load();
        let blocked = self.throttle.as_ref().and_then(|t| t.blocked(client));
        // With Redis, what the shared count found (no call here).
        let blocked = blocked.or_else(|| {
            self.shared_throttle
                .and(self.redis.as_ref())
                .and_then(|store| store.throttled(client))
        });
        if let Some(wait) = blocked {
            let outcome = counted(Outcome::Throttled(wait), metrics, &[]);
            return Decided {
                outcome,
                limit: None,
                sunset: None,
                pending: None,
                live,
            };
        }
        let mut outcome = live
            .keys
            .authorize(headers, &self.token_header, method, path);
        match (outcome, metrics) {
            (Outcome::Canary(id), _) => canary_used(&live.keys, id, client, method, path),
            (Outcome::Valid(id), Some(metrics)) => metrics.key_used(&live.ok, id, client),
            _ => {}
        }
        // A wrong, missing or expired credential is a failure (a canary is
        // one, as a wrong key would be); a valid key outside its scopes is not.
        if matches!(
            outcome,
            Outcome::Missing | Outcome::Invalid | Outcome::Expired(_) | Outcome::Canary(_)
        ) {
            if let Some(wait) = self
                .throttle
                .as_ref()
                .and_then(|t| t.record_failure(client))
            {
                outcome = Outcome::Throttled(wait);
            }
            if let (Some((interval, burst)), Some(store)) = (self.shared_throttle, &self.redis) {
                store.record_failure(client, interval, burst);
            }
        }
        // Every request a valid key makes counts against its owner's limits.
        let mut limit = None;
        let mut pending = None;
        if let Outcome::Valid(id) = outcome
            && limits
            && let Some(Some(limiter)) = live.limiters.get(id.index())
        {
            let (mono, wall) = self.counters.now();
            let checked = match &self.redis {
                None => Some(limiter.check(mono, wall, 1)),
                // An owner known to be over a limit needs no call until its reset.
                Some(store) => limiter.known_refusal(mono).or_else(|| {
                    pending = Some(Pending {
                        store: Arc::clone(store),
                        limiter: Arc::clone(limiter),
                        mono,
                        wall,
                    });
                    None
                }),
            };
            if let Some(checked) = checked {
                if let Some((kind, wait)) = checked.refused {
                    outcome = Outcome::Limited(id, kind, wait);
                }
                limit = Some(checked);
            }
        }
        // A pending outcome is counted once the store has answered.
        let outcome = if pending.is_some() {
            outcome
        } else {
            counted(outcome, metrics, &live.ok)
        };
        let sunset = match outcome {
            Outcome::Valid(id) => live
                .keys
                .get(id)
                .and_then(|key| key.sunset(self.expiry_notice))
                .cloned(),
            _ => None,
        };
        Decided {
            outcome,
            limit,
            sunset,
            pending,
            live,
        }
    }

    /// The outcome once the store answered a pending check, counted:
    /// `Limited` if a limit refused, `None` for a store down under
    /// `--limits-store-failure closed`.
    pub(crate) fn settle(
        &self,
        outcome: Outcome,
        checked: Option<&Checked>,
        metrics: Option<&Metrics>,
    ) -> Outcome {
        let outcome = match (outcome, checked.and_then(|c| c.refused)) {
            (Outcome::Valid(id), Some((kind, wait))) => Outcome::Limited(id, kind, wait),
            (outcome, _) => outcome,
        };
        counted(outcome, metrics, &self.live.load().ok)
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

/// A canary key was presented: someone holds a key that was only ever
/// planted. WARN with the label, the client, the method and the path (never
/// the token).
#[cold]
fn canary_used(keys: &KeySet, id: crate::keys::KeyId, client: IpAddr, method: &Method, path: &str) {
    let label = keys.get(id).map_or("-", |k| k.label());
    tracing::warn!(
        key = label,
        client = %client,
        method = %method,
        path = %crate::path::Escaped(path),
        "canary key used: it was never given to anyone; whoever holds it found it where it was planted"
    );
}

/// Each key's owner and limits, for [`Counters::limiters`].
fn owners(keys: &KeySet) -> impl Iterator<Item = (&Arc<str>, crate::limits::Limits)> {
    keys.keys().iter().map(|k| (k.owner(), *k.limits()))
}

#[inline]
fn counted(outcome: Outcome, metrics: Option<&Metrics>, ok: &[KeyCounters]) -> Outcome {
    if let Some(metrics) = metrics {
        metrics.record_auth(&outcome, ok);
    }
    outcome
}
