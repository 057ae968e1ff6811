//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`: the
//! descriptors that name a key (`tokengate_key` = its label), and a
//! descriptor's status from what the key's limits said.

use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    Code as RlsCode, DescriptorStatus, RateLimit,
};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::Duration as PbDuration;

use crate::limits::period::{Period, Verdict};
use crate::limits::{Checked, LimitKind, Limits};

/// The descriptor entry that names a key.
pub(crate) const KEY_ENTRY: &str = "tokengate_key";

/// Each descriptor of `request`: the key label it names (`None`: it names
/// none, and is OK) and the hits it adds (the descriptor's `hits_addend`,
/// else the request's, else 1).
pub(crate) fn descriptors(request: &RateLimitRequest) -> impl Iterator<Item = (Option<&str>, u64)> {
    let default = u64::from(request.hits_addend.max(1));
    request.descriptors.iter().map(move |descriptor| {
        let label = descriptor
            .entries
            .iter()
            .find(|entry| entry.key == KEY_ENTRY)
            .map(|entry| entry.value.as_str());
        let hits = descriptor
            .hits_addend
            .as_ref()
            .map_or(default, |h| h.value.max(1));
        (label, hits)
    })
}

/// OK for a descriptor no key's limits apply to.
pub(crate) fn unlimited() -> DescriptorStatus {
    DescriptorStatus {
        code: RlsCode::Ok as i32,
        ..DescriptorStatus::default()
    }
}

/// A descriptor's status: OVER_LIMIT when a limit refused; the limit it
/// reports is the one that refused, else the one with the fewest requests
/// left (the rate on a tie).
pub(crate) fn status(limits: &Limits, checked: &Checked) -> DescriptorStatus {
    let [rate, quota] = checked.verdicts;
    let rate = limits.rate.zip(rate).map(|(r, v)| {
        let unit = match r.window {
            1 => Unit::Second,
            60 => Unit::Minute,
            _ => Unit::Hour,
        };
        // A refused rate's wait is in nanoseconds.
        let v = match v {
            Verdict::Refuse { retry } => Verdict::Refuse {
                retry: retry.div_ceil(1_000_000_000),
            },
            admitted => admitted,
        };
        (limit("rate", r.count, unit), v)
    });
    let quota = limits.quota.zip(quota).map(|(q, v)| {
        let unit = match q.period {
            Period::Hour => Unit::Hour,
            Period::Day => Unit::Day,
            Period::Month => Unit::Month,
        };
        let count = u32::try_from(q.count).unwrap_or(u32::MAX);
        (limit(q.period.name(), count, unit), v)
    });
    let left = |v: &Verdict| match v {
        Verdict::Admit { remaining, .. } => *remaining,
        Verdict::Refuse { .. } => 0,
    };
    let reported = match (checked.refused, rate, quota) {
        (Some((LimitKind::Rate, _)), Some(r), _) => Some(r),
        (Some((LimitKind::Quota, _)), _, Some(q)) => Some(q),
        (_, Some(r), Some(q)) => Some(if left(&q.1) < left(&r.1) { q } else { r }),
        (_, r, q) => r.or(q),
    };
    let Some((current_limit, verdict)) = reported else {
        return unlimited();
    };
    let (code, remaining, reset) = match verdict {
        Verdict::Admit { remaining, reset } => (RlsCode::Ok, remaining, reset),
        Verdict::Refuse { retry } => (RlsCode::OverLimit, 0, retry),
    };
    DescriptorStatus {
        code: code as i32,
        current_limit: Some(current_limit),
        limit_remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
        duration_until_reset: Some(PbDuration {
            seconds: i64::try_from(reset).unwrap_or(i64::MAX),
            nanos: 0,
        }),
        quota: None,
    }
}

fn limit(name: &str, requests_per_unit: u32, unit: Unit) -> RateLimit {
    RateLimit {
        name: name.to_owned(),
        requests_per_unit,
        unit: unit as i32,
    }
}

/// The response: OVER_LIMIT overall if any descriptor is.
pub(crate) fn response(statuses: Vec<DescriptorStatus>) -> RateLimitResponse {
    let over = statuses.iter().any(|s| s.code == RlsCode::OverLimit as i32);
    RateLimitResponse {
        overall_code: if over {
            RlsCode::OverLimit
        } else {
            RlsCode::Ok
        } as i32,
        statuses,
        ..RateLimitResponse::default()
    }
}
