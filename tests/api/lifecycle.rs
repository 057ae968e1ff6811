//! The real binary: start-up, configuration errors, signals and the drain.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use http::{Method, StatusCode};

use crate::support::{
    Proto, Spawned, TempDir, command, raw, read_to_close, send, statuses, wait_until,
};

#[tokio::test]
async fn request_in_flight_at_sigterm_completes() {
    let mut server = Spawned::start(&[], &[]).await;
    assert_eq!(
        statuses(
            &raw(
                server.addr,
                b"GET /public HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
            )
            .await
        ),
        [200]
    );

    let log = sigterm_with_a_request_in_flight(&mut server, "mysecrettoken").await;
    assert!(log.contains("SIGTERM received"), "{log}");
    assert!(log.contains("shutdown complete"), "{log}");
    // After the drain the port is closed.
    assert!(TcpStream::connect(server.addr).await.is_err());
}

#[tokio::test]
async fn sigint_exits_zero() {
    let mut server = Spawned::start(&[], &[]).await;
    server.signal("-INT");
    let status = server.wait().await;
    assert!(status.success(), "{status:?}");
    let log = server.log_after_exit().await;
    assert!(log.contains("SIGINT received"), "{log}");
}

#[tokio::test]
async fn demo_key_warns_and_works() {
    let server = Spawned::start(&[], &[]).await;
    let log = server.log();
    assert!(log.contains("WARN") && log.contains("demo key"), "{log}");
    assert!(log.contains(r#"keys=["demo"]"#), "{log}");
    let got = raw(server.addr, b"GET /protected HTTP/1.1\r\nHost: t\r\nX-Token: mysecrettoken\r\nConnection: close\r\n\r\n").await;
    assert_eq!(statuses(&got), [200]);
}

#[tokio::test]
async fn env_and_file_keys_log_labels_only() {
    let dir = TempDir::new("life-keys");
    let file = dir.join("keys");
    std::fs::write(
        &file,
        "# team keys\nfile-secret-0001 ci-bot\n\nfile-secret-0002\n",
    )
    .unwrap();
    let server = Spawned::start(
        &["--token-file", file.to_str().unwrap()],
        &[("TOKENGATE_TOKEN", "env-secret-0"), ("RUST_LOG", "trace")],
    )
    .await;
    for (key, want) in [
        ("env-secret-0", 200),
        ("file-secret-0001", 200),
        ("file-secret-0002", 200),
        ("mysecrettoken", 401),
    ] {
        let req = format!(
            "GET /protected HTTP/1.1\r\nHost: t\r\nX-Token: {key}\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(
            statuses(&raw(server.addr, req.as_bytes()).await),
            [want],
            "{key}"
        );
    }
    let log = server.log();
    assert!(log.contains(r#"keys=["env", "ci-bot", "key-3"]"#), "{log}");
    assert!(!log.contains("secret-"), "a secret reached the log:\n{log}");
    assert!(!log.contains("demo key"));
}

#[tokio::test]
async fn ipv6_loopback() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipping: no IPv6 loopback here");
        return;
    }
    let mut cmd = command(&["--listen", "[::1]:0"], &[]);
    let mut child = cmd.spawn().unwrap();
    let (addr, _lines) = crate::support::wait_for_address(&mut child).await;
    assert!(addr.is_ipv6() && addr.port() != 0);
    let got = raw(
        addr,
        b"GET /public HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&got), [200]);
    child.kill().await.unwrap();
}

async fn run_to_exit(
    args: &[&str],
    env: &[(&str, &str)],
    stdin: Option<&[u8]>,
) -> (i32, String, String) {
    let mut cmd = command(args, env);
    if stdin.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd.spawn().unwrap();
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input).await.unwrap();
        drop(pipe);
    }
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("exits")
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Fail closed (issue 21, item 7): without a key, the demo key serves only
/// standalone on a loopback address; a label typed alone on a key-file line
/// is not a full-access key.
#[tokio::test]
async fn no_key_and_short_keys_fail_closed() {
    for args in [
        &["--listen", "0.0.0.0:0"][..],
        &["--listen", "[::]:0"][..],
        &[
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "http://127.0.0.1:9",
        ][..],
    ] {
        let (code, _, err) = run_to_exit(args, &[], None).await;
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(
            err.contains("TOKENGATE_TOKEN") && err.contains("--token-file"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("listening"), "{err}");
    }
    let dir = TempDir::new("life-short");
    let file = dir.join("keys");
    std::fs::write(
        &file,
        "full-access-key-1 ops
reports
",
    )
    .unwrap();
    let (code, _, err) = run_to_exit(
        &[
            "--listen",
            "127.0.0.1:0",
            "--token-file",
            file.to_str().unwrap(),
        ],
        &[],
        None,
    )
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("line 2") && err.contains("at least 16"),
        "{err}"
    );
}

#[tokio::test]
async fn configuration_errors_exit_2_without_secrets() {
    let (code, _, err) = run_to_exit(
        &["--listen", "127.0.0.1:0"],
        &[("TOKENGATE_TOKEN", "")],
        None,
    )
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("TOKENGATE_TOKEN") && err.contains("empty"),
        "{err}"
    );
    assert!(!err.contains("listening"), "{err}");

    let (code, _, err) = run_to_exit(
        &["--listen", "127.0.0.1:0"],
        &[("TOKENGATE_TOKEN", "has space-secret")],
        None,
    )
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(!err.contains("space-secret"), "{err}");

    let dir = TempDir::new("life-cfg");
    let file = dir.join("bad-keys");
    std::fs::write(&file, "good-secret-aaaaa\nbad-secret-bbbbbb x y\n").unwrap();
    let (code, _, err) = run_to_exit(
        &[
            "--listen",
            "127.0.0.1:0",
            "--token-file",
            file.to_str().unwrap(),
        ],
        &[],
        None,
    )
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(file.to_str().unwrap()) && err.contains("line 2"),
        "{err}"
    );
    assert!(!err.contains("secret-"), "{err}");

    let (code, _, err) =
        run_to_exit(&["--token-file", "/nonexistent/tokengate/keys"], &[], None).await;
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/tokengate/keys"), "{err}");

    let (code, _, err) = run_to_exit(&["--shutdown-timeout", "soon"], &[], None).await;
    assert_eq!(code, 2);
    assert!(err.contains("--shutdown-timeout"), "{err}");

    // A port in use is reported with the flag and exits non-zero.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, _, err) = run_to_exit(&["--listen", &addr], &[], None).await;
    assert_eq!(code, 2);
    assert!(
        err.contains("--listen") && err.contains("cannot bind"),
        "{err}"
    );
}

