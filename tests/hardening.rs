//! Attacks that once got through, tried again as an attacker would, on both backends: rows
//! written behind the service's back (a planted plaintext signing key, an older sealed
//! value put back, a Mesh spec the delete guard cannot read), the builtin-CA delete race,
//! metrics label floods, inline CA keys at rest and in anonymous reads, NUL bytes, an
//! export into an existing file, a lost embedded keyring, imports racing the API, and
//! oversized-but-legal bodies.

#[macro_use]
mod common;

use common::http::{b64, delete_path, fetch_text, get_as, get_json, put_json, put_secret};
use common::process::{kuma, spawn_serve};
use common::raw::{P, contains, raw_database, raw_row, raw_sql, store_tool};
use common::server::{Backend, TestServer};
use kuma_secrets::api::ApiConfig;
use kuma_secrets::domain::{Labels, MeshName, NewMesh, NewSecret, Resource, SecretData, SecretKey};
use kuma_secrets::store::{AnyStore, SecretStore, StoreError, StoreOptions};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;

/// The attack: plant a signing key of one's own as a plaintext row (key id NULL), mint an
/// admin token with it, and read secrets. With a keyring, the row is refused.
async fn a_planted_plaintext_signing_key_mints_no_admin_token(backend: Backend) {
    let server = TestServer::start_tokens_only(backend).await;
    common::http::create_in_store(&server.store, Some("default"), "crown-jewels", "top secret")
        .await;

    // The attacker's own signing key, planted as serial 2 in the victim's database,
    // unsealed: serial 2 is the newest key, so tokens minted with it name kid 2.
    let (their_key, forged) = common::raw::attacker_signing_key(2).await;
    common::raw::plant_plaintext_global(&server, "user-token-signing-key-2", their_key).await;

    let response = get_as(server.at("/meshes/default/secrets/crown-jewels"), &forged).await;
    assert_ne!(
        response.status(),
        StatusCode::OK,
        "a forged token read a secret"
    );
    let body: Value = response.json().await.unwrap();
    assert!(
        !body.to_string().contains(&b64("top secret")),
        "no secret data in {body}"
    );
    // The planted row is reported, by name, as not sealed.
    match server
        .store
        .get_secret(&SecretKey::parse(None, "user-token-signing-key-2").unwrap())
        .await
    {
        Err(StoreError::Sealed { key, reason }) => {
            assert_eq!(key.name, "user-token-signing-key-2");
            assert_eq!(reason, kuma_secrets::sealing::OpenError::PlaintextAuthority);
        }
        other => panic!("a plaintext row must not be served: {other:?}"),
    }
}

/// An older sealed value of the same row, copied back into `data`, does not open under the
/// current write.
async fn an_older_sealed_value_put_back_does_not_open(backend: Backend) {
    let server = TestServer::start(backend).await;
    put_secret(&server, "default", "db-password", b"old-password").await;
    let (old_data, _) = raw_row(&server, "db-password").await;
    put_secret(&server, "default", "db-password", b"new-password").await;
    raw_sql(
        &server,
        "UPDATE secrets SET data = $1 WHERE name = 'db-password'",
        vec![P::Bytes(old_data)],
    )
    .await;
    let response =
        crate::common::http::send_get(server.at("/meshes/default/secrets/db-password")).await;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body: Value = response.json().await.unwrap();
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains("name=\"db-password\""), "{detail}");
    assert!(!body.to_string().contains(&b64("old-password")));
}

