//! Limits shared through a real `redis-server` (`--limits-store`): the
//! server listens on a Unix socket in the test's directory (no port to
//! pick), started and stopped by PID here.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use http::{Method, StatusCode};
use tokengate::config::{StoreConfig, StoreFailure};
use tokengate::{AppConfig, Limits};

use crate::support::{Proto, Spawned, TempDir, TestServer, keys_from, send, wait_until};

/// A `redis-server` of the test's own.
pub(crate) struct Redis {
    pub(crate) child: Child,
    pub(crate) socket: PathBuf,
    pub(crate) password: Option<&'static str>,
    pub(crate) binary: &'static str,
    pub(crate) dir: TempDir,
}

impl Redis {
    pub(crate) async fn start(name: &str, password: Option<&'static str>) -> Option<Redis> {
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

    pub(crate) fn spawn(
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

    pub(crate) async fn wait_up(&self) {
        let up = wait_until(Duration::from_secs(20), || async {
            self.query(&["PING"]).await.is_ok()
        })
        .await;
        assert!(up, "redis-server did not start");
    }

    /// Kills the server (its data is gone: no persistence) and starts a
    /// new one on the same socket.
    pub(crate) async fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
        self.child = Redis::spawn(self.binary, &self.dir, &self.socket, self.password);
        self.wait_up().await;
    }

    pub(crate) fn url(&self) -> String {
        match self.password {
            Some(p) => format!("redis+unix://{}?pass={p}", self.socket.display()),
            None => format!("redis+unix://{}", self.socket.display()),
        }
    }

    pub(crate) async fn query(&self, args: &[&str]) -> redis::RedisResult<redis::Value> {
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
    pub(crate) async fn calls(&self, command: &str) -> u64 {
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

    pub(crate) fn signal(&self, sig: &str) {
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

pub(crate) fn store(redis: &Redis, failure: StoreFailure) -> AppConfig {
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

pub(crate) use crate::support::protected_as as protected;

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

/// The failed-credential throttle counts across replicas through the store:
/// guesses spread over two servers are throttled after the shared burst.
#[tokio::test]
async fn failed_guesses_spread_over_replicas_are_throttled_together() {
    let Some(redis) = Redis::start("redis-throttle", None).await else {
        return;
    };
    let config = || AppConfig {
        // 6 failures in a burst, then one a minute: alone, each server would
        // let about 6 of its own through.
        throttle: Some(tokengate::throttle::ThrottleConfig {
            failures: std::num::NonZeroU32::new(1).unwrap(),
            period: Duration::from_secs(60),
            burst: std::num::NonZeroU32::new(6).unwrap(),
            ..Default::default()
        }),
        ..store(&redis, StoreFailure::Local)
    };
    let keys = "valid-key-0000001 v\n";
    let a = TestServer::with(keys_from(keys), config(), Limits::default()).await;
    let b = TestServer::with(keys_from(keys), config(), Limits::default()).await;
    let mut unauthorized: u64 = 0;
    // Wrong guesses, alternating, until both servers refuse them.
    let mut refusing = [false, false];
    for i in 0..40 {
        let side = i % 2;
        if refusing[side] {
            continue;
        }
        let server = if side == 0 { &a } else { &b };
        match protected(server.addr, "wrong-guess-00001").await.status {
            StatusCode::UNAUTHORIZED => unauthorized += 1,
            StatusCode::TOO_MANY_REQUESTS => refusing[side] = true,
            other => panic!("{other}"),
        }
        if refusing == [true, true] {
            break;
        }
        // The count runs beside the answer: let the store's verdict on
        // every failure so far land before the next guess (bounded).
        let failures = unauthorized;
        let landed = wait_until(Duration::from_secs(10), || async {
            redis.calls("evalsha").await + redis.calls("eval").await >= failures
        })
        .await;
        assert!(landed, "the store never counted {failures} failures");
    }
    assert_eq!(
        refusing,
        [true, true],
        "{unauthorized} guesses answered 401"
    );
    // The shared burst (6) and at most one more per server while the store's
    // answer was on its way; the per-process throttle alone lets each server
    // reach its own burst (12 in all).
    assert!(
        unauthorized <= 8,
        "{unauthorized} guesses were answered 401"
    );
    // The address is throttled, even with a valid key.
    let valid = protected(a.addr, "valid-key-0000001").await;
    assert_eq!(valid.status, StatusCode::TOO_MANY_REQUESTS);
}
