//! The SQL backends: [`PostgresStore`] and [`SqliteStore`] (one generic [`SqlStore`] over a
//! [`Dialect`], `sql/`), their connection pool, URLs and schema migrations, and
//! [`AnyStore`], either one chosen at runtime from a URL.

pub(crate) mod db_error;
mod migrations;
mod pool;
#[cfg(feature = "postgres")]
mod postgres;
mod sql;
#[cfg(feature = "sqlite")]
mod sqlite;
mod url;

pub use migrations::{MigrationReport, MigrationState, MigrationStatus};
#[cfg(feature = "postgres")]
pub use postgres::PostgresStore;
pub use sql::{
    Dialect, KeptTimes, KeyUsage, PlaintextValue, ResealBatch, Rewrapped, SealRefusal, SealedRows,
    SqlStore, StoredDataKey, TimesOf, Unreadable,
};
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;
pub use url::{Backend, PoolMode, StoreUrl};

use super::contract::feed;
use super::contract::history;
use super::contract::{
    Expect, ExternalServiceQuery, ImportCounts, MeshQuery, Page, PoolReport, Put, Result,
    SealedReads, SealedSecret, SecretQuery, SecretStore, StoreError, StoreOptions,
};
use crate::domain::{
    ExternalService, Mesh, MeshName, MeshUpdate, NewExternalService, NewMesh, NewSecret, Resource,
    ResourceName, Secret, SecretKey, SecretReferrer, SecretUpdate,
};

/// A store of either backend, chosen at runtime from a URL.
#[derive(Debug, Clone)]
pub enum AnyStore {
    /// A Postgres store.
    #[cfg(feature = "postgres")]
    Postgres(PostgresStore),
    /// An embedded SQLite store.
    #[cfg(feature = "sqlite")]
    Sqlite(SqliteStore),
}

/// Calls the same method on whichever backend `self` is.
macro_rules! delegate {
    ($self:ident, $store:ident => $call:expr) => {
        match $self {
            #[cfg(feature = "postgres")]
            AnyStore::Postgres($store) => $call.await,
            #[cfg(feature = "sqlite")]
            AnyStore::Sqlite($store) => $call.await,
        }
    };
}

/// Runs `$call` with `$store` naming the backend type of the store URL `$url`; a backend
/// this build leaves out is [`StoreError::BackendNotBuilt`].
macro_rules! on_backend_of {
    ($url:expr, $store:ident => $call:expr) => {
        match StoreUrl::parse($url)?.backend() {
            #[cfg(feature = "postgres")]
            Backend::Postgres => {
                type $store = PostgresStore;
                $call
            }
            #[cfg(feature = "sqlite")]
            Backend::Sqlite => {
                type $store = SqliteStore;
                $call
            }
            #[allow(unreachable_patterns)]
            backend => Err(StoreError::BackendNotBuilt {
                backend: backend.feature(),
            }),
        }
    };
}

#[cfg(feature = "postgres")]
impl From<PostgresStore> for AnyStore {
    fn from(store: PostgresStore) -> Self {
        AnyStore::Postgres(store)
    }
}

#[cfg(feature = "sqlite")]
impl From<SqliteStore> for AnyStore {
    fn from(store: SqliteStore) -> Self {
        AnyStore::Sqlite(store)
    }
}

impl AnyStore {
    /// Opens the store `url` names. SQLite files are created and migrated on open; a
    /// Postgres schema must already be at this build's version ([`AnyStore::migrate_up`],
    /// or [`AnyStore::migrate_and_open`] to do both).
    ///
    /// # Errors
    /// An unsupported URL, an unreachable database, or a schema gate failure.
    pub async fn open(url: &str, options: StoreOptions) -> Result<Self> {
        on_backend_of!(url, Store => Store::open(url, options).await.map(AnyStore::from))
    }

    /// Applies the migrations this build has and the database at `url` lacks, and says
    /// which: what a control plane runs at start-up (or `kuma-secrets migrate up`). Safe
    /// when several replicas start at once: on Postgres they take turns on a session
    /// advisory lock, and the later ones find nothing left to apply. A database migrated by
    /// a newer build is refused unless `tolerate_newer_schema`.
    ///
    /// # Errors
    /// [`StoreError::Schema`] (newer, dirty, modified, a failed migration),
    /// [`StoreError::Unavailable`], or [`StoreError::BadUrlParameter`] for a Postgres URL
    /// through a transaction-mode pooler (migrations need one session throughout).
    pub async fn migrate_up(url: &str, tolerate_newer_schema: bool) -> Result<MigrationReport> {
        on_backend_of!(url, Store => Store::migrate_up(url, tolerate_newer_schema).await)
    }

    /// Each migration this build has and the database at `url` holds, and its state.
    ///
    /// # Errors
    /// As [`AnyStore::migrate_up`].
    pub async fn migration_status(url: &str) -> Result<Vec<MigrationStatus>> {
        on_backend_of!(url, Store => Store::migration_status(url).await)
    }