/// A row that does not open can still be deleted (with or without If-Match), and
/// `rotate-keys --status` names it.
async fn an_unreadable_row_is_named_by_status_and_can_be_deleted(backend: Backend) {
    let server = TestServer::start(backend).await;
    put_secret(&server, "default", "broken", b"value").await;
    put_secret(&server, "default", "broken-too", b"value").await;
    put_secret(&server, "default", "fine", b"value").await;
    raw_sql(
        &server,
        "UPDATE secrets SET data = (SELECT data FROM secrets WHERE name = 'fine') \
         WHERE name IN ('broken', 'broken-too')",
        vec![],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let keys = common::test_keyring_file(dir.path());
    let run = store_tool(&server, &keys, &["rotate-keys", "--status"])
        .await
        .ok();
    assert!(
        run.stdout.contains("2 stored values do not open")
            && run.stdout.contains("name=\"broken\"")
            && run.stdout.contains("name=\"broken-too\"")
            && !run.stdout.contains("name=\"fine\""),
        "{run:?}"
    );
    let (status, body) = delete_path(&server, "/meshes/default/secrets/broken").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let response = Client::new()
        .delete(server.at("/meshes/default/secrets/broken-too"))
        .header("If-Match", "\"1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let list = get_json(&server, "/meshes/default/secrets").await;
    assert_eq!(list["total"], 1, "only the readable secret is left: {list}");
}

/// Many rounds of: a Mesh update that re-adds a builtin backend whose CA pair exists,
/// racing a delete of that pair. The Mesh never ends up using a missing CA.
async fn re_adding_a_builtin_backend_racing_a_delete_of_its_ca_never_dangles(backend: Backend) {
    let server = TestServer::start(backend).await;
    let store = server.store.clone();
    let mesh = MeshName::parse("default").unwrap();
    let builtin = |on: bool| {
        let mut spec = serde_json::Map::new();
        if on {
            spec.insert(
                "mtls".into(),
                json!({"backends": [{"name": "ca-1", "type": "builtin"}]}),
            );
        }
        spec
    };
    let set = |on: bool| {
        let store = store.clone();
        let mesh = mesh.clone();
        async move { common::http::set_mesh_spec(&store, &mesh, builtin(on)).await }
    };
    let (cert, key) = (
        SecretKey::parse(Some("default"), "default.ca-builtin-cert-ca-1").unwrap(),
        SecretKey::parse(Some("default"), "default.ca-builtin-key-ca-1").unwrap(),
    );
    for round in 0..40u64 {
        // The pair exists, the Mesh no longer uses it...
        set(true).await.unwrap();
        set(false).await.unwrap();
        // ...then it is re-added while the pair is deleted.
        let update = tokio::spawn(set(true));
        let delete = {
            let store = store.clone();
            let (cert, key) = (cert.clone(), key.clone());
            let delay = Duration::from_micros((round % 10) * 300);
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let a = store.delete_secret(&cert, None).await;
                let b = store.delete_secret(&key, None).await;
                (a, b)
            })
        };
        let (update, _) = (update.await.unwrap(), delete.await.unwrap());
        update.unwrap_or_else(|e| panic!("round {round}: the update must succeed: {e}"));
        let now = store.get_mesh(&mesh).await.unwrap();
        assert!(now.spec.contains_key("mtls"));
        for k in [&cert, &key] {
            assert!(
                store.get_secret(k).await.is_ok(),
                "round {round}: the Mesh uses builtin CA secret {k} but it is gone"
            );
        }
    }
}

