//! Version history at the store, on both backends: versions kept and pruned at the limit,
//! read by version, rollback as a new version, restore after delete, purge, a fresh
//! history for a new secret with a deleted one's name, Mesh deletes, history off, and no
//! lost write when updates and rollbacks race.

#[macro_use]
mod common;

use kuma_secrets::domain::{
    Labels, MeshName, NewMesh, NewSecret, Secret, SecretData, SecretKey, SecretUpdate,
};
use kuma_secrets::store::{PostgresStore, SecretStore, SqliteStore, StoreError};
use std::sync::Arc;

/// The history limit, which the store keeps in the database (`serve --max-versions`).
trait HistoryLimit {
    async fn keep(&self, versions: u32);
    async fn prune_deleted_before(&self, cutoff: chrono::DateTime<chrono::Utc>) -> u64;
}

impl HistoryLimit for PostgresStore {
    async fn keep(&self, versions: u32) {
        self.set_max_versions(versions).await.unwrap();
        assert_eq!(self.max_versions().await.unwrap(), versions);
    }
    async fn prune_deleted_before(&self, cutoff: chrono::DateTime<chrono::Utc>) -> u64 {
        self.prune_deleted_history(cutoff, 1000).await.unwrap()
    }
}

impl HistoryLimit for SqliteStore {
    async fn keep(&self, versions: u32) {
        self.set_max_versions(versions).await.unwrap();
        assert_eq!(self.max_versions().await.unwrap(), versions);
    }
    async fn prune_deleted_before(&self, cutoff: chrono::DateTime<chrono::Utc>) -> u64 {
        self.prune_deleted_history(cutoff, 1000).await.unwrap()
    }
}

fn key(name: &str) -> SecretKey {
    SecretKey::parse(Some("demo"), name).unwrap()
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    Labels::from_pairs(pairs.iter().copied()).unwrap()
}

async fn add_mesh<S: SecretStore>(store: &S) {
    store
        .create_mesh(NewMesh {
            name: MeshName::parse("demo").unwrap(),
            spec: Default::default(),
            labels: Labels::default(),
        })
        .await
        .unwrap();
}

async fn create<S: SecretStore>(store: &S, name: &str, data: &str) -> Secret {
    store
        .create_secret(NewSecret {
            key: key(name),
            data: SecretData::new(data.as_bytes().to_vec()).unwrap(),
            labels: labels(&[("v", data)]),
        })
        .await
        .unwrap()
}

/// Updates `name` from `version` to `data` (labelled `v=data`).
async fn update<S: SecretStore>(store: &S, name: &str, version: i64, data: &str) -> Secret {
    store
        .update_secret(
            &key(name),
            version,
            SecretUpdate {
                data: SecretData::new(data.as_bytes().to_vec()).unwrap(),
                labels: labels(&[("v", data)]),
            },
        )
        .await
        .unwrap()
}

fn text(secret: &Secret) -> String {
    String::from_utf8(secret.data.expose().to_vec()).unwrap()
}

async fn versions<S: SecretStore>(store: &S, name: &str) -> Vec<i64> {
    store
        .secret_versions(&key(name))
        .await
        .unwrap()
        .iter()
        .map(|v| v.version)
        .collect()
}

fn assert_version_not_found(err: StoreError, version: i64) {
    assert!(
        matches!(err, StoreError::VersionNotFound { version: v, .. } if v == version),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("pruned by the history limit"),
        "{err}"
    );
}

async fn history_is_kept_and_pruned_at_the_limit<S: SecretStore>(store: &S) {
    add_mesh(store).await;
    create(store, "s", "d1").await;
    for v in 1..=12 {
        update(store, "s", v, &format!("d{}", v + 1)).await;
    }
    // The current version and the 10 before it; 1 and 2 pruned in the writing statement.
    assert_eq!(
        versions(store, "s").await,
        (3..=13).rev().collect::<Vec<_>>()
    );
    let listed = store.secret_versions(&key("s")).await.unwrap();
    assert!(listed[0].current && listed[1..].iter().all(|v| !v.current));
    let v3 = store.get_secret_version(&key("s"), 3).await.unwrap();
    assert_eq!((text(&v3), v3.meta.version), ("d3".to_owned(), 3));
    assert_eq!(v3.labels, labels(&[("v", "d3")]));
    let v13 = store.get_secret_version(&key("s"), 13).await.unwrap();
    assert_eq!(text(&v13), "d13");
    for gone in [1, 2, 14] {
        let err = store.get_secret_version(&key("s"), gone).await.unwrap_err();
        assert_version_not_found(err, gone);
    }
    let err = store.get_secret_version(&key("none"), 1).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
}

