//! Failed-credential throttling (battery item 14) and the file-descriptor
//! exhaustion test (item 12).

use std::net::IpAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use tokengate::throttle::ThrottleConfig;
use tokengate::{AppConfig, Limits};
use tokio::net::TcpStream;

use crate::support::{KEY, Spawned, TestServer, keys, raw, raw_from, request, statuses};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test]
async fn failures_past_the_limit_are_429_even_with_a_valid_key() {
    let app = AppConfig {
        throttle: Some(ThrottleConfig {
            failures: NonZeroU32::new(1).unwrap(),
            period: Duration::from_secs(60),
            burst: NonZeroU32::new(3).unwrap(),
            capacity: NonZeroUsize::new(1024).unwrap(),
        }),
        ..AppConfig::default()
    };
    let server = TestServer::with(keys(&[KEY]), app, Limits::default()).await;
    let attacker = ip("127.0.0.1");

    // Successes never consume the bucket.
    for _ in 0..20 {
        let got = raw_from(
            attacker,
            server.addr,
            &request("GET", "/protected", Some(KEY), ""),
        )
        .await;
        assert_eq!(statuses(&got), [200]);
    }
    // The burst: three failures (wrong or missing) are plain 401s.
    for token in [Some("wrong-1"), None, Some("wrong-2")] {
        let got = raw_from(
            attacker,
            server.addr,
            &request("GET", "/protected", token, ""),
        )
        .await;
        assert_eq!(statuses(&got), [401], "{got}");
    }
    // Past it: 429 with retry-after, for wrong keys…
    let got = raw_from(
        attacker,
        server.addr,
        &request("GET", "/protected", Some("wrong-3"), ""),
    )
    .await;
    assert_eq!(statuses(&got), [429], "{got}");
    assert!(got.contains("retry-after: "), "{got}");
    assert!(got.ends_with(r#"{"detail":"Too Many Requests"}"#), "{got}");
    let retry: u64 = got
        .lines()
        .find_map(|l| l.strip_prefix("retry-after: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "retry-after {retry}");
    // …and for the valid key too, so a brute-forcer cannot tell a hit.
    let got = raw_from(
        attacker,
        server.addr,
        &request("GET", "/protected", Some(KEY), ""),
    )
    .await;
    assert_eq!(statuses(&got), [429], "{got}");
    // Public routes are not throttled.
    let got = raw_from(attacker, server.addr, &request("GET", "/public", None, "")).await;
    assert_eq!(statuses(&got), [200]);
    // Another address is unaffected.
    let got = raw_from(
        ip("127.0.0.2"),
        server.addr,
        &request("GET", "/protected", Some(KEY), ""),
    )
    .await;
    assert_eq!(statuses(&got), [200], "{got}");
    let got = raw_from(
        ip("127.0.0.2"),
        server.addr,
        &request("GET", "/protected", Some("wrong"), ""),
    )
    .await;
    assert_eq!(statuses(&got), [401], "{got}");
}

#[tokio::test]
async fn throttling_off_never_429s() {
    let app = AppConfig {
        throttle: None,
        ..AppConfig::default()
    };
    let server = TestServer::with(keys(&[KEY]), app, Limits::default()).await;
    for _ in 0..200 {
        let got = raw(
            server.addr,
            &request("GET", "/protected", Some("wrong"), ""),
        )
        .await;
        assert_eq!(statuses(&got), [401]);
    }
    let got = raw(server.addr, &request("GET", "/protected", Some(KEY), "")).await;
    assert_eq!(statuses(&got), [200]);
}

#[tokio::test]
async fn default_limit_allows_a_burst_of_50() {
    let server = TestServer::start().await;
    let local = ip("127.0.0.3");
    let mut seen = Vec::new();
    for _ in 0..60 {
        seen.push(
            statuses(
                &raw_from(
                    local,
                    server.addr,
                    &request("GET", "/protected", Some("wrong"), ""),
                )
                .await,
            )[0],
        );
    }
    let first_429 = seen
        .iter()
        .position(|&s| s == 429)
        .expect("throttled within 60 failures");
    // 50 in the burst plus whatever refilled at 10/s while the test ran.
    assert!(
        first_429 >= 50,
        "429 after only {first_429} failures: {seen:?}"
    );
}

/// Item 12: accept under file-descriptor exhaustion.
#[tokio::test]
async fn fd_exhaustion_backs_off_and_recovers() {
    let server = Spawned::start_with_nofile(
        64,
        &["--header-read-timeout", "60s", "--idle-timeout", "60s"],
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..150 {
        held.push(TcpStream::connect(server.addr).await.unwrap());
    }
    // Wait for the server to hit EMFILE, then measure its CPU while it is stuck there.
    server.wait_for_log("accept failed").await;
    let t0 = server.cpu_ticks();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = server.cpu_ticks() - t0;
    // A spinning accept loop would burn ~200 ticks (100 Hz) in 2 s.
    assert!(used < 100, "accept loop spins: {used} ticks in 2 s");
    let log = server.log();
    assert!(log.contains("accept failed"), "{log}");
    assert!(
        log.contains("Too many open files") || log.contains("os error 24"),
        "{log}"
    );

    drop(held);
    let mut served = false;
    for _ in 0..60 {
        let got = raw(
            server.addr,
            b"GET /public HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
        .await;
        if statuses(&got) == [200] {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        served,
        "the server did not serve again after the connections closed"
    );
}
