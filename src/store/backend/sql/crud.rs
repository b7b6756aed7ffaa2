//! The [`SecretStore`] contract on SQL: secret and Mesh CRUD, each write one statement or
//! one write transaction, secret data sealed before it is bound and opened after it is read.

use super::group_commit::{SecretWrite, Written};
use super::history::PURGE_HISTORY;
use super::list::{list_meshes, list_secrets};
use super::rows::{ListedMeshRow, ListedSecretRow, MeshRow, SecretRow};
use super::statements::bind_key;
use super::statements::query_as;
use super::statements::{
    DELETE_MESH, DELETE_SECRET, GET_MESH, GET_MESH_VERSION, GET_SECRET, GET_SECRET_VERSION,
    INSERT_MESH, INSERT_SECRET, STAMP_MESH, STAMP_MESH_SECRETS, STAMP_SECRET, UPDATE_MESH,
    UPDATE_SECRET,
};
use super::tx::{RunOnStore, TxError};
use super::{SqlStore, StoredData, labels_json, missed, now, seal, writer};
use crate::domain::{
    ExternalService, Labels, Mesh, MeshName, MeshSpec, MeshUpdate, NewExternalService, NewMesh,
    NewSecret, Resource, ResourceKey, ResourceName, Secret, SecretKey, SecretReferrer,
    SecretUpdate,
};
use crate::store::backend::db_error::Op;
use crate::store::contract::history::VersionInfo;
use crate::store::contract::page::{ExternalServiceQuery, MeshQuery, Page, PageStart, SecretQuery};
use crate::store::contract::{DatabaseError, SealedReads, SealedSecret};
use crate::store::contract::{Expect, ImportCounts, Put, Result, SecretStore, StoreError};
use chrono::{DateTime, Utc};
use sqlx::query::QueryAs;
use sqlx::types::Json;

