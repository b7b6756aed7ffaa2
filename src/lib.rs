//! # kuma-secrets
//!
//! A persistent store for Kuma-style `Secret` (bound to one Mesh) and `GlobalSecret`
//! resources, with client-visible optimistic concurrency, pagination done in the database,
//! and no lost updates when several control-plane replicas share one Postgres.
//!
//! ## Cargo features
//! - `server` (default): the HTTP API, the `kuma-secrets` command line and the API client,
//!   on both backends.
//! - `postgres`, `sqlite`: the backends. An embedding control plane takes the library
//!   alone with the one it uses, and none of the server's dependencies:
//!   `kuma-secrets = { version = "0.1", default-features = false, features = ["postgres"] }`.
//! - `testing`: the `testing` module, a fresh Postgres database per test in one line.
//!
//! The minimum Rust version is 1.94 (sqlx 0.9's); clippy's `incompatible_msrv` lint, run
//! with warnings denied in CI, keeps the crate's own code within it.
//!
//! ## Layout
//! - [`domain`]: names, labels, secrets and meshes, validated with Kuma's rules and messages.
//! - [`store`]: the [`store::SecretStore`] repository trait (the contract), its backends
//!   ([`store::AnyStore`] over Postgres and SQLite) with their migrations, the wrappers (read
//!   cache, read replica, watch) and the upkeep tasks a running store needs.
//! - [`sealing`]: encryption at rest (AES-256-GCM, keyrings) the store applies to every
//!   secret it writes and reads.
//! - [`ca`]: Mesh mTLS certificate authorities: builtin generation, provided-CA checks.
//! - [`wire`]: Kuma's JSON and YAML shapes, typed: API bodies, Universal YAML, Kubernetes
//!   manifests, error bodies; used by the API, the client, the manifest module and the CLI.
//! - [`manifest`]: Universal and Kubernetes YAML in and out.
//! - `kuma_db` (feature `postgres`): Kuma's own database (its `resources` table), read as
//!   a snapshot and written back as Kuma writes it.
//! - [`duration`]: durations as users write them (`24h`, `7d`).
//! - [`printable`]: outside text (token identities, names from the database) escaped for
//!   terminals and log lines.
//! - `api` (feature `server`): the Kuma-compatible HTTP API (axum), with authentication and
//!   metrics.
//! - `client` (feature `server`): a client of that API, for the CLI's verbs.
//! - `cli` (feature `server`): the `kuma-secrets` command line (`main.rs` only calls it).
//! - `testing` (feature `testing`): test databases and throwaway Postgres clusters.
//!
//! ## Embedding
//! A control plane's start-up, a versioned update that retries on conflict, and the change
//! feed (this runs as a doctest, on SQLite; a Postgres URL works the same):
//!
//! ```
//! use futures_util::StreamExt;
//! use kuma_secrets::domain::{Labels, MeshName, NewMesh, NewSecret, SecretData, SecretKey, SecretUpdate};
//! use kuma_secrets::sealing::Keyring;
//! use kuma_secrets::store::feed::EventFilter;
//! use kuma_secrets::store::upkeep::{Upkeep, UpkeepOptions};
//! use kuma_secrets::store::{AnyStore, SecretStore, StoreError, StoreOptions};
//! use std::sync::Arc;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! # let dir = tempfile::tempdir()?;
//! # let url = format!("sqlite://{}", dir.path().join("store.db").display());
//! // Start-up: migrations (safe with several replicas), a keyring, the upkeep tasks.
//! let keyring = Arc::new(Keyring::single("key-1", Keyring::random_key()));
//! let store = AnyStore::migrate_and_open(&url, StoreOptions::sealed_with(keyring)).await?;
//! let upkeep = Upkeep::start(store.clone(), UpkeepOptions::default());
//! let from = store.current_revision().await?;
//!
//! store
//!     .create_mesh(NewMesh { name: MeshName::parse("default")?, spec: Default::default(), labels: Labels::default() })
//!     .await?;
//! let key = SecretKey::parse(Some("default"), "my-ca-cert")?;
//! store
//!     .create_secret(NewSecret { key: key.clone(), data: SecretData::new(b"PEM".to_vec())?, labels: Labels::default() })
//!     .await?;
//!
//! // An update names the version it read; on a conflict, read again and retry.
//! loop {
//!     let current = store.get_secret(&key).await?;
//!     let update = SecretUpdate { data: SecretData::new(b"new PEM".to_vec())?, labels: current.labels };
//!     match store.update_secret(&key, current.meta.version, update).await {
//!         Ok(updated) => break assert_eq!(updated.meta.version, 2),
//!         Err(StoreError::Conflict { .. }) => continue,
//!         Err(other) => return Err(other.into()),
//!     }
//! }
//!
//! // Every change since start-up, in commit order: the Mesh, the create, the update.
//! let mut changes = Box::pin(kuma_secrets::store::watch::watch(store.clone(), from, EventFilter::default()));
//! for expected in ["default", "my-ca-cert", "my-ca-cert"] {
//!     let event = changes.next().await.ok_or("the feed ended")??;
//!     assert_eq!(event.name, expected);
//! }
//! upkeep.stop().await;
//! store.close().await;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(not(any(feature = "postgres", feature = "sqlite")))]
compile_error!(
    "kuma-secrets needs a backend: enable the cargo feature `postgres`, `sqlite`, or both"
);

#[cfg(feature = "server")]
pub mod api;
pub mod ca;
pub mod certificates;
#[cfg(feature = "server")]
pub mod cli;
#[cfg(feature = "server")]
pub mod client;
pub mod domain;
pub mod duration;
pub mod envelope;
#[cfg(feature = "server")]
pub mod federation;
#[cfg(feature = "postgres")]
pub mod kuma_db;
pub mod manifest;
pub mod printable;
pub mod sealing;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
pub mod wire;

/// The README's Rust examples, compiled (and run, unless marked `no_run`) as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// `bytes` in lowercase hex (stored ids and the rows of bulk statements).
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)]);
        out.push(DIGITS[usize::from(byte & 15)]);
    }
    // Bytes rather than `char`s pushed on a `String`: half the time of a batch's rows.
    String::from_utf8(out).expect("hex digits are ASCII")
}

/// An error and its causes on one line (`a: b: c`), for logs and the command line. A cause
/// whose text its error already ends with is not said twice.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut line = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line
}
