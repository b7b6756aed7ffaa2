//! The Postgres backend: production, shared by several control-plane replicas.

use super::error::{Op, map_db_error};
use super::migrations::{self, AppliedRow, MigrationReport, MigrationStatus, POSTGRES_MIGRATOR};
use super::pool::ConnectionPool;
use super::sql_store::{Dialect, SqlStore};
use super::{Result, StoreError, StoreOptions};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, Postgres};
use std::str::FromStr;

/// The store on Postgres.
pub type PostgresStore = SqlStore<Postgres>;

impl Dialect for Postgres {
    const BEGIN_WRITE: &'static str = "BEGIN";
    const LOCK_MESH_SHARED: &'static str =
        "SELECT version, spec FROM meshes WHERE name = $1 FOR SHARE";
    const LOCK_MESH_EXCLUSIVE: &'static str =
        "SELECT version, spec FROM meshes WHERE name = $1 FOR UPDATE";
    const LOCK_SECRET_SHARED: &'static str =
        "SELECT version FROM secrets WHERE mesh = $1 AND name = $2 FOR SHARE";

    const FOR_UPDATE: &'static str = " FOR UPDATE";

    fn contains(column: &str, needle: &str) -> String {
        format!("strpos({column}, {needle}) > 0")
    }

    fn label_equals(column: &str, key: &str, value: &str) -> String {
        format!("{column} ->> {key} = {value}")
    }
}

const APPLIED: &str = "SELECT version, description, CAST(installed_on AS TEXT) AS installed_on, \
     success, checksum FROM _sqlx_migrations ORDER BY version";

impl SqlStore<Postgres> {
    /// Connects to `url` and checks that its schema is at this binary's version.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] if Postgres cannot be reached; [`StoreError::Schema`] if the
    /// schema is behind (run `kuma-secrets migrate up`), newer (unless
    /// `options.tolerate_newer_schema`), dirty or modified.
    pub async fn open(url: &str, options: StoreOptions) -> Result<Self> {
        let connect = connect_options(url)?;
        // One direct connection first, for the schema gate: it also reports why Postgres
        // cannot be reached (refused, bad password, no such database), where a pool would
        // only say it timed out.
        let mut conn = connect_once(&connect).await?;
        let applied = applied(&mut conn).await;
        let _ = conn.close().await;
        migrations::check(&POSTGRES_MIGRATOR, &applied?, options.tolerate_newer_schema)?;
        let pool = ConnectionPool::new(connect, options.max_connections, options.acquire_timeout);
        let store = Self { pool, options };
        store.check_keyring().await?;
        Ok(store)
    }

    /// Applies pending migrations to the database at `url`.
    ///
    /// # Errors
    /// A newer schema (unless `tolerate_newer`), a dirty or modified one, or a failed
    /// migration.
    pub async fn migrate_up(url: &str, tolerate_newer: bool) -> Result<MigrationReport> {
        let mut conn = connect_once(&connect_options(url)?).await?;
        let before = applied(&mut conn).await?;
        let conn_ref = &mut conn;
        let report = migrations::up(&POSTGRES_MIGRATOR, before, tolerate_newer, |m| async move {
            m.run(&mut *conn_ref)
                .await
                .map_err(migrations::map_migrate_error)?;
            applied(conn_ref).await
        })
        .await;
        let _ = conn.close().await;
        report
    }

    /// Lists embedded and applied migrations of the database at `url`.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] if Postgres cannot be reached.
    pub async fn migration_status(url: &str) -> Result<Vec<MigrationStatus>> {
        let mut conn = connect_once(&connect_options(url)?).await?;
        let applied = applied(&mut conn).await;
        let _ = conn.close().await;
        Ok(migrations::status(&POSTGRES_MIGRATOR, &applied?))
    }
}

fn connect_options(url: &str) -> Result<PgConnectOptions> {
    Ok(PgConnectOptions::from_str(url)
        .map_err(|_| StoreError::UnsupportedUrl {
            url: super::redact_url(url),
        })?
        .application_name("kuma-secrets"))
}

async fn connect_once(connect: &PgConnectOptions) -> Result<PgConnection> {
    PgConnection::connect_with(connect)
        .await
        .map_err(StoreError::Unavailable)
}

/// Rows of `_sqlx_migrations`, none if the table does not exist yet.
async fn applied(conn: &mut PgConnection) -> Result<Vec<AppliedRow>> {
    let (exists,): (bool,) = sqlx::query_as("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
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
