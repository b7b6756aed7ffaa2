//! The secret store: one repository trait, [`SecretStore`], with optimistic-concurrency CRUD
//! for Secrets, GlobalSecrets and Meshes, and two backends behind it:
//!
//! - [`PostgresStore`]: production; several control-plane replicas may share one database.
//! - [`SqliteStore`]: the embedded default; one process, nothing to install.
//!
//! Both are the same generic [`SqlStore`] over a [`Dialect`] (`sql/`, one file per
//! concern): the SQL is shared text with numbered `$n` parameters, which both drivers
//! accept, and built at runtime with `query_as` rather than the compile-checked `query!`
//! macros, because one statement must serve two databases. The guard is the conformance
//! suite in `tests/store_conformance.rs`, which runs every case against both backends on
//! real databases.
//!
//! Secret create, versioned update and Mesh delete (with its `ON DELETE CASCADE`) are each
//! one SQL statement: atomic without an explicit transaction, one round trip. Writes that
//! must see other rows run in one write transaction (`BEGIN IMMEDIATE` on SQLite): a Mesh
//! write with its generated CA secrets and the check that referenced secrets exist, a
//! Secret delete with the mTLS guard (the Mesh row locked against a concurrent reference),
//! an import batch, a key-rotation batch.
//!
//! Secret data is sealed (AES-256-GCM, `crate::sealing`) before it is bound to a statement
//! and opened after a row is read, whenever the store has a keyring.

pub mod cache;
mod error;
pub mod feed;
pub mod history;
mod migrations;
mod page;
mod pool;
mod postgres;
pub mod replica;
mod sql;
mod sqlite;
mod url;
mod walk;

pub use error::{Result, SchemaError, StorageFault, StoreError};
pub use migrations::{MigrationReport, MigrationState, MigrationStatus};
pub use page::{
    Cursor, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, MeshQuery, Page, PageRequest, PageStart, SecretQuery,
    SecretScope,
};
pub use pool::PoolReport;
pub use postgres::PostgresStore;
pub use sql::{
    Dialect, KeptTimes, KeyUsage, PlaintextValue, ResealBatch, SealRefusal, SealedRows, SqlStore,
    TimesOf, Unreadable,
};
pub use sqlite::SqliteStore;
pub use url::{Backend, PoolMode, StoreUrl};
pub use walk::{MeshWalk, PageWalk, SecretWalk, Walk, WalkQuery};

use crate::domain::{
    DEFAULT_MAX_SECRET_SIZE, Mesh, MeshName, MeshUpdate, NewMesh, NewSecret, Resource, Secret,
    SecretKey, SecretUpdate,
};
use std::future::Future;
use std::time::Duration;

/// The repository an embedding control plane (or the HTTP API) works through.
///
/// Versions start at 1 and go up by exactly 1 on every change. Updates and deletes take the
/// version the caller read, so two writers can never silently overwrite each other.
pub trait SecretStore: Send + Sync {
    /// Creates a secret.
    ///
    /// # Errors
    /// [`StoreError::AlreadyExists`] if the key is taken, [`StoreError::MeshNotFound`] if a
    /// Secret's Mesh does not exist, [`StoreError::Invalid`] if the data is over the size
    /// limit, [`StoreError::Unavailable`] if the database cannot be reached.
    fn create_secret(&self, secret: NewSecret) -> impl Future<Output = Result<Secret>> + Send;

    /// Replaces a secret's data and labels if it is still at `expected_version`.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] if the secret changed since it was read,
    /// [`StoreError::NotFound`] if it is gone.
    fn update_secret(
        &self,
        key: &SecretKey,
        expected_version: i64,
        update: SecretUpdate,
    ) -> impl Future<Output = Result<Secret>> + Send;