#[tokio::test]
async fn hash_token_subcommand() {
    let (code, out, err) = run_to_exit(&["hash-token"], &[], Some(b"mysecrettoken\n")).await;
    assert_eq!(code, 0, "{err}");
    let want = format!(
        "sha256:{}\n",
        tokengate::Digest::of(b"mysecrettoken").to_hex()
    );
    assert_eq!(out, want);
    assert_eq!(want.len(), "sha256:".len() + 64 + 1);

    let (code, out, err) = run_to_exit(&["hash-token"], &[], Some(b"\n")).await;
    assert_eq!(code, 2);
    assert!(out.is_empty() && err.contains("empty"), "{err}");

    // The printed line is accepted as a key file.
    let dir = TempDir::new("life-hash");
    let file = dir.join("keys");
    std::fs::write(&file, format!("{} hashed-bot\n", want.trim())).unwrap();
    let server = Spawned::start(&["--token-file", file.to_str().unwrap()], &[]).await;
    let got = raw(server.addr, b"GET /protected HTTP/1.1\r\nHost: t\r\nX-Token: mysecrettoken\r\nConnection: close\r\n\r\n").await;
    assert_eq!(statuses(&got), [200]);
}

/// In-process: shutdown closes idle HTTP/1 keep-alive and HTTP/2 connections
/// at once instead of waiting for the drain deadline.
#[tokio::test]
async fn graceful_stop_closes_idle_connections() {
    use crate::support::{TestServer, keys};
    use http_body_util::Empty;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let limits = tokengate::Limits {
        shutdown_timeout: Duration::from_secs(120),
        ..Default::default()
    };
    let server = TestServer::with(keys(&["k"]), tokengate::AppConfig::default(), limits).await;

    let io = TokioIo::new(TcpStream::connect(server.addr).await.unwrap());
    let (mut h1, h1_conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    let h1_task = tokio::spawn(h1_conn);
    let req = http::Request::get("/public")
        .header("host", "t")
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    assert_eq!(h1.send_request(req).await.unwrap().status(), 200);

    let io = TokioIo::new(TcpStream::connect(server.addr).await.unwrap());
    let (mut h2, h2_conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    let h2_task = tokio::spawn(h2_conn);
    let req = http::Request::get(format!("http://{}/public", server.addr))
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    assert_eq!(h2.send_request(req).await.unwrap().status(), 200);

    // Far below the 120 s drain deadline: `stop` panics after 30 s.
    server.stop().await;
    // Both client connections see the server close them.
    tokio::time::timeout(Duration::from_secs(10), h1_task)
        .await
        .unwrap()
        .unwrap()
        .ok();
    tokio::time::timeout(Duration::from_secs(10), h2_task)
        .await
        .unwrap()
        .unwrap()
        .ok();
}

/// Sends SIGTERM while a `/protected` request with `key` is half-sent, then
/// completes it once the drain has begun (a connection still on its first
/// request gets a grace from there): it must be answered 200, and the server
/// must exit 0. Returns the log.
async fn sigterm_with_a_request_in_flight(server: &mut Spawned, key: &str) -> String {
    let (first, rest) = key.split_at(key.len() / 2);
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    let head = format!("GET /protected HTTP/1.1\r\nHost: t\r\nX-Token: {first}");
    conn.write_all(head.as_bytes()).await.unwrap();
    server.signal("-TERM");
    server.wait_for_log("draining connections").await;
    conn.write_all(format!("{rest}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let transcript = read_to_close(&mut conn).await;
    assert_eq!(statuses(&transcript), [200], "{transcript}");
    let status = server.wait().await;
    let log = server.log_after_exit().await;
    assert!(status.success(), "exit status {status:?}; log:\n{log}");
    log
}

/// The names of the process's threads (`/proc/PID/task/*/comm`).
fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .collect()
}

/// `--workers 1`: every connection on the one thread (no tokio worker thread
/// at all), with nothing else changed: both protocols, a key reload, the
/// drain of a request in flight. `--workers 2` runs two workers.
#[tokio::test]
async fn one_worker_serves_everything_on_one_thread() {
    let dir = TempDir::new("workers");
    let file = dir.join("keys");
    std::fs::write(&file, "first-worker-key-a\n").unwrap();
    let keys = file.to_str().unwrap();
    let mut server = Spawned::start(&["--workers", "1", "--token-file", keys], &[]).await;
    server.wait_for_log("workers=1").await;
    for proto in [Proto::H1, Proto::H2] {
        let r = send(
            proto,
            server.addr,
            Method::GET,
            "/protected",
            &[("x-token", "first-worker-key-a")],
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{proto:?}");
    }
    std::fs::write(&file, "second-worker-key-b\n").unwrap();
    server.signal("-HUP");
    server.wait_for_log("keys reloaded").await;
    for (key, want) in [
        ("second-worker-key-b", StatusCode::OK),
        ("first-worker-key-a", StatusCode::UNAUTHORIZED),
    ] {
        let r = send(
            Proto::H2,
            server.addr,
            Method::GET,
            "/protected",
            &[("x-token", key)],
        )
        .await;
        assert_eq!(r.status, want, "{key}");
    }
    let pid = server.child.id().unwrap();
    let names = thread_names(pid);
    assert!(
        !names.iter().any(|n| n.starts_with("tokio-r")),
        "a runtime worker thread with --workers 1: {names:?}"
    );

    let log = sigterm_with_a_request_in_flight(&mut server, "second-worker-key-b").await;
    assert!(log.contains("shutdown complete"), "{log}");

    let mut two = Spawned::start(&["--workers", "2"], &[]).await;
    two.wait_for_log("workers=2").await;
    // A new thread carries its parent's name until it runs and sets its
    // own: on a loaded machine that can come after the start-up line.
    let pid = two.child.id().unwrap();
    let workers = || {
        thread_names(pid)
            .into_iter()
            .filter(|n| n.starts_with("tokio-r"))
            .count()
    };
    wait_until(Duration::from_secs(30), || async { workers() >= 2 }).await;
    assert_eq!(workers(), 2, "{:?}", thread_names(pid));
    two.signal("-TERM");
    assert!(two.wait().await.success());
}
