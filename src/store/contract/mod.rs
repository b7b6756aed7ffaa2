//! The contract, at the ground floor of the store: the [`SecretStore`] trait every backend
//! and wrapper implements, the options a store is opened with, and the types the trait
//! names (errors, pages, change-feed events, kept versions, reports). Nothing here imports
//! from the backends or the wrappers above it.

pub mod error;
pub mod feed;
pub mod history;
pub mod page;
mod reports;
mod sealed;
pub mod walk;

pub use error::{DatabaseError, Result, SchemaError, StorageFault, StoreError};
pub use page::{
    Cursor, DEFAULT_PAGE_SIZE, ExternalServiceQuery, MAX_PAGE_SIZE, MeshQuery, Page, PageRequest,
    PageStart, SecretQuery, SecretScope,
};
pub use reports::{CacheReport, CacheStats, PoolReport};
pub use sealed::{SealedReads, SealedSecret};
pub use walk::{ExternalServiceWalk, MeshWalk, PageWalk, SecretWalk, Walk, WalkQuery};

use crate::domain::{
    DEFAULT_MAX_SECRET_SIZE, ExternalService, Mesh, MeshName, MeshUpdate, NewExternalService,
    NewMesh, NewSecret, Resource, ResourceName, Secret, SecretKey, SecretReferrer, SecretUpdate,
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

    /// Creates or replaces an ExternalService as `expect` allows, in one write transaction
    /// with its checks: every `secret:` it names must be a Secret of its Mesh (locked until
    /// commit, so a concurrent delete of it either fails or makes this write fail), its PEM
    /// must parse and its client key match its certificate; its references replace the
    /// ones it had.
    ///
    /// # Errors
    /// [`StoreError::MeshNotFound`], [`StoreError::Invalid`] with every violation, and as
    /// [`SecretStore::put_secret`] for the precondition and immutable labels.
    fn put_external_service(
        &self,
        service: NewExternalService,
        expect: Expect,
    ) -> impl Future<Output = Result<Put<ExternalService>>> + Send;

    /// Reads one ExternalService.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] if it does not exist.
    fn get_external_service(
        &self,
        mesh: &MeshName,
        name: &ResourceName,
    ) -> impl Future<Output = Result<ExternalService>> + Send;

    /// Lists ExternalServices, of one Mesh sorted by name or of all sorted by (mesh, name).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] if the database cannot be reached.
    fn list_external_services(
        &self,
        query: &ExternalServiceQuery,
    ) -> impl Future<Output = Result<Page<ExternalService>>> + Send;

    /// Deletes an ExternalService and its references, only if it is at `expected_version`
    /// when one is given.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] or [`StoreError::Conflict`], as for secrets.
    fn delete_external_service(
        &self,
        mesh: &MeshName,
        name: &ResourceName,
        expected_version: Option<i64>,
    ) -> impl Future<Output = Result<()>> + Send;

    /// The resources whose fields name the Secret `key` (its Mesh's mTLS backends,
    /// ExternalServices): the table of references the delete guard refuses on. Empty for
    /// a GlobalSecret.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] if the database cannot be reached.
    fn secret_referrers(
        &self,
        key: &SecretKey,
    ) -> impl Future<Output = Result<Vec<SecretReferrer>>> + Send;

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

    /// What wakes this store's change-feed readers (see [`watch`](crate::store::watch)):
    /// notified after the store's own writes, and on a Postgres store at other processes'
    /// commits too. `None` (the default): readers only poll. A wrapper returns the signal
    /// of the store it wraps.
    fn change_signal(&self) -> Option<feed::ChangeSignal> {
        None
    }

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
    fn cache_report(&self) -> Option<CacheReport> {
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

/// What a read replica ([`ReadReplica`](crate::store::replica::ReadReplica)) needs of a
/// store beside its reads: how far the primary's log has gone, and whether a standby has
/// replayed it.
pub trait Replication: Clone + Send + Sync + 'static {
    /// This server's current log position (a primary's), as text.
    ///
    /// # Errors
    /// The database failed (a standby has no position of its own).
    fn wal_position(&self) -> impl Future<Output = Result<String>> + Send;

    /// Whether this server, a standby, has replayed the log up to `position`.
    ///
    /// # Errors
    /// The database failed.
    fn has_replayed(&self, position: &str) -> impl Future<Output = Result<bool>> + Send;
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
    /// stores plaintext: only [`StoreOptions::allow_plaintext_secrets`] starts from it (the
    /// binary's `--allow-plaintext-secrets`); [`StoreOptions::sealed_with`] sets it.
    /// Shared with the store's clones, and replaced while it serves when data keys change
    /// (`crate::envelope::keep_data_keys`).
    pub keyring: Option<crate::sealing::SharedKeyring>,
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
    /// Check at open that the keyring has every key a stored value is sealed with (on:
    /// the default). Off only in [`StoreOptions::for_data_keys`].
    pub check_keys: bool,
}

impl StoreOptions {
    /// The default pool size: see [`StoreOptions::max_connections`].
    pub const DEFAULT_MAX_CONNECTIONS: u32 = 32;

    /// Options for a store that seals every secret value with `keyring` (AES-256-GCM)
    /// before it reaches the database, the defaults otherwise. What an embedding control
    /// plane should open.
    pub fn sealed_with(keyring: impl Into<crate::sealing::SharedKeyring>) -> Self {
        Self {
            keyring: Some(keyring.into()),
            ..Self::allow_plaintext_secrets()
        }
    }

    /// The keyring now, if the store seals.
    pub fn keyring(&self) -> Option<std::sync::Arc<crate::sealing::Keyring>> {
        self.keyring
            .as_ref()
            .map(crate::sealing::SharedKeyring::current)
    }

    /// Options for a store that keeps secret values **in clear**: anyone who can read the
    /// database, a backup of it or its disk reads every secret. The explicit choice the
    /// command line's `--allow-plaintext-secrets` makes; for tests, or a store that is only
    /// read. (There is no `Default`: a store without a keyring is never chosen by omission.)
    pub fn allow_plaintext_secrets() -> Self {
        Self {
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            acquire_timeout: Duration::from_secs(5),
            max_secret_size: DEFAULT_MAX_SECRET_SIZE,
            tolerate_newer_schema: false,
            unsafe_delete: false,
            keyring: None,
            accept_plaintext_rows: false,
            reads_only: false,
            check_keys: true,
        }
    }

    /// Options for opening a store only to read and write its data keys
    /// (`crate::envelope`), before the keyring they make exists: no keyring, and no check
    /// of sealed rows against one. Not for reading or writing secrets: such a store has no
    /// key to open or seal them with.
    pub fn for_data_keys() -> Self {
        Self {
            check_keys: false,
            max_connections: 2,
            ..Self::allow_plaintext_secrets()
        }
    }
}
