//! [`SqlStore`]: the one implementation of [`SecretStore`], generic over the database.
//! The two backends differ only in how they connect and migrate (`postgres.rs`,
//! `sqlite.rs`) and in the two SQL fragments of [`Dialect`].

use super::error::{Op, map_db_error};
use super::page::{Cursor, MeshQuery, Page, PageStart, SecretQuery};
use super::pool::ConnectionPool;
use super::sql::{
    self, Bind, DELETE_MESH, DELETE_SECRET, GET_MESH, GET_MESH_VERSION, GET_SECRET,
    GET_SECRET_VERSION, INSERT_MESH, INSERT_SECRET, ListStatements, ListedMeshRow, ListedSecretRow,
    MeshRow, SecretRow, Statement, UPDATE_MESH, UPDATE_SECRET,
};
use super::{ImportCounts, Result, SecretStore, StoreError, StoreOptions};
use crate::domain::{
    Mesh, MeshName, MeshSpec, MeshUpdate, NewMesh, NewSecret, Resource, ResourceKey, Secret,
    SecretKey, SecretUpdate,
};
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

    /// The body of [`SecretStore::import_batch`], on one connection, in one transaction.
    /// On a constraint violation, `failed` names the resource being inserted, so the error
    /// maps to `AlreadyExists` or `MeshNotFound` for it.
    async fn import_in_transaction(
        conn: &mut DB::Connection,
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
                            sqlx::query_as::<DB, MeshRow>(INSERT_MESH)
                                .bind(mesh.name.as_str().to_owned())
                                .bind(time)
                                .bind(labels_json(&mesh.labels))
                                .bind(Json(mesh.spec))
                                .fetch_one(&mut *tx)
                                .await?;
                            *failed = None;
                            counts.created += 1;
                        }
                        Some(current) if current.spec == mesh.spec && current.labels == mesh.labels => {
                            counts.unchanged += 1;
                        }
                        Some(current) => {
                            sqlx::query_as::<DB, MeshRow>(UPDATE_MESH)
                                .bind(Json(mesh.spec))
                                .bind(labels_json(&mesh.labels))
                                .bind(time)
                                .bind(current.meta.version)
                                .bind(mesh.name.as_str().to_owned())
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
                    let existing = get.fetch_optional(&mut *tx).await?.map(Secret::from);
                    match existing {
                        None => {
                            *failed = Some(key.resource_key());
                            sqlx::query_as::<DB, SecretRow>(INSERT_SECRET)
                                .bind(key.name().as_str().to_owned())
                                .bind(key.mesh().map(|m| m.as_str().to_owned()))
                                .bind(time)
                                .bind(labels_json(&secret.labels))
                                .bind(secret.data.expose().to_vec())
                                .fetch_one(&mut *tx)
                                .await?;
                            *failed = None;
                            counts.created += 1;
                        }
                        Some(current)
                            if current.data.expose() == secret.data.expose()
                                && current.labels == secret.labels =>
                        {
                            counts.unchanged += 1;
                        }
                        Some(current) => {
                            let mut update = sqlx::query_as::<DB, SecretRow>(UPDATE_SECRET.for_key(key))
                                .bind(secret.data.expose().to_vec())
                                .bind(labels_json(&secret.labels))
                                .bind(time)
                                .bind(current.meta.version)
                                .bind(key.name().as_str().to_owned());
                            if let Some(mesh) = key.mesh() {
                                update = update.bind(mesh.as_str().to_owned());
                            }
                            update.fetch_one(&mut *tx).await?;
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
        split: impl Fn(Row) -> (Item, i64),
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
            let (item, row_total) = split(row);
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
        let row = sqlx::query_as::<DB, SecretRow>(INSERT_SECRET)
            .bind(secret.key.name().as_str().to_owned())
            .bind(secret.key.mesh().map(|m| m.as_str().to_owned()))
            .bind(now())
            .bind(labels_json(&secret.labels))
            .bind(secret.data.expose().to_vec())
            .fetch_one_via(self, Op::Create(&key))
            .await?;
        Ok(row.into())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(db = DB::NAME, key = %key, expected_version))]
    async fn update_secret(
        &self,
        key: &SecretKey,
        expected_version: i64,
        update: SecretUpdate,
    ) -> Result<Secret> {
        update.data.check_size(self.options.max_secret_size)?;
        let mut query = sqlx::query_as::<DB, SecretRow>(UPDATE_SECRET.for_key(key))
            .bind(update.data.expose().to_vec())
            .bind(labels_json(&update.labels))
            .bind(now())
            .bind(expected_version)
            .bind(key.name().as_str().to_owned());
        if let Some(mesh) = key.mesh() {
            query = query.bind(mesh.as_str().to_owned());
        }
        let row = query
            .fetch_optional_via(self, Op::Other)
            .await?;
        match row {
            Some(row) => Ok(row.into()),
            None => Err(missed(
                key.resource_key(),
                Some(expected_version),
                self.secret_version(key).await?,
            )),
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(db = DB::NAME, key = %key, expected_version))]
    async fn delete_secret(&self, key: &SecretKey, expected_version: Option<i64>) -> Result<()> {
        let mut query = sqlx::query_as::<DB, (i64,)>(DELETE_SECRET.for_key(key))
            .bind(expected_version)
            .bind(key.name().as_str().to_owned());
        if let Some(mesh) = key.mesh() {
            query = query.bind(mesh.as_str().to_owned());
        }
        let deleted = query
            .fetch_optional_via(self, Op::Other)
            .await?;
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
            .map(Secret::from)
            .ok_or_else(|| StoreError::NotFound(key.resource_key()))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(db = DB::NAME, scope = ?query.scope))]
    async fn list_secrets(&self, query: &SecretQuery) -> Result<Page<Secret>> {
        let first_page = query.page.start() == &PageStart::Offset(0);
        self.run_list(
            sql::list_secrets::<DB>(query),
            first_page,
            |row: ListedSecretRow| (Secret::from(row.row), row.total),
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
        let row = sqlx::query_as::<DB, MeshRow>(INSERT_MESH)
            .bind(mesh.name.as_str().to_owned())
            .bind(now())
            .bind(labels_json(&mesh.labels))
            .bind(Json(mesh.spec))
            .fetch_one_via(self, Op::Create(&key))
            .await?;
        Ok(row.into())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(db = DB::NAME, mesh = %name, expected_version))]
    async fn update_mesh(
        &self,
        name: &MeshName,
        expected_version: i64,
        update: MeshUpdate,
    ) -> Result<Mesh> {
        let row = sqlx::query_as::<DB, MeshRow>(UPDATE_MESH)
            .bind(Json(update.spec))
            .bind(labels_json(&update.labels))
            .bind(now())
            .bind(expected_version)
            .bind(name.as_str().to_owned())
            .fetch_optional_via(self, Op::Other)
            .await?;
        match row {
            Some(row) => Ok(row.into()),
            None => Err(missed(
                ResourceKey::mesh(name),
                Some(expected_version),
                self.mesh_version(name).await?,
            )),
        }
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
            |row: ListedMeshRow| (Mesh::from(row.row), row.total),
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
        let result = Self::import_in_transaction(conn.conn(), items, &mut failed).await;
        conn.finish(result).map_err(|e| match &failed {
            Some(key) => map_db_error(e, Op::Create(key)),
            None => map_db_error(e, Op::Other),
        })
    }
}
}
