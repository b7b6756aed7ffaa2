//! The store conformance suite: every case runs against both backends, Postgres (a fresh
//! database per test) and SQLite (a fresh file per test). It covers Kuma's store test
//! template (reference §5.1, with mesh deletion standing in for owner cascade) plus the
//! guarantees Kuma lacks: distinct NotFound and Conflict, versioned deletes, global-name
//! uniqueness in the schema, and no lost updates under concurrency.

#[macro_use]
mod common;

use kuma_secrets::domain::{
    Labels, MeshName, MeshUpdate, NewMesh, NewSecret, SecretData, SecretKey, SecretUpdate,
};
use kuma_secrets::store::{
    MeshQuery, PageRequest, PageStart, SecretQuery, SecretScope, SecretStore, StoreError,
};
use std::sync::Arc;

fn mesh_name(name: &str) -> MeshName {
    MeshName::parse(name).unwrap()
}

fn key(mesh: &str, name: &str) -> SecretKey {
    SecretKey::parse(Some(mesh), name).unwrap()
}

fn global(name: &str) -> SecretKey {
    SecretKey::parse(None, name).unwrap()
}

fn data(bytes: &[u8]) -> SecretData {
    SecretData::new(bytes.to_vec()).unwrap()
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    Labels::from_pairs(pairs.iter().copied()).unwrap()
}

async fn add_mesh<S: SecretStore>(store: &S, name: &str) {
    store
        .create_mesh(NewMesh {
            name: mesh_name(name),
            spec: Default::default(),
            labels: Labels::default(),
        })
        .await
        .unwrap();
}

async fn add_secret<S: SecretStore>(store: &S, key: SecretKey, bytes: &[u8]) {
    add_labelled(store, key, bytes, &[]).await;
}

async fn add_labelled<S: SecretStore>(
    store: &S,
    key: SecretKey,
    bytes: &[u8],
    pairs: &[(&str, &str)],
) -> kuma_secrets::domain::Secret {
    store
        .create_secret(NewSecret {
            key,
            data: data(bytes),
            labels: labels(pairs),
        })
        .await
        .unwrap()
}

/// Updates `key` at `version` to `bytes` and `labels`; panics unless it succeeds.
async fn update_to<S: SecretStore>(
    store: &S,
    key: &SecretKey,
    version: i64,
    bytes: &[u8],
    labels: Labels,
) -> kuma_secrets::domain::Secret {
    store
        .update_secret(
            key,
            version,
            SecretUpdate {
                data: data(bytes),
                labels,
            },
        )
        .await
        .unwrap()
}

/// `err` is a conflict between the `expected` version and the `actual` one.
fn assert_conflict(err: &StoreError, expected: i64, actual: i64) {
    assert!(
        matches!(err, StoreError::Conflict { expected: e, actual: a, .. } if *e == expected && *a == actual),
        "{err:?}"
    );
}

fn names(items: &[kuma_secrets::domain::Secret]) -> Vec<String> {
    items
        .iter()
        .map(|s| match s.key.mesh() {
            Some(m) => format!("{m}/{}", s.key.name()),
            None => s.key.name().to_string(),
        })
        .collect()
}

fn page(size: u32, offset: u64) -> PageRequest {
    PageRequest::new(size, PageStart::Offset(offset)).unwrap()
}

// ---- create -------------------------------------------------------------------------------

async fn create_returns_the_stored_secret_at_version_1<S: SecretStore>(store: &S) {
    add_mesh(store, "demo").await;
    let created = add_labelled(
        store,
        key("demo", "resource1.demo"),
        b"tls-key",
        &[("foo", "bar")],
    )
    .await;

    let read = store
        .get_secret(&key("demo", "resource1.demo"))
        .await
        .unwrap();
    assert_eq!(read, created);
    assert_eq!(read.meta.version, 1);
    assert_eq!(read.meta.creation_time, read.meta.modification_time);
    assert!(read.meta.creation_time.timestamp() > 0);
    assert_eq!(read.labels.get("foo"), Some("bar"));
    assert_eq!(read.data.expose(), b"tls-key");
}

