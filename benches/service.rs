//! The service in-process, no socket: time per request for each contract row.
#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{Criterion, criterion_group, criterion_main};
use http::{Method, Request};
use tokengate::{App, AppConfig, KeySet};

fn app() -> App {
    let keys = KeySet::demo();
    // Throttling off: the wrong-key rows would otherwise turn into 429s.
    let config = AppConfig {
        throttle: None,
        ..AppConfig::default()
    };
    App::new(keys, &config)
}

fn request(method: Method, path: &str, headers: &[(&str, &str)]) -> Request<()> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "bench");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap()
}

fn service(c: &mut Criterion) {
    let app = app();
    let peer = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let rows = [
        ("public", request(Method::GET, "/public", &[])),
        (
            "protected_key",
            request(Method::GET, "/protected", &[("x-token", "mysecrettoken")]),
        ),
        ("protected_missing", request(Method::GET, "/protected", &[])),
        (
            "protected_wrong",
            request(Method::GET, "/protected", &[("x-token", "wrongtoken")]),
        ),
        (
            "protected_bearer",
            request(
                Method::GET,
                "/protected",
                &[("authorization", "Bearer mysecrettoken")],
            ),
        ),
        ("not_found", request(Method::GET, "/nope", &[])),
        (
            "method_not_allowed",
            request(Method::POST, "/protected", &[]),
        ),
        ("head_public", request(Method::HEAD, "/public", &[])),
    ];
    let mut group = c.benchmark_group("service");
    for (name, req) in &rows {
        group.bench_function(*name, |b| b.iter(|| app.handle(black_box(req), peer)));
    }
    group.finish();
}

criterion_group!(benches, service);
criterion_main!(benches);
