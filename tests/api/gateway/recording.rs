//! Proxied requests in the metrics and the access log (the binary).

use super::*;

/// The binary in gateway mode with `--access-log` (and `extra` flags) in
/// front of a recording upstream; its address.
async fn logging_gateway(extra: &[&str]) -> (Upstream_, tokio::process::Child, SocketAddr) {
    let up = Upstream_::default();
    let addr = up.start().await;
    let url = format!("http://{addr}");
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        &url,
        "--access-log",
    ];
    args.extend_from_slice(extra);
    let mut child = crate::support::command(&args, &[("TOKENGATE_TOKEN", "full-access-key-1")])
        .spawn()
        .unwrap();
    let (gw, _lines) = crate::support::wait_for_address(&mut child).await;
    (up, child, gw)
}

/// Proxied requests are counted under `route="upstream"` and get an
/// access-log line (the binary, with `--access-log`).
#[tokio::test]
async fn proxied_requests_are_counted_and_logged() {
    let (_up, child, gw) = logging_gateway(&[]).await;
    let r = get_with_key(gw, "/orders?secret-query=1").await;
    assert_eq!(r.status, StatusCode::OK);
    let m = get_with_key(gw, "/metrics").await;
    assert!(
        m.text()
            .contains(r#"tokengate_requests_total{route="upstream",status="200"} 1"#),
        "{}",
        m.text()
    );
    assert!(
        m.text()
            .contains(r#"tokengate_upstream_requests_total{status="200"} 1"#)
    );
    let out = crate::support::terminate(child).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.contains("upstream=true"))
        .unwrap_or_else(|| panic!("no access line for the proxied request:\n{stdout}"));
    assert!(
        line.contains("path=/orders") && line.contains("status=200") && line.contains("key=env"),
        "{line}"
    );
    assert!(
        !line.contains("secret-query") && !line.contains("full-access-key-1"),
        "{line}"
    );
}

/// One access-log schema: proxied lines, tokengate's own and the gateway's
/// denials carry the same fields, typed the same; `bytes` is a number (it was
/// the string `"4155"` on proxied lines), absent only when a streamed body
/// has no length.
#[tokio::test]
async fn access_log_bytes_is_a_number_on_every_line() {
    let (up, child, gw) = logging_gateway(&["--log-format", "json"]).await;
    assert_eq!(get_with_key(gw, "/orders").await.status, StatusCode::OK);
    assert_eq!(get_with_key(gw, "/healthz").await.status, StatusCode::OK);
    let denied = crate::support::get(Proto::H1, gw, "/denied", &[]).await;
    assert_eq!(denied.status, StatusCode::UNAUTHORIZED);
    assert_eq!(up.seen_targets(), ["/orders"]);
    let out = crate::support::terminate(child).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let fields_of = |path: &str| {
        lines
            .iter()
            .find(|l| l["fields"]["path"] == path)
            .map(|l| l["fields"].as_object().unwrap().clone())
            .unwrap_or_else(|| panic!("no line for {path}:\n{stdout}"))
    };
    let proxied = fields_of("/orders");
    let own = fields_of("/healthz");
    let denied = fields_of("/denied");
    assert!(own["bytes"].is_u64(), "{stdout}");
    assert!(denied["bytes"].is_u64(), "{stdout}");
    assert_eq!(denied["status"], 401, "{stdout}");
    // The recording upstream streams its body without a length.
    assert!(proxied.get("bytes").is_none_or(|b| b.is_u64()), "{stdout}");
    let names = |f: &serde_json::Map<String, serde_json::Value>| {
        let mut names: Vec<String> = f.keys().filter(|k| *k != "bytes").cloned().collect();
        names.sort();
        names
    };
    for other in [&proxied, &denied] {
        assert_eq!(names(other), names(&own), "{stdout}");
        for (name, value) in other {
            let same_type = std::mem::discriminant(value) == std::mem::discriminant(&own[name]);
            assert!(same_type, "{name} is typed differently: {stdout}");
        }
    }
}