impl_for_sql_databases! {
impl [SqlStore<DB>] {
    pub(super) async fn stored_secret_version(&self, key: &SecretKey) -> Result<Option<i64>> {
        let row = bind_key(query_as::<DB, (i64,)>(GET_SECRET_VERSION.for_key(key)), key)
            .fetch_optional_via(self, Op::Other)
            .await?;
        Ok(row.map(|(v,)| v))
    }

    /// The stored row of the secret `key`, not opened.
    pub(super) async fn get_secret_row(&self, key: &SecretKey) -> Result<SecretRow> {
        bind_key(query_as::<DB, SecretRow>(GET_SECRET.for_key(key)), key)
            .fetch_optional_via(self, Op::Other)
            .await?
            .ok_or_else(|| StoreError::NotFound(key.resource_key()))
    }

    async fn mesh_version(&self, name: &MeshName) -> Result<Option<i64>> {
        let row = query_as::<DB, (i64,)>(GET_MESH_VERSION)
            .bind(name.as_str().to_owned())
            .fetch_optional_via(self, Op::Other)
            .await?;
        Ok(row.map(|(v,)| v))
    }

    /// `INSERT_SECRET` with its parameters bound: the one place their order lives.
    pub(super) fn insert_secret_query(
        key: &SecretKey,
        time: DateTime<Utc>,
        labels: &Labels,
        stored: StoredData,
    ) -> QueryAs<'static, DB, SecretRow, DB::Arguments> {
        query_as::<DB, SecretRow>(INSERT_SECRET)
            .bind(key.name().as_str().to_owned())
            .bind(key.mesh().map(|m| m.as_str().to_owned()))
            .bind(time)
            .bind(labels_json(labels))
            .bind(stored.bytes)
            .bind(stored.key_id)
            .bind(stored.write_id)
            .bind(writer().0)
            .bind(writer().1)
    }

    /// `UPDATE_SECRET` with its parameters bound (the mesh last, for a Secret).
    pub(super) fn update_secret_query(
        key: &SecretKey,
        stored: StoredData,
        labels: &Labels,
        time: DateTime<Utc>,
        expected_version: i64,
    ) -> QueryAs<'static, DB, SecretRow, DB::Arguments> {
        let query = query_as::<DB, SecretRow>(UPDATE_SECRET.for_key(key))
            .bind(stored.bytes)
            .bind(stored.key_id)
            .bind(stored.write_id)
            .bind(labels_json(labels))
            .bind(time)
            .bind(expected_version)
            .bind(writer().0)
            .bind(writer().1);
        bind_key(query, key)
    }

    /// Deletes a secret in a transaction, after recording who deletes it on the row (its
    /// delete event copies them): the deleted version, if it was at `expected_version`.
    ///
    /// With `purge`, the secret's kept versions go too (a deleted secret's included).
    /// Refused with `NotFound` (rolling the stamp back) when nothing of the secret went.
    async fn stamp_and_delete(
        tx: &mut DB::Connection,
        key: &SecretKey,
        expected_version: Option<i64>,
        purge: bool,
    ) -> super::tx::TxResult<(), StoreError> {
        let (actor, request_id) = writer();
        let stamp = query_as::<DB, (i64,)>(STAMP_SECRET.for_key(key))
            .bind(actor)
            .bind(request_id);
        bind_key(stamp, key).fetch_optional(&mut *tx).await?;
        let delete = query_as::<DB, (i64,)>(DELETE_SECRET.for_key(key)).bind(expected_version);
        let deleted = bind_key(delete, key).fetch_optional(&mut *tx).await?;
        let purged = if purge && (deleted.is_some() || expected_version.is_none()) {
            bind_key(query_as::<DB, (i64,)>(PURGE_HISTORY.for_key(key)), key)
                .fetch_all(&mut *tx)
                .await?
        } else {
            Vec::new()
        };
        if deleted.is_none() && purged.is_empty() {
            // Nothing went: the stamp goes too (rolled back), so the row keeps its writer.
            return Err(TxError::Refused(StoreError::NotFound(key.resource_key())));
        }
        Ok(())
    }

    /// The body of [`SecretStore::delete_secret`] and [`SecretStore::purge_secret`] for a
    /// write committed alone: [`SqlStore::delete_secret_in`] in a transaction of its own.
    pub(super) async fn delete_secret_with(&self, key: &SecretKey, expected_version: Option<i64>, purge: bool) -> Result<()> {
        let guarded = !self.options.unsafe_delete;
        let key = key.clone();
        self.in_write_transaction::<_, StoreError, _>(Op::Other, move |tx| {
            Box::pin(async move { Self::delete_secret_in(tx, &key, expected_version, purge, guarded).await })
        })
        .await
    }

    /// A delete of the secret `key` (and with `purge` of its kept versions) in the
    /// transaction `tx`, alone or in a batch (`group_commit.rs`); `guarded`: refused while
    /// a Mesh or an ExternalService uses it.
    ///
    /// The guard reads the table of references (Mesh mTLS backends, ExternalServices) with
    /// the Secret row locked: a write adding a reference locks the Secret first, so it either
    /// commits first (and we see its row) or waits for us (and then finds the Secret gone).
    /// The Mesh row is locked too, so a Mesh update that skips validation (and so locks no
    /// Secret) is ordered with the delete as well.
    pub(super) async fn delete_secret_in(
        tx: &mut DB::Connection,
        key: &SecretKey,
        expected_version: Option<i64>,
        purge: bool,
        guarded: bool,
    ) -> super::tx::TxResult<(), StoreError> {
        if let (Some(mesh), true) = (key.mesh(), guarded) {
            query_as::<DB, (i64, Json<MeshSpec>)>(DB::LOCK_MESH_SHARED)
                .bind(mesh.as_str().to_owned())
                .fetch_optional(&mut *tx)
                .await?;
            let referrers = Self::lock_and_read_referrers(tx, key).await?;
            if let Some(refusal) = in_use(key, mesh, referrers) {
                return Err(TxError::Refused(refusal));
            }
        }
        match Self::stamp_and_delete(tx, key, expected_version, purge).await {
            Err(TxError::Refused(StoreError::NotFound(_))) => {
                let stored = bind_key(query_as::<DB, (i64,)>(GET_SECRET_VERSION.for_key(key)), key)
                    .fetch_optional(&mut *tx)
                    .await?;
                Err(TxError::Refused(missed(
                    key.resource_key(),
                    expected_version,
                    stored.map(|(version,)| version),
                )))
            }
            other => other,
        }
    }

    /// `INSERT_MESH` with its parameters bound.
    pub(super) fn insert_mesh_query(
        name: &MeshName,
        time: DateTime<Utc>,
        labels: &Labels,
        spec: MeshSpec,
    ) -> QueryAs<'static, DB, MeshRow, DB::Arguments> {
        query_as::<DB, MeshRow>(INSERT_MESH)
            .bind(name.as_str().to_owned())
            .bind(time)
            .bind(labels_json(labels))
            .bind(Json(spec))
            .bind(writer().0)
            .bind(writer().1)
    }

    /// `UPDATE_MESH` with its parameters bound.
    pub(super) fn update_mesh_query(
        name: &MeshName,
        spec: MeshSpec,
        labels: &Labels,
        time: DateTime<Utc>,
        expected_version: i64,
    ) -> QueryAs<'static, DB, MeshRow, DB::Arguments> {
        query_as::<DB, MeshRow>(UPDATE_MESH)
            .bind(Json(spec))
            .bind(labels_json(labels))
            .bind(time)
            .bind(expected_version)
            .bind(name.as_str().to_owned())
            .bind(writer().0)
            .bind(writer().1)
    }
}
}

