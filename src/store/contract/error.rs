//! The store's errors: [`StoreError`], and [`SchemaError`], why it refuses a database
//! schema. Both are `#[non_exhaustive]`: match the variants you act on and keep a `_` arm.
//! The database driver's error is never part of their shape: it is the
//! [`source`](std::error::Error::source) of the variants that carry a [`DatabaseError`].
//! Messages say what is wrong; what to type about it is the caller's to add (the CLI does).

use crate::domain::{ResourceKey, ValidationError};

/// Result of a store operation.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Everything a store operation can fail with. Messages follow Kuma's store errors
/// (`resource not found: type="Secret" name="x" mesh="default"`) and never contain secret
/// data or database credentials.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
        "version {version} of {key} is not kept: it was pruned by the history limit or never existed; GET …/_versions lists the versions kept"
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
    /// A write would change or remove one of Kuma's immutable labels (`kuma.io/origin`,
    /// `kuma.io/zone`, `kuma.io/display-name`) of a resource that exists.
    #[error("{0}")]
    ImmutableLabels(ValidationError),
    /// The Secret is used by an mTLS backend of its Mesh (Kuma's delete guard, and its
    /// message).
    #[error("{}", crate::domain::mtls::in_use_message(secret, mesh, backend))]
    InUse {
        /// The secret's name.
        secret: String,
        /// Its mesh.
        mesh: String,
        /// The backend using it.
        backend: String,
    },
    /// The Secret is named by other resources of its Mesh (an ExternalService's TLS): the
    /// delete guard of the table of references.
    #[error("{}", referenced_message(secret, mesh, referrers))]
    ReferencedBy {
        /// The secret's name.
        secret: String,
        /// Its mesh.
        mesh: String,
        /// Who names it, and in which field.
        referrers: Vec<crate::domain::SecretReferrer>,
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
    Unavailable(#[source] DatabaseError),
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
        source: DatabaseError,
    },
    /// The store URL names no supported backend.
    #[error("unsupported store URL {url:?}: use postgres://… or sqlite://PATH")]
    UnsupportedUrl {
        /// The URL, password redacted.
        url: String,
    },
    /// The URL names a backend this build of the library leaves out (its cargo feature,
    /// `postgres` or `sqlite`, is off).
    #[error("this build has no {backend} backend (its cargo feature `{backend}` is off)")]
    BackendNotBuilt {
        /// The backend the URL names: `postgres` or `sqlite`.
        backend: &'static str,
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
    TransactionPooler(#[source] DatabaseError),
    /// The database schema does not match this binary.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// Anything else: a bug or a broken database. The cause is logged, not shown to clients.
    #[error("internal store error")]
    Internal(#[source] DatabaseError),
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

fn missing_keys_message(key_ids: &[String]) -> String {
    let ids: Vec<String> = key_ids.iter().map(|id| format!("{id:?}")).collect();
    format!(
        "the store holds secrets sealed with key id {} not in the keyring",
        ids.join(", ")
    )
}

/// Why a store refuses its database schema.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaError {
    /// Migrations of this binary are not applied yet.
    #[error(
        "database schema is behind this build (database at version {database}, this build at {binary}): its migrations are not applied yet"
    )]
    Behind {
        /// Latest version applied to the database, 0 for none.
        database: i64,
        /// Latest version embedded in the binary.
        binary: i64,
    },
    /// The database was migrated by a newer binary.
    #[error(
        "database schema version {database} is newer than this build's latest migration {binary}: a newer kuma-secrets migrated it"
    )]
    Newer {
        /// Latest version applied to the database.
        database: i64,
        /// Latest version embedded in the binary.
        binary: i64,
    },
    /// A migration failed part-way.
    #[error(
        "migration {version} failed part-way and left the schema dirty: repair the database by hand and delete its row from _sqlx_migrations before migrating again"
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
    Migrate(#[source] DatabaseError),
}

/// What the database driver reported: the [`source`](std::error::Error::source) of
/// [`StoreError::Unavailable`], [`StoreError::Storage`], [`StoreError::Internal`] and
/// others. Its text is the driver's; its type is not part of this crate's API, but
/// [`DatabaseError::driver_error`] hands it out for downcasting (to `sqlx::Error`).
#[derive(Debug)]
pub struct DatabaseError(Box<dyn std::error::Error + Send + Sync + 'static>);

impl DatabaseError {
    /// Wraps a driver error (or, for a failure the store detects itself, a message).
    pub(crate) fn new(
        error: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Self(error.into())
    }

    /// The driver's error itself, to downcast.
    pub fn driver_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.0
    }
}

impl std::fmt::Display for DatabaseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for DatabaseError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// The delete guard's message for a secret other resources name, in the words of Kuma's
/// message for one an mTLS backend uses.
fn referenced_message(
    secret: &str,
    mesh: &str,
    referrers: &[crate::domain::SecretReferrer],
) -> String {
    let by: Vec<String> = referrers
        .iter()
        .map(|r| format!("{} {:?} ({})", r.referrer_type, r.referrer, r.field))
        .collect();
    format!(
        "The secret {secret:?} that you are trying to remove is currently in use in Mesh {mesh:?} by {}. Please remove the references before removing the secret.",
        by.join(", ")
    )
}
