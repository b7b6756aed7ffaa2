//! [`SqlStore`]: the one implementation of [`SecretStore`], generic over the database.
//! The two backends differ only in how they connect and migrate (`postgres.rs`,
//! `sqlite.rs`) and in the two SQL fragments of [`Dialect`].

use super::error::{Op, map_db_error};
use super::page::{Cursor, MeshQuery, Page, PageStart, SecretQuery};
use super::pool::ConnectionPool;
use super::sql::{
    self, Bind, DELETE_MESH, DELETE_SECRET, GET_MESH, GET_MESH_VERSION, GET_SECRET,
    GET_SECRET_VERSION, INSERT_MESH, INSERT_SECRET, ListStatements, ListedMeshRow, ListedSecretRow,
    MeshRow, RESEAL_ROW, ROWS_PER_KEY, ROWS_TO_RESEAL, SealedRow, SecretRow, Statement,
    UPDATE_MESH, UPDATE_SECRET,
};
use super::{ImportCounts, Result, SecretStore, StoreError, StoreOptions};
use crate::domain::mtls::{DataSource, Mtls, builtin_ca_names};
use crate::domain::{
    Labels, Mesh, MeshName, MeshSpec, MeshUpdate, NewMesh, NewSecret, Resource, ResourceKey,
    ResourceName, Secret, SecretKey, SecretUpdate, ValidationError,
};
use crate::sealing::Keyring;
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
    required: Vec<String>,
}

/// A generated builtin CA: (secret name, PEM) of its certificate and key.
struct BuiltinCa {
    cert: (String, Vec<u8>),
    key: (String, Vec<u8>),
}

/// The bytes to store for `data` of secret `key`, and the key id that sealed them (`None`:
/// stored as given, when the store has no keyring).
fn seal(keyring: Option<&Keyring>, key: &SecretKey, data: &[u8]) -> (Option<String>, Vec<u8>) {
    match keyring {
        Some(keyring) => {
            let (key_id, sealed) = keyring.seal(key, data);
            (Some(key_id), sealed)
        }
        None => (None, data.to_vec()),
    }
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
            for<'r> SealedRow: FromRow<'r, DB::Row>,
        {
            $($body)*
        }
    };
}

