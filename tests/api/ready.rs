//! Ready means ready: the signal handlers and the key-file watch are in place
//! before the server announces its port, and a second stop signal ends the
//! drain at once.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::h2abuse::{HEADERS, SETTINGS, frame, get_block, read_until};
use crate::support::{Spawned, TempDir, raw, request, statuses, wait_until};

async fn status_with(addr: std::net::SocketAddr, token: &str) -> u16 {
    let got = raw(addr, &request("GET", "/protected", Some(token), "")).await;
    statuses(&got).first().copied().unwrap_or(0)
}

/// SIGHUP the moment the port is announced: with the handler installed
/// after the announcement, the default action would end the process.
#[tokio::test]
async fn sighup_at_once_never_kills_the_server() {
    const RUNS: usize = 50;
    const AT_ONCE: usize = 5;
    for batch in 0..RUNS / AT_ONCE {
        let mut runs = Vec::new();
        for _ in 0..AT_ONCE {
            runs.push(tokio::spawn(async move {
                let mut server = Spawned::start(&[], &[]).await;
                server.signal("-HUP");
                let got = raw(server.addr, &request("GET", "/healthz", None, "")).await;
                let alive = server.child.try_wait().unwrap().is_none();
                (statuses(&got), alive, server.log())
            }));
        }
        for run in runs {
            let (got, alive, log) = run.await.unwrap();
            assert!(
                alive,
                "batch {batch}: SIGHUP killed the server; log:\n{log}"
            );
            assert_eq!(got, [200], "batch {batch}; log:\n{log}");
        }
    }
}

/// A key file replaced the moment the port is announced is honoured.
#[tokio::test]
async fn key_file_changed_at_once_is_honoured() {
    let dir = TempDir::new("ready-watch");
    let file = dir.join("keys");
    std::fs::write(&file, "old-key-0000000001\n").unwrap();
    let server = Spawned::start(
        &["--token-file", file.to_str().unwrap(), "--watch-token-file"],
        &[],
    )
    .await;
    // Atomic replace, as configuration tools do it.
    let tmp = dir.join("keys.tmp");
    std::fs::write(&tmp, "new-key-0000000002\n").unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    let addr = server.addr;
    let honoured = wait_until(Duration::from_secs(10), || async move {
        status_with(addr, "new-key-0000000002").await == 200
    })
    .await;
    assert!(
        honoured,
        "the new key was never honoured:\n{}",
        server.log()
    );
    assert_eq!(status_with(addr, "old-key-0000000001").await, 401);
}

/// A second SIGINT during the drain ends it at once, naming what it dropped.
#[tokio::test]
async fn second_signal_during_the_drain_exits_at_once() {
    let mut server = Spawned::start(&["--shutdown-timeout", "120s"], &[]).await;
    // An HTTP/2 client that grants no flow-control window: the server can
    // send the response head but not its body, so the stream stays open and
    // the drain must wait for it.
    let mut h2 = TcpStream::connect(server.addr).await.unwrap();
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // SETTINGS_INITIAL_WINDOW_SIZE (0x4) = 0.
    hello.extend(frame(SETTINGS, 0, 0, &[0, 4, 0, 0, 0, 0]));
    hello.extend(frame(HEADERS, 0x1 | 0x4, 1, &get_block()));
    h2.write_all(&hello).await.unwrap();
    // The response head.
    read_until(&mut h2, |f| f.kind == HEADERS && f.stream == 1).await;

    server.signal("-INT");
    server.wait_for_log("draining connections").await;
    server.signal("-INT");
    // `wait` allows 30 s, far less than the 120 s drain deadline.
    let status = server.wait().await;
    assert!(!status.success(), "{status:?}: {}", server.log());
    let log = server.log_after_exit().await;
    assert!(log.contains("second stop signal"), "{log}");
    assert!(log.contains("dropped_connections=1"), "{log}");
    drop(h2);
}
