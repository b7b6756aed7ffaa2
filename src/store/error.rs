//! The store's errors (`StoreError`; `SchemaError`, why it refuses a database schema) and the
//! one place database errors are mapped onto them.

use crate::domain::{ResourceKey, ValidationError};

/// Result of a store operation.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Everything a store operation can fail with. Messages follow Kuma's store errors
/// (`resource not found: type="Secret" name="x" mesh="default"`) and never contain secret
/// data or database credentials.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No resource with this key.
    #[error("resource not found: {0}")]
    NotFound(ResourceKey),
    /// Create of a key that exists.
    #[error("resource already exists: {0}")]
    AlreadyExists(ResourceKey),
    /// The resource is not at the version the caller read.
    #[error("resource conflict: {key}: expected version {expected}, found {actual}")]
    Conflict {
        /// The resource.
        key: ResourceKey,
        /// The version the caller passed.
        expected: i64,
        /// The version stored now.
        actual: i64,
    },
    /// A version of a secret that is not kept: pruned by the history limit
    /// (`--max-versions`), or never written.
    #[error(
        "version {version} of {key} is not kept: it was pruned (see --max-versions) or never existed; GET …/_versions lists the versions kept"
    )]
    VersionNotFound {
        /// The secret.
        key: ResourceKey,
        /// The version asked for.
        version: i64,
    },
    /// A restore of a secret that exists: only a deleted secret can be restored (roll an
    /// existing one back instead).
    #[error(
        "{0} exists: only a deleted secret can be restored; use _rollback to return to an earlier version"
    )]
    NotDeleted(ResourceKey),
    /// A Secret names a Mesh that does not exist.
    #[error("mesh {mesh:?} not found")]
    MeshNotFound {
        /// The missing mesh.
        mesh: String,
    },
    /// The input breaks a rule (size limit, page size, cursor, ...).
    #[error("invalid: {0}")]
    Invalid(#[from] ValidationError),
    /// The Secret is used by an mTLS backend of its Mesh (Kuma's delete guard).
    #[error("{}", crate::domain::mtls::in_use_message(secret, mesh, backend))]
    InUse {
        /// The secret's name.
        secret: String,
        /// Its mesh.
        mesh: String,
        /// The backend using it.
        backend: String,
    },
    /// A Secret delete was refused because its Mesh's stored spec cannot be read (it does
    /// not parse, or its sealed keys do not open), so the guard cannot tell whether an mTLS
    /// backend uses the secret: it fails closed.
    #[error(
        "cannot tell whether Mesh {mesh:?} uses this secret: its stored spec cannot be read ({reason}); fix the Mesh first (or start with --unsafe-delete)"
    )]
    MeshUnreadable {
        /// The Mesh.
        mesh: String,
        /// Why its spec cannot be read.
        reason: String,
    },
    /// The change feed no longer holds the events after the asked revision (retention
    /// pruned them): list again, then follow the feed from the list's revision.
    #[error(
        "the change feed starts at revision {oldest} now: the events asked for were pruned; list again and continue from the list's revision"
    )]
    Gone {
        /// The oldest revision still kept.
        oldest: i64,
    },
    /// A sealed secret did not open: its key id is not in the keyring, or its stored value
    /// fails authentication (altered, or moved from another row). Names the secret, never
    /// its data.
    #[error("secret {key} cannot be read: {reason}")]
    Sealed {
        /// The secret.
        key: ResourceKey,
        /// Why.
        reason: crate::sealing::OpenError,
    },
    /// The store holds secrets sealed with keys that are not in the keyring: it refuses to
    /// start rather than fail on every read.
    #[error("{}", missing_keys_message(.key_ids))]
    MissingKeys {
        /// The key ids in use and missing.
        key_ids: Vec<String>,
    },
    /// Generating or checking key material failed (not expected).
    #[error("could not generate or check key material: {0}")]
    Generation(String),
    /// The database cannot be reached or refused the connection; retry later.
    #[error("store unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// The database could not store what it was given: its disk is full, its file system
    /// is read-only, or it failed an I/O (SQLite `SQLITE_FULL`, `SQLITE_IOERR`,
    /// `SQLITE_READONLY`, …; Postgres SQLSTATE classes 53 and 58). The write did not
    /// commit; retry once the cause is fixed (the store recovers by itself).
    #[error("the database cannot store data: {fault}")]
    Storage {
        /// What failed, in words an operator can act on.
        fault: StorageFault,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// The store URL names no supported backend.
    #[error("unsupported store URL {url:?}: use postgres://… or sqlite://PATH")]
    UnsupportedUrl {
        /// The URL, password redacted.
        url: String,
    },
    /// A store URL parameter has a value the store does not understand.
    #[error("store URL {url:?}: {reason}")]
    BadUrlParameter {
        /// The URL, password redacted.
        url: String,
        /// What is wrong and what to write instead.
        reason: String,
    },
    /// The database accepts only reads now: the store reached a standby, or a primary
    /// being demoted in a failover. Retry: the next connection goes to the new primary.
    #[error(
        "the database accepts only reads now (a standby, or a primary being demoted in a failover); retry shortly"
    )]
    ReadOnly,
    /// A connection pooler between the store and Postgres runs each transaction on another
    /// server connection (PgBouncer in transaction mode), and the store was not told, so its
    /// named prepared statements went missing or collided.
    #[error(
        "a connection pooler in transaction mode (PgBouncer's pool_mode = transaction) seems to sit between the store and Postgres: a named prepared statement went missing or collided with another client's; add pool_mode=transaction to the store URL"
    )]
    TransactionPooler(#[source] sqlx::Error),
    /// The database schema does not match this binary.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// Anything else: a bug or a broken database. The cause is logged, not shown to clients.
    #[error("internal store error")]
    Internal(#[source] sqlx::Error),
}

impl StoreError {
    /// True for errors a caller may retry as they are (the database was unreachable).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable(_) | StoreError::ReadOnly | StoreError::Storage { .. }
        )
    }
}

