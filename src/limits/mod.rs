//! Per-key rate limits and quotas (`rate=`, `burst=`, `quota=`, `owner=` in
//! the key file): what a key declares ([`Limits`]), the arithmetic of one
//! request against it (`period`: GCRA and UTC calendar periods, the clock
//! passed in), and the counters, shared by every key of one owner.

mod counters;
pub(crate) mod period;
mod redis;

pub use counters::LimitKind;
pub(crate) use counters::{Checked, Counters, Limiter};
use period::Period;
pub use redis::{Failure, StoreUrlError};
pub(crate) use redis::{RedisStore, STORE_ERROR_KINDS, StoreMetrics, Stored};

/// Where the counters live (`--limits-store` and its companions).
#[derive(Clone)]
pub struct StoreConfig {
    pub(crate) redis: Option<RedisConfig>,
    pub(crate) prefix: String,
}

/// A Redis store's settings (the URL may hold a password: never shown).
#[derive(Clone)]
pub(crate) struct RedisConfig {
    pub(crate) url: zeroize::Zeroizing<String>,
    pub(crate) timeout: std::time::Duration,
    pub(crate) failure: Failure,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig::memory()
    }
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field(
                "redis",
                &self.redis.as_ref().map(|r| (r.timeout, r.failure)),
            )
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl StoreConfig {
    /// Counters in this process (the default).
    pub fn memory() -> Self {
        StoreConfig {
            redis: None,
            prefix: "tokengate:".to_owned(),
        }
    }

    /// Counters in Redis at `url`, keys under `prefix`.
    pub fn redis(
        url: &str,
        prefix: &str,
        timeout: std::time::Duration,
        failure: Failure,
    ) -> Result<Self, StoreUrlError> {
        redis::validate(url)?;
        Ok(StoreConfig {
            redis: Some(RedisConfig {
                url: zeroize::Zeroizing::new(url.to_owned()),
                timeout,
                failure,
            }),
            prefix: prefix.to_owned(),
        })
    }
}

/// A rate: `count` requests per `window` seconds, `burst` at once (GCRA).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Rate {
    /// Requests per window.
    pub(crate) count: u32,
    /// The window in seconds (1, 60 or 3600).
    pub(crate) window: u64,
    /// Requests admitted at once (default: `count`).
    pub(crate) burst: u32,
}

/// A quota: `count` requests per calendar hour, day or month in UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Quota {
    /// Requests per period.
    pub(crate) count: u64,
    /// The calendar period.
    pub(crate) period: Period,
}

/// What a key declares: a rate, a quota, both or neither.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Limits {
    /// `rate=` (and `burst=`).
    pub(crate) rate: Option<Rate>,
    /// `quota=`.
    pub(crate) quota: Option<Quota>,
}

impl Limits {
    /// Whether the key is limited at all.
    pub(crate) fn is_limited(&self) -> bool {
        self.rate.is_some() || self.quota.is_some()
    }
}

/// What is wrong with a limit attribute (named in the key-file error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitProblem {
    /// Not `N/s`, `N/m` or `N/h` with N ≥ 1.
    #[error("a rate is N/s, N/m or N/h with N from 1 to 1000000000")]
    BadRate,
    /// Not `N/hour`, `N/day` or `N/month` with N ≥ 1.
    #[error("a quota is N/hour, N/day or N/month with N at least 1")]
    BadQuota,
    /// Not a whole number ≥ 1.
    #[error("a burst is a whole number from 1 to 1000000000")]
    BadBurst,
    /// `burst=` without `rate=`.
    #[error("burst= needs rate= on the same line")]
    BurstWithoutRate,
    /// The same attribute twice on one line.
    #[error("given twice")]
    Twice,
}

const MAX_RATE: u32 = 1_000_000_000;

/// `N/s`, `N/m` or `N/h` → (N, window in seconds).
pub(crate) fn parse_rate(value: &str) -> Result<(u32, u64), LimitProblem> {
    let (n, unit) = value.split_once('/').ok_or(LimitProblem::BadRate)?;
    let n = whole(n, MAX_RATE).ok_or(LimitProblem::BadRate)?;
    let window = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(LimitProblem::BadRate),
    };
    Ok((n, window))
}

/// `N/hour`, `N/day` or `N/month` → (N, period).
pub(crate) fn parse_quota(value: &str) -> Result<(u64, Period), LimitProblem> {
    let (n, unit) = value.split_once('/').ok_or(LimitProblem::BadQuota)?;
    let n = digits(n)
        .and_then(|n| n.parse::<u64>().ok())
        .filter(|&n| n >= 1)
        .ok_or(LimitProblem::BadQuota)?;
    let period = match unit {
        "hour" => Period::Hour,
        "day" => Period::Day,
        "month" => Period::Month,
        _ => return Err(LimitProblem::BadQuota),
    };
    Ok((n, period))
}

/// `N` → N when 1 ≤ N ≤ 1,000,000,000.
pub(crate) fn parse_burst(value: &str) -> Result<u32, LimitProblem> {
    whole(value, MAX_RATE).ok_or(LimitProblem::BadBurst)
}

fn whole(text: &str, max: u32) -> Option<u32> {
    digits(text)?
        .parse()
        .ok()
        .filter(|&n| (1..=max).contains(&n))
}

/// `text` when it is only ASCII digits (no sign, no space).
fn digits(text: &str) -> Option<&str> {
    (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_values_parse_or_say_what_is_wrong() {
        assert_eq!(parse_rate("100/s"), Ok((100, 1)));
        assert_eq!(parse_rate("5/m"), Ok((5, 60)));
        assert_eq!(parse_rate("1/h"), Ok((1, 3600)));
        for bad in [
            "0/s",
            "-1/s",
            "+1/s",
            "1.5/s",
            "1/d",
            "1",
            "/s",
            "1/",
            "1 /s",
            "1000000001/s",
        ] {
            assert_eq!(parse_rate(bad), Err(LimitProblem::BadRate), "{bad}");
        }
        assert_eq!(parse_quota("10000/day"), Ok((10_000, Period::Day)));
        assert_eq!(parse_quota("1/hour"), Ok((1, Period::Hour)));
        assert_eq!(parse_quota("500000/month"), Ok((500_000, Period::Month)));
        for bad in [
            "0/day",
            "1/week",
            "1/s",
            "x/day",
            "1/Day",
            "99999999999999999999/day",
        ] {
            assert_eq!(parse_quota(bad), Err(LimitProblem::BadQuota), "{bad}");
        }
        assert_eq!(parse_burst("20"), Ok(20));
        for bad in ["0", "", "-3", "1e3"] {
            assert_eq!(parse_burst(bad), Err(LimitProblem::BadBurst), "{bad}");
        }
    }
}