    /// [`AnyStore::migrate_up`] (honouring `options.tolerate_newer_schema`), then
    /// [`AnyStore::open`]: a control plane's start-up in one call.
    ///
    /// # Errors
    /// As both.
    pub async fn migrate_and_open(url: &str, options: StoreOptions) -> Result<Self> {
        Self::migrate_up(url, options.tolerate_newer_schema).await?;
        Self::open(url, options).await
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

    /// Re-seals ExternalServices' inline client keys. See
    /// [`SqlStore::reseal_external_services`].
    ///
    /// # Errors
    /// As [`SqlStore::reseal_external_services`].
    pub async fn reseal_external_services(&self) -> Result<u64> {
        delegate!(self, s => s.reseal_external_services())
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
            #[cfg(feature = "postgres")]
            AnyStore::Postgres(store) => AnyStore::Postgres(store.snapshot()),
            #[cfg(feature = "sqlite")]
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

    /// The revision of the global store `global` this zone has applied. See
    /// [`SqlStore::zone_sync_revision`].
    ///
    /// # Errors
    /// The database failed.
    pub async fn zone_sync_revision(&self, global: &str) -> Result<Option<i64>> {
        delegate!(self, s => s.zone_sync_revision(global))
    }

    /// Records the revision of `global` this zone has applied. See
    /// [`SqlStore::set_zone_sync_revision`].
    ///
    /// # Errors
    /// The database failed.
    pub async fn set_zone_sync_revision(&self, global: &str, revision: i64) -> Result<()> {
        delegate!(self, s => s.set_zone_sync_revision(global, revision))
    }

    /// Every data key of envelope encryption, wrapped, oldest first. See
    /// [`SqlStore::data_keys`].
    ///
    /// # Errors
    /// The database failed.
    pub async fn data_keys(&self) -> Result<Vec<StoredDataKey>> {
        delegate!(self, s => s.data_keys())
    }

    /// Stores a new wrapped data key unless its id is taken; whether it was. See
    /// [`SqlStore::add_data_key`].
    ///
    /// # Errors
    /// The database failed.
    pub async fn add_data_key(&self, key: &StoredDataKey) -> Result<bool> {
        delegate!(self, s => s.add_data_key(key))
    }

    /// Replaces the wrapping of data keys, all or none. See [`SqlStore::rewrap_data_keys`].
    ///
    /// # Errors
    /// A key changed meanwhile (nothing is changed), or the database failed.
    pub async fn rewrap_data_keys(&self, keys: Vec<Rewrapped>) -> Result<u64> {
        delegate!(self, s => s.rewrap_data_keys(keys))
    }

    /// Closes the pool, waiting for connections to be returned.
    pub async fn close(&self) {
        delegate!(self, s => s.close())
    }
}

impl SealedReads for AnyStore {
    async fn get_sealed_secret(&self, key: &SecretKey) -> Result<SealedSecret> {
        delegate!(self, s => s.get_sealed_secret(key))
    }
    fn open_sealed(&self, sealed: &SealedSecret) -> Result<Secret> {
        match self {
            #[cfg(feature = "postgres")]
            AnyStore::Postgres(s) => s.open_sealed(sealed),
            #[cfg(feature = "sqlite")]
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
    async fn put_external_service(
        &self,
        service: NewExternalService,
        expect: Expect,
    ) -> Result<Put<ExternalService>> {
        delegate!(self, s => s.put_external_service(service, expect))
    }
    async fn get_external_service(
        &self,
        mesh: &MeshName,
        name: &ResourceName,
    ) -> Result<ExternalService> {
        delegate!(self, s => s.get_external_service(mesh, name))
    }
    async fn list_external_services(
        &self,
        query: &ExternalServiceQuery,
    ) -> Result<Page<ExternalService>> {
        delegate!(self, s => s.list_external_services(query))
    }
    async fn delete_external_service(
        &self,
        mesh: &MeshName,
        name: &ResourceName,
        v: Option<i64>,
    ) -> Result<()> {
        delegate!(self, s => s.delete_external_service(mesh, name, v))
    }
    async fn secret_referrers(&self, key: &SecretKey) -> Result<Vec<SecretReferrer>> {
        delegate!(self, s => s.secret_referrers(key))
    }
    async fn ping(&self) -> Result<()> {
        delegate!(self, s => s.ping())
    }
    fn change_signal(&self) -> Option<feed::ChangeSignal> {
        match self {
            #[cfg(feature = "postgres")]
            AnyStore::Postgres(store) => store.change_signal(),
            #[cfg(feature = "sqlite")]
            AnyStore::Sqlite(store) => store.change_signal(),
        }
    }
    fn pool_report(&self) -> Option<PoolReport> {
        match self {
            #[cfg(feature = "postgres")]
            AnyStore::Postgres(store) => store.pool_report(),
            #[cfg(feature = "sqlite")]
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