async fn creating_a_duplicate_is_already_exists<S: SecretStore>(store: &S) {
    add_mesh(store, "demo").await;
    add_secret(store, key("demo", "dup"), b"1").await;
    let err = store
        .create_secret(NewSecret {
            key: key("demo", "dup"),
            data: data(b"2"),
            labels: Labels::default(),
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        r#"resource already exists: type="Secret" name="dup" mesh="demo""#
    );
    let kept = store.get_secret(&key("demo", "dup")).await.unwrap();
    assert_eq!(kept.data.expose(), b"1");
}

async fn two_global_secrets_with_one_name_conflict<S: SecretStore>(store: &S) {
    add_secret(store, global("gs-1"), b"a").await;
    let err = store
        .create_secret(NewSecret {
            key: global("gs-1"),
            data: data(b"b"),
            labels: Labels::default(),
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains(r#"type="GlobalSecret" name="gs-1""#)
    );
}

async fn one_name_in_two_meshes_and_globally_is_three_secrets<S: SecretStore>(store: &S) {
    add_mesh(store, "m1").await;
    add_mesh(store, "m2").await;
    add_secret(store, key("m1", "same"), b"1").await;
    add_secret(store, key("m2", "same"), b"2").await;
    add_secret(store, global("same"), b"3").await;
    assert_eq!(
        store
            .get_secret(&key("m1", "same"))
            .await
            .unwrap()
            .data
            .expose(),
        b"1"
    );
    assert_eq!(
        store
            .get_secret(&key("m2", "same"))
            .await
            .unwrap()
            .data
            .expose(),
        b"2"
    );
    assert_eq!(
        store
            .get_secret(&global("same"))
            .await
            .unwrap()
            .data
            .expose(),
        b"3"
    );
}

async fn a_secret_cannot_be_created_in_a_missing_mesh<S: SecretStore>(store: &S) {
    let err = store
        .create_secret(NewSecret {
            key: key("nowhere", "s"),
            data: data(b"x"),
            labels: Labels::default(),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::MeshNotFound { mesh } if mesh == "nowhere"),
        "{err:?}"
    );
    let all = store
        .list_secrets(&SecretQuery::new(SecretScope::AllMeshes))
        .await
        .unwrap();
    assert_eq!(all.total, 0);
}

async fn data_over_the_size_limit_is_invalid_and_not_stored<S: SecretStore>(store: &S) {
    // The fixtures use the default limit of 1 MiB.
    add_mesh(store, "demo").await;
    let err = store
        .create_secret(NewSecret {
            key: key("demo", "big"),
            data: data(&vec![7; 1024 * 1024 + 1]),
            labels: Labels::default(),
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
    assert!(err.to_string().contains("1048576"), "{err}");
    assert!(matches!(
        store.get_secret(&key("demo", "big")).await,
        Err(StoreError::NotFound(_))
    ));
    // Exactly at the limit is fine, and every byte value survives the round trip.
    let mut max = vec![0u8; 1024 * 1024];
    for (i, b) in max.iter_mut().enumerate() {
        *b = (i % 256) as u8;
    }
    add_secret(store, key("demo", "max"), &max).await;
    assert_eq!(
        store
            .get_secret(&key("demo", "max"))
            .await
            .unwrap()
            .data
            .expose(),
        &max[..]
    );
}

// ---- update -------------------------------------------------------------------------------

async fn updating_a_deleted_secret_is_not_found<S: SecretStore>(store: &S) {
    add_mesh(store, "demo").await;
    add_secret(store, key("demo", "gone"), b"x").await;
    store
        .delete_secret(&key("demo", "gone"), None)
        .await
        .unwrap();
    let err = store
        .update_secret(
            &key("demo", "gone"),
            1,
            SecretUpdate {
                data: data(b"y"),
                labels: Labels::default(),
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
}

async fn update_bumps_the_version_and_replaces_data_and_labels<S: SecretStore>(store: &S) {
    add_mesh(store, "demo").await;
    let created = add_labelled(store, key("demo", "s"), b"old", &[("foo", "bar")]).await;
    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    let updated = store
        .update_secret(
            &key("demo", "s"),
            created.meta.version,
            SecretUpdate {
                data: data(b"new"),
                labels: labels(&[("foo", "barbar"), ("newlabel", "newvalue")]),
            },
        )
        .await
        .unwrap();
    assert_eq!(updated.meta.version, 2);
    assert_eq!(updated.meta.creation_time, created.meta.creation_time);
    assert!(updated.meta.modification_time > created.meta.modification_time);

    let read = store.get_secret(&key("demo", "s")).await.unwrap();
    assert_eq!(read, updated);
    assert_eq!(read.data.expose(), b"new");
    assert_eq!(
        read.labels,
        labels(&[("foo", "barbar"), ("newlabel", "newvalue")])
    );
}

async fn update_with_the_same_labels_preserves_them<S: SecretStore>(store: &S) {
    add_mesh(store, "demo").await;
    let created = add_labelled(store, key("demo", "s"), b"1", &[("foo", "bar")]).await;
    update_to(store, &key("demo", "s"), 1, b"2", created.labels.clone()).await;
    let read = store.get_secret(&key("demo", "s")).await.unwrap();
    assert_eq!(read.labels.get("foo"), Some("bar"));
}

async fn update_with_empty_labels_removes_them<S: SecretStore>(store: &S) {
    add_mesh(store, "demo").await;
    add_labelled(store, key("demo", "s"), b"1", &[("foo", "bar")]).await;
    update_to(store, &key("demo", "s"), 1, b"2", Labels::default()).await;
    assert!(
        store
            .get_secret(&key("demo", "s"))
            .await
            .unwrap()
            .labels
            .is_empty()
    );
}

async fn update_with_a_stale_version_is_a_conflict<S: SecretStore>(store: &S) {
    add_secret(store, global("gs"), b"1").await;
    let update = || SecretUpdate {
        data: data(b"2"),
        labels: Labels::default(),
    };
    store
        .update_secret(&global("gs"), 1, update())
        .await
        .unwrap();
    let err = store
        .update_secret(&global("gs"), 1, update())
        .await
        .unwrap_err();
    assert_conflict(&err, 1, 2);
    assert!(
        err.to_string()
            .starts_with(r#"resource conflict: type="GlobalSecret" name="gs""#)
    );
    assert_eq!(
        store.get_secret(&global("gs")).await.unwrap().meta.version,
        2
    );
}

// ---- delete -------------------------------------------------------------------------------

async fn deleting_a_missing_secret_is_not_found<S: SecretStore>(store: &S) {
    add_mesh(store, "demo").await;
    let err = store
        .delete_secret(&key("demo", "none"), None)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        r#"resource not found: type="Secret" name="none" mesh="demo""#
    );
}

async fn delete_does_not_touch_another_meshs_secret<S: SecretStore>(store: &S) {
    add_mesh(store, "demo").await;
    add_mesh(store, "other").await;
    add_secret(store, key("demo", "s"), b"x").await;
    let err = store
        .delete_secret(&key("other", "s"), None)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)));
    let err = store.delete_secret(&global("s"), None).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)));
    assert!(store.get_secret(&key("demo", "s")).await.is_ok());
}

async fn delete_removes_the_secret<S: SecretStore>(store: &S) {
    add_mesh(store, "demo").await;
    add_secret(store, key("demo", "s"), b"x").await;
    store.delete_secret(&key("demo", "s"), None).await.unwrap();
    assert!(matches!(
        store.get_secret(&key("demo", "s")).await,
        Err(StoreError::NotFound(_))
    ));
}

async fn delete_with_a_stale_version_is_a_conflict_and_keeps_the_secret<S: SecretStore>(store: &S) {
    add_secret(store, global("gs"), b"1").await;
    update_to(store, &global("gs"), 1, b"2", Labels::default()).await;
    let err = store
        .delete_secret(&global("gs"), Some(1))
        .await
        .unwrap_err();
    assert_conflict(&err, 1, 2);
    assert!(store.get_secret(&global("gs")).await.is_ok());
    store.delete_secret(&global("gs"), Some(2)).await.unwrap();
    assert!(store.get_secret(&global("gs")).await.is_err());
}

// ---- get ----------------------------------------------------------------------------------

async fn get_of_a_missing_secret_is_not_found<S: SecretStore>(store: &S) {
    let err = store.get_secret(&global("none")).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)));
    assert_eq!(
        err.to_string(),
        r#"resource not found: type="GlobalSecret" name="none" mesh="""#
    );
}

