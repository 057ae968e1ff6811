//! The key check: flat in the number of keys, and independent of where a wrong
//! key differs from a real one.
#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use tokengate::KeySet;
use tokengate::keys::{Digest, Key, KeySource, Scope};

const REAL: &str = "k7Qm2v9XwPz4sLr8k7Qm2v9XwPz4sLr8";

fn keyset(n: usize) -> KeySet {
    let mut keys = KeySet::new();
    keys.insert(Key::new(
        Digest::of(REAL.as_bytes()),
        "real",
        KeySource::Env,
    ))
    .unwrap();
    for i in 1..n {
        let token = format!("generated-token-{i:08}");
        keys.insert(Key::new(
            Digest::of(token.as_bytes()),
            format!("key-{i}"),
            KeySource::Env,
        ))
        .unwrap();
    }
    keys
}

fn auth(c: &mut Criterion) {
    let mut group = c.benchmark_group("auth/keys");
    for n in [1usize, 1_000, 100_000] {
        let keys = keyset(n);
        group.bench_with_input(BenchmarkId::new("valid", n), &keys, |b, keys| {
            b.iter(|| keys.verify(black_box(REAL.as_bytes())))
        });
        group.bench_with_input(BenchmarkId::new("wrong", n), &keys, |b, keys| {
            b.iter(|| keys.verify(black_box(b"k7Qm2v9XwPz4sLr8k7Qm2v9XwPz4sLr9")))
        });
    }
    group.finish();

    let keys = keyset(1_000);
    let mut first = REAL.as_bytes().to_vec();
    first[0] ^= 1;
    let mut last = REAL.as_bytes().to_vec();
    *last.last_mut().unwrap() ^= 1;
    let shorter = &REAL.as_bytes()[..REAL.len() - 1];
    let mut longer = REAL.as_bytes().to_vec();
    longer.push(b'x');
    let mut group = c.benchmark_group("auth/mismatch");
    for (name, token) in [
        ("valid", REAL.as_bytes().to_vec()),
        ("first_byte", first),
        ("last_byte", last),
        ("one_shorter", shorter.to_vec()),
        ("one_longer", longer),
    ] {
        group.bench_function(name, |b| b.iter(|| keys.verify(black_box(&token))));
    }
    group.finish();
}

/// The whole check a protected route or /auth/verify makes: credential
/// extraction, SHA-256, map probe, then expiry and scopes. A scoped key must
/// cost no more than a few comparisons over an unscoped one, and nothing may
/// grow with the number of keys.
fn authorize(c: &mut Criterion) {
    let token_header = http::HeaderName::from_static("x-token");
    let mut group = c.benchmark_group("auth/authorize");
    for n in [1usize, 100_000] {
        let mut keys = keyset(n);
        let scoped = Key::new(Digest::of(b"scoped-token-0001"), "scoped", KeySource::Env)
            .with_scopes(vec![
                Scope::parse("GET:/admin").unwrap(),
                Scope::parse("POST,PUT:/orders/*").unwrap(),
                Scope::parse("GET,HEAD:/reports/*").unwrap(),
            ]);
        keys.insert(scoped).unwrap();
        for (name, token, path) in [
            ("unscoped", REAL, "/reports/2026/q1"),
            ("scoped_in", "scoped-token-0001", "/reports/2026/q1"),
            ("scoped_out", "scoped-token-0001", "/billing"),
        ] {
            let mut headers = http::HeaderMap::new();
            headers.insert("x-token", token.parse().unwrap());
            group.bench_function(BenchmarkId::new(name, n), |b| {
                b.iter(|| {
                    keys.authorize(
                        black_box(&headers),
                        &token_header,
                        &http::Method::GET,
                        black_box(path),
                    )
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, auth, authorize);
criterion_main!(benches);