    /// Deletes a secret, only if it is at `expected_version` when one is given.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] if it does not exist, [`StoreError::Conflict`] if it is at
    /// another version.
    fn delete_secret(
        &self,
        key: &SecretKey,
        expected_version: Option<i64>,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Creates or replaces a secret as `expect` allows, in one SQL statement: a blind put
    /// ([`Expect::Any`]) never fails because another writer got there first, and the version
    /// goes up by exactly one per accepted write. On replace, Kuma's immutable labels
    /// (`kuma.io/origin`, `kuma.io/zone`, `kuma.io/display-name`) may not change or go.
    ///
    /// # Errors
    /// [`StoreError::AlreadyExists`] for [`Expect::Absent`] on an existing secret;
    /// [`StoreError::NotFound`] or [`StoreError::Conflict`] when [`Expect::Exists`] or
    /// [`Expect::Version`] does not hold; [`StoreError::Invalid`] for a changed immutable
    /// label or oversized data; [`StoreError::MeshNotFound`].
    fn put_secret(
        &self,
        secret: NewSecret,
        expect: Expect,
    ) -> impl Future<Output = Result<Put<Secret>>> + Send;

    /// Creates or replaces a Mesh as `expect` allows, in one write transaction with its mTLS
    /// checks (a blind put is never refused because of a concurrent writer).
    ///
    /// # Errors
    /// As [`SecretStore::put_secret`], plus the mTLS violations.
    fn put_mesh(
        &self,
        mesh: NewMesh,
        expect: Expect,
    ) -> impl Future<Output = Result<Put<Mesh>>> + Send;

    /// Reads one secret.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] if it does not exist.
    fn get_secret(&self, key: &SecretKey) -> impl Future<Output = Result<Secret>> + Send;

    /// The secret as the database holds it now, past any read cache (what a GET with
    /// `Cache-Control: no-cache` asks for). A store without a cache just reads it.
    ///
    /// # Errors
    /// As [`SecretStore::get_secret`].
    fn get_secret_fresh(&self, key: &SecretKey) -> impl Future<Output = Result<Secret>> + Send {
        self.get_secret(key)
    }

    /// The current version of a secret, `None` if it does not exist. Never opens the sealed
    /// value, so it works on rows that do not open.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] if the database cannot be reached.
    fn secret_version(&self, key: &SecretKey) -> impl Future<Output = Result<Option<i64>>> + Send;

    /// Version `version` of a secret: its current version or one kept in history
    /// (`store::history`).
    ///
    /// # Errors
    /// [`StoreError::NotFound`] if the secret does not exist (deleted ones included),
    /// [`StoreError::VersionNotFound`] if that version is not kept.
    fn get_secret_version(
        &self,
        key: &SecretKey,
        version: i64,
    ) -> impl Future<Output = Result<Secret>> + Send;

    /// A secret's versions, newest first, as metadata: the current one and those kept, or
    /// a deleted secret's kept versions.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] if nothing of the secret exists.
    fn secret_versions(
        &self,
        key: &SecretKey,
    ) -> impl Future<Output = Result<Vec<history::VersionInfo>>> + Send;

    /// Writes version `version`'s data and labels as a new version (history is never
    /// rewritten), only if the secret is at `expected_version` when one is given.
    ///
    /// # Errors
    /// [`StoreError::NotFound`], [`StoreError::VersionNotFound`], [`StoreError::Conflict`].
    fn rollback_secret(
        &self,
        key: &SecretKey,
        version: i64,
        expected_version: Option<i64>,
    ) -> impl Future<Output = Result<Secret>> + Send;

    /// Brings a deleted secret back: version `version` of its history (the newest if
    /// `None`) becomes its new current version.
    ///
    /// # Errors
    /// [`StoreError::NotDeleted`] if the secret exists, [`StoreError::NotFound`] if none of
    /// it is kept, [`StoreError::VersionNotFound`] if that version is not.
    fn restore_secret(
        &self,
        key: &SecretKey,
        version: Option<i64>,
    ) -> impl Future<Output = Result<Secret>> + Send;

    /// Destroys a secret and every kept version of it now (a deleted secret's history
    /// included), with the same mTLS guard as a delete; with `expected_version`, only if
    /// the secret exists at that version.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] if nothing of the secret exists, [`StoreError::Conflict`],
    /// [`StoreError::InUse`].
    fn purge_secret(
        &self,
        key: &SecretKey,
        expected_version: Option<i64>,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Lists secrets, filtered and paginated in SQL, sorted by (mesh, name).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] if the database cannot be reached.
    fn list_secrets(
        &self,
        query: &SecretQuery,
    ) -> impl Future<Output = Result<Page<Secret>>> + Send;

    /// Creates a Mesh.
    ///
    /// # Errors
    /// [`StoreError::AlreadyExists`] if a Mesh of that name exists.
    fn create_mesh(&self, mesh: NewMesh) -> impl Future<Output = Result<Mesh>> + Send;

    /// Replaces a Mesh's spec and labels if it is still at `expected_version`.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] or [`StoreError::NotFound`], as for secrets.
    fn update_mesh(
        &self,
        name: &MeshName,
        expected_version: i64,
        update: MeshUpdate,
    ) -> impl Future<Output = Result<Mesh>> + Send;

    /// Deletes a Mesh and, in the same transaction, every Secret in it.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] or [`StoreError::Conflict`], as for secrets.
    fn delete_mesh(
        &self,
        name: &MeshName,
        expected_version: Option<i64>,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Reads one Mesh.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] if it does not exist.
    fn get_mesh(&self, name: &MeshName) -> impl Future<Output = Result<Mesh>> + Send;

    /// Lists Meshes sorted by name.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] if the database cannot be reached.
    fn list_meshes(&self, query: &MeshQuery) -> impl Future<Output = Result<Page<Mesh>>> + Send;

    /// The highest revision of the change feed so far (0 before any change): a list read
    /// after this call reflects every change up to it, so following the feed from it after
    /// listing misses nothing.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] if the database cannot be reached.
    fn current_revision(&self) -> impl Future<Output = Result<i64>> + Send;

    /// The changes after revision `after`, in commit order, at most `limit` examined,
    /// those passing `filter` returned.
    ///
    /// # Errors
    /// [`StoreError::Gone`] when retention pruned events after `after`.
    fn events_after(
        &self,
        after: i64,
        limit: u32,
        filter: &feed::EventFilter,
    ) -> impl Future<Output = Result<feed::EventPage>> + Send;

    /// Checks that the database answers (for readiness probes).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] if it does not.
    fn ping(&self) -> impl Future<Output = Result<()>> + Send;

    /// A line for the body of a readiness probe about what the store depends on besides
    /// its database (a read replica's state, say), if anything.
    fn readiness_note(&self) -> Option<String> {
        None
    }

    /// The read cache's state, for `/metrics`, if the store has one.
    fn cache_report(&self) -> Option<cache::CacheReport> {
        None
    }

    /// The connection pool's counts, for `/metrics`, if the store has one.
    fn pool_report(&self) -> Option<PoolReport> {
        None
    }

    /// Writes a batch of resources as they are given, in one transaction: each is created
    /// if missing, updated (version + 1) if its data, labels or spec differ, and left alone
    /// if equal. Running the same batch twice changes nothing the second time. Meshes a
    /// secret needs must come earlier in the batch or exist already.
    ///
    /// This is for `import` and `copy` (moving a store), not for concurrent editing: it does
    /// not take expected versions, so it overwrites whatever it finds.
    ///
    /// # Errors
    /// [`StoreError::MeshNotFound`] for a secret whose Mesh does not exist,
    /// [`StoreError::Invalid`] for oversized data, [`StoreError::AlreadyExists`] if a
    /// concurrent writer created one of the resources meanwhile; nothing of the batch is
    /// written then.
    fn import_batch(
        &self,
        items: Vec<Resource>,
    ) -> impl Future<Output = Result<ImportCounts>> + Send;
}

/// What a write expects of the resource as it stands: an HTTP precondition, checked in the
/// same statement (or transaction) as the write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Nothing: create it, or replace it whatever its version (last writer wins).
    Any,
    /// It must not exist: create only (`If-None-Match: *`).
    Absent,
    /// It must exist, at any version (`If-Match: *`).
    Exists,
    /// It must exist at this version: compare-and-swap (`If-Match: "3"`).
    Version(i64),
}