async fn get_in_a_different_mesh_is_not_found<S: SecretStore>(store: &S) {
    add_mesh(store, "demo").await;
    add_mesh(store, "other").await;
    add_secret(store, key("demo", "s"), b"x").await;
    assert!(matches!(
        store.get_secret(&key("other", "s")).await,
        Err(StoreError::NotFound(_))
    ));
}

// ---- list ---------------------------------------------------------------------------------

async fn listing_an_empty_mesh_gives_nothing<S: SecretStore>(store: &S) {
    add_mesh(store, "demo").await;
    let page = store
        .list_secrets(&SecretQuery::new(SecretScope::Mesh(mesh_name("demo"))))
        .await
        .unwrap();
    assert_eq!(page.total, 0);
    assert!(page.items.is_empty());
    assert!(page.next.is_none());
}

async fn list_scopes_are_one_mesh_all_meshes_or_global<S: SecretStore>(store: &S) {
    add_mesh(store, "demo").await;
    add_mesh(store, "default").await;
    add_secret(store, key("demo", "b"), b"x").await;
    add_secret(store, key("demo", "a"), b"x").await;
    add_secret(store, key("default", "z"), b"x").await;
    add_secret(store, global("g2"), b"x").await;
    add_secret(store, global("g1"), b"x").await;

    let demo = store
        .list_secrets(&SecretQuery::new(SecretScope::Mesh(mesh_name("demo"))))
        .await
        .unwrap();
    assert_eq!(names(&demo.items), ["demo/a", "demo/b"]);
    assert_eq!(demo.total, 2);

    let all = store
        .list_secrets(&SecretQuery::new(SecretScope::AllMeshes))
        .await
        .unwrap();
    assert_eq!(names(&all.items), ["default/z", "demo/a", "demo/b"]);
    assert_eq!(all.total, 3);

    let globals = store
        .list_secrets(&SecretQuery::new(SecretScope::Global))
        .await
        .unwrap();
    assert_eq!(names(&globals.items), ["g1", "g2"]);

    let other = store
        .list_secrets(&SecretQuery::new(SecretScope::Mesh(mesh_name("nomesh"))))
        .await
        .unwrap();
    assert_eq!(other.total, 0);
}

