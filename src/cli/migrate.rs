//! `kuma-secrets migrate up|status`.

use super::StoreArgs;
use crate::store::{
    Backend, MigrationReport, MigrationState, MigrationStatus, PostgresStore, SqliteStore,
};

/// `kuma-secrets migrate …`
#[derive(Debug, clap::Subcommand)]
pub enum MigrateCommand {
    /// Apply every pending migration and say which ran.
    Up {
        #[command(flatten)]
        store: StoreArgs,
        /// Succeed on a schema migrated by a newer kuma-secrets (rolling upgrades).
        #[arg(long)]
        tolerate_newer_schema: bool,
    },
    /// Show applied and pending migrations.
    Status {
        #[command(flatten)]
        store: StoreArgs,
    },
}

pub(super) async fn run(cmd: MigrateCommand) -> anyhow::Result<()> {
    match cmd {
        MigrateCommand::Up {
            store,
            tolerate_newer_schema,
        } => {
            let url = &store.url;
            let report = match url.backend() {
                Backend::Postgres => {
                    PostgresStore::migrate_up(url.expose(), tolerate_newer_schema).await?
                }
                Backend::Sqlite => {
                    SqliteStore::migrate_up(url.expose(), tolerate_newer_schema).await?
                }
            };
            print!("{}", render_report(&url.to_string(), &report));
        }
        MigrateCommand::Status { store } => {
            let url = store.url.expose();
            let status = match store.url.backend() {
                Backend::Postgres => PostgresStore::migration_status(url).await?,
                Backend::Sqlite => SqliteStore::migration_status(url).await?,
            };
            print!("{}", render_status(&status));
        }
    }
    Ok(())
}

fn render_report(url: &str, report: &MigrationReport) -> String {
    if report.applied.is_empty() {
        return format!(
            "{url}: schema is already up to date (version {})\n",
            report.version
        );
    }
    let mut out = String::new();
    for m in &report.applied {
        out.push_str(&format!("applied {} {}\n", m.version, m.description));
    }
    out.push_str(&format!(
        "{url}: schema migrated to version {}\n",
        report.version
    ));
    out
}

fn render_status(status: &[MigrationStatus]) -> String {
    let mut out = format!(
        "{:<16} {:<10} {:<22} {}\n",
        "VERSION", "STATE", "APPLIED AT", "DESCRIPTION"
    );
    for m in status {
        let (state, at) = match &m.state {
            MigrationState::Applied { installed_on } => ("applied", installed_on.as_str()),
            MigrationState::Pending => ("pending", "-"),
            MigrationState::Failed => ("FAILED", "-"),
            MigrationState::Unknown => ("unknown", "-"),
        };
        let at: String = at.chars().take(19).collect();
        out.push_str(&format!(
            "{:<16} {:<10} {:<22} {}\n",
            m.version, state, at, m.description
        ));
    }
    let pending = status
        .iter()
        .filter(|m| m.state == MigrationState::Pending)
        .count();
    if pending > 0 {
        out.push_str(&format!(
            "{pending} pending: run \"kuma-secrets migrate up\" to apply\n"
        ));
    }
    if status.iter().any(|m| m.state == MigrationState::Unknown) {
        out.push_str("the database was migrated by a newer kuma-secrets\n");
    }
    out
}
