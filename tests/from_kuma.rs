//! `import --from-kuma`: a Kuma control plane's `resources` table (reference §4.1, built
//! here at its newest version and seeded the way Kuma writes rows) into this store.

mod common;

use common::http::{get_as, set_secret_data};
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
        // ExternalServices: one whose TLS CA is a Secret of its Mesh, one with an inline
        // client key (sealed here) and a client certificate in a Secret Kuma never had
        // (the check after the import reports it).
        (
            "httpbin",
            "default",
            "ExternalService",
            r#"{"networking":{"address":"httpbin.org:443","tls":{"enabled":true,"caCert":{"secret":"tls"},"serverName":"httpbin.org"}},"tags":{"kuma.io/service":"httpbin","kuma.io/protocol":"http"}}"#
                .into(),
            r#"{"kuma.io/mesh":"default"}"#,
            None,
        ),
        (
            "payments",
            "demo",
            "ExternalService",
            serde_json::json!({
                "networking": {"address": "10.0.0.1:8443", "tls": {"enabled": true,
                    "clientCert": {"secret": "client-cert"},
                    "clientKey": {"inlineString": key.clone()}}},
                "tags": {"kuma.io/service": "payments"}
            })
            .to_string(),
            "{}",
            None,
        ),
        // A Mesh whose builtin CA Kuma never got to store: the check after the import
        // reports it.
        (
            "broken",
            "",
            "Mesh",
            r#"{"mtls":{"backends":[{"name":"ca-2","type":"builtin"}]}}"#.into(),
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
    // Kuma's times (UTC, no zone) for one row, to see them kept.
    conn.execute(
        "UPDATE resources SET creation_time = '2021-03-04 05:06:07.123456', \
         modification_time = '2022-01-02 03:04:05' WHERE name = 'tls'",
    )
    .await
    .unwrap();
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
        .fails_with("2 Kuma resources were skipped, 0 problems found");
    assert!(
        dry.stdout
            .contains("would import 3 meshes, 5 secrets and 2 external services"),
        "{dry:?}"
    );
    let store = AnyStore::open(
        &target,
        common::sealed(StoreOptions::allow_plaintext_secrets()),
    )
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
        .fails_with("2 Kuma resources were skipped, 3 problems found");
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
    assert!(run.stdout.contains("10 created"), "{run:?}");
    assert!(
        run.stderr.contains(
            r#"after the import: ExternalService "payments" in Mesh "demo": networking.tls.clientCert names Secret "client-cert", which is not there"#
        ),
        "{run:?}"
    );
    assert!(
        run.stderr.contains(
            r#"after the import: Mesh "broken": mTLS backend "ca-2" uses Secret "broken.ca-builtin-cert-ca-2", which is not there"#
        ),
        "{run:?}"
    );
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

    let store = AnyStore::open(
        &target,
        common::sealed(StoreOptions::allow_plaintext_secrets()),
    )
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
    assert_eq!(
        tls.meta.creation_time.to_rfc3339(),
        "2021-03-04T05:06:07.123456+00:00",
        "Kuma's creation time"
    );
    assert_eq!(
        tls.meta.modification_time.to_rfc3339(),
        "2022-01-02T03:04:05+00:00"
    );
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
    // The ExternalServices came, and guard the Secrets they name.
    let httpbin = store
        .get_external_service(
            &MeshName::parse("default").unwrap(),
            &kuma_secrets::domain::ResourceName::parse("httpbin").unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(httpbin.spec["networking"]["tls"]["caCert"]["secret"], "tls");
    assert!(matches!(
        store
            .delete_secret(&key(Some("default"), "tls"), None)
            .await,
        Err(kuma_secrets::store::StoreError::ReferencedBy { .. })
    ));
    store.close().await;

    // Again: nothing new.
    let again = import_from(&kuma_url, &target, keys, &["--quiet-orphans"])
        .await
        .fails_with("1 Kuma resources were skipped, 3 problems found");
    assert!(
        again
            .stdout
            .contains("0 created, 0 updated, 10 unchanged (nothing new)"),
        "{again:?}"
    );
    assert!(!again.stderr.contains("orphan"), "{again:?}");
}

/// A `resources` row as read back.
#[derive(sqlx::FromRow)]
struct StoredRow {
    #[sqlx(rename = "type")]
    kind: String,
    mesh: String,
    name: String,
    spec: Option<String>,
    labels: Option<String>,
    owner_name: Option<String>,
    owner_mesh: Option<String>,
    owner_type: Option<String>,
}

/// What a row says, comparably: spec and labels as JSON (`null` labels as `{}`), owner.
#[derive(Debug, PartialEq)]
struct RowValue {
    spec: serde_json::Value,
    labels: serde_json::Value,
    owner: Option<(String, String, String)>,
}

/// The rows of Kuma's table of the four types, by (type, mesh, name).
async fn kuma_rows(url: &str) -> std::collections::BTreeMap<(String, String, String), RowValue> {
    let mut conn = PgConnection::connect(url).await.unwrap();
    let rows: Vec<StoredRow> = sqlx::query_as(
        "SELECT type, mesh, name, spec, labels::text AS labels, owner_name, owner_mesh, owner_type \
         FROM resources WHERE type IN ('Mesh', 'Secret', 'GlobalSecret', 'ExternalService')",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    rows.into_iter()
        .map(|row| {
            let spec = row.spec.map_or(serde_json::Value::Null, |s| {
                serde_json::from_str(&s).unwrap()
            });
            let labels = match row.labels.map(|l| serde_json::from_str(&l).unwrap()) {
                None | Some(serde_json::Value::Null) => serde_json::json!({}),
                Some(labels) => labels,
            };
            let owner = row.owner_name.map(|n| {
                (
                    n,
                    row.owner_mesh.unwrap_or_default(),
                    row.owner_type.unwrap_or_default(),
                )
            });
            (
                (row.kind, row.mesh, row.name),
                RowValue {
                    spec,
                    labels,
                    owner,
                },
            )
        })
        .collect()
}

/// Kuma → this store (on Postgres) → Kuma: equal row for row (apart from times and versions, and the
/// rows the import skipped); back into the same database nothing changes; a secret changed
/// here is refused there unless `--overwrite`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kuma_to_this_store_and_back_round_trips() {
    let (_kuma_db, kuma_url, _) = kuma_database().await;
    let dir = tempfile::tempdir().unwrap();
    // This store on Postgres too (an empty database: the import migrates it).
    let ours = common::TestDb::empty().await;
    let target = ours.url.clone();
    let keys = common::test_keyring_file(dir.path());
    let keys = keys.to_str().unwrap();
    import_from(&kuma_url, &target, keys, &["--quiet-orphans"]).await;
    // The inline client key Kuma kept in clear is sealed here.
    let mut conn = PgConnection::connect(&target).await.unwrap();
    let (spec,): (String,) =
        sqlx::query_as("SELECT spec::text FROM external_services WHERE name = 'payments'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    conn.close().await.unwrap();
    assert!(
        !spec.contains("PRIVATE KEY") && spec.contains("sealed"),
        "{spec}"
    );

    let back = common::TestDb::empty().await;
    let mut conn = PgConnection::connect(&back.url).await.unwrap();
    conn.execute(KUMA_SCHEMA).await.unwrap();
    conn.close().await.unwrap();
    let export_to = async |url: &str, extra: &[&str]| {
        let mut args = vec![
            "export",
            "--store",
            &target,
            "--encryption-keys",
            keys,
            "--to-kuma",
            url,
        ];
        args.extend(extra);
        kuma(&args, None).await
    };
    let run = export_to(&back.url, &[]).await.ok();
    assert!(
        run.stdout.contains("10 created, 0 replaced, 0 unchanged"),
        "{run:?}"
    );
    let mut original = kuma_rows(&kuma_url).await;
    for skipped in [("Secret", "default", "empty"), ("Secret", "gone", "orphan")] {
        let (kind, mesh, name) = skipped;
        original.remove(&(kind.to_owned(), mesh.to_owned(), name.to_owned()));
    }
    assert_eq!(kuma_rows(&back.url).await, original);
    // Kuma's times went there and back.
    let mut conn = PgConnection::connect(&back.url).await.unwrap();
    let (created, modified): (String, String) = sqlx::query_as(
        "SELECT creation_time::text, modification_time::text FROM resources WHERE name = 'tls'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    assert_eq!(
        (created.as_str(), modified.as_str()),
        ("2021-03-04 05:06:07.123456", "2022-01-02 03:04:05")
    );

    // Into the database it came from: the same rows, nothing written.
    let before = fingerprint(&kuma_url).await;
    let run = export_to(&kuma_url, &[]).await.ok();
    assert!(
        run.stdout.contains("0 created, 0 replaced, 10 unchanged"),
        "{run:?}"
    );
    assert_eq!(fingerprint(&kuma_url).await, before);

    // A secret changed here: refused, all or nothing; then replaced with --overwrite.
    let store = AnyStore::open(
        &target,
        common::sealed(StoreOptions::allow_plaintext_secrets()),
    )
    .await
    .unwrap();
    let key = SecretKey::parse(Some("default"), "tls").unwrap();
    set_secret_data(&store, &key, b"rotated".to_vec())
        .await
        .unwrap();
    store.close().await;
    export_to(&kuma_url, &[])
        .await
        .fails_with("1 Kuma rows differ from this store's: nothing was written");
    assert_eq!(fingerprint(&kuma_url).await, before);
    let run = export_to(&kuma_url, &["--overwrite"]).await.ok();
    assert!(
        run.stdout.contains("0 created, 1 replaced, 9 unchanged"),
        "{run:?}"
    );
    let rows = kuma_rows(&kuma_url).await;
    let tls = &rows[&("Secret".to_owned(), "default".to_owned(), "tls".to_owned())];
    assert_eq!(tls.spec["data"], b64("rotated"));
}

/// Kuma's token signing key comes along: a token Kuma issued (RS256, `kid` 1) keeps working
/// after the import, and new tokens are signed with that key while it is the newest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_kuma_issued_keep_working_after_the_import() {
    let db = common::TestDb::empty().await;
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    conn.execute(KUMA_SCHEMA).await.unwrap();
    let rsa = include_str!("fixtures/kuma-user-token-signing-key.pem");
    sqlx::query(
        "INSERT INTO resources (name, mesh, type, version, spec, labels) VALUES \
         ('default', '', 'Mesh', 0, '{}', '{}'), \
         ('user-token-signing-key-1', '', 'GlobalSecret', 0, $1, '{}')",
    )
    .bind(format!(r#"{{"data":"{}"}}"#, b64(rsa)))
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let target = common::sqlite_url(dir.path(), "store.db");
    let keys = common::test_keyring_file(dir.path());
    import_from(&db.url, &target, keys.to_str().unwrap(), &[])
        .await
        .ok();

    let store = AnyStore::open(
        &target,
        common::sealed(StoreOptions::allow_plaintext_secrets()),
    )
    .await
    .unwrap();
    let server = common::server::TestServer::start_on(
        store,
        common::server::Guard::Sqlite(tempfile::tempdir().unwrap()),
        common::server::tokens_only(),
    )
    .await;
    // A token as Kuma issues it: RS256, kid = the key's serial, Kuma's claim names.
    let now = chrono::Utc::now().timestamp();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("1".into());
    let kuma_token = jsonwebtoken::encode(
        &header,
        &serde_json::json!({"Name": "jane", "Groups": ["mesh-system:admin"],
                            "exp": now + 3600, "iat": now, "nbf": now, "jti": "kuma-1"}),
        &jsonwebtoken::EncodingKey::from_rsa_pem(rsa.as_bytes()).unwrap(),
    )
    .unwrap();
    let client = reqwest::Client::new();
    let listed = get_as(server.at("/global-secrets"), &kuma_token).await;
    assert_eq!(
        listed.status(),
        reqwest::StatusCode::OK,
        "a token Kuma issued"
    );
    let anonymous = client
        .get(server.at("/global-secrets"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        anonymous.status(),
        reqwest::StatusCode::FORBIDDEN,
        "no token, no admin"
    );

    let issued = client
        .post(server.at("/tokens/user"))
        .bearer_auth(&kuma_token)
        .json(
            &serde_json::json!({"name": "joe", "groups": ["mesh-system:admin"], "validFor": "1h"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(issued.status(), reqwest::StatusCode::OK);
    let new_token = issued.text().await.unwrap();
    let new_header = jsonwebtoken::decode_header(new_token.trim()).unwrap();
    assert_eq!(new_header.alg, jsonwebtoken::Algorithm::RS256);
    assert_eq!(new_header.kid.as_deref(), Some("1"));
    let with_new = get_as(server.at("/global-secrets"), new_token.trim()).await;
    assert_eq!(
        with_new.status(),
        reqwest::StatusCode::OK,
        "a token signed here with Kuma's key"
    );
}
