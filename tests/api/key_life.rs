//! The key's life: `tokengate keygen` and `tokengate keys`, keys a secret
//! scanner finds, a checksum that refuses typos and guesses before hashing,
//! canary keys, the last-use metric.

use std::process::Command;

use http::{Method, StatusCode};

use crate::support::{BIN, Proto, Spawned, TempDir, TestServer, keys_from, send};

fn keygen(args: &[&str]) -> std::process::Output {
    Command::new(BIN).arg("keygen").args(args).output().unwrap()
}

/// `tokengate keygen` with `args`: the key and its key-file line.
fn generated(args: &[&str]) -> (String, String) {
    let out = keygen(args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    let key = lines.next().unwrap().to_owned();
    let line = lines.next().unwrap().to_owned();
    assert!(lines.next().is_none(), "two lines: {text}");
    (key, line)
}

/// The regular expression of each scanner's file in `deploy/secret-scanning/`.
fn scanner_patterns() -> Vec<(&'static str, regex::Regex)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/secret-scanning/");
    let read = |name: &str| std::fs::read_to_string(format!("{dir}{name}")).unwrap();
    let gitleaks = read("gitleaks.toml");
    let gitleaks = gitleaks
        .split("regex = '''")
        .nth(1)
        .and_then(|r| r.split("'''").next())
        .unwrap()
        .to_owned();
    let trufflehog = read("trufflehog.yaml");
    let trufflehog = trufflehog
        .split("key: '")
        .nth(1)
        .and_then(|r| r.split('\'').next())
        .unwrap()
        .to_owned();
    let github = read("github-custom-pattern.txt");
    let field = |name: &str| {
        github
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .trim()
            .to_owned()
    };
    let github = format!(
        "(?:{})({})(?:{})",
        field("before-secret:"),
        field("secret-format:"),
        field("after-secret:")
    );
    [
        ("gitleaks", gitleaks),
        ("trufflehog", trufflehog),
        ("github", github),
    ]
    .into_iter()
    .map(|(name, r)| (name, regex::Regex::new(&r).unwrap()))
    .collect()
}

#[test]
fn secret_scanners_find_generated_keys_and_not_lookalikes() {
    let patterns = scanner_patterns();
    for _ in 0..20 {
        let (key, _) = generated(&[]);
        for (name, re) in &patterns {
            for text in [
                key.clone(),
                format!("TOKEN={key}\n"),
                format!("\"x-token: {key}\""),
            ] {
                let found = re
                    .captures(&text)
                    .and_then(|c| c.get(1))
                    .map(|m| m.as_str());
                assert_eq!(found, Some(key.as_str()), "{name} in {text:?}");
            }
            let short = &key[..key.len() - 1];
            let long = format!("{key}x");
            let prefix = format!("tx_{}", &key[3..]);
            let dash = format!("tg-{}", &key[3..]);
            let glued = format!("abc{key}");
            for lookalike in [short, &long, &prefix, &dash, &glued] {
                assert!(!re.is_match(lookalike), "{name} matched {lookalike:?}");
            }
        }
    }
}

#[tokio::test]
async fn a_generated_key_works_a_typo_is_a_wrong_key_and_keys_lists_it() {
    let (key, line) = generated(&["--label", "ci", "--rate", "10/s", "--owner", "acme"]);
    assert!(key.starts_with("tg_") && key.len() == 41, "{key}");
    assert!(!line.contains(&key), "the line never holds the key");
    assert!(
        line.starts_with("sha256:") && line.ends_with(" ci owner=acme rate=10/s"),
        "{line}"
    );
    let (canary, canary_line) = generated(&["--label", "decoy", "--canary"]);
    let dir = TempDir::new("key-life");
    let file = dir.join("keys");
    std::fs::write(
        &file,
        format!("{line}\n{canary_line}\nmetrics-key-000001 metrics\n"),
    )
    .unwrap();
    let file = file.to_str().unwrap();

    let listed = Command::new(BIN)
        .args(["keys", "--token-file", file])
        .output()
        .unwrap();
    assert!(listed.status.success());
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert_eq!(
        listed,
        "label\towner\tscopes\tlimits\texpires\tflags\n\
         ci\tacme\t-\trate=10/s burst=10\t-\t-\n\
         decoy\tdecoy\t-\t-\t-\tcanary\n\
         metrics\tmetrics\t-\t-\t-\t-\n"
    );

    let server = Spawned::start(&["--token-file", file], &[]).await;
    let get = |token: String| async move {
        send(
            Proto::H1,
            server.addr,
            Method::GET,
            "/protected",
            &[("x-token", &token)],
        )
        .await
    };
    assert_eq!(get(key.clone()).await.status, StatusCode::OK);
    // One character changed: the checksum fails, refused as any wrong key.
    let mut typo = key.clone().into_bytes();
    typo[5] = if typo[5] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo).unwrap();
    let wrong = get("wrong-key-but-long-enough".to_owned()).await;
    for refused in [get(typo).await, get(canary.clone()).await] {
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
        assert_eq!(refused.text(), wrong.text());
        let mut a: Vec<_> = refused
            .headers
            .iter()
            .filter(|(k, _)| *k != "date")
            .collect();
        let mut b: Vec<_> = wrong.headers.iter().filter(|(k, _)| *k != "date").collect();
        a.sort_by_key(|(k, _)| k.as_str());
        b.sort_by_key(|(k, _)| k.as_str());
        assert_eq!(a, b, "byte for byte a wrong key's answer");
    }
    server.wait_for_log("canary key used").await;
    let log = server.log();
    let warned = log.lines().find(|l| l.contains("canary key used")).unwrap();
    assert!(
        warned.contains("key=\"decoy\"") || warned.contains("key=decoy"),
        "{warned}"
    );
    assert!(
        warned.contains("path=/protected") && warned.contains("client=127.0.0.1"),
        "{warned}"
    );
    assert!(!log.contains(&canary), "the canary's token is never logged");
    let metrics = get_metrics(&server).await;
    for series in [
        r#"tokengate_canary_hits_total{key="decoy"} 1"#,
        r#"tokengate_auth_total{outcome="invalid"} 3"#,
    ] {
        assert!(metrics.contains(series), "{series} in {metrics}");
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let used: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"tokengate_key_last_used_timestamp_seconds{key="ci"} "#))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        used <= now && now - used < 120,
        "last used {used}, now {now}"
    );
}