/// Why the database could not store data (see [`StoreError::Storage`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StorageFault {
    /// No space left on the device that holds the database.
    #[error("its disk is full (no space left on device)")]
    DiskFull,
    /// The database file or its file system accepts no writes.
    #[error("its files are read-only (a read-only file system, or file permissions)")]
    ReadOnlyFiles,
    /// Reading or writing the database's files failed.
    #[error("an I/O error on its files")]
    Io,
    /// The database server ran out of memory.
    #[error("it is out of memory")]
    OutOfMemory,
    /// Another resource limit of the database server (Postgres SQLSTATE class 53).
    #[error("it ran out of a resource (a server limit)")]
    OutOfResources,
}

/// Why a pool refused a new connection: the server accepts only reads. Carried as an I/O
/// error (the connection is unusable) and mapped to [`StoreError::ReadOnly`].
#[derive(Debug, thiserror::Error)]
#[error(
    "the server accepts only reads (a standby, or a primary being demoted): connection refused, as target_session_attrs=read-write would"
)]
pub(crate) struct ServerReadOnly;

impl From<ServerReadOnly> for sqlx::Error {
    fn from(refusal: ServerReadOnly) -> Self {
        sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            refusal,
        ))
    }
}

/// What a failed statement was doing, so a constraint violation can be named.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Op<'a> {
    /// Inserting the resource `key` (a Secret, GlobalSecret or Mesh).
    Create(&'a ResourceKey),
    /// Any other statement.
    Other,
}

/// Maps a database error once, here: constraint violations by constraint name (Postgres
/// reports it; SQLite does not, so its error kind stands in), connection trouble to
/// [`StoreError::Unavailable`], the rest to [`StoreError::Internal`].
pub(crate) fn map_db_error(err: sqlx::Error, op: Op<'_>) -> StoreError {
    if let sqlx::Error::Io(io) = &err
        && io
            .get_ref()
            .is_some_and(|inner| inner.is::<ServerReadOnly>())
    {
        return StoreError::ReadOnly;
    }
    match sqlstate(&err).as_deref() {
        Some(READ_ONLY_SERVER) => return StoreError::ReadOnly,
        Some(DUPLICATE_PREPARED_STATEMENT | INVALID_STATEMENT_NAME) => {
            return StoreError::TransactionPooler(err);
        }
        _ => {}
    }
    if is_unavailable(&err) {
        return StoreError::Unavailable(err);
    }
    if let Some(fault) = storage_fault(&err) {
        return StoreError::Storage { fault, source: err };
    }
    if let (sqlx::Error::Database(db), Op::Create(key)) = (&err, op) {
        let constraint = db.constraint();
        match constraint {
            Some("secrets_mesh_name_key" | "secrets_global_name_key" | "meshes_pkey") => {
                return StoreError::AlreadyExists(key.clone());
            }
            Some("secrets_mesh_fk") => {
                return StoreError::MeshNotFound {
                    mesh: key.mesh.clone().unwrap_or_default(),
                };
            }
            Some(_) => {}
            None => match db.kind() {
                sqlx::error::ErrorKind::UniqueViolation => {
                    return StoreError::AlreadyExists(key.clone());
                }
                sqlx::error::ErrorKind::ForeignKeyViolation => {
                    return StoreError::MeshNotFound {
                        mesh: key.mesh.clone().unwrap_or_default(),
                    };
                }
                _ => {}
            },
        }
    }
    StoreError::Internal(err)
}

/// SQLSTATE `read_only_sql_transaction`: a write reached a server that only reads.
const READ_ONLY_SERVER: &str = "25006";
/// SQLSTATE `duplicate_prepared_statement`: a statement name is taken on this server
/// connection (another client's, behind a pooler in transaction mode).
const DUPLICATE_PREPARED_STATEMENT: &str = "42P05";
/// SQLSTATE `invalid_sql_statement_name`: a prepared statement this connection made is not
/// on the server connection (a pooler in transaction mode switched it).
const INVALID_STATEMENT_NAME: &str = "26000";

/// The code of a database error: a Postgres SQLSTATE (five characters), or a SQLite
/// result code (digits).
fn sqlstate(err: &sqlx::Error) -> Option<std::borrow::Cow<'_, str>> {
    match err {
        sqlx::Error::Database(db) => db.code(),
        _ => None,
    }
}

