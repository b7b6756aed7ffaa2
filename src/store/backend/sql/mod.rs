//! [`SqlStore`]: the one implementation of [`SecretStore`](crate::store::contract::SecretStore),
//! generic over the database. The two backends differ only in how they connect and migrate
//! (`backend/postgres.rs`, `backend/sqlite.rs`) and in the fragments of [`Dialect`].
//!
//! SQL is runtime `query_as` over shared text, not the compile-checked `query!` macros,
//! because one statement serves two databases; the guard is the conformance suite
//! (`tests/store_conformance.rs`), which runs every case on both.
//!
//! | file | what |
//! | --- | --- |
//! | `dialect.rs` | the SQL fragments that differ between Postgres and SQLite |
//! | `statements.rs` | the shared statements, one constant each, and how a key is bound |
//! | `rows.rs` | the rows they return; opening sealed data and Mesh specs |
//! | `tx.rs` | running a statement on the pool; write transactions and their refusals |
//! | `crud.rs` | the `SecretStore` trait: create, update, delete, get, list |
//! | `put.rs` | create-or-replace under a precondition, the API's PUT, in one statement |
//! | `group_commit.rs` | concurrent secret puts and deletes committed together, one batch a transaction |
//! | `list.rs` | list statements built at runtime, pages and totals |
//! | `external_services.rs` | ExternalServices, and the table of references to Secrets |
//! | `mtls.rs` | a Mesh write's mTLS: builtin CAs, provided CAs, the references it locks |
//! | `import.rs` | `import_batch`: moving resources in, one transaction per batch |
//! | `reseal.rs` | key rotation, key usage, unreadable rows |
//! | `feed.rs` | the change feed: numbering, pages of events, retention |
//! | `history.rs` | kept versions: reads, rollback, restore, purge, the history limit |
//! | `replication.rs` | Postgres only: WAL positions, for the read replica |
//!
//! Every impl block over the database is written inside [`impl_for_sql_databases!`]: the
//! bounds a generic sqlx database needs (the types it binds, the rows it decodes) cannot be
//! implied by a trait in today's Rust, so one macro writes them once, and each file keeps
//! its macro body to the few methods of its concern.

macro_rules! secret_columns {
    () => {
        "mesh, name, version, creation_time, modification_time, labels, data, key_id, write_id"
    };
}
macro_rules! mesh_columns {
    () => {
        "name, version, creation_time, modification_time, labels, spec"
    };
}

