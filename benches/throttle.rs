//! The failed-credential throttle as its table churns: the cost of one failed
//! check (`blocked` + `record_failure`, what a request with a wrong key costs
//! the throttle) for a never-seen client address, with the table nearly empty
//! and with it full (65 536 addresses, so every new one evicts the least
//! recently seen). A million distinct addresses must not cost more per request
//! than the first thousand (`scripts/throttle-churn` does it over HTTP).
#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use tokengate::throttle::{DEFAULT_CAPACITY, Throttle, ThrottleConfig};

/// A distinct IPv4 address for every `i` below 2^32.
fn address(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(i.wrapping_mul(2_654_435_761)))
}

fn fail(throttle: &Throttle, ip: IpAddr) {
    if black_box(throttle.blocked(ip)).is_none() {
        black_box(throttle.record_failure(ip));
    }
}

fn churn(c: &mut Criterion) {
    let config = ThrottleConfig::default();
    let capacity = u32::try_from(DEFAULT_CAPACITY.get()).unwrap();
    // One failure first in each fresh table: the allocation is not a request's.
    let mut group = c.benchmark_group("throttle/new-address");

    // Nearly empty: a fresh table every 10 000 failures (outside the timing).
    group.bench_function("empty-table", |b| {
        let mut next = 0u32;
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let throttle = Throttle::new(config);
                fail(&throttle, address(u32::MAX));
                let n = left.min(10_000);
                let start = Instant::now();
                for _ in 0..n {
                    fail(&throttle, address(next));
                    next = next.wrapping_add(1);
                }
                total += start.elapsed();
                drop(throttle);
                left -= n;
            }
            total
        })
    });

    // Full: every way of every set taken (addresses land in sets at random, so
    // this takes a few times the capacity), then every failure is a new address.
    let throttle = Throttle::new(config);
    let mut next = 0u32;
    while throttle.tracked() < DEFAULT_CAPACITY.get() && next < 64 * capacity {
        fail(&throttle, address(next));
        next += 1;
    }
    assert_eq!(throttle.tracked(), DEFAULT_CAPACITY.get());
    group.bench_function("full-table", |b| {
        b.iter(|| {
            fail(&throttle, address(next));
            next = next.wrapping_add(1);
        })
    });
    assert_eq!(throttle.tracked(), DEFAULT_CAPACITY.get());
    group.finish();
}

criterion_group!(benches, churn);
criterion_main!(benches);
