//! The Postgres backend: production, shared by several control-plane replicas.

use super::migrations::{self, POSTGRES_MIGRATOR};
use super::pool::{ConnectCheck, ConnectionPool};
use super::sql::{Dialect, Preparing, SqlStore};
use super::url::{PoolMode, split_pool_mode};
use crate::store::contract::feed::{ChangeSignal, LocalWrites, SignalHooks, WeakChangeSignal};
use crate::store::contract::{DatabaseError, Result, StoreError, StoreOptions};
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
    const FOR_NO_KEY_UPDATE: &'static str = " FOR NO KEY UPDATE";
    const COMMITTERS: usize = 2;
    const ONE_WRITER: bool = false;
    // In byte order (`COLLATE "C"`), the key order of the batch and of `secrets`.
    const BULK_ROWS: &'static str = "SELECT mesh COLLATE \"C\" AS w_mesh, name COLLATE \"C\" AS w_name, \
           CAST(time AS timestamptz) AS w_time, CAST(labels AS jsonb) AS w_labels, \
           decode(data, 'hex') AS w_data, key_id AS w_key_id, \
           decode(write_id, 'hex') AS w_write_id, CAST(actor AS jsonb) AS w_actor, \
           request_id AS w_request_id, expected AS w_expected, origin AS w_origin, \
           zone AS w_zone, display AS w_display \
         FROM json_to_recordset(CAST($1 AS json)) AS r(mesh text, name text, time text, \
           labels text, data text, key_id text, write_id text, actor text, request_id text, \
           expected bigint, origin text, zone text, display text)";
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
                    .map_err(|e| super::db_error::map_db_error(e, super::db_error::Op::Other))?;
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
        let listen_with = connect.clone();
        let pool = ConnectionPool::new(
            connect,
            check,
            options.max_connections,
            options.acquire_timeout,
        );
        let announce_with = pool.clone();
        let changes = ChangeSignal::with_hooks(SignalHooks {
            // LISTEN needs a session of its own; a transaction-mode pooler gives none (its
            // watchers poll; its writes are still announced).
            listen: match pool_mode {
                PoolMode::Session => Some(Box::new(move |signal| {
                    tokio::spawn(listen_for_changes(listen_with.clone(), signal))
                })),
                PoolMode::Transaction => None,
            },
            announce: Some(Box::new(move |writes| {
                tokio::spawn(announce_writes(announce_with.clone(), writes))
            })),
        });
        let mut store = Self {
            pool,
            options,
            preparing,
            changes,
            writes: Default::default(),
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
            Err(super::db_error::ServerReadOnly.into())
        }
    })
}

async fn connect_once(connect: &PgConnectOptions) -> Result<PgConnection> {
    PgConnection::connect_with(connect)
        .await
        .map_err(|e| StoreError::Unavailable(DatabaseError::new(e)))
}

/// The channel this library's Postgres stores `NOTIFY` after their writes and `LISTEN` on.
pub(crate) const CHANGES_CHANNEL: &str = "kuma_secrets_changes";

/// What an announcement runs: a `NOTIFY` in a transaction of its own that does not wait for
/// its commit record to reach the disk (nothing is lost if it never does: watchers poll).
/// One simple-protocol statement, so it works through any pooler.
const ANNOUNCE: &str =
    "SELECT set_config('synchronous_commit', 'off', true), pg_notify('kuma_secrets_changes', '')";

/// The shortest time between two announcements of one process: writes within it fold into
/// one `NOTIFY`. A lone write is announced at once; under load, other processes hear of
/// this one's writes at most this much later, and the announcements cost the database at
/// most a hundred small transactions a second per process.
const ANNOUNCE_EVERY: std::time::Duration = std::time::Duration::from_millis(10);

/// Tells other processes about this process's writes: a `NOTIFY` on [`CHANGES_CHANNEL`]
/// after a write, at most one per [`ANNOUNCE_EVERY`] (later writes fold into the next),
/// on a pooled connection, until the store is gone.
///
/// Why not from the writes' own transactions (a trigger): Postgres serializes the commits
/// of transactions that notify (to keep the queue in commit order), and the writes would
/// lose group commit; measured with pgbench, 16 clients updating secrets went from ~6,300
/// to ~2,400 tps. Announced apart, writes commit as before.
async fn announce_writes(pool: ConnectionPool<PgConnection>, mut writes: LocalWrites) {
    while writes.next().await {
        let announced = async {
            let mut conn = pool.acquire().await?;
            let sent = conn.conn().execute(ANNOUNCE).await.map(drop);
            conn.finish(sent)
        }
        .await;
        if let Err(e) = announced {
            // Other processes' watchers find the write at their next poll.
            tracing::debug!(error = %e, "could not announce a write to other processes");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        tokio::time::sleep(ANNOUNCE_EVERY).await;
    }
}

/// How often an idle listener checks whether anyone still waits on its signal.
const LISTENER_CHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// Notifies `signal` at every `NOTIFY` on [`CHANGES_CHANNEL`], on a session of its own,
/// until nobody waits on the signal or its store is gone. A lost connection is opened again
/// (notifications meanwhile are lost: the signal is notified once it is back, and watchers
/// poll anyway).
async fn listen_for_changes(connect: PgConnectOptions, signal: WeakChangeSignal) {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .max_lifetime(None)
        .idle_timeout(None)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect_lazy_with(connect);
    let mut backoff = std::time::Duration::from_millis(100);
    'session: loop {
        let listening = async {
            let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
            listener.listen(CHANGES_CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let mut listener = tokio::select! {
            started = listening => match started {
                Ok(listener) => listener,
                Err(e) => {
                    tracing::debug!(error = %e, "change listener: cannot LISTEN; watchers poll meanwhile");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
                    if !still_wanted(&signal) {
                        break 'session;
                    }
                    continue 'session;
                }
            },
            () = tokio::time::sleep(LISTENER_CHECK) => {
                if !still_wanted(&signal) {
                    break 'session;
                }
                continue 'session;
            }
        };
        backoff = std::time::Duration::from_millis(100);
        // Whatever was committed while not listening: look once.
        if let Some(signal) = signal.upgrade() {
            signal.notify();
        }
        loop {
            tokio::select! {
                received = listener.try_recv() => match received {
                    // A notification, or (`None`) the connection was lost and opened
                    // again, so notifications may have been missed: look once either way.
                    Ok(_) => match signal.upgrade() {
                        Some(signal) => signal.notify(),
                        None => break 'session,
                    },
                    Err(e) => {
                        tracing::debug!(error = %e, "change listener: connection lost");
                        continue 'session;
                    }
                },
                () = tokio::time::sleep(LISTENER_CHECK) => {
                    if !still_wanted(&signal) {
                        break 'session;
                    }
                }
            }
        }
    }
    pool.close().await;
}

/// Whether the signal's store lives and someone waits on it.
fn still_wanted(signal: &WeakChangeSignal) -> bool {
    signal.upgrade().is_some_and(|signal| signal.has_waiters())
}