/// What a put did.
#[derive(Debug, Clone)]
pub struct Put<T> {
    /// The put created the resource (else it replaced it).
    pub created: bool,
    /// The resource as stored now.
    pub value: T,
}

/// What an import did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportCounts {
    /// Resources that did not exist.
    pub created: u64,
    /// Resources that existed with other data, labels or spec.
    pub updated: u64,
    /// Resources that existed exactly as given.
    pub unchanged: u64,
}

impl std::ops::AddAssign for ImportCounts {
    fn add_assign(&mut self, other: Self) {
        self.created += other.created;
        self.updated += other.updated;
        self.unchanged += other.unchanged;
    }
}

/// How a store is opened.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Largest pool size. Postgres: 32 covers the 32 concurrent callers of the benchmark and
    /// stays well under Postgres' default `max_connections` of 100 even with three replicas.
    /// SQLite: capped at 8 (readers run in parallel under WAL; writers queue on its lock).
    pub max_connections: u32,
    /// How long a caller waits for a pooled connection before getting `Unavailable`
    /// (Kuma's `connectionTimeout` is 5 s).
    pub acquire_timeout: Duration,
    /// Largest decoded secret, in bytes (default 1 MiB, as Kubernetes).
    pub max_secret_size: usize,
    /// Open a Postgres schema that is newer than this binary instead of refusing.
    pub tolerate_newer_schema: bool,
    /// Let a Secret be deleted while an mTLS backend of its Mesh uses it (Kuma's
    /// `store.unsafeDelete`). Off: such a delete is [`StoreError::InUse`].
    pub unsafe_delete: bool,
    /// Keys to seal secret data with (AES-256-GCM) before it reaches the database. `None`
    /// stores plaintext: the binary does that only with `--allow-plaintext-secrets`; an
    /// embedding control plane should pass a keyring.
    pub keyring: Option<std::sync::Arc<crate::sealing::Keyring>>,
    /// With a keyring, still read rows stored in plaintext (and Mesh inline CA keys stored
    /// unsealed). Only for the upgrade window between `migrate up` and `rotate-keys` on a
    /// store from before encryption at rest: otherwise a plaintext row is refused like a
    /// value that fails to open, because anyone who can write to the database could plant
    /// one (a token signing key, say).
    pub accept_plaintext_rows: bool,
    /// The store is only read from (a read replica's): its Postgres connections may go to a
    /// server that only reads. Off (the default): every new connection is checked to be
    /// writable, as libpq's `target_session_attrs=read-write`, and one that is not is
    /// refused with [`StoreError::ReadOnly`].
    pub reads_only: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_connections: 32,
            acquire_timeout: Duration::from_secs(5),
            max_secret_size: DEFAULT_MAX_SECRET_SIZE,
            tolerate_newer_schema: false,
            unsafe_delete: false,
            keyring: None,
            accept_plaintext_rows: false,
            reads_only: false,
        }
    }
}

