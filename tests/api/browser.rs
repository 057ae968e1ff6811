//! CORS in a real browser: headless Chromium (Debian's `chromium`) loads a
//! page served here from another origin, and the page's `fetch()` calls
//! tokengate with `X-Token`, with Bearer, and without a key. With the page's
//! origin allowed it reads every answer (the 401's `www-authenticate` too);
//! otherwise the browser blocks them all. The same through gateway mode.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, header::CONTENT_TYPE};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokengate::config::CorsConfig;
use tokengate::{AppConfig, Limits};
use tokio::net::TcpListener;

use crate::support::{TempDir, TestServer, keys_from};

const KEY: &str = "browser-key-000001";

fn chromium() -> Option<&'static str> {
    let found = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is not installed: .ci/run installs it"
        );
        eprintln!("skipped: apt-get install chromium (CI installs it)");
    }
    found
}

/// Serves one page on 127.0.0.1:0 (the page's origin): its script fetches
/// the URL in its own query string (`?http://host:port/path`) three ways
/// and writes what it could read into the page.
async fn page() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let html = Bytes::from(format!(
        r#"<!doctype html><html><body><pre id="out">pending</pre><script>
(async () => {{
  const target = decodeURIComponent(location.search.slice(1));
  const tries = [["xtoken", {{headers: {{"X-Token": "{KEY}"}}}}],
                 ["bearer", {{headers: {{"Authorization": "Bearer {KEY}"}}}}],
                 ["none", {{}}]];
  const lines = [];
  for (const [name, init] of tries) {{
    try {{
      const r = await fetch(target, init);
      lines.push(name + "=" + r.status + " " + (await r.text()) + " " + (r.headers.get("www-authenticate") || "-"));
    }} catch (e) {{
      lines.push(name + "=blocked");
    }}
  }}
  document.getElementById("out").textContent = "done\n" + lines.join("\n");
}})();
</script></body></html>"#
    ));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let html = html.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req| {
                    let html = html.clone();
                    async move {
                        let mut r = Response::new(Full::new(html));
                        r.headers_mut()
                            .insert(CONTENT_TYPE, "text/html".parse().unwrap());
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// Loads `url` in headless Chromium and returns what the page wrote, once
/// it wrote it (bounded).
async fn run_page(binary: &str, url: &str) -> String {
    // A profile per run: Chromium refuses a profile another instance holds.
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let profile = TempDir::new(&format!("chromium-profile-{run}"));
    let out = tokio::process::Command::new(binary)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=30000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.0.display()))
        .arg(url)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), out)
        .await
        .expect("chromium finished within 2 minutes")
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    let text = dom
        .split("<pre id=\"out\">")
        .nth(1)
        .and_then(|rest| rest.split("</pre>").next())
        .unwrap_or_else(|| {
            panic!(
                "no result in the page:\n{dom}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
        .to_owned();
    assert!(
        text.starts_with("done"),
        "the script did not finish: {text}"
    );
    text
}

fn allowing(origin: SocketAddr) -> AppConfig {
    AppConfig {
        cors: Some(
            CorsConfig::new(&[format!("http://{origin}")], Duration::from_secs(600)).unwrap(),
        ),
        ..AppConfig::default()
    }
}

/// What the page read of `target` (a URL of another origin).
async fn fetched(binary: &str, page: SocketAddr, target: &str) -> Vec<String> {
    let text = run_page(binary, &format!("http://{page}/?{target}")).await;
    text.lines().skip(1).map(str::to_owned).collect()
}

const PROTECTED: &str = r#"{"message":"You have access to the protected route!"}"#;

#[tokio::test]
async fn a_page_of_an_allowed_origin_reads_every_answer_another_is_blocked() {
    let Some(binary) = chromium() else {
        return;
    };
    let keys = format!("{KEY} browser\n");
    let page = page().await;
    let allowed = TestServer::with(keys_from(&keys), allowing(page), Limits::default()).await;
    let read = fetched(binary, page, &format!("http://{}/protected", allowed.addr)).await;
    assert_eq!(
        read,
        [
            format!("xtoken=200 {PROTECTED} -"),
            format!("bearer=200 {PROTECTED} -"),
            r#"none=401 {"detail":"Unauthorized"} Bearer realm="tokengate""#.to_owned(),
        ]
    );
    // Another origin allowed, not the page's: the browser blocks every call.
    let other = TestServer::with(
        keys_from(&keys),
        AppConfig {
            cors: Some(
                CorsConfig::new(&["http://127.0.0.1:1".to_owned()], Duration::from_secs(600))
                    .unwrap(),
            ),
            ..AppConfig::default()
        },
        Limits::default(),
    )
    .await;
    let read = fetched(binary, page, &format!("http://{}/protected", other.addr)).await;
    assert_eq!(read, ["xtoken=blocked", "bearer=blocked", "none=blocked"]);
    // Without --cors-origin: blocked too (tokengate as before).
    let plain = TestServer::with(keys_from(&keys), AppConfig::default(), Limits::default()).await;
    let read = fetched(binary, page, &format!("http://{}/protected", plain.addr)).await;
    assert_eq!(read, ["xtoken=blocked", "bearer=blocked", "none=blocked"]);
}

#[tokio::test]
async fn through_the_gateway_the_page_reads_the_upstreams_answer() {
    let Some(binary) = chromium() else {
        return;
    };
    let keys = format!("{KEY} browser\n");
    let page = page().await;
    let upstream = crate::limits::forging_upstream().await;
    let config = AppConfig {
        cors: allowing(page).cors,
        ..crate::gateway::gateway_config(upstream, Duration::from_secs(30))
    };
    let gateway = TestServer::with(keys_from(&keys), config, Limits::default()).await;
    let read = fetched(binary, page, &format!("http://{}/orders/7", gateway.addr)).await;
    assert_eq!(
        read,
        [
            "xtoken=200 upstream -",
            "bearer=200 upstream -",
            r#"none=401 {"detail":"Unauthorized"} Bearer realm="tokengate""#,
        ]
    );
}
