//! The `kuma-secrets` command line. `main.rs` only parses arguments and calls [`run`].
//!
//! Every command prints a one-line reason and exits non-zero on failure; no backtraces.

mod migrate;
mod serve;

use clap::{Parser, Subcommand};

/// The embedded default store: a SQLite file in the working directory.
pub const DEFAULT_STORE_URL: &str = "sqlite://kuma-secrets.db";

/// A persistent, versioned, Kuma-compatible store for Secret and GlobalSecret resources.
#[derive(Debug, Parser)]
#[command(name = "kuma-secrets", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the Kuma-compatible HTTP API.
    Serve(serve::ServeArgs),
    /// Apply or inspect database schema migrations.
    #[command(subcommand)]
    Migrate(migrate::MigrateCommand),
}

/// Where the store lives; shared by every command that opens one.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// Store URL: postgres://USER:PASSWORD@HOST:PORT/DB or sqlite://PATH.
    #[arg(long = "store", env = "KUMA_SECRETS_STORE", default_value = DEFAULT_STORE_URL)]
    pub url: String,
}

/// Runs a parsed command line.
///
/// # Errors
/// Whatever the command failed with, for `main` to print.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Migrate(cmd) => migrate::run(cmd).await,
    }
}
