//! `import --from-kuma`: a Kuma control plane's `resources` table (reference §4.1, built
//! here at its newest version and seeded the way Kuma writes rows) into this store.

mod common;

use common::process::kuma;
use kuma_secrets::domain::{MeshName, SecretKey};
use kuma_secrets::store::{AnyStore, SecretQuery, SecretScope, SecretStore, StoreOptions};
use sqlx::{Connection, Executor, PgConnection};

/// Kuma's `resources` table after its last migration (`1710856785_add_status`).
const KUMA_SCHEMA: &str = "
CREATE TABLE resources (
    name varchar(253) NOT NULL,
    mesh varchar(100) NOT NULL,
    type varchar(100) NOT NULL,
    version integer NOT NULL,
    spec text,
    creation_time timestamp NOT NULL DEFAULT now(),
    modification_time timestamp NOT NULL DEFAULT now(),
    owner_name varchar(100),
    owner_mesh varchar(100),
    owner_type varchar(100),
    labels jsonb DEFAULT '{}',
    status jsonb NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (name, mesh, type),
    CONSTRAINT owner_fk FOREIGN KEY (owner_name, owner_mesh, owner_type)
        REFERENCES resources (name, mesh, type) ON DELETE CASCADE
);
CREATE INDEX resources_owner_idx ON resources (owner_type, owner_mesh, owner_name);
";

/// A row as Kuma writes it: name, mesh, type, spec, labels, and its owner (name, type).
type KumaRow<'a> = (
    &'a str,
    &'a str,
    &'a str,
    String,
    &'a str,
    Option<(&'a str, &'a str)>,
);

fn b64(bytes: impl AsRef<[u8]>) -> String {
    common::http::b64(bytes)
}