/// Writes the [`SecretStore`] methods a wrapper passes on unchanged to the store it wraps,
/// `self.<target>` (a field, or a method that returns the store), so a wrapper spells out
/// only the methods it changes:
///
/// - `forward_store_methods! { [inner] fn get_mesh(name: &MeshName) -> Mesh; … }` calls
///   `self.inner.get_mesh(name)`;
/// - `[primary] through writing` wraps each call as `self.writing(self.primary.m(…))`;
/// - `[inner] through timed(name)` as `self.timed("m", self.inner.m(…))`.
macro_rules! forward_store_methods {
    (@one [$($target:tt)+] through $wrap:ident(name) $name:ident($($arg:ident: $ty:ty),*) $ret:ty) => {
        async fn $name(&self, $($arg: $ty),*) -> $crate::store::Result<$ret> {
            self.$wrap(stringify!($name), self.$($target)+.$name($($arg),*)).await
        }
    };
    (@one [$($target:tt)+] through $wrap:ident $name:ident($($arg:ident: $ty:ty),*) $ret:ty) => {
        async fn $name(&self, $($arg: $ty),*) -> $crate::store::Result<$ret> {
            self.$wrap(self.$($target)+.$name($($arg),*)).await
        }
    };
    (@one [$($target:tt)+] $name:ident($($arg:ident: $ty:ty),*) $ret:ty) => {
        async fn $name(&self, $($arg: $ty),*) -> $crate::store::Result<$ret> {
            self.$($target)+.$name($($arg),*).await
        }
    };
    ($target:tt through $wrap:ident(name) $(fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)+) => {
        $($crate::store::forward_store_methods!(@one $target through $wrap(name) $name($($arg: $ty),*) $ret);)+
    };
    ($target:tt through $wrap:ident $(fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)+) => {
        $($crate::store::forward_store_methods!(@one $target through $wrap $name($($arg: $ty),*) $ret);)+
    };
    ($target:tt $(fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)+) => {
        $($crate::store::forward_store_methods!(@one $target $name($($arg: $ty),*) $ret);)+
    };
}
pub(crate) use forward_store_methods;