async fn list_filters_by_name_substring_across_and_within_meshes<S: SecretStore>(store: &S) {
    add_mesh(store, "demo").await;
    add_mesh(store, "default").await;
    add_secret(store, key("demo", "list-res-2.demo"), b"x").await;
    add_secret(store, key("demo", "list-res-1.demo"), b"x").await;
    add_secret(store, key("default", "list-res-1.demo"), b"x").await;
    add_secret(store, key("demo", "other"), b"x").await;

    let all = store
        .list_secrets(&SecretQuery::new(SecretScope::AllMeshes).name_contains("list-res"))
        .await
        .unwrap();
    assert_eq!(
        names(&all.items),
        [
            "default/list-res-1.demo",
            "demo/list-res-1.demo",
            "demo/list-res-2.demo"
        ]
    );
    assert_eq!(all.total, 3);

    let demo = store
        .list_secrets(
            &SecretQuery::new(SecretScope::Mesh(mesh_name("demo"))).name_contains("list-res"),
        )
        .await
        .unwrap();
    assert_eq!(
        names(&demo.items),
        ["demo/list-res-1.demo", "demo/list-res-2.demo"]
    );

    // The substring is literal: SQL wildcards match nothing here.
    for wildcard in ["%", "_", "list%res"] {
        let none = store
            .list_secrets(&SecretQuery::new(SecretScope::AllMeshes).name_contains(wildcard))
            .await
            .unwrap();
        assert_eq!(none.total, 0, "{wildcard}");
    }
}

async fn list_filters_by_label_equality<S: SecretStore>(store: &S) {
    add_mesh(store, "demo").await;
    for (name, env, team) in [("a", "prod", "x"), ("b", "prod", "y"), ("c", "dev", "x")] {
        add_labelled(
            store,
            key("demo", name),
            b"x",
            &[("kuma.io/env", env), ("team", team)],
        )
        .await;
    }
    let prod = store
        .list_secrets(&SecretQuery::new(SecretScope::AllMeshes).label("kuma.io/env", "prod"))
        .await
        .unwrap();
    assert_eq!(names(&prod.items), ["demo/a", "demo/b"]);
    let prod_x = store
        .list_secrets(
            &SecretQuery::new(SecretScope::Mesh(mesh_name("demo")))
                .label("kuma.io/env", "prod")
                .label("team", "x"),
        )
        .await
        .unwrap();
    assert_eq!(names(&prod_x.items), ["demo/a"]);
    assert_eq!(prod_x.total, 1);
    let none = store
        .list_secrets(&SecretQuery::new(SecretScope::AllMeshes).label("kuma.io/env", "prod'--"))
        .await
        .unwrap();
    assert_eq!(none.total, 0);
}