async fn a_lower_limit_prunes_at_the_next_update<S: SecretStore + HistoryLimit>(store: &S) {
    add_mesh(store).await;
    create(store, "s", "d1").await;
    for v in 1..=5 {
        update(store, "s", v, &format!("d{}", v + 1)).await;
    }
    assert_eq!(versions(store, "s").await, vec![6, 5, 4, 3, 2, 1]);
    store.keep(2).await;
    update(store, "s", 6, "d7").await;
    assert_eq!(versions(store, "s").await, vec![7, 6, 5]);
}

async fn rollback_writes_a_new_version_with_the_old_data<S: SecretStore>(store: &S) {
    add_mesh(store).await;
    create(store, "s", "good").await;
    update(store, "s", 1, "bad").await;
    let rolled = store.rollback_secret(&key("s"), 1, None).await.unwrap();
    assert_eq!((text(&rolled), rolled.meta.version), ("good".to_owned(), 3));
    assert_eq!(rolled.labels, labels(&[("v", "good")]));
    let current = store.get_secret(&key("s")).await.unwrap();
    assert_eq!(
        (text(&current), current.meta.version),
        ("good".to_owned(), 3)
    );
    // History is never rewritten: 1 and 2 are still there as they were.
    assert_eq!(versions(store, "s").await, vec![3, 2, 1]);
    assert_eq!(
        text(&store.get_secret_version(&key("s"), 2).await.unwrap()),
        "bad"
    );
    // With a stale expected version: a conflict, nothing written.
    let err = store
        .rollback_secret(&key("s"), 2, Some(2))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Conflict {
                expected: 2,
                actual: 3,
                ..
            }
        ),
        "{err:?}"
    );
    let err = store
        .rollback_secret(&key("s"), 9, Some(3))
        .await
        .unwrap_err();
    assert_version_not_found(err, 9);
    let err = store
        .rollback_secret(&key("none"), 1, None)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    assert_eq!(store.get_secret(&key("s")).await.unwrap().meta.version, 3);
}

async fn a_deleted_secret_can_be_restored<S: SecretStore>(store: &S) {
    add_mesh(store).await;
    let created = create(store, "s", "one").await;
    update(store, "s", 1, "two").await;
    store.delete_secret(&key("s"), None).await.unwrap();
    let err = store.get_secret(&key("s")).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    let err = store.get_secret_version(&key("s"), 1).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    let listed = store.secret_versions(&key("s")).await.unwrap();
    assert_eq!(
        listed.iter().map(|v| v.version).collect::<Vec<_>>(),
        vec![2, 1]
    );
    assert!(
        listed
            .iter()
            .all(|v| !v.current && v.deletion_time.is_some())
    );

    let restored = store.restore_secret(&key("s"), None).await.unwrap();
    assert_eq!(
        (text(&restored), restored.meta.version),
        ("two".to_owned(), 3)
    );
    assert_eq!(restored.meta.creation_time, created.meta.creation_time);
    assert_eq!(versions(store, "s").await, vec![3, 2, 1]);
    let err = store.restore_secret(&key("s"), None).await.unwrap_err();
    assert!(matches!(err, StoreError::NotDeleted(_)), "{err:?}");

    // A chosen version, after another delete.
    store.delete_secret(&key("s"), Some(3)).await.unwrap();
    let err = store.restore_secret(&key("s"), Some(7)).await.unwrap_err();
    assert_version_not_found(err, 7);
    let restored = store.restore_secret(&key("s"), Some(1)).await.unwrap();
    assert_eq!(
        (text(&restored), restored.meta.version),
        ("one".to_owned(), 4)
    );
    assert_eq!(restored.labels, labels(&[("v", "one")]));
    let err = store.restore_secret(&key("never"), None).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
}

async fn a_new_secret_with_a_deleted_ones_name_starts_a_fresh_history<S: SecretStore>(store: &S) {
    add_mesh(store).await;
    create(store, "s", "old").await;
    update(store, "s", 1, "older").await;
    store.delete_secret(&key("s"), None).await.unwrap();
    let fresh = create(store, "s", "new").await;
    assert_eq!(fresh.meta.version, 1);
    assert_eq!(versions(store, "s").await, vec![1]);
    update(store, "s", 1, "newer").await;
    assert_eq!(versions(store, "s").await, vec![2, 1]);
    assert_eq!(
        text(&store.get_secret_version(&key("s"), 1).await.unwrap()),
        "new"
    );
}

