//! Failed-credential throttling: per client address, a GCRA token bucket
//! (the `governor` crate) that counts only failed credential checks.
//!
//! An address over its limit gets 429 for every request to a protected route
//! until the bucket has room again — even with a valid key, or a brute-forcer
//! could tell a hit from a miss. Successful checks never consume the bucket,
//! and other addresses are unaffected. IPv6 clients are grouped by /64 (one
//! host usually owns a whole /64).
//!
//! Memory is bounded: both tables (bucket states and blocked addresses) are
//! fixed-capacity LRU maps; when full, the least recently seen address is
//! evicted.

use std::net::IpAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::{Clock, MonotonicClock};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::{Quota, RateLimiter};
use lru::LruCache;

/// Rate, burst and table size of the failed-credential limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Failures replenished per `period`.
    pub failures: NonZeroU32,
    /// The period over which `failures` are replenished.
    pub period: Duration,
    /// Failures allowed in a burst.
    pub burst: NonZeroU32,
    /// Most client addresses tracked at once.
    pub capacity: NonZeroUsize,
}

/// Default table size: 65 536 addresses (a few MiB at most).
pub const DEFAULT_CAPACITY: NonZeroUsize = NonZeroUsize::new(65_536).expect("non-zero");

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            failures: NonZeroU32::new(10).expect("non-zero"),
            period: Duration::from_secs(1),
            burst: NonZeroU32::new(50).expect("non-zero"),
            capacity: DEFAULT_CAPACITY,
        }
    }
}

impl ThrottleConfig {
    /// Parses `N/s`, `N/m` or `N/h` (a rate); `off` is handled by the caller.
    pub fn parse_rate(s: &str) -> Result<(NonZeroU32, Duration), String> {
        let (n, unit) = s
            .trim()
            .split_once('/')
            .ok_or_else(|| format!("{s:?}: write a rate like 10/s, 30/m or 100/h, or off"))?;
        let n: NonZeroU32 = n
            .trim()
            .parse()
            .map_err(|_| format!("{s:?}: the count must be a whole number from 1"))?;
        let period = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            other => return Err(format!("{s:?}: unknown unit {other:?} (use s, m or h)")),
        };
        Ok((n, period))
    }
}

/// The key of a client: its IPv4 address, or its IPv6 /64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientKey(u128);

impl From<IpAddr> for ClientKey {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => ClientKey(u128::from(u32::from(v4))),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientKey(u128::from(u32::from(v4))),
                // The low 64 bits are zero after masking; bit 32 marks IPv6, so no
                // /64 can equal an IPv4 key (all below 2^32).
                None => ClientKey((u128::from(v6) & (u128::MAX << 64)) | (1 << 32)),
            },
        }
    }
}

/// A fixed-capacity LRU table. The map grows on demand (an idle server holds
/// no table memory) and never past `capacity`: the least recently used entry
/// is evicted first.
struct Bounded<V> {
    map: Mutex<LruCache<ClientKey, V>>,
    capacity: usize,
}

