//! Fuzzing: property tests over the in-process service, and thousands of
//! random and mutated requests over TCP.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, Request};
use proptest::prelude::*;
use tokengate::{App, AppConfig, Limits};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::{KEY, TestServer, closed_within, keys, raw, statuses};

const DOCUMENTED: &[u16] = &[200, 204, 307, 400, 401, 404, 405, 414, 429, 431];

fn app() -> App {
    App::new(keys(&[KEY]), &AppConfig::default())
}

fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("GET".to_owned()),
        Just("HEAD".to_owned()),
        Just("OPTIONS".to_owned()),
        Just("POST".to_owned()),
        "[A-Za-z!#$%&'*+.^_`|~-]{1,12}",
    ]
}

fn path() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        Just("public".to_owned()),
        Just("protected".to_owned()),
        Just("%70ublic".to_owned()),
        Just("%2F".to_owned()),
        Just("%".to_owned()),
        Just("..".to_owned()),
        "[a-zA-Z0-9%._~-]{0,10}",
    ];
    (
        prop::collection::vec(segment, 0..4),
        any::<bool>(),
        proptest::option::of("[a-z0-9=&%]{0,20}"),
    )
        .prop_map(|(segs, slash, query)| {
            let mut p = format!("/{}", segs.join("/"));
            if slash {
                p.push('/');
            }
            if let Some(q) = query {
                p.push('?');
                p.push_str(&q);
            }
            p
        })
}

fn header() -> impl Strategy<Value = (String, Vec<u8>)> {
    let name = prop_oneof![
        Just("x-token".to_owned()),
        Just("authorization".to_owned()),
        Just("host".to_owned()),
        "[a-z0-9-]{1,20}",
    ];
    let value = prop_oneof![
        Just(KEY.as_bytes().to_vec()),
        Just(format!("Bearer {KEY}").into_bytes()),
        Just(format!(" {KEY}\t").into_bytes()),
        prop::collection::vec(any::<u8>(), 0..40),
    ];
    (name, value)
}

/// What the contract allows a 200 for.
fn key_is_presented(headers: &http::HeaderMap) -> bool {
    let trim = |b: &[u8]| -> Vec<u8> {
        let s = String::from_utf8_lossy(b);
        s.trim_matches([' ', '\t']).as_bytes().to_vec()
    };
    let tokens: Vec<_> = headers.get_all("x-token").iter().collect();
    if !tokens.is_empty() {
        return tokens.len() == 1 && trim(tokens[0].as_bytes()) == KEY.as_bytes();
    }
    let auth: Vec<_> = headers.get_all("authorization").iter().collect();
    auth.len() == 1 && {
        let v = trim(auth[0].as_bytes());
        v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ") && trim(&v[7..]) == KEY.as_bytes()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn service_never_panics_and_200_needs_the_key(
        m in method(),
        p in path(),
        hs in prop::collection::vec(header(), 0..6),
        h2 in any::<bool>(),
    ) {
        let app = app();
        let Ok(method) = Method::from_bytes(m.as_bytes()) else { return Ok(()) };
        let mut builder = Request::builder().method(method.clone()).uri(p.as_str());
        if h2 {
            builder = builder.version(http::Version::HTTP_2);
        } else {
            builder = builder.header("host", "t");
        }
        let Ok(mut req) = builder.body(()) else { return Ok(()) };
        for (name, value) in hs {
            let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_bytes(&value)) else { continue };
            req.headers_mut().append(n, v);
        }
        let peer: IpAddr = "192.0.2.1".parse().unwrap();
        let resp = app.handle(&req, peer);
        let status = resp.status().as_u16();
        prop_assert!(DOCUMENTED.contains(&status), "undocumented status {}", status);
        if status == 200 {
            prop_assert!(method == Method::GET || method == Method::HEAD);
            let normalized = tokengate::normalize(req.uri().path()).into_owned();
            prop_assert!(normalized == "/public" || normalized == "/protected", "200 for {}", normalized);
            if normalized == "/protected" {
                prop_assert!(key_is_presented(req.headers()), "200 without the key: {:?}", req.headers());
            }
        }
    }
}

/// A tiny deterministic PRNG (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn mutate(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..1 + rng.below(4) {
        if v.is_empty() {
            v.push(rng.next() as u8);
            continue;
        }
        let at = rng.below(v.len());
        match rng.below(6) {
            0 => v[at] = rng.next() as u8,
            1 => v.insert(at, rng.next() as u8),
            2 => {
                v.remove(at);
            }
            3 => {
                let end = (at + rng.below(16)).min(v.len());
                let chunk = v[at..end].to_vec();
                v.splice(at..at, chunk);
            }
            4 => v.insert(at, [b'\r', b'\n', b':', b' ', b'\0', b'%'][rng.below(6)]),
            _ => v.truncate(at),
        }
    }
    v
}

#[tokio::test]
async fn random_and_mutated_requests_never_kill_the_server() {
    let limits = Limits {
        header_read_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let app = AppConfig {
        throttle: None,
        ..AppConfig::default()
    };
    let server = Arc::new(TestServer::with(keys(&[KEY]), app, limits).await);
    let bases: [&[u8]; 4] = [
        b"GET /protected HTTP/1.1\r\nHost: t\r\nX-Token: mysecrettoken\r\nConnection: close\r\n\r\n",
        b"GET /public HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        b"POST /protected HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
        b"GET /protected HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer mysecrettoken\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n",
    ];
    let mut tasks = Vec::new();
    for worker in 0..16u64 {
        let server = server.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (worker + 1));
            let mut unexpected = Vec::new();
            for i in 0..150 {
                let bytes = if i % 5 == 0 {
                    (0..rng.below(200)).map(|_| rng.next() as u8).collect()
                } else {
                    let base = bases[rng.below(bases.len())];
                    mutate(&mut rng, base)
                };
                let Ok(mut s) = TcpStream::connect(server.addr).await else {
                    continue;
                };
                let _ = s.write_all(&bytes).await;
                let Some(got) = closed_within(&mut s, Duration::from_secs(20)).await else {
                    unexpected.push(format!("not closed: {bytes:?}"));
                    continue;
                };
                for st in statuses(&got) {
                    if !DOCUMENTED.contains(&st) && st != 505 {
                        unexpected.push(format!("status {st} for {bytes:?}"));
                    }
                    // A 200 for /protected always carries the key somewhere in the bytes.
                    if st == 200 && got.contains("protected route") {
                        assert!(
                            bytes.windows(KEY.len()).any(|w| w == KEY.as_bytes()),
                            "200 without key: {bytes:?}"
                        );
                    }
                }
            }
            unexpected
        }));
    }
    for t in tasks {
        let unexpected = t.await.unwrap();
        assert!(unexpected.is_empty(), "{unexpected:#?}");
    }
    let got = raw(
        server.addr,
        b"GET /public HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&got), [200]);
}