async fn get_metrics(server: &Spawned) -> String {
    send(
        Proto::H1,
        server.addr,
        Method::GET,
        "/metrics",
        &[("x-token", "metrics-key-000001")],
    )
    .await
    .text()
    .to_owned()
}

#[test]
fn keygen_refuses_what_the_key_file_refuses_with_its_messages() {
    for (args, message) in [
        (&["--rate", "fast"][..], "a rate is N/s"),
        (&["--burst", "5"][..], "burst= needs rate="),
        (&["--scope", "GET:reports"][..], "scope=GET:reports"),
        (&["--label", "two words"][..], "label"),
        (&["--expires", "tomorrow"][..], "RFC 3339"),
    ] {
        let out = keygen(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(message), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "no key printed: {args:?}");
    }
}

/// `expires=` as the key file spells it, `days` from now.
fn in_days(days: u64) -> String {
    let at = std::time::SystemTime::now() + std::time::Duration::from_secs(days * 86_400);
    humantime::format_rfc3339_seconds(at).to_string()
}

#[tokio::test]
async fn a_key_expiring_soon_gets_sunset_on_every_answer_that_admits_it() {
    use tokengate::{AppConfig, Limits};
    let soon = in_days(3);
    let keys = format!(
        "soon-key-00000001 soon expires={soon}\nlater-key-0000001 later expires={}\nplain-key-0000001 plain\n",
        in_days(30)
    );
    let expected = httpdate::fmt_http_date(humantime::parse_rfc3339(&soon).unwrap());
    let server = TestServer::with(keys_from(&keys), AppConfig::default(), Limits::default()).await;
    let get = |token: &'static str, path: &'static str, extra: (&'static str, &'static str)| {
        let addr = server.addr;
        async move {
            send(
                Proto::H1,
                addr,
                Method::GET,
                path,
                &[("x-token", token), extra],
            )
            .await
        }
    };
    let none = ("x-none", "-");
    let r = get("soon-key-00000001", "/protected", none).await;
    assert_eq!(r.header("sunset"), Some(expected.as_str()));
    let r = get(
        "soon-key-00000001",
        "/auth/verify",
        ("x-original-uri", "/x"),
    )
    .await;
    assert_eq!(
        (r.status, r.header("sunset")),
        (StatusCode::OK, Some(expected.as_str()))
    );
    for token in ["later-key-0000001", "plain-key-0000001"] {
        assert_eq!(
            get(token, "/protected", none).await.header("sunset"),
            None,
            "{token}"
        );
    }
    // A refusal does not carry it.
    let r = get("soon-key-00000001", "/metrics", none).await;
    assert_eq!(
        r.header("sunset"),
        Some(expected.as_str()),
        "/metrics admits the key too"
    );
    let r = send(
        Proto::H1,
        server.addr,
        Method::GET,
        "/protected",
        &[("x-token", "nope-nope-nope-nope")],
    )
    .await;
    assert_eq!(r.header("sunset"), None);

    // --expiry-notice 0: none.
    let off = TestServer::with(
        keys_from(&keys),
        AppConfig {
            expiry_notice: std::time::Duration::ZERO,
            ..AppConfig::default()
        },
        Limits::default(),
    )
    .await;
    let r = send(
        Proto::H1,
        off.addr,
        Method::GET,
        "/protected",
        &[("x-token", "soon-key-00000001")],
    )
    .await;
    assert_eq!(r.header("sunset"), None);

    // Gateway mode: on the upstream's answer.
    let upstream = crate::limits::forging_upstream().await;
    let gateway = TestServer::with(
        keys_from(&keys),
        crate::gateway::gateway_config(upstream, std::time::Duration::from_secs(30)),
        Limits::default(),
    )
    .await;
    let r = send(
        Proto::H2,
        gateway.addr,
        Method::GET,
        "/orders",
        &[("x-token", "soon-key-00000001")],
    )
    .await;
    assert_eq!((r.status, r.text()), (StatusCode::OK, "upstream"));
    assert_eq!(r.header("sunset"), Some(expected.as_str()));
}