/// The delete guard's refusal for Secret `key` of `mesh`, named by `referrers`: Kuma's
/// message when an mTLS backend of the Mesh uses it, ours naming every referrer otherwise.
fn in_use(key: &SecretKey, mesh: &MeshName, referrers: Vec<SecretReferrer>) -> Option<StoreError> {
    let backend = referrers
        .iter()
        .filter(|r| r.referrer_type == super::mtls::MESH_REFERRER)
        .find_map(|r| crate::domain::mtls::backend_of_field(&r.field));
    match backend {
        Some(backend) => Some(StoreError::InUse {
            secret: key.name().as_str().to_owned(),
            mesh: mesh.as_str().to_owned(),
            backend,
        }),
        None if referrers.is_empty() => None,
        None => Some(StoreError::ReferencedBy {
            secret: key.name().as_str().to_owned(),
            mesh: mesh.as_str().to_owned(),
            referrers,
        }),
    }
}

impl_for_sql_databases! {
impl [SealedReads for SqlStore<DB>] {
    async fn get_sealed_secret(&self, key: &SecretKey) -> Result<SealedSecret> {
        let row = self.get_secret_row(key).await?;
        Ok(SealedSecret::new(row.version(), row.memory_size(), row))
    }

    fn open_sealed(&self, sealed: &SealedSecret) -> Result<Secret> {
        let row: &SecretRow = sealed.row().ok_or_else(|| {
            StoreError::Internal(DatabaseError::new("a sealed row read by another kind of store"))
        })?;
        row.open_shared(self.options.keyring().as_deref(), self.options.accept_plaintext_rows)
    }
}
}

