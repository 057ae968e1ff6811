//! The counters of the memory store: one [`Limiter`] per owner, shared by
//! every key of that owner and kept across key reloads (a rotated key keeps
//! its owner's counters), lost on restart.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use http::HeaderValue;

use super::Limits;
use super::period::{self, Counted, Gcra, Verdict};

/// Which limit refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitKind {
    /// `rate=`: too fast; the wait is until one more request fits.
    Rate,
    /// `quota=`: used up; the wait is until the period resets.
    Quota,
}

/// One owner's counters.
#[derive(Debug, Default)]
struct State {
    /// The rate's theoretical arrival time (nanoseconds on the store's clock).
    tat: u64,
    quota: Counted,
}

/// The limits of one owner, its counters and its `RateLimit-Policy` value.
#[derive(Debug)]
pub(crate) struct Limiter {
    pub(super) limits: Limits,
    pub(super) gcra: Option<Gcra>,
    /// The counters of the memory store (with Redis: the per-process fallback).
    state: Mutex<State>,
    /// `RateLimit-Policy`, built once.
    policy: HeaderValue,
    /// The owner's hash in Redis: the prefix and `{owner}` (one hash slot).
    pub(super) store_key: Box<str>,
    /// With Redis: until when (the store's monotonic clock, nanoseconds) the
    /// owner is known to be over a limit, and which; answered without a call.
    refused_until: Mutex<Option<(u64, LimitKind, Checked)>>,
}

/// What a limiter says of one request: the decision and the `RateLimit`
/// value that goes with the answer.
#[derive(Debug)]
pub(crate) struct Checked {
    /// `None`: admitted.
    pub(crate) refused: Option<(LimitKind, Duration)>,
    /// `RateLimit-Policy`.
    pub(crate) policy: HeaderValue,
    /// `RateLimit`: what remains of each limit and when it resets.
    pub(crate) remaining: HeaderValue,
    /// What the rate and the quota said (`None`: the key has no such
    /// limit, or the store was not asked), as numbers.
    pub(crate) verdicts: [Option<Verdict>; 2],
}

impl Limiter {
    fn new(limits: Limits, store_key: Box<str>) -> Self {
        let mut policy = String::new();
        if let Some(rate) = limits.rate {
            let _ = write!(policy, "\"rate\";q={};w={}", rate.count, rate.window);
        }
        if let Some(quota) = limits.quota {
            if !policy.is_empty() {
                policy.push_str(", ");
            }
            let _ = write!(
                policy,
                "\"{}\";q={};w={}",
                quota.period.name(),
                quota.count,
                quota.period.nominal_seconds()
            );
        }
        Limiter {
            gcra: limits
                .rate
                .map(|r| Gcra::new(r.count, r.window * 1_000_000_000, r.burst)),
            limits,
            state: Mutex::default(),
            policy: HeaderValue::try_from(policy)
                .expect("names, digits, quotes and separators make a valid header value"),
            store_key,
            refused_until: Mutex::default(),
        }
    }

    /// The owner's limits.
    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// With Redis: the refusal still in force at `mono`, if the owner was
    /// found over a limit (no call needed until it ends).
    pub(crate) fn known_refusal(&self, mono: u64) -> Option<Checked> {
        let cached = self.refused_until.lock().unwrap_or_else(|e| e.into_inner());
        match &*cached {
            Some((until, kind, checked)) if mono < *until => {
                let wait = Duration::from_nanos(until - mono);
                Some(Checked {
                    refused: Some((*kind, wait)),
                    policy: checked.policy.clone(),
                    remaining: checked.remaining.clone(),
                    verdicts: checked.verdicts,
                })
            }
            _ => None,
        }
    }

