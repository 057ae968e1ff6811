//! The arithmetic of a limit, pure and with the clock passed in: GCRA for a
//! rate, UTC calendar periods for a quota. Times are whole nanoseconds
//! (rates) or seconds (quotas) since the Unix epoch.

/// A rate's GCRA state is its theoretical arrival time (TAT): when the bucket
/// is empty again. `interval` is the time one request uses (the window over
/// the count); `burst` requests fit at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Gcra {
    /// Nanoseconds one request takes from the allowance.
    pub(crate) interval: u64,
    /// Requests that may arrive at once.
    pub(crate) burst: u32,
}

/// What one request did to a limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Admitted; `remaining` more would be admitted now, and the allowance is
    /// whole again (rate) or the period resets (quota) in `reset` seconds.
    Admit { remaining: u64, reset: u64 },
    /// Refused; try again in `retry` nanoseconds (rate) or seconds (quota).
    Refuse { retry: u64 },
}

impl Gcra {
    /// The limit `count` requests per `window_ns` with `burst` at once.
    pub(crate) fn new(count: u32, window_ns: u64, burst: u32) -> Self {
        Gcra {
            interval: (window_ns / u64::from(count.max(1))).max(1),
            burst: burst.max(1),
        }
    }

    /// `hits` requests at `now` against the state `tat`: the verdict and the
    /// new state (unchanged when refused).
    pub(crate) fn check(&self, tat: u64, now: u64, hits: u64) -> (Verdict, u64) {
        let capacity = self.interval.saturating_mul(u64::from(self.burst));
        let next = tat
            .max(now)
            .saturating_add(self.interval.saturating_mul(hits));
        // The earliest time `next` leaves room for this request.
        let allowed_from = next.saturating_sub(capacity);
        if now < allowed_from {
            return (
                Verdict::Refuse {
                    retry: allowed_from - now,
                },
                tat,
            );
        }
        let used = next - now;
        let remaining = (capacity - used.min(capacity)) / self.interval;
        let reset = used.div_ceil(1_000_000_000);
        (Verdict::Admit { remaining, reset }, next)
    }
}

/// A quota's period: calendar hours, days or months in UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Period {
    Hour,
    Day,
    Month,
}

impl Period {
    /// The period holding `now` (seconds since the epoch): `[start, end)`.
    pub(crate) fn bounds(self, now: u64) -> (u64, u64) {
        match self {
            Period::Hour => {
                let start = now - now % 3600;
                (start, start + 3600)
            }
            Period::Day => {
                let start = now - now % 86_400;
                (start, start + 86_400)
            }
            Period::Month => {
                let (year, month, _) = civil_from_days(now / 86_400);
                let next = if month == 12 {
                    (year + 1, 1)
                } else {
                    (year, month + 1)
                };
                (
                    days_from_civil(year, month, 1) * 86_400,
                    days_from_civil(next.0, next.1, 1) * 86_400,
                )
            }
        }
    }

    /// The period's name in the rate-limit fields and the metadata.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Period::Hour => "hour",
            Period::Day => "day",
            Period::Month => "month",
        }
    }

    /// The period's nominal length in seconds (a month: 30 days), for
    /// `RateLimit-Policy`'s `w`.
    pub(crate) fn nominal_seconds(self) -> u64 {
        match self {
            Period::Hour => 3600,
            Period::Day => 86_400,
            Period::Month => 30 * 86_400,
        }
    }
}

/// A quota's state: the start of the period it counts and the requests
/// counted in it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counted {
    pub(crate) period_start: u64,
    pub(crate) used: u64,
}

