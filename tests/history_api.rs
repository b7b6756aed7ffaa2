//! Version history over HTTP, on both backends: `?version=V`, `_versions`, `_rollback`,
//! `_restore`, `DELETE ?purge=true` (no row left, checked in SQL), a history value moved into
//! another version's or secret's row (it does not open), and no plaintext of any version in
//! the database.

#[macro_use]
mod common;

use common::http::{b64, delete_path, fetch_json, get_json, put_json, put_secret};
use common::raw::{P, contains, raw_count, raw_database, raw_sql};
use common::server::{Backend, TestServer};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

const S: &str = "/meshes/default/secrets/tls";

async fn post(
    server: &TestServer,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Option<String>, Value) {
    let mut request = Client::new().post(server.at(path));
    if let Some(body) = body {
        request = request.json(&body);
    }
    common::http::send(request).await
}

/// The newest change-feed event: (operation, version, actor name).
async fn last_event(server: &TestServer) -> (String, i64, String) {
    let feed = get_json(server, "/_changes?after=0&limit=1000").await;
    let event = feed["events"].as_array().unwrap().last().unwrap().clone();
    (
        event["operation"].as_str().unwrap().to_owned(),
        event["version"].as_i64().unwrap(),
        event["actor"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

fn data_of(body: &Value) -> String {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(body["data"].as_str().unwrap())
        .unwrap();
    String::from_utf8(bytes).unwrap()
}

async fn versions_read_roll_back_and_list(backend: Backend) {
    let server = TestServer::start(backend).await;
    for value in ["v-one", "v-two", "v-three"] {
        put_secret(&server, "default", "tls", value).await;
    }
    // One version by number; its ETag is that version.
    let response = Client::new()
        .get(server.at(&format!("{S}?version=2")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["etag"], "\"2\"");
    assert_eq!(data_of(&response.json().await.unwrap()), "v-two");
    for (query, status) in [("version=9", 404), ("version=0", 400), ("version=x", 400)] {
        let response = Client::new()
            .get(server.at(&format!("{S}?{query}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{query}");
    }
    let missing = fetch_json(server.at(&format!("{S}?version=9"))).await;
    assert!(
        missing["detail"]
            .as_str()
            .unwrap()
            .contains("pruned by the history limit"),
        "{missing}"
    );

    // The versions, newest first, in Kuma's list shape, never data.
    let listed = get_json(&server, &format!("{S}/_versions")).await;
    assert_eq!(listed["total"], 3);
    assert_eq!(listed["next"], Value::Null);
    let items = listed["items"].as_array().unwrap();
    assert_eq!(
        items
            .iter()
            .map(|i| i["version"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        vec![3, 2, 1]
    );
    assert_eq!(items[0]["current"], true);
    assert_eq!(items[1]["current"], false);
    assert_eq!(items[0]["actor"]["name"], "localhost");
    assert!(items.iter().all(|i| i.get("data").is_none()));

    // Roll back to 1: a new version 4 with 1's data, answered as GET answers it.
    let (status, etag, body) = post(
        &server,
        &format!("{S}/_rollback"),
        Some(json!({"version": 1})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(etag.as_deref(), Some("\"4\""));
    assert_eq!(data_of(&body), "v-one");
    assert_eq!(body["type"], "Secret");
    assert_eq!(data_of(&get_json(&server, S).await), "v-one");
    // A rollback is an update in the change feed, with its actor.
    assert_eq!(
        last_event(&server).await,
        ("update".to_owned(), 4, "localhost".to_owned())
    );
    // If-Match on a version that moved on: 412, nothing written.
    let response = Client::new()
        .post(server.at(&format!("{S}/_rollback")))
        .header("if-match", "\"3\"")
        .json(&json!({"version": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PRECONDITION_FAILED);
    for (body, status) in [
        (json!({"version": 99}), 404),
        (json!({"version": 0}), 400),
        (json!({}), 400),
        (json!({"version": "1"}), 400),
        (json!({"version": 1, "extra": true}), 400),
    ] {
        let (got, _, answer) = post(&server, &format!("{S}/_rollback"), Some(body.clone())).await;
        assert_eq!(got.as_u16(), status, "{body}: {answer}");
    }
    assert_eq!(
        get_json(&server, &format!("{S}/_versions")).await["total"],
        4
    );

    // A GlobalSecret, under both spellings.
    let global = |data: &str| json!({"type": "GlobalSecret", "name": "g", "data": b64(data)});
    let (status, _) = put_json(&server, "/global-secrets/g", global("g1")).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = put_json(&server, "/globalsecrets/g", global("g2")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, etag, body) = post(
        &server,
        "/globalsecrets/g/_rollback",
        Some(json!({"version": 1})),
    )
    .await;
    assert_eq!(
        (status, etag.as_deref()),
        (StatusCode::OK, Some("\"3\"")),
        "{body}"
    );
    assert_eq!(body["type"], "GlobalSecret");
    assert_eq!(
        get_json(&server, "/global-secrets/g/_versions").await["total"],
        3
    );
}

async fn deletes_can_be_undone_and_purges_cannot(backend: Backend) {
    let server = TestServer::start(backend).await;
    put_secret(&server, "default", "tls", "first").await;
    put_secret(&server, "default", "tls", "second").await;
    let (status, _) = delete_path(&server, S).await;
    assert_eq!(status, StatusCode::OK);
    // Gone from GET and lists, as in Kuma.
    let response = Client::new().get(server.at(S)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let list = get_json(&server, "/meshes/default/secrets").await;
    assert!(
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["name"] != "tls")
    );
    // Its versions are listed with their deletion time, to pick one to restore.
    let listed = get_json(&server, &format!("{S}/_versions")).await;
    assert_eq!(listed["total"], 2);
    assert!(listed["items"][0]["deletionTime"].is_string());

    // Restore without a body: the newest kept version, as a new version.
    let (status, etag, body) = post(&server, &format!("{S}/_restore"), None).await;
    assert_eq!(
        (status, etag.as_deref()),
        (StatusCode::OK, Some("\"3\"")),
        "{body}"
    );
    assert_eq!(data_of(&body), "second");
    // A restore is a create in the change feed, with its actor.
    assert_eq!(
        last_event(&server).await,
        ("create".to_owned(), 3, "localhost".to_owned())
    );
    let (status, _, body) = post(&server, &format!("{S}/_restore"), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    // Restore a chosen version after another delete.
    delete_path(&server, S).await;
    let (status, etag, body) = post(
        &server,
        &format!("{S}/_restore"),
        Some(json!({"version": 1})),
    )
    .await;
    assert_eq!(
        (status, etag.as_deref()),
        (StatusCode::OK, Some("\"4\"")),
        "{body}"
    );
    assert_eq!(data_of(&body), "first");

    // Purge: the secret and every version, now; no row left in either table.
    let response = Client::new()
        .delete(server.at(&format!("{S}?purge=yes")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let response = Client::new()
        .delete(server.at(&format!("{S}?purge=true")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // A purge of a live secret is its delete event.
    assert_eq!(
        last_event(&server).await,
        ("delete".to_owned(), 4, "localhost".to_owned())
    );
    for table in ["secrets", "secret_versions"] {
        let sql = format!("SELECT count(*) FROM {table} WHERE name = $1");
        assert_eq!(raw_count(&server, &sql, &["tls"]).await, 0, "{table}");
    }
    for path in [S.to_owned(), format!("{S}/_versions")] {
        let response = Client::new().get(server.at(&path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
    }
    let (status, _, _) = post(&server, &format!("{S}/_restore"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Purging a deleted secret's history.
    put_secret(&server, "default", "old", "x").await;
    delete_path(&server, "/meshes/default/secrets/old").await;
    let response = Client::new()
        .delete(server.at("/meshes/default/secrets/old?purge=true"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let sql = "SELECT count(*) FROM secret_versions WHERE name = $1";
    assert_eq!(raw_count(&server, sql, &["old"]).await, 0);
}

/// A history row's sealed value moved into another version's row, or into another secret's
/// history, does not open: the read fails naming the secret, never serving the wrong value.
async fn a_moved_history_value_does_not_open(backend: Backend) {
    let server = TestServer::start(backend).await;
    for value in ["alpha-1", "alpha-2", "alpha-3"] {
        put_secret(&server, "default", "alpha", value).await;
    }
    for value in ["beta-1", "beta-2"] {
        put_secret(&server, "default", "beta", value).await;
    }
    let copy = "UPDATE secret_versions SET data = (SELECT data FROM secret_versions \
                WHERE name = $1 AND version = 1) WHERE name = $2 AND version = $3";
    // alpha's version 1 into alpha's version 2.
    raw_sql(
        &server,
        copy,
        vec![P::Text("alpha".into()), P::Text("alpha".into()), P::Int(2)],
    )
    .await;
    // alpha's version 1 (with its write id) into beta's version 1.
    let copy_whole = "UPDATE secret_versions SET data = (SELECT data FROM secret_versions \
                      WHERE name = 'alpha' AND version = 1), write_id = (SELECT write_id \
                      FROM secret_versions WHERE name = 'alpha' AND version = 1) \
                      WHERE name = 'beta' AND version = 1";
    raw_sql(&server, copy_whole, vec![]).await;
    for (name, version) in [("alpha", 2), ("beta", 1)] {
        let response = Client::new()
            .get(server.at(&format!("/meshes/default/secrets/{name}?version={version}")))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::INTERNAL_SERVER_ERROR,
            "{name} {version}"
        );
        let body = response.text().await.unwrap();
        assert!(body.contains(&format!("name=\\\"{name}\\\"")), "{body}");
        assert!(!body.contains("alpha-1"), "{body}");
        // Rolling back to it fails the same way and writes nothing.
        let (status, _, _) = post(
            &server,
            &format!("/meshes/default/secrets/{name}/_rollback"),
            Some(json!({"version": version})),
        )
        .await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    }
    // The untouched version still opens.
    let v1 = get_json(&server, "/meshes/default/secrets/alpha?version=1").await;
    assert_eq!(data_of(&v1), "alpha-1");
    assert_eq!(
        data_of(&get_json(&server, "/meshes/default/secrets/beta").await),
        "beta-2"
    );
}

/// Every version, and a deleted secret's, stays sealed at rest.
async fn no_version_reaches_the_database_in_plaintext(backend: Backend) {
    let server = TestServer::start(backend).await;
    let markers: Vec<String> = (1..=4)
        .map(|i| format!("HISTORY-MARKER-{i}-7d1f0c2e"))
        .collect();
    for marker in &markers {
        put_secret(&server, "default", "kept", marker).await;
    }
    put_secret(
        &server,
        "default",
        "dropped",
        "HISTORY-MARKER-deleted-7d1f0c2e",
    )
    .await;
    delete_path(&server, "/meshes/default/secrets/dropped").await;
    let dump = raw_database(&server);
    assert!(contains(&dump, b"kept"), "the dump holds the database");
    for marker in markers
        .iter()
        .map(String::as_str)
        .chain(["HISTORY-MARKER-deleted-7d1f0c2e"])
    {
        assert!(!contains(&dump, marker.as_bytes()), "{marker} in plaintext");
        assert!(
            !contains(&dump, b64(marker).as_bytes()),
            "{marker} in base64"
        );
    }
}

/// `rotate-keys` re-seals the versions kept in history too, and `--status` counts them: after
/// it, a store holding only the new key reads every kept version.
async fn rotation_reseals_history(backend: Backend) {
    use kuma_secrets::sealing::Keyring;
    use kuma_secrets::store::{AnyStore, SecretStore, StoreOptions};
    let server = TestServer::start(backend).await;
    for value in ["r1", "r2", "r3"] {
        put_secret(&server, "default", "tls", value).await;
    }
    let new_key = Keyring::random_key();
    let dir = tempfile::tempdir().unwrap();
    let both = dir.path().join("both.keys");
    (*common::test_keyring())
        .clone()
        .with_key("test-2", new_key)
        .with_active("test-2")
        .save_new(&both)
        .unwrap();
    let run = common::raw::store_tool(&server, &both, &["rotate-keys", "--status"])
        .await
        .ok();
    assert!(run.stdout.contains("test-1"), "{run:?}");
    common::raw::store_tool(&server, &both, &["rotate-keys"])
        .await
        .ok();
    let run = common::raw::store_tool(&server, &both, &["rotate-keys", "--status"])
        .await
        .ok();
    assert!(!run.stdout.contains("test-1"), "{run:?}");
    let new_only = Keyring::single("test-2", new_key);
    let store = AnyStore::open(
        &common::raw::store_url(&server),
        StoreOptions {
            keyring: Some(std::sync::Arc::new(new_only).into()),
            ..StoreOptions::allow_plaintext_secrets()
        },
    )
    .await
    .unwrap();
    let usage = store.rows_per_key().await.unwrap();
    let values: u64 = usage.iter().map(|u| u.rows).sum();
    assert!(values >= 3, "the kept versions are counted: {usage:?}");
    let key = kuma_secrets::domain::SecretKey::parse(Some("default"), "tls").unwrap();
    for (version, value) in [(1, "r1"), (2, "r2"), (3, "r3")] {
        let secret = store.get_secret_version(&key, version).await.unwrap();
        assert_eq!(secret.data.expose(), value.as_bytes());
    }
    store.close().await;
}

on_both_backends! {
    rotation_reseals_history,
    versions_read_roll_back_and_list,
    deletes_can_be_undone_and_purges_cannot,
    a_moved_history_value_does_not_open,
    no_version_reaches_the_database_in_plaintext,
}
