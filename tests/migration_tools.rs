//! Moving stores with the built binary, no server: `export` then `import` reproducing a
//! store exactly, `import` of `kubectl` output, and `copy` of 10,000 secrets from SQLite to
//! Postgres and back, verified, including a re-run after the first copy was killed midway.

mod common;

use common::TestDb;
use common::http::set_secret_data;
use common::process::{CliRun, kill_when, kuma_with_env};
use kuma_secrets::domain::{
    Labels, MeshName, NewExternalService, NewMesh, NewSecret, Resource, ResourceName, SecretData,
    SecretKey,
};
use kuma_secrets::store::{
    AnyStore, ExternalServiceWalk, MeshWalk, SecretScope, SecretStore, SecretWalk, StoreOptions,
};
use std::collections::BTreeMap;

fn sqlite_url(dir: &tempfile::TempDir, file: &str) -> String {
    common::sqlite_url(dir.path(), file)
}

async fn open(url: &str) -> AnyStore {
    let options = StoreOptions {
        keyring: Some(common::test_keyring().into()),
        ..StoreOptions::allow_plaintext_secrets()
    };
    AnyStore::open(url, options).await.unwrap()
}

/// The test keyring as a file, for the binary.
fn keys_file() -> String {
    static FILE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("ks-test-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        common::test_keyring_file(&dir).display().to_string()
    })
    .clone()
}

/// `kuma-secrets ARGS` sealing and opening with the test keyring (both ends of a copy).
async fn kuma(args: &[&str], stdin: Option<&str>) -> CliRun {
    let keys = keys_file();
    let mut all = args.to_vec();
    if args.first() == Some(&"copy") {
        all.extend(["--from-encryption-keys", &keys]);
    }
    kuma_with_env(&all, stdin, &[("KUMA_SECRETS_ENCRYPTION_KEYS", &keys)]).await
}

/// Two meshes (one with a spec and labels), `per_mesh` secrets in each with labels and
/// binary data, and three global secrets.
async fn seed(store: &AnyStore, per_mesh: usize) {
    let mut spec = serde_json::Map::new();
    spec.insert(
        "metrics".into(),
        serde_json::json!({"enabledBackend": "prom"}),
    );
    let mut batch = vec![
        Resource::Mesh(NewMesh {
            name: MeshName::parse("default").unwrap(),
            spec: serde_json::Map::new(),
            labels: Labels::default(),
        }),
        Resource::Mesh(NewMesh {
            name: MeshName::parse("payments").unwrap(),
            spec,
            labels: Labels::from_pairs([("team", "payments")]).unwrap(),
        }),
    ];
    store.import_batch(batch.split_off(0)).await.unwrap();
    for mesh in ["default", "payments"] {
        for i in 0..per_mesh {
            batch.push(Resource::Secret(NewSecret {
                key: SecretKey::parse(Some(mesh), &format!("secret-{i:05}")).unwrap(),
                // Not valid UTF-8, and different per row.
                data: SecretData::new(vec![0xff, 0x00, (i % 251) as u8, (i / 251) as u8]).unwrap(),
                labels: Labels::from_pairs([("index", i.to_string())]).unwrap(),
            }));
            if batch.len() == 1000 {
                store.import_batch(batch.split_off(0)).await.unwrap();
            }
        }
    }
    for name in ["ca", "signing-key", "zone-token"] {
        batch.push(Resource::Secret(NewSecret {
            key: SecretKey::parse(None, name).unwrap(),
            data: SecretData::new(format!("{name} bytes").into_bytes()).unwrap(),
            labels: Labels::default(),
        }));
    }
    // An ExternalService of `payments` whose CA is one of its Secrets and whose client
    // key is inline (sealed where the store has a keyring).
    let service = serde_json::json!({
        "networking": {"address": "billing.example.com:443", "tls": {
            "enabled": true,
            "caCert": {"secret": "secret-00000"},
            "clientCert": {"inlineString": "client certificate"},
            "clientKey": {"inlineString": "client key"}}},
        "tags": {"kuma.io/service": "billing"}
    });
    batch.push(Resource::ExternalService(NewExternalService {
        mesh: MeshName::parse("payments").unwrap(),
        name: ResourceName::parse("billing").unwrap(),
        spec: service.as_object().unwrap().clone(),
        labels: Labels::from_pairs([("team", "payments")]).unwrap(),
    }));
    store.import_batch(batch).await.unwrap();
}