/// A store of either backend, chosen at runtime from a URL.
#[derive(Debug, Clone)]
pub enum AnyStore {
    /// A Postgres store.
    Postgres(PostgresStore),
    /// An embedded SQLite store.
    Sqlite(SqliteStore),
}

/// Calls the same method on whichever backend `self` is.
macro_rules! delegate {
    ($self:ident, $store:ident => $call:expr) => {
        match $self {
            AnyStore::Postgres($store) => $call.await,
            AnyStore::Sqlite($store) => $call.await,
        }
    };
}

impl AnyStore {
    /// Opens the store `url` names. SQLite files are created and migrated on open; a
    /// Postgres schema must already be at this binary's version (`kuma-secrets migrate up`).
    ///
    /// # Errors
    /// An unsupported URL, an unreachable database, or a schema gate failure.
    pub async fn open(url: &str, options: StoreOptions) -> Result<Self> {
        Ok(match StoreUrl::parse(url)?.backend() {
            Backend::Postgres => AnyStore::Postgres(PostgresStore::open(url, options).await?),
            Backend::Sqlite => AnyStore::Sqlite(SqliteStore::open(url, options).await?),
        })
    }

    /// Rows per sealing key id (`None`: plaintext). See [`SqlStore::rows_per_key`].
    ///
    /// # Errors
    /// The database failed.
    pub async fn rows_per_key(&self) -> Result<Vec<KeyUsage>> {
        delegate!(self, s => s.rows_per_key())
    }

    /// Stored values that do not open. See [`SqlStore::unreadable`].
    ///
    /// # Errors
    /// The database failed.
    pub async fn unreadable(&self) -> Result<Vec<Unreadable>> {
        delegate!(self, s => s.unreadable())
    }

    /// Whether anything in the store is sealed. See [`SqlStore::holds_sealed_values`].
    ///
    /// # Errors
    /// The database failed.
    pub async fn holds_sealed_values(&self) -> Result<bool> {
        delegate!(self, s => s.holds_sealed_values())
    }

    /// Re-seals Mesh inline CA keys. See [`SqlStore::reseal_meshes`].
    ///
    /// # Errors
    /// As [`SqlStore::reseal_meshes`].
    pub async fn reseal_meshes(&self) -> Result<u64> {
        delegate!(self, s => s.reseal_meshes())
    }

    /// One batch of key rotation. See [`SqlStore::reseal_batch`].
    ///
    /// # Errors
    /// As [`SqlStore::reseal_batch`].
    pub async fn reseal_batch(
        &self,
        rows: SealedRows,
        after: i64,
        size: u32,
    ) -> Result<ResealBatch> {
        delegate!(self, s => s.reseal_batch(rows, after, size))
    }

