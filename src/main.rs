//! The `rebound` binary: logging, CLI parsing, then [`rebound::dispatch`].

use std::process::ExitCode;

use clap::Parser as _;
use rebound::cli::{Cli, LogFormat};

/// glibc's malloc was 17% of the ingress's CPU under load (perf); mimalloc's
/// per-thread heaps cut that on the many small, short-lived allocations of
/// HTTP requests and Redis replies.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Human => logs.init(),
    }
    match rebound::dispatch(cli).await {
        Ok(code) => code,
        Err(e) => {
            // One line for the operator: the chain of causes, outermost first.
            eprintln!("rebound: {}", format!("{e:#}").replace('\n', "; "));
            ExitCode::FAILURE
        }
    }
}