/// `value` as JSON text with every object's keys sorted.
fn sorted_json(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Object(map) => {
            let sorted: BTreeMap<&String, String> =
                map.iter().map(|(k, v)| (k, sorted_json(v))).collect();
            let fields: Vec<String> = sorted.iter().map(|(k, v)| format!("{k:?}:{v}")).collect();
            format!("{{{}}}", fields.join(","))
        }
        other => other.to_string(),
    }
}

/// Everything a store holds but versions and timestamps: (kind, mesh, name) to
/// (labels, data or spec).
async fn contents(store: &AnyStore) -> BTreeMap<(String, String, String), (Labels, String)> {
    let mut all = BTreeMap::new();
    let mut meshes = MeshWalk::new(1000).unwrap();
    while let Some(page) = meshes.next_page(store).await.unwrap() {
        for mesh in page.items {
            all.insert(
                ("Mesh".into(), String::new(), mesh.name.as_str().to_owned()),
                (mesh.labels, serde_json::to_string(&mesh.spec).unwrap()),
            );
        }
    }
    for scope in [SecretScope::AllMeshes, SecretScope::Global] {
        let mut walk = SecretWalk::new(scope, 1000).unwrap();
        while let Some(page) = walk.next_page(store).await.unwrap() {
            for secret in page.items {
                all.insert(
                    (
                        secret.key.secret_type().as_str().into(),
                        secret
                            .key
                            .mesh()
                            .map(|m| m.as_str().to_owned())
                            .unwrap_or_default(),
                        secret.key.name().as_str().to_owned(),
                    ),
                    (secret.labels, format!("{:?}", secret.data.expose())),
                );
            }
        }
    }
    let mut services = ExternalServiceWalk::new(1000).unwrap();
    while let Some(page) = services.next_page(store).await.unwrap() {
        for service in page.items {
            all.insert(
                (
                    "ExternalService".into(),
                    service.mesh.as_str().to_owned(),
                    service.name.as_str().to_owned(),
                ),
                // Key order is the backend's (Postgres `jsonb` sorts keys): compare sorted.
                (
                    service.labels,
                    sorted_json(&serde_json::Value::Object(service.spec)),
                ),
            );
        }
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_then_import_into_an_empty_store_reproduces_it() {
    let db = TestDb::migrated().await;
    let source = open(&db.url).await;
    seed(&source, 50).await;
    let expected = contents(&source).await;
    let dir = tempfile::tempdir().unwrap();

    for format in ["universal", "kubernetes"] {
        let file = dir.path().join(format!("{format}.yaml"));
        let file = file.to_str().unwrap();
        let run = kuma(
            &["export", "--store", &db.url, "--format", format, "-o", file],
            None,
        )
        .await
        .ok();
        assert!(
            run.stderr.contains(
                "exported 2 meshes, 100 secrets, 3 global secrets and 1 external services"
            ),
            "{run:?}"
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(file).unwrap().permissions(),
        );
        assert_eq!(
            mode & 0o777,
            0o600,
            "an export holds every secret: owner-only"
        );

        let target = sqlite_url(&dir, &format!("{format}.db"));
        let run = kuma(&["import", "--store", &target, "-f", file], None)
            .await
            .ok();
        assert!(
            run.stdout.contains(": 106 created, 0 updated, 0 unchanged"),
            "{run:?}"
        );
        let imported = open(&target).await;
        let mut expected = expected.clone();
        if format == "kubernetes" {
            // The Kubernetes form carries a Secret's mesh in its `kuma.io/mesh` label, so a
            // Secret comes back with that label, as Kuma on Kubernetes shows it. (Secrets
            // written through the API carry it already; these were seeded without.)
            for ((kind, mesh, _), (labels, _)) in expected.iter_mut() {
                if kind == "Secret" {
                    let mut map = labels.as_map().clone();
                    map.insert("kuma.io/mesh".into(), mesh.clone());
                    *labels = Labels::parse(map).unwrap();
                }
            }
        }
        assert_eq!(contents(&imported).await, expected, "{format}");

        // Idempotent: the second run changes nothing.
        let run = kuma(&["import", "--store", &target, "-f", file], None)
            .await
            .ok();
        assert!(
            run.stdout.contains(": 0 created, 0 updated, 106 unchanged"),
            "{run:?}"
        );
        imported.close().await;
    }

    // One mesh only, to stdout (not a terminal here).
    let run = kuma(&["export", "--store", &db.url, "-m", "payments"], None)
        .await
        .ok();
    let documents = kuma_secrets::manifest::read_stream(&run.stdout).unwrap();
    assert_eq!(documents.resources.len(), 52);
    kuma(&["export", "--store", &db.url, "-m", "nowhere"], None)
        .await
        .fails_with("no Mesh \"nowhere\"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_updates_what_differs_and_rejects_a_bad_file_whole() {
    let dir = tempfile::tempdir().unwrap();
    let target = sqlite_url(&dir, "target.db");
    let first = "type: Mesh\nname: default\n---\ntype: Secret\nmesh: default\nname: a\ndata: YQ==\n---\ntype: Secret\nmesh: default\nname: b\ndata: Yg==\n";
    kuma(&["import", "--store", &target, "-f", "-"], Some(first))
        .await
        .ok();
    let second = first.replace("name: b\ndata: Yg==", "name: b\ndata: Qg==");
    let run = kuma(&["import", "--store", &target, "-f", "-"], Some(&second))
        .await
        .ok();
    assert!(
        run.stdout.contains(": 0 created, 1 updated, 2 unchanged"),
        "{run:?}"
    );

    // A file with one bad document imports nothing.
    let bad = format!("{second}---\ntype: Secret\nmesh: default\nname: c\ndata: '!!'\n");
    let bad = bad.replace("data: YQ==", "data: eA==");
    kuma(&["import", "--store", &target, "-f", "-"], Some(&bad))
        .await
        .fails_with("resource[3]");
    let store = open(&target).await;
    let a = store
        .get_secret(&SecretKey::parse(Some("default"), "a").unwrap())
        .await
        .unwrap();
    assert_eq!(a.data.expose(), b"a", "unchanged");
    // Secrets before their mesh in the file still import: meshes go first.
    let reordered =
        "type: Secret\nmesh: later\nname: s\ndata: eA==\n---\ntype: Mesh\nname: later\n";
    kuma(&["import", "--store", &target, "-f", "-"], Some(reordered))
        .await
        .ok();
}

/// Import reads its sources twice (validate, then write) one document at a time: a
/// directory and stdin together, in batches smaller than the input, with documents
/// numbered across every source when one is bad.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_streams_several_sources_in_batches() {
    let dir = tempfile::tempdir().unwrap();
    let target = sqlite_url(&dir, "target.db");
    let files = dir.path().join("manifests");
    std::fs::create_dir(&files).unwrap();
    let secret = |name: &str| format!("type: Secret\nmesh: streamed\nname: {name}\ndata: eA==\n");
    std::fs::write(
        files.join("1.yaml"),
        format!("{}---\n{}", secret("a"), secret("b")),
    )
    .unwrap();
    std::fs::write(files.join("2.yml"), "# only a comment\n---\n").unwrap();
    std::fs::write(files.join("ignored.txt"), "not: read").unwrap();
    let stdin = format!(
        "{}---\n{}---\ntype: Mesh\nname: streamed\n",
        secret("c"),
        secret("d")
    );
    let run = kuma(
        &[
            "import",
            "--store",
            &target,
            "--batch-size",
            "2",
            "-f",
            files.to_str().unwrap(),
            "-f",
            "-",
        ],
        Some(&stdin),
    )
    .await
    .ok();
    assert!(
        run.stdout.contains(": 5 created, 0 updated, 0 unchanged"),
        "{run:?}"
    );

    let bad = format!(
        "{}---\ntype: Secret\nmesh: streamed\nname: e\ndata: '!!'\n",
        secret("c")
    );
    kuma(
        &[
            "import",
            "--store",
            &target,
            "-f",
            files.to_str().unwrap(),
            "-f",
            "-",
        ],
        Some(&bad),
    )
    .await
    .fails_with("resource[3]: failed to parse resource");
    let store = open(&target).await;
    assert!(
        store
            .get_secret(&SecretKey::parse(Some("streamed"), "e").unwrap())
            .await
            .is_err(),
        "nothing of a bad input is written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_output_imports_and_other_secret_types_are_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let target = sqlite_url(&dir, "target.db");
    let kubectl = "\
apiVersion: v1
kind: List
metadata:
  resourceVersion: \"\"
items:
- apiVersion: kuma.io/v1alpha1
  kind: Mesh
  metadata:
    name: default
  spec:
    mtls:
      enabledBackend: ca-1
      backends:
      - name: ca-1
        type: builtin
- apiVersion: v1
  kind: Secret
  type: system.kuma.io/secret
  metadata:
    name: tls-key
    namespace: kuma-system
    labels:
      kuma.io/mesh: default
    resourceVersion: \"123\"
    uid: 7f1e
  data:
    value: a2V5
- apiVersion: v1
  kind: Secret
  type: kubernetes.io/service-account-token
  metadata:
    name: default-token
  data:
    token: eA==
- apiVersion: v1
  kind: Secret
  type: Opaque
  metadata:
    name: app-config
  data:
    password: eA==
";
    let run = kuma(&["import", "--store", &target, "-f", "-"], Some(kubectl))
        .await
        .ok();
    assert!(
        run.stdout
            .contains("2 created, 0 updated, 0 unchanged, 2 skipped (not Kuma resources)"),
        "{run:?}"
    );
    let store = open(&target).await;
    let key = SecretKey::parse(Some("default"), "tls-key").unwrap();
    assert_eq!(store.get_secret(&key).await.unwrap().data.expose(), b"key");
    let mesh = store
        .get_mesh(&MeshName::parse("default").unwrap())
        .await
        .unwrap();
    assert_eq!(mesh.spec["mtls"]["enabledBackend"], "ca-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_moves_10000_secrets_sqlite_to_postgres_and_back_verified() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = sqlite_url(&dir, "embedded.db");
    let source = open(&sqlite).await;
    seed(&source, 5_000).await;
    let expected = contents(&source).await;
    assert_eq!(expected.len(), 2 + 10_000 + 3 + 1);
    source.close().await;

    // Into a database with no schema yet: copy migrates it.
    let db = TestDb::empty().await;
    let run = kuma(&["copy", "--from", &sqlite, "--to", &db.url], None)
        .await
        .ok();
    assert!(
        run.stdout.contains("copied 10006 resources") && run.stdout.contains("10006 created"),
        "{run:?}"
    );
    assert!(run.stdout.contains("verified 10006 resources"), "{run:?}");
    let postgres = open(&db.url).await;
    assert_eq!(contents(&postgres).await, expected);

    // And back into a fresh SQLite file.
    let back = sqlite_url(&dir, "back.db");
    let run = kuma(&["copy", "--from", &db.url, "--to", &back], None)
        .await
        .ok();
    assert!(run.stdout.contains("verified 10006 resources"), "{run:?}");
    assert_eq!(contents(&open(&back).await).await, expected);

    // Verification catches a row that differs.
    let key = SecretKey::parse(Some("payments"), "secret-04999").unwrap();
    set_secret_data(&postgres, &key, b"tampered".to_vec())
        .await
        .unwrap();
    let run = kuma(
        &["copy", "--from", &sqlite, "--to", &db.url, "--verify-only"],
        None,
    )
    .await
    .failed();
    assert!(
        run.stderr.contains("differs: type=\"Secret\"") && run.stderr.contains("secret-04999"),
        "{run:?}"
    );
    assert!(
        run.stderr.contains("1 of 10006 resources differ"),
        "{run:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_killed_midway_finishes_on_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = sqlite_url(&dir, "embedded.db");
    let source = open(&sqlite).await;
    seed(&source, 5_000).await;
    let expected = contents(&source).await;
    source.close().await;
    let db = TestDb::empty().await;

    // Small batches, killed after the first few have committed.
    let keys = keys_file();
    kill_when(
        &[
            "copy",
            "--from",
            &sqlite,
            "--to",
            &db.url,
            "--batch-size",
            "50",
            "--from-encryption-keys",
            &keys,
            "--encryption-keys",
            &keys,
        ],
        |line| {
            line.strip_prefix("copied ")
                .and_then(|rest| rest.split('/').next())
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|done| done >= 500)
        },
    )
    .await;

    let partial = open(&db.url).await;
    let copied = contents(&partial).await.len();
    assert!(
        copied > 0 && copied < expected.len(),
        "killed midway: {copied} of {} copied",
        expected.len()
    );

    let run = kuma(&["copy", "--from", &sqlite, "--to", &db.url], None)
        .await
        .ok();
    assert!(run.stdout.contains("verified 10006 resources"), "{run:?}");
    let unchanged: usize = run
        .stdout
        .split(" unchanged")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("a count of unchanged resources");
    assert!(
        unchanged >= copied,
        "the committed batches are not written again: {run:?}"
    );
    assert_eq!(contents(&partial).await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_refuses_to_print_secrets_on_a_terminal_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let store_url = sqlite_url(&dir, "store.db");
    let store = open(&store_url).await;
    seed(&store, 1).await;
    store.close().await;
    let binary = env!("CARGO_BIN_EXE_kuma-secrets");
    // `script` runs the command on a pseudo-terminal, as a user's shell would.
    let on_terminal = |extra: &str| {
        let command = format!(
            "{binary} export --store {store_url} --encryption-keys {} {extra}",
            keys_file()
        );
        std::process::Command::new("script")
            .args(["-qec", &command, "/dev/null"])
            .output()
            .expect("script (util-linux) runs a command on a terminal")
    };
    let refused = on_terminal("");
    let text = String::from_utf8_lossy(&refused.stdout);
    assert!(!refused.status.success(), "{text}");
    assert!(
        text.contains("refusing to write secret data to a terminal"),
        "{text}"
    );
    assert!(!text.contains("data:"), "{text}");
    let forced = on_terminal("--force");
    let text = String::from_utf8_lossy(&forced.stdout);
    assert!(forced.status.success(), "{text}");
    assert!(text.contains("type: GlobalSecret"), "{text}");
}

/// `copy --with-history` carries every kept version under its number, re-sealed in the
/// destination, verifies them, and is safe to run again; without it only current values go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_with_history_carries_every_kept_version() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = sqlite_url(&dir, "history.db");
    let source = open(&sqlite).await;
    seed(&source, 3).await;
    let key = SecretKey::parse(Some("default"), "secret-00001").unwrap();
    let global = SecretKey::parse(None, "signing-key").unwrap();
    for k in [&key, &global] {
        for round in 0..4 {
            set_secret_data(&source, k, format!("round-{round}"))
                .await
                .unwrap();
        }
    }
    let versions = |store: &AnyStore, k: &SecretKey| {
        let (store, k) = (store.clone(), k.clone());
        async move {
            let mut out = Vec::new();
            for info in store.secret_versions(&k).await.unwrap() {
                let v = store.get_secret_version(&k, info.version).await.unwrap();
                out.push((info.version, v.data.expose().to_vec(), v.labels));
            }
            out
        }
    };
    let expected = (
        versions(&source, &key).await,
        versions(&source, &global).await,
    );
    assert_eq!(expected.0.len(), 5);
    source.close().await;

    let db = TestDb::empty().await;
    let run = kuma(&["copy", "--from", &sqlite, "--to", &db.url], None)
        .await
        .ok();
    assert!(run.stdout.contains("verified"), "{run:?}");
    let postgres = open(&db.url).await;
    assert_eq!(
        versions(&postgres, &key).await.len(),
        1,
        "no history without the flag"
    );

    for _ in 0..2 {
        let run = kuma(
            &["copy", "--from", &sqlite, "--to", &db.url, "--with-history"],
            None,
        )
        .await
        .ok();
        assert!(
            run.stdout.contains("copied 8 kept versions of 2 secrets"),
            "{run:?}"
        );
        assert!(run.stdout.contains("verified"), "{run:?}");
        assert_eq!(versions(&postgres, &key).await, expected.0);
        assert_eq!(versions(&postgres, &global).await, expected.1);
    }

    // Verification catches a kept version that differs.
    let tamper = "UPDATE secret_versions SET labels = '{\"x\": \"y\"}' WHERE name = 'secret-00001' AND version = 2";
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&db.url)
        .await
        .unwrap();
    sqlx::query(tamper).execute(&mut conn).await.unwrap();
    let run = kuma(
        &[
            "copy",
            "--from",
            &sqlite,
            "--to",
            &db.url,
            "--verify-only",
            "--with-history",
        ],
        None,
    )
    .await
    .failed();
    assert!(
        run.stderr.contains("secret-00001") && run.stderr.contains("version 2"),
        "{run:?}"
    );
}