/// The delete guard reads the table of references, which only the writes that make a
/// reference fill (in their transaction): a Mesh spec rewritten behind the service's back,
/// into something no validation would pass, neither frees a Secret a backend uses nor
/// makes the guard fail open or error; and a Mesh whose spec cannot be read no longer
/// blocks every delete in it.
async fn the_delete_guard_reads_the_references_not_a_spec_written_behind_its_back(
    backend: Backend,
) {
    let server = TestServer::start(backend).await;
    let (cert, key) = common::pki::ca_pair("guarded");
    put_secret(&server, "default", "my-cert", cert.as_bytes()).await;
    put_secret(&server, "default", "my-key", key.as_bytes()).await;
    put_secret(&server, "default", "other", b"pem").await;
    let (status, body) = put_json(
        &server,
        "/meshes/default",
        json!({"type": "Mesh", "name": "default", "mtls": {"backends": [
            {"name": "ca-1", "type": "provided",
             "conf": {"cert": {"secret": "my-cert"}, "key": {"secret": "my-key"}}}]}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let cast = match backend {
        Backend::Postgres => "CAST($1 AS jsonb)",
        Backend::Sqlite => "$1",
    };
    raw_sql(
        &server,
        &format!("UPDATE meshes SET spec = {cast} WHERE name = 'default'"),
        vec![P::Text(
            json!({"mtls": {"enabledBackend": "ca-1", "backends": [
                {"name": "ca-1", "type": "vault", "conf": {"cert": {"secret": "other"}}}
            ]}})
            .to_string(),
        )],
    )
    .await;
    let (status, body) = delete_path(&server, "/meshes/default/secrets/my-cert").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body.to_string().contains("in mTLS backend \\\"ca-1\\\""),
        "{body}"
    );
    assert!(
        server
            .store
            .get_secret(&SecretKey::parse(Some("default"), "my-cert").unwrap())
            .await
            .is_ok()
    );
    let (status, body) = delete_path(&server, "/meshes/default/secrets/other").await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // import refuses such a Mesh as the API does, and writes nothing.
    let dir = tempfile::tempdir().unwrap();
    let file = common::write_file(
        dir.path(),
        "meshes.yaml",
        "type: Mesh\nname: imported\nmtls:\n  backends:\n  - name: ca-1\n    type: vault\n",
    );
    let keys = common::test_keyring_file(dir.path());
    let run = store_tool(&server, &keys, &["import", "-f", &file])
        .await
        .failed();
    assert!(
        run.stderr
            .contains("could not find installed plugin for this type"),
        "{run:?}"
    );
    assert!(matches!(
        server
            .store
            .get_mesh(&MeshName::parse("imported").unwrap())
            .await,
        Err(StoreError::NotFound(_))
    ));
}

/// Made-up HTTP methods count as one label value: `/metrics` does not grow with them.
async fn made_up_methods_do_not_grow_the_metrics(backend: Backend) {
    let server = TestServer::start(backend).await;
    let client = Client::new();
    for i in 0..300 {
        let method = reqwest::Method::from_bytes(format!("BREW{i}").as_bytes()).unwrap();
        let _ = client
            .request(method, server.at("/meshes"))
            .send()
            .await
            .unwrap();
    }
    let metrics = fetch_text(server.at("/metrics")).await;
    assert!(!metrics.contains("BREW"), "a made-up method became a label");
    assert!(metrics.contains("method=\"other\""));
    assert!(metrics.len() < 100_000, "{} bytes", metrics.len());
}

/// A provided CA's inline private key is sealed at rest and only an admin reads it back.
async fn inline_ca_keys_are_sealed_at_rest_and_hidden_from_non_admins(backend: Backend) {
    let server = TestServer::start_tokens_only(backend).await;
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let cert = params.self_signed(&key).unwrap();
    let key_pem = key.serialize_pem();
    let spec = json!({"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "provided",
        "conf": {"cert": {"inlineString": cert.pem()}, "key": {"inlineString": key_pem}}}]});
    let admin = server.admin_token().await;
    let response = Client::new()
        .put(server.at("/meshes/default"))
        .bearer_auth(&admin)
        .json(&json!({"type": "Mesh", "name": "default", "mtls": spec}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "{:?}",
        response.text().await
    );

    let raw = raw_database(&server);
    let body_line = key_pem.lines().nth(1).unwrap();
    assert!(
        !contains(&raw, body_line.as_bytes()),
        "the key reached the database"
    );
    assert!(
        !contains(&raw, b"PRIVATE KEY"),
        "the key reached the database"
    );

    // The admin reads it back as given; anyone else does not see it.
    let as_admin: Value = get_as(server.at("/meshes/default"), &admin)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        as_admin["mtls"]["backends"][0]["conf"]["key"]["inlineString"],
        key_pem.as_str()
    );
    for path in ["/meshes/default", "/meshes"] {
        let anonymous = fetch_text(server.at(path)).await;
        assert!(!anonymous.contains("PRIVATE KEY"), "{path}: {anonymous}");
        assert!(
            anonymous.contains("shown to admins only"),
            "{path}: {anonymous}"
        );
    }
}

