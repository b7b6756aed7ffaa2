//! [`SqlStore`]: the one implementation of [`SecretStore`], generic over the database.
//! The two backends differ only in how they connect and migrate (`postgres.rs`,
//! `sqlite.rs`) and in the two SQL fragments of [`Dialect`].

use super::error::{Op, map_db_error};
use super::page::{Cursor, MeshQuery, Page, PageStart, SecretQuery};
use super::pool::ConnectionPool;
use super::sql::{
    self, Bind, DELETE_MESH, DELETE_SECRET, GET_MESH, GET_MESH_VERSION, GET_SECRET,
    GET_SECRET_VERSION, INSERT_MESH, INSERT_SECRET, ListStatements, ListedMeshRow, ListedSecretRow,
    MeshRow, RESEAL_MESH, RESEAL_ROW, ROWS_AFTER, ROWS_PER_KEY, ROWS_TO_RESEAL, SealedRow,
    SecretRow, Statement, UPDATE_MESH, UPDATE_SECRET, open_value,
};
use super::{ImportCounts, Result, SecretStore, StoreError, StoreOptions};
use crate::domain::mtls::{DataSource, Mtls, builtin_ca_names};
use crate::domain::{
    Labels, Mesh, MeshName, MeshSpec, MeshUpdate, NewMesh, NewSecret, Resource, ResourceKey,
    ResourceName, Secret, SecretKey, SecretUpdate, ValidationError,
};
use crate::sealing::{Binding, Keyring, OpenError, WriteId};
use chrono::{DateTime, SubsecRound, Utc};
use sqlx::query::QueryAs;
use sqlx::types::Json;
use sqlx::{AssertSqlSafe, Database, Encode, Executor, FromRow, IntoArguments, Type};
use std::collections::BTreeMap;
use std::fmt;

/// What differs between the SQL dialects the store speaks.
pub trait Dialect: Database {
    /// `column` contains the text parameter `needle` (literally, no wildcards).
    fn contains(column: &str, needle: &str) -> String;
    /// The JSON object `column` has key `key` with string value `value` (both parameters).
    fn label_equals(column: &str, key: &str, value: &str) -> String;
    /// Starts a transaction that will write. SQLite must take the write lock up front
    /// (`BEGIN IMMEDIATE`): a deferred transaction that reads, then writes after another
    /// writer committed, fails instead of waiting.
    const BEGIN_WRITE: &'static str;
    /// `$1` name: a Mesh's version and spec, locked against updates until commit
    /// (Postgres `FOR SHARE`; SQLite's write transaction already excludes other writers).
    const LOCK_MESH_SHARED: &'static str;
    /// `$1` name: a Mesh's version and spec, locked for an update.
    const LOCK_MESH_EXCLUSIVE: &'static str;
    /// `$1` mesh, `$2` name: whether a Secret exists, locked against deletion until commit.
    const LOCK_SECRET_SHARED: &'static str;
    /// Appended to a `SELECT` of one row in a write transaction to lock it for the update
    /// that follows (Postgres `FOR UPDATE`; SQLite's write transaction already excludes
    /// other writers, so nothing).
    const FOR_UPDATE: &'static str;
}

/// A store on a sqlx pool of database `DB`. See [`super::PostgresStore`] and
/// [`super::SqliteStore`] for how each is opened.
pub struct SqlStore<DB: Database> {
    pub(crate) pool: ConnectionPool<DB::Connection>,
    pub(crate) options: StoreOptions,
}

impl<DB: Database> Clone for SqlStore<DB> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            options: self.options.clone(),
        }
    }
}

impl<DB: Database> fmt::Debug for SqlStore<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlStore")
            .field("database", &DB::NAME)
            .field("max_connections", &self.pool.max_connections())
            .field("idle_connections", &self.pool.idle())
            .field("options", &self.options)
            .finish()
    }
}

impl<DB: Database> SqlStore<DB> {
    /// Closes the pool: idle connections now, connections in use when their calls end.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// The current time at the microsecond precision both databases keep, so a record read back
/// equals the record a write returned.
fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

fn labels_json(labels: &crate::domain::Labels) -> Json<BTreeMap<String, String>> {
    Json(labels.as_map().clone())
}

/// What one [`SqlStore::reseal_batch`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResealBatch {
    /// The id to continue after.
    pub last_id: i64,
    /// Rows now sealed with the active key.
    pub resealed: u64,
    /// Rows changed concurrently (and so sealed by that write).
    pub skipped: u64,
    /// No rows remain after this batch.
    pub finished: bool,
}

/// What [`SqlStore::prepare_mtls`] found: CAs to store, secrets that must still exist.
#[derive(Default)]
struct MtlsPlan {
    builtin: Vec<BuiltinCa>,
    /// Builtin CA pairs found in place: they must still be there when the Mesh commits.
    builtin_present: Vec<(String, String)>,
    required: Vec<String>,
}

/// Why a Mesh write's transaction refused to commit.
enum MeshRefusal {
    /// A store-level refusal (not found, conflict, a stored value that does not open).
    Store(StoreError),
    /// An mTLS rule is broken: report it.
    Invalid(ValidationError),
    /// A builtin CA pair seen before the transaction was deleted meanwhile: plan again
    /// (generating a fresh pair) and retry.
    CaVanished(String),
}

impl From<MeshRefusal> for StoreError {
    fn from(refusal: MeshRefusal) -> Self {
        match refusal {
            MeshRefusal::Store(e) => e,
            MeshRefusal::Invalid(e) => StoreError::Invalid(e),
            MeshRefusal::CaVanished(name) => StoreError::Invalid(ValidationError::single(
                "mtls",
                format!(
                    "the builtin CA secret {name:?} was deleted while the Mesh was being written; retry"
                ),
            )),
        }
    }
}

/// How often an import batch runs again after a concurrent writer created one of its
/// resources between the batch's read and its insert.
const IMPORT_ATTEMPTS: usize = 5;

/// The checks every Mesh spec passes before it is stored, by the API or by an import: the
/// mTLS section's structure with Kuma's messages, and no NUL character in any string
/// (Postgres cannot store one).
fn check_mesh_spec(
    name: &MeshName,
    spec: &MeshSpec,
) -> std::result::Result<Option<Mtls>, ValidationError> {
    crate::domain::reject_nul_in_json("", &serde_json::Value::Object(spec.clone()))?;
    Mtls::of(spec, name)
}

