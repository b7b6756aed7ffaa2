//! The SQLite backend: the embedded default. One process owns the file; it is created and
//! migrated on open. WAL lets readers run beside the single writer, and `busy_timeout`
//! makes writers queue for the lock instead of failing.

use super::error::{Op, map_db_error};
use super::migrations::{self, AppliedRow, MigrationReport, MigrationStatus, SQLITE_MIGRATOR};
use super::sql_store::{Dialect, SqlStore};
use super::{Result, StoreError, StoreOptions};
use sqlx::Sqlite;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use std::str::FromStr;
use std::time::Duration;

/// The store on an embedded SQLite file.
pub type SqliteStore = SqlStore<Sqlite>;

/// More connections than this only add threads: SQLite has one writer at a time.
const MAX_SQLITE_CONNECTIONS: u32 = 8;

impl Dialect for Sqlite {
    fn contains(column: &str, needle: &str) -> String {
        format!("instr({column}, {needle}) > 0")
    }

    fn label_equals(column: &str, key: &str, value: &str) -> String {
        // `->>` would read a key like "kuma.io/mesh" as a JSON path; json_each compares
        // keys literally.
        format!(
            "EXISTS (SELECT 1 FROM json_each({column}) WHERE json_each.key = {key} AND json_each.value = {value})"
        )
    }
}

const APPLIED: &str = "SELECT version, description, CAST(installed_on AS TEXT) AS installed_on, \
     success, checksum FROM _sqlx_migrations ORDER BY version";

impl SqlStore<Sqlite> {
    /// Opens (creating if needed) the SQLite file `url` names and applies pending migrations.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] if the file cannot be opened; [`StoreError::Schema`] if it
    /// was migrated by a newer binary (unless `options.tolerate_newer_schema`).
    pub async fn open(url: &str, options: StoreOptions) -> Result<Self> {
        let pool = connect(url, &options).await?;
        let before = applied(&pool).await?;
        let pool_ref = &pool;
        migrations::up(
            &SQLITE_MIGRATOR,
            before,
            options.tolerate_newer_schema,
            |m| async move {
                m.run(pool_ref)
                    .await
                    .map_err(migrations::map_migrate_error)?;
                applied(pool_ref).await
            },
        )
        .await?;
        Ok(Self { pool, options })
    }

    /// Applies pending migrations to the file at `url`.
    ///
    /// # Errors
    /// As [`SqlStore::<Sqlite>::open`].
    pub async fn migrate_up(url: &str, tolerate_newer: bool) -> Result<MigrationReport> {
        let pool = connect(url, &StoreOptions::default()).await?;
        let before = applied(&pool).await?;
        let pool_ref = &pool;
        let report = migrations::up(&SQLITE_MIGRATOR, before, tolerate_newer, |m| async move {
            m.run(pool_ref)
                .await
                .map_err(migrations::map_migrate_error)?;
            applied(pool_ref).await
        })
        .await;
        pool.close().await;
        report
    }

    /// Lists embedded and applied migrations of the file at `url`.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] if the file cannot be opened.
    pub async fn migration_status(url: &str) -> Result<Vec<MigrationStatus>> {
        let pool = connect(url, &StoreOptions::default()).await?;
        let applied = applied(&pool).await;
        pool.close().await;
        Ok(migrations::status(&SQLITE_MIGRATOR, &applied?))
    }
}

async fn connect(url: &str, options: &StoreOptions) -> Result<SqlitePool> {
    let connect = SqliteConnectOptions::from_str(url)
        .map_err(|_| StoreError::UnsupportedUrl {
            url: super::redact_url(url),
        })?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // NORMAL is durable under WAL except for the last commits on power loss, the usual
        // trade-off for an embedded store.
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(5))
        .foreign_keys(true);
    SqlitePoolOptions::new()
        .max_connections(options.max_connections.clamp(1, MAX_SQLITE_CONNECTIONS))
        .acquire_timeout(options.acquire_timeout)
        .connect_with(connect)
        .await
        .map_err(StoreError::Unavailable)
}

async fn applied(pool: &SqlitePool) -> Result<Vec<AppliedRow>> {
    let (exists,): (bool,) = sqlx::query_as(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
    )
    .fetch_one(pool)
    .await
    .map_err(|e| map_db_error(e, Op::Other))?;
    if !exists {
        return Ok(Vec::new());
    }
    sqlx::query_as(APPLIED)
        .fetch_all(pool)
        .await
        .map_err(|e| map_db_error(e, Op::Other))
}