// ---- pagination ---------------------------------------------------------------------------

async fn pages_of_two_over_five_items_are_2_2_1<S: SecretStore>(store: &S) {
    add_mesh(store, "demo").await;
    for i in 1..=5 {
        add_secret(store, key("demo", &format!("res-{i}")), b"x").await;
    }
    let query = |p| SecretQuery::new(SecretScope::Mesh(mesh_name("demo"))).page(p);
    let mut seen = Vec::new();

    // By offset, as Kuma's clients page.
    let mut offset = 0;
    let mut sizes = Vec::new();
    loop {
        let page = store.list_secrets(&query(page(2, offset))).await.unwrap();
        assert_eq!(page.total, 5);
        sizes.push(page.items.len());
        seen.extend(names(&page.items));
        match page.next {
            Some(next) => offset = next.offset,
            None => break,
        }
    }
    assert_eq!(sizes, [2, 2, 1]);
    assert_eq!(
        seen,
        [
            "demo/res-1",
            "demo/res-2",
            "demo/res-3",
            "demo/res-4",
            "demo/res-5"
        ]
    );

    // By cursor: the same pages.
    let mut by_cursor = Vec::new();
    let mut request = page(2, 0);
    loop {
        let page = store.list_secrets(&query(request.clone())).await.unwrap();
        assert_eq!(page.total, 5);
        by_cursor.extend(names(&page.items));
        match page.next {
            Some(next) => request = PageRequest::new(2, PageStart::After(next)).unwrap(),
            None => break,
        }
    }
    assert_eq!(by_cursor, seen);
}

async fn a_single_item_has_no_next_page<S: SecretStore>(store: &S) {
    add_mesh(store, "demo").await;
    add_secret(store, key("demo", "only"), b"x").await;
    for size in [5, 1] {
        let page = store
            .list_secrets(
                &SecretQuery::new(SecretScope::Mesh(mesh_name("demo"))).page(page(size, 0)),
            )
            .await
            .unwrap();
        assert_eq!(page.items.len(), 1);
        assert_eq!(page.total, 1);
        assert!(page.next.is_none(), "size {size}");
    }
}

async fn an_offset_past_the_end_is_empty_but_counts_all<S: SecretStore>(store: &S) {
    add_mesh(store, "demo").await;
    for i in 1..=3 {
        add_secret(store, key("demo", &format!("s{i}")), b"x").await;
    }
    let page = store
        .list_secrets(&SecretQuery::new(SecretScope::AllMeshes).page(page(10, 100)))
        .await
        .unwrap();
    assert!(page.items.is_empty());
    assert_eq!(page.total, 3);
    assert!(page.next.is_none());
}

async fn cursor_pages_walk_across_meshes_in_order<S: SecretStore>(store: &S) {
    for mesh in ["m-a", "m-b", "m-c"] {
        add_mesh(store, mesh).await;
        for i in 0..7 {
            add_secret(store, key(mesh, &format!("s-{i:02}")), b"x").await;
        }
    }
    let mut request = page(4, 0);
    let mut seen = Vec::new();
    loop {
        let page = store
            .list_secrets(&SecretQuery::new(SecretScope::AllMeshes).page(request.clone()))
            .await
            .unwrap();
        assert_eq!(page.total, 21);
        seen.extend(names(&page.items));
        match page.next {
            Some(next) => request = PageRequest::new(4, PageStart::After(next)).unwrap(),
            None => break,
        }
    }
    let mut expected = seen.clone();
    expected.sort();
    expected.dedup();
    assert_eq!(seen.len(), 21);
    assert_eq!(seen, expected);
}

// ---- meshes -------------------------------------------------------------------------------

