//! `TestServer` (binds 127.0.0.1:0, shuts down on drop) and small HTTP/1.1,
//! h2c and raw-TCP clients.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::process::{ExitStatus, Stdio};
use std::sync::Mutex;
use tokengate::keys::{Digest, Key, KeySource};
use tokengate::{App, AppConfig, KeySet, Limits};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const KEY: &str = "mysecrettoken";
pub const WRONG: &str = "not-the-key";

pub struct TestServer {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<tokengate::Stopped>>,
}

pub fn keys(tokens: &[&str]) -> KeySet {
    let mut set = KeySet::new();
    for (i, t) in tokens.iter().enumerate() {
        set.insert(Key::new(
            Digest::of(t.as_bytes()),
            format!("key-{}", i + 1),
            KeySource::Env,
        ))
        .unwrap();
    }
    set
}

impl TestServer {
    /// The default contract: demo key, default realm and header.
    pub async fn start() -> Self {
        Self::with(keys(&[KEY]), AppConfig::default(), Limits::default()).await
    }

    pub async fn with(keys: KeySet, app: AppConfig, limits: Limits) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Arc::new(App::new(keys, &app));
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(tokengate::serve(listener, app, limits, async {
            let _ = rx.await;
        }));
        TestServer {
            addr,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    /// Begins the graceful shutdown and waits for `serve` to return.
    pub async fn stop(self) {
        self.stop_with_outcome().await;
    }

    /// [`TestServer::stop`], returning how the drain ended.
    pub async fn stop_with_outcome(mut self) -> Option<tokengate::Stopped> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let handle = self.handle.take()?;
        Some(
            tokio::time::timeout(Duration::from_secs(30), handle)
                .await
                .expect("serve returns after shutdown")
                .unwrap(),
        )
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    H1,
    H2,
}

pub const BOTH: [Proto; 2] = [Proto::H1, Proto::H2];

/// One request on a fresh connection, with hyper's client.
pub async fn send(
    proto: Proto,
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> Resp {
    let mut builder = Request::builder().method(method);
    builder = match proto {
        Proto::H1 => builder.uri(path).header("host", addr.to_string()),
        Proto::H2 => builder.uri(format!("http://{addr}{path}")),
    };
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let req = builder.body(Empty::<Bytes>::new()).unwrap();
    let stream = TcpStream::connect(addr).await.unwrap();
    let io = TokioIo::new(stream);
    let resp = match proto {
        Proto::H1 => {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            sender.send_request(req).await.unwrap()
        }
        Proto::H2 => {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .unwrap();
            tokio::spawn(conn);
            sender.send_request(req).await.unwrap()
        }
    };
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Resp {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub async fn get(proto: Proto, addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Resp {
    send(proto, addr, Method::GET, path, headers).await
}

/// Writes `bytes` and reads until the server closes (or 10 s pass).
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    read_to_close(&mut stream).await
}

/// Reads until EOF, a reset, or 10 s; returns what arrived (lossy UTF-8).
pub async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The status codes of every response in a raw HTTP/1.1 transcript, in order.
pub fn statuses(transcript: &str) -> Vec<u16> {
    transcript
        .split("HTTP/1.1 ")
        .skip(1)
        .filter_map(|s| s.get(..3)?.parse().ok())
        .collect()
}

pub const BIN: &str = env!("CARGO_BIN_EXE_tokengate");

pub struct Spawned {
    pub child: Child,
    pub addr: SocketAddr,
    log: Arc<Mutex<String>>,
    /// The task that copies stderr into `log`; it ends at the child's exit.
    reader: Option<JoinHandle<()>>,
}

pub fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("TOKENGATE_TOKEN")
        .env_remove("TOKENGATE_TOKEN_FILE")
        .env_remove("TOKENGATE_LISTEN")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

impl Spawned {
    /// Starts the binary on 127.0.0.1:0 and learns its address from the log.
    pub async fn start(args: &[&str], env: &[(&str, &str)]) -> Spawned {
        Spawned::start_at("127.0.0.1:0", args, env).await
    }

    /// Starts the binary on a given address.
    pub async fn start_at(listen: &str, args: &[&str], env: &[(&str, &str)]) -> Spawned {
        let mut all = vec!["--listen", listen];
        all.extend_from_slice(args);
        Spawned::from_command(command(&all, env)).await
    }

    /// Spawns `cmd` (stderr piped) and learns the address from the log.
    pub async fn from_command(mut cmd: Command) -> Spawned {
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sink = log.clone();
        let reader = tokio::spawn(async move {
            let mut tx = Some(tx);
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                // Into the log first: once the address is known, every line
                // up to the announcement is in the log.
                {
                    let mut log = sink.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
                if let Some(addr) = listening_addr(&line)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .expect("the server logs its address")
            .expect("the server starts");
        Spawned {
            child,
            addr,
            log,
            reader: Some(reader),
        }
    }

    pub fn signal(&self, sig: &str) {
        let pid = self.child.id().unwrap().to_string();
        let ok = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    pub async fn wait(&mut self) -> ExitStatus {
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("the server exits")
            .unwrap()
    }

    /// Waits (up to 15 s) until the log contains `needle`; panics with the log if it never does.
    pub async fn wait_for_log(&self, needle: &str) {
        let seen = wait_until(Duration::from_secs(15), || async {
            self.log().contains(needle)
        })
        .await;
        assert!(
            seen,
            "{needle:?} never appeared in the log:\n{}",
            self.log()
        );
    }

    /// The log so far (the process may still be writing).
    /// The `--admin-listen` address the start-up log announces.
    pub async fn admin_addr(&self) -> SocketAddr {
        self.wait_for_log("admin endpoints on http://").await;
        let log = self.log();
        log.split("admin endpoints on http://")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no admin address in:\n{log}"))
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The whole log: waits for the process to exit and for its stderr to be
    /// read to the end.
    pub async fn log_after_exit(&mut self) -> String {
        self.wait().await;
        if let Some(reader) = self.reader.take() {
            tokio::time::timeout(Duration::from_secs(30), reader)
                .await
                .expect("stderr reaches EOF after exit")
                .unwrap();
        }
        self.log()
    }
}

impl Spawned {
    /// Resident memory of the server process, in KiB (Linux `/proc`).
    pub fn rss_kib(&self) -> u64 {
        proc_status_kib(self.child.id().unwrap(), "VmRSS:")
    }

    /// User + system CPU time of the server process so far, in clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id().unwrap())).unwrap();
        // Fields after the parenthesised command name; utime and stime are 14 and 15.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = after.split_whitespace().collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    }
}

pub fn proc_status_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(key)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Waits up to `cap` for the peer to close; `Some(transcript)` if it did.
pub async fn closed_within(stream: &mut TcpStream, cap: Duration) -> Option<String> {
    let mut out = Vec::new();
    let closed = tokio::time::timeout(cap, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    closed.then(|| String::from_utf8_lossy(&out).into_owned())
}

/// Like [`raw`], from a chosen loopback source address (e.g. 127.0.0.2).
pub async fn raw_from(local: std::net::IpAddr, addr: SocketAddr, bytes: &[u8]) -> String {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(local, 0)).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    read_to_close(&mut stream).await
}

impl Spawned {
    /// Starts the binary with its open-file limit lowered (`ulimit -n`).
    pub async fn start_with_nofile(nofile: u32, args: &[&str]) -> Spawned {
        let script = format!("ulimit -n {nofile} && exec \"$0\" \"$@\"");
        let mut all = vec!["-c", script.as_str(), BIN, "--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        let mut cmd = Command::new("sh");
        cmd.args(&all)
            .env("RUST_LOG", "info")
            .env_remove("TOKENGATE_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        Spawned::from_command(cmd).await
    }
}

/// The address in a start-up log line (`… listening on http(s)://ADDR …`),
/// text or JSON format.
pub fn listening_addr(line: &str) -> Option<SocketAddr> {
    let rest = line.split("listening on http").nth(1)?;
    let rest = rest
        .strip_prefix("s://")
        .or_else(|| rest.strip_prefix("://"))?;
    rest.split(['"', ' ', '}']).next()?.parse().ok()
}

/// Reads stderr lines until the start-up line; returns the address and the
/// remaining lines.
pub async fn wait_for_address(
    child: &mut Child,
) -> (
    SocketAddr,
    tokio::io::Lines<BufReader<tokio::process::ChildStderr>>,
) {
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    loop {
        let line = lines.next_line().await.unwrap().expect("start-up line");
        if let Some(addr) = listening_addr(&line) {
            return (addr, lines);
        }
    }
}

/// A temporary directory, removed when dropped.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    /// A fresh, empty directory named after the test and this process.
    pub fn new(name: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("tokengate-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl std::ops::Deref for TempDir {
    type Target = std::path::Path;

    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A raw HTTP/1.1 request: `METHOD target`, `Host: t`, an optional
/// `X-Token`, any `extra` header lines (each ending in CRLF), and
/// `Connection: close`.
pub fn request(method: &str, target: &str, token: Option<&str>, extra: &str) -> Vec<u8> {
    let token = token
        .map(|t| format!("X-Token: {t}\r\n"))
        .unwrap_or_default();
    format!("{method} {target} HTTP/1.1\r\nHost: t\r\n{token}{extra}Connection: close\r\n\r\n")
        .into_bytes()
}

/// Polls `condition` until it holds or `cap` passes; whether it held.
/// Waiting for the event itself, never for a guessed time.
pub async fn wait_until<F, Fut>(cap: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + cap;
    loop {
        if condition().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `GET /protected` over HTTP/1.1 with `token` in `X-Token`.
pub async fn protected_as(addr: SocketAddr, token: &str) -> Resp {
    send(
        Proto::H1,
        addr,
        Method::GET,
        "/protected",
        &[("x-token", token)],
    )
    .await
}

/// A key set from key-file text (labels, scopes, expiry), as the server reads it.
pub fn keys_from(text: &str) -> KeySet {
    let mut set = KeySet::new();
    tokengate::keys::parse_key_file(text, "test-keys", &mut set).unwrap();
    set
}

/// Sends SIGTERM to a child spawned with piped output and collects all of it
/// after a clean exit (the access log is flushed on the way out).
pub async fn terminate(child: Child) -> std::process::Output {
    let pid = child.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the server exits")
        .unwrap();
    assert!(out.status.success(), "exit: {:?}", out.status);
    out
}
