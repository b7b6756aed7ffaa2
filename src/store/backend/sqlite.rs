//! The SQLite backend: the embedded default. One process owns the file; it is created and
//! migrated on open. WAL lets readers run beside the single writer. The process's write
//! transactions take turns in arrival order ([`Dialect::ONE_WRITER`]), and `busy_timeout`
//! makes a writer of another process (a `kuma-secrets` tool on the same file) wait for the
//! lock instead of failing.

use super::migrations::{self, SQLITE_MIGRATOR};
use super::pool::ConnectionPool;
use super::sql::{Dialect, Preparing, SqlStore};
use crate::store::contract::feed::ChangeSignal;
use crate::store::contract::{Result, StoreError, StoreOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{Connection, Sqlite, SqliteConnection};
use std::str::FromStr;
use std::time::Duration;

/// The store on an embedded SQLite file.
pub type SqliteStore = SqlStore<Sqlite>;

/// More connections than this only add threads: SQLite has one writer at a time.
const MAX_SQLITE_CONNECTIONS: u32 = 8;

impl migrations::MigrationTarget for Sqlite {
    const MIGRATOR: &'static sqlx::migrate::Migrator = &SQLITE_MIGRATOR;
    const MIGRATIONS_TABLE_EXISTS: &'static str =
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'";

    async fn connect_for_migrations(url: &str) -> Result<SqliteConnection> {
        // The first connection a store makes: the file is created here if it is new.
        let options = connect_options(url)?;
        owner_only_files(&options);
        connect_once(&options).await
    }
}

impl Dialect for Sqlite {
    const READ_ONLY: &'static str = "SELECT 'off'";
    const BEGIN_SNAPSHOT: &'static str = "BEGIN DEFERRED";
    const BEGIN_WRITE: &'static str = "BEGIN IMMEDIATE";
    const LOCK_MESH_SHARED: &'static str = "SELECT version, spec FROM meshes WHERE name = $1";
    const LOCK_MESH_EXCLUSIVE: &'static str = "SELECT version, spec FROM meshes WHERE name = $1";
    const LOCK_SECRET_SHARED: &'static str =
        "SELECT version FROM secrets WHERE mesh = $1 AND name = $2";

    const FOR_UPDATE: &'static str = "";
    const FOR_NO_KEY_UPDATE: &'static str = "";
    const COMMITTERS: usize = 1;
    const ONE_WRITER: bool = true;
    const BULK_ROWS: &'static str = "SELECT json_extract(value, '$.mesh') AS w_mesh, \
           json_extract(value, '$.name') AS w_name, json_extract(value, '$.time') AS w_time, \
           json_extract(value, '$.labels') AS w_labels, \
           unhex(json_extract(value, '$.data')) AS w_data, \
           json_extract(value, '$.key_id') AS w_key_id, \
           unhex(json_extract(value, '$.write_id')) AS w_write_id, \
           json_extract(value, '$.actor') AS w_actor, \
           json_extract(value, '$.request_id') AS w_request_id, \
           json_extract(value, '$.expected') AS w_expected, \
           json_extract(value, '$.origin') AS w_origin, json_extract(value, '$.zone') AS w_zone, \
           json_extract(value, '$.display') AS w_display \
         FROM json_each($1)";
    const SEQUENCE_EVENTS: Option<&'static str> = None;
    const LAST_REVISION: &'static str = "SELECT last FROM events_sequence WHERE id = 1";
    const PRUNE_DELETED_HISTORY: &'static str = "DELETE FROM secret_versions WHERE id IN ( \
           SELECT id FROM secret_versions WHERE deleted_time < $1 LIMIT $2) RETURNING version";
    const PRUNE_EVENTS: &'static str = "WITH head AS ( \
           SELECT revision, time FROM events ORDER BY revision LIMIT $2), \
         stop AS (SELECT min(revision) AS revision FROM head WHERE time >= $1) \
         DELETE FROM events \
         WHERE revision < coalesce((SELECT revision FROM stop), \
                                   (SELECT max(revision) + 1 FROM head)) \
         RETURNING revision";

    fn contains(column: &str, needle: &str) -> String {
        format!("instr({column}, {needle}) > 0")
    }

    fn label_value(column: &str, key: &'static str) -> String {
        debug_assert!(!key.contains(['\'', '"']), "a constant label key");
        format!("json_extract({column}, '$.\"{key}\"')")
    }

    fn label_equals(column: &str, key: &str, value: &str) -> String {
        // `->>` would read a key like "kuma.io/mesh" as a JSON path; json_each compares
        // keys literally.
        format!(
            "EXISTS (SELECT 1 FROM json_each({column}) WHERE json_each.key = {key} AND json_each.value = {value})"
        )
    }
}

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
            None,
            options.max_connections.clamp(1, MAX_SQLITE_CONNECTIONS),
            options.acquire_timeout,
        );
        let mut store = Self {
            pool,
            options,
            preparing: Preparing::Named,
            changes: ChangeSignal::new(),
            writes: Default::default(),
        };
        store.check_sealing().await?;
        Ok(store)
    }
}

fn connect_options(url: &str) -> Result<SqliteConnectOptions> {
    Ok(SqliteConnectOptions::from_str(url)
        .map_err(|_| StoreError::UnsupportedUrl {
            url: super::url::redact(url),
        })?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // NORMAL is durable under WAL except for the last commits on power loss, the usual
        // trade-off for an embedded store.
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(5))
        .foreign_keys(true))
}

/// Makes the database file owner-only (0600) whatever the umask: it holds sealed secrets
/// and the audit trail in clear (who changed what). A new file is created so before SQLite
/// opens it; SQLite creates the `-wal` and `-shm` files with the database file's
/// permissions. An existing file others may read is made owner-only, with its `-wal` and
/// `-shm`, saying so in the log. Failures are left for SQLite's open to report.
fn owner_only_files(options: &SqliteConnectOptions) {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let path = options.get_filename();
    if path.as_os_str().is_empty() || path.as_os_str() == ":memory:" {
        return;
    }
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
    if created.is_ok() {
        return;
    }
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let Ok(meta) = std::fs::metadata(&file) else {
            continue;
        };
        if meta.permissions().mode() & 0o077 != 0 {
            match std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)) {
                Ok(()) => tracing::warn!(
                    file = %std::path::Path::new(&file).display(),
                    "the store's file was readable by other users: made owner-only (0600)"
                ),
                Err(e) => tracing::warn!(
                    file = %std::path::Path::new(&file).display(),
                    error = %e,
                    "the store's file is readable by other users and could not be made owner-only"
                ),
            }
        }
    }
}

async fn connect_once(connect: &SqliteConnectOptions) -> Result<SqliteConnection> {
    SqliteConnection::connect_with(connect)
        .await
        .map_err(|e| StoreError::Unavailable(crate::store::contract::DatabaseError::new(e)))
}