async fn deleting_a_mesh_deletes_its_secrets_only<S: SecretStore>(store: &S) {
    add_mesh(store, "demo-1").await;
    add_mesh(store, "demo-2").await;
    for i in 0..10 {
        add_secret(store, key("demo-1", &format!("s{i}")), b"x").await;
    }
    add_secret(store, key("demo-2", "s0"), b"x").await;
    add_secret(store, global("s0"), b"x").await;

    store.delete_mesh(&mesh_name("demo-1"), None).await.unwrap();

    assert!(matches!(
        store.get_mesh(&mesh_name("demo-1")).await,
        Err(StoreError::NotFound(_))
    ));
    let left = store
        .list_secrets(&SecretQuery::new(SecretScope::AllMeshes))
        .await
        .unwrap();
    assert_eq!(names(&left.items), ["demo-2/s0"]);
    assert!(store.get_secret(&global("s0")).await.is_ok());

    // A Mesh of the same name starts empty: no orphans come back.
    add_mesh(store, "demo-1").await;
    let again = store
        .list_secrets(&SecretQuery::new(SecretScope::Mesh(mesh_name("demo-1"))))
        .await
        .unwrap();
    assert_eq!(again.total, 0);
}

async fn meshes_have_versioned_crud<S: SecretStore>(store: &S) {
    add_mesh(store, "demo").await;
    let err = store
        .create_mesh(NewMesh {
            name: mesh_name("demo"),
            spec: Default::default(),
            labels: Labels::default(),
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists(_)), "{err:?}");

    let mut spec = serde_json::Map::new();
    spec.insert(
        "metrics".into(),
        serde_json::json!({"enabledBackend": "prometheus-1"}),
    );
    let updated = store
        .update_mesh(
            &mesh_name("demo"),
            1,
            MeshUpdate {
                spec: spec.clone(),
                labels: labels(&[("team", "a")]),
            },
        )
        .await
        .unwrap();
    assert_eq!(updated.meta.version, 2);
    assert_eq!(store.get_mesh(&mesh_name("demo")).await.unwrap(), updated);
    assert_eq!(updated.spec, spec);

    let stale = store
        .update_mesh(
            &mesh_name("demo"),
            1,
            MeshUpdate {
                spec: Default::default(),
                labels: Labels::default(),
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(stale, StoreError::Conflict { actual: 2, .. }),
        "{stale:?}"
    );
    let stale_delete = store
        .delete_mesh(&mesh_name("demo"), Some(1))
        .await
        .unwrap_err();
    assert!(matches!(stale_delete, StoreError::Conflict { .. }));

    add_mesh(store, "another").await;
    let list = store.list_meshes(&MeshQuery::default()).await.unwrap();
    let listed: Vec<_> = list.items.iter().map(|m| m.name.to_string()).collect();
    assert_eq!(listed, ["another", "demo"]);
    assert_eq!(list.total, 2);
    let filtered = store
        .list_meshes(&MeshQuery {
            labels: [("team".to_owned(), "a".to_owned())].into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(filtered.total, 1);

    store
        .delete_mesh(&mesh_name("demo"), Some(2))
        .await
        .unwrap();
    assert!(matches!(
        store.delete_mesh(&mesh_name("demo"), None).await,
        Err(StoreError::NotFound(_))
    ));
}

// ---- concurrency --------------------------------------------------------------------------

async fn sixteen_writers_with_one_read_version_yield_one_winner<S: SecretStore + 'static>(
    store: Arc<S>,
) {
    add_mesh(&*store, "demo").await;
    add_secret(&*store, key("demo", "contended"), b"v1").await;
    let read = store.get_secret(&key("demo", "contended")).await.unwrap();

    let mut tasks = Vec::new();
    for i in 0..16 {
        let store = store.clone();
        let version = read.meta.version;
        tasks.push(tokio::spawn(async move {
            store
                .update_secret(
                    &key("demo", "contended"),
                    version,
                    SecretUpdate {
                        data: data(format!("writer-{i}").as_bytes()),
                        labels: Labels::default(),
                    },
                )
                .await
        }));
    }
    let mut winners = Vec::new();
    let mut conflicts = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(secret) => winners.push(secret),
            Err(StoreError::Conflict { .. }) => conflicts += 1,
            Err(other) => panic!("unexpected error: {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1);
    assert_eq!(conflicts, 15);
    let stored = store.get_secret(&key("demo", "contended")).await.unwrap();
    assert_eq!(stored.meta.version, 2);
    assert_eq!(stored.data, winners[0].data);
}

async fn read_modify_write_with_retry_loses_no_increment<S: SecretStore + 'static>(store: Arc<S>) {
    const WRITERS: usize = 8;
    const INCREMENTS: usize = 100;
    add_mesh(&*store, "demo").await;
    add_secret(&*store, key("demo", "counter"), b"0").await;

    let mut tasks = Vec::new();
    for _ in 0..WRITERS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut retries = 0usize;
            for _ in 0..INCREMENTS {
                loop {
                    let current = store.get_secret(&key("demo", "counter")).await.unwrap();
                    let n: u64 = std::str::from_utf8(current.data.expose())
                        .unwrap()
                        .parse()
                        .unwrap();
                    let update = SecretUpdate {
                        data: data((n + 1).to_string().as_bytes()),
                        labels: current.labels.clone(),
                    };
                    match store
                        .update_secret(&key("demo", "counter"), current.meta.version, update)
                        .await
                    {
                        Ok(_) => break,
                        Err(StoreError::Conflict { .. }) => retries += 1,
                        Err(other) => panic!("unexpected error: {other:?}"),
                    }
                }
            }
            retries
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let stored = store.get_secret(&key("demo", "counter")).await.unwrap();
    assert_eq!(stored.meta.version, (WRITERS * INCREMENTS + 1) as i64);
    assert_eq!(
        stored.data.expose(),
        (WRITERS * INCREMENTS).to_string().as_bytes()
    );
}

async fn cancelled_calls_never_leave_a_broken_connection_behind<S: SecretStore + 'static>(
    store: Arc<S>,
) {
    add_mesh(&*store, "demo").await;
    add_secret(&*store, key("demo", "a"), b"alpha").await;
    add_secret(&*store, key("demo", "b"), b"beta").await;
    // Abandon calls at every stage of their round trip (a request timeout does this), then
    // check that every later call still gets its own, correct answer.
    for i in 0..200u64 {
        let micros = i % 50 * 20;
        let _ = tokio::time::timeout(
            std::time::Duration::from_micros(micros),
            store.get_secret(&key("demo", "a")),
        )
        .await;
        let b = store.get_secret(&key("demo", "b")).await.unwrap();
        assert_eq!(b.data.expose(), b"beta");
    }
    let a = store.get_secret(&key("demo", "a")).await.unwrap();
    assert_eq!(a.data.expose(), b"alpha");
}

// ---- the two backends ---------------------------------------------------------------------

on_both_backends! {
    stores: [
        create_returns_the_stored_secret_at_version_1,
        creating_a_duplicate_is_already_exists,
        two_global_secrets_with_one_name_conflict,
        one_name_in_two_meshes_and_globally_is_three_secrets,
        a_secret_cannot_be_created_in_a_missing_mesh,
        data_over_the_size_limit_is_invalid_and_not_stored,
        updating_a_deleted_secret_is_not_found,
        update_bumps_the_version_and_replaces_data_and_labels,
        update_with_the_same_labels_preserves_them,
        update_with_empty_labels_removes_them,
        update_with_a_stale_version_is_a_conflict,
        deleting_a_missing_secret_is_not_found,
        delete_does_not_touch_another_meshs_secret,
        delete_removes_the_secret,
        delete_with_a_stale_version_is_a_conflict_and_keeps_the_secret,
        get_of_a_missing_secret_is_not_found,
        get_in_a_different_mesh_is_not_found,
        listing_an_empty_mesh_gives_nothing,
        list_scopes_are_one_mesh_all_meshes_or_global,
        list_filters_by_name_substring_across_and_within_meshes,
        list_filters_by_label_equality,
        pages_of_two_over_five_items_are_2_2_1,
        a_single_item_has_no_next_page,
        an_offset_past_the_end_is_empty_but_counts_all,
        cursor_pages_walk_across_meshes_in_order,
        deleting_a_mesh_deletes_its_secrets_only,
        meshes_have_versioned_crud,
    ],
    shared: [
        sixteen_writers_with_one_read_version_yield_one_winner,
        read_modify_write_with_retry_loses_no_increment,
        cancelled_calls_never_leave_a_broken_connection_behind,
    ]
}
