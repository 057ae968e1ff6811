//! The `tokengate` binary: configuration → logging → signal handlers and key
//! watch installed → bind → announce → serve → exit code.

use std::io::{IsTerminal, Read};
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tokengate::ROUTES;
use tokengate::config::{Args, Command, Config, LogFormat};
use tokengate::keys::{MIN_TOKEN_LEN, TOKEN_ENV, hash_token_line};
use tokengate::shutdown::Signals;
use tokengate::tls::Tls;
use tokengate::{App, Server, Stopped, reload};
use tracing::{error, info, warn};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

fn main() -> ExitCode {
    let args = Args::parse();
    match &args.command {
        Some(Command::HashToken) => return hash_token(),
        Some(Command::Keygen(attributes)) => return keygen(attributes),
        Some(Command::Keys { token_file }) => return list_keys(token_file),
        None => {}
    }
    let json = args.log_format == LogFormat::Json;
    let access = init_logging(json, args.access_log);
    let config = match Config::from_args(&args, std::env::var_os(TOKEN_ENV)) {
        Ok(config) => config,
        Err(e) => {
            return start_up_error(e);
        }
    };
    if config.sources.env_key.is_some()
        && std::env::var_os(TOKEN_ENV).is_some_and(|t| t.len() < MIN_TOKEN_LEN)
    {
        warn!(
            "{TOKEN_ENV} is shorter than {MIN_TOKEN_LEN} characters: a short token can be guessed; use a longer one"
        );
    }
    let workers = args.workers.map_or_else(
        || std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
        usize::from,
    );
    let mut builder = if workers == 1 {
        // One thread does it all: the scheduler without work stealing is
        // cheaper per task wake-up, and no second thread (the multi-thread
        // runtime's main thread runs the accept loop apart from its worker)
        // competes for the one CPU.
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(workers);
        builder
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tokengate: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(run(
        config,
        workers,
        access.as_ref().map(|(_, dropped)| dropped.clone()),
    ));
    // Flushes the access log's writer thread.
    drop(access);
    code
}

async fn run(
    config: Config,
    workers: usize,
    access_dropped: Option<tracing_appender::non_blocking::ErrorCounter>,
) -> ExitCode {
    let dropped = access_dropped.map(|counter| {
        Arc::new(move || counter.dropped_lines() as u64) as tokengate::DroppedSource
    });
    let app = Arc::new(App::build(
        ROUTES,
        config.keys.clone(),
        &config.app,
        dropped,
    ));
    let tls = match &config.tls {
        None => None,
        Some(files) => match Tls::new(files.clone()) {
            Ok(tls) => Some(Arc::new(tls)),
            Err(e) => {
                return start_up_error(e);
            }
        },
    };
    // Ready means ready: every handler and the key-file watch are in place
    // before the port is bound and announced.
    let signals = match Signals::install() {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("tokengate: cannot install the SIGINT/SIGTERM handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    reload::install(
        app.clone(),
        config.sources.clone(),
        config.watch_token_file,
        tls.clone(),
    );
    let (listener, origin) = match listener(&config) {
        Ok(l) => l,
        Err(e) => {
            return start_up_error(format_args!("--listen {}: cannot bind: {e}", config.listen));
        }
    };
    let local = listener.local_addr().unwrap_or(config.listen);
    let admin = match config.admin_listen {
        None => None,
        Some(addr) => match std::net::TcpListener::bind(addr)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .and_then(tokio::net::TcpListener::from_std)
        {
            Ok(l) => Some(l),
            Err(e) => {
                return start_up_error(format_args!("--admin-listen {addr}: cannot bind: {e}"));
            }
        },
    };
    config.keys.warn_expiring();
    if config.demo_key && !tokengate::config::demo_allowed(local, config.app.gateway.is_some()) {
        // An inherited socket (systemd) that is not loopback.
        return start_up_error(format_args!(
            "no key configured and {local} is not loopback: set TOKENGATE_TOKEN or --token-file (the demo key is used only on a loopback address)"
        ));
    }
    if config.demo_key {
        warn!(
            "no key configured (TOKENGATE_TOKEN, --token-file): using the demo key 'mysecrettoken'; do not use it in production"
        );
    }
    let (scheme, protocols) = match tls {
        Some(_) => ("https", "TLS with ALPN h2, http/1.1"),
        None => ("http", "http/1.1, h2c"),
    };
    if let Some(gateway) = &config.app.gateway {
        info!(upstream = %gateway.upstream, "gateway mode: requests that are not tokengate's own go upstream");
    }
    if let Some(admin) = admin {
        let admin_addr = admin
            .local_addr()
            .map_or_else(|_| "?".to_owned(), |a| a.to_string());
        info!(
            "admin endpoints on http://{admin_addr} (health, readiness, metrics, forward auth, OpenAPI)"
        );
        let server = Server::new(app.clone(), config.limits.clone())
            .admin()
            .force_stop_on(signals.second());
        tokio::spawn(server.serve(admin, signals.first()));
    }
    info!(
        address = %local,
        socket = origin,
        protocols,
        workers,
        keys = ?app.key_labels(),
        "tokengate listening on {scheme}://{local}"
    );
    let stopped = Server::new(app, config.limits.clone())
        .tls(tls)
        .force_stop_on(signals.second())
        .serve(listener, signals.first())
        .await;
    match stopped {
        Stopped::Drained | Stopped::DeadlineReached(_) => ExitCode::SUCCESS,
        Stopped::Forced(_) => ExitCode::FAILURE,
    }
}

/// The listening socket: inherited from systemd (`LISTEN_FDS`), bound with
/// `SO_REUSEPORT` (`--reuse-port`), or bound plainly.
fn listener(config: &Config) -> std::io::Result<(tokio::net::TcpListener, &'static str)> {
    let mut fds = listenfd::ListenFd::from_env();
    if let Some(std_listener) = fds.take_tcp_listener(0)? {
        std_listener.set_nonblocking(true)?;
        return Ok((
            tokio::net::TcpListener::from_std(std_listener)?,
            "inherited (LISTEN_FDS)",
        ));
    }
    if config.reuse_port {
        use socket2::{Domain, Protocol, Socket, Type};
        let socket = Socket::new(
            Domain::for_address(config.listen),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&config.listen.into())?;
        socket.listen(1024)?;
        let std_listener: std::net::TcpListener = socket.into();
        return Ok((
            tokio::net::TcpListener::from_std(std_listener)?,
            "bound (SO_REUSEPORT)",
        ));
    }
    let std_listener = std::net::TcpListener::bind(config.listen)?;
    std_listener.set_nonblocking(true)?;
    Ok((tokio::net::TcpListener::from_std(std_listener)?, "bound"))
}

type Access = (
    tracing_appender::non_blocking::WorkerGuard,
    tracing_appender::non_blocking::ErrorCounter,
);

/// Logs go to stderr (filter from `RUST_LOG`, default `info`); with
/// `--access-log`, one line per request goes to stdout through a non-blocking
/// writer: a stalled stdout drops lines (counted) instead of stalling requests.
fn init_logging(json: bool, access_log: bool) -> Option<Access> {
    // `RUST_LOG` as `level` or `target=level,...` (tracing-subscriber's
    // `Targets` syntax: no regex engine in the binary). Unparsable → info.
    let rust_log = std::env::var("RUST_LOG").ok();
    let parsed = rust_log.as_deref().map(str::parse::<Targets>);
    let bad_rust_log = matches!(parsed, Some(Err(_)));
    let filter = parsed
        .and_then(Result::ok)
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO))
        .with_target(
            "tokengate::access",
            tracing::level_filters::LevelFilter::OFF,
        );
    let ansi = std::io::stderr().is_terminal() && !json;
    let stderr: Box<dyn Layer<Registry> + Send + Sync> = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed()
    };
    let mut access = None;
    let access_layer: Option<Box<dyn Layer<Registry> + Send + Sync>> = access_log.then(|| {
        let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
            .lossy(true)
            .buffered_lines_limit(64 * 1024)
            .finish(std::io::stdout());
        access = Some((guard, writer.error_counter()));
        let only_access = Targets::new().with_target("tokengate::access", tracing::Level::INFO);
        if json {
            tracing_subscriber::fmt::layer()
                .json()
                .with_writer(writer)
                .with_filter(only_access)
                .boxed()
        } else {
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(writer)
                .with_filter(only_access)
                .boxed()
        }
    });
    let mut layers = vec![stderr];
    layers.extend(access_layer);
    tracing_subscriber::registry().with(layers).init();
    if bad_rust_log {
        warn!("RUST_LOG is not `level` or `target=level,...`; logging at info");
    }
    access
}