/// A Kuma database with two Meshes (one with a builtin CA), secrets as Kuma stores them,
/// and what this store must skip.
async fn kuma_database() -> (common::TestDb, String, String) {
    let db = common::TestDb::empty().await;
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    conn.execute(KUMA_SCHEMA).await.unwrap();
    let (cert, key) = common::pki::ca_pair("kuma ca");
    let insert = "INSERT INTO resources (name, mesh, type, version, spec, labels, owner_name, owner_mesh, owner_type) \
                  VALUES ($1, $2, $3, $4, $5, CAST($6 AS jsonb), $7, $8, $9)";
    let rows: Vec<KumaRow> = vec![
        ("default", "", "Mesh", "{}".into(), "{}", None),
        (
            "demo",
            "",
            "Mesh",
            r#"{"mtls":{"enabledBackend":"ca-1","backends":[{"name":"ca-1","type":"builtin"}]}}"#
                .into(),
            "{}",
            None,
        ),
        (
            "demo.ca-builtin-cert-ca-1",
            "demo",
            "Secret",
            format!(r#"{{"data":"{}"}}"#, b64(&cert)),
            r#"{"kuma.io/mesh":"demo"}"#,
            Some(("demo", "Mesh")),
        ),
        (
            "demo.ca-builtin-key-ca-1",
            "demo",
            "Secret",
            format!(r#"{{"data":"{}"}}"#, b64(&key)),
            r#"{"kuma.io/mesh":"demo"}"#,
            Some(("demo", "Mesh")),
        ),
        (
            "tls",
            "default",
            "Secret",
            format!(r#"{{"data":"{}"}}"#, b64("hello")),
            r#"{"kuma.io/mesh":"default","team":"a"}"#,
            None,
        ),
        (
            "nolabels",
            "default",
            "Secret",
            format!(r#"{{"data":"{}"}}"#, b64("x")),
            "null",
            None,
        ),
        ("empty", "default", "Secret", "{}".into(), "{}", None),
        (
            "orphan",
            "gone",
            "Secret",
            format!(r#"{{"data":"{}"}}"#, b64("y")),
            "{}",
            None,
        ),
        (
            "token-key",
            "",
            "GlobalSecret",
            format!(r#"{{"data":"{}"}}"#, b64("global")),
            "{}",
            None,
        ),
        (
            "dp-1",
            "default",
            "Dataplane",
            r#"{"networking":{}}"#.into(),
            "{}",
            None,
        ),
    ];
    for (name, mesh, kind, spec, labels, owner) in rows {
        sqlx::query(insert)
            .bind(name)
            .bind(mesh)
            .bind(kind)
            .bind(0)
            .bind(spec)
            .bind(labels)
            .bind(owner.map(|(n, _)| n))
            .bind(owner.map(|_| ""))
            .bind(owner.map(|(_, t)| t))
            .execute(&mut conn)
            .await
            .unwrap();
    }
    conn.close().await.unwrap();
    let url = db.url.clone();
    (db, url, cert)
}

/// `kuma-secrets import --from-kuma KUMA --store TARGET --encryption-keys KEYS EXTRA…`.
async fn import_from(
    kuma_url: &str,
    target: &str,
    keys: &str,
    extra: &[&str],
) -> common::process::CliRun {
    let mut args = vec![
        "import",
        "--from-kuma",
        kuma_url,
        "--store",
        target,
        "--encryption-keys",
        keys,
    ];
    args.extend(extra);
    kuma(&args, None).await
}

/// Everything in Kuma's table, to check it was not written to.
async fn fingerprint(url: &str) -> String {
    let mut conn = PgConnection::connect(url).await.unwrap();
    let (print,): (String,) = sqlx::query_as(
        "SELECT md5(string_agg(name || mesh || type || version || coalesce(spec, '') \
         || coalesce(labels::text, ''), ',' ORDER BY type, mesh, name)) FROM resources",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    print
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kuma_database_imports_with_its_cas_and_reports_what_it_skips() {
    let (_kuma_db, kuma_url, cert) = kuma_database().await;
    let before = fingerprint(&kuma_url).await;
    let dir = tempfile::tempdir().unwrap();
    let target = common::sqlite_url(dir.path(), "store.db");
    let keys = common::test_keyring_file(dir.path());
    let keys = keys.to_str().unwrap();

    // A dry run writes nothing.
    let dry = import_from(&kuma_url, &target, keys, &["--dry-run"])
        .await
        .fails_with("2 Kuma resources were skipped");
    assert!(
        dry.stdout.contains("would import 2 meshes and 5 secrets"),
        "{dry:?}"
    );
    let store = AnyStore::open(&target, common::sealed(StoreOptions::default()))
        .await
        .unwrap();
    let all = store
        .list_secrets(&SecretQuery::new(SecretScope::AllMeshes))
        .await
        .unwrap();
    assert_eq!(all.total, 0, "a dry run wrote secrets");
    store.close().await;

    let run = import_from(&kuma_url, &target, keys, &[])
        .await
        .fails_with("2 Kuma resources were skipped");
    assert!(
        run.stderr
            .contains(r#"skipped Secret "empty" in Mesh "default""#),
        "{run:?}"
    );
    assert!(
        run.stderr
            .contains(r#"skipped Secret "orphan" in Mesh "gone": its Mesh does not exist"#),
        "{run:?}"
    );
    assert!(run.stdout.contains("7 created"), "{run:?}");
    assert!(
        run.stdout
            .contains("other resource types left alone: 1 Dataplane"),
        "{run:?}"
    );
    assert_eq!(
        fingerprint(&kuma_url).await,
        before,
        "Kuma's database was written to"
    );

    let store = AnyStore::open(&target, common::sealed(StoreOptions::default()))
        .await
        .unwrap();
    let key = |mesh: Option<&str>, name: &str| SecretKey::parse(mesh, name).unwrap();
    let tls = store
        .get_secret(&key(Some("default"), "tls"))
        .await
        .unwrap();
    assert_eq!(tls.data.expose(), b"hello");
    assert_eq!(tls.labels.get("team"), Some("a"));
    assert_eq!(tls.labels.get("kuma.io/mesh"), Some("default"));
    assert_eq!(tls.meta.version, 1);
    assert!(
        store
            .get_secret(&key(Some("default"), "nolabels"))
            .await
            .is_ok()
    );
    assert!(store.get_secret(&key(None, "token-key")).await.is_ok());
    // The Mesh's CA is Kuma's own, and no other was made.
    let ca = store
        .get_secret(&key(Some("demo"), "demo.ca-builtin-cert-ca-1"))
        .await
        .unwrap();
    assert_eq!(ca.data.expose(), cert.as_bytes());
    let demo = store
        .list_secrets(&SecretQuery::new(SecretScope::Mesh(
            MeshName::parse("demo").unwrap(),
        )))
        .await
        .unwrap();
    assert_eq!(demo.total, 2, "a CA was generated for an imported Mesh");
    store.close().await;

    // Again: nothing new.
    let again = import_from(&kuma_url, &target, keys, &["--quiet-orphans"])
        .await
        .fails_with("1 Kuma resources were skipped");
    assert!(
        again
            .stdout
            .contains("0 created, 0 updated, 7 unchanged (nothing new)"),
        "{again:?}"
    );
    assert!(!again.stderr.contains("orphan"), "{again:?}");
}