/// How often a Mesh write re-plans when a concurrent delete removed a builtin CA pair it
/// was about to rely on.
const MTLS_ATTEMPTS: usize = 3;

/// A generated builtin CA: (secret name, PEM) of its certificate and key.
struct BuiltinCa {
    cert: (String, Vec<u8>),
    key: (String, Vec<u8>),
}

/// What one write stores for a secret's data: the bytes, the id of the key that sealed
/// them and the write's random id (both `None`: stored as given, when the store has no
/// keyring).
struct StoredData {
    bytes: Vec<u8>,
    key_id: Option<String>,
    write_id: Option<Vec<u8>>,
}

/// Seals `data` of secret `key` for a new write.
fn seal(keyring: Option<&Keyring>, key: &SecretKey, data: &[u8]) -> StoredData {
    match keyring {
        Some(keyring) => {
            let write = WriteId::random();
            let (key_id, bytes) = keyring.seal(&Binding::Secret { key, write }, data);
            StoredData {
                bytes,
                key_id: Some(key_id),
                write_id: Some(write.to_vec()),
            }
        }
        None => StoredData {
            bytes: data.to_vec(),
            key_id: None,
            write_id: None,
        },
    }
}

/// `spec` of Mesh `mesh` as stored: its inline CA keys sealed when there is a keyring.
fn seal_spec(keyring: Option<&Keyring>, mesh: &MeshName, spec: &MeshSpec) -> MeshSpec {
    let mut stored = spec.clone();
    if let Some(keyring) = keyring {
        crate::sealing::seal_mesh_spec(keyring, mesh.as_str(), &mut stored);
    }
    stored
}

/// How many secrets a key id seals (`key_id` `None`: plaintext rows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyUsage {
    /// The key id, `None` for plaintext rows.
    pub key_id: Option<String>,
    /// Rows sealed with it.
    pub rows: u64,
    /// Of those, rows still in seal format 1 (not bound to their write): `rotate-keys`
    /// rewrites them.
    pub format_1: u64,
}

/// A stored resource whose value does not open, for `rotate-keys --status`.
#[derive(Debug)]
pub struct Unreadable {
    /// The resource.
    pub key: ResourceKey,
    /// Why.
    pub reason: OpenError,
}

/// A stored Mesh spec with its inline CA keys opened, or the error naming the Mesh.
fn open_spec_with(
    keyring: Option<&Keyring>,
    accept_plaintext: bool,
    mesh: &MeshName,
    mut stored: MeshSpec,
) -> Result<MeshSpec> {
    crate::sealing::open_mesh_spec(keyring, accept_plaintext, mesh.as_str(), &mut stored).map_err(
        |reason| StoreError::Sealed {
            key: ResourceKey::mesh(mesh),
            reason,
        },
    )?;
    Ok(stored)
}

/// Kuma's data-source load error for a missing secret.
fn load_error(name: &str, mesh: &MeshName) -> String {
    format!(
        "could not load data: resource not found: type=\"Secret\" name={name:?} mesh={:?}",
        mesh.as_str()
    )
}

/// Labels of a generated CA secret: Kuma's computed ones for the mesh.
fn builtin_ca_labels(mesh: &MeshName) -> Labels {
    Labels::from_stored(
        [("kuma.io/mesh".to_owned(), mesh.as_str().to_owned())]
            .into_iter()
            .collect(),
    )
}

/// After an UPDATE or DELETE guarded by version touched no row: the row is gone
/// (`NotFound`) or at another version (`Conflict`).
fn missed(key: ResourceKey, expected: Option<i64>, actual: Option<i64>) -> StoreError {
    match (expected, actual) {
        (Some(expected), Some(actual)) => StoreError::Conflict {
            key,
            expected,
            actual,
        },
        _ => StoreError::NotFound(key),
    }
}

/// Emits `impl<DB> … where <bounds>` with the one list of bounds the store needs from a
/// sqlx database: the value types it binds and the rows it decodes. Postgres and SQLite
/// both meet them; writing them once keeps the two impl blocks below from drifting.
macro_rules! impl_for_sql_databases {
    (impl [$($head:tt)*] { $($body:tt)* }) => {
        impl<DB> $($head)*
        where
            DB: Dialect,
            for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
            DB::Arguments: IntoArguments<DB>,
            for<'q> String: Encode<'q, DB> + Type<DB>,
            for<'q> Option<String>: Encode<'q, DB> + Type<DB>,
            for<'q> i64: Encode<'q, DB> + Type<DB>,
            for<'q> Option<i64>: Encode<'q, DB> + Type<DB>,
            for<'q> Vec<u8>: Encode<'q, DB> + Type<DB>,
            for<'q> Option<Vec<u8>>: Encode<'q, DB> + Type<DB>,
            for<'q> DateTime<Utc>: Encode<'q, DB> + Type<DB>,
            for<'q> Json<BTreeMap<String, String>>: Encode<'q, DB> + Type<DB>,
            for<'q> Json<MeshSpec>: Encode<'q, DB> + Type<DB>,
            for<'r> SecretRow: FromRow<'r, DB::Row>,
            for<'r> ListedSecretRow: FromRow<'r, DB::Row>,
            for<'r> MeshRow: FromRow<'r, DB::Row>,
            for<'r> ListedMeshRow: FromRow<'r, DB::Row>,
            for<'r> (i64,): FromRow<'r, DB::Row>,
            for<'r> (i64, Json<MeshSpec>): FromRow<'r, DB::Row>,
            for<'r> (String, i64): FromRow<'r, DB::Row>,
            for<'r> (String, i64, i64): FromRow<'r, DB::Row>,
            for<'r> (String, i64, Json<MeshSpec>): FromRow<'r, DB::Row>,
            for<'r> SealedRow: FromRow<'r, DB::Row>,
        {
            $($body)*
        }
    };
}

