//! The one place database driver errors are mapped onto [`StoreError`]s.

use crate::domain::ResourceKey;
use crate::store::contract::{DatabaseError, StorageFault, StoreError};

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
    /// Inserting the resource `key` (a Secret, GlobalSecret, Mesh or ExternalService).
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
            return StoreError::TransactionPooler(DatabaseError::new(err));
        }
        _ => {}
    }
    if is_unavailable(&err) {
        return StoreError::Unavailable(DatabaseError::new(err));
    }
    if let Some(fault) = storage_fault(&err) {
        return StoreError::Storage {
            fault,
            source: DatabaseError::new(err),
        };
    }
    if let (sqlx::Error::Database(db), Op::Create(key)) = (&err, op) {
        let constraint = db.constraint();
        match constraint {
            Some(
                "secrets_mesh_name_key"
                | "secrets_global_name_key"
                | "meshes_pkey"
                | "external_services_pkey",
            ) => {
                return StoreError::AlreadyExists(key.clone());
            }
            Some("secrets_mesh_fk" | "external_services_mesh_fk") => {
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
    StoreError::Internal(DatabaseError::new(err))
}

/// Whether `err` is a deadlock (`40P01`) or a serialization failure (`40001`): the
/// statement lost a race to another transaction, and running it again may succeed.
pub(crate) fn is_transient_conflict(err: &sqlx::Error) -> bool {
    matches!(sqlstate(err).as_deref(), Some("40P01" | "40001"))
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