async fn purge_destroys_a_secret_and_its_history<S: SecretStore>(store: &S) {
    add_mesh(store).await;
    create(store, "live", "a").await;
    update(store, "live", 1, "b").await;
    store.purge_secret(&key("live"), None).await.unwrap();
    for err in [
        store.get_secret(&key("live")).await.unwrap_err(),
        store.secret_versions(&key("live")).await.unwrap_err(),
        store.restore_secret(&key("live"), None).await.unwrap_err(),
    ] {
        assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    }
    // A deleted secret's history.
    create(store, "gone", "a").await;
    store.delete_secret(&key("gone"), None).await.unwrap();
    store.purge_secret(&key("gone"), None).await.unwrap();
    let err = store.restore_secret(&key("gone"), None).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    let err = store.purge_secret(&key("gone"), None).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
}

async fn with_history_off_deletes_are_final<S: SecretStore + HistoryLimit>(store: &S) {
    add_mesh(store).await;
    create(store, "before", "kept").await;
    update(store, "before", 1, "current").await;
    store.keep(0).await;
    // What was kept stays readable; nothing more is kept.
    assert_eq!(
        text(&store.get_secret_version(&key("before"), 1).await.unwrap()),
        "kept"
    );
    update(store, "before", 2, "newer").await;
    assert_eq!(versions(store, "before").await, vec![3, 1]);
    create(store, "s", "a").await;
    update(store, "s", 1, "b").await;
    assert_eq!(versions(store, "s").await, vec![2]);
    let err = store.get_secret_version(&key("s"), 1).await.unwrap_err();
    assert_version_not_found(err, 1);
    store.delete_secret(&key("s"), None).await.unwrap();
    let err = store.restore_secret(&key("s"), None).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
}

async fn deleting_a_mesh_drops_its_secrets_histories<S: SecretStore>(store: &S) {
    add_mesh(store).await;
    create(store, "kept", "a").await;
    update(store, "kept", 1, "b").await;
    create(store, "deleted", "a").await;
    store.delete_secret(&key("deleted"), None).await.unwrap();
    store
        .delete_mesh(&MeshName::parse("demo").unwrap(), None)
        .await
        .unwrap();
    add_mesh(store).await;
    for name in ["kept", "deleted"] {
        let err = store.secret_versions(&key(name)).await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound(_)), "{name}: {err:?}");
        let err = store.restore_secret(&key(name), None).await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound(_)), "{name}: {err:?}");
    }
}

async fn deleted_history_expires<S: SecretStore + HistoryLimit>(store: &S) {
    add_mesh(store).await;
    create(store, "old", "a").await;
    update(store, "old", 1, "b").await;
    store.delete_secret(&key("old"), None).await.unwrap();
    create(store, "live", "a").await;
    update(store, "live", 1, "b").await;
    // Nothing deleted before an hour ago.
    let an_hour_ago = chrono::Utc::now() - chrono::Duration::hours(1);
    assert_eq!(store.prune_deleted_before(an_hour_ago).await, 0);
    let soon = chrono::Utc::now() + chrono::Duration::seconds(1);
    assert_eq!(store.prune_deleted_before(soon).await, 2);
    let err = store.restore_secret(&key("old"), None).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    // A live secret's history is not the deleted-retention's business.
    assert_eq!(versions(store, "live").await, vec![2, 1]);
}

/// Runs `future` as the user `name`.
async fn as_user<F: std::future::Future>(name: &str, future: F) -> F::Output {
    use kuma_secrets::store::feed::{Actor, WriteContext, with_write_context};
    let context = WriteContext {
        actor: Actor {
            name: name.to_owned(),
            groups: Vec::new(),
        },
        request_id: None,
    };
    with_write_context(context, future).await
}

fn actors(listed: &[kuma_secrets::store::history::VersionInfo]) -> Vec<(i64, String)> {
    listed
        .iter()
        .map(|v| {
            (
                v.version,
                v.actor.as_ref().map(|a| a.name.clone()).unwrap_or_default(),
            )
        })
        .collect()
}

async fn each_version_names_its_writer<S: SecretStore>(store: &S) {
    add_mesh(store).await;
    as_user("alice", create(store, "s", "a1")).await;
    as_user("bob", update(store, "s", 1, "b2")).await;
    // A delete that fails (stale version) leaves no trace on the row...
    let err = as_user("mallory", store.delete_secret(&key("s"), Some(1)))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    as_user("alice", update(store, "s", 2, "a3")).await;
    let listed = store.secret_versions(&key("s")).await.unwrap();
    assert_eq!(
        actors(&listed),
        [(3, "alice".into()), (2, "bob".into()), (1, "alice".into())]
    );
    // ...and a delete keeps the deleted version with its writer, not its deleter.
    as_user("carol", store.delete_secret(&key("s"), None))
        .await
        .unwrap();
    let listed = store.secret_versions(&key("s")).await.unwrap();
    assert_eq!(
        actors(&listed),
        [(3, "alice".into()), (2, "bob".into()), (1, "alice".into())]
    );
}