/// NUL characters get a 400 in every name, label, filter, cursor and spec string, on both
/// backends, and nothing changes.
async fn nul_characters_are_refused_everywhere_with_a_400(backend: Backend) {
    let server = TestServer::start(backend).await;
    let client = Client::new();
    let nul_cursor = {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("1\ndefault\na\0b")
    };
    for path in [
        "/meshes?name=%00".to_owned(),
        "/meshes/default/secrets?name=a%00".to_owned(),
        "/meshes/default/secrets?filter%5Blabels.team%5D=a%00b".to_owned(),
        "/secrets?filter%5Blabels.a%00%5D=x".to_owned(),
        format!("/meshes/default/secrets?cursor={nul_cursor}"),
        "/global-secrets?name=%00".to_owned(),
    ] {
        let response = client.get(server.at(&path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{path}");
    }
    for (path, body) in [
        (
            "/meshes/default",
            json!({"type": "Mesh", "name": "default", "logging": {"backends": [{"name": "a\u{0}"}]}}),
        ),
        (
            "/meshes/default",
            json!({"type": "Mesh", "name": "default", "labels": {"team": "a\u{0}"}}),
        ),
        (
            "/meshes/default/secrets/s",
            json!({"type": "Secret", "mesh": "default", "name": "s", "data": b64("x"), "labels": {"k\u{0}": "v"}}),
        ),
    ] {
        let (status, answer) = put_json(&server, path, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {answer}");
        assert!(answer.to_string().contains("NUL"), "{answer}");
    }
    let mesh = get_json(&server, "/meshes/default").await;
    assert!(mesh.get("logging").is_none(), "nothing changed: {mesh}");
}

/// `export -o` over an existing, world-readable file leaves it owner-only.
async fn export_over_an_existing_file_makes_it_owner_only(backend: Backend) {
    use std::os::unix::fs::PermissionsExt;
    let server = TestServer::start(backend).await;
    put_secret(&server, "default", "s", b"value").await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("backup.yaml");
    std::fs::write(&out, "old contents").unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o644)).unwrap();
    let keys = common::test_keyring_file(dir.path());
    store_tool(&server, &keys, &["export", "-o", out.to_str().unwrap()])
        .await
        .ok();
    let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.contains(&b64("value")) && !text.contains("old contents"));
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(".kuma-secrets"))
        .collect();
    assert!(leftovers.is_empty(), "no temporary file left behind");
}

/// Two `import_batch` runs, one in key order and one in reverse, race API writers that
/// change the same secrets (blind puts, If-Match puts, and two writers on one name, so the
/// group commit's batches are of every shape) and their Mesh: never an internal error or a
/// 503, every batch ends applied, and no write met a deadlock at all (every writer takes
/// its row locks in one order), which the store counts in its pool report.
async fn imports_racing_api_writes_never_fail_internally(backend: Backend) {
    let server = TestServer::start(backend).await;
    let names: Vec<String> = (0..50).map(|i| format!("shared-{i:02}")).collect();
    for name in &names {
        put_secret(&server, "default", name, b"0").await;
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..8u64 {
        let (base, names, stop) = (server.url.clone(), names.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let client = Client::new();
            // A small xorshift: eight writers on fifty names often share one in a batch.
            let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ (w + 1);
            let mut statuses = std::collections::BTreeMap::<u16, u64>::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let name = &names[(state % names.len() as u64) as usize];
                let url = format!("{base}/meshes/default/secrets/{name}");
                let mut request = client.put(&url).json(
                    &json!({"type": "Secret", "mesh": "default", "name": name, "data": b64(format!("api-{state}"))}),
                );
                // Half the writers put If-Match: the version they just read.
                if w % 2 == 1 {
                    let current = client.get(&url).send().await.unwrap();
                    let etag = current.headers()["etag"].to_str().unwrap().to_owned();
                    request = request.header("If-Match", etag);
                }
                let status = request.send().await.unwrap().status();
                assert!(
                    status.is_success() || status == StatusCode::CONFLICT || status == StatusCode::PRECONDITION_FAILED,
                    "writer {w}: {status} for {name}"
                );
                *statuses.entry(status.as_u16()).or_default() += 1;
            }
            statuses
        }));
    }
    // And the Mesh itself is written meanwhile (a Mesh write locks its row, then reads).
    let mesh_writer = {
        let (base, stop) = (server.url.clone(), stop.clone());
        tokio::spawn(async move {
            let client = Client::new();
            let mut writes = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let body = json!({"type": "Mesh", "name": "default", "labels": {"round": writes.to_string()}});
                let response = client
                    .put(format!("{base}/meshes/default"))
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                let status = response.status();
                assert!(
                    status.is_success(),
                    "a Mesh write: {status} {}",
                    response.text().await.unwrap()
                );
                writes += 1;
            }
            writes
        })
    };
    let import = |store: AnyStore, names: Vec<String>, tag: &'static str| async move {
        for round in 0..30 {
            let batch: Vec<Resource> = names
                .iter()
                .map(|name| {
                    Resource::Secret(NewSecret {
                        key: SecretKey::parse(Some("default"), name).unwrap(),
                        data: SecretData::new(format!("import-{tag}-{round}").into_bytes())
                            .unwrap(),
                        labels: Labels::from_pairs([("kuma.io/mesh", "default")]).unwrap(),
                    })
                })
                .collect();
            store
                .import_batch(batch)
                .await
                .unwrap_or_else(|e| panic!("import {tag}, round {round}: {e}: {e:?}"));
        }
    };
    let reversed: Vec<String> = names.iter().rev().cloned().collect();
    tokio::join!(
        import(server.store.clone(), names.clone(), "forward"),
        import(server.store.clone(), reversed, "reverse"),
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(mesh_writer.await.unwrap() > 0, "the Mesh was written");
    let mut statuses = std::collections::BTreeMap::<u16, u64>::new();
    for writer in writers {
        for (status, count) in writer.await.unwrap() {
            *statuses.entry(status).or_default() += count;
        }
    }
    assert!(
        statuses.get(&200).copied().unwrap_or(0) > 0,
        "the writers wrote: {statuses:?}"
    );
    let report = server.store.pool_report().expect("a SQL store reports");
    assert!(
        report.write_batches > 0,
        "the writers were batched: {report:?}"
    );
    assert_eq!(
        report.write_conflicts, 0,
        "no write met a deadlock: {report:?}, {statuses:?}"
    );
}

