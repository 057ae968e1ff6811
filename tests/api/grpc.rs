//! gRPC, spoken by a real client not written here: Python `grpcio` with
//! Envoy's generated stubs (`xds-protos`) and `grpcio-health-checking`
//! (`grpc_client.py`): every Check allow and deny shape, the rate-limit
//! service with the memory store (Redis: `limits_redis.rs`), health through
//! a drain. The malformed calls are sent frame by frame with `h2`
//! (`grpc_frames.rs`).

use std::net::SocketAddr;
use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{Value, json};
use tokengate::{AppConfig, Limits};
use tokio::io::AsyncWriteExt;

use crate::support::{Proto, Spawned, TempDir, TestServer, keys_from, send, wait_until};

const CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/api/grpc_client.py");

pub(crate) const KEYS: &str = "\
alice-key-00000001 alice rate=5/m quota=100/day owner=acme
bob-key-0000000001 bob scope=GET:/reports/*
carol-key-00000001 carol
metrics-key-000001 metrics
";

/// Whether grpcio and the stubs are importable (CI installs them; a
/// developer machine without them skips, and says so).
fn client_available() -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import grpc, envoy.service.auth.v3, grpc_health.v1"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "grpcio, xds-protos and grpcio-health-checking are not installed: .ci/run installs them"
        );
        eprintln!(
            "skipped: pip install grpcio grpcio-health-checking xds-protos (CI installs them)"
        );
    }
    ok
}

/// Makes `calls` (see `grpc_client.py`) on one channel to `addr`, in order.
pub(crate) async fn calls(addr: SocketAddr, calls: Value) -> Vec<Value> {
    let mut child = tokio::process::Command::new("python3")
        .args([CLIENT, &addr.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(calls.to_string().as_bytes()).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("the gRPC client finished within 2 minutes")
        .unwrap();
    assert!(
        out.status.success(),
        "grpc_client.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub(crate) async fn one(addr: SocketAddr, call: Value) -> Value {
    calls(addr, json!([call])).await.remove(0)
}

fn check(token: Option<&str>, method: &str, path: &str) -> Value {
    let headers = match token {
        Some(t) => json!({ "x-token": t }),
        None => json!({}),
    };
    json!({"call": "check", "method": method, "path": path, "headers": headers, "source": "192.0.2.10"})
}

/// A denied response's header `name`.
fn denied_header<'a>(r: &'a Value, name: &str) -> Option<&'a str> {
    r["response"]["deniedResponse"]["headers"]
        .as_array()?
        .iter()
        .find(|h| h["header"]["key"] == name)
        .and_then(|h| h["header"]["value"].as_str())
}

fn ok_header<'a>(r: &'a Value, list: &str, name: &str) -> Option<&'a str> {
    r["response"]["okResponse"][list]
        .as_array()?
        .iter()
        .find(|h| h["header"]["key"] == name)
        .and_then(|h| h["header"]["value"].as_str())
}

/// A server with [`KEYS`], if the client is there to speak to it.
async fn started() -> Option<TestServer> {
    if !client_available() {
        return None;
    }
    Some(TestServer::with(keys_from(KEYS), AppConfig::default(), Limits::default()).await)
}

#[tokio::test]
async fn check_allows_a_valid_key_with_its_label_metadata_and_limits() {
    let Some(s) = started().await else {
        return;
    };
    let r = one(
        s.addr,
        check(Some("alice-key-00000001"), "POST", "/orders?id=1"),
    )
    .await;
    assert_eq!(r["response"]["status"], json!({}), "code 0: {r}");
    assert_eq!(ok_header(&r, "headers", "x-auth-key-label"), Some("alice"));
    let overwrite = &r["response"]["okResponse"]["headers"][0]["appendAction"];
    assert_eq!(
        overwrite, "OVERWRITE_IF_EXISTS_OR_ADD",
        "a client cannot add its own label"
    );
    assert_eq!(
        r["response"]["okResponse"]["headersToRemove"],
        json!(["x-token", "authorization"])
    );
    assert_eq!(
        ok_header(&r, "responseHeadersToAdd", "ratelimit-policy"),
        Some(r#""rate";q=5;w=60, "day";q=100;w=86400"#)
    );
    let remaining = ok_header(&r, "responseHeadersToAdd", "ratelimit").unwrap();
    assert!(remaining.starts_with(r#""rate";r=4;t="#), "{remaining}");
    let meta = &r["response"]["dynamicMetadata"];
    assert_eq!(meta["tokengate_key"], "alice");
    assert_eq!(meta["owner"], "acme");
    assert_eq!(
        meta["rate"],
        json!({"count": 5.0, "window_seconds": 60.0, "burst": 5.0})
    );
    assert_eq!(meta["quota"], json!({"count": 100.0, "period": "day"}));
    // A key without limits: no fields, no limits in the metadata.
    let r = one(s.addr, check(Some("carol-key-00000001"), "GET", "/")).await;
    assert_eq!(ok_header(&r, "headers", "x-auth-key-label"), Some("carol"));
    assert!(
        r["response"]["okResponse"]
            .get("responseHeadersToAdd")
            .is_none(),
        "{r}"
    );
    assert!(r["response"]["dynamicMetadata"].get("rate").is_none());
    // Envoy's `encode_raw_headers`: the credential in header_map's raw_value.
    let mut raw = check(Some("carol-key-00000001"), "GET", "/");
    raw["raw_headers"] = json!(true);
    let r = one(s.addr, raw).await;
    assert_eq!(
        ok_header(&r, "headers", "x-auth-key-label"),
        Some("carol"),
        "{r}"
    );
    // A Bearer credential is read too.
    let bearer = json!({"call": "check", "method": "GET", "path": "/",
        "headers": {"authorization": "Bearer carol-key-00000001"}});
    let r = one(s.addr, bearer).await;
    assert_eq!(
        ok_header(&r, "headers", "x-auth-key-label"),
        Some("carol"),
        "{r}"
    );
}

#[tokio::test]
async fn check_denies_with_the_http_answer_envoy_sends() {
    let Some(s) = started().await else {
        return;
    };
    let r = calls(
        s.addr,
        json!([
            check(None, "GET", "/"),
            check(Some("wrong-key-00000001"), "GET", "/"),
            check(Some("bob-key-0000000001"), "DELETE", "/reports/1"),
            check(Some("bob-key-0000000001"), "GET", "/reports/1"),
        ]),
    )
    .await;
    for (answer, code, http) in [(&r[0], 16, "Unauthorized"), (&r[1], 16, "Unauthorized")] {
        assert_eq!(answer["response"]["status"]["code"], code, "{answer}");
        assert_eq!(answer["response"]["deniedResponse"]["status"]["code"], http);
        assert_eq!(
            answer["response"]["deniedResponse"]["body"],
            r#"{"detail":"Unauthorized"}"#
        );
        assert!(
            denied_header(answer, "www-authenticate")
                .unwrap()
                .starts_with("Bearer realm=")
        );
        assert_eq!(
            denied_header(answer, "content-type"),
            Some("application/json")
        );
    }
    assert_eq!(
        r[2]["response"]["status"]["code"], 7,
        "out of scope: {}",
        r[2]
    );
    assert_eq!(
        r[2]["response"]["deniedResponse"]["status"]["code"],
        "Forbidden"
    );
    assert_eq!(
        r[2]["response"]["deniedResponse"]["body"],
        r#"{"detail":"Forbidden"}"#
    );
    assert_eq!(
        ok_header(&r[3], "headers", "x-auth-key-label"),
        Some("bob"),
        "in scope"
    );
    // A path that could not be checked as the upstream would see it.
    let r = one(
        s.addr,
        check(Some("carol-key-00000001"), "GET", "/a/%2e%2e/admin"),
    )
    .await;
    assert_eq!(r["error"], "INVALID_ARGUMENT", "{r}");
}

#[tokio::test]
async fn check_counts_limits_and_answers_429_over_them() {
    let Some(s) = started().await else {
        return;
    };
    let all: Vec<Value> = (0..6)
        .map(|_| check(Some("alice-key-00000001"), "GET", "/"))
        .collect();
    let r = calls(s.addr, Value::Array(all)).await;
    for answer in &r[..5] {
        assert_eq!(answer["response"]["status"], json!({}), "{answer}");
    }
    let over = &r[5];
    assert_eq!(
        over["response"]["status"]["code"], 8,
        "RESOURCE_EXHAUSTED: {over}"
    );
    assert_eq!(
        over["response"]["deniedResponse"]["status"]["code"],
        "TooManyRequests"
    );
    assert_eq!(
        over["response"]["deniedResponse"]["body"],
        r#"{"detail":"Too Many Requests"}"#
    );
    let retry: u64 = denied_header(over, "retry-after").unwrap().parse().unwrap();
    assert!((1..=12).contains(&retry), "{retry}");
    assert!(
        denied_header(over, "ratelimit")
            .unwrap()
            .contains(r#""rate";r=0"#)
    );
    // The same owner over HTTP is over the limit too: one store.
    let http = crate::support::protected_as(s.addr, "alice-key-00000001").await;
    assert_eq!(http.status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn check_throttles_the_source_envoy_names() {
    if !client_available() {
        return;
    }
    let keys = keys_from(KEYS);
    let app = AppConfig {
        throttle: Some(tokengate::throttle::ThrottleConfig {
            failures: std::num::NonZeroU32::new(2).unwrap(),
            period: Duration::from_secs(3600),
            burst: std::num::NonZeroU32::new(2).unwrap(),
            capacity: std::num::NonZeroUsize::new(1024).unwrap(),
        }),
        ..AppConfig::default()
    };
    let s = TestServer::with(keys, app, Limits::default()).await;
    let guess = |source: &str| {
        json!({"call": "check", "method": "GET", "path": "/",
            "headers": {"x-token": "guess-key-0000001"}, "source": source})
    };
    let r = calls(
        s.addr,
        json!([
            guess("192.0.2.1"),
            guess("192.0.2.1"),
            guess("192.0.2.1"),
            guess("192.0.2.2")
        ]),
    )
    .await;
    let codes: Vec<&Value> = r.iter().map(|a| &a["response"]["status"]["code"]).collect();
    assert_eq!(codes, [16, 16, 8, 16], "{r:?}");
    assert!(denied_header(&r[2], "retry-after").is_some());
}

#[tokio::test]
async fn the_rate_limit_service_counts_the_keys_descriptors_name() {
    let Some(s) = started().await else {
        return;
    };
    let key = |label: &str| json!([["tokengate_key", label]]);
    let r = calls(
        s.addr,
        json!([
            // No key named, an unknown key, a key without limits: OK, no limit.
            {"call": "rls", "descriptors": [{"entries": [["generic_key", "x"]]},
                                            {"entries": key("nobody")},
                                            {"entries": key("carol")}]},
            // hits_addend: 3 of alice's 5 a minute, then 2 more (the request's own).
            {"call": "rls", "descriptors": [{"entries": key("alice"), "hits": 3}]},
            {"call": "rls", "hits": 2, "descriptors": [{"entries": key("alice")}]},
            {"call": "rls", "descriptors": [{"entries": key("alice")}, {"entries": key("carol")}]},
        ]),
    )
    .await;
    let statuses = &r[0]["response"]["statuses"];
    assert_eq!(r[0]["response"]["overallCode"], "OK", "{r:?}");
    for i in 0..3 {
        assert_eq!(statuses[i]["code"], "OK");
        assert!(statuses[i].get("currentLimit").is_none());
    }
    let first = &r[1]["response"]["statuses"][0];
    assert_eq!(first["code"], "OK", "{first}");
    assert_eq!(
        first["currentLimit"],
        json!({"name": "rate", "requestsPerUnit": 5, "unit": "MINUTE"})
    );
    assert_eq!(first["limitRemaining"], 2);
    assert_eq!(
        r[2]["response"]["statuses"][0].get("limitRemaining"),
        None,
        "0 left"
    );
    assert_eq!(r[2]["response"]["overallCode"], "OK");
    assert_eq!(r[3]["response"]["overallCode"], "OVER_LIMIT", "{}", r[3]);
    let over = &r[3]["response"]["statuses"][0];
    assert_eq!(over["code"], "OVER_LIMIT");
    let wait = over["durationUntilReset"].as_str().unwrap();
    assert!(wait.ends_with('s') && wait != "0s", "{wait}");
    assert_eq!(r[3]["response"]["statuses"][1]["code"], "OK");
    // The descriptors counted in the store HTTP uses.
    let http = crate::support::protected_as(s.addr, "alice-key-00000001").await;
    assert_eq!(http.status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn health_and_unknown_methods() {
    let Some(s) = started().await else {
        return;
    };
    let r = calls(
        s.addr,
        json!([
            {"call": "health", "service": ""},
            {"call": "health", "service": "envoy.service.auth.v3.Authorization"},
            {"call": "health", "service": "nope"},
            {"call": "unknown"},
        ]),
    )
    .await;
    assert_eq!(r[0]["response"]["status"], "SERVING");
    assert_eq!(r[1]["response"]["status"], "SERVING");
    assert_eq!(r[2]["error"], "NOT_FOUND");
    assert_eq!(r[3]["error"], "UNIMPLEMENTED");
    let metrics = send(
        Proto::H1,
        s.addr,
        Method::GET,
        "/metrics",
        &[("x-token", "metrics-key-000001")],
    )
    .await;
    let text = metrics.text();
    for series in [
        r#"tokengate_grpc_calls_total{method="health",outcome="serving"} 2"#,
        r#"tokengate_grpc_calls_total{method="health",outcome="not_found"} 1"#,
        r#"tokengate_grpc_calls_total{method="other",outcome="unimplemented"} 1"#,
        r#"tokengate_requests_total{route="grpc",status="200"} 4"#,
    ] {
        assert!(text.contains(series), "{series} in {text}");
    }
}

#[tokio::test]
async fn health_is_not_serving_from_the_drain_and_grpc_off_serves_none() {
    if !client_available() {
        return;
    }
    let dir = TempDir::new("grpc-drain");
    let file = dir.join("keys");
    std::fs::write(&file, KEYS).unwrap();
    let file = file.to_str().unwrap();
    let server = Spawned::start(&["--token-file", file, "--shutdown-delay", "30s"], &[]).await;
    let r = one(server.addr, json!({"call": "health"})).await;
    assert_eq!(r["response"]["status"], "SERVING");
    server.signal("-TERM");
    let drained = wait_until(Duration::from_secs(30), || async {
        one(server.addr, json!({"call": "health"})).await["response"]["status"] == "NOT_SERVING"
    })
    .await;
    assert!(drained, "health never said NOT_SERVING during the drain");

    let off = Spawned::start(&["--token-file", file, "--grpc", "off"], &[]).await;
    let r = one(off.addr, check(Some("carol-key-00000001"), "GET", "/")).await;
    // Not a gRPC server: the POST is an HTTP request to no route (404),
    // which gRPC clients read as UNIMPLEMENTED.
    assert_eq!(r["error"], "UNIMPLEMENTED", "{r}");
}

#[tokio::test]
async fn calls_are_in_the_access_log_with_their_outcome() {
    if !client_available() {
        return;
    }
    let dir = TempDir::new("grpc-log");
    let file = dir.join("keys");
    std::fs::write(&file, KEYS).unwrap();
    let mut cmd = crate::support::command(
        &[
            "--listen",
            "127.0.0.1:0",
            "--token-file",
            file.to_str().unwrap(),
            "--access-log",
        ],
        &[],
    );
    let mut child = cmd.spawn().unwrap();
    let (addr, _lines) = crate::support::wait_for_address(&mut child).await;
    calls(
        addr,
        json!([
            check(Some("alice-key-00000001"), "PUT", "/orders/7?x=1"),
            check(Some("bob-key-0000000001"), "DELETE", "/reports/1"),
        ]),
    )
    .await;
    let out = crate::support::terminate(child).await;
    let log = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("path=/envoy.service.auth.v3.Authorization/Check"))
        .collect();
    assert_eq!(lines.len(), 2, "{log}");
    assert!(lines[0].contains("key=alice"), "{}", lines[0]);
    for (line, needles) in lines.iter().zip([
        [
            "grpc=ok",
            "original_method=PUT",
            "original_path=/orders/7",
            "client=192.0.2.10",
        ],
        [
            "grpc=permission_denied",
            "original_method=DELETE",
            "original_path=/reports/1",
            "key=-",
        ],
    ]) {
        for needle in needles {
            assert!(line.contains(needle), "{needle} in {line}");
        }
    }
}

/// With a Redis store: the rate-limit service and Check count in the store
/// HTTP requests use, one script call per descriptor or check at most.
#[tokio::test]
async fn rls_and_check_share_a_redis_store_across_replicas() {
    if !client_available() {
        return;
    }
    use crate::limits_redis::{Redis, store};
    use tokengate::config::StoreFailure;
    let Some(redis) = Redis::start("redis-grpc", None).await else {
        return;
    };
    let keys = "alice-key-00000001 alice rate=5/h\n";
    let a = TestServer::with(
        keys_from(keys),
        store(&redis, StoreFailure::Local),
        Limits::default(),
    )
    .await;
    let b = TestServer::with(
        keys_from(keys),
        store(&redis, StoreFailure::Local),
        Limits::default(),
    )
    .await;
    let rls = |hits: u64| json!({"call": "rls", "descriptors": [{"entries": [["tokengate_key", "alice"]], "hits": hits}]});
    let first = one(a.addr, rls(3)).await;
    assert_eq!(
        first["response"]["statuses"][0]["limitRemaining"], 2,
        "{first}"
    );
    let checked = one(b.addr, check(Some("alice-key-00000001"), "GET", "/")).await;
    assert_eq!(
        ok_header(&checked, "responseHeadersToAdd", "ratelimit")
            .map(|v| v.starts_with(r#""rate";r=1;"#)),
        Some(true),
        "{checked}"
    );
    // Two more do not fit (one is left), and are not counted; one does.
    let two = one(a.addr, rls(2)).await;
    assert_eq!(two["response"]["overallCode"], "OVER_LIMIT", "{two}");
    let last = one(a.addr, rls(1)).await;
    assert_eq!(last["response"]["overallCode"], "OK", "{last}");
    let over = one(b.addr, check(Some("alice-key-00000001"), "GET", "/")).await;
    assert_eq!(over["response"]["status"]["code"], 8, "{over}");
    let calls = redis.calls("evalsha").await + redis.calls("eval").await;
    assert_eq!(calls, 5, "one store call per descriptor or check");
}

/// Envoy's configuration in `deploy/proxies/envoy.yaml` hands the limits to
/// the rate-limit filter (a context extension): Check then decides on the
/// key alone and ShouldRateLimit counts, once a request.
#[tokio::test]
async fn check_leaves_the_limits_to_the_rate_limit_service_when_told() {
    let Some(s) = started().await else {
        return;
    };
    let mut handed = check(Some("alice-key-00000001"), "GET", "/");
    handed["context"] = json!({"tokengate_limits": "rate_limit_service"});
    let r = calls(s.addr, Value::Array(vec![handed; 7])).await;
    for answer in &r {
        assert_eq!(
            answer["response"]["status"],
            json!({}),
            "not counted: {answer}"
        );
        assert!(
            answer["response"]["okResponse"]
                .get("responseHeadersToAdd")
                .is_none()
        );
        assert_eq!(
            answer["response"]["dynamicMetadata"]["tokengate_key"],
            "alice"
        );
    }
    let rls = json!({"call": "rls", "descriptors": [{"entries": [["tokengate_key", "alice"]]}]});
    let r = calls(s.addr, Value::Array(vec![rls; 6])).await;
    let codes: Vec<&Value> = r.iter().map(|a| &a["response"]["overallCode"]).collect();
    assert_eq!(codes, ["OK", "OK", "OK", "OK", "OK", "OVER_LIMIT"], "{r:?}");
}

/// `--limits-store-failure closed` with the store gone: Check denies with
/// UNAVAILABLE and the HTTP 503; ShouldRateLimit fails the call, so
/// Envoy's own failure mode decides.
#[tokio::test]
async fn a_closed_store_that_is_gone_is_unavailable() {
    if !client_available() {
        return;
    }
    use crate::limits_redis::{Redis, store};
    use tokengate::config::StoreFailure;
    let Some(mut redis) = Redis::start("redis-grpc-closed", None).await else {
        return;
    };
    let keys = "alice-key-00000001 alice rate=5/h\n";
    let s = TestServer::with(
        keys_from(keys),
        store(&redis, StoreFailure::Closed),
        Limits::default(),
    )
    .await;
    let _ = redis.child.kill();
    let _ = redis.child.wait();
    let rls = json!({"call": "rls", "descriptors": [{"entries": [["tokengate_key", "alice"]]}]});
    let r = calls(
        s.addr,
        json!([check(Some("alice-key-00000001"), "GET", "/"), rls]),
    )
    .await;
    assert_eq!(r[0]["response"]["status"]["code"], 14, "{}", r[0]);
    assert_eq!(
        r[0]["response"]["deniedResponse"]["status"]["code"],
        "ServiceUnavailable"
    );
    assert_eq!(denied_header(&r[0], "retry-after"), Some("1"));
    assert_eq!(r[1]["error"], "UNAVAILABLE", "{}", r[1]);
}
