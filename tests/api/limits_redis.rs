//! Limits shared through a real `redis-server` (`--limits-store`): the
//! server listens on a Unix socket in the test's directory (no port to
//! pick), started and stopped by PID here.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use http::{Method, StatusCode};
use tokengate::config::{StoreConfig, StoreFailure};
use tokengate::{AppConfig, Limits};

use crate::support::{Proto, Resp, Spawned, TempDir, TestServer, keys_from, send, wait_until};

/// A `redis-server` of the test's own.
struct Redis {
    child: Child,
    socket: PathBuf,
    password: Option<&'static str>,
    binary: &'static str,
    dir: TempDir,
}

impl Redis {
    async fn start(name: &str, password: Option<&'static str>) -> Option<Redis> {
        let binary = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists());
        let Some(binary) = binary else {
            assert!(
                std::env::var_os("CI").is_none(),
                "redis-server is not installed: .ci/run installs it"
            );
            eprintln!("skipped: redis-server is not installed (CI installs it)");
            return None;
        };
        let dir = TempDir::new(name);
        let socket = dir.join("redis.sock");
        let child = Redis::spawn(binary, &dir, &socket, password);
        let redis = Redis {
            child,
            socket,
            password,
            binary,
            dir,
        };
        redis.wait_up().await;
        Some(redis)
    }

    fn spawn(
        binary: &str,
        dir: &std::path::Path,
        socket: &std::path::Path,
        password: Option<&str>,
    ) -> Child {
        let mut cmd = Command::new(binary);
        cmd.args(["--port", "0", "--save", "", "--appendonly", "no"])
            .arg("--unixsocket")
            .arg(socket)
            .args(["--unixsocketperm", "700", "--dir"])
            .arg(dir);
        if let Some(password) = password {
            cmd.args(["--requirepass", password]);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    async fn wait_up(&self) {
        let up = wait_until(Duration::from_secs(20), || async {
            self.query(&["PING"]).await.is_ok()
        })
        .await;
        assert!(up, "redis-server did not start");
    }

    /// Kills the server (its data is gone: no persistence) and starts a
    /// new one on the same socket.
    async fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
        self.child = Redis::spawn(self.binary, &self.dir, &self.socket, self.password);
        self.wait_up().await;
    }

    fn url(&self) -> String {
        match self.password {
            Some(p) => format!("redis+unix://{}?pass={p}", self.socket.display()),
            None => format!("redis+unix://{}", self.socket.display()),
        }
    }

    async fn query(&self, args: &[&str]) -> redis::RedisResult<redis::Value> {
        let client = redis::Client::open(self.url())?;
        let mut connection = client.get_multiplexed_async_connection().await?;
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        cmd.query_async(&mut connection).await
    }

    /// `INFO commandstats`' count of one command's calls that succeeded
    /// (a NOSCRIPT answer is a failed call).
    async fn calls(&self, command: &str) -> u64 {
        let info = match self.query(&["INFO", "commandstats"]).await.unwrap() {
            redis::Value::BulkString(b) => String::from_utf8(b).unwrap(),
            redis::Value::VerbatimString { text, .. } => text,
            other => panic!("{other:?}"),
        };
        let Some(stats) = info
            .lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:")))
        else {
            return 0;
        };
        let field = |name: &str| -> u64 {
            stats
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                .map_or(0, |n| n.trim().parse().unwrap())
        };
        field("calls") - field("failed_calls")
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn store(redis: &Redis, failure: StoreFailure) -> AppConfig {
    AppConfig {
        limits_store: StoreConfig::redis(
            &redis.url(),
            "tokengate:test:",
            // Generous for a loaded machine; the stopped-store test waits for it.
            Duration::from_millis(500),
            failure,
        )
        .unwrap(),
        ..AppConfig::default()
    }
}

async fn protected(addr: std::net::SocketAddr, token: &str) -> Resp {
    send(
        Proto::H1,
        addr,
        Method::GET,
        "/protected",
        &[("x-token", token)],
    )
    .await
}

#[tokio::test]
async fn two_processes_share_one_quota_exactly() {
    let Some(redis) = Redis::start("redis-share", None).await else {
        return;
    };
    let dir = TempDir::new("redis-share-keys");
    let file = dir.join("keys");
    std::fs::write(&file, "shared-key-000001 shared quota=5/day\n").unwrap();
    let url = redis.url();
    let args = [
        "--token-file",
        file.to_str().unwrap(),
        "--limits-store",
        &url,
    ];
    let a = Spawned::start(&args, &[]).await;
    let b = Spawned::start(&args, &[]).await;
    let mut statuses = Vec::new();
    for i in 0..10 {
        let addr = if i % 2 == 0 { a.addr } else { b.addr };
        statuses.push(protected(addr, "shared-key-000001").await.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429, 429, 429]);
    // One script call per admitted request, plus each process's first
    // refusal; later refusals come from the process's own cache.
    let calls = redis.calls("evalsha").await + redis.calls("eval").await;
    assert_eq!(calls, 7, "store calls");
    // The URL (it may carry a password) never reaches the log.
    assert!(!a.log().contains("redis.sock"), "{}", a.log());
}

#[tokio::test]
async fn a_restart_keeps_the_count_and_a_flushed_script_is_loaded_again() {
    let Some(redis) = Redis::start("redis-restart", Some("s3cret-redis-pass")).await else {
        return;
    };
    let keys = "restart-key-00001 r quota=3/day\n";
    let first = TestServer::with(
        keys_from(keys),
        store(&redis, StoreFailure::Closed),
        Limits::default(),
    )
    .await;
    assert_eq!(
        protected(first.addr, "restart-key-00001").await.status,
        StatusCode::OK
    );
    drop(first);
    // A new server (another replica, or this one restarted) and a Redis
    // that forgot the script (SCRIPT FLUSH: NOSCRIPT, loaded again).
    redis.query(&["SCRIPT", "FLUSH"]).await.unwrap();
    let second = TestServer::with(
        keys_from(keys),
        store(&redis, StoreFailure::Closed),
        Limits::default(),
    )
    .await;
    let ok = protected(second.addr, "restart-key-00001").await;
    assert_eq!(ok.status, StatusCode::OK);
    assert!(
        ok.header("ratelimit")
            .unwrap()
            .starts_with(r#""day";r=1;t="#),
        "{ok:?}"
    );
    assert_eq!(
        protected(second.addr, "restart-key-00001").await.status,
        StatusCode::OK
    );
    let over = protected(second.addr, "restart-key-00001").await;
    assert_eq!(over.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(over.header("retry-after").is_some());
}

#[tokio::test]
async fn a_stopped_store_follows_the_failure_policy_and_comes_back() {
    let Some(redis) = Redis::start("redis-stopped", None).await else {
        return;
    };
    // A key without limits for /metrics: it never waits for the store.
    let keys = "stop-key-00000001 s rate=1000/s\nmetrics-key-00001 m\n";
    let local = TestServer::with(
        keys_from(keys),
        store(&redis, StoreFailure::Local),
        Limits::default(),
    )
    .await;
    let open = TestServer::with(
        keys_from(keys),
        store(&redis, StoreFailure::Open),
        Limits::default(),
    )
    .await;
    let closed = TestServer::with(
        keys_from(keys),
        store(&redis, StoreFailure::Closed),
        Limits::default(),
    )
    .await;
    for server in [&local, &open, &closed] {
        assert_eq!(
            protected(server.addr, "stop-key-00000001").await.status,
            StatusCode::OK
        );
    }
    // A hung store: every answer comes after at most the timeout, then at
    // once while the store is down.
    redis.signal("-STOP");
    let l = protected(local.addr, "stop-key-00000001").await;
    assert_eq!(
        l.status,
        StatusCode::OK,
        "local: the process's own counters"
    );
    assert!(l.header("ratelimit").is_some());
    let o = protected(open.addr, "stop-key-00000001").await;
    assert_eq!(o.status, StatusCode::OK, "open: admitted");
    let c = protected(closed.addr, "stop-key-00000001").await;
    assert_eq!(c.status, StatusCode::SERVICE_UNAVAILABLE, "closed");
    assert_eq!(c.text(), r#"{"detail":"Service Unavailable"}"#);
    assert_eq!(c.header("retry-after"), Some("1"));
    let metrics = |addr| async move {
        send(
            Proto::H1,
            addr,
            Method::GET,
            "/metrics",
            &[("x-token", "metrics-key-00001")],
        )
        .await
        .text()
        .to_owned()
    };
    let down = metrics(closed.addr).await;
    assert!(down.contains("tokengate_limits_store_up 0"), "{down}");
    assert!(
        down.contains(r#"tokengate_limits_store_calls_total{result="timeout"} 1"#),
        "{down}"
    );
    redis.signal("-CONT");
    // Back: the probe finds the store and requests count there again.
    let back = wait_until(Duration::from_secs(30), || async {
        protected(closed.addr, "stop-key-00000001").await.status == StatusCode::OK
    })
    .await;
    assert!(back, "the closed server never used the store again");
    assert!(
        metrics(closed.addr)
            .await
            .contains("tokengate_limits_store_up 1")
    );
}

#[tokio::test]
async fn the_gateway_asks_the_store_before_the_upstream() {
    let Some(redis) = Redis::start("redis-gateway", None).await else {
        return;
    };
    let (upstream, up) = {
        let up = crate::gateway::Upstream_::default();
        (up.start().await, up)
    };
    let config = AppConfig {
        limits_store: store(&redis, StoreFailure::Closed).limits_store,
        ..crate::gateway::gateway_config(upstream, Duration::from_secs(30))
    };
    let server = TestServer::with(
        keys_from("gateway-key-00001 g quota=2/day\nverify-key-000001 v quota=1/day\n"),
        config,
        Limits::default(),
    )
    .await;
    for left in [1, 0] {
        let r = protected(server.addr, "gateway-key-00001").await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(
            r.header("ratelimit")
                .unwrap()
                .starts_with(&format!("\"day\";r={left};"))
        );
    }
    let over = protected(server.addr, "gateway-key-00001").await;
    assert_eq!(over.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(up.count(), 2, "the refused request reached the upstream");
    // tokengate's own /auth/verify on the gateway's listener waits for the store too.
    let verify = || {
        send(
            Proto::H1,
            server.addr,
            Method::GET,
            "/auth/verify",
            &[
                ("x-token", "verify-key-000001"),
                ("x-original-uri", "/x"),
                ("x-original-method", "GET"),
            ],
        )
    };
    assert_eq!(verify().await.status, StatusCode::OK);
    assert_eq!(verify().await.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn the_store_password_is_never_logged() {
    let Some(redis) = Redis::start("redis-secret", Some("hunter2-store-pass")).await else {
        return;
    };
    let dir = TempDir::new("redis-secret-keys");
    let file = dir.join("keys");
    std::fs::write(&file, "secret-key-000001 s rate=100/s\n").unwrap();
    let url = redis.url();
    let server = Spawned::start(
        &[
            "--token-file",
            file.to_str().unwrap(),
            "--limits-store-timeout",
            "300ms",
        ],
        &[("TOKENGATE_LIMITS_STORE", &url), ("RUST_LOG", "debug")],
    )
    .await;
    assert_eq!(
        protected(server.addr, "secret-key-000001").await.status,
        StatusCode::OK
    );
    // The store goes away: the WARN names the failure, not the store.
    drop(redis);
    assert_eq!(
        protected(server.addr, "secret-key-000001").await.status,
        StatusCode::OK
    );
    server.wait_for_log("limits store unreachable").await;
    let metrics = send(
        Proto::H1,
        server.addr,
        Method::GET,
        "/metrics",
        &[("x-token", "secret-key-000001")],
    )
    .await;
    for text in [server.log(), metrics.text().to_owned()] {
        assert!(!text.contains("hunter2"), "{text}");
    }
}

#[tokio::test]
async fn a_killed_store_is_reconnected_under_each_policy() {
    let Some(mut redis) = Redis::start("redis-killed", None).await else {
        return;
    };
    let keys = "kill-key-00000001 k quota=100/day\n";
    let servers = [
        StoreFailure::Local,
        StoreFailure::Open,
        StoreFailure::Closed,
    ];
    let mut started = Vec::new();
    for failure in servers {
        started.push(
            TestServer::with(keys_from(keys), store(&redis, failure), Limits::default()).await,
        );
    }
    for server in &started {
        let r = protected(server.addr, "kill-key-00000001").await;
        assert_eq!(r.status, StatusCode::OK);
    }
    // Killed: a refused connection, not a hang. Each policy answers at once.
    let _ = redis.child.kill();
    let _ = redis.child.wait();
    let during: Vec<u16> = {
        let mut v = Vec::new();
        for server in &started {
            v.push(
                protected(server.addr, "kill-key-00000001")
                    .await
                    .status
                    .as_u16(),
            );
        }
        v
    };
    assert_eq!(during, [200, 200, 503]);
    // A new Redis on the same socket, empty: every server reconnects by itself.
    redis.restart().await;
    for server in &started {
        let back = wait_until(Duration::from_secs(30), || async {
            let r = protected(server.addr, "kill-key-00000001").await;
            // Counted by the new store: 99 left of its fresh day.
            r.status == StatusCode::OK && r.header("ratelimit").is_some_and(|v| v.contains(";r=9"))
        })
        .await;
        assert!(back, "a server never counted in the new store");
    }
    let used = redis
        .query(&["HGET", "tokengate:test:{k}", "qu"])
        .await
        .unwrap();
    assert!(matches!(used, redis::Value::BulkString(_)), "{used:?}");
}