fn keygen(a: &tokengate::config::Keygen) -> ExitCode {
    let attributes = tokengate::keys::KeygenAttributes {
        label: a.label.clone(),
        owner: a.owner.clone(),
        scopes: a.scopes.clone(),
        expires: a.expires.clone(),
        rate: a.rate.clone(),
        burst: a.burst.clone(),
        quota: a.quota.clone(),
        canary: a.canary,
    };
    match tokengate::keys::keygen(&attributes) {
        Ok((key, line)) => {
            println!("{}\n{line}", key.as_str());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tokengate keygen: {e}");
            ExitCode::from(2)
        }
    }
}

fn list_keys(path: &std::path::Path) -> ExitCode {
    let sources = tokengate::keys::KeySources::new(None, Some(path.to_owned()));
    match sources.and_then(|s| s.load()) {
        Ok((keys, _)) => {
            print!("{}", tokengate::keys::describe(&keys));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tokengate keys: {e}");
            ExitCode::from(2)
        }
    }
}

fn hash_token() -> ExitCode {
    let mut input = zeroize::Zeroizing::new(Vec::new());
    if let Err(e) = std::io::stdin().take(64 * 1024).read_to_end(&mut input) {
        eprintln!("tokengate hash-token: cannot read stdin: {e}");
        return ExitCode::from(2);
    }
    match hash_token_line(&input) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tokengate hash-token: {e}");
            ExitCode::from(2)
        }
    }
}

/// A start-up error: one line on stderr, exit code 2. The log's ERROR line
/// (in the chosen format), or a plain one when `RUST_LOG` turned errors off.
fn start_up_error(problem: impl std::fmt::Display) -> ExitCode {
    if tracing::enabled!(tracing::Level::ERROR) {
        error!("configuration error: {problem}");
    } else {
        eprintln!("tokengate: {problem}");
    }
    ExitCode::from(2)
}
