//! The Postgres backend: production, shared by several control-plane replicas.

use super::error::{Op, map_db_error};
use super::migrations::{self, AppliedRow, MigrationReport, MigrationStatus, POSTGRES_MIGRATOR};
use super::sql_store::{Dialect, SqlStore};
use super::{Result, StoreError, StoreOptions};
use sqlx::{Connection, PgConnection, Postgres};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use std::str::FromStr;

/// The store on Postgres.
pub type PostgresStore = SqlStore<Postgres>;

impl Dialect for Postgres {
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
        let pool = connect(url, &options).await?;
        let applied = applied(&pool).await?;
        migrations::check(&POSTGRES_MIGRATOR, &applied, options.tolerate_newer_schema)?;
        Ok(Self { pool, options })
    }

    /// Applies pending migrations to the database at `url`.
    ///
    /// # Errors
    /// A newer schema (unless `tolerate_newer`), a dirty or modified one, or a failed
    /// migration.
    pub async fn migrate_up(url: &str, tolerate_newer: bool) -> Result<MigrationReport> {
        let pool = connect(url, &StoreOptions::default()).await?;
        let before = applied(&pool).await?;
        let pool_ref = &pool;
        let report = migrations::up(&POSTGRES_MIGRATOR, before, tolerate_newer, |m| async move {
            m.run(pool_ref)
                .await
                .map_err(migrations::map_migrate_error)?;
            applied(pool_ref).await
        })
        .await;
        pool.close().await;
        report
    }

    /// Lists embedded and applied migrations of the database at `url`.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] if Postgres cannot be reached.
    pub async fn migration_status(url: &str) -> Result<Vec<MigrationStatus>> {
        let pool = connect(url, &StoreOptions::default()).await?;
        let applied = applied(&pool).await;
        pool.close().await;
        Ok(migrations::status(&POSTGRES_MIGRATOR, &applied?))
    }
}

async fn connect(url: &str, options: &StoreOptions) -> Result<PgPool> {
    let connect = PgConnectOptions::from_str(url)
        .map_err(|_| StoreError::UnsupportedUrl {
            url: super::redact_url(url),
        })?
        .application_name("kuma-secrets");
    // One direct connection first: a pool only reports "timed out" when Postgres is down,
    // while this reports why (connection refused, authentication failed, no such database).
    let probe = PgConnection::connect_with(&connect)
        .await
        .map_err(StoreError::Unavailable)?;
    let _ = probe.close().await;
    Ok(PgPoolOptions::new()
        .max_connections(options.max_connections)
        .acquire_timeout(options.acquire_timeout)
        .connect_lazy_with(connect))
}

/// Rows of `_sqlx_migrations`, none if the table does not exist yet.
async fn applied(pool: &PgPool) -> Result<Vec<AppliedRow>> {
    let (exists,): (bool,) = sqlx::query_as("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
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
