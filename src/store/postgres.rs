//! The Postgres backend: production, shared by several control-plane replicas.

use super::migrations::{self, POSTGRES_MIGRATOR};
use super::pool::{ConnectCheck, ConnectionPool};
use super::sql::{Dialect, Preparing, SqlStore};
use super::url::{PoolMode, split_pool_mode};
use super::{Result, StoreError, StoreOptions};
use futures_util::future::BoxFuture;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, Executor, PgConnection, Postgres, Row};
use std::str::FromStr;

/// The store on Postgres.
pub type PostgresStore = SqlStore<Postgres>;

impl migrations::MigrationTarget for Postgres {
    const MIGRATOR: &'static sqlx::migrate::Migrator = &POSTGRES_MIGRATOR;
    const MIGRATIONS_TABLE_EXISTS: &'static str =
        "SELECT to_regclass('_sqlx_migrations') IS NOT NULL";

    async fn connect_for_migrations(url: &str) -> Result<PgConnection> {
        connect_once(&session_options(url)?).await
    }
}

impl Dialect for Postgres {
    const READ_ONLY: &'static str = "SELECT current_setting('transaction_read_only')";
    const BEGIN_SNAPSHOT: &'static str = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";
    const BEGIN_WRITE: &'static str = "BEGIN";
    const LOCK_MESH_SHARED: &'static str =
        "SELECT version, spec FROM meshes WHERE name = $1 FOR SHARE";
    const LOCK_MESH_EXCLUSIVE: &'static str =
        "SELECT version, spec FROM meshes WHERE name = $1 FOR UPDATE";
    const LOCK_SECRET_SHARED: &'static str =
        "SELECT version FROM secrets WHERE mesh = $1 AND name = $2 FOR SHARE";

    const FOR_UPDATE: &'static str = " FOR UPDATE";
    const SEQUENCE_EVENTS: Option<&'static str> = Some(
        "WITH numbered AS ( \
           SELECT e.id, s.last + row_number() OVER (ORDER BY e.id) AS revision \
           FROM events e, events_sequencer s \
           WHERE s.id = 1 AND e.revision IS NULL \
           ORDER BY e.id LIMIT 10000), \
         assigned AS ( \
           UPDATE events SET revision = numbered.revision FROM numbered \
           WHERE events.id = numbered.id AND events.revision IS NULL \
           RETURNING events.revision) \
         UPDATE events_sequencer SET last = coalesce((SELECT max(revision) FROM assigned), last) \
         WHERE id = 1 RETURNING last",
    );
    const LAST_REVISION: &'static str = "SELECT last FROM events_sequencer WHERE id = 1";
    const PRUNE_DELETED_HISTORY: &'static str = "DELETE FROM secret_versions WHERE id IN ( \
           SELECT id FROM secret_versions WHERE deleted_time < CAST($1 AS timestamptz) \
           LIMIT $2) RETURNING version";
    const PRUNE_EVENTS: &'static str = "WITH head AS ( \
           SELECT revision, time FROM events WHERE revision IS NOT NULL \
           ORDER BY revision LIMIT $2), \
         stop AS (SELECT min(revision) AS revision FROM head \
           WHERE time >= CAST($1 AS timestamptz)) \
         DELETE FROM events WHERE revision IS NOT NULL \
           AND revision < coalesce((SELECT revision FROM stop), \
                                   (SELECT max(revision) + 1 FROM head)) \
         RETURNING revision";

    fn contains(column: &str, needle: &str) -> String {
        format!("strpos({column}, {needle}) > 0")
    }

    fn label_equals(column: &str, key: &str, value: &str) -> String {
        format!("{column} ->> {key} = {value}")
    }

    fn label_value(column: &str, key: &'static str) -> String {
        debug_assert!(!key.contains('\''), "a constant label key");
        format!("({column} ->> '{key}')")
    }
}

