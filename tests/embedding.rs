//! The library as an embedding control plane uses it: on a multi-threaded runtime, where
//! every future it is given to run must be `Send`. Each public entry point is run inside
//! `tokio::spawn` (a future that is not `Send` does not compile here), on both backends.

#[macro_use]
mod common;

use common::server::Backend;
use kuma_secrets::domain::{Labels, MeshName, NewMesh};
use kuma_secrets::store::upkeep::{Upkeep, UpkeepOptions};
use kuma_secrets::store::{AnyStore, MeshQuery, SecretStore, StoreOptions};

/// Runs `future` on another task of the runtime, as an embedder would.
async fn spawned<T: Send + 'static>(future: impl Future<Output = T> + Send + 'static) -> T {
    tokio::spawn(future).await.expect("the task ran")
}

async fn every_entry_point_can_be_spawned(backend: Backend) {
    let (_db, _dir, url) = match backend {
        Backend::Postgres => {
            let db = common::TestDb::empty().await;
            let url = db.url.clone();
            (Some(db), None, url)
        }
        Backend::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let url = common::sqlite_url(dir.path(), "store.db");
            (None, Some(dir), url)
        }
    };
    let options = common::sealed(StoreOptions::allow_plaintext_secrets());
    let u = url.clone();
    let report = spawned(async move { AnyStore::migrate_up(&u, false).await })
        .await
        .unwrap();
    assert!(report.version > 0);
    let u = url.clone();
    let status = spawned(async move { AnyStore::migration_status(&u).await })
        .await
        .unwrap();
    assert!(!status.is_empty());
    let (u, o) = (url.clone(), options.clone());
    let store = spawned(async move { AnyStore::migrate_and_open(&u, o).await })
        .await
        .unwrap();
    let (u, o) = (url.clone(), options.clone());
    let again = spawned(async move { AnyStore::open(&u, o).await })
        .await
        .unwrap();
    let s = store.clone();
    spawned(async move {
        s.create_mesh(NewMesh {
            name: MeshName::parse("spawned").unwrap(),
            spec: Default::default(),
            labels: Labels::default(),
        })
        .await
    })
    .await
    .unwrap();
    let s = again.clone();
    let meshes = spawned(async move { s.list_meshes(&MeshQuery::default()).await })
        .await
        .unwrap();
    assert!(meshes.items.iter().any(|m| m.name.as_str() == "spawned"));
    let upkeep = Upkeep::start(store.clone(), UpkeepOptions::default());
    spawned(async move { upkeep.stop().await }).await;
    let s = store.clone();
    spawned(async move { s.close().await }).await;
    again.close().await;
}

on_both_backends! {
    every_entry_point_can_be_spawned,
}