/// A secret of exactly the size limit, its base64 wrapped every 76 characters with CR LF
/// (as `base64` and PEM tools do), is accepted; one byte more is 413.
async fn a_wrapped_secret_at_the_size_limit_is_accepted(backend: Backend) {
    let server = TestServer::start(backend).await;
    let limit = kuma_secrets::domain::DEFAULT_MAX_SECRET_SIZE;
    let wrapped = |len: usize| {
        let encoded = b64(vec![b'x'; len]);
        encoded
            .as_bytes()
            .chunks(76)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join("\r\n")
    };
    let (status, body) = put_json(
        &server,
        "/meshes/default/secrets/big",
        json!({"type": "Secret", "mesh": "default", "name": "big", "data": wrapped(limit)}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, _) = put_json(
        &server,
        "/meshes/default/secrets/big",
        json!({"type": "Secret", "mesh": "default", "name": "big", "data": wrapped(limit + 1)}),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

/// A GlobalSecret body naming a mesh is a 400, not silently ignored.
async fn a_global_secret_with_a_mesh_is_refused(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (status, body) = put_json(
        &server,
        "/global-secrets/g",
        json!({"type": "GlobalSecret", "name": "g", "mesh": "default", "data": b64("x")}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["invalid_parameters"][0]["field"], "mesh");
    let response = crate::common::http::send_get(server.at("/global-secrets/g")).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

on_both_backends! {
    a_planted_plaintext_signing_key_mints_no_admin_token,
    an_older_sealed_value_put_back_does_not_open,
    an_unreadable_row_is_named_by_status_and_can_be_deleted,
    re_adding_a_builtin_backend_racing_a_delete_of_its_ca_never_dangles,
    the_delete_guard_reads_the_references_not_a_spec_written_behind_its_back,
    made_up_methods_do_not_grow_the_metrics,
    inline_ca_keys_are_sealed_at_rest_and_hidden_from_non_admins,
    nul_characters_are_refused_everywhere_with_a_400,
    export_over_an_existing_file_makes_it_owner_only,
    imports_racing_api_writes_never_fail_internally,
    a_wrapped_secret_at_the_size_limit_is_accepted,
    a_global_secret_with_a_mesh_is_refused,
}

/// The embedded store's keyring file is lost: `serve` refuses to start, naming it, rather
/// than generate a new key that opens nothing.
#[tokio::test]
async fn a_lost_embedded_keyring_is_not_silently_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::sqlite_url(dir.path(), "kuma-secrets.db");
    let (mut first, url, _log) = spawn_serve(&["--store", &store], dir.path());
    common::server::wait_ready(&url).await;
    common::process::terminate(&first);
    common::process::wait_exit(&mut first);
    let keys = dir.path().join("kuma-secrets.db.keys");
    assert!(keys.exists());
    std::fs::remove_file(&keys).unwrap();

    kuma(
        &["serve", "--api-addr", "127.0.0.1:0", "--store", &store],
        None,
    )
    .await
    .fails_with("kuma-secrets.db.keys is missing");
    assert!(!keys.exists(), "no new keyring was generated");
}

/// Plaintext rows are read while the operator says the store is mid-upgrade, and only then.
#[tokio::test]
async fn plaintext_rows_are_served_only_with_accept_plaintext_rows() {
    let dir = tempfile::tempdir().unwrap();
    let url = common::sqlite_url(dir.path(), "s.db");
    let plain = AnyStore::open(&url, StoreOptions::allow_plaintext_secrets())
        .await
        .unwrap();
    let mesh = MeshName::parse("default").unwrap();
    plain
        .create_mesh(NewMesh {
            name: mesh.clone(),
            spec: Default::default(),
            labels: Labels::default(),
        })
        .await
        .unwrap();
    let key = SecretKey::parse(Some("default"), "old").unwrap();
    plain
        .create_secret(NewSecret {
            key: key.clone(),
            data: SecretData::new(b"v".to_vec()).unwrap(),
            labels: Labels::default(),
        })
        .await
        .unwrap();
    plain.close().await;
    let open = |accept| {
        AnyStore::open(
            &url,
            StoreOptions {
                keyring: Some(common::test_keyring().into()),
                accept_plaintext_rows: accept,
                ..StoreOptions::allow_plaintext_secrets()
            },
        )
    };
    let strict = open(false).await.unwrap();
    assert!(matches!(
        strict.get_secret(&key).await,
        Err(StoreError::Sealed { .. })
    ));
    let upgrading = open(true).await.unwrap();
    assert_eq!(
        upgrading.get_secret(&key).await.unwrap().data.expose(),
        b"v"
    );
}

/// A database that hangs (accepts connections, never answers): every request ends by
/// `--request-timeout` with a 503 that carries `Retry-After` and says what happened, never
/// a hang and never a 500; once the database answers again, so does the server, by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_database_gets_503_with_retry_after_by_the_request_timeout() {
    let db = common::TestDb::migrated().await;
    let proxy = common::proxy::Proxy::start(common::proxy::upstream_of(&db.url)).await;
    let store = AnyStore::open(
        &proxy.url_for(&db.url),
        common::sealed(StoreOptions::allow_plaintext_secrets()),
    )
    .await
    .unwrap();
    let config = ApiConfig {
        request_timeout: Duration::from_secs(1),
        ..ApiConfig::default()
    };
    let server = TestServer::start_on(store, common::server::Guard::Postgres(db), config).await;
    put_secret(&server, "default", "s", b"x").await;

    proxy.stall();
    let client = Client::new();
    let mut timed_out = false;
    for _ in 0..5 {
        let started = std::time::Instant::now();
        let response = client
            .get(server.at("/meshes/default/secrets/s"))
            .send()
            .await
            .unwrap();
        let took = started.elapsed();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()["retry-after"], "1");
        // By the request timeout (1 s), with room for a loaded machine, and before the
        // pool's 5 s acquire timeout could have been what ended it.
        assert!(took < Duration::from_secs(4), "answered after {took:?}");
        let body: Value = response.json().await.unwrap();
        timed_out |= body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("--request-timeout"));
    }
    assert!(timed_out, "no request waited for the hanging database");

    proxy.heal();
    let healed = std::time::Instant::now();
    loop {
        let response = client
            .get(server.at("/meshes/default/secrets/s"))
            .send()
            .await
            .unwrap();
        if response.status() == StatusCode::OK {
            break;
        }
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            healed.elapsed() < Duration::from_secs(30),
            "never recovered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
