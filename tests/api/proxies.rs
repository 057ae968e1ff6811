//! Real proxies in front of an API, asking tokengate: nginx (`auth_request`)
//! and Caddy (`forward_auth`) run with their files from `deploy/proxies/`;
//! HAProxy's file is checked with `haproxy -c`. Proxies listen on Unix
//! sockets in a temp dir (no port is guessed); tokengate and the API (a small
//! header-echo server written here) on 127.0.0.1:0.
//!
//! In CI (`CI` set) a missing proxy binary fails its test; elsewhere the test
//! says it skipped.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokengate::TrustedProxies;
use tokengate::{AppConfig, Limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixStream};
use tokio::process::{Child, Command};

use crate::support::{TempDir, TestServer, keys_from, statuses, wait_until};

const KEYS: &str = "\
full-access-key-1 ops
reports-only-key reports scope=GET,HEAD:/reports/*
limited-key-00001 limited quota=2/hour
";

fn deploy_file(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/proxies")
        .join(name);
    std::fs::read_to_string(&path).unwrap()
}

/// `Some(path)` of the binary, `None` (the test skips) off CI.
fn binary(name: &str) -> Option<PathBuf> {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        for candidate in [Path::new(dir).join(name), Path::new("/usr/sbin").join(name)] {
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    if std::env::var_os("CI").is_some() {
        panic!("{name} is not installed: .ci/run installs it");
    }
    eprintln!("skipped: {name} is not installed (CI installs it)");
    None
}

/// The API: answers every request with the method, path and headers it
/// received, as JSON.
async fn echo_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<Incoming>| async move {
                    let headers: BTreeMap<String, String> = req
                        .headers()
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("?").to_owned()))
                        .collect();
                    let body = serde_json::json!({
                        "method": req.method().as_str(),
                        "path": req.uri().path(),
                        "headers": headers,
                    });
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body.to_string()))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

async fn tokengate() -> TestServer {
    tokengate_refusing_with(StatusCode::FORBIDDEN).await
}

/// tokengate with `--forward-auth-throttle-status` (Caddy relays any status:
/// its config runs tokengate with 429).
async fn tokengate_refusing_with(status: StatusCode) -> TestServer {
    let config = AppConfig {
        trusted_proxies: TrustedProxies::parse("127.0.0.1").unwrap(),
        forward_auth_throttle_status: status,
        ..AppConfig::default()
    };
    TestServer::with(keys_from(KEYS), config, Limits::default()).await
}

/// One GET over the proxy's Unix socket; the raw response.
async fn through(socket: &Path, target: &str, headers: &[(&str, &str)]) -> String {
    through_as(socket, "GET", target, headers).await
}

/// One request over the proxy's Unix socket; the raw response.
async fn through_as(socket: &Path, method: &str, target: &str, headers: &[(&str, &str)]) -> String {
    let mut stream = UnixStream::connect(socket).await.unwrap();
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: api.example\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut out))
        .await
        .expect("the proxy answers")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// The upstream's echo in a response, if the request reached it.
fn echoed(response: &str) -> Option<serde_json::Value> {
    let body = response.split("\r\n\r\n").nth(1)?;
    let start = body.find('{')?;
    let end = body.rfind('}')?;
    serde_json::from_str(&body[start..=end])
        .ok()
        .filter(|v: &serde_json::Value| v.get("headers").is_some())
}

/// The end-to-end checks every proxy must pass.
async fn assert_guarded(socket: &Path) {
    // No key: 401 with the challenge, and the API never sees it.
    let r = through(socket, "/reports/1", &[("X-Auth-Key-Label", "forged")]).await;
    assert_eq!(statuses(&r), [401], "{r}");
    assert!(
        r.to_ascii_lowercase()
            .contains("www-authenticate: bearer realm=\"tokengate\""),
        "{r}"
    );
    assert!(echoed(&r).is_none(), "{r}");
    // Wrong key: 401.
    let r = through(socket, "/reports/1", &[("X-Token", "wrong-key")]).await;
    assert_eq!(statuses(&r), [401], "{r}");
    assert!(echoed(&r).is_none(), "{r}");
    // Valid key: the API answers, sees the label, never the credential, never a forged label.
    for credential in [
        ("X-Token", "full-access-key-1"),
        ("Authorization", "Bearer full-access-key-1"),
    ] {
        let r = through(
            socket,
            "/reports/1?x=1",
            &[credential, ("X-Auth-Key-Label", "forged")],
        )
        .await;
        assert_eq!(statuses(&r), [200], "{r}");
        let echo = echoed(&r).unwrap_or_else(|| panic!("not from the API: {r}"));
        let headers = &echo["headers"];
        assert_eq!(headers["x-auth-key-label"], "ops", "{echo}");
        assert!(
            headers.get("x-token").is_none(),
            "credential leaked: {echo}"
        );
        assert!(
            headers.get("authorization").is_none(),
            "credential leaked: {echo}"
        );
        assert_eq!(echo["path"], "/reports/1", "{echo}");
    }
    // A key outside its scopes: 403.
    let r = through(socket, "/admin", &[("X-Token", "reports-only-key")]).await;
    assert_eq!(statuses(&r), [403], "{r}");
    assert!(echoed(&r).is_none(), "{r}");
    // A client that describes another request than the one it makes (issue
    // 21): a key scoped to GET,HEAD:/reports/* asks for DELETE /admin/secret
    // with every forwarding dialect forged.
    for forged in [
        [
            ("X-Forwarded-Uri", "/reports/x"),
            ("X-Forwarded-Method", "GET"),
        ],
        [
            ("X-Original-URI", "/reports/x"),
            ("X-Original-Method", "GET"),
        ],
        [
            ("X-Original-URL", "http://api.example/reports/x"),
            ("X-Forwarded-Method", "GET"),
        ],
    ] {
        let mut headers = vec![("X-Token", "reports-only-key")];
        headers.extend(forged);
        let r = through_as(socket, "DELETE", "/admin/secret", &headers).await;
        assert_eq!(statuses(&r), [403], "{forged:?}: {r}");
        assert!(echoed(&r).is_none(), "{forged:?} reached the API: {r}");
    }
    // A dot segment in the original URI: refused, not resolved.
    let r = through(
        socket,
        "/reports/../admin/secret",
        &[("X-Token", "reports-only-key")],
    )
    .await;
    assert!(matches!(statuses(&r)[..], [400] | [403]), "{r}");
    assert!(echoed(&r).is_none(), "{r}");
    let r = through(socket, "/reports/2", &[("X-Token", "reports-only-key")]).await;
    assert_eq!(statuses(&r), [200], "{r}");
    assert_eq!(
        echoed(&r).unwrap()["headers"]["x-auth-key-label"],
        "reports"
    );
}

/// A key over its quota: the proxy turns tokengate's 403 (reason
/// quota-exhausted, retry-after) into the client's 429, the API never sees
/// the request, and the RateLimit fields reach the client on every answer.
async fn assert_limits_relayed(socket: &Path) {
    for left in [1, 0] {
        let r = through(socket, "/reports/1", &[("X-Token", "limited-key-00001")]).await;
        assert_eq!(statuses(&r), [200], "{r}");
        assert!(echoed(&r).is_some(), "{r}");
        let lower = r.to_ascii_lowercase();
        assert!(
            lower.contains(&format!("\r\nratelimit: \"hour\";r={left};t=")),
            "{r}"
        );
        assert!(
            lower.contains("\r\nratelimit-policy: \"hour\";q=2;w=3600"),
            "{r}"
        );
    }
    let r = through(socket, "/reports/1", &[("X-Token", "limited-key-00001")]).await;
    assert_eq!(statuses(&r), [429], "{r}");
    assert!(echoed(&r).is_none(), "{r}");
    let lower = r.to_ascii_lowercase();
    let retry: u64 = lower
        .split("\r\nretry-after: ")
        .nth(1)
        .and_then(|v| v.split("\r\n").next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no retry-after: {r}"));
    assert!((1..=3600).contains(&retry), "{r}");
    assert!(lower.contains("\r\nratelimit: \"hour\";r=0;t="), "{r}");
    assert!(r.contains(r#"{"detail":"Too Many Requests"}"#), "{r}");
    // A key without limits gets no fields.
    let r = through(socket, "/reports/1", &[("X-Token", "full-access-key-1")]).await;
    assert!(!r.to_ascii_lowercase().contains("\r\nratelimit"), "{r}");
}

struct Proxy {
    child: Child,
    socket: PathBuf,
}

impl Proxy {
    async fn start(mut cmd: Command, socket: PathBuf) -> Proxy {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().unwrap();
        let up = wait_until(Duration::from_secs(20), || {
            let socket = socket.clone();
            async move { UnixStream::connect(&socket).await.is_ok() }
        })
        .await;
        if !up {
            let _ = child.start_kill();
            let out = child.wait_with_output().await.unwrap();
            panic!(
                "the proxy did not start: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Proxy { child, socket }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

#[tokio::test]
async fn nginx_auth_request_end_to_end() {
    let Some(nginx) = binary("nginx") else {
        return;
    };
    let dir = TempDir::new("proxy-nginx");
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    let gate = tokengate().await;
    let api = echo_upstream().await;
    let socket = dir.join("nginx.sock");
    let conf = deploy_file("nginx.conf")
        .replace("127.0.0.1:8000", &gate.addr.to_string())
        .replace("127.0.0.1:9000", &api.to_string())
        .replace(
            "listen 8080;",
            &format!("listen unix:{};", socket.display()),
        );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let mut cmd = Command::new(nginx);
    cmd.arg("-p")
        .arg(&*dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-g")
        .arg(format!(
            "daemon off; master_process off; pid {}; error_log stderr;",
            dir.join("nginx.pid").display()
        ));
    let proxy = Proxy::start(cmd, socket).await;
    assert_guarded(&proxy.socket).await;
    assert_limits_relayed(&proxy.socket).await;
}

#[tokio::test]
async fn caddy_forward_auth_end_to_end() {
    let Some(caddy) = binary("caddy") else {
        return;
    };
    let dir = TempDir::new("proxy-caddy");
    let gate = tokengate_refusing_with(StatusCode::TOO_MANY_REQUESTS).await;
    let api = echo_upstream().await;
    let socket = dir.join("caddy.sock");
    let conf = deploy_file("Caddyfile")
        .replace("127.0.0.1:8000", &gate.addr.to_string())
        .replace("127.0.0.1:9000", &api.to_string())
        .replace(
            ":8080 {",
            &format!(":8080 {{\n\tbind unix/{}", socket.display()),
        );
    std::fs::write(dir.join("Caddyfile"), conf).unwrap();
    let mut cmd = Command::new(caddy);
    cmd.arg("run")
        .arg("--config")
        .arg(dir.join("Caddyfile"))
        .arg("--adapter")
        .arg("caddyfile")
        .env("HOME", &*dir)
        .env("XDG_DATA_HOME", &*dir)
        .env("XDG_CONFIG_HOME", &*dir);
    let proxy = Proxy::start(cmd, socket).await;
    assert_guarded(&proxy.socket).await;
    assert_limits_relayed(&proxy.socket).await;
}

#[tokio::test]
async fn haproxy_configuration_is_valid() {
    let Some(haproxy) = binary("haproxy") else {
        return;
    };
    // The Lua action comes from haproxy-auth-request, which no package ships:
    // a stub that registers the same action name lets `haproxy -c` check
    // everything else in the file.
    let dir = TempDir::new("proxy-haproxy");
    let stub = dir.join("auth-request.lua");
    std::fs::write(
        &stub,
        "core.register_action('auth-request', { 'http-req' }, function(txn, be, path) end, 2)\n",
    )
    .unwrap();
    let conf = deploy_file("haproxy.cfg")
        .replace("lua-prepend-path /usr/share/haproxy/?/http.lua\n", "")
        .replace("/etc/haproxy/auth-request.lua", &stub.display().to_string());
    std::fs::write(dir.join("haproxy.cfg"), conf).unwrap();
    let out = std::process::Command::new(haproxy)
        .arg("-c")
        .arg("-f")
        .arg(dir.join("haproxy.cfg"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Issue 21, item 3, against the real thing: Debian's nginx serving files
/// behind the gateway resolves dot segments and escapes itself (a direct
/// `GET /open/../admin/secret` gets the secret file); through the gateway,
/// with `--public GET:/open/*`, every such form is a 400 and the secret never
/// comes back. nginx listens on a socket the test bound on 127.0.0.1:0 and
/// hands over (nginx's `NGINX` inherited-sockets variable): no port guessed.
#[tokio::test]
async fn nginx_file_server_behind_the_gateway_serves_no_secret() {
    let Some(nginx) = binary("nginx") else {
        return;
    };
    let dir = TempDir::new("gw-nginx-files");
    let www = dir.join("www");
    std::fs::create_dir_all(www.join("open")).unwrap();
    std::fs::create_dir_all(www.join("admin")).unwrap();
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    std::fs::write(www.join("open/index.html"), "open file\n").unwrap();
    std::fs::write(www.join("admin/secret"), "THE SECRET\n").unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let files = listener.local_addr().unwrap();
    // Kept open across exec, for nginx to take over.
    rustix::io::fcntl_setfd(&listener, rustix::io::FdFlags::empty()).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
    let conf = format!(
        "events {{}}\nhttp {{\n  access_log off;\n  server {{\n    listen {files};\n    root {};\n  }}\n}}\n",
        www.display()
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let mut child = Command::new(nginx)
        .arg("-p")
        .arg(&*dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-g")
        // nginx takes inherited sockets over in master-process mode only.
        .arg(format!(
            "daemon off; worker_processes 1; pid {}; error_log stderr;",
            dir.join("nginx.pid").display()
        ))
        .env("NGINX", format!("{fd};"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // SIGTERM, not SIGKILL: the master then stops its worker too.
    let _stop = Terminate(child.id());
    drop(listener);
    let direct = |target: &'static str| async move {
        let mut s = tokio::net::TcpStream::connect(files).await.ok()?;
        let req = format!("GET {target} HTTP/1.1\r\nHost: files\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out))
            .await
            .ok()?
            .ok()?;
        Some(String::from_utf8_lossy(&out).into_owned())
    };
    let up = wait_until(Duration::from_secs(20), || async {
        direct("/open/index.html")
            .await
            .is_some_and(|r| r.contains("open file"))
    })
    .await;
    if !up {
        let _ = child.start_kill();
        let out = child.wait_with_output().await.unwrap();
        panic!(
            "nginx did not serve: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Its output is not read: a pipe nobody drains must not fill up.
    drop(child.stderr.take());
    // The upstream resolves what it is given: this is what a bypass gets.
    let leaked = direct("/open/../admin/secret").await.unwrap();
    assert!(
        leaked.contains("THE SECRET"),
        "nginx did not resolve: {leaked}"
    );

    let config = AppConfig {
        gateway: Some(tokengate::gateway::GatewayConfig {
            public: vec![tokengate::gateway::parse_public("GET:/open/*").unwrap()],
            ..tokengate::gateway::GatewayConfig::new(
                tokengate::gateway::Upstream::parse(&format!("http://{files}")).unwrap(),
            )
        }),
        ..AppConfig::default()
    };
    let gate = TestServer::with(keys_from(KEYS), config, Limits::default()).await;
    let got = crate::support::raw(
        gate.addr,
        b"GET /open/index.html HTTP/1.1\r\nHost: files\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(got.contains("open file"), "{got}");
    for target in [
        "/open/../admin/secret",
        "/open/%2e%2e/admin/secret",
        "/open/.%2e/admin/secret",
        "/open/..%2fadmin%2fsecret",
        "/open/%2e%2e%2fadmin%2fsecret",
        "/open/./../admin/secret",
        "/open/..;/admin/secret",
        "/open/%2e./admin/secret",
    ] {
        for key in ["", "X-Token: reports-only-key\r\n"] {
            let req =
                format!("GET {target} HTTP/1.1\r\nHost: files\r\n{key}Connection: close\r\n\r\n");
            let got = crate::support::raw(gate.addr, req.as_bytes()).await;
            assert!(!got.contains("THE SECRET"), "{target}: {got}");
            assert_eq!(statuses(&got), [400], "{target}: {got}");
        }
    }
}

/// Sends SIGTERM to a process when dropped.
struct Terminate(Option<u32>);

impl Drop for Terminate {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    }
}