impl<V> Bounded<V> {
    fn new(capacity: NonZeroUsize) -> Self {
        Bounded {
            map: Mutex::new(LruCache::unbounded()),
            capacity: capacity.get(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<ClientKey, V>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn bounded_put<V>(map: &mut LruCache<ClientKey, V>, capacity: usize, key: ClientKey, value: V) {
    if !map.contains(&key) {
        while map.len() >= capacity {
            map.pop_lru();
        }
    }
    map.put(key, value);
}

/// A bounded, LRU-evicting state store for governor.
struct LruStore(Arc<Bounded<Nanos>>);

impl StateStore for LruStore {
    type Key = ClientKey;

    fn measure_and_replace<T, F, E>(&self, key: &ClientKey, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut map = self.0.lock();
        let current = map.get(key).copied();
        let (result, next) = f(current)?;
        bounded_put(&mut map, self.0.capacity, *key, next);
        Ok(result)
    }
}

/// The failed-credential limiter.
pub struct Throttle {
    limiter: RateLimiter<ClientKey, LruStore, MonotonicClock, NoOpMiddleware<Instant>>,
    clock: MonotonicClock,
    /// The limiter's bucket states (shared with it), for sizing.
    states: Arc<Bounded<Nanos>>,
    /// Addresses over the limit, with the instant they may try again.
    blocked: Bounded<Instant>,
    /// Entries in `blocked`: lets the common case skip the lock entirely.
    blocked_len: AtomicUsize,
}

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttle")
            .field("blocked", &self.blocked_len.load(Relaxed))
            .finish()
    }
}

impl Throttle {
    /// Builds the limiter.
    pub fn new(config: ThrottleConfig) -> Self {
        let per_cell = config.period / config.failures.get();
        let quota = Quota::with_period(per_cell.max(Duration::from_nanos(1)))
            .expect("the period is at least one nanosecond")
            .allow_burst(config.burst);
        let states = Arc::new(Bounded::new(config.capacity));
        let clock = MonotonicClock;
        Throttle {
            limiter: RateLimiter::new(quota, LruStore(states.clone()), clock.clone()),
            clock,
            states,
            blocked: Bounded::new(config.capacity),
            blocked_len: AtomicUsize::new(0),
        }
    }

    /// Number of client addresses whose bucket is tracked.
    pub fn tracked(&self) -> usize {
        self.states.lock().len()
    }

    /// If `ip` is over its limit now, how long until it may try again.
    #[inline]
    pub fn blocked(&self, ip: IpAddr) -> Option<Duration> {
        if self.blocked_len.load(Relaxed) == 0 {
            return None;
        }
        let key = ClientKey::from(ip);
        let mut blocked = self.blocked.lock();
        let until = *blocked.peek(&key)?;
        let now = Instant::now();
        if until > now {
            return Some(until - now);
        }
        blocked.pop(&key);
        self.blocked_len.store(blocked.len(), Relaxed);
        None
    }

    /// Records a failed credential check. Returns the wait when this failure
    /// is over the limit (the address is then blocked for that long).
    pub fn record_failure(&self, ip: IpAddr) -> Option<Duration> {
        let key = ClientKey::from(ip);
        let not_until = self.limiter.check_key(&key).err()?;
        let wait = not_until.wait_time_from(self.clock.now());
        let mut blocked = self.blocked.lock();
        bounded_put(
            &mut blocked,
            self.blocked.capacity,
            key,
            Instant::now() + wait,
        );
        self.blocked_len.store(blocked.len(), Relaxed);
        Some(wait)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn config(failures: u32, period: Duration, burst: u32, capacity: usize) -> ThrottleConfig {
        ThrottleConfig {
            failures: NonZeroU32::new(failures).unwrap(),
            period,
            burst: NonZeroU32::new(burst).unwrap(),
            capacity: NonZeroUsize::new(capacity).unwrap(),
        }
    }

    #[test]
    fn burst_then_blocked_other_ips_unaffected() {
        let t = Throttle::new(config(1, Duration::from_secs(60), 3, 100));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(t.blocked(a), None);
            assert_eq!(t.record_failure(a), None);
        }
        let wait = t.record_failure(a).unwrap();
        assert!(
            wait > Duration::from_secs(30) && wait <= Duration::from_secs(60),
            "{wait:?}"
        );
        assert!(t.blocked(a).is_some());
        assert_eq!(t.blocked(b), None);
        assert_eq!(t.record_failure(b), None);
    }

    #[test]
    fn ipv6_is_grouped_by_64_and_mapped_v4_is_v4() {
        let k = |s: &str| ClientKey::from(s.parse::<IpAddr>().unwrap());
        assert_eq!(k("2001:db8:1:2::1"), k("2001:db8:1:2:ffff::9"));
        assert_ne!(k("2001:db8:1:2::1"), k("2001:db8:1:3::1"));
        assert_eq!(k("::ffff:127.0.0.1"), k("127.0.0.1"));
        assert_ne!(k("::1"), k("0.0.0.1"));
    }

    #[test]
    fn memory_is_bounded_and_oldest_evicted() {
        let t = Throttle::new(config(1, Duration::from_secs(3600), 1, 8));
        for i in 0..1000u32 {
            let ip = IpAddr::from(i.to_be_bytes());
            t.record_failure(ip);
            t.record_failure(ip);
        }
        assert_eq!(t.tracked(), 8);
        assert!(t.blocked.lock().len() <= 8);
        // The newest addresses are still blocked; the oldest were evicted.
        assert!(t.blocked(IpAddr::from(999u32.to_be_bytes())).is_some());
        assert!(t.blocked(IpAddr::from(0u32.to_be_bytes())).is_none());
    }

    #[test]
    fn rates_parse() {
        assert_eq!(
            ThrottleConfig::parse_rate("10/s").unwrap(),
            (NonZeroU32::new(10).unwrap(), Duration::from_secs(1))
        );
        assert_eq!(
            ThrottleConfig::parse_rate("30/m").unwrap().1,
            Duration::from_secs(60)
        );
        assert!(ThrottleConfig::parse_rate("0/s").is_err());
        assert!(ThrottleConfig::parse_rate("10").is_err());
        assert!(ThrottleConfig::parse_rate("10/d").is_err());
    }
}
