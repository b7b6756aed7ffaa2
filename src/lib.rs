//! # kuma-secrets
//!
//! A persistent store for Kuma-style `Secret` (bound to one Mesh) and `GlobalSecret`
//! resources, with client-visible optimistic concurrency, pagination done in the database,
//! and no lost updates when several control-plane replicas share one Postgres.
//!
//! ## Layout
//! - [`domain`]: names, labels, secrets and meshes, validated with Kuma's rules and messages.
//! - [`store`]: the [`store::SecretStore`] repository trait and its two backends,
//!   [`store::PostgresStore`] and [`store::SqliteStore`], plus schema migrations.
//! - [`sealing`]: encryption at rest (AES-256-GCM, keyrings) the store applies to every
//!   secret it writes and reads.
//! - [`ca`]: Mesh mTLS certificate authorities: builtin generation, provided-CA checks.
//! - [`api`]: the Kuma-compatible HTTP API (axum), with authentication and metrics.
//! - [`wire`]: Kuma's JSON and YAML shapes, typed: API bodies, Universal YAML, Kubernetes
//!   manifests, error bodies; used by the API, the client, the manifest module and the CLI.
//! - [`client`]: a client of that API, for the CLI's verbs.
//! - [`manifest`]: Universal and Kubernetes YAML in and out.
//! - [`cli`]: the `kuma-secrets` command line (`main.rs` only calls it).
//! - [`duration`]: durations as users write them (`24h`, `7d`).
//! - [`printable`]: outside text (token identities, names from the database) escaped for
//!   terminals and log lines.
//!
//! ## Embedding
//! ```no_run
//! use kuma_secrets::domain::{Labels, NewMesh, NewSecret, SecretData, SecretKey, SecretUpdate};
//! use kuma_secrets::store::{AnyStore, SecretStore, StoreError, StoreOptions};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let store = AnyStore::open("sqlite://kuma-secrets.db", StoreOptions::allow_plaintext_secrets()).await?;
//! let key = SecretKey::parse(Some("default"), "my-ca-cert")?;
//! let current = store.get_secret(&key).await?;
//! let update = SecretUpdate {
//!     data: SecretData::new(b"new PEM".to_vec())?,
//!     labels: current.labels.clone(),
//! };
//! match store.update_secret(&key, current.meta.version, update).await {
//!     Ok(updated) => println!("now at version {}", updated.meta.version),
//!     Err(StoreError::Conflict { .. }) => println!("changed meanwhile: read again, retry"),
//!     Err(other) => return Err(other.into()),
//! }
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
#[cfg(feature = "server")]
pub mod cli;
#[cfg(feature = "server")]
pub mod client;
pub mod domain;
pub mod duration;
pub mod manifest;
pub mod printable;
pub mod sealing;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
pub mod wire;

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