impl_for_sql_databases! {
impl [SqlStore<DB>] {
    async fn stored_secret_version(&self, key: &SecretKey) -> Result<Option<i64>> {
        let mut query = sqlx::query_as::<DB, (i64,)>(GET_SECRET_VERSION.for_key(key))
            .bind(key.name().as_str().to_owned());
        if let Some(mesh) = key.mesh() {
            query = query.bind(mesh.as_str().to_owned());
        }
        let row = query
            .fetch_optional_via(self, Op::Other)
            .await?;
        Ok(row.map(|(v,)| v))
    }

    async fn mesh_version(&self, name: &MeshName) -> Result<Option<i64>> {
        let row = sqlx::query_as::<DB, (i64,)>(GET_MESH_VERSION)
            .bind(name.as_str().to_owned())
            .fetch_optional_via(self, Op::Other)
            .await?;
        Ok(row.map(|(v,)| v))
    }

    /// `INSERT_SECRET` with its parameters bound: the one place their order lives.
    fn insert_secret_query(
        key: &SecretKey,
        time: DateTime<Utc>,
        labels: &Labels,
        stored: StoredData,
    ) -> QueryAs<'static, DB, SecretRow, DB::Arguments> {
        sqlx::query_as::<DB, SecretRow>(INSERT_SECRET)
            .bind(key.name().as_str().to_owned())
            .bind(key.mesh().map(|m| m.as_str().to_owned()))
            .bind(time)
            .bind(labels_json(labels))
            .bind(stored.bytes)
            .bind(stored.key_id)
            .bind(stored.write_id)
    }

    /// `UPDATE_SECRET` with its parameters bound (the mesh last, for a Secret).
    fn update_secret_query(
        key: &SecretKey,
        stored: StoredData,
        labels: &Labels,
        time: DateTime<Utc>,
        expected_version: i64,
    ) -> QueryAs<'static, DB, SecretRow, DB::Arguments> {
        let query = sqlx::query_as::<DB, SecretRow>(UPDATE_SECRET.for_key(key))
            .bind(stored.bytes)
            .bind(stored.key_id)
            .bind(stored.write_id)
            .bind(labels_json(labels))
            .bind(time)
            .bind(expected_version)
            .bind(key.name().as_str().to_owned());
        match key.mesh() {
            Some(mesh) => query.bind(mesh.as_str().to_owned()),
            None => query,
        }
    }

    /// `INSERT_MESH` with its parameters bound.
    fn insert_mesh_query(
        name: &MeshName,
        time: DateTime<Utc>,
        labels: &Labels,
        spec: MeshSpec,
    ) -> QueryAs<'static, DB, MeshRow, DB::Arguments> {
        sqlx::query_as::<DB, MeshRow>(INSERT_MESH)
            .bind(name.as_str().to_owned())
            .bind(time)
            .bind(labels_json(labels))
            .bind(Json(spec))
    }

    /// `UPDATE_MESH` with its parameters bound.
    fn update_mesh_query(
        name: &MeshName,
        spec: MeshSpec,
        labels: &Labels,
        time: DateTime<Utc>,
        expected_version: i64,
    ) -> QueryAs<'static, DB, MeshRow, DB::Arguments> {
        sqlx::query_as::<DB, MeshRow>(UPDATE_MESH)
            .bind(Json(spec))
            .bind(labels_json(labels))
            .bind(time)
            .bind(expected_version)
            .bind(name.as_str().to_owned())
    }

    /// Rows per key id that sealed them (`None`: plaintext), for `rotate-keys --status`
    /// and the start-up check.
    ///
    /// # Errors
    /// The database failed.
    pub async fn rows_per_key(&self) -> Result<Vec<KeyUsage>> {
        let rows = sqlx::query_as::<DB, (String, i64, i64)>(ROWS_PER_KEY)
            .fetch_all_via(self, Op::Other)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(id, n, format_1)| KeyUsage {
                key_id: (!id.is_empty()).then_some(id),
                rows: u64::try_from(n).unwrap_or(0),
                format_1: u64::try_from(format_1).unwrap_or(0),
            })
            .collect())
    }

    /// Every Mesh's name, version and stored spec (inline CA keys still sealed). Meshes are
    /// few (one per mesh of a control plane), so this reads them all.
    async fn stored_mesh_specs(&self) -> Result<Vec<(String, i64, Json<MeshSpec>)>> {
        sqlx::query_as::<DB, (String, i64, Json<MeshSpec>)>(
            "SELECT name, version, spec FROM meshes ORDER BY name",
        )
        .fetch_all_via(self, Op::Other)
        .await
    }

    /// Key ids in use: by secrets, and by Mesh inline CA keys.
    async fn key_ids_in_use(&self) -> Result<Vec<String>> {
        let mut ids: Vec<String> = self
            .rows_per_key()
            .await?
            .into_iter()
            .filter_map(|usage| usage.key_id)
            .collect();
        for (_, _, Json(spec)) in self.stored_mesh_specs().await? {
            ids.extend(crate::sealing::mesh_spec_key_ids(&spec).0);
        }
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    /// Whether anything in the store is sealed (a store that is must never get a freshly
    /// generated keyring in place of a lost one).
    ///
    /// # Errors
    /// The database failed.
    pub async fn holds_sealed_values(&self) -> Result<bool> {
        Ok(!self.key_ids_in_use().await?.is_empty())
    }

    /// Secrets and Meshes whose sealed values do not open with this store's keyring
    /// (altered, moved, sealed with a key it lacks, or plaintext while it has a keyring),
    /// for `rotate-keys --status`. Reads every row, in batches.
    ///
    /// # Errors
    /// The database failed.
    pub async fn unreadable(&self) -> Result<Vec<Unreadable>> {
        let keyring = self.options.keyring.as_deref();
        let mut found = Vec::new();
        let mut after = 0;
        loop {
            let rows = sqlx::query_as::<DB, SealedRow>(ROWS_AFTER)
                .bind(after)
                .bind(500_i64)
                .fetch_all_via(self, Op::Other)
                .await?;
            let Some(last) = rows.last() else { break };
            after = last.id;
            for row in rows {
                let key = row.key();
                if let Err(reason) = open_value(
                    &key,
                    &row.data,
                    row.key_id.as_deref(),
                    row.write_id.as_deref(),
                    keyring,
                    false,
                ) {
                    found.push(Unreadable {
                        key: key.resource_key(),
                        reason,
                    });
                }
            }
        }
        for (name, _, Json(mut spec)) in self.stored_mesh_specs().await? {
            if let Err(reason) =
                crate::sealing::open_mesh_spec(keyring, false, &name, &mut spec)
            {
                found.push(Unreadable {
                    key: ResourceKey::mesh(&MeshName::from_stored(name)),
                    reason,
                });
            }
        }
        Ok(found)
    }

    /// Refuses a keyring that lacks a key id some row is sealed with (or no keyring when
    /// any row is sealed): better to stop at start-up, naming the ids, than fail every read.
    ///
    /// # Errors
    /// [`StoreError::MissingKeys`].
    pub async fn check_keyring(&self) -> Result<()> {
        let keyring = self.options.keyring.as_deref();
        let missing: Vec<String> = self
            .key_ids_in_use()
            .await?
            .into_iter()
            .filter(|id| !keyring.is_some_and(|k| k.contains(id)))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(StoreError::MissingKeys { key_ids: missing })
        }
    }

    /// Re-seals with the active key the next `size` rows after id `after` that are sealed
    /// with another key or not at all, in one transaction. Each row is written only if its
    /// version is still the one read, so a concurrent write (which seals with the active
    /// key itself) is never overwritten; its version and times do not change.
    ///
    /// # Errors
    /// No keyring, a row that does not open (named), or the database failed.
    pub async fn reseal_batch(&self, after: i64, size: u32) -> Result<ResealBatch> {
        let Some(keyring) = self.options.keyring.clone() else {
            return Err(StoreError::Invalid(ValidationError::single(
                "encryption-keys",
                "rotating keys needs a keyring",
            )));
        };
        self.in_write_transaction(Op::Other, move |tx| {
            Box::pin(async move {
                let rows = sqlx::query_as::<DB, SealedRow>(ROWS_TO_RESEAL)
                    .bind(after)
                    .bind(keyring.active_id().to_owned())
                    .bind(i64::from(size))
                    .fetch_all(&mut *tx)
                    .await?;
                let mut batch = ResealBatch {
                    last_id: after,
                    resealed: 0,
                    skipped: 0,
                    finished: rows.len() < size as usize,
                };
                for row in rows {
                    batch.last_id = row.id;
                    let key = row.key();
                    // Plaintext rows are sealed here whatever `accept_plaintext_rows` says:
                    // that is how a store from before encryption at rest gets sealed.
                    let opened = open_value(
                        &key,
                        &row.data,
                        row.key_id.as_deref(),
                        row.write_id.as_deref(),
                        Some(&keyring),
                        true,
                    );
                    let plaintext = match opened {
                        Ok(plaintext) => zeroize::Zeroizing::new(plaintext),
                        Err(reason) => {
                            return Ok(Err(StoreError::Sealed {
                                key: key.resource_key(),
                                reason,
                            }));
                        }
                    };
                    let stored = seal(Some(&keyring), &key, &plaintext);
                    let written = sqlx::query_as::<DB, (i64,)>(RESEAL_ROW)
                        .bind(stored.bytes)
                        .bind(stored.key_id)
                        .bind(stored.write_id)
                        .bind(row.id)
                        .bind(row.version)
                        .fetch_optional(&mut *tx)
                        .await?;
                    if written.is_some() {
                        batch.resealed += 1;
                    } else {
                        batch.skipped += 1;
                    }
                }
                Ok(Ok(batch))
            })
        })
        .await
    }

    /// Re-seals with the active key every Mesh whose inline CA keys are sealed with another
    /// key or stored unsealed; each Mesh only if its version is still the one read (its
    /// version and times do not change). Returns how many Meshes were rewritten.
    ///
    /// # Errors
    /// No keyring, a Mesh whose keys do not open (named), or the database failed.
    pub async fn reseal_meshes(&self) -> Result<u64> {
        let Some(keyring) = self.options.keyring.clone() else {
            return Err(StoreError::Invalid(ValidationError::single(
                "encryption-keys",
                "rotating keys needs a keyring",
            )));
        };
        let mut resealed = 0;
        for (name, version, Json(stored)) in self.stored_mesh_specs().await? {
            let (ids, plaintext) = crate::sealing::mesh_spec_key_ids(&stored);
            if !plaintext && ids.iter().all(|id| id == keyring.active_id()) {
                continue;
            }
            let mut spec = stored;
            crate::sealing::open_mesh_spec(Some(&keyring), true, &name, &mut spec).map_err(
                |reason| StoreError::Sealed {
                    key: ResourceKey::mesh(&MeshName::from_stored(name.clone())),
                    reason,
                },
            )?;
            let mesh = MeshName::from_stored(name);
            let written = sqlx::query_as::<DB, (i64,)>(RESEAL_MESH)
                .bind(Json(seal_spec(Some(&keyring), &mesh, &spec)))
                .bind(mesh.as_str().to_owned())
                .bind(version)
                .fetch_optional_via(self, Op::Other)
                .await?;
            resealed += u64::from(written.is_some());
        }
        Ok(resealed)
    }

    /// Everything about a Mesh's mTLS that needs reading or computing before its write
    /// transaction: the provided CAs loaded and checked (unless `skipValidation`), and a
    /// fresh CA for every builtin backend whose secrets are missing. Key generation and
    /// certificate parsing run on the blocking pool, off the executor.
    async fn prepare_mtls(&self, mesh: &MeshName, mtls: Option<&Mtls>) -> Result<MtlsPlan> {
        let mut plan = MtlsPlan::default();
        let Some(mtls) = mtls else {
            return Ok(plan);
        };
        for backend in mtls.builtin_backends() {
            let (cert, key) = builtin_ca_names(mesh, &backend.name);
            let mut present = 0;
            for name in [&cert, &key] {
                let key = SecretKey::secret(mesh.clone(), ResourceName::from_stored(name.clone()));
                if self.stored_secret_version(&key).await?.is_some() {
                    present += 1;
                }
            }
            if present == 2 {
                plan.builtin_present.push((cert, key));
                continue;
            }
            let (for_mesh, backend_name) = (mesh.clone(), backend.name.clone());
            let generated = tokio::task::spawn_blocking(move || {
                crate::ca::generate_builtin_ca(&for_mesh, &backend_name)
            })
            .await
            .map_err(|e| StoreError::Generation(e.to_string()))?
            .map_err(|e| StoreError::Generation(e.to_string()))?;
            plan.builtin.push(BuiltinCa {
                cert: (cert, generated.cert_pem.into_bytes()),
                key: (key, generated.key_pem.into_bytes()),
            });
        }
        if mtls.skip_validation {
            return Ok(plan);
        }
        let mut errors = ValidationError::default();
        for (i, backend) in mtls.backends.iter().enumerate() {
            let (Some(cert), Some(key)) = (&backend.cert, &backend.key) else {
                continue;
            };
            let conf = format!("mtls.backends[{i}].conf");
            let mut loaded = Vec::new();
            for (field, source) in [("cert", cert), ("key", key)] {
                match source {
                    DataSource::Inline(bytes) => loaded.push(Some(bytes.clone())),
                    DataSource::File(_) => {
                        errors.push(
                            format!("{conf}.{field}"),
                            "could not load data: file data sources are not read by kuma-secrets; use secret or inline, or set skipValidation",
                        );
                        loaded.push(None);
                    }
                    DataSource::Secret(name) => {
                        let found = match ResourceName::parse(name) {
                            Ok(parsed) => {
                                let key = SecretKey::secret(mesh.clone(), parsed);
                                match self.get_secret(&key).await {
                                    Ok(secret) => Some(secret.data.expose().to_vec()),
                                    Err(StoreError::NotFound(_)) => None,
                                    Err(other) => return Err(other),
                                }
                            }
                            Err(_) => None,
                        };
                        if found.is_none() {
                            let why = load_error(name, mesh);
                            errors.push(format!("{conf}.cert"), why.clone());
                            errors.push(format!("{conf}.key"), why);
                        } else {
                            plan.required.push(name.clone());
                        }
                        loaded.push(found);
                    }
                }
            }
            if let [Some(cert), Some(key)] = &loaded[..] {
                let (cert, key, path) = (cert.clone(), key.clone(), conf.clone());
                let checked = tokio::task::spawn_blocking(move || {
                    crate::ca::validate_provided_ca(&cert, &key, &path)
                })
                .await
                .map_err(|e| StoreError::Generation(e.to_string()))?;
                if let Err(violations) = checked {
                    errors.violations.extend(violations.violations);
                }
            }
        }
        if errors.is_empty() {
            Ok(plan)
        } else {
            Err(StoreError::Invalid(errors))
        }
    }

    /// Inside a Mesh's write transaction: stores the builtin CAs that are still missing,
    /// and checks that every secret a provided backend references still exists, locking
    /// it so a concurrent delete waits for this commit (and then sees the reference).
    async fn apply_mtls_plan(
        tx: &mut DB::Connection,
        keyring: Option<&Keyring>,
        mesh: &MeshName,
        plan: MtlsPlan,
        time: DateTime<Utc>,
    ) -> std::result::Result<std::result::Result<(), MeshRefusal>, sqlx::Error> {
        // A pair seen before the transaction must still be there, locked against deletion
        // until commit; a concurrent delete that won the race sends us back to planning.
        for (cert, key) in plan.builtin_present {
            for name in [cert, key] {
                let exists = sqlx::query_as::<DB, (i64,)>(DB::LOCK_SECRET_SHARED)
                    .bind(mesh.as_str().to_owned())
                    .bind(name.clone())
                    .fetch_optional(&mut *tx)
                    .await?;
                if exists.is_none() {
                    return Ok(Err(MeshRefusal::CaVanished(name)));
                }
            }
        }
        for ca in plan.builtin {
            let mut present = 0;
            for (name, _) in [&ca.cert, &ca.key] {
                present += sqlx::query_as::<DB, (i64,)>(DB::LOCK_SECRET_SHARED)
                    .bind(mesh.as_str().to_owned())
                    .bind(name.clone())
                    .fetch_optional(&mut *tx)
                    .await?
                    .is_some() as u8;
            }
            if present == 2 {
                // Created meanwhile by a concurrent write: never regenerated.
                continue;
            }
            for (name, pem) in [ca.cert, ca.key] {
                // A lone half of a pair is useless: replace it with the new pair's half.
                let stale = SecretKey::secret(mesh.clone(), ResourceName::from_stored(name.clone()));
                sqlx::query_as::<DB, (i64,)>(DELETE_SECRET.for_key(&stale))
                    .bind(None::<i64>)
                    .bind(name.clone())
                    .bind(mesh.as_str().to_owned())
                    .fetch_optional(&mut *tx)
                    .await?;
                let stored = seal(keyring, &stale, &pem);
                Self::insert_secret_query(&stale, time, &builtin_ca_labels(mesh), stored)
                    .fetch_one(&mut *tx)
                    .await?;
            }
        }
        let mut errors = ValidationError::default();
        for name in plan.required {
            let exists = sqlx::query_as::<DB, (i64,)>(DB::LOCK_SECRET_SHARED)
                .bind(mesh.as_str().to_owned())
                .bind(name.clone())
                .fetch_optional(&mut *tx)
                .await?;
            if exists.is_none() {
                errors.push("mtls", load_error(&name, mesh));
            }
        }
        Ok(if errors.is_empty() { Ok(()) } else { Err(MeshRefusal::Invalid(errors)) })
    }

    /// Runs `body` in a write transaction on a pooled connection; commits if it returns
    /// `Ok(Ok(_))`, rolls back otherwise. `Ok(Err(_))` carries a domain refusal decided
    /// inside the transaction; `Err(_)` is a database error (mapped for `op`).
    async fn in_write_transaction<T, F>(&self, op: Op<'_>, body: F) -> Result<T>
    where
        F: for<'c> FnOnce(
            &'c mut DB::Connection,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = std::result::Result<Result<T>, sqlx::Error>> + Send + 'c>,
        >,
    {
        self.in_write_transaction_with(op, body).await?
    }

    /// As [`Self::in_write_transaction`], with the body's refusals of any type `E`.
    async fn in_write_transaction_with<T, E, F>(&self, op: Op<'_>, body: F) -> Result<std::result::Result<T, E>>
    where
        F: for<'c> FnOnce(
            &'c mut DB::Connection,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = std::result::Result<std::result::Result<T, E>, sqlx::Error>> + Send + 'c>,
        >,
    {
        let mut conn = self.pool.acquire().await.map_err(|e| map_db_error(e, op))?;
        let result = async {
            let mut tx = sqlx::Connection::begin_with(conn.conn(), AssertSqlSafe(DB::BEGIN_WRITE)).await?;
            let outcome = body(&mut tx).await?;
            if outcome.is_ok() {
                tx.commit().await?;
            } else {
                tx.rollback().await?;
            }
            Ok(outcome)
        }
        .await;
        conn.finish(result).map_err(|e| map_db_error(e, op))
    }

    /// The body of [`SecretStore::import_batch`], on one connection, in one write
    /// transaction. Each existing row is read locked (`FOR UPDATE` on Postgres; SQLite's
    /// write transaction excludes other writers), so a concurrent API write waits for the
    /// batch instead of changing the row between its read and its update. On a constraint
    /// violation, `failed` names the resource being inserted, so the error maps to
    /// `AlreadyExists` or `MeshNotFound` for it.
    async fn import_in_transaction(
        conn: &mut DB::Connection,
        keyring: Option<&Keyring>,
        items: Vec<Resource>,
        failed: &mut Option<ResourceKey>,
    ) -> std::result::Result<ImportCounts, sqlx::Error> {
        let mut tx = sqlx::Connection::begin_with(conn, AssertSqlSafe(DB::BEGIN_WRITE)).await?;
        let mut counts = ImportCounts::default();
        let time = now();
        for item in items {
            match item {
                Resource::Mesh(mesh) => {
                    let existing = sqlx::query_as::<DB, MeshRow>(AssertSqlSafe(format!("{GET_MESH}{}", DB::FOR_UPDATE)))
                        .bind(mesh.name.as_str().to_owned())
                        .fetch_optional(&mut *tx)
                        .await?;
                    let stored = seal_spec(keyring, &mesh.name, &mesh.spec);
                    // A stored Mesh whose keys do not open is overwritten: the import is
                    // the authority here.
                    let existing = existing.map(|row| {
                        let version = row.version();
                        row.open(keyring, false).map_err(|_| version)
                    });
                    match existing {
                        None => {
                            *failed = Some(ResourceKey::mesh(&mesh.name));
                            Self::insert_mesh_query(&mesh.name, time, &mesh.labels, stored)
                                .fetch_one(&mut *tx)
                                .await?;
                            *failed = None;
                            counts.created += 1;
                        }
                        Some(Ok(current)) if current.spec == mesh.spec && current.labels == mesh.labels => {
                            counts.unchanged += 1;
                        }
                        Some(current) => {
                            let version = current.map_or_else(|version| version, |c| c.meta.version);
                            Self::update_mesh_query(&mesh.name, stored, &mesh.labels, time, version)
                                .fetch_one(&mut *tx)
                                .await?;
                            counts.updated += 1;
                        }
                    }
                }
                Resource::Secret(secret) => {
                    let key = &secret.key;
                    let get = format!("{}{}", GET_SECRET.for_key(key), DB::FOR_UPDATE);
                    let mut get = sqlx::query_as::<DB, SecretRow>(AssertSqlSafe(get))
                        .bind(key.name().as_str().to_owned());
                    if let Some(mesh) = key.mesh() {
                        get = get.bind(mesh.as_str().to_owned());
                    }
                    // A stored row that does not open (altered, plaintext, or sealed with a
                    // key this keyring lacks) is overwritten: the import is the authority.
                    let existing = get
                        .fetch_optional(&mut *tx)
                        .await?
                        .map(|row| {
                            let version = row.version();
                            row.open(keyring, false).map_err(|_| version)
                        });
                    match existing {
                        None => {
                            *failed = Some(key.resource_key());
                            let stored = seal(keyring, key, secret.data.expose());
                            Self::insert_secret_query(key, time, &secret.labels, stored)
                                .fetch_one(&mut *tx)
                                .await?;
                            *failed = None;
                            counts.created += 1;
                        }
                        Some(Ok(current))
                            if current.data.expose() == secret.data.expose()
                                && current.labels == secret.labels =>
                        {
                            counts.unchanged += 1;
                        }
                        Some(current) => {
                            let version = current.map_or_else(|version| version, |c| c.meta.version);
                            let stored = seal(keyring, key, secret.data.expose());
                            Self::update_secret_query(key, stored, &secret.labels, time, version)
                                .fetch_one(&mut *tx)
                                .await?;
                            counts.updated += 1;
                        }
                    }
                }
            }
        }
        tx.commit().await?;
        Ok(counts)
    }

    /// Runs a list: the page statement, then the count statement only if the page is
    /// empty (an empty page carries no `total` column).
    async fn run_list<Row, Item>(
        &self,
        statements: ListStatements,
        first_page: bool,
        split: impl Fn(Row) -> Result<(Item, i64)>,
        cursor_of: impl Fn(&Item) -> (Option<String>, String),
        size: u32,
        offset: u64,
    ) -> Result<Page<Item>>
    where
        for<'r> Row: FromRow<'r, DB::Row> + Send + Unpin,
    {
        let ListStatements { page, count } = statements;
        let rows = bind_all(sqlx::query_as::<DB, Row>(AssertSqlSafe(page.text)), page.binds)
            .fetch_all_via(self, Op::Other)
            .await?;
        let mut total = 0;
        let mut items = Vec::with_capacity(rows.len());
        for row in rows {
            let (item, row_total) = split(row)?;
            total = row_total;
            items.push(item);
        }
        if items.is_empty() && !first_page {
            let Statement { text, binds } = count;
            let (count,) = bind_all(sqlx::query_as::<DB, (i64,)>(AssertSqlSafe(text)), binds)
                .fetch_one_via(self, Op::Other)
                .await?;
            total = count;
        }
        let size = size as usize;
        let next = if items.len() > size {
            items.truncate(size);
            let (mesh, name) = cursor_of(items.last().expect("page is not empty"));
            Some(Cursor { offset: offset + size as u64, mesh, name })
        } else {
            None
        };
        Ok(Page { items, total: u64::try_from(total).unwrap_or(0), next })
    }
}
}