/// Emits `impl<DB> … where <bounds>` with the one list of bounds the store needs from a
/// sqlx database: the value types it binds and the rows it decodes. Postgres and SQLite
/// both meet them; writing them once keeps the two impl blocks below from drifting.
macro_rules! impl_for_sql_databases {
    (impl [$($head:tt)*] { $($body:tt)* }) => {
        impl<DB> $($head)*
        where
            DB: $crate::store::backend::sql::Dialect,
            for<'c> &'c mut DB::Connection: ::sqlx::Executor<'c, Database = DB>,
            DB::Arguments: ::sqlx::IntoArguments<DB>,
            for<'q> String: ::sqlx::Encode<'q, DB> + ::sqlx::Type<DB>,
            for<'q> Option<String>: ::sqlx::Encode<'q, DB> + ::sqlx::Type<DB>,
            for<'q> i64: ::sqlx::Encode<'q, DB> + ::sqlx::Type<DB>,
            for<'q> Option<i64>: ::sqlx::Encode<'q, DB> + ::sqlx::Type<DB>,
            for<'q> Vec<u8>: ::sqlx::Encode<'q, DB> + ::sqlx::Type<DB>,
            for<'q> Option<Vec<u8>>: ::sqlx::Encode<'q, DB> + ::sqlx::Type<DB>,
            for<'q> ::chrono::DateTime<::chrono::Utc>: ::sqlx::Encode<'q, DB> + ::sqlx::Type<DB>,
            for<'q> ::sqlx::types::Json<::std::collections::BTreeMap<String, String>>:
                ::sqlx::Encode<'q, DB> + ::sqlx::Type<DB>,
            for<'q> ::sqlx::types::Json<$crate::domain::MeshSpec>:
                ::sqlx::Encode<'q, DB> + ::sqlx::Type<DB>,
            for<'r> $crate::store::backend::sql::SecretRow: ::sqlx::FromRow<'r, DB::Row>,
            for<'r> $crate::store::backend::sql::ListedSecretRow: ::sqlx::FromRow<'r, DB::Row>,
            for<'r> $crate::store::backend::sql::MeshRow: ::sqlx::FromRow<'r, DB::Row>,
            for<'r> $crate::store::backend::sql::ExternalServiceRow: ::sqlx::FromRow<'r, DB::Row>,
            for<'r> $crate::store::backend::sql::ListedExternalServiceRow: ::sqlx::FromRow<'r, DB::Row>,
            for<'r> (String, String, String): ::sqlx::FromRow<'r, DB::Row>,
            for<'r> $crate::store::backend::sql::ListedMeshRow: ::sqlx::FromRow<'r, DB::Row>,
            for<'r> $crate::store::backend::sql::SealedRow: ::sqlx::FromRow<'r, DB::Row>,
            for<'r> $crate::store::backend::sql::EventRow: ::sqlx::FromRow<'r, DB::Row>,
            for<'r> $crate::store::backend::sql::VersionRow: ::sqlx::FromRow<'r, DB::Row>,
            for<'r> (Option<i64>,): ::sqlx::FromRow<'r, DB::Row>,
            for<'q> Option<::sqlx::types::Json<$crate::store::contract::feed::Actor>>:
                ::sqlx::Encode<'q, DB> + ::sqlx::Type<DB>,
            for<'r> (i64,): ::sqlx::FromRow<'r, DB::Row>,
            for<'r> (i64, ::sqlx::types::Json<$crate::domain::MeshSpec>): ::sqlx::FromRow<'r, DB::Row>,
            for<'r> (String, i64): ::sqlx::FromRow<'r, DB::Row>,
            for<'r> (String,): ::sqlx::FromRow<'r, DB::Row>,
            for<'r> (i64, ::sqlx::types::Json<::std::collections::BTreeMap<String, String>>):
                ::sqlx::FromRow<'r, DB::Row>,
            for<'r> (
                i64,
                ::sqlx::types::Json<$crate::domain::MeshSpec>,
                ::sqlx::types::Json<::std::collections::BTreeMap<String, String>>,
            ): ::sqlx::FromRow<'r, DB::Row>,
            for<'r> (String, i64, i64): ::sqlx::FromRow<'r, DB::Row>,
            for<'r> (Option<::chrono::DateTime<::chrono::Utc>>,): ::sqlx::FromRow<'r, DB::Row>,
            for<'r> $crate::store::backend::sql::PlaintextRow: ::sqlx::FromRow<'r, DB::Row>,
            for<'r> $crate::store::backend::sql::StoredMeshSpec: ::sqlx::FromRow<'r, DB::Row>,
            for<'r> $crate::store::backend::sql::StoredExternalServiceSpec: ::sqlx::FromRow<'r, DB::Row>,
            for<'r> $crate::store::backend::sql::StoredDataKey: ::sqlx::FromRow<'r, DB::Row>,
        {
            $($body)*
        }
    };
}

mod crud;
mod data_keys;
mod dialect;
mod external_services;
mod feed;
mod group_commit;
mod history;
mod import;
mod list;
mod mtls;
mod put;
#[cfg(feature = "postgres")]
mod replication;
mod reseal;
mod rows;
mod statements;
mod tx;
mod zone_sync;

pub use data_keys::{Rewrapped, StoredDataKey};
pub use dialect::Dialect;
pub use feed::EventRow;
pub(crate) use group_commit::WriteQueue;
pub use history::VersionRow;
pub use import::{KeptTimes, TimesOf};
pub use reseal::{
    KeyUsage, PlaintextValue, ResealBatch, SealRefusal, StoredExternalServiceSpec, Unreadable,
};
pub use rows::{
    ExternalServiceRow, ListedExternalServiceRow, ListedMeshRow, ListedSecretRow, MeshRow,
    PlaintextRow, SealedRow, SecretRow, StoredMeshSpec,
};
pub use statements::SealedRows;
pub(crate) use statements::{Preparing, query_as};

