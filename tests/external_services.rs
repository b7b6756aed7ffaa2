//! ExternalServices, on both backends, over real HTTP and the real binary: Kuma's wire
//! form (Universal and `?format=k8s`), its validator's messages, TLS from Secrets checked
//! on write (the Secret exists in the Mesh, the PEM parses, the key matches), the delete
//! guard of the table of references and its race, `_usage`, the change feed, the CLI, and
//! the inline client key sealed at rest.

#[macro_use]
mod common;

use common::http::{b64, delete_path, get_json, put_json, put_secret, stored, violations};
use common::process::kuma;
use common::server::{Backend, TestServer};
use kuma_secrets::domain::{
    Labels, MeshName, NewExternalService, NewSecret, ResourceName, SecretData, SecretKey,
};
use kuma_secrets::store::{Expect, SecretStore, StoreError};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A client certificate (not a CA) and its key, PEM.
fn client_pair(name: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// An ExternalService body reaching `httpbin.org:443` with TLS from Secrets `tls`.
fn service(name: &str, tls: Value) -> Value {
    json!({
        "type": "ExternalService",
        "mesh": "default",
        "name": name,
        "networking": {"address": "httpbin.org:443", "tls": tls},
        "tags": {"kuma.io/service": "httpbin", "kuma.io/protocol": "http"}
    })
}

fn from_secrets() -> Value {
    json!({
        "enabled": true,
        "allowRenegotiation": false,
        "serverName": "httpbin.org",
        "caCert": {"secret": "httpbin-ca"},
        "clientCert": {"secret": "httpbin-cert"},
        "clientKey": {"secret": "httpbin-key"}
    })
}

/// The three Secrets [`from_secrets`] names, with real PEM.
async fn put_tls_secrets(server: &TestServer) -> (String, String, String) {
    let (ca, _) = common::pki::ca_pair("httpbin CA");
    let (cert, key) = client_pair("client.local");
    put_secret(server, "default", "httpbin-ca", &ca).await;
    put_secret(server, "default", "httpbin-cert", &cert).await;
    put_secret(server, "default", "httpbin-key", &key).await;
    (ca, cert, key)
}

async fn an_external_service_with_tls_from_secrets_is_served_as_kuma_serves_it(backend: Backend) {
    let server = TestServer::start(backend).await;
    put_tls_secrets(&server).await;
    let path = "/meshes/default/external-services/httpbin";
    let (status, body) = put_json(&server, path, service("httpbin", from_secrets())).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, _) = put_json(&server, path, service("httpbin", from_secrets())).await;
    assert_eq!(status, StatusCode::OK);

    // Universal: the spec flat beside the meta fields, as Kuma's API has it.
    let item = get_json(&server, path).await;
    assert_eq!(item["type"], "ExternalService");
    assert_eq!(item["mesh"], "default");
    assert_eq!(item["name"], "httpbin");
    assert_eq!(item["networking"]["address"], "httpbin.org:443");
    assert_eq!(item["networking"]["tls"], from_secrets());
    assert_eq!(item["tags"]["kuma.io/service"], "httpbin");
    assert_eq!(item["labels"]["kuma.io/mesh"], "default");
    assert!(item["creationTime"].is_string() && item["modificationTime"].is_string());

    // Kubernetes: cluster-scoped, the Mesh beside metadata, the spec under `spec`.
    let manifest = get_json(&server, &format!("{path}?format=k8s")).await;
    assert_eq!(manifest["apiVersion"], "kuma.io/v1alpha1");
    assert_eq!(manifest["kind"], "ExternalService");
    assert_eq!(manifest["mesh"], "default");
    assert_eq!(manifest["metadata"]["name"], "httpbin");
    assert!(
        manifest["metadata"].get("namespace").is_none(),
        "{manifest}"
    );
    assert_eq!(manifest["spec"]["networking"]["tls"], from_secrets());

    // Lists: the Mesh's and every Mesh's.
    for list in ["/meshes/default/external-services", "/external-services"] {
        let page = get_json(&server, list).await;
        assert_eq!(page["total"], 1, "{list}");
        assert_eq!(page["items"][0]["name"], "httpbin", "{list}");
        assert_eq!(page["next"], Value::Null, "{list}");
    }

    // The command line: kumactl's table, YAML, and a Kubernetes manifest that `apply` takes.
    let get = |args: &[&str]| {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--api-url", &server.url]);
        let all: Vec<String> = all.into_iter().map(str::to_owned).collect();
        async move {
            let refs: Vec<&str> = all.iter().map(String::as_str).collect();
            kuma(&refs, None).await.ok()
        }
    };
    let table = get(&["external-services"]).await;
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert!(
        lines[0].starts_with("MESH      NAME      TAGS")
            && lines[0].contains("ADDRESS")
            && lines[0].ends_with("AGE"),
        "{table:?}"
    );
    assert!(
        lines[1].contains("kuma.io/protocol=http kuma.io/service=httpbin   httpbin.org:443"),
        "{table:?}"
    );
    let yaml = get(&["external-service", "httpbin", "-o", "yaml"]).await;
    assert!(yaml.stdout.contains("type: ExternalService"), "{yaml:?}");
    assert!(yaml.stdout.contains("secret: httpbin-key"), "{yaml:?}");
    let k8s = get(&["external-service", "httpbin", "-o", "kubernetes"]).await;
    assert!(
        k8s.stdout.contains("kind: ExternalService") && k8s.stdout.contains("mesh: default"),
        "{k8s:?}"
    );
    kuma(
        &[
            "delete",
            "external-service",
            "httpbin",
            "--api-url",
            &server.url,
        ],
        None,
    )
    .await
    .ok();
    let run = kuma(
        &["apply", "-f", "-", "--api-url", &server.url],
        Some(&k8s.stdout),
    )
    .await
    .ok();
    assert_eq!(
        run.stdout,
        "resource type=\"ExternalService\" mesh=\"default\" name=\"httpbin\" Created\n"
    );
    assert_eq!(
        get_json(&server, path).await["networking"]["tls"],
        from_secrets()
    );
}

