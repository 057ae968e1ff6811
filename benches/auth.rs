//! The key check: flat in the number of keys, and independent of where a wrong
//! key differs from a real one.
#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use tokengate::KeySet;
use tokengate::keys::{Digest, Key, KeySource};

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

criterion_group!(benches, auth);
criterion_main!(benches);