impl SqlStore<Postgres> {
    /// Connects to `url` and checks that its schema is at this binary's version.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] if Postgres cannot be reached; [`StoreError::Schema`] if the
    /// schema is behind (run `kuma-secrets migrate up`), newer (unless
    /// `options.tolerate_newer_schema`), dirty or modified.
    ///
    /// Unless `options.reads_only`, every connection the store opens must be writable (as
    /// libpq's `target_session_attrs=read-write` checks): one to a standby, or to a primary
    /// being demoted, is refused with [`StoreError::ReadOnly`], and the next attempt opens
    /// another, which a proxy in front of a Patroni cluster routes to the new primary.
    pub async fn open(url: &str, options: StoreOptions) -> Result<Self> {
        let (connect, pool_mode) = connect_options(url)?;
        let preparing = match pool_mode {
            PoolMode::Session => Preparing::Named,
            PoolMode::Transaction => Preparing::Unnamed,
        };
        // One direct connection first, for the schema gate: it also reports why Postgres
        // cannot be reached (refused, bad password, no such database), where a pool would
        // only say it timed out. In a transaction, and prepared as the store will, so it
        // works through a pooler in transaction mode too.
        let mut conn = connect_once(&connect).await?;
        let applied = preparing
            .around(async {
                let mut tx = conn
                    .begin()
                    .await
                    .map_err(|e| super::error::map_db_error(e, super::error::Op::Other))?;
                let applied = migrations::applied::<Postgres>(&mut tx).await;
                let _ = tx.commit().await;
                applied
            })
            .await;
        let _ = conn.close().await;
        migrations::check(&POSTGRES_MIGRATOR, &applied?, options.tolerate_newer_schema)?;
        let check: Option<ConnectCheck<PgConnection>> = if options.reads_only {
            None
        } else {
            Some(refuse_read_only)
        };
        let pool = ConnectionPool::new(
            connect,
            check,
            options.max_connections,
            options.acquire_timeout,
        );
        let mut store = Self {
            pool,
            options,
            preparing,
        };
        store.check_sealing().await?;
        Ok(store)
    }
}

/// The driver's options for `url`, and the `pool_mode` it names.
fn connect_options(url: &str) -> Result<(PgConnectOptions, PoolMode)> {
    let (driver_url, pool_mode) = split_pool_mode(url)?;
    let options = PgConnectOptions::from_str(&driver_url)
        .map_err(|_| StoreError::UnsupportedUrl {
            url: super::url::redact(url),
        })?
        .application_name("kuma-secrets");
    Ok((options, pool_mode))
}

/// The driver's options for `url`, for a tool that needs one Postgres session throughout:
/// migrations hold a session advisory lock (so two `migrate up` runs never interleave) and
/// run statements outside transactions, which a pooler in transaction mode would spread
/// over several sessions.
fn session_options(url: &str) -> Result<PgConnectOptions> {
    match connect_options(url)? {
        (options, PoolMode::Session) => Ok(options),
        (_, PoolMode::Transaction) => Err(StoreError::BadUrlParameter {
            url: super::url::redact(url),
            reason: "migrations need one Postgres session throughout (they hold a session lock): \
                     run them against Postgres directly, or through a pool in session mode, \
                     without pool_mode=transaction"
                .to_owned(),
        }),
    }
}

/// Refuses a connection to a server that only reads (libpq's
/// `target_session_attrs=read-write` check), with the query `ping` asks
/// ([`Dialect::READ_ONLY`]), sent without parameters, hence as a simple query, so it works
/// through any pooler.
fn refuse_read_only(conn: &mut PgConnection) -> BoxFuture<'_, Result<(), sqlx::Error>> {
    Box::pin(async move {
        let row = conn.fetch_one(<Postgres as Dialect>::READ_ONLY).await?;
        let read_only: String = row.try_get(0)?;
        if read_only == "off" {
            Ok(())
        } else {
            Err(super::error::ServerReadOnly.into())
        }
    })
}

async fn connect_once(connect: &PgConnectOptions) -> Result<PgConnection> {
    PgConnection::connect_with(connect)
        .await
        .map_err(StoreError::Unavailable)
}