async fn its_secrets_cannot_be_deleted_while_it_uses_them(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (_, cert, _) = put_tls_secrets(&server).await;
    let path = "/meshes/default/external-services/httpbin";
    let (status, body) = put_json(&server, path, service("httpbin", from_secrets())).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let (status, body) = delete_path(&server, "/meshes/default/secrets/httpbin-cert").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["title"], "Could not delete a resource");
    assert_eq!(
        violations(&body),
        [(
            "name".to_owned(),
            "The secret \"httpbin-cert\" that you are trying to remove is currently in use in Mesh \"default\" by ExternalService \"httpbin\" (networking.tls.clientCert). Please remove the references before removing the secret.".to_owned()
        )]
    );
    assert_eq!(
        stored(&server, Some("default"), "httpbin-cert")
            .await
            .unwrap(),
        cert.as_bytes()
    );
    // Purging is a delete too.
    let (status, _) = delete_path(&server, "/meshes/default/secrets/httpbin-key?purge=true").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    kuma(
        &["delete", "secret", "httpbin-ca", "--api-url", &server.url],
        None,
    )
    .await
    .fails_with("by ExternalService \"httpbin\" (networking.tls.caCert)");

    // `_usage` and `get secret --show-usage` name the referrer and its field.
    let usage = get_json(&server, "/meshes/default/secrets/httpbin-key/_usage").await;
    assert_eq!(
        usage,
        json!({"total": 1, "items": [{"referrerType": "ExternalService", "mesh": "default",
            "name": "httpbin", "field": "networking.tls.clientKey"}]})
    );
    let run = kuma(
        &[
            "get",
            "secret",
            "httpbin-key",
            "--show-usage",
            "--api-url",
            &server.url,
        ],
        None,
    )
    .await
    .ok();
    assert!(
        run.stdout.contains(
            "Used by:\n  ExternalService \"httpbin\" in Mesh \"default\", field networking.tls.clientKey"
        ),
        "{run:?}"
    );

    // An update that stops naming a Secret frees it; the others stay guarded.
    let mut tls = from_secrets();
    tls["caCert"] = json!({"inlineString": common::pki::ca_pair("inline CA").0});
    let (status, body) = put_json(&server, path, service("httpbin", tls)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = delete_path(&server, "/meshes/default/secrets/httpbin-ca").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = delete_path(&server, "/meshes/default/secrets/httpbin-cert").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Once the ExternalService is gone, so are its references.
    let (status, _) = delete_path(&server, path).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = delete_path(&server, path).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let usage = get_json(&server, "/meshes/default/secrets/httpbin-key/_usage").await;
    assert_eq!(usage["total"], 0);
    for secret in ["httpbin-cert", "httpbin-key"] {
        let (status, body) =
            delete_path(&server, &format!("/meshes/default/secrets/{secret}")).await;
        assert_eq!(status, StatusCode::OK, "{secret}: {body}");
    }
}