impl_for_sql_databases! {
impl [SqlStore<DB>] {
    async fn secret_version(&self, key: &SecretKey) -> Result<Option<i64>> {
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
        stored: Vec<u8>,
        key_id: Option<String>,
    ) -> QueryAs<'static, DB, SecretRow, DB::Arguments> {
        sqlx::query_as::<DB, SecretRow>(INSERT_SECRET)
            .bind(key.name().as_str().to_owned())
            .bind(key.mesh().map(|m| m.as_str().to_owned()))
            .bind(time)
            .bind(labels_json(labels))
            .bind(stored)
            .bind(key_id)
    }

    /// `UPDATE_SECRET` with its parameters bound (the mesh last, for a Secret).
    fn update_secret_query(
        key: &SecretKey,
        stored: Vec<u8>,
        key_id: Option<String>,
        labels: &Labels,
        time: DateTime<Utc>,
        expected_version: i64,
    ) -> QueryAs<'static, DB, SecretRow, DB::Arguments> {
        let query = sqlx::query_as::<DB, SecretRow>(UPDATE_SECRET.for_key(key))
            .bind(stored)
            .bind(key_id)
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
    pub async fn rows_per_key(&self) -> Result<Vec<(Option<String>, u64)>> {
        let rows = sqlx::query_as::<DB, (String, i64)>(ROWS_PER_KEY)
            .fetch_all_via(self, Op::Other)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(id, n)| ((!id.is_empty()).then_some(id), u64::try_from(n).unwrap_or(0)))
            .collect())
    }

    /// Refuses a keyring that lacks a key id some row is sealed with (or no keyring when
    /// any row is sealed): better to stop at start-up, naming the ids, than fail every read.
    ///
    /// # Errors
    /// [`StoreError::MissingKeys`].
    pub async fn check_keyring(&self) -> Result<()> {
        let keyring = self.options.keyring.as_deref();
        let missing: Vec<String> = self
            .rows_per_key()
            .await?
            .into_iter()
            .filter_map(|(id, _)| id)
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
                    let plaintext = match &row.key_id {
                        None => row.data.clone(),
                        Some(key_id) => match keyring.open(&key, key_id, &row.data) {
                            Ok(plaintext) => plaintext,
                            Err(reason) => {
                                return Ok(Err(StoreError::Sealed {
                                    key: key.resource_key(),
                                    reason,
                                }));
                            }
                        },
                    };
                    let (key_id, sealed) = keyring.seal(&key, &plaintext);
                    let written = sqlx::query_as::<DB, (i64,)>(RESEAL_ROW)
                        .bind(sealed)
                        .bind(key_id)
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
                if self.secret_version(&key).await?.is_some() {
                    present += 1;
                }
            }
            if present == 2 {
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
    ) -> std::result::Result<std::result::Result<(), ValidationError>, sqlx::Error> {
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
                let (key_id, stored) = seal(keyring, &stale, &pem);
                Self::insert_secret_query(&stale, time, &builtin_ca_labels(mesh), stored, key_id)
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
        Ok(if errors.is_empty() { Ok(()) } else { Err(errors) })
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
        conn.finish(result).map_err(|e| map_db_error(e, op))?
    }

    /// The body of [`SecretStore::import_batch`], on one connection, in one transaction.
    /// On a constraint violation, `failed` names the resource being inserted, so the error
    /// maps to `AlreadyExists` or `MeshNotFound` for it.
    async fn import_in_transaction(
        conn: &mut DB::Connection,
        keyring: Option<&Keyring>,
        items: Vec<Resource>,
        failed: &mut Option<ResourceKey>,
    ) -> std::result::Result<ImportCounts, sqlx::Error> {
        let mut tx = sqlx::Connection::begin(conn).await?;
        let mut counts = ImportCounts::default();
        let time = now();
        for item in items {
            match item {
                Resource::Mesh(mesh) => {
                    let existing = sqlx::query_as::<DB, MeshRow>(GET_MESH)
                        .bind(mesh.name.as_str().to_owned())
                        .fetch_optional(&mut *tx)
                        .await?
                        .map(Mesh::from);
                    match existing {
                        None => {
                            *failed = Some(ResourceKey::mesh(&mesh.name));
                            Self::insert_mesh_query(&mesh.name, time, &mesh.labels, mesh.spec)
                                .fetch_one(&mut *tx)
                                .await?;
                            *failed = None;
                            counts.created += 1;
                        }
                        Some(current) if current.spec == mesh.spec && current.labels == mesh.labels => {
                            counts.unchanged += 1;
                        }
                        Some(current) => {
                            Self::update_mesh_query(
                                &mesh.name,
                                mesh.spec,
                                &mesh.labels,
                                time,
                                current.meta.version,
                            )
                            .fetch_one(&mut *tx)
                            .await?;
                            counts.updated += 1;
                        }
                    }
                }
                Resource::Secret(secret) => {
                    let key = &secret.key;
                    let mut get = sqlx::query_as::<DB, SecretRow>(GET_SECRET.for_key(key))
                        .bind(key.name().as_str().to_owned());
                    if let Some(mesh) = key.mesh() {
                        get = get.bind(mesh.as_str().to_owned());
                    }
                    // A stored row that does not open (altered, or sealed with a key this
                    // keyring lacks) is overwritten: the import is the authority here.
                    let existing = get
                        .fetch_optional(&mut *tx)
                        .await?
                        .map(|row| {
                            let version = row.version();
                            row.open(keyring).map_err(|_| version)
                        });
                    match existing {
                        None => {
                            *failed = Some(key.resource_key());
                            let (key_id, stored) = seal(keyring, key, secret.data.expose());
                            Self::insert_secret_query(key, time, &secret.labels, stored, key_id)
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
                            let version = match current {
                                Ok(current) => current.meta.version,
                                Err(version) => version,
                            };
                            let (key_id, stored) = seal(keyring, key, secret.data.expose());
                            Self::update_secret_query(key, stored, key_id, &secret.labels, time, version)
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
        let (key_id, stored) = seal(self.options.keyring.as_deref(), &secret.key, secret.data.expose());
        let row = Self::insert_secret_query(&secret.key, now(), &secret.labels, stored, key_id)
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
        let (key_id, stored) = seal(self.options.keyring.as_deref(), key, update.data.expose());
        let row = Self::update_secret_query(key, stored, key_id, &update.labels, now(), expected_version)
            .fetch_optional_via(self, Op::Other)
            .await?;
        match row {
            Some(row) => Ok(row.with_data(update.data)),
            None => Err(missed(
                key.resource_key(),
                Some(expected_version),
                self.secret_version(key).await?,
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
                self.in_write_transaction(Op::Other, move |tx| {
                    Box::pin(async move {
                        let spec = sqlx::query_as::<DB, (i64, Json<MeshSpec>)>(DB::LOCK_MESH_SHARED)
                            .bind(mesh.as_str().to_owned())
                            .fetch_optional(&mut *tx)
                            .await?;
                        if let Some((_, Json(spec))) = spec
                            && let Ok(Some(mtls)) = Mtls::of(&spec, &mesh)
                            && let Some(usage) = mtls
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
            self.secret_version(key).await?,
        ))
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
            .open(self.options.keyring.as_deref())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(db = DB::NAME, scope = ?query.scope))]
    async fn list_secrets(&self, query: &SecretQuery) -> Result<Page<Secret>> {
        let first_page = query.page.start() == &PageStart::Offset(0);
        self.run_list(
            sql::list_secrets::<DB>(query),
            first_page,
            |row: ListedSecretRow| Ok((row.row.open(self.options.keyring.as_deref())?, row.total)),
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
        let mtls = Mtls::of(&mesh.spec, &mesh.name)?;
        let plan = self.prepare_mtls(&mesh.name, mtls.as_ref()).await?;
        let time = now();
        let keyring = self.options.keyring.clone();
        self.in_write_transaction(Op::Create(&key), move |tx| {
            Box::pin(async move {
                let row = Self::insert_mesh_query(&mesh.name, time, &mesh.labels, mesh.spec)
                    .fetch_one(&mut *tx)
                    .await?;
                Ok(Self::apply_mtls_plan(tx, keyring.as_deref(), &mesh.name, plan, time)
                    .await?
                    .map(|()| Mesh::from(row))
                    .map_err(StoreError::Invalid))
            })
        })
        .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(db = DB::NAME, mesh = %name, expected_version))]
    async fn update_mesh(
        &self,
        name: &MeshName,
        expected_version: i64,
        update: MeshUpdate,
    ) -> Result<Mesh> {
        let mtls = Mtls::of(&update.spec, name)?;
        let plan = self.prepare_mtls(name, mtls.as_ref()).await?;
        let time = now();
        let keyring = self.options.keyring.clone();
        let name = name.clone();
        self.in_write_transaction(Op::Other, move |tx| {
            Box::pin(async move {
                let current = sqlx::query_as::<DB, (i64, Json<MeshSpec>)>(DB::LOCK_MESH_EXCLUSIVE)
                    .bind(name.as_str().to_owned())
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some((version, Json(current_spec))) = current else {
                    return Ok(Err(StoreError::NotFound(ResourceKey::mesh(&name))));
                };
                if version != expected_version {
                    return Ok(Err(missed(
                        ResourceKey::mesh(&name),
                        Some(expected_version),
                        Some(version),
                    )));
                }
                // A stored spec that no longer parses cannot block fixing it.
                let current_mtls = Mtls::of(&current_spec, &name).ok().flatten();
                if let Err(e) = Mtls::check_change(current_mtls.as_ref(), mtls.as_ref()) {
                    return Ok(Err(StoreError::Invalid(e)));
                }
                let row = Self::update_mesh_query(&name, update.spec, &update.labels, time, expected_version)
                    .fetch_one(&mut *tx)
                    .await?;
                Ok(Self::apply_mtls_plan(tx, keyring.as_deref(), &name, plan, time)
                    .await?
                    .map(|()| Mesh::from(row))
                    .map_err(StoreError::Invalid))
            })
        })
        .await
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
            .map(Mesh::from)
            .ok_or_else(|| StoreError::NotFound(ResourceKey::mesh(name)))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(db = DB::NAME))]
    async fn list_meshes(&self, query: &MeshQuery) -> Result<Page<Mesh>> {
        let first_page = query.page.start() == &PageStart::Offset(0);
        self.run_list(
            sql::list_meshes::<DB>(query),
            first_page,
            |row: ListedMeshRow| Ok((Mesh::from(row.row), row.total)),
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
        for item in &items {
            if let Resource::Secret(secret) = item {
                secret.data.check_size(self.options.max_secret_size)?;
            }
        }
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| map_db_error(e, Op::Other))?;
        let mut failed = None;
        let result = Self::import_in_transaction(conn.conn(), self.options.keyring.as_deref(), items, &mut failed).await;
        conn.finish(result).map_err(|e| match &failed {
            Some(key) => map_db_error(e, Op::Create(key)),
            None => map_db_error(e, Op::Other),
        })
    }
}
}
