//! Operations: health and readiness, metrics, access log, key rotation,
//! SO_REUSEPORT hand-over and systemd socket activation.

use std::io::Write;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use http::StatusCode;
use tokengate::{AppConfig, Limits};
use tokio::io::AsyncBufReadExt;

use crate::support::{
    BOTH, KEY, Spawned, TempDir, TestServer, command, get, keys, raw, request, statuses, terminate,
    wait_until,
};

#[tokio::test]
async fn health_and_readiness() {
    let server = TestServer::start().await;
    for proto in BOTH {
        let r = get(proto, server.addr, "/healthz", &[]).await;
        assert_eq!((r.status, r.text()), (StatusCode::OK, r#"{"status":"ok"}"#));
        assert_eq!(r.header("content-type"), Some("application/json"));
        let r = get(proto, server.addr, "/readyz", &[]).await;
        assert_eq!(
            (r.status, r.text()),
            (StatusCode::OK, r#"{"status":"ready"}"#)
        );
    }
}

#[tokio::test]
async fn metrics_are_protected_and_count_requests() {
    let server = TestServer::start().await;
    for _ in 0..3 {
        raw(server.addr, &request("GET", "/public", None, "")).await;
    }
    raw(server.addr, &request("GET", "/protected", Some(KEY), "")).await;
    raw(
        server.addr,
        &request("GET", "/protected", Some("wrong"), ""),
    )
    .await;
    raw(server.addr, &request("GET", "/protected", None, "")).await;
    raw(server.addr, &request("GET", "/nope", None, "")).await;

    let denied = raw(server.addr, &request("GET", "/metrics", None, "")).await;
    assert_eq!(statuses(&denied), [401]);
    let r = get(
        crate::support::Proto::H1,
        server.addr,
        "/metrics",
        &[("x-token", KEY)],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = r.text();
    for needle in [
        r#"tokengate_requests_total{route="public",status="200"} 3"#,
        r#"tokengate_requests_total{route="protected",status="200"} 1"#,
        r#"tokengate_requests_total{route="protected",status="401"} 2"#,
        r#"tokengate_requests_total{route="metrics",status="401"} 1"#,
        r#"tokengate_requests_total{route="other",status="404"} 1"#,
        // The /protected request and this /metrics request itself.
        r#"tokengate_auth_total{outcome="ok",key="key-1"} 2"#,
        r#"tokengate_auth_total{outcome="invalid"} 1"#,
        r#"tokengate_auth_total{outcome="missing"} 2"#,
        r#"tokengate_request_duration_seconds_count{route="public"} 3"#,
        r#"tokengate_connections_accepted_total{protocol="h1"}"#,
        "tokengate_open_connections 1",
        "tokengate_keys_loaded 1",
        "tokengate_build_info{",
        "# EOF",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    assert!(!text.contains(KEY));

    // Prometheus' own parser, where installed (.ci/run installs it).
    if let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !report.contains("error while linting")
                && !report.contains("text format parsing error"),
            "{report}"
        );
    } else {
        eprintln!("promtool not installed: exposition checked by content only");
    }
}

#[tokio::test]
async fn metrics_public_flag() {
    let app = AppConfig {
        metrics_public: true,
        ..AppConfig::default()
    };
    let server = TestServer::with(keys(&[KEY]), app, Limits::default()).await;
    let got = raw(server.addr, &request("GET", "/metrics", None, "")).await;
    assert_eq!(statuses(&got), [200], "{got:.300}");
}

async fn access_lines(format: &str) -> Vec<String> {
    let mut cmd = command(
        &[
            "--listen",
            "127.0.0.1:0",
            "--access-log",
            "--log-format",
            format,
            "--trusted-proxies",
            "127.0.0.1",
        ],
        &[("TOKENGATE_TOKEN", "access-key-1")],
    );
    let mut child = cmd.spawn().unwrap();
    let (addr, _lines) = crate::support::wait_for_address(&mut child).await;
    raw(addr, &request("GET", "/public?secret-query=1", None, "")).await;
    raw(
        addr,
        &request("GET", "/protected", Some("access-key-1"), ""),
    )
    .await;
    raw(addr, &request("GET", "/protected", Some("wrong-key-2"), "")).await;
    // Forward auth from a trusted proxy: the original request and the client are logged.
    raw(
        addr,
        &request(
            "GET",
            "/auth/verify",
            Some("access-key-1"),
            "X-Original-Method: DELETE\r\nX-Original-URI: /reports/9?secret-query=2\r\nX-Forwarded-For: 198.51.100.7\r\n",
        ),
    )
    .await;
    let out = terminate(child).await;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn access_log_text_and_json() {
    let text = access_lines("text").await;
    assert_eq!(text.len(), 4, "{text:#?}");
    assert!(
        text[0].contains("method=GET")
            && text[0].contains("path=/public")
            && text[0].contains("status=200"),
        "{}",
        text[0]
    );
    assert!(
        text[0].contains("peer=127.0.0.1")
            && text[0].contains("bytes=42")
            && text[0].contains("duration_us=")
    );
    assert!(
        text[1].contains("key=\"env\"") || text[1].contains("key=env"),
        "{}",
        text[1]
    );
    assert!(text[2].contains("status=401"));
    assert!(
        text[3].contains("original_method=DELETE")
            && text[3].contains("original_path=/reports/9")
            && text[3].contains("client=198.51.100.7")
            && text[3].contains("path=/auth/verify")
            && text[3].contains("status=200"),
        "{}",
        text[3]
    );
    assert!(text[0].contains("original_path=-"), "{}", text[0]);
    for line in &text {
        assert!(
            !line.contains("secret-query")
                && !line.contains("access-key-1")
                && !line.contains("wrong-key-2"),
            "{line}"
        );
    }

    let json = access_lines("json").await;
    assert_eq!(json.len(), 4, "{json:#?}");
    let first: serde_json::Value = serde_json::from_str(&json[0]).unwrap();
    let fields = &first["fields"];
    assert_eq!(fields["method"], "GET");
    assert_eq!(fields["path"], "/public");
    assert_eq!(fields["status"], 200);
    assert_eq!(fields["bytes"], 42);
    assert!(first["timestamp"].is_string());
    let second: serde_json::Value = serde_json::from_str(&json[1]).unwrap();
    assert_eq!(second["fields"]["key"], "env");
}

/// Sends `GET /protected` with `token` on a fresh connection; the status.
async fn status_with(addr: SocketAddr, token: &str) -> u16 {
    let got = raw(addr, &request("GET", "/protected", Some(token), "")).await;
    statuses(&got).first().copied().unwrap_or(0)
}

#[tokio::test]
async fn sighup_rotates_keys_under_load() {
    let dir = TempDir::new("ops-rotate");
    let file = dir.join("keys");
    std::fs::write(&file, "stays-key-000001 stays\nleaves-key-00002 leaves\n").unwrap();
    let server = Spawned::start(
        &[
            "--token-file",
            file.to_str().unwrap(),
            "--auth-failure-limit",
            "off",
        ],
        &[],
    )
    .await;
    let addr = server.addr;

    // A client hammering with all three keys while the rotation happens.
    // At least 3 000 requests; it goes on until 900 requests after the new
    // key was first accepted (bounded: at most 30 000), whatever the machine's speed.
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = sent.clone();
    let client = tokio::spawn(async move {
        let mut log = Vec::new();
        let mut swapped_at = None;
        for i in 0..30_000 {
            counter.store(i, Relaxed);
            let token = ["stays-key-000001", "leaves-key-00002", "joins-key-000003"][i % 3];
            let status = status_with(addr, token).await;
            if token == "joins-key-000003" && status == 200 && swapped_at.is_none() {
                swapped_at = Some(i);
            }
            log.push((token, status));
            if i >= 3000 && swapped_at.is_some_and(|at| i >= at + 900) {
                break;
            }
        }
        log
    });
    // The rotation happens while the client is busy.
    assert!(
        wait_until(Duration::from_secs(30), || async {
            sent.load(Relaxed) >= 300
        })
        .await
    );
    std::fs::write(&file, "stays-key-000001 stays\njoins-key-000003 joins\n").unwrap();
    server.signal("-HUP");
    let log = client.await.unwrap();

    let mut swapped_leaves = false;
    let mut swapped_joins = false;
    for (token, status) in &log {
        match *token {
            "stays-key-000001" => assert_eq!(*status, 200, "a kept key failed"),
            "leaves-key-00002" => {
                assert!(*status == 200 || *status == 401, "{status}");
                if *status == 401 {
                    swapped_leaves = true;
                } else {
                    assert!(!swapped_leaves, "a removed key worked again after the swap");
                }
            }
            _ => {
                assert!(*status == 200 || *status == 401, "{status}");
                if *status == 200 {
                    swapped_joins = true;
                } else {
                    assert!(!swapped_joins, "a new key stopped working after the swap");
                }
            }
        }
    }
    assert!(
        swapped_leaves && swapped_joins,
        "the swap never happened within the run"
    );
    assert!(server.log().contains("keys reloaded"), "{}", server.log());

    // A broken file keeps the current keys, names file and line, and is counted.
    std::fs::write(&file, "stays-key-000001 stays\nbroken key line here\n").unwrap();
    server.signal("-HUP");
    let mut logged = false;
    for _ in 0..100 {
        if server.log().contains("key reload failed") {
            logged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(logged, "{}", server.log());
    let log = server.log();
    assert!(
        log.contains(file.to_str().unwrap()) && log.contains("line 2"),
        "{log}"
    );
    assert!(
        !log.contains("broken key line") && !log.contains("stays-key-000001"),
        "{log}"
    );
    assert_eq!(status_with(addr, "joins-key-000003").await, 200);
    let metrics = raw(
        addr,
        &request("GET", "/metrics", Some("stays-key-000001"), ""),
    )
    .await;
    assert!(
        metrics.contains(r#"tokengate_key_reloads_total{result="failure"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"tokengate_key_reloads_total{result="success"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn watched_secret_symlink_swap_reloads() {
    // The layout Kubernetes uses for a mounted Secret.
    let dir = TempDir::new("ops-watch");
    let v1 = dir.join("..2026_v1");
    std::fs::create_dir(&v1).unwrap();
    std::fs::write(v1.join("keys"), "first-key-000001\n").unwrap();
    std::os::unix::fs::symlink("..2026_v1", dir.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/keys", dir.join("keys")).unwrap();
    let file = dir.join("keys");
    let server = Spawned::start(
        &["--token-file", file.to_str().unwrap(), "--watch-token-file"],
        &[],
    )
    .await;
    assert_eq!(status_with(server.addr, "first-key-000001").await, 200);

    let v2 = dir.join("..2026_v2");
    std::fs::create_dir(&v2).unwrap();
    std::fs::write(v2.join("keys"), "second-key-00002\n").unwrap();
    std::os::unix::fs::symlink("..2026_v2", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    std::fs::remove_dir_all(&v1).unwrap();

    let mut reloaded = false;
    for _ in 0..150 {
        if status_with(server.addr, "second-key-00002").await == 200 {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reloaded, "{}", server.log());
    assert_eq!(status_with(server.addr, "first-key-000001").await, 401);
}

/// `net.ipv4.tcp_migrate_req`, set to 1 for the hand-over test and restored
/// after it: with 0 (the kernel default), a SYN that lands on the old listener
/// between its last accept and its close is reset — the microsecond window the
/// README documents. The test enables migration when it may (root), and
/// otherwise checks that failures are only such resets, and rare.
struct MigrateReq {
    restore: Option<String>,
    enabled: bool,
}

impl MigrateReq {
    const PATH: &str = "/proc/sys/net/ipv4/tcp_migrate_req";

    fn enable() -> MigrateReq {
        let before = std::fs::read_to_string(Self::PATH).unwrap_or_default();
        if before.trim() == "1" {
            return MigrateReq {
                restore: None,
                enabled: true,
            };
        }
        let enabled = std::fs::write(Self::PATH, "1").is_ok();
        MigrateReq {
            restore: enabled.then_some(before),
            enabled,
        }
    }
}

impl Drop for MigrateReq {
    fn drop(&mut self) {
        if let Some(before) = self.restore.take() {
            let _ = std::fs::write(Self::PATH, before.trim());
        }
    }
}

/// One request on a new connection; `Err` when the connection was reset
/// before any byte of an answer arrived.
async fn fresh_request(addr: SocketAddr) -> Result<String, std::io::Error> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(&request("GET", "/public", None, ""))
        .await?;
    let mut out = Vec::new();
    match tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await {
        Ok(Err(e)) if out.is_empty() => Err(e),
        _ => Ok(String::from_utf8_lossy(&out).into_owned()),
    }
}

#[tokio::test]
async fn reuse_port_hand_over_drops_no_request() {
    let migrate = MigrateReq::enable();
    // The first instance picks a free port; the second joins it.
    let mut old = Spawned::start(&["--reuse-port"], &[]).await;
    let addr = old.addr;
    let new = Spawned::start_at(&addr.to_string(), &["--reuse-port"], &[]).await;
    assert_eq!(new.addr, addr);

    // Requests on new connections for as long as the old process drains and
    // 300 more after it has exited (bounded: at most 50 000).
    let old_gone = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let gone = old_gone.clone();
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = sent.clone();
    let client = tokio::spawn(async move {
        let mut failures = Vec::new();
        let mut resets = 0;
        let mut after = 0;
        for i in 0..50_000 {
            counter.store(i, Relaxed);
            match fresh_request(addr).await {
                Ok(got) if statuses(&got) == [200] => {}
                Ok(got) => failures.push((i, got)),
                Err(_) => resets += 1,
            }
            if gone.load(std::sync::atomic::Ordering::Relaxed) {
                after += 1;
                if after >= 300 {
                    return (failures, resets, i + 1);
                }
            }
        }
        (failures, resets, 50_000)
    });
    // Both instances are up and the client is busy: stop the old one.
    assert!(
        wait_until(Duration::from_secs(30), || async {
            sent.load(Relaxed) >= 50
        })
        .await
    );
    old.signal("-TERM");
    assert!(old.wait().await.success());
    old_gone.store(true, std::sync::atomic::Ordering::Relaxed);
    let (failures, resets, sent) = client.await.unwrap();
    if migrate.enabled {
        assert_eq!(resets, 0, "{resets} of {sent} connections were reset");
    } else {
        // Without migration only the documented close window may reset a
        // connection, and only before it got any answer.
        assert!(
            resets * 100 <= sent,
            "{resets} of {sent} connections were reset"
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    drop(new);
}

#[tokio::test]
async fn systemd_socket_activation() {
    if std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipping: python3 is needed to pass a socket the way systemd does");
        return;
    }
    // Binds a socket, puts it at fd 3, sets LISTEN_FDS/LISTEN_PID for its own
    // pid and execs tokengate in place — what systemd does for a socket unit.
    let launcher = r#"
import os, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0))
s.listen(128)
print(s.getsockname()[1], flush=True)
if s.fileno() != 3:
    os.dup2(s.fileno(), 3)
os.set_inheritable(3, True)
os.environ["LISTEN_FDS"] = "1"
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.argv[1], [sys.argv[1], "--listen", "127.0.0.1:1"])
"#;
    let mut child = tokio::process::Command::new("python3")
        .args(["-c", launcher, crate::support::BIN])
        .env("RUST_LOG", "info")
        .env_remove("TOKENGATE_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut out = tokio::io::BufReader::new(stdout).lines();
    let port: u16 = out
        .next_line()
        .await
        .unwrap()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut served = false;
    for _ in 0..100 {
        if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
            use tokio::io::AsyncWriteExt;
            s.write_all(&request("GET", "/public", None, ""))
                .await
                .unwrap();
            if statuses(&crate::support::read_to_close(&mut s).await) == [200] {
                served = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served, "the inherited socket was not served");
    let out = terminate(child).await;
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("inherited (LISTEN_FDS)"), "{log}");
}

#[tokio::test]
async fn metrics_off_serves_no_metrics() {
    let app = AppConfig {
        metrics: false,
        metrics_public: true,
        ..AppConfig::default()
    };
    let server = TestServer::with(keys(&[KEY]), app, Limits::default()).await;
    assert_eq!(
        statuses(&raw(server.addr, &request("GET", "/metrics", None, "")).await),
        [404]
    );
    assert_eq!(
        statuses(&raw(server.addr, &request("GET", "/protected", Some(KEY), "")).await),
        [200]
    );
}

/// A stalled stdout never stalls requests: the access log drops lines, and
/// counts them in the metrics.
#[tokio::test]
async fn stalled_access_log_drops_lines_instead_of_stalling() {
    let mut cmd = command(
        &[
            "--listen",
            "127.0.0.1:0",
            "--access-log",
            "--metrics-public",
        ],
        &[],
    );
    // stdout is a pipe that nobody reads: it fills after 64 KiB.
    let mut child = cmd.spawn().unwrap();
    let _stdout_never_read = child.stdout.take().unwrap();
    let (addr, mut lines) = crate::support::wait_for_address(&mut child).await;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    // Far more than a pipe and the writer's buffer hold, on keep-alive connections.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        tasks.push(tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let batch = b"GET /public HTTP/1.1\r\nHost: t\r\n\r\n".repeat(500);
            let mut ok = 0usize;
            let mut buf = vec![0u8; 256 * 1024];
            for _ in 0..50 {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                s.write_all(&batch).await.unwrap();
                let mut seen = 0;
                while seen < 500 {
                    let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf))
                        .await
                        .expect("requests must not stall")
                        .unwrap();
                    assert!(n > 0);
                    seen += buf[..n]
                        .windows(12)
                        .filter(|w| w == b"HTTP/1.1 200")
                        .count();
                }
                ok += seen;
            }
            ok
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, 4 * 50 * 500);
    let metrics = raw(addr, &request("GET", "/metrics", None, "")).await;
    let dropped: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tokengate_access_log_dropped_lines_total "))
        .expect("the drop counter is exposed")
        .trim()
        .parse()
        .unwrap();
    assert!(
        dropped > 0,
        "no line was dropped although stdout was never read"
    );
    let _ = child.kill().await;
}