/// Whether a connection that failed with `err` must not be used again: the server is
/// shutting down or gone (class 08, 57P0x), it is not the primary any more (25006), or its
/// prepared statements are not where the connection left them (42P05, 26000: a pooler in
/// transaction mode), so the next statement should open a new connection (which a proxy
/// such as HAProxy routes to the current primary). Other database errors leave the
/// connection in a known state.
pub(crate) fn ends_the_connection(err: &sqlx::Error) -> bool {
    let code = sqlstate(err);
    let code = code.as_deref().unwrap_or("");
    server_gone(code)
        || matches!(
            code,
            READ_ONLY_SERVER | DUPLICATE_PREPARED_STATEMENT | INVALID_STATEMENT_NAME
        )
}

/// Whether a Postgres SQLSTATE says the server went away: class 08 (connection exception)
/// or 57P0x (shutting down, cannot connect now).
fn server_gone(code: &str) -> bool {
    code.len() == 5 && (code.starts_with("08") || code.starts_with("57P0"))
}

/// Connection-level failures: the database is down, restarting, or out of connections.
fn is_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(_) => {
            let code = sqlstate(err);
            let code = code.as_deref().unwrap_or("");
            if code.len() == 5 {
                // Postgres SQLSTATE: the server went away, or 53300 too many connections.
                server_gone(code) || code == "53300"
            } else {
                // SQLite (extended) result code: primary 5 SQLITE_BUSY or 6 SQLITE_LOCKED,
                // left after busy_timeout ran out.
                matches!(code.parse::<u32>().map(|c| c & 0xff), Ok(5 | 6))
            }
        }
        _ => false,
    }
}

/// Whether `err` says the database could not store data: Postgres SQLSTATE class 53
/// (insufficient resources: 53100 disk full, 53200 out of memory; 53300 too many
/// connections is [`is_unavailable`]'s) and class 58 (system error: 58030 I/O error, …);
/// SQLite primary result codes 13 `SQLITE_FULL`, 10 `SQLITE_IOERR`, 8 `SQLITE_READONLY`,
/// 14 `SQLITE_CANTOPEN` and 7 `SQLITE_NOMEM`. An `ENOSPC` may reach SQLite as an I/O error
/// (`SQLITE_IOERR_WRITE`) rather than `SQLITE_FULL`, depending on which write hit it.
fn storage_fault(err: &sqlx::Error) -> Option<StorageFault> {
    let code = sqlstate(err)?;
    // Five characters: a Postgres SQLSTATE (as in `is_unavailable`); digits: SQLite's.
    if code.len() == 5 {
        return match &code[..2] {
            "53" if code == "53100" => Some(StorageFault::DiskFull),
            "53" if code == "53200" => Some(StorageFault::OutOfMemory),
            "53" => Some(StorageFault::OutOfResources),
            "58" => Some(StorageFault::Io),
            _ => None,
        };
    }
    match code.parse::<u32>().ok()? & 0xff {
        13 => Some(StorageFault::DiskFull),
        10 => Some(StorageFault::Io),
        8 | 14 => Some(StorageFault::ReadOnlyFiles),
        7 => Some(StorageFault::OutOfMemory),
        _ => None,
    }
}

fn missing_keys_message(key_ids: &[String]) -> String {
    let ids: Vec<String> = key_ids.iter().map(|id| format!("{id:?}")).collect();
    format!(
        "the store holds secrets sealed with key id {} not in the keyring: pass the keyring that has {} with --encryption-keys (KUMA_SECRETS_ENCRYPTION_KEYS)",
        ids.join(", "),
        if ids.len() == 1 { "it" } else { "them" }
    )
}

/// Why a store refuses its database schema.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// Migrations of this binary are not applied yet.
    #[error(
        "database schema is behind this binary (database at version {database}, binary at {binary}); run \"kuma-secrets migrate up --store URL\" first"
    )]
    Behind {
        /// Latest version applied to the database, 0 for none.
        database: i64,
        /// Latest version embedded in the binary.
        binary: i64,
    },
    /// The database was migrated by a newer binary.
    #[error(
        "database schema version {database} is newer than this binary's latest migration {binary}; run a newer kuma-secrets, or pass --tolerate-newer-schema"
    )]
    Newer {
        /// Latest version applied to the database.
        database: i64,
        /// Latest version embedded in the binary.
        binary: i64,
    },
    /// A migration failed part-way.
    #[error(
        "migration {version} failed part-way and left the schema dirty; repair the database by hand, delete its row from _sqlx_migrations, then rerun \"kuma-secrets migrate up\""
    )]
    Dirty {
        /// The failed migration.
        version: i64,
    },
    /// An applied migration is not the one this binary embeds.
    #[error(
        "migration {version} applied to the database differs from the one in this binary; this binary does not belong to this database"
    )]
    Modified {
        /// The differing migration.
        version: i64,
    },
    /// Running a migration failed.
    #[error("migration failed: {0}")]
    Migrate(#[source] sqlx::migrate::MigrateError),
}