/// One key used from many networks: `tokengate_key_client_networks`
/// estimates them (the client after `--trusted-proxies`), hosts of one /24
/// counting once.
#[tokio::test]
async fn the_networks_a_key_is_used_from_are_counted() {
    use tokengate::{AppConfig, Limits, TrustedProxies};
    let app = AppConfig {
        trusted_proxies: TrustedProxies::parse("127.0.0.1").unwrap(),
        ..AppConfig::default()
    };
    let keys = "spread-key-000001 spread\nquiet-key-0000001 quiet\nmetrics-key-000001 metrics\n";
    let server = TestServer::with(keys_from(keys), app, Limits::default()).await;
    for network in 0..60u32 {
        for host in [1, 2, 3] {
            let client = format!("198.{}.{}.{host}", 18 + network / 256, network % 256);
            let r = send(
                Proto::H1,
                server.addr,
                Method::GET,
                "/protected",
                &[
                    ("x-token", "spread-key-000001"),
                    ("x-forwarded-for", &client),
                ],
            )
            .await;
            assert_eq!(r.status, StatusCode::OK);
        }
    }
    let r = send(
        Proto::H1,
        server.addr,
        Method::GET,
        "/protected",
        &[("x-token", "quiet-key-0000001")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let metrics = send(
        Proto::H1,
        server.addr,
        Method::GET,
        "/metrics",
        &[("x-token", "metrics-key-000001")],
    )
    .await;
    let value = |key: &str| -> i64 {
        let prefix = format!("tokengate_key_client_networks{{key=\"{key}\"}} ");
        metrics
            .text()
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("no {prefix} in {}", metrics.text()))
            .parse()
            .unwrap()
    };
    let spread = value("spread");
    assert!(
        (54..=66).contains(&spread),
        "60 networks estimated as {spread}"
    );
    assert_eq!(value("quiet"), 1);
}