/// Runs a query on a pooled connection of the store and maps its errors: the one place
/// statements meet the pool (see `pool.rs` for why the connection is handed back only
/// after a clean finish).
trait RunOnStore<DB: Database, O> {
    async fn fetch_optional_via(self, store: &SqlStore<DB>, op: Op<'_>) -> Result<Option<O>>;
    async fn fetch_one_via(self, store: &SqlStore<DB>, op: Op<'_>) -> Result<O>;
    async fn fetch_all_via(self, store: &SqlStore<DB>, op: Op<'_>) -> Result<Vec<O>>;
}

impl<'q, DB, O> RunOnStore<DB, O> for QueryAs<'q, DB, O, DB::Arguments>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    O: for<'r> FromRow<'r, DB::Row> + Send + Unpin,
{
    async fn fetch_optional_via(self, store: &SqlStore<DB>, op: Op<'_>) -> Result<Option<O>> {
        let mut conn = store
            .pool
            .acquire()
            .await
            .map_err(|e| map_db_error(e, op))?;
        let result = self.fetch_optional(conn.conn()).await;
        conn.finish(result).map_err(|e| map_db_error(e, op))
    }

    async fn fetch_one_via(self, store: &SqlStore<DB>, op: Op<'_>) -> Result<O> {
        let mut conn = store
            .pool
            .acquire()
            .await
            .map_err(|e| map_db_error(e, op))?;
        let result = self.fetch_one(conn.conn()).await;
        conn.finish(result).map_err(|e| map_db_error(e, op))
    }

    async fn fetch_all_via(self, store: &SqlStore<DB>, op: Op<'_>) -> Result<Vec<O>> {
        let mut conn = store
            .pool
            .acquire()
            .await
            .map_err(|e| map_db_error(e, op))?;
        let result = self.fetch_all(conn.conn()).await;
        conn.finish(result).map_err(|e| map_db_error(e, op))
    }
}

/// Binds list parameters in order.
fn bind_all<'q, DB, O>(
    mut query: sqlx::query::QueryAs<'q, DB, O, DB::Arguments>,
    binds: Vec<Bind>,
) -> sqlx::query::QueryAs<'q, DB, O, DB::Arguments>
where
    DB: Database,
    String: Encode<'q, DB> + Type<DB>,
    i64: Encode<'q, DB> + Type<DB>,
{
    for bind in binds {
        query = match bind {
            Bind::Text(text) => query.bind(text),
            Bind::Int(int) => query.bind(int),
        };
    }
    query
}

impl_for_sql_databases! {
impl [SecretStore for SqlStore<DB>] {
    #[tracing::instrument(level = "debug", skip_all, fields(db = DB::NAME, key = %secret.key))]
    async fn create_secret(&self, secret: NewSecret) -> Result<Secret> {
        secret.data.check_size(self.options.max_secret_size)?;
        let key = secret.key.resource_key();
        let stored = seal(self.options.keyring.as_deref(), &secret.key, secret.data.expose());
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
        update.data.check_size(self.options.max_secret_size)?;
        let stored = seal(self.options.keyring.as_deref(), key, update.data.expose());
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
        let deleted = match (key.mesh(), self.options.unsafe_delete) {
            (Some(mesh), false) => {
                // The guard and the delete in one transaction, with the Mesh row locked:
                // a Mesh update adding a reference either commits first (and we see it)
                // or waits for us (and then finds the secret gone).
                let (key, mesh) = (key.clone(), mesh.clone());
                let keyring = self.options.keyring.clone();
                let accept_plaintext = self.options.accept_plaintext_rows;
                self.in_write_transaction(Op::Other, move |tx| {
                    Box::pin(async move {
                        let spec = sqlx::query_as::<DB, (i64, Json<MeshSpec>)>(DB::LOCK_MESH_SHARED)
                            .bind(mesh.as_str().to_owned())
                            .fetch_optional(&mut *tx)
                            .await?;
                        if let Some((_, Json(spec))) = spec {
                            // Fail closed: a spec the guard cannot read might use the secret.
                            let mtls = open_spec_with(keyring.as_deref(), accept_plaintext, &mesh, spec)
                                .map_err(|e| e.to_string())
                                .and_then(|spec| Mtls::of(&spec, &mesh).map_err(|e| e.to_string()));
                            match mtls {
                                Err(reason) => {
                                    return Ok(Err(StoreError::MeshUnreadable {
                                        mesh: mesh.as_str().to_owned(),
                                        reason,
                                    }));
                                }
                                Ok(Some(mtls)) => {
                                    if let Some(usage) = mtls
                                        .used_secrets(&mesh)
                                        .into_iter()
                                        .find(|u| u.secret == key.name().as_str())
                                    {
                                        return Ok(Err(StoreError::InUse {
                                            secret: usage.secret,
                                            mesh: mesh.as_str().to_owned(),
                                            backend: usage.backend,
                                        }));
                                    }
                                }
                                Ok(None) => {}
                            }
                        }
                        let deleted = sqlx::query_as::<DB, (i64,)>(DELETE_SECRET.for_key(&key))
                            .bind(expected_version)
                            .bind(key.name().as_str().to_owned())
                            .bind(mesh.as_str().to_owned())
                            .fetch_optional(&mut *tx)
                            .await?;
                        Ok(Ok(deleted))
                    })
                })
                .await?
            }
            _ => {
                let mut query = sqlx::query_as::<DB, (i64,)>(DELETE_SECRET.for_key(key))
                    .bind(expected_version)
                    .bind(key.name().as_str().to_owned());
                if let Some(mesh) = key.mesh() {
                    query = query.bind(mesh.as_str().to_owned());
                }
                query.fetch_optional_via(self, Op::Other).await?
            }
        };
        if deleted.is_some() {
            return Ok(());
        }
        Err(missed(
            key.resource_key(),
            expected_version,
            self.stored_secret_version(key).await?,
        ))
    }

    async fn secret_version(&self, key: &SecretKey) -> Result<Option<i64>> {
        self.stored_secret_version(key).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(db = DB::NAME, key = %key))]
    async fn get_secret(&self, key: &SecretKey) -> Result<Secret> {
        let mut query = sqlx::query_as::<DB, SecretRow>(GET_SECRET.for_key(key))
            .bind(key.name().as_str().to_owned());
        if let Some(mesh) = key.mesh() {
            query = query.bind(mesh.as_str().to_owned());
        }
        query
            .fetch_optional_via(self, Op::Other)
            .await?
            .ok_or_else(|| StoreError::NotFound(key.resource_key()))?
            .open(self.options.keyring.as_deref(), self.options.accept_plaintext_rows)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(db = DB::NAME, scope = ?query.scope))]
    async fn list_secrets(&self, query: &SecretQuery) -> Result<Page<Secret>> {
        let first_page = query.page.start() == &PageStart::Offset(0);
        self.run_list(
            sql::list_secrets::<DB>(query),
            first_page,
            |row: ListedSecretRow| {
                let total = row.total;
                Ok((row.row.open(self.options.keyring.as_deref(), self.options.accept_plaintext_rows)?, total))
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
        .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(db = DB::NAME, mesh = %mesh.name))]
    async fn create_mesh(&self, mesh: NewMesh) -> Result<Mesh> {
        let key = ResourceKey::mesh(&mesh.name);
        let mtls = check_mesh_spec(&mesh.name, &mesh.spec)?;
        for attempt in 1.. {
            let plan = self.prepare_mtls(&mesh.name, mtls.as_ref()).await?;
            let time = now();
            let keyring = self.options.keyring.clone();
            let mesh = mesh.clone();
            let outcome = self
                .in_write_transaction_with(Op::Create(&key), move |tx| {
                    Box::pin(async move {
                        let stored = seal_spec(keyring.as_deref(), &mesh.name, &mesh.spec);
                        let row = Self::insert_mesh_query(&mesh.name, time, &mesh.labels, stored)
                            .fetch_one(&mut *tx)
                            .await?;
                        Ok(Self::apply_mtls_plan(tx, keyring.as_deref(), &mesh.name, plan, time)
                            .await?
                            .map(|()| row.with_spec(mesh.spec)))
                    })
                })
                .await?;
            match outcome {
                Err(MeshRefusal::CaVanished(_)) if attempt < MTLS_ATTEMPTS => continue,
                other => return other.map_err(StoreError::from),
            }
        }
        unreachable!("the loop returns")
    }

    #[tracing::instrument(level = "debug", skip_all, fields(db = DB::NAME, mesh = %name, expected_version))]
    async fn update_mesh(
        &self,
        name: &MeshName,
        expected_version: i64,
        update: MeshUpdate,
    ) -> Result<Mesh> {
        let mtls = check_mesh_spec(name, &update.spec)?;
        for attempt in 1.. {
            let plan = self.prepare_mtls(name, mtls.as_ref()).await?;
            let time = now();
            let keyring = self.options.keyring.clone();
            let accept_plaintext = self.options.accept_plaintext_rows;
            let (name, update, mtls) = (name.clone(), update.clone(), mtls.clone());
            let outcome = self
                .in_write_transaction_with(Op::Other, move |tx| {
                    Box::pin(async move {
                        let current = sqlx::query_as::<DB, (i64, Json<MeshSpec>)>(DB::LOCK_MESH_EXCLUSIVE)
                            .bind(name.as_str().to_owned())
                            .fetch_optional(&mut *tx)
                            .await?;
                        let Some((version, Json(current_spec))) = current else {
                            return Ok(Err(MeshRefusal::Store(StoreError::NotFound(ResourceKey::mesh(&name)))));
                        };
                        if version != expected_version {
                            return Ok(Err(MeshRefusal::Store(missed(
                                ResourceKey::mesh(&name),
                                Some(expected_version),
                                Some(version),
                            ))));
                        }
                        // A stored spec that no longer parses (or opens) cannot block fixing it.
                        let current_mtls = open_spec_with(keyring.as_deref(), accept_plaintext, &name, current_spec)
                            .ok()
                            .and_then(|spec| Mtls::of(&spec, &name).ok().flatten());
                        if let Err(e) = Mtls::check_change(current_mtls.as_ref(), mtls.as_ref()) {
                            return Ok(Err(MeshRefusal::Invalid(e)));
                        }
                        let stored = seal_spec(keyring.as_deref(), &name, &update.spec);
                        let row = Self::update_mesh_query(&name, stored, &update.labels, time, expected_version)
                            .fetch_one(&mut *tx)
                            .await?;
                        Ok(Self::apply_mtls_plan(tx, keyring.as_deref(), &name, plan, time)
                            .await?
                            .map(|()| row.with_spec(update.spec)))
                    })
                })
                .await?;
            match outcome {
                Err(MeshRefusal::CaVanished(_)) if attempt < MTLS_ATTEMPTS => continue,
                other => return other.map_err(StoreError::from),
            }
        }
        unreachable!("the loop returns")
    }

    #[tracing::instrument(level = "debug", skip_all, fields(db = DB::NAME, mesh = %name, expected_version))]
    async fn delete_mesh(&self, name: &MeshName, expected_version: Option<i64>) -> Result<()> {
        let deleted = sqlx::query_as::<DB, (i64,)>(DELETE_MESH)
            .bind(expected_version)
            .bind(name.as_str().to_owned())
            .fetch_optional_via(self, Op::Other)
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
        sqlx::query_as::<DB, MeshRow>(GET_MESH)
            .bind(name.as_str().to_owned())
            .fetch_optional_via(self, Op::Other)
            .await?
            .ok_or_else(|| StoreError::NotFound(ResourceKey::mesh(name)))?
            .open(self.options.keyring.as_deref(), self.options.accept_plaintext_rows)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(db = DB::NAME))]
    async fn list_meshes(&self, query: &MeshQuery) -> Result<Page<Mesh>> {
        let first_page = query.page.start() == &PageStart::Offset(0);
        self.run_list(
            sql::list_meshes::<DB>(query),
            first_page,
            |row: ListedMeshRow| {
                let total = row.total;
                Ok((row.row.open(self.options.keyring.as_deref(), self.options.accept_plaintext_rows)?, total))
            },
            |m: &Mesh| (None, m.name.as_str().to_owned()),
            query.page.size(),
            query.page.offset(),
        )
        .await
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query_as::<DB, (i64,)>("SELECT CAST(1 AS BIGINT)")
            .fetch_one_via(self, Op::Other)
            .await?;
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(db = DB::NAME, items = items.len()))]
    async fn import_batch(&self, items: Vec<Resource>) -> Result<ImportCounts> {
        // The same checks as the API's, before anything is written: a Mesh spec the delete
        // guard could not read must never get in.
        let mut errors = ValidationError::default();
        for item in &items {
            let (what, labels) = match item {
                Resource::Secret(secret) => {
                    secret.data.check_size(self.options.max_secret_size)?;
                    (format!("{}: ", secret.key), &secret.labels)
                }
                Resource::Mesh(mesh) => {
                    let what = format!("Mesh {:?}: ", mesh.name.as_str());
                    if let Err(e) = check_mesh_spec(&mesh.name, &mesh.spec) {
                        errors.extend_prefixed(&what, e);
                    }
                    (what, &mesh.labels)
                }
            };
            // Labels read from another store were validated there, maybe by an older rule.
            for (key, value) in labels.iter() {
                if let Err(e) = crate::domain::reject_nul(&format!("labels[{key:?}]"), &format!("{key}{value}")) {
                    errors.extend_prefixed(&what, e);
                }
            }
        }
        if !errors.is_empty() {
            return Err(StoreError::Invalid(errors));
        }
        // A resource created by a concurrent writer between our read and our insert rolls
        // the batch back (AlreadyExists); the batch is then simply run again, finding it.
        for attempt in 1.. {
            let mut conn = self
                .pool
                .acquire()
                .await
                .map_err(|e| map_db_error(e, Op::Other))?;
            let mut failed = None;
            let result = Self::import_in_transaction(conn.conn(), self.options.keyring.as_deref(), items.clone(), &mut failed).await;
            let outcome = conn.finish(result).map_err(|e| match &failed {
                Some(key) => map_db_error(e, Op::Create(key)),
                None => map_db_error(e, Op::Other),
            });
            match outcome {
                Err(StoreError::AlreadyExists(_)) if attempt < IMPORT_ATTEMPTS => continue,
                other => return other,
            }
        }
        unreachable!("the loop returns")
    }
}
}
