//! A migration tool on the library: copies every Mesh, Secret and GlobalSecret of one store
//! into another (SQLite to Postgres, or back, or between two Postgres), from one point in
//! time of the source, then reads both back and compares them.
//!
//! ```text
//! cargo run --example migrate_store -- FROM_URL TO_URL KEYRING_FILE
//! cargo run --example migrate_store -- sqlite://kuma-secrets.db \
//!     postgres://postgres:postgres@127.0.0.1:5432/kuma kuma-secrets.db.keys
//! ```
//!
//! Both stores are sealed with the keyring (`kuma-secrets generate encryption-key` writes
//! one; a SQLite store keeps its own beside its file). Running it twice changes nothing the
//! second time. `kuma-secrets copy` is the full tool (progress, history, record times).

use kuma_secrets::domain::{NewMesh, NewSecret, Resource};
use kuma_secrets::sealing::Keyring;
use kuma_secrets::store::{
    AnyStore, ImportCounts, MeshWalk, SecretScope, SecretStore, SecretWalk, StoreOptions, Walk,
};
use std::sync::Arc;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Resources per page read and per transaction written.
const BATCH: u32 = 500;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [from, to, keys] = args.as_slice() else {
        return Err("usage: migrate_store FROM_URL TO_URL KEYRING_FILE".into());
    };
    let keyring = Arc::new(Keyring::load(std::path::Path::new(keys))?);
    let options = StoreOptions::sealed_with(keyring);

    let opened = AnyStore::open(from, options.clone()).await?;
    // One point in time of the source, as pg_dump reads: writers meanwhile cannot make the
    // copy mix times.
    let source = opened.snapshot();
    let destination = AnyStore::migrate_and_open(to, options).await?;

    // Meshes first: a secret's Mesh must exist before it.
    let mut counts = ImportCounts::default();
    let mut meshes = MeshWalk::new(BATCH)?;
    while let Some(page) = meshes.next_items(&source).await? {
        let batch = page
            .into_iter()
            .map(|mesh| {
                Resource::Mesh(NewMesh {
                    name: mesh.name,
                    spec: mesh.spec,
                    labels: mesh.labels,
                })
            })
            .collect();
        counts += destination.import_batch(batch).await?;
    }
    for scope in [SecretScope::AllMeshes, SecretScope::Global] {
        let mut secrets = SecretWalk::new(scope, BATCH)?;
        while let Some(page) = secrets.next_items(&source).await? {
            let batch = page
                .into_iter()
                .map(|secret| {
                    Resource::Secret(NewSecret {
                        key: secret.key,
                        data: secret.data,
                        labels: secret.labels,
                    })
                })
                .collect();
            counts += destination.import_batch(batch).await?;
        }
    }
    println!(
        "copied {from} to {to}: {} created, {} updated, {} unchanged",
        counts.created, counts.updated, counts.unchanged
    );

    // Verify: both stores, walked in the same key order, hold the same resources.
    let compared = verify(&source, &destination).await?;
    println!("verified: {compared} resources the same in both");
    source.close().await;
    opened.close().await;
    destination.close().await;
    Ok(())
}

/// Walks both stores side by side and fails at the first difference; the number compared.
async fn verify(source: &AnyStore, destination: &AnyStore) -> Result<usize, Error> {
    let mut compared = compare(
        (MeshWalk::new(BATCH)?, MeshWalk::new(BATCH)?),
        (source, destination),
        "Meshes",
        |x, y| {
            let same = (&x.name, &x.spec, &x.labels) == (&y.name, &y.spec, &y.labels);
            (!same).then(|| format!("Mesh {} differs", x.name))
        },
    )
    .await?;
    for scope in [SecretScope::AllMeshes, SecretScope::Global] {
        compared += compare(
            (
                SecretWalk::new(scope.clone(), BATCH)?,
                SecretWalk::new(scope, BATCH)?,
            ),
            (source, destination),
            "secrets",
            |x, y| {
                let same =
                    x.key == y.key && x.data.expose() == y.data.expose() && x.labels == y.labels;
                (!same).then(|| format!("secret {} differs", x.key))
            },
        )
        .await?;
    }
    Ok(compared)
}

/// Walks `source` with the first walk and `destination` with the second, page by page in
/// key order; fails at the first pair `differs` describes, or when one store holds more
/// `what` than the other. The number compared.
async fn compare<W: Walk>(
    (mut a, mut b): (W, W),
    (source, destination): (&AnyStore, &AnyStore),
    what: &str,
    differs: impl Fn(&W::Item, &W::Item) -> Option<String>,
) -> Result<usize, Error> {
    let mut compared = 0;
    loop {
        let (left, right) = (
            a.next_items(source).await?,
            b.next_items(destination).await?,
        );
        let (left, right) = match (left, right) {
            (None, None) => return Ok(compared),
            (Some(left), Some(right)) => (left, right),
            _ => return Err(format!("the stores hold different numbers of {what}").into()),
        };
        for (x, y) in left.iter().zip(&right) {
            if let Some(difference) = differs(x, y) {
                return Err(difference.into());
            }
        }
        if left.len() != right.len() {
            return Err(format!("the stores hold different numbers of {what}").into());
        }
        compared += left.len();
    }
}
