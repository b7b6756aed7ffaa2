//! Secrets in use, on both backends: Mesh mTLS backends and their validation messages,
//! provided CAs from real certificates made here, generated builtin CA secrets, the delete
//! guard (and `unsafe_delete`), the usage index, and the delete-versus-reference race.

#[macro_use]
mod common;

use common::http::{b64, delete_path, get_json, put_json, put_secret, stored, violations};
use common::process::kuma;
use common::server::{Backend, TestServer};
use kuma_secrets::api::ApiConfig;
use kuma_secrets::domain::{Labels, MeshName, MeshUpdate, NewSecret, SecretData, SecretKey};
use kuma_secrets::store::{SecretStore, StoreError, StoreOptions};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A leaf certificate (not a CA, keyAgreement set) and its key.
fn leaf_pair() -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["backend.local".to_owned()]).unwrap();
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyAgreement,
    ];
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn provided(name: &str, cert: Value, key: Value) -> Value {
    json!({"name": name, "type": "provided", "conf": {"cert": cert, "key": key}})
}

async fn put_mesh(server: &TestServer, name: &str, mtls: Value) -> (StatusCode, Value) {
    put_json(
        server,
        &format!("/meshes/{name}"),
        json!({"type": "Mesh", "name": name, "mtls": mtls}),
    )
    .await
}

#[track_caller]
fn assert_violation(body: &Value, field: &str, reason_part: &str) {
    let found = violations(body);
    assert!(
        found
            .iter()
            .any(|(f, r)| f == field && r.contains(reason_part)),
        "{field}: {reason_part:?} in {found:#?}"
    );
}

/// A Mesh whose provided CA expires in 10 days: the expiry is on the Mesh's certificates,
/// the secret's item and `_usage` and `_certificates`, in `get secrets --expiring 30d` (not
/// in `--expiring 5d`), and in the Mesh's metric.
async fn a_ca_expiring_in_ten_days_shows_in_the_api_the_cli_and_the_metric(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (cert, key) = common::pki::ca_pair_valid_for("short-lived CA", Some(10));
    put_secret(&server, "default", "short-cert", &cert).await;
    put_secret(&server, "default", "short-key", &key).await;
    put_secret(&server, "default", "not-a-cert", "hunter2").await;
    let (status, body) = put_mesh(
        &server,
        "default",
        json!({"enabledBackend": "ca-1",
               "backends": [provided("ca-1", json!({"secret": "short-cert"}), json!({"secret": "short-key"}))]}),
    )
    .await;
    assert!(status.is_success(), "{body}");

    let mesh = get_json(&server, "/meshes/default/_certificates").await;
    let earliest = mesh["earliestNotAfter"].as_str().unwrap().to_owned();
    let days = (chrono::DateTime::parse_from_rfc3339(&earliest)
        .unwrap()
        .to_utc()
        - chrono::Utc::now())
    .num_days();
    assert!((9..=10).contains(&days), "{mesh}");
    assert_eq!(mesh["items"][0]["secret"], "short-cert");
    assert_eq!(mesh["items"][0]["enabled"], true);

    let item = get_json(&server, "/meshes/default/secrets/short-cert").await;
    let listed = get_json(&server, "/meshes/default/secrets").await;
    let in_list = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "short-cert")
        .unwrap()
        .clone();
    let usage = get_json(&server, "/meshes/default/secrets/short-cert/_usage").await;
    for (what, found) in [("item", &item), ("list", &in_list), ("_usage", &usage)] {
        let found =
            chrono::DateTime::parse_from_rfc3339(found["notAfter"].as_str().unwrap()).unwrap();
        let expected = chrono::DateTime::parse_from_rfc3339(&earliest).unwrap();
        assert_eq!(found, expected, "{what}");
    }
    let plain = get_json(&server, "/meshes/default/secrets/not-a-cert").await;
    assert!(plain.get("notAfter").is_none(), "{plain}");
    let decoded = get_json(&server, "/meshes/default/secrets/short-cert/_certificates").await;
    assert_eq!(decoded["total"], 1);
    assert_eq!(decoded["items"][0]["isCa"], true);
    assert_eq!(decoded["items"][0]["subject"], "CN=short-lived CA");
    assert!(decoded.to_string().find("PRIVATE").is_none());
    let none = get_json(&server, "/meshes/default/secrets/not-a-cert/_certificates").await;
    assert_eq!(none, json!({"total": 0, "items": []}));

    let run = |within: &'static str| {
        let url = server.url.clone();
        async move {
            kuma(
                &["get", "secrets", "--expiring", within, "--api-url", &url],
                None,
            )
            .await
            .ok()
            .stdout
        }
    };
    let soon = run("30d").await;
    let lines: Vec<&str> = soon.lines().collect();
    assert_eq!(lines.len(), 2, "{soon}");
    assert!(lines[0].starts_with("MESH "), "{soon}");
    assert!(
        lines[1].starts_with("default ")
            && lines[1].contains("short-cert")
            && lines[1].contains(&format!("{days}d")),
        "{soon}"
    );
    assert_eq!(
        run("5d").await,
        "No secret holds a certificate that expires within 5d\n"
    );

    let metrics = common::http::fetch_text(format!("{}/metrics", server.url)).await;
    let line = metrics
        .lines()
        .find(|l| l.starts_with("kuma_secrets_mesh_ca_expiry_timestamp_seconds{"))
        .unwrap_or_else(|| panic!("{metrics}"));
    let expected = chrono::DateTime::parse_from_rfc3339(&earliest)
        .unwrap()
        .timestamp();
    assert_eq!(
        line,
        format!("kuma_secrets_mesh_ca_expiry_timestamp_seconds{{mesh=\"default\"}} {expected}")
    );
}