    /// A view of this store whose reads see one point in time. See [`SqlStore::snapshot`].
    #[must_use]
    pub fn snapshot(&self) -> AnyStore {
        match self {
            AnyStore::Postgres(store) => AnyStore::Postgres(store.snapshot()),
            AnyStore::Sqlite(store) => AnyStore::Sqlite(store.snapshot()),
        }
    }

    /// Values stored in clear. See [`SqlStore::plaintext_values`].
    ///
    /// # Errors
    /// The database failed.
    pub async fn plaintext_values(&self) -> Result<Vec<PlaintextValue>> {
        delegate!(self, s => s.plaintext_values())
    }

    /// Why the plaintext values listed may not be sealed. See [`SqlStore::check_sealable`].
    ///
    /// # Errors
    /// As [`SqlStore::check_sealable`].
    pub async fn check_sealable(
        &self,
        listed: &[PlaintextValue],
    ) -> std::result::Result<(), SealRefusal> {
        delegate!(self, s => s.check_sealable(listed))
    }

    /// Seals the plaintext values listed. See [`SqlStore::seal_plaintext`].
    ///
    /// # Errors
    /// As [`SqlStore::seal_plaintext`].
    pub async fn seal_plaintext(
        &self,
        listed: &[PlaintextValue],
        batch: usize,
        progress: impl FnMut(u64) + Send,
    ) -> std::result::Result<u64, SealRefusal> {
        delegate!(self, s => s.seal_plaintext(listed, batch, progress))
    }

    /// When the store was first found fully sealed. See [`SqlStore::fully_sealed_since`].
    ///
    /// # Errors
    /// The database failed.
    pub async fn fully_sealed_since(&self) -> Result<Option<chrono::DateTime<chrono::Utc>>> {
        delegate!(self, s => s.fully_sealed_since())
    }

    /// Prunes events written before `cutoff`. See [`SqlStore::prune_events`].
    ///
    /// # Errors
    /// The database failed.
    pub async fn prune_events(
        &self,
        cutoff: chrono::DateTime<chrono::Utc>,
        batch: u32,
    ) -> Result<u64> {
        delegate!(self, s => s.prune_events(cutoff, batch))
    }

    /// Sets how many earlier versions each secret keeps. See [`SqlStore::set_max_versions`].
    ///
    /// # Errors
    /// The database failed.
    pub async fn set_max_versions(&self, limit: u32) -> Result<()> {
        delegate!(self, s => s.set_max_versions(limit))
    }

    /// Replaces a secret's kept versions. See [`SqlStore::replace_history`].
    ///
    /// # Errors
    /// As [`SqlStore::replace_history`].
    pub async fn replace_history(
        &self,
        key: &SecretKey,
        current_version: i64,
        versions: Vec<(Secret, Option<feed::Actor>)>,
    ) -> Result<u64> {
        delegate!(self, s => s.replace_history(key, current_version, versions))
    }

    /// Prunes the histories of secrets deleted before `cutoff`. See
    /// [`SqlStore::prune_deleted_history`].
    ///
    /// # Errors
    /// The database failed.
    pub async fn prune_deleted_history(
        &self,
        cutoff: chrono::DateTime<chrono::Utc>,
        batch: u32,
    ) -> Result<u64> {
        delegate!(self, s => s.prune_deleted_history(cutoff, batch))
    }

    /// Gives imported resources the times another store recorded. See
    /// [`SqlStore::keep_times`].
    ///
    /// # Errors
    /// The database failed.
    pub async fn keep_times(&self, times: Vec<KeptTimes>) -> Result<()> {
        delegate!(self, s => s.keep_times(times))
    }

    /// Closes the pool, waiting for connections to be returned.
    pub async fn close(&self) {
        delegate!(self, s => s.close())
    }
}

impl cache::SealedReads for AnyStore {
    async fn get_sealed_secret(&self, key: &SecretKey) -> Result<cache::SealedSecret> {
        delegate!(self, s => s.get_sealed_secret(key))
    }
    fn open_sealed(&self, sealed: &cache::SealedSecret) -> Result<Secret> {
        match self {
            AnyStore::Postgres(s) => s.open_sealed(sealed),
            AnyStore::Sqlite(s) => s.open_sealed(sealed),
        }
    }
}

