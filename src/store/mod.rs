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
//!
//! ## Floor plan
//! - [`contract`], the ground: the [`SecretStore`] trait, [`StoreOptions`], errors, pages,
//!   change-feed and history types. It imports nothing else of the store.
//! - [`backend`]: the SQL backends, their pool, URLs, migrations and [`AnyStore`]; built on
//!   the contract only.
//! - [`wrap`]: stores that wrap a store (read cache, read replica, watch), sharing
//!   `forward_store_methods!`; built on the contract only.
//!
//! - [`upkeep`], on top: the background tasks a running store needs (retention, the cache
//!   follower, a replica's monitor), started and stopped by the embedder.
//!
//! This module only names what they hold; `.ci/module-cycles` checks that the arrows
//! between them run this way.

pub mod backend;
pub mod contract;
pub mod upkeep;
pub mod wrap;

#[cfg(feature = "postgres")]
pub use backend::PostgresStore;
#[cfg(feature = "sqlite")]
pub use backend::SqliteStore;
pub use backend::{
    AnyStore, Backend, Dialect, KeptTimes, KeyUsage, MigrationReport, MigrationState,
    MigrationStatus, PlaintextValue, PoolMode, ResealBatch, Rewrapped, SealRefusal, SealedRows,
    SqlStore, StoreUrl, StoredDataKey, TimesOf, Unreadable,
};
pub use contract::{
    CacheReport, CacheStats, Cursor, DEFAULT_PAGE_SIZE, DatabaseError, Expect,
    ExternalServiceQuery, ExternalServiceWalk, ImportCounts, MAX_PAGE_SIZE, MeshQuery, MeshWalk,
    Page, PageRequest, PageStart, PageWalk, PoolReport, Put, Replication, Result, SchemaError,
    SealedReads, SealedSecret, SecretQuery, SecretScope, SecretStore, SecretWalk, StorageFault,
    StoreError, StoreOptions, Walk, WalkQuery, error, feed, history, page, walk,
};
#[cfg(feature = "server")]
pub(crate) use wrap::forward_store_methods;
pub use wrap::{cache, replica, watch};