async fn references_and_pem_are_checked_on_write_naming_the_field(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (ca, cert, _) = put_tls_secrets(&server).await;
    let (_, other_key) = client_pair("someone-else");
    put_secret(&server, "default", "other-key", &other_key).await;
    put_secret(&server, "default", "not-pem", b"hello").await;
    // A GlobalSecret of the name does not count: only the Mesh's own Secrets may be used.
    let (status, _) = put_json(
        &server,
        "/global-secrets/global-ca",
        json!({"type": "GlobalSecret", "name": "global-ca", "data": b64(&ca)}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let path = "/meshes/default/external-services/httpbin";
    let missing = |name: &str| {
        format!(
            "could not load data: resource not found: type=\"Secret\" name=\"{name}\" mesh=\"default\""
        )
    };
    let cases: Vec<(Value, Vec<(&str, String)>)> = vec![
        (
            json!({"caCert": {"secret": "global-ca"}}),
            vec![("networking.tls.caCert", missing("global-ca"))],
        ),
        (
            json!({"clientCert": {"secret": "httpbin-cert"}, "clientKey": {"secret": "gone"}}),
            vec![("networking.tls.clientKey", missing("gone"))],
        ),
        (
            json!({"clientCert": {"secret": "httpbin-cert"}}),
            vec![(
                "networking.tls.clientKey",
                "must be given with clientCert: a client certificate is presented with its key"
                    .to_owned(),
            )],
        ),
        (
            json!({"clientCert": {"secret": "httpbin-cert"}, "clientKey": {"secret": "other-key"}}),
            vec![(
                "networking.tls.clientKey",
                "not a valid TLS key pair: private key does not match the public key of clientCert"
                    .to_owned(),
            )],
        ),
        (
            json!({"caCert": {"secret": "not-pem"}}),
            vec![(
                "networking.tls.caCert",
                "not a valid PEM certificate bundle: failed to find any PEM data in certificate input"
                    .to_owned(),
            )],
        ),
        (
            json!({"clientCert": {"inlineString": cert.clone()}, "clientKey": {"inline": b64("junk")}}),
            vec![(
                "networking.tls.clientKey",
                "not a valid PEM private key: failed to find any PEM data in key input".to_owned(),
            )],
        ),
        (
            json!({"caCert": {"secret": "httpbin-ca", "inline": b64(&ca)}}),
            vec![(
                "networking.tls.caCert",
                "error parsing \"inline\", oneof kuma.system.v1alpha1.DataSource.type is already set"
                    .to_owned(),
            )],
        ),
        (
            json!({"caCert": {"secret": ""}}),
            vec![("networking.tls.caCert", "data source cannot be empty".to_owned())],
        ),
    ];
    for (tls, expected) in cases {
        let (status, body) = put_json(&server, path, service("httpbin", tls.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{tls}: {body}");
        let expected: Vec<(String, String)> = expected
            .into_iter()
            .map(|(f, m)| (f.to_owned(), m))
            .collect();
        assert_eq!(violations(&body), expected, "{tls}");
    }
    // Kuma's validator, over HTTP: every violation at once, in its order.
    let (status, body) = put_json(
        &server,
        path,
        json!({"type": "ExternalService", "mesh": "default", "name": "httpbin",
            "networking": {"address": "http://example.com:8080"}, "tags": {"version": "1"}}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["title"], "Could not process a resource");
    assert_eq!(
        violations(&body),
        [
            ("networking.address", "unable to parse address"),
            (
                "networking.address",
                "address has to be a valid IP address or a domain name"
            ),
            ("networking.address", "unable to parse port in address"),
            ("networking.address", "port must be in the range [1, 65535]"),
            ("tags", "mandatory tag \"kuma.io/service\" is missing"),
        ]
        .map(|(f, m)| (f.to_owned(), m.to_owned()))
    );
    // A Mesh that does not exist: Kuma's 404 before anything else.
    let (status, body) = put_json(
        &server,
        "/meshes/nowhere/external-services/httpbin",
        service("httpbin", json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    // Nothing was stored by any refused write.
    assert_eq!(get_json(&server, "/external-services").await["total"], 0);
}

async fn deleting_the_mesh_deletes_its_external_services_and_the_feed_names_who(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (status, _) = put_json(
        &server,
        "/meshes/other",
        json!({"type": "Mesh", "name": "other"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (ca, _) = common::pki::ca_pair("other CA");
    put_secret(&server, "other", "ca", &ca).await;
    let before = server.store.current_revision().await.unwrap();
    let mut body = service("api", json!({"caCert": {"secret": "ca"}}));
    body["mesh"] = json!("other");
    let (status, answer) = put_json(&server, "/meshes/other/external-services/api", body).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");

    let changes = get_json(
        &server,
        &format!("/_changes?after={before}&type=ExternalService"),
    )
    .await;
    let events = changes["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{changes}");
    assert_eq!(events[0]["operation"], "create");
    assert_eq!(events[0]["mesh"], "other");
    assert_eq!(events[0]["name"], "api");
    assert_eq!(events[0]["actor"]["name"], "localhost");

    let (status, _) = delete_path(&server, "/meshes/other").await;
    assert_eq!(status, StatusCode::OK);
    let mesh = MeshName::parse("other").unwrap();
    let name = ResourceName::parse("api").unwrap();
    assert!(matches!(
        server.store.get_external_service(&mesh, &name).await,
        Err(StoreError::NotFound(_))
    ));
    let changes = get_json(
        &server,
        &format!("/_changes?after={before}&type=ExternalService"),
    )
    .await;
    let events = changes["events"].as_array().unwrap();
    assert_eq!(events.len(), 2, "{changes}");
    assert_eq!(events[1]["operation"], "delete");
    assert_eq!(events[1]["actor"]["name"], "localhost", "{changes}");
    // A Mesh of the same name later starts with no ExternalService and no reference.
    let (status, _) = put_json(
        &server,
        "/meshes/other",
        json!({"type": "Mesh", "name": "other"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    put_secret(&server, "other", "ca", &ca).await;
    let (status, body) = delete_path(&server, "/meshes/other/secrets/ca").await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// Many rounds of an ExternalService write that starts naming a Secret, racing a delete of
/// that Secret, released together. Whatever the interleaving, exactly one wins, and the
/// ExternalService never names a Secret that is gone.
async fn a_delete_racing_a_new_reference_never_leaves_it_dangling(backend: Backend) {
    let server = TestServer::start(backend).await;
    let store = server.store.clone();
    let mesh = MeshName::parse("default").unwrap();
    let name = ResourceName::parse("racer").unwrap();
    let (ca, _) = common::pki::ca_pair("race");
    let (mut refused_deletes, mut refused_writes) = (0, 0);
    const ROUNDS: usize = 30;
    for round in 0..ROUNDS {
        let secret = format!("ca-{round}");
        let key = SecretKey::parse(Some("default"), &secret).unwrap();
        store
            .create_secret(NewSecret {
                key: key.clone(),
                data: SecretData::new(ca.clone().into_bytes()).unwrap(),
                labels: Labels::default(),
            })
            .await
            .unwrap();
        let spec = json!({"networking": {"address": "api.example.com:443",
            "tls": {"caCert": {"secret": secret}}}, "tags": {"kuma.io/service": "api"}});
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(2));
        let write = {
            let (store, barrier) = (store.clone(), barrier.clone());
            let service = NewExternalService {
                mesh: mesh.clone(),
                name: name.clone(),
                spec: spec.as_object().unwrap().clone(),
                labels: Labels::default(),
            };
            tokio::spawn(async move {
                barrier.wait().await;
                store.put_external_service(service, Expect::Any).await
            })
        };
        let delete = {
            let (store, barrier, key) = (store.clone(), barrier.clone(), key.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                store.delete_secret(&key, None).await
            })
        };
        let (write, delete) = (write.await.unwrap(), delete.await.unwrap());
        match (&write, &delete) {
            (Ok(_), Err(StoreError::ReferencedBy { .. })) => refused_deletes += 1,
            (Err(StoreError::Invalid(_)), Ok(())) => refused_writes += 1,
            other => panic!("round {round}: exactly one must win: {other:?}"),
        }
        // The invariant: what the stored ExternalService names exists.
        if let Ok(current) = store.get_external_service(&mesh, &name).await {
            let named = current.spec["networking"]["tls"]["caCert"]["secret"]
                .as_str()
                .unwrap()
                .to_owned();
            let key = SecretKey::parse(Some("default"), &named).unwrap();
            assert!(
                store.get_secret(&key).await.is_ok(),
                "round {round}: the ExternalService names missing secret {named}"
            );
            // Release the reference for the next round.
            store
                .delete_external_service(&mesh, &name, None)
                .await
                .unwrap();
        }
    }
    eprintln!("RACE refused_deletes={refused_deletes} refused_writes={refused_writes}");
    assert_eq!(refused_deletes + refused_writes, ROUNDS);
}

/// An inline client key is sealed in the database (bound to the write: a sealed key moved
/// to another ExternalService does not open), and shown only to admins.
async fn an_inline_client_key_is_sealed_at_rest_and_shown_to_admins_only(backend: Backend) {
    use kuma_secrets::sealing::Keyring;
    let first_key = Keyring::random_key();
    let keyring = Keyring::single("k1", first_key);
    let options = kuma_secrets::store::StoreOptions::sealed_with(std::sync::Arc::new(keyring));
    let server = TestServer::start_with(backend, common::server::tokens_only(), options).await;
    let admin = server.admin_token().await;
    let (cert, key) = client_pair("client.local");
    let tls = json!({"clientCert": {"inlineString": cert}, "clientKey": {"inlineString": key}});
    let client = reqwest::Client::new();
    let path = "/meshes/default/external-services/inline";
    let response = client
        .put(server.at(path))
        .bearer_auth(&admin)
        .json(&service("inline", tls.clone()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);

    // The database holds no key material, only the sealed form.
    let raw = common::raw::external_service_spec(&server, "default", "inline").await;
    assert!(!raw.contains("PRIVATE KEY"), "{raw}");
    assert!(raw.contains("\"sealed\""), "{raw}");
    assert!(
        raw.contains("BEGIN CERTIFICATE"),
        "the certificate is public: {raw}"
    );

    // An admin reads the key back; another user sees it redacted.
    let read: Value = client
        .get(server.at(path))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(read["networking"]["tls"], tls);
    let member = common::server::member_token(&server).await;
    let read: Value = client
        .get(server.at(path))
        .bearer_auth(&member)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        read["networking"]["tls"]["clientKey"]
            .get("inlineString")
            .is_none(),
        "{read}"
    );
    assert_eq!(read["networking"]["tls"]["clientCert"], tls["clientCert"]);
    // ... and may not write: writes need an admin, as Mesh writes do.
    let response = client
        .put(server.at("/meshes/default/external-services/by-member"))
        .bearer_auth(&member)
        .json(&service("by-member", json!({"enabled": true})))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let response = client
        .delete(server.at(path))
        .bearer_auth(&member)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);

    // A sealed key copied behind the service's back onto another ExternalService does not
    // open there: the read fails closed instead of serving it.
    let response = client
        .put(server.at("/meshes/default/external-services/other"))
        .bearer_auth(&admin)
        .json(&service("other", json!({"enabled": true})))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    common::raw::copy_external_service_spec(&server, "default", "inline", "other").await;
    let response = client
        .get(server.at("/meshes/default/external-services/other"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body = response.text().await.unwrap();
    assert!(!body.contains("PRIVATE KEY"), "{body}");
    let response = client
        .delete(server.at("/meshes/default/external-services/other"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // Key rotation re-seals it: after `rotate-keys`, a keyring without the old key reads it.
    let url = common::raw::store_url(&server);
    let second_key = Keyring::random_key();
    let both = Keyring::single("k1", first_key)
        .with_key("k2", second_key)
        .with_active("k2");
    let rotating = kuma_secrets::store::AnyStore::open(
        &url,
        kuma_secrets::store::StoreOptions::sealed_with(std::sync::Arc::new(both)),
    )
    .await
    .unwrap();
    assert_eq!(rotating.reseal_external_services().await.unwrap(), 1);
    assert_eq!(rotating.reseal_external_services().await.unwrap(), 0);
    // The rest of `rotate-keys`: the secrets the server generated (its admin token, ...).
    for rows in kuma_secrets::store::SealedRows::ALL {
        let mut after = 0;
        loop {
            let batch = rotating.reseal_batch(rows, after, 500).await.unwrap();
            after = batch.last_id;
            if batch.finished {
                break;
            }
        }
    }
    rotating.close().await;
    let only_new = kuma_secrets::store::AnyStore::open(
        &url,
        kuma_secrets::store::StoreOptions::sealed_with(std::sync::Arc::new(Keyring::single(
            "k2", second_key,
        ))),
    )
    .await
    .unwrap();
    let read = only_new
        .get_external_service(
            &MeshName::parse("default").unwrap(),
            &ResourceName::parse("inline").unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(Value::Object(read.spec)["networking"]["tls"], tls);
    assert!(only_new.unreadable().await.unwrap().is_empty());
    only_new.close().await;
}

/// The README's ExternalService example applies as pasted, once its Secrets exist.
async fn the_readmes_example_applies_as_pasted(backend: Backend) {
    let server = TestServer::start(backend).await;
    put_tls_secrets(&server).await;
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with("Secrets in use: ExternalService TLS"))
        .expect("the README's ExternalService section");
    let example = section
        .split("```yaml\n")
        .nth(1)
        .and_then(|block| block.split("```").next())
        .expect("its YAML example");
    let run = kuma(
        &["apply", "-f", "-", "--api-url", &server.url],
        Some(example),
    )
    .await
    .ok();
    assert_eq!(
        run.stdout,
        "resource type=\"ExternalService\" mesh=\"default\" name=\"httpbin\" Created\n"
    );
    let item = get_json(&server, "/meshes/default/external-services/httpbin").await;
    assert_eq!(item["networking"]["tls"], from_secrets());
}

/// Blind PUTs of one new ExternalService, all at once: each succeeds (a PUT without
/// preconditions is last writer wins, never a 412 or 409), exactly one creates it.
async fn concurrent_blind_puts_all_succeed_and_one_creates(backend: Backend) {
    let server = TestServer::start(backend).await;
    let body = json!({"type": "ExternalService", "mesh": "default", "name": "busy",
        "networking": {"address": "busy.example.com:443"}, "tags": {"kuma.io/service": "busy"}});
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(8));
    let mut puts = Vec::new();
    for _ in 0..8 {
        let (url, body, barrier) = (
            server.at("/meshes/default/external-services/busy"),
            body.clone(),
            barrier.clone(),
        );
        puts.push(tokio::spawn(async move {
            barrier.wait().await;
            let response = reqwest::Client::new()
                .put(url)
                .json(&body)
                .send()
                .await
                .unwrap();
            (response.status(), response.text().await.unwrap())
        }));
    }
    let mut created = 0;
    for put in puts {
        match put.await.unwrap() {
            (StatusCode::CREATED, _) => created += 1,
            (StatusCode::OK, _) => {}
            (other, body) => panic!("a blind PUT answered {other}: {body}"),
        }
    }
    assert_eq!(created, 1);
    let events = get_json(&server, "/_changes?after=0&type=ExternalService").await;
    assert_eq!(events["events"].as_array().unwrap().len(), 8, "{events}");
}

on_both_backends! {
    the_migration_records_the_references_of_meshes_already_stored,
    concurrent_blind_puts_all_succeed_and_one_creates,
    the_readmes_example_applies_as_pasted,
    an_external_service_with_tls_from_secrets_is_served_as_kuma_serves_it,
    its_secrets_cannot_be_deleted_while_it_uses_them,
    references_and_pem_are_checked_on_write_naming_the_field,
    deleting_the_mesh_deletes_its_external_services_and_the_feed_names_who,
    a_delete_racing_a_new_reference_never_leaves_it_dangling,
    an_inline_client_key_is_sealed_at_rest_and_shown_to_admins_only,
}

/// A blind create that loses the insert to a concurrent create of the same ExternalService
/// (held open here, behind the service's back, until the put waits on it) becomes an
/// update: never a 500, never a 412. Postgres only: SQLite runs one writer at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_create_that_loses_the_insert_becomes_an_update() {
    use sqlx::{Connection, Executor};
    let server = TestServer::start(Backend::Postgres).await;
    let common::server::Guard::Postgres(db) = &server.guard else {
        unreachable!("a Postgres server")
    };
    let spec = json!({"networking": {"address": "raced.example.com:443"},
        "tags": {"kuma.io/service": "raced"}});
    let mut rival = sqlx::PgConnection::connect(&db.url).await.unwrap();
    rival.execute("BEGIN").await.unwrap();
    sqlx::query(
        "INSERT INTO external_services (mesh, name, version, creation_time, \
         modification_time, labels, spec) VALUES ('default', 'raced', 1, now(), now(), '{}', \
         CAST($1 AS jsonb))",
    )
    .bind(spec.to_string())
    .execute(&mut rival)
    .await
    .unwrap();
    let put = {
        let store = server.store.clone();
        let service = NewExternalService {
            mesh: MeshName::parse("default").unwrap(),
            name: ResourceName::parse("raced").unwrap(),
            spec: spec.as_object().unwrap().clone(),
            labels: Labels::default(),
        };
        tokio::spawn(async move { store.put_external_service(service, Expect::Any).await })
    };
    // The put's insert waits on the rival's uncommitted row.
    let mut watcher = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let waiting = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                   AND wait_event_type = 'Lock' AND query LIKE 'INSERT INTO external_services%'";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (n,): (i64,) = sqlx::query_as(waiting)
            .fetch_one(&mut watcher)
            .await
            .unwrap();
        if n > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the put never waited on the insert"
        );
        tokio::task::yield_now().await;
    }
    rival.execute("COMMIT").await.unwrap();
    let put = put.await.unwrap().expect("the put becomes an update");
    assert!(!put.created);
    assert_eq!(put.value.meta.version, 2);
}

/// A store migrated before the table of references existed: its Meshes' references are
/// recorded by the migration, so the delete guard (which reads only the table) still
/// refuses to delete what an mTLS backend uses, with Kuma's message.
async fn the_migration_records_the_references_of_meshes_already_stored(backend: Backend) {
    use sqlx::Executor;
    let dir = tempfile::tempdir().unwrap();
    let postgres = match backend {
        Backend::Postgres => Some(common::TestDb::empty().await),
        Backend::Sqlite => None,
    };
    let (url, folder) = match &postgres {
        Some(db) => (db.url.clone(), "postgres"),
        None => (common::sqlite_url(dir.path(), "old.db"), "sqlite"),
    };
    let mut migrator = sqlx::migrate::Migrator::new(std::path::Path::new(&format!(
        "{}/migrations/{folder}",
        env!("CARGO_MANIFEST_DIR")
    )))
    .await
    .unwrap();
    migrator.migrations = migrator
        .migrations
        .iter()
        .filter(|m| m.version < 20261207000001)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    let spec = json!({"mtls": {"enabledBackend": "ca-1", "backends": [
        {"name": "ca-1", "type": "provided",
         "conf": {"cert": {"secret": "my-cert"}, "key": {"secret": "my-key"}}},
        {"name": "ca-2", "type": "builtin"}]}})
    .to_string();
    let now = "2026-12-07T00:00:00Z";
    let seed = format!(
        "INSERT INTO meshes (name, version, creation_time, modification_time, spec) \
         VALUES ('default', 1, '{now}', '{now}', '{spec}'); \
         INSERT INTO secrets (mesh, name, version, creation_time, modification_time, data) VALUES \
         ('default', 'my-cert', 1, '{now}', '{now}', 'x'), \
         ('default', 'default.ca-builtin-key-ca-2', 1, '{now}', '{now}', 'x'), \
         ('default', 'free', 1, '{now}', '{now}', 'x');"
    );
    match &postgres {
        Some(db) => {
            let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
            migrator.run(&pool).await.unwrap();
            pool.execute(sqlx::AssertSqlSafe(seed.replace("'x')", "'\\x78')")))
                .await
                .unwrap();
            pool.close().await;
        }
        None => {
            let options = <sqlx::sqlite::SqliteConnectOptions as std::str::FromStr>::from_str(&url)
                .unwrap()
                .create_if_missing(true);
            let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
            migrator.run(&pool).await.unwrap();
            pool.execute(sqlx::AssertSqlSafe(seed.replace("'x')", "X'78')")))
                .await
                .unwrap();
            pool.close().await;
        }
    }
    let store = kuma_secrets::store::AnyStore::migrate_and_open(
        &url,
        kuma_secrets::store::StoreOptions::allow_plaintext_secrets(),
    )
    .await
    .unwrap();
    for (secret, backend) in [("my-cert", "ca-1"), ("default.ca-builtin-key-ca-2", "ca-2")] {
        let key = SecretKey::parse(Some("default"), secret).unwrap();
        match store.delete_secret(&key, None).await {
            Err(StoreError::InUse { backend: b, .. }) => assert_eq!(b, backend, "{secret}"),
            other => panic!("{secret}: {other:?}"),
        }
    }
    let free = SecretKey::parse(Some("default"), "free").unwrap();
    store.delete_secret(&free, None).await.unwrap();
    store.close().await;
}