impl SecretStore for AnyStore {
    async fn get_secret_version(&self, key: &SecretKey, version: i64) -> Result<Secret> {
        delegate!(self, s => s.get_secret_version(key, version))
    }
    async fn secret_versions(&self, key: &SecretKey) -> Result<Vec<history::VersionInfo>> {
        delegate!(self, s => s.secret_versions(key))
    }
    async fn rollback_secret(&self, key: &SecretKey, to: i64, v: Option<i64>) -> Result<Secret> {
        delegate!(self, s => s.rollback_secret(key, to, v))
    }
    async fn restore_secret(&self, key: &SecretKey, version: Option<i64>) -> Result<Secret> {
        delegate!(self, s => s.restore_secret(key, version))
    }
    async fn purge_secret(&self, key: &SecretKey, expected: Option<i64>) -> Result<()> {
        delegate!(self, s => s.purge_secret(key, expected))
    }
    async fn create_secret(&self, secret: NewSecret) -> Result<Secret> {
        delegate!(self, s => s.create_secret(secret))
    }
    async fn update_secret(&self, key: &SecretKey, v: i64, u: SecretUpdate) -> Result<Secret> {
        delegate!(self, s => s.update_secret(key, v, u))
    }
    async fn delete_secret(&self, key: &SecretKey, v: Option<i64>) -> Result<()> {
        delegate!(self, s => s.delete_secret(key, v))
    }
    async fn get_secret(&self, key: &SecretKey) -> Result<Secret> {
        delegate!(self, s => s.get_secret(key))
    }
    async fn put_secret(&self, secret: NewSecret, expect: Expect) -> Result<Put<Secret>> {
        delegate!(self, s => s.put_secret(secret, expect))
    }
    async fn put_mesh(&self, mesh: NewMesh, expect: Expect) -> Result<Put<Mesh>> {
        delegate!(self, s => s.put_mesh(mesh, expect))
    }
    async fn secret_version(&self, key: &SecretKey) -> Result<Option<i64>> {
        delegate!(self, s => s.secret_version(key))
    }
    async fn list_secrets(&self, query: &SecretQuery) -> Result<Page<Secret>> {
        delegate!(self, s => s.list_secrets(query))
    }
    async fn create_mesh(&self, mesh: NewMesh) -> Result<Mesh> {
        delegate!(self, s => s.create_mesh(mesh))
    }
    async fn update_mesh(&self, name: &MeshName, v: i64, u: MeshUpdate) -> Result<Mesh> {
        delegate!(self, s => s.update_mesh(name, v, u))
    }
    async fn delete_mesh(&self, name: &MeshName, v: Option<i64>) -> Result<()> {
        delegate!(self, s => s.delete_mesh(name, v))
    }
    async fn get_mesh(&self, name: &MeshName) -> Result<Mesh> {
        delegate!(self, s => s.get_mesh(name))
    }
    async fn list_meshes(&self, query: &MeshQuery) -> Result<Page<Mesh>> {
        delegate!(self, s => s.list_meshes(query))
    }
    async fn ping(&self) -> Result<()> {
        delegate!(self, s => s.ping())
    }
    fn pool_report(&self) -> Option<PoolReport> {
        match self {
            AnyStore::Postgres(store) => store.pool_report(),
            AnyStore::Sqlite(store) => store.pool_report(),
        }
    }
    async fn current_revision(&self) -> Result<i64> {
        delegate!(self, s => s.current_revision())
    }
    async fn events_after(
        &self,
        after: i64,
        limit: u32,
        filter: &feed::EventFilter,
    ) -> Result<feed::EventPage> {
        delegate!(self, s => s.events_after(after, limit, filter))
    }
    async fn import_batch(&self, items: Vec<Resource>) -> Result<ImportCounts> {
        delegate!(self, s => s.import_batch(items))
    }
}
