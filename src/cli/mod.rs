//! The `kuma-secrets` command line. `main.rs` only parses arguments and calls [`run`].
//!
//! Every command prints a one-line reason and exits non-zero on failure; no backtraces.

pub mod advice;
mod apply;
mod copy;
mod delete;
mod export;
mod from_kuma;
mod generate;
mod get;
mod history;
mod import;
pub mod keyring;
mod migrate;
mod rotate;
mod seal;
mod serve;
mod table;
mod to_kuma;
mod watch;

use crate::store::StoreUrl;
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
    Serve(Box<serve::ServeArgs>),
    /// Apply or inspect database schema migrations.
    #[command(subcommand)]
    Migrate(migrate::MigrateCommand),
    /// Create or update resources from YAML or JSON files (Kuma Universal or Kubernetes).
    Apply(apply::ApplyArgs),
    /// Show secrets, global secrets or meshes.
    #[command(subcommand)]
    Get(get::GetCommand),
    /// Delete a secret, global secret or mesh.
    #[command(subcommand)]
    Delete(delete::DeleteCommand),
    /// Generate user tokens and encryption keys.
    #[command(subcommand)]
    Generate(generate::GenerateCommand),
    /// Write every mesh, secret and global secret of a store as YAML (no server needed).
    Export(export::ExportArgs),
    /// Write the resources of a YAML stream into a store (no server needed); idempotent.
    Import(import::ImportArgs),
    /// Copy a whole store into another (SQLite to Postgres or back) and verify it.
    Copy(copy::CopyArgs),
    /// Re-seal every secret with the keyring's active key (online), or show --status.
    RotateKeys(rotate::RotateArgs),
    /// List the values a store holds in clear, and seal them with --yes (upgrades only).
    SealPlaintext(seal::SealArgs),
    /// Print changes to secrets, global secrets and meshes as they happen.
    Watch(watch::WatchArgs),
    /// Who changed or deleted what, and when (the change feed's audit trail).
    Audit(watch::AuditArgs),
    /// List the versions kept of a secret or global secret.
    History(history::HistoryArgs),
    /// Write an earlier version of a secret or global secret again, as its newest.
    Rollback(history::RollbackArgs),
    /// Bring a deleted secret or global secret back from its history.
    Restore(history::RestoreArgs),
}

/// Where the store lives; shared by every command that opens one.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// Store URL: postgres://USER:PASSWORD@HOST:PORT/DB (add ?pool_mode=transaction behind
    /// PgBouncer in transaction mode) or sqlite://PATH.
    #[arg(long = "store", env = "KUMA_SECRETS_STORE", default_value = DEFAULT_STORE_URL)]
    pub url: StoreUrl,
}

/// Where the API is; shared by every client verb.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// URL of the kuma-secrets (or Kuma) API.
    #[arg(long = "api-url", env = "KUMA_SECRETS_API_URL", default_value = crate::client::DEFAULT_API_URL, global = true)]
    pub url: String,
    /// User token sent as `Authorization: Bearer` (not needed from localhost by default).
    #[arg(
        long,
        env = "KUMA_SECRETS_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub token: Option<String>,
}

impl ApiArgs {
    /// A client for these settings.
    ///
    /// # Errors
    /// An invalid URL.
    pub fn client(&self) -> anyhow::Result<crate::client::ApiClient> {
        Ok(crate::client::ApiClient::new(
            &self.url,
            self.token.clone(),
        )?)
    }
}

/// Runs a verb that writes to a store directly with `cli:VERB` as the actor of its changes
/// (the audit trail), and one request id for the run.
async fn cli_context<F: std::future::Future>(verb: &str, run: F) -> F::Output {
    let context = crate::store::feed::WriteContext {
        actor: crate::store::feed::Actor {
            name: format!("cli:{verb}"),
            groups: Vec::new(),
        },
        request_id: Some(uuid::Uuid::new_v4().to_string()),
    };
    crate::store::feed::with_write_context(context, run).await
}

/// Runs a parsed command line.
///
/// # Errors
/// Whatever the command failed with, for `main` to print.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve::run(*args).await,
        Command::Migrate(cmd) => migrate::run(cmd).await,
        Command::Apply(args) => apply::run(args).await,
        Command::Get(cmd) => get::run(cmd).await,
        Command::Delete(cmd) => delete::run(cmd).await,
        Command::Generate(cmd) => generate::run(cmd).await,
        Command::Export(args) => export::run(args).await,
        Command::Import(args) => cli_context("import", import::run(args)).await,
        Command::Copy(args) => cli_context("copy", copy::run(args)).await,
        Command::RotateKeys(args) => cli_context("rotate-keys", rotate::run(args)).await,
        Command::SealPlaintext(args) => cli_context("seal-plaintext", seal::run(args)).await,
        Command::Watch(args) => watch::watch(args).await,
        Command::Audit(args) => watch::audit(args).await,
        Command::History(args) => history::history(args).await,
        Command::Rollback(args) => history::rollback(args).await,
        Command::Restore(args) => history::restore(args).await,
    }
}