async fn the_seeds_provided_ca_example_works_end_to_end_through_apply(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (cert, key) = common::pki::ca_pair("my CA");
    let secrets = format!(
        "type: Secret\nmesh: default\nname: my-cert\ndata: {}\n---\ntype: Secret\nmesh: default\nname: my-key\ndata: {}\n",
        b64(&cert),
        b64(&key)
    );
    let mesh = "\
type: Mesh
name: default
mtls:
  enabledBackend: ca-1
  backends:
  - name: ca-1
    type: provided
    conf:
      cert: {secret: my-cert}
      key: {secret: my-key}
";
    let apply = |text: String| {
        let url = server.url.clone();
        async move { kuma(&["apply", "-f", "-", "--api-url", &url], Some(&text)).await }
    };
    apply(secrets).await.ok();
    let run = apply(mesh.to_owned()).await.ok();
    assert_eq!(
        run.stdout,
        "resource type=\"Mesh\" mesh=\"\" name=\"default\" Updated\n"
    );
    let read = get_json(&server, "/meshes/default").await;
    assert_eq!(read["mtls"]["enabledBackend"], "ca-1");

    // The guard: Kuma's exact message, and nothing deleted.
    let (status, body) = delete_path(&server, "/meshes/default/secrets/my-cert").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["title"], "Could not delete a resource");
    assert_eq!(body["detail"], "Resource is not valid");
    assert_eq!(
        violations(&body),
        [(
            "name".to_owned(),
            "The secret \"my-cert\" that you are trying to remove is currently in use in Mesh \"default\" in mTLS backend \"ca-1\". Please remove the reference from the \"ca-1\" backend before removing the secret.".to_owned()
        )]
    );
    assert_eq!(
        stored(&server, Some("default"), "my-cert").await.unwrap(),
        cert.as_bytes()
    );
    kuma(
        &["delete", "secret", "my-key", "--api-url", &server.url],
        None,
    )
    .await
    .fails_with("currently in use in Mesh \"default\"");

    // The usage index, over HTTP and in `get secret`.
    let usage = get_json(&server, "/meshes/default/secrets/my-cert/_usage").await;
    assert_eq!(
        usage,
        json!({"total": 1, "items": [{"referrerType": "Mesh", "mesh": "default", "backend": "ca-1", "backendType": "provided", "enabled": true}],
               // rcgen's default validity, read from the certificate.
               "notAfter": "4096-01-01T00:00:00Z"})
    );
    let run = kuma(
        &[
            "get",
            "secret",
            "my-cert",
            "-m",
            "default",
            "--show-usage",
            "--api-url",
            &server.url,
        ],
        None,
    )
    .await
    .ok();
    assert!(
        run.stdout
            .contains("Used by:\n  Mesh \"default\" mTLS backend \"ca-1\" (provided, enabled)"),
        "{run:?}"
    );

    // Once the reference is gone, the secret can go.
    let (status, _) = put_mesh(&server, "default", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = delete_path(&server, "/meshes/default/secrets/my-cert").await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn mesh_mtls_validation_speaks_kumas_messages(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (cert, key) = common::pki::ca_pair("ca");
    let (leaf_cert, leaf_key) = leaf_pair();
    let (_, other_key) = common::pki::ca_pair("other");
    put_secret(&server, "default", "ca-cert", &cert).await;
    put_secret(&server, "default", "ca-key", &key).await;
    put_secret(&server, "default", "leaf-cert", &leaf_cert).await;
    put_secret(&server, "default", "leaf-key", &leaf_key).await;
    put_secret(&server, "default", "other-key", &other_key).await;
    let secret = |name: &str| json!({"secret": name});

    // Structure.
    let (status, body) = put_mesh(
        &server,
        "default",
        json!({"backends": [
            {"name": "a", "type": "vault"},
            {"name": "b", "type": "provided", "conf": {"key": {}}},
            {"name": "c", "type": "provided", "conf": {"cert": {"secret": ""}, "key": {"inline": ""}}},
        ]}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_violation(
        &body,
        "mtls.backends[0].type",
        "could not find installed plugin for this type",
    );
    assert_violation(&body, "mtls.backends[1].conf.cert", "has to be defined");
    assert_violation(
        &body,
        "mtls.backends[1].conf.key",
        "data source has to be chosen. Available sources: secret, file, inline",
    );
    assert_violation(
        &body,
        "mtls.backends[2].conf.cert.secret",
        "cannot be empty",
    );
    assert_violation(&body, "mtls.backends[2].conf.key.inline", "cannot be empty");

    // A reference to a secret that does not exist in the same mesh: a GlobalSecret or
    // another mesh's secret of that name never satisfies it.
    let (status, _) = put_json(
        &server,
        "/global-secrets/elsewhere",
        json!({"type": "GlobalSecret", "name": "elsewhere", "data": b64(&cert)}),
    )
    .await;
    assert!(status.is_success());
    let (status, _) = put_mesh(&server, "other", json!({})).await;
    assert_eq!(status, StatusCode::CREATED);
    put_secret(&server, "other", "elsewhere", &cert).await;
    let (status, body) = put_mesh(
        &server,
        "default",
        json!({"backends": [provided("ca-1", secret("elsewhere"), secret("ca-key"))]}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let missing = "could not load data: resource not found: type=\"Secret\" name=\"elsewhere\" mesh=\"default\"";
    assert_violation(&body, "mtls.backends[0].conf.cert", missing);
    assert_violation(&body, "mtls.backends[0].conf.key", missing);

    // A leaf certificate is not a CA.
    let (status, body) = put_mesh(
        &server,
        "default",
        json!({"backends": [provided("ca-1", secret("leaf-cert"), secret("leaf-key"))]}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_violation(
        &body,
        "mtls.backends[0].conf.cert[0]",
        "basic constraint 'CA' must be set to 'true' (see X509-SVID: 4.1. Basic Constraints)",
    );
    assert_violation(
        &body,
        "mtls.backends[0].conf.cert[0]",
        "key usage extension 'keyCertSign' must be set (see X509-SVID: 4.3. Key Usage)",
    );
    assert_violation(
        &body,
        "mtls.backends[0].conf.cert[0]",
        "key usage extension 'keyAgreement' must NOT be set",
    );

    // A key that does not match.
    let (status, body) = put_mesh(
        &server,
        "default",
        json!({"backends": [provided("ca-1", secret("ca-cert"), secret("other-key"))]}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_violation(
        &body,
        "mtls.backends[0].conf.cert",
        "not a valid TLS key pair: private key does not match public key",
    );

    // Inline sources work too.
    let (status, body) = put_mesh(
        &server,
        "default",
        json!({"enabledBackend": "ca-1", "backends": [
            provided("ca-1", json!({"inline": b64(&cert)}), json!({"inlineString": key})),
            provided("ca-2", secret("ca-cert"), secret("ca-key")),
        ]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The CA cannot change while mTLS is on.
    let (status, body) = put_mesh(
        &server,
        "default",
        json!({"enabledBackend": "ca-2", "backends": [provided("ca-2", secret("ca-cert"), secret("ca-key"))]}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_violation(
        &body,
        "mtls.enabledBackend",
        "Changing CA when mTLS is enabled is forbidden. Disable mTLS first and then change the CA",
    );

    // skipValidation skips the secret checks, as Kuma.
    let (status, body) = put_mesh(
        &server,
        "skipped",
        json!({"skipValidation": true, "backends": [provided("ca-1", secret("nowhere"), secret("nothing"))]}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

async fn builtin_backends_get_real_ca_secrets_kept_across_updates_and_removed_with_the_mesh(
    backend: Backend,
) {
    let server = TestServer::start(backend).await;
    let builtin =
        json!({"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]});
    let (status, body) = put_mesh(&server, "demo", builtin.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let cert_key = SecretKey::parse(Some("demo"), "demo.ca-builtin-cert-ca-1").unwrap();
    let key_key = SecretKey::parse(Some("demo"), "demo.ca-builtin-key-ca-1").unwrap();
    let cert = server.store.get_secret(&cert_key).await.unwrap();
    let key = server.store.get_secret(&key_key).await.unwrap();
    // Real: a CA whose key matches (the same checks a provided CA must pass).
    kuma_secrets::ca::validate_provided_ca(cert.data.expose(), key.data.expose(), "conf").unwrap();
    let pem = String::from_utf8(cert.data.expose().to_vec()).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");

    // Stable across updates: never regenerated.
    let (status, _) = put_json(
        &server,
        "/meshes/demo",
        json!({"type": "Mesh", "name": "demo", "labels": {"team": "x"}, "mtls": builtin}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let again = server.store.get_secret(&cert_key).await.unwrap();
    assert_eq!(again, cert, "same data, same version");

    // A second builtin backend gets its own pair; the first stays.
    let two = json!({"enabledBackend": "ca-1", "backends": [
        {"name": "ca-1", "type": "builtin"}, {"name": "ca-2", "type": "builtin"}
    ]});
    let (status, _) = put_mesh(&server, "demo", two).await;
    assert_eq!(status, StatusCode::OK);
    let second = SecretKey::parse(Some("demo"), "demo.ca-builtin-cert-ca-2").unwrap();
    assert_ne!(
        server.store.get_secret(&second).await.unwrap().data,
        cert.data
    );
    assert_eq!(server.store.get_secret(&cert_key).await.unwrap(), cert);

    // The generated secrets are guarded, enabled backend or not.
    for name in ["demo.ca-builtin-key-ca-1", "demo.ca-builtin-cert-ca-2"] {
        let (status, body) = delete_path(&server, &format!("/meshes/demo/secrets/{name}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(
            body["invalid_parameters"][0]["reason"]
                .as_str()
                .unwrap()
                .contains(&format!("The secret \"{name}\""))
        );
    }

    // Gone with the Mesh.
    let (status, _) = delete_path(&server, "/meshes/demo").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        stored(&server, Some("demo"), "demo.ca-builtin-cert-ca-1").await,
        None
    );
    assert_eq!(
        stored(&server, Some("demo"), "demo.ca-builtin-key-ca-2").await,
        None
    );
}

async fn unsafe_delete_turns_the_guard_off(backend: Backend) {
    let options = StoreOptions {
        unsafe_delete: true,
        ..StoreOptions::allow_plaintext_secrets()
    };
    let server = TestServer::start_with(backend, ApiConfig::default(), options).await;
    let (status, _) = put_mesh(
        &server,
        "default",
        json!({"backends": [{"name": "ca-1", "type": "builtin"}]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = delete_path(
        &server,
        "/meshes/default/secrets/default.ca-builtin-key-ca-1",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        stored(&server, Some("default"), "default.ca-builtin-key-ca-1").await,
        None
    );
}

/// Many rounds of: a Mesh update that starts referencing a secret, racing a delete of that
/// secret. Whatever the interleaving, the Mesh never ends up referencing a missing secret.
async fn a_delete_racing_a_new_reference_never_leaves_it_dangling(backend: Backend) {
    let server = TestServer::start(backend).await;
    let store = server.store.clone();
    let mesh = MeshName::parse("default").unwrap();
    let (cert, key) = common::pki::ca_pair("race");
    let ca_key = SecretKey::parse(Some("default"), "ca-key").unwrap();
    store
        .create_secret(NewSecret {
            key: ca_key,
            data: SecretData::new(key.into_bytes()).unwrap(),
            labels: Labels::default(),
        })
        .await
        .unwrap();
    let (mut refused_deletes, mut refused_updates) = (0, 0);
    for round in 0..40 {
        let name = format!("cert-{round}");
        let cert_key = SecretKey::parse(Some("default"), &name).unwrap();
        store
            .create_secret(NewSecret {
                key: cert_key.clone(),
                data: SecretData::new(cert.clone().into_bytes()).unwrap(),
                labels: Labels::default(),
            })
            .await
            .unwrap();
        let current = store.get_mesh(&mesh).await.unwrap();
        let mut spec = serde_json::Map::new();
        spec.insert(
            "mtls".into(),
            json!({"backends": [provided("ca-1", json!({"secret": name}), json!({"secret": "ca-key"}))]}),
        );
        let update = {
            let store = store.clone();
            let mesh = mesh.clone();
            let version = current.meta.version;
            tokio::spawn(async move {
                store
                    .update_mesh(
                        &mesh,
                        version,
                        MeshUpdate {
                            spec,
                            labels: current.labels,
                        },
                    )
                    .await
            })
        };
        let delete = {
            let store = store.clone();
            let cert_key = cert_key.clone();
            // Staggered, so the delete lands before, inside and after the update's window
            // between reading the secret and committing.
            let delay = std::time::Duration::from_micros((round % 10) * 300);
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                store.delete_secret(&cert_key, None).await
            })
        };
        let (update, delete) = (update.await.unwrap(), delete.await.unwrap());
        match (&update, &delete) {
            (Ok(_), Err(StoreError::InUse { .. })) => refused_deletes += 1,
            (Err(StoreError::Invalid(_)), Ok(())) => refused_updates += 1,
            other => panic!("round {round}: exactly one must win: {other:?}"),
        }
        // The invariant: every referenced secret exists.
        let mesh_now = store.get_mesh(&mesh).await.unwrap();
        if let Some(mtls) = kuma_secrets::domain::mtls::Mtls::of(&mesh_now.spec, &mesh).unwrap() {
            for used in mtls.used_secrets(&mesh) {
                let key = SecretKey::parse(Some("default"), &used.secret).unwrap();
                assert!(
                    store.get_secret(&key).await.is_ok(),
                    "round {round}: the Mesh references missing secret {}",
                    used.secret
                );
            }
        }
        // Drop the reference for the next round.
        common::http::set_mesh_spec(&store, &mesh, serde_json::Map::new())
            .await
            .unwrap();
    }
    eprintln!("RACE refused_deletes={refused_deletes} refused_updates={refused_updates}");
    assert_eq!(refused_deletes + refused_updates, 40);
}

on_both_backends! {
    a_ca_expiring_in_ten_days_shows_in_the_api_the_cli_and_the_metric,
    the_seeds_provided_ca_example_works_end_to_end_through_apply,
    mesh_mtls_validation_speaks_kumas_messages,
    builtin_backends_get_real_ca_secrets_kept_across_updates_and_removed_with_the_mesh,
    unsafe_delete_turns_the_guard_off,
    a_delete_racing_a_new_reference_never_leaves_it_dangling,
}
