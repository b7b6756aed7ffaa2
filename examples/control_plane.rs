//! A minimal control plane embedding the store: it opens the store (migrating it), creates
//! a Mesh and a few secrets, rotates one of them from two tasks at once (each update says
//! which version it read, and the loser reads again and retries), and follows the change
//! feed, reacting to every change, until it has seen them all.
//!
//! ```text
//! cargo run --example control_plane -- sqlite://control-plane.db
//! cargo run --example control_plane -- postgres://postgres:postgres@127.0.0.1:5432/kuma
//! ```
//!
//! The store seals every secret with a keyring; this example makes a random one per run
//! (a real control plane loads its keyring from a file or a KMS, see the README).

use futures_util::StreamExt;
use kuma_secrets::domain::{
    Labels, MeshName, NewMesh, NewSecret, SecretData, SecretKey, SecretUpdate,
};
use kuma_secrets::sealing::Keyring;
use kuma_secrets::store::feed::{EventFilter, Operation};
use kuma_secrets::store::upkeep::{Upkeep, UpkeepOptions};
use kuma_secrets::store::watch::watch;
use kuma_secrets::store::{AnyStore, SecretStore, StoreError, StoreOptions};
use std::sync::Arc;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "sqlite://control-plane.db".to_owned());

    // Start-up: migrate (safe when several replicas start at once), open, start upkeep.
    let keyring = Arc::new(Keyring::single("key-1", Keyring::random_key()));
    let store = AnyStore::migrate_and_open(&url, StoreOptions::sealed_with(keyring)).await?;
    let upkeep = Upkeep::start(store.clone(), UpkeepOptions::default());

    // Follow the feed from now on: every change after this revision, once, in order.
    let from = store.current_revision().await?;
    let mut changes = Box::pin(watch(store.clone(), from, EventFilter::default()));

    // A Mesh of this run's own, and three secrets in it.
    let mesh = MeshName::parse(&format!("cp-{}", std::process::id()))?;
    store
        .create_mesh(NewMesh {
            name: mesh.clone(),
            spec: Default::default(),
            labels: Labels::default(),
        })
        .await?;
    let key = |name: &str| SecretKey::parse(Some(mesh.as_str()), name);
    for name in ["ca-cert", "ca-key", "api-token"] {
        store
            .create_secret(NewSecret {
                key: key(name)?,
                data: SecretData::new(format!("{name} v1").into_bytes())?,
                labels: Labels::default(),
            })
            .await?;
    }

    // Two rotations of one secret at once: optimistic concurrency, retry on conflict.
    let token = key("api-token")?;
    let (a, b) = tokio::join!(
        rotate(&store, &token, "rotated by A"),
        rotate(&store, &token, "rotated by B")
    );
    println!(
        "rotations: A after {} attempt(s), B after {} attempt(s)",
        a?, b?
    );

    // React to each change: 1 Mesh + 3 secrets created, 2 updates.
    let mut seen = 0;
    while seen < 6 {
        let event = changes.next().await.ok_or("the feed ended")??;
        let what = match event.operation {
            Operation::Create => "created",
            Operation::Update => "updated",
            Operation::Delete => "deleted",
        };
        println!(
            "revision {}: {} {}/{} {what} (version {})",
            event.revision,
            event.resource_type,
            event.mesh.as_deref().unwrap_or("-"),
            event.name,
            event.version
        );
        seen += 1;
    }

    let current = store.get_secret(&token).await?;
    println!(
        "{token} is at version {}: {:?}",
        current.meta.version,
        String::from_utf8_lossy(current.data.expose())
    );
    assert_eq!(current.meta.version, 3, "two updates after the create");

    // Clean up this run's Mesh (its secrets go with it), stop upkeep, close.
    store.delete_mesh(&mesh, None).await?;
    upkeep.stop().await;
    store.close().await;
    Ok(())
}

/// Writes `value` into `key` as a read-modify-write: read, update at the version read, and
/// on a conflict (someone else wrote in between) read again. Returns the attempts it took.
async fn rotate(store: &AnyStore, key: &SecretKey, value: &str) -> Result<u32, Error> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let current = store.get_secret(key).await?;
        let update = SecretUpdate {
            data: SecretData::new(value.as_bytes().to_vec())?,
            labels: current.labels.clone(),
        };
        match store.update_secret(key, current.meta.version, update).await {
            Ok(_) => return Ok(attempts),
            Err(StoreError::Conflict { .. }) => continue,
            Err(other) => return Err(other.into()),
        }
    }
}