/// 16 writers each update or roll back one secret with compare-and-swap, retrying on
/// conflicts: the final version is one more than the writes accepted, and every version
/// the limit keeps is readable.
async fn racing_updates_and_rollbacks_lose_nothing<S: SecretStore + 'static>(store: Arc<S>) {
    add_mesh(store.as_ref()).await;
    create(store.as_ref(), "hot", "w0").await;
    let mut tasks = Vec::new();
    for writer in 0..16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut accepted = 0u64;
            for round in 0..6 {
                loop {
                    let current = store.get_secret(&key("hot")).await.unwrap().meta.version;
                    let result = if (writer + round) % 3 == 0 && current > 1 {
                        store
                            .rollback_secret(&key("hot"), current - 1, Some(current))
                            .await
                    } else {
                        store
                            .update_secret(
                                &key("hot"),
                                current,
                                SecretUpdate {
                                    data: SecretData::new(
                                        format!("w{writer}r{round}").into_bytes(),
                                    )
                                    .unwrap(),
                                    labels: Labels::default(),
                                },
                            )
                            .await
                    };
                    match result {
                        Ok(_) => {
                            accepted += 1;
                            break;
                        }
                        Err(StoreError::Conflict { .. }) => continue,
                        Err(other) => panic!("writer {writer}: {other:?}"),
                    }
                }
            }
            accepted
        }));
    }
    let mut accepted = 0;
    for task in tasks {
        accepted += task.await.unwrap();
    }
    let current = store.get_secret(&key("hot")).await.unwrap().meta.version;
    assert_eq!(current as u64, accepted + 1);
    let listed = versions(store.as_ref(), "hot").await;
    assert_eq!(listed, (current - 10..=current).rev().collect::<Vec<_>>());
    for version in listed {
        store
            .get_secret_version(&key("hot"), version)
            .await
            .unwrap();
    }
}

on_both_backends! {
    stores: [
        history_is_kept_and_pruned_at_the_limit,
        a_lower_limit_prunes_at_the_next_update,
        rollback_writes_a_new_version_with_the_old_data,
        a_deleted_secret_can_be_restored,
        a_new_secret_with_a_deleted_ones_name_starts_a_fresh_history,
        purge_destroys_a_secret_and_its_history,
        with_history_off_deletes_are_final,
        deleting_a_mesh_drops_its_secrets_histories,
        deleted_history_expires,
        each_version_names_its_writer,
    ],
    shared: [racing_updates_and_rollbacks_lose_nothing]
}

/// An update of a secret writes its event and keeps the replaced version from a trigger
/// that runs before the row is written (Postgres): an update the database then refuses (a
/// constraint checked after that trigger) leaves neither behind, and a versioned update
/// that matches no row fires nothing.
#[tokio::test]
async fn a_refused_update_leaves_no_event_and_no_kept_version_on_postgres() {
    use sqlx::{Connection, Executor};
    let (db, store) = common::postgres_store().await;
    add_mesh(&store).await;
    let first = create(&store, "s", "v1").await;
    update(&store, "s", first.meta.version, "v2").await;
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    async fn counts(conn: &mut sqlx::PgConnection) -> (i64, i64) {
        let sql = "SELECT (SELECT count(*) FROM events WHERE name = 's'), \
                   (SELECT count(*) FROM secret_versions)";
        sqlx::query_as(sql).fetch_one(conn).await.unwrap()
    }
    let before = counts(&mut conn).await;
    assert_eq!(
        before,
        (2, 1),
        "a create and an update: two events, one kept version"
    );
    // `secrets_data_not_empty` is checked after BEFORE triggers have run.
    let refused = conn
        .execute("UPDATE secrets SET data = '', version = version + 1 WHERE name = 's'")
        .await
        .expect_err("empty data violates secrets_data_not_empty");
    assert!(
        refused.to_string().contains("secrets_data_not_empty"),
        "{refused}"
    );
    let stale = conn
        .execute(
            "UPDATE secrets SET data = 'x', version = version + 1 WHERE name = 's' AND version = 1",
        )
        .await
        .unwrap();
    assert_eq!(stale.rows_affected(), 0);
    assert_eq!(
        counts(&mut conn).await,
        before,
        "nothing written for either"
    );
    assert_eq!(versions(&store, "s").await, vec![2, 1]);
    conn.close().await.unwrap();
}
