//! The SQLite backend: the embedded default. One process owns the file; it is created and
//! migrated on open. WAL lets readers run beside the single writer, and `busy_timeout`
//! makes writers queue for the lock instead of failing.

use super::error::{Op, map_db_error};
use super::migrations::{self, AppliedRow, MigrationReport, MigrationStatus, SQLITE_MIGRATOR};
use super::pool::ConnectionPool;
use super::sql_store::{Dialect, SqlStore};
use super::{Result, StoreError, StoreOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{Connection, Sqlite, SqliteConnection};
use std::str::FromStr;
use std::time::Duration;

/// The store on an embedded SQLite file.
pub type SqliteStore = SqlStore<Sqlite>;

/// More connections than this only add threads: SQLite has one writer at a time.
const MAX_SQLITE_CONNECTIONS: u32 = 8;

impl Dialect for Sqlite {
    const BEGIN_WRITE: &'static str = "BEGIN IMMEDIATE";
    const LOCK_MESH_SHARED: &'static str = "SELECT version, spec FROM meshes WHERE name = $1";
    const LOCK_MESH_EXCLUSIVE: &'static str = "SELECT version, spec FROM meshes WHERE name = $1";
    const LOCK_SECRET_SHARED: &'static str =
        "SELECT version FROM secrets WHERE mesh = $1 AND name = $2";

    const FOR_UPDATE: &'static str = "";

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
        Self::migrate_up(url, options.tolerate_newer_schema).await?;
        let pool = ConnectionPool::new(
            connect_options(url)?,
            options.max_connections.clamp(1, MAX_SQLITE_CONNECTIONS),
            options.acquire_timeout,
        );
        let store = Self { pool, options };
        store.check_keyring().await?;
        Ok(store)
    }

    /// Applies pending migrations to the file at `url`.
    ///
    /// # Errors
    /// As [`SqlStore::<Sqlite>::open`].
    pub async fn migrate_up(url: &str, tolerate_newer: bool) -> Result<MigrationReport> {
        let mut conn = connect_once(&connect_options(url)?).await?;
        let before = applied(&mut conn).await?;
        let conn_ref = &mut conn;
        let report = migrations::up(&SQLITE_MIGRATOR, before, tolerate_newer, |m| async move {
            m.run(&mut *conn_ref)
                .await
                .map_err(migrations::map_migrate_error)?;
            applied(conn_ref).await
        })
        .await;
        let _ = conn.close().await;
        report
    }

    /// Lists embedded and applied migrations of the file at `url`.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] if the file cannot be opened.
    pub async fn migration_status(url: &str) -> Result<Vec<MigrationStatus>> {
        let mut conn = connect_once(&connect_options(url)?).await?;
        let applied = applied(&mut conn).await;
        let _ = conn.close().await;
        Ok(migrations::status(&SQLITE_MIGRATOR, &applied?))
    }
}

fn connect_options(url: &str) -> Result<SqliteConnectOptions> {
    Ok(SqliteConnectOptions::from_str(url)
        .map_err(|_| StoreError::UnsupportedUrl {
            url: super::redact_url(url),
        })?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // NORMAL is durable under WAL except for the last commits on power loss, the usual
        // trade-off for an embedded store.
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(5))
        .foreign_keys(true))
}

async fn connect_once(connect: &SqliteConnectOptions) -> Result<SqliteConnection> {
    SqliteConnection::connect_with(connect)
        .await
        .map_err(StoreError::Unavailable)
}

async fn applied(conn: &mut SqliteConnection) -> Result<Vec<AppliedRow>> {
    let (exists,): (bool,) = sqlx::query_as(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(|e| map_db_error(e, Op::Other))?;
    if !exists {
        return Ok(Vec::new());
    }
    sqlx::query_as(APPLIED)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| map_db_error(e, Op::Other))
}
