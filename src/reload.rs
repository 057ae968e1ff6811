//! Key rotation without restart. SIGHUP re-reads the key file; with
//! `--watch-token-file` its directory is watched too, which also catches the
//! way Kubernetes updates a mounted Secret (the `..data` symlink is swapped).
//!
//! [`install`] sets up the SIGHUP handler and the watch synchronously, before
//! the server is announced, then re-reads the key file once: a change made
//! between start-up and the watch is not lost, and a SIGHUP that arrives as
//! soon as the port accepts never meets the default action (which would end
//! the process).
//!
//! A new key set is parsed and validated in full, then swapped in atomically
//! ([`App::replace_keys`]); requests in flight finish with the set they
//! started with. A file that fails validation leaves the old set in place,
//! logs an error naming the file and line (never a secret), and is counted in
//! `tokengate_key_reloads_total{result="failure"}`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use crate::app::App;
use crate::keys::{KeyError, KeySources};
use crate::tls::Tls;

/// Reloads the keys once; on failure the previous keys stay in place.
pub fn reload(app: &App, sources: &KeySources) -> Result<usize, KeyError> {
    match sources.load() {
        Ok((keys, _demo)) => {
            let n = keys.len();
            keys.warn_expiring();
            app.replace_keys(keys);
            app.metrics().reloaded(true);
            info!(keys = ?app.key_labels(), "keys reloaded");
            Ok(n)
        }
        Err(e) => {
            app.metrics().reloaded(false);
            error!("key reload failed, keeping the previous keys: {e}");
            Err(e)
        }
    }
}

/// Installs the SIGHUP handler and, with `watch`, the key-file watch — both
/// in place when this returns — re-reads the key file once, and spawns the
/// task that reloads the keys (and on SIGHUP the TLS certificate and key) on
/// either, for as long as the runtime runs. Must be called inside a Tokio
/// runtime.
pub fn install(app: Arc<App>, sources: KeySources, watch: bool, tls: Option<Arc<Tls>>) {
    let (tx, mut rx) = mpsc::channel::<()>(1);

    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::hangup()) {
            Ok(mut hup) => {
                let tx = tx.clone();
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        info!("SIGHUP received: reloading keys");
                        let _ = tx.try_send(());
                    }
                });
            }
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGHUP; keys reload only with --watch-token-file")
            }
        }
    }

    let watcher = match (&sources.token_file, watch) {
        (Some(path), true) => watch_file(path, tx.clone()),
        _ => None,
    };
    drop(tx);

    // The file may have changed since the configuration was read.
    if sources.token_file.is_some() {
        match sources.load() {
            Ok((keys, _demo)) => {
                app.replace_keys(keys);
                debug!("key file re-read after the watch was installed");
            }
            Err(e) => error!("key file re-read failed, keeping the keys loaded at start-up: {e}"),
        }
    }

    tokio::spawn(async move {
        // Kept alive for as long as this task runs.
        let _watcher = watcher;
        while rx.recv().await.is_some() {
            // Settle: a writer or a Secret update produces several events.
            tokio::time::sleep(Duration::from_millis(100)).await;
            while rx.try_recv().is_ok() {}
            let _ = reload(&app, &sources);
            if let Some(tls) = &tls {
                match tls.reload() {
                    Ok(()) => info!("TLS certificate and key reloaded"),
                    Err(e) => error!("TLS reload failed, keeping the previous certificate: {e}"),
                }
            }
        }
    });
}

fn watch_file(path: &std::path::Path, tx: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            let _ = tx.try_send(());
        }
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            warn!(error = %e, "cannot watch the token file; reload with SIGHUP");
            return None;
        }
    };
    // The directory, not the file: a symlink swap replaces the file itself.
    if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
        warn!(error = %e, dir = %dir.display(), "cannot watch the token file's directory; reload with SIGHUP");
        return None;
    }
    info!(dir = %dir.display(), "watching the token file for changes");
    Some(watcher)
}