impl_for_sql_databases! {
impl [SecretStore for SqlStore<DB>] {
    #[tracing::instrument(level = "debug", skip_all, fields(db = DB::NAME, key = %secret.key))]
    async fn create_secret(&self, secret: NewSecret) -> Result<Secret> {
        let _wake_watchers = self.changes.notify_on_drop();
        secret.data.check_size(self.options.max_secret_size)?;
        let key = secret.key.resource_key();
        let stored = seal(self.options.keyring().as_deref(), &secret.key, secret.data.expose());
        let row = Self::insert_secret_query(&secret.key, now(), &secret.labels, stored)
            .fetch_one_via(self, Op::Create(&key))
            .await?;
        Ok(row.with_data(secret.data))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(db = DB::NAME, key = %key, expected_version))]
    async fn update_secret(
        &self,
        key: &SecretKey,
        expected_version: i64,
        update: SecretUpdate,
    ) -> Result<Secret> {
        let _wake_watchers = self.changes.notify_on_drop();
        update.data.check_size(self.options.max_secret_size)?;
        let stored = seal(self.options.keyring().as_deref(), key, update.data.expose());
        let row = Self::update_secret_query(key, stored, &update.labels, now(), expected_version)
            .fetch_optional_via(self, Op::Other)
            .await?;
        match row {
            Some(row) => Ok(row.with_data(update.data)),
            None => Err(missed(
                key.resource_key(),
                Some(expected_version),
                self.stored_secret_version(key).await?,
            )),
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(db = DB::NAME, key = %key, expected_version))]
    async fn delete_secret(&self, key: &SecretKey, expected_version: Option<i64>) -> Result<()> {
        let _wake_watchers = self.changes.notify_on_drop();
        let write = SecretWrite::Delete { key: key.clone(), expected_version, purge: false };
        self.write_secret(write).await.map(drop)
    }

    async fn purge_secret(&self, key: &SecretKey, expected_version: Option<i64>) -> Result<()> {
        let _wake_watchers = self.changes.notify_on_drop();
        let write = SecretWrite::Delete { key: key.clone(), expected_version, purge: true };
        self.write_secret(write).await.map(drop)
    }

    async fn get_secret_version(&self, key: &SecretKey, version: i64) -> Result<Secret> {
        self.get_secret_version_with(key, version).await
    }

    async fn secret_versions(&self, key: &SecretKey) -> Result<Vec<VersionInfo>> {
        self.secret_versions_with(key).await
    }

    async fn rollback_secret(&self, key: &SecretKey, version: i64, expected_version: Option<i64>) -> Result<Secret> {
        let _wake_watchers = self.changes.notify_on_drop();
        self.rollback_secret_with(key, version, expected_version).await
    }

    async fn restore_secret(&self, key: &SecretKey, version: Option<i64>) -> Result<Secret> {
        let _wake_watchers = self.changes.notify_on_drop();
        self.restore_secret_with(key, version).await
    }

    async fn put_secret(&self, secret: NewSecret, expect: Expect) -> Result<Put<Secret>> {
        let _wake_watchers = self.changes.notify_on_drop();
        match self.write_secret(SecretWrite::Put { secret, expect }).await? {
            Written::Put(put) => Ok(put),
            Written::Deleted => unreachable!("a put's answer is a put"),
        }
    }

    async fn put_mesh(&self, mesh: NewMesh, expect: Expect) -> Result<Put<Mesh>> {
        let _wake_watchers = self.changes.notify_on_drop();
        self.put_mesh_with(mesh, expect).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(db = DB::NAME, mesh = %service.mesh, name = %service.name))]
    async fn put_external_service(&self, service: NewExternalService, expect: Expect) -> Result<Put<ExternalService>> {
        let _wake_watchers = self.changes.notify_on_drop();
        self.put_external_service_with(service, expect).await
    }

    async fn get_external_service(&self, mesh: &MeshName, name: &ResourceName) -> Result<ExternalService> {
        self.get_external_service_with(mesh, name).await
    }

    async fn list_external_services(&self, query: &ExternalServiceQuery) -> Result<Page<ExternalService>> {
        self.list_external_services_with(query).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(db = DB::NAME, mesh = %mesh, name = %name))]
    async fn delete_external_service(&self, mesh: &MeshName, name: &ResourceName, expected_version: Option<i64>) -> Result<()> {
        let _wake_watchers = self.changes.notify_on_drop();
        self.delete_external_service_with(mesh, name, expected_version).await
    }

    async fn secret_referrers(&self, key: &SecretKey) -> Result<Vec<SecretReferrer>> {
        self.secret_referrers_with(key).await
    }

    async fn secret_version(&self, key: &SecretKey) -> Result<Option<i64>> {
        self.stored_secret_version(key).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(db = DB::NAME, key = %key))]
    async fn get_secret(&self, key: &SecretKey) -> Result<Secret> {
        self.get_secret_row(key)
            .await?
            .open(self.options.keyring().as_deref(), self.options.accept_plaintext_rows)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(db = DB::NAME, scope = ?query.scope))]
    async fn list_secrets(&self, query: &SecretQuery) -> Result<Page<Secret>> {
        let first_page = query.page.start() == &PageStart::Offset(0);
        let known_total = query.known_total;
        let mut page = self.run_list(
            list_secrets::<DB>(query),
            // A known total needs no count, even for an empty page past the end.
            first_page || known_total.is_some(),
            |row: ListedSecretRow| {
                let total = row.total;
                Ok((row.row.open(self.options.keyring().as_deref(), self.options.accept_plaintext_rows)?, total))
            },
            |s: &Secret| {
                (
                    s.key.mesh().map(|m| m.as_str().to_owned()),
                    s.key.name().as_str().to_owned(),
                )
            },
            query.page.size(),
            query.page.offset(),
        )
        .await?;
        if let Some(known) = known_total
            && page.items.is_empty()
            && !first_page
        {
            page.total = known;
        }
        Ok(page)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(db = DB::NAME, mesh = %mesh.name))]
    async fn create_mesh(&self, mesh: NewMesh) -> Result<Mesh> {
        let _wake_watchers = self.changes.notify_on_drop();
        Ok(self.put_mesh_with(mesh, Expect::Absent).await?.value)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(db = DB::NAME, mesh = %name, expected_version))]
    async fn update_mesh(
        &self,
        name: &MeshName,
        expected_version: i64,
        update: MeshUpdate,
    ) -> Result<Mesh> {
        let _wake_watchers = self.changes.notify_on_drop();
        let mesh = NewMesh {
            name: name.clone(),
            spec: update.spec,
            labels: update.labels,
        };
        Ok(self.put_mesh_with(mesh, Expect::Version(expected_version)).await?.value)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(db = DB::NAME, mesh = %name, expected_version))]
    async fn delete_mesh(&self, name: &MeshName, expected_version: Option<i64>) -> Result<()> {
        let _wake_watchers = self.changes.notify_on_drop();
        let mesh = name.clone();
        let deleted = self
            .in_write_transaction::<_, StoreError, _>(Op::Other, move |tx| {
                Box::pin(async move {
                    // Who deletes, on the Mesh and on the secrets its delete cascades to.
                    let (actor, request_id) = writer();
                    for stamp in [STAMP_MESH_SECRETS, super::external_services::STAMP_MESH_EXTERNAL_SERVICES, STAMP_MESH] {
                        query_as::<DB, (i64,)>(stamp)
                            .bind(actor.clone())
                            .bind(request_id.clone())
                            .bind(mesh.as_str().to_owned())
                            .fetch_optional(&mut *tx)
                            .await?;
                    }
                    Ok(query_as::<DB, (i64,)>(DELETE_MESH)
                        .bind(expected_version)
                        .bind(mesh.as_str().to_owned())
                        .fetch_optional(&mut *tx)
                        .await?)
                })
            })
            .await?;
        if deleted.is_some() {
            return Ok(());
        }
        Err(missed(
            ResourceKey::mesh(name),
            expected_version,
            self.mesh_version(name).await?,
        ))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(db = DB::NAME, mesh = %name))]
    async fn get_mesh(&self, name: &MeshName) -> Result<Mesh> {
        query_as::<DB, MeshRow>(GET_MESH)
            .bind(name.as_str().to_owned())
            .fetch_optional_via(self, Op::Other)
            .await?
            .ok_or_else(|| StoreError::NotFound(ResourceKey::mesh(name)))?
            .open(self.options.keyring().as_deref())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(db = DB::NAME))]
    async fn list_meshes(&self, query: &MeshQuery) -> Result<Page<Mesh>> {
        let first_page = query.page.start() == &PageStart::Offset(0);
        self.run_list(
            list_meshes::<DB>(query),
            first_page,
            |row: ListedMeshRow| {
                let total = row.total;
                Ok((row.row.open(self.options.keyring().as_deref())?, total))
            },
            |m: &Mesh| (None, m.name.as_str().to_owned()),
            query.page.size(),
            query.page.offset(),
        )
        .await
    }

    async fn current_revision(&self) -> Result<i64> {
        self.sequence_events().await
    }

    async fn events_after(&self, after: i64, limit: u32, filter: &crate::store::contract::feed::EventFilter) -> Result<crate::store::contract::feed::EventPage> {
        self.events_after_with(after, limit, filter).await
    }

    /// Checks that the database answers and, unless the store is only read from, that it
    /// accepts writes ([`StoreError::ReadOnly`] on a standby or a demoted primary).
    async fn ping(&self) -> Result<()> {
        let (read_only,) = query_as::<DB, (String,)>(DB::READ_ONLY)
            .fetch_one_via(self, Op::Other)
            .await?;
        if read_only != "off" && !self.options.reads_only {
            return Err(StoreError::ReadOnly);
        }
        Ok(())
    }

    fn change_signal(&self) -> Option<crate::store::contract::feed::ChangeSignal> {
        Some(self.changes.clone())
    }

    fn pool_report(&self) -> Option<crate::store::contract::PoolReport> {
        let (write_batches, batched_writes, bulk_writes) = self.writes.batch_counts();
        Some(crate::store::contract::PoolReport {
            write_batches,
            batched_writes,
            bulk_writes,
            write_conflicts: self.writes.conflicts(),
            ..self.pool.report()
        })
    }

    #[tracing::instrument(level = "debug", skip_all, fields(db = DB::NAME, items = items.len()))]
    async fn import_batch(&self, items: Vec<Resource>) -> Result<ImportCounts> {
        let _wake_watchers = self.changes.notify_on_drop();
        self.import(items).await
    }
}
}