use crate::domain::mtls::Mtls;
use crate::domain::{Labels, MeshName, MeshSpec, ResourceKey, SecretKey, ValidationError};
use crate::sealing::{Binding, Keyring, WriteId};
use crate::store::backend::pool::ConnectionPool;
use crate::store::contract::feed::ChangeSignal;
use crate::store::contract::{Result, StoreError, StoreOptions};
use chrono::{DateTime, SubsecRound, Utc};
use sqlx::Database;
use sqlx::types::Json;
use std::collections::BTreeMap;
use std::fmt;

/// A store on a sqlx pool of database `DB`. See [`super::PostgresStore`] and
/// [`super::SqliteStore`] for how each is opened.
pub struct SqlStore<DB: Database> {
    pub(crate) pool: ConnectionPool<DB::Connection>,
    pub(crate) options: StoreOptions,
    pub(crate) preparing: Preparing,
    /// Notified after every write through this store (and, on Postgres, by the listener
    /// for other processes' commits): what wakes its change-feed watchers.
    pub(crate) changes: ChangeSignal,
    /// The queue of secret writes to this store's committer (`group_commit.rs`).
    pub(crate) writes: WriteQueue,
}

impl<DB: Database> Clone for SqlStore<DB> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            options: self.options.clone(),
            preparing: self.preparing,
            changes: self.changes.clone(),
            writes: self.writes.clone(),
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
            .field("preparing", &self.preparing)
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
pub(super) fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// The actor and request id of the current write, as bound to a statement.
pub(super) fn writer() -> (
    Option<Json<crate::store::contract::feed::Actor>>,
    Option<String>,
) {
    match crate::store::contract::feed::current_write_context() {
        Some(context) => (Some(Json(context.actor)), context.request_id),
        None => (None, None),
    }
}

pub(super) fn labels_json(labels: &Labels) -> Json<BTreeMap<String, String>> {
    Json(labels.as_map().clone())
}

/// What one write stores for a secret's data: the bytes, the id of the key that sealed
/// them and the write's random id (both `None`: stored as given, when the store has no
/// keyring).
pub(super) struct StoredData {
    bytes: Vec<u8>,
    key_id: Option<String>,
    write_id: Option<Vec<u8>>,
}

/// Seals `data` of secret `key` for a new write.
pub(super) fn seal(keyring: Option<&Keyring>, key: &SecretKey, data: &[u8]) -> StoredData {
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
pub(super) fn seal_spec(keyring: Option<&Keyring>, mesh: &MeshName, spec: &MeshSpec) -> MeshSpec {
    let mut stored = spec.clone();
    if let Some(keyring) = keyring {
        crate::sealing::seal_mesh_spec(keyring, mesh.as_str(), &mut stored);
    }
    stored
}

/// A stored Mesh spec with its inline CA keys opened, or the error naming the Mesh.
pub(super) fn open_spec_with(
    keyring: Option<&Keyring>,
    mesh: &MeshName,
    mut stored: MeshSpec,
) -> Result<MeshSpec> {
    crate::sealing::open_mesh_spec(keyring, mesh.as_str(), &mut stored).map_err(|reason| {
        StoreError::Sealed {
            key: ResourceKey::mesh(mesh),
            reason,
        }
    })?;
    Ok(stored)
}

/// The checks every Mesh spec passes before it is stored, by the API or by an import: the
/// mTLS section's structure with Kuma's messages, and no NUL character in any string
/// (Postgres cannot store one).
pub(super) fn check_mesh_spec(
    name: &MeshName,
    spec: &MeshSpec,
) -> std::result::Result<Option<Mtls>, ValidationError> {
    crate::domain::reject_nul_in_json("", &serde_json::Value::Object(spec.clone()))?;
    Mtls::of(spec, name)
}

/// After an UPDATE or DELETE guarded by version touched no row: the row is gone
/// (`NotFound`) or at another version (`Conflict`).
pub(super) fn missed(key: ResourceKey, expected: Option<i64>, actual: Option<i64>) -> StoreError {
    match (expected, actual) {
        (Some(expected), Some(actual)) => StoreError::Conflict {
            key,
            expected,
            actual,
        },
        _ => StoreError::NotFound(key),
    }
}