    /// With Redis: remembers a refusal until its wait ends.
    pub(crate) fn remember(&self, mono: u64, checked: &Checked) {
        if let Some((kind, wait)) = checked.refused {
            let until = mono.saturating_add(u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX));
            let copy = Checked {
                refused: checked.refused,
                policy: checked.policy.clone(),
                remaining: checked.remaining.clone(),
                verdicts: checked.verdicts,
            };
            *self.refused_until.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((until, kind, copy));
        }
    }

    /// `hits` requests at `mono` (nanoseconds on the store's monotonic
    /// clock) and `wall` (seconds since the epoch): counted against both
    /// limits only if both admit them.
    pub(crate) fn check(&self, mono: u64, wall: u64, hits: u64) -> Checked {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let rate = self.gcra.map(|g| g.check(state.tat, mono, hits));
        let quota = self
            .limits
            .quota
            .map(|q| period::count(q.count, q.period, state.quota, wall, hits));
        let checked = self.checked(rate.map(|r| r.0), quota.map(|q| q.0));
        if checked.refused.is_none() {
            if let Some((_, tat)) = rate {
                state.tat = tat;
            }
            if let Some((_, counted)) = quota {
                state.quota = counted;
            }
        }
        checked
    }

    /// The decision and the fields for what each limit said of a request
    /// (a refused rate's wait in nanoseconds, a quota's in seconds); it is
    /// counted only if none refused.
    pub(crate) fn checked(&self, rate: Option<Verdict>, quota: Option<Verdict>) -> Checked {
        let refused = match (rate, quota) {
            (Some(Verdict::Refuse { retry }), _) => {
                Some((LimitKind::Rate, Duration::from_nanos(retry)))
            }
            (_, Some(Verdict::Refuse { retry })) => {
                Some((LimitKind::Quota, Duration::from_secs(retry)))
            }
            _ => None,
        };
        // Written by hand into the stack: `core::fmt` was a third of what a
        // limited key cost per request (scripts/instructions --limits).
        let mut remaining = Field::default();
        let counted = refused.is_none();
        if let Some(verdict) = rate {
            item(&mut remaining, "rate", verdict, counted);
        }
        if let (Some(verdict), Some(q)) = (quota, self.limits.quota) {
            item(&mut remaining, q.period.name(), verdict, counted);
        }
        Checked {
            refused,
            policy: self.policy.clone(),
            remaining: HeaderValue::from_bytes(remaining.as_bytes())
                .expect("names, digits, quotes and separators make a valid header value"),
            verdicts: [rate, quota],
        }
    }
}

/// A `RateLimit` value being written: at most two items of a name of up to
/// 5 bytes and two 20-digit numbers each (2 × 56 bytes and a separator).
struct Field {
    buf: [u8; 128],
    len: usize,
}

impl Default for Field {
    fn default() -> Self {
        Field {
            buf: [0; 128],
            len: 0,
        }
    }
}

impl Field {
    fn extend_from_slice(&mut self, bytes: &[u8]) {
        let end = self.len + bytes.len();
        self.buf[self.len..end].copy_from_slice(bytes);
        self.len = end;
    }