/// `hits` requests at `now` (seconds) against a quota of `limit` per
/// `period`: the verdict and the new state (unchanged when refused). A new
/// period starts from zero.
pub(crate) fn count(
    limit: u64,
    period: Period,
    state: Counted,
    now: u64,
    hits: u64,
) -> (Verdict, Counted) {
    let (start, end) = period.bounds(now);
    let used = if state.period_start == start {
        state.used
    } else {
        0
    };
    if used.saturating_add(hits) > limit {
        let state = Counted {
            period_start: start,
            used,
        };
        return (Verdict::Refuse { retry: end - now }, state);
    }
    let used = used + hits;
    (
        Verdict::Admit {
            remaining: limit - used,
            reset: end - now,
        },
        Counted {
            period_start: start,
            used,
        },
    )
}

/// Days since 1970-01-01 → (year, month 1-12, day 1-31), proleptic
/// Gregorian (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// (year ≥ 1970, month 1-12, day) → days since 1970-01-01.
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    /// 2024-02-29T12:00:00Z (a leap day) and friends, from `date -u -d ... +%s`.
    const LEAP_DAY_NOON: u64 = 1_709_208_000;
    const MAR_1_2024: u64 = 1_709_251_200;
    const FEB_1_2024: u64 = 1_706_745_600;
    const FEB_1_2023: u64 = 1_675_209_600;
    const MAR_1_2023: u64 = 1_677_628_800;
    const DEC_1_2026: u64 = 1_796_083_200;
    const JAN_1_2027: u64 = 1_798_761_600;

    #[test]
    fn months_have_their_calendar_lengths() {
        assert_eq!(
            Period::Month.bounds(LEAP_DAY_NOON),
            (FEB_1_2024, MAR_1_2024)
        );
        assert_eq!(MAR_1_2024 - FEB_1_2024, 29 * 86_400);
        assert_eq!(
            Period::Month.bounds(FEB_1_2023 + 1),
            (FEB_1_2023, MAR_1_2023)
        );
        assert_eq!(MAR_1_2023 - FEB_1_2023, 28 * 86_400);
        // December rolls into the next year.
        assert_eq!(
            Period::Month.bounds(DEC_1_2026 + 5),
            (DEC_1_2026, JAN_1_2027)
        );
        // The first second of a month is in it; the last second of the
        // previous one is not.
        assert_eq!(Period::Month.bounds(MAR_1_2024).0, MAR_1_2024);
        assert_eq!(Period::Month.bounds(MAR_1_2024 - 1).1, MAR_1_2024);
        // Every day of 1970-2100 round-trips through the civil calendar.
        for days in 0..47_482 {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        // 2100 is not a leap year (divisible by 100, not by 400); 2000 was.
        assert_eq!(
            civil_from_days(days_from_civil(2100, 2, 28) + 1),
            (2100, 3, 1)
        );
        assert_eq!(
            civil_from_days(days_from_civil(2000, 2, 28) + 1),
            (2000, 2, 29)
        );
    }

    #[test]
    fn hours_and_days_are_utc() {
        assert_eq!(
            Period::Day.bounds(LEAP_DAY_NOON),
            (LEAP_DAY_NOON - 12 * 3600, LEAP_DAY_NOON + 12 * 3600)
        );
        assert_eq!(
            Period::Hour.bounds(LEAP_DAY_NOON + 59),
            (LEAP_DAY_NOON, LEAP_DAY_NOON + 3600)
        );
    }

    #[test]
    fn a_quota_refuses_until_the_period_resets_and_then_starts_over() {
        let mut state = Counted::default();
        let now = LEAP_DAY_NOON;
        for i in 0..3 {
            let (verdict, next) = count(3, Period::Day, state, now + i, 1);
            assert_eq!(
                verdict,
                Verdict::Admit {
                    remaining: 2 - i,
                    reset: 12 * 3600 - i
                }
            );
            state = next;
        }
        let (verdict, same) = count(3, Period::Day, state, now + 10, 1);
        assert_eq!(
            verdict,
            Verdict::Refuse {
                retry: 12 * 3600 - 10
            }
        );
        assert_eq!(same, state);
        // The last second of the day still refuses; the first of the next admits.
        let midnight = now + 12 * 3600;
        assert!(matches!(
            count(3, Period::Day, state, midnight - 1, 1).0,
            Verdict::Refuse { retry: 1 }
        ));
        let (verdict, fresh) = count(3, Period::Day, state, midnight, 1);
        assert!(matches!(verdict, Verdict::Admit { remaining: 2, .. }));
        assert_eq!(fresh.used, 1);
    }

    #[test]
    fn gcra_admits_a_burst_then_one_per_interval() {
        // 10 per second, burst 3: 100 ms per request.
        let gcra = Gcra::new(10, S, 3);
        let t0 = 1_000 * S;
        let mut tat = 0;
        for remaining in [2, 1, 0] {
            let (verdict, next) = gcra.check(tat, t0, 1);
            assert!(matches!(verdict, Verdict::Admit { remaining: r, .. } if r == remaining));
            tat = next;
        }
        let (verdict, same) = gcra.check(tat, t0, 1);
        assert_eq!(verdict, Verdict::Refuse { retry: S / 10 });
        assert_eq!(same, tat);
        // One interval later one more fits, and only one.
        assert!(matches!(
            gcra.check(tat, t0 + S / 10, 1).0,
            Verdict::Admit { remaining: 0, .. }
        ));
        let (_, tat) = gcra.check(tat, t0 + S / 10, 1);
        assert!(matches!(
            gcra.check(tat, t0 + S / 10, 1).0,
            Verdict::Refuse { .. }
        ));
        // Idle long enough, the whole burst is back (no more).
        let (verdict, _) = gcra.check(tat, t0 + 10 * S, 1);
        assert!(matches!(
            verdict,
            Verdict::Admit {
                remaining: 2,
                reset: 1
            }
        ));
    }

    #[test]
    fn gcra_is_smooth_across_window_edges() {
        // 5 per second, burst 5: however the requests line up with second
        // boundaries, no 1-second span admits more than 5 + the 5 of the
        // burst refilled over it (a fixed window would admit 10 around an edge).
        let gcra = Gcra::new(5, S, 5);
        let mut tat = 0;
        let mut admitted = Vec::new();
        let start = 7 * S + S / 2;
        for step in 0..400u64 {
            let now = start + step * (S / 100);
            let (verdict, next) = gcra.check(tat, now, 1);
            if matches!(verdict, Verdict::Admit { .. }) {
                admitted.push(now);
            }
            tat = next;
        }
        for (i, &at) in admitted.iter().enumerate() {
            let in_window = admitted[i..].iter().take_while(|&&t| t < at + S).count();
            assert!(
                in_window <= 10,
                "{in_window} admitted within one second from {at}"
            );
        }
        // Steady state: 5 per second over the 4 seconds, plus the burst.
        assert!((20..=25).contains(&admitted.len()), "{}", admitted.len());
    }

    /// Several hits at once (Envoy's `hits_addend`): counted together, and
    /// refused whole when they do not all fit.
    #[test]
    fn hits_count_together() {
        let gcra = Gcra::new(10, S, 5);
        let (verdict, tat) = gcra.check(0, S, 3);
        assert_eq!(
            verdict,
            Verdict::Admit {
                remaining: 2,
                reset: 1
            }
        );
        assert!(matches!(gcra.check(tat, S, 3).0, Verdict::Refuse { .. }));
        assert!(matches!(
            gcra.check(tat, S, 2).0,
            Verdict::Admit { remaining: 0, .. }
        ));
        let state = Counted::default();
        let noon = 86_400 * 20_000 + 43_200;
        let (verdict, state) = count(10, Period::Day, state, noon, 7);
        assert!(matches!(verdict, Verdict::Admit { remaining: 3, .. }));
        let (verdict, same) = count(10, Period::Day, state, noon, 4);
        assert_eq!(verdict, Verdict::Refuse { retry: 43_200 });
        assert_eq!(same, state);
    }
}
