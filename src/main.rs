//! The `kuma-secrets` binary: parses the command line and runs it. Everything else lives in
//! the library (`src/lib.rs`).

use clap::Parser;
use std::io::IsTerminal;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

/// mimalloc rather than glibc's malloc: a request allocates and frees dozens of small
/// buffers, and glibc's took a sixth of a cached GET's time (`benches/http.sh`). Only the
/// binary sets it; an embedding control plane keeps its own allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("KUMA_SECRETS_LOG")
                .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        // Otherwise a failed log write is reported with eprintln!, which panics when stderr
        // is a closed pipe: the server must outlive whoever was reading its log.
        .log_internal_errors(false)
        .init();
    let cli = kuma_secrets::cli::Cli::parse();
    match kuma_secrets::cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line: the error, its causes and what to do about it; never a backtrace.
            eprintln!("Error: {}", kuma_secrets::cli::advice::describe(&err));
            ExitCode::FAILURE
        }
    }
}