    fn push(&mut self, byte: u8) {
        self.extend_from_slice(&[byte]);
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// `"name";r=R;t=T` for one limit, after a comma if others came before. A
/// limit that would have admitted a request the other refused was not
/// counted: it still has that one.
fn item(out: &mut Field, name: &str, verdict: Verdict, counted: bool) {
    if !out.is_empty() {
        out.extend_from_slice(b", ");
    }
    let (r, t) = match verdict {
        Verdict::Admit { remaining, reset } => (remaining + u64::from(!counted), reset),
        // A refused rate's wait is in nanoseconds: whole seconds, rounded up.
        Verdict::Refuse { retry } if name == "rate" => (0, retry.div_ceil(1_000_000_000)),
        Verdict::Refuse { retry } => (0, retry),
    };
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\";r=");
    push_number(out, r);
    out.extend_from_slice(b";t=");
    push_number(out, t);
}

/// `n` in decimal (itoa: two digits a step).
fn push_number(out: &mut Field, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Every owner's limiter, by owner name (the memory store's counters, and
/// with Redis the per-process fallback and the cache of refusals).
#[derive(Debug)]
pub(crate) struct Counters {
    owners: Mutex<HashMap<Arc<str>, Arc<Limiter>>>,
    /// The zero of the rates' monotonic clock.
    epoch: Instant,
    /// `--limits-store-prefix`, before each owner's Redis key.
    prefix: Box<str>,
}

impl Default for Counters {
    fn default() -> Self {
        Counters::new("tokengate:")
    }
}

impl Counters {
    /// Counters whose Redis keys start with `prefix`.
    pub(crate) fn new(prefix: &str) -> Self {
        Counters {
            owners: Mutex::default(),
            epoch: Instant::now(),
            prefix: prefix.into(),
        }
    }
}

impl Counters {
    /// The limiter of each key, given as its owner and limits (aligned with
    /// them; `None` for a key without limits). An owner keeps its limiter,
    /// and so its counters, as long as its limits stay the same; owners no
    /// longer in `keys` are dropped.
    pub(crate) fn limiters<'k>(
        &self,
        keys: impl IntoIterator<Item = (&'k Arc<str>, Limits)>,
    ) -> Vec<Option<Arc<Limiter>>> {
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        let mut kept: HashMap<Arc<str>, Arc<Limiter>> = HashMap::new();
        let limiters = keys
            .into_iter()
            .map(|(owner, limits)| {
                if !limits.is_limited() {
                    return None;
                }
                let limiter = kept
                    .get(owner)
                    .or_else(|| owners.get(owner).filter(|l| l.limits == limits))
                    .cloned()
                    .unwrap_or_else(|| {
                        let store_key = format!("{}{{{owner}}}", self.prefix);
                        Arc::new(Limiter::new(limits, store_key.into()))
                    });
                kept.insert(owner.clone(), limiter.clone());
                Some(limiter)
            })
            .collect();
        *owners = kept;
        limiters
    }

    /// Now, on the rates' clock (nanoseconds) and the quotas' (seconds).
    pub(crate) fn now(&self) -> (u64, u64) {
        let mono = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let wall = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        (mono, wall)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::keys::{Digest, Key, KeySet, KeySource};

    /// What `Counters::limiters` takes of a key set.
    fn owners(keys: &KeySet) -> impl Iterator<Item = (&Arc<str>, Limits)> {
        keys.keys().iter().map(|k| (k.owner(), *k.limits()))
    }
    use crate::limits::period::Period;
    use crate::limits::{Quota, Rate};

    fn key(token: &str, label: &str, owner: Option<&str>, limits: Limits) -> Key {
        Key::new(Digest::of(token.as_bytes()), label, KeySource::Env)
            .with_limits(owner.map(Arc::from), limits)
    }

    /// The longest value there can be fits the stack buffer.
    #[test]
    fn the_longest_ratelimit_value_fits() {
        let mut field = Field::default();
        let most = Verdict::Admit {
            remaining: u64::MAX - 1,
            reset: u64::MAX,
        };
        item(&mut field, "rate", most, false);
        item(&mut field, "month", most, false);
        let max = u64::MAX;
        assert_eq!(
            std::str::from_utf8(field.as_bytes()).unwrap(),
            format!("\"rate\";r={max};t={max}, \"month\";r={max};t={max}")
        );
    }

    const TEN_A_SECOND_AND_THREE_A_DAY: Limits = Limits {
        rate: Some(Rate {
            count: 10,
            window: 1,
            burst: 10,
        }),
        quota: Some(Quota {
            count: 3,
            period: Period::Day,
        }),
    };

    #[test]
    fn both_limits_count_only_what_both_admit_and_say_so_in_the_headers() {
        let counters = Counters::default();
        let mut keys = KeySet::new();
        keys.insert(key("a", "a", None, TEN_A_SECOND_AND_THREE_A_DAY))
            .unwrap();
        let limiter = counters.limiters(owners(&keys))[0].clone().unwrap();
        assert_eq!(limiter.policy, "\"rate\";q=10;w=1, \"day\";q=3;w=86400");
        let noon = 1_709_208_000;
        let (mono, _) = counters.now();
        for r in [2, 1, 0] {
            let c = limiter.check(mono, noon, 1);
            assert!(c.refused.is_none());
            assert_eq!(
                c.remaining,
                format!("\"rate\";r={};t=1, \"day\";r={r};t=43200", 9 - (2 - r)).as_str()
            );
        }
        let c = limiter.check(mono, noon, 1);
        assert_eq!(
            c.refused,
            Some((LimitKind::Quota, Duration::from_secs(43_200)))
        );
        // The refused request took nothing from the rate.
        assert!(c.remaining.to_str().unwrap().starts_with("\"rate\";r=7;"));
    }

    #[test]
    fn a_rotated_key_keeps_its_owners_counters_and_new_limits_start_afresh() {
        let counters = Counters::default();
        let quota_only = Limits {
            rate: None,
            quota: Some(Quota {
                count: 2,
                period: Period::Month,
            }),
        };
        let mut keys = KeySet::new();
        keys.insert(key("old", "old", Some("team"), quota_only))
            .unwrap();
        let first = counters.limiters(owners(&keys))[0].clone().unwrap();
        let (mono, wall) = counters.now();
        assert!(first.check(mono, wall, 1).refused.is_none());
        // The old key is replaced by a new one of the same owner.
        let mut rotated = KeySet::new();
        rotated
            .insert(key("new", "new", Some("team"), quota_only))
            .unwrap();
        rotated
            .insert(key("free", "free", None, Limits::default()))
            .unwrap();
        let limiters = counters.limiters(owners(&rotated));
        let second = limiters[0].clone().unwrap();
        assert!(Arc::ptr_eq(&first, &second));
        assert!(limiters[1].is_none());
        assert!(second.check(mono, wall, 1).refused.is_none());
        assert_eq!(
            second.check(mono, wall, 1).refused.map(|r| r.0),
            Some(LimitKind::Quota)
        );
        // Other limits for the owner: fresh counters.
        let mut changed = KeySet::new();
        let more = Limits {
            quota: Some(Quota {
                count: 5,
                period: Period::Month,
            }),
            ..quota_only
        };
        changed
            .insert(key("new", "new", Some("team"), more))
            .unwrap();
        let third = counters.limiters(owners(&changed))[0].clone().unwrap();
        assert!(!Arc::ptr_eq(&first, &third));
        assert!(third.check(mono, wall, 1).refused.is_none());
    }
}
