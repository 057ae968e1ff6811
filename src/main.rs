//! The `tokengate` binary: configuration → logging → bind → serve → exit code.

use std::io::{IsTerminal, Read};
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tokengate::config::{self, Args, Command, Config, TOKEN_ENV};
use tokengate::{App, serve, shutdown};
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let args = Args::parse();
    if args.command == Some(Command::HashToken) {
        return hash_token();
    }
    init_logging();
    let config = match Config::from_args(&args, std::env::var_os(TOKEN_ENV)) {
        Ok(config) => config,
        Err(e) => {
            error!("configuration error: {e}");
            eprintln!("tokengate: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tokengate: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(config))
}

async fn run(config: Config) -> ExitCode {
    let app = match App::new(config.keys.clone(), &config.app) {
        Ok(app) => Arc::new(app),
        Err(e) => {
            eprintln!("tokengate: --realm: {e}");
            return ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            error!(listen = %config.listen, error = %e, "cannot bind");
            eprintln!("tokengate: --listen {}: cannot bind: {e}", config.listen);
            return ExitCode::from(2);
        }
    };
    let local = listener.local_addr().unwrap_or(config.listen);
    if config.demo_key {
        warn!(
            "no key configured (TOKENGATE_TOKEN, --token-file): using the demo key 'mysecrettoken'; do not use it in production"
        );
    }
    let labels: Vec<&str> = config.keys.keys().iter().map(|k| k.label()).collect();
    info!(
        address = %local,
        protocols = "http/1.1, h2c",
        keys = ?labels,
        "tokengate listening on http://{local}"
    );
    serve(listener, app, config.limits.clone(), shutdown::signal()).await;
    ExitCode::SUCCESS
}

fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

fn hash_token() -> ExitCode {
    let mut input = zeroize::Zeroizing::new(Vec::new());
    if let Err(e) = std::io::stdin().take(64 * 1024).read_to_end(&mut input) {
        eprintln!("tokengate hash-token: cannot read stdin: {e}");
        return ExitCode::from(2);
    }
    match config::hash_token_line(&input) {
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
