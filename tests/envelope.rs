//! Envelope encryption with the root key in an HSM (`--encryption-keys pkcs11:…`, against a
//! real SoftHSM2 token) and, built with `--features awskms`, in AWS KMS (`awskms:…`, against
//! moto's KMS in server mode), on both backends: values seal and open through each
//! source's key, a KEK rotation re-wraps data keys and touches no secret row, a store moves
//! from a keyring file to the HSM, to KMS and back with every value read again, a tampered
//! or foreign data key is refused, no key material, PIN or AWS secret is on disk (or in the
//! server's debug log) in clear, and a key source that stops answering stops no running
//! server while a starting one waits for it.
//!
//! SoftHSM2 reads its configuration from `SOFTHSM2_CONF` once per process, so this test
//! binary has its own `main` (`harness = false`): it makes a token directory of its own,
//! initializes one token, then runs itself again with `SOFTHSM2_CONF` pointing there, and
//! that run takes each case in turn, on Postgres and on SQLite. `cargo test --test envelope
//! NAME` runs the cases whose name contains NAME.

#[macro_use]
mod common;

use base64::Engine;
use kuma_secrets::domain::{Labels, MeshName, MeshSpec, NewMesh, NewSecret, SecretData, SecretKey};
use kuma_secrets::envelope::pkcs11::{Pkcs11Kek, Pkcs11Uri};
use kuma_secrets::envelope::{self, EnvelopeError, KekError, KeyEncryptionKey};
use kuma_secrets::sealing::Keyring;
use kuma_secrets::store::{AnyStore, Expect, SecretStore, StoreOptions};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

/// The token every case uses, and its PIN.
const TOKEN: &str = "kuma-secrets-test";
const PIN: &str = "4711-test-pin";

/// The SoftHSM2 module, where Debian's `libsofthsm2` puts it.
const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// The directory holding the token and the PIN file (kept for the run).
static HSM_DIR: OnceLock<PathBuf> = OnceLock::new();

#[derive(Clone, Copy, Debug)]
enum Backend {
    Postgres,
    Sqlite,
}

/// Where a case's key-encryption keys are.
#[derive(Clone, Copy, Debug)]
enum Source {
    /// A key in the run's SoftHSM2 token.
    Hsm,
    /// A key in the run's AWS KMS (moto).
    #[cfg(feature = "awskms")]
    Kms,
}

/// The key sources this build has.
const SOURCES: &[Source] = &[
    Source::Hsm,
    #[cfg(feature = "awskms")]
    Source::Kms,
];

/// A fresh store of `backend` and what keeps it alive.
struct Fresh {
    url: String,
    _db: Option<common::TestDb>,
    _dir: tempfile::TempDir,
}

impl Fresh {
    /// A fresh store with the Mesh `default`.
    async fn new(backend: Backend) -> Self {
        let fresh = Self::empty(backend).await;
        let store = fresh.bare().await;
        store
            .put_mesh(
                NewMesh {
                    name: MeshName::parse("default").unwrap(),
                    spec: MeshSpec::default(),
                    labels: Labels::default(),
                },
                Expect::Absent,
            )
            .await
            .unwrap();
        store.close().await;
        fresh
    }

    async fn empty(backend: Backend) -> Self {
        let dir = tempfile::tempdir().unwrap();
        match backend {
            Backend::Postgres => {
                let db = common::TestDb::migrated().await;
                Self {
                    url: db.url.clone(),
                    _db: Some(db),
                    _dir: dir,
                }
            }
            Backend::Sqlite => Self {
                url: common::sqlite_url(dir.path(), "store.db"),
                _db: None,
                _dir: dir,
            },
        }
    }

    /// The store, opened without a keyring (to read and write its data keys).
    async fn bare(&self) -> AnyStore {
        AnyStore::open(&self.url, StoreOptions::for_data_keys())
            .await
            .unwrap()
    }

    /// The keyring of the store's data keys unwrapped by `kek` (its first made when
    /// `make_first`), read through a store opened for its data keys only.
    async fn hsm_keyring(&self, kek: &Arc<dyn KeyEncryptionKey>, make_first: bool) -> Keyring {
        let bare = self.bare().await;
        let keyring = envelope::open_keyring(&bare, kek.clone(), make_first).await;
        bare.close().await;
        keyring.unwrap().expect("the store has data keys")
    }

    /// The store's data keys unwrapped by `kek`, written to a new keyring file in `dir`.
    async fn export_to(&self, kek: Arc<dyn KeyEncryptionKey>, dir: &Path) -> PathBuf {
        let bare = self.bare().await;
        let exported = envelope::export_keyring(&bare, kek).await;
        bare.close().await;
        let path = dir.join("keys.yaml");
        exported
            .unwrap()
            .expect("the store has data keys")
            .save_new(&path)
            .unwrap();
        path
    }

    /// The store, sealing with `keyring`.
    async fn sealed(&self, keyring: Keyring) -> AnyStore {
        AnyStore::open(&self.url, StoreOptions::sealed_with(Arc::new(keyring)))
            .await
            .unwrap()
    }
}

/// The URI of the KEK `object` in `token`, the PIN in the run's file, as typed on a command
/// line.
fn uri_text(token: &str, object: &str) -> String {
    let dir = HSM_DIR.get().expect("the token is set up");
    format!(
        "pkcs11:token={token};object={object}?module-path={MODULE}&pin-source=file:{}",
        dir.join("pin").display()
    )
}

/// The KEK `label` in the test token.
fn uri(label: &str) -> Pkcs11Uri {
    uri_text(TOKEN, label).parse().unwrap()
}

/// A label no other case uses, `prefix-…`.
fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// Makes the KEK `object` in `token` with `kuma-secrets generate kek`; its URI.
async fn generate_kek(token: &str, object: &str) -> String {
    let uri = uri_text(token, object);
    common::process::kuma(&["generate", "kek", &uri], None)
        .await
        .ok();
    uri
}

/// Runs `softhsm2-util ARGS` on the run's token directory; panics unless it succeeds.
fn softhsm(conf: &Path, args: &[&str]) {
    let run = std::process::Command::new("softhsm2-util")
        .args(args)
        .env("SOFTHSM2_CONF", conf)
        .output()
        .expect("softhsm2-util runs");
    assert!(
        run.status.success(),
        "softhsm2-util {args:?} failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
}

/// Initializes a token labelled `label` (user PIN [`PIN`]) in the token directory of `conf`.
fn init_token(conf: &Path, label: &str) {
    softhsm(
        conf,
        &[
            "--init-token",
            "--free",
            "--label",
            label,
            "--pin",
            PIN,
            "--so-pin",
            "so-4711",
        ],
    );
}

/// The run's SoftHSM2 configuration.
fn softhsm_conf() -> PathBuf {
    HSM_DIR
        .get()
        .expect("the token is set up")
        .join("softhsm2.conf")
}

/// A new KEK in `source`, with a name of its own.
async fn new_kek(source: Source) -> Arc<dyn KeyEncryptionKey> {
    match source {
        Source::Hsm => {
            let uri = uri(&unique("kek"));
            let kek = tokio::task::spawn_blocking(move || Pkcs11Kek::generate(&uri))
                .await
                .unwrap()
                .unwrap();
            Arc::new(kek)
        }
        #[cfg(feature = "awskms")]
        Source::Kms => kms::new_kek().await,
    }
}

fn key(name: &str) -> SecretKey {
    SecretKey::parse(Some("default"), name).unwrap()
}

fn value(n: usize) -> Vec<u8> {
    format!("value of secret {n}: {}", "x".repeat(200)).into_bytes()
}

async fn write(store: &AnyStore, n: usize) {
    store
        .put_secret(
            NewSecret {
                key: key(&format!("s-{n}")),
                data: SecretData::new(value(n)).unwrap(),
                labels: Labels::default(),
            },
            Expect::Any,
        )
        .await
        .unwrap();
}

/// Every one of `count` secrets reads back its own value through `store`.
async fn every_value_reads_back(store: &AnyStore, count: usize) {
    for n in 0..count {
        let secret = store.get_secret(&key(&format!("s-{n}"))).await.unwrap();
        assert_eq!(secret.data.expose(), value(n).as_slice(), "secret s-{n}");
    }
}

/// A store sealed through a KEK in the HSM or KMS: its values open again after a restart
/// (a new keyring unwrapped from the database), and the data key is stored only wrapped.
async fn values_seal_and_open_through_the_key_source(backend: Backend, source: Source) {
    let fresh = Fresh::new(backend).await;
    let kek = new_kek(source).await;
    let bare = fresh.bare().await;
    assert!(
        envelope::open_keyring(&bare, kek.clone(), false)
            .await
            .unwrap()
            .is_none(),
        "a read-only open makes no data key"
    );
    let keyring = envelope::open_keyring(&bare, kek.clone(), true)
        .await
        .unwrap()
        .unwrap();
    let dek = keyring.active_id().to_owned();
    let stored = bare.data_keys().await.unwrap();
    bare.close().await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].id, dek);
    assert_eq!(stored[0].kek, kek.name());
    assert!(dek.starts_with("dek-"), "{dek}");

    let store = fresh.sealed(keyring).await;
    for n in 0..20 {
        write(&store, n).await;
    }
    store.close().await;

    // A restart: the keyring comes from the database and the key source again.
    let bare = fresh.bare().await;
    let again = envelope::open_keyring(&bare, kek.clone(), true)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        bare.data_keys().await.unwrap().len(),
        1,
        "no second data key"
    );
    bare.close().await;
    let store = fresh.sealed(again).await;
    every_value_reads_back(&store, 20).await;
    let usage = store.rows_per_key().await.unwrap();
    assert!(
        usage
            .iter()
            .all(|u| u.key_id.as_deref() == Some(dek.as_str())),
        "every value names the data key: {usage:?}"
    );
    store.close().await;
}

/// Re-wrapping the data keys with another KEK changes the `data_keys` rows only: every
/// secret row (current and kept versions) is byte for byte what it was, the store opens
/// with the new KEK, and the old one is refused by name.
async fn a_kek_rotation_rewrites_no_secret_row(backend: Backend, source: Source) {
    const SECRETS: usize = 2_000;
    let fresh = Fresh::new(backend).await;
    let (old, new) = (new_kek(source).await, new_kek(source).await);
    let bare = fresh.bare().await;
    let keyring = envelope::open_keyring(&bare, old.clone(), true)
        .await
        .unwrap()
        .unwrap();
    envelope::new_data_key(&bare, old.clone(), std::time::Duration::ZERO)
        .await
        .unwrap();
    bare.close().await;
    let store = fresh.sealed(keyring).await;
    for n in 0..SECRETS {
        write(&store, n).await;
    }
    write(&store, 0).await; // a kept version too
    store.close().await;

    let before = every_row(&fresh.url).await;
    let bare = fresh.bare().await;
    let started = std::time::Instant::now();
    let rewrapped = envelope::rewrap(&bare, old.clone(), new.clone())
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(rewrapped, 2, "both data keys re-wrapped");
    assert!(
        bare.data_keys()
            .await
            .unwrap()
            .iter()
            .all(|k| k.kek == new.name()),
        "every data key is wrapped by the new KEK"
    );
    let refused = envelope::open_keyring(&bare, old.clone(), false)
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, EnvelopeError::OtherKek { wrapped_by, .. } if wrapped_by == new.name()),
        "{refused}"
    );
    assert!(
        refused.to_string().contains("rotate-keys --new-kek"),
        "{refused}"
    );
    let keyring = envelope::open_keyring(&bare, new.clone(), false)
        .await
        .unwrap()
        .unwrap();
    bare.close().await;
    assert_eq!(every_row(&fresh.url).await, before, "no secret row changed");
    eprintln!("    ({backend:?}: re-wrapped 2 data keys over {SECRETS} secrets in {took:?})");

    let store = fresh.sealed(keyring).await;
    every_value_reads_back(&store, SECRETS).await;
    store.close().await;
}

/// Every secret row and kept version as stored, with the row's identity of a write where
/// the backend has one (Postgres' `xmin` and `ctid`: a row rewritten with the same bytes
/// still gets new ones).
async fn every_row(url: &str) -> Vec<String> {
    use sqlx::Row;
    if url.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        let rows = sqlx::query(
            "SELECT format('%s %s %s %s %s %s', xmin, ctid, mesh, name, version, encode(data, 'hex')) \
             FROM secrets UNION ALL \
             SELECT format('%s %s %s %s %s %s', xmin, ctid, mesh, name, version, encode(data, 'hex')) \
             FROM secret_versions ORDER BY 1",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        pool.close().await;
        rows.iter().map(|r| r.get::<String, _>(0)).collect()
    } else {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        let rows = sqlx::query(
            "SELECT rowid || ' ' || mesh || ' ' || name || ' ' || version || ' ' || hex(data) \
               || ' ' || modification_time FROM secrets UNION ALL \
             SELECT rowid || ' ' || mesh || ' ' || name || ' ' || version || ' ' || hex(data) \
               || ' ' || modification_time FROM secret_versions ORDER BY 1",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        pool.close().await;
        rows.iter().map(|r| r.get::<String, _>(0)).collect()
    }
}

/// A store sealed with a keyring file moves to the HSM or KMS (the file's keys become data
/// keys under the same ids, nothing re-sealed), and back to a new keyring file, each value
/// read again at every step.
async fn a_keyring_file_moves_to_the_key_source_and_back(backend: Backend, source: Source) {
    const SECRETS: usize = 50;
    let fresh = Fresh::new(backend).await;
    let file_keyring = Keyring::single("key-1", Keyring::random_key())
        .with_key("key-2", Keyring::random_key())
        .with_active("key-2");
    let store = fresh.sealed(file_keyring.clone()).await;
    for n in 0..SECRETS {
        write(&store, n).await;
    }
    store.close().await;
    let before = every_row(&fresh.url).await;

    let kek = new_kek(source).await;
    let bare = fresh.bare().await;
    assert_eq!(
        envelope::import_keyring(&bare, &file_keyring, kek.clone())
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        envelope::import_keyring(&bare, &file_keyring, kek.clone())
            .await
            .unwrap(),
        0,
        "a second import adds nothing"
    );
    let from_hsm = envelope::open_keyring(&bare, kek.clone(), false)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        from_hsm.active_id(),
        "key-2",
        "the file's active key stays active"
    );
    bare.close().await;
    assert_eq!(every_row(&fresh.url).await, before, "nothing re-sealed");
    let store = fresh.sealed(from_hsm).await;
    every_value_reads_back(&store, SECRETS).await;
    write(&store, SECRETS).await;
    store.close().await;

    // And back to a file.
    let dir = tempfile::tempdir().unwrap();
    let path = fresh.export_to(kek, dir.path()).await;
    let store = fresh.sealed(Keyring::load(&path).unwrap()).await;
    every_value_reads_back(&store, SECRETS + 1).await;
    store.close().await;
}

/// A wrapped data key moved to another id, or one wrapped by a KEK the store was not given,
/// is refused by name; nothing opens with a key it cannot unwrap.
async fn a_tampered_or_foreign_data_key_is_refused(backend: Backend, source: Source) {
    let fresh = Fresh::new(backend).await;
    let kek = new_kek(source).await;
    let bare = fresh.bare().await;
    envelope::new_data_key(&bare, kek.clone(), std::time::Duration::ZERO)
        .await
        .unwrap();
    envelope::new_data_key(&bare, kek.clone(), std::time::Duration::ZERO)
        .await
        .unwrap();
    let keys = bare.data_keys().await.unwrap();
    bare.close().await;
    // Someone with write access swaps the two wrapped keys.
    swap_wrapped(&fresh.url, &keys[0].id, &keys[1].id).await;
    let bare = fresh.bare().await;
    let err = envelope::open_keyring(&bare, kek.clone(), false)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, EnvelopeError::Kek(KekError::Refused { id, .. }) if *id == keys[0].id),
        "{err}"
    );
    assert!(err.to_string().contains("does not unwrap"), "{err}");
    bare.close().await;

    // A key wrapped by another KEK, added behind the store's back.
    let fresh = Fresh::new(backend).await;
    let (ours, theirs) = (new_kek(source).await, new_kek(source).await);
    let bare = fresh.bare().await;
    envelope::new_data_key(&bare, ours.clone(), std::time::Duration::ZERO)
        .await
        .unwrap();
    envelope::new_data_key(&bare, theirs.clone(), std::time::Duration::ZERO)
        .await
        .unwrap();
    let err = envelope::open_keyring(&bare, ours, false)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, EnvelopeError::OtherKek { wrapped_by, .. } if wrapped_by == theirs.name()),
        "{err}"
    );
    bare.close().await;
}

async fn swap_wrapped(url: &str, a: &str, b: &str) {
    let sql = format!(
        "UPDATE data_keys SET wrapped = (SELECT wrapped FROM data_keys WHERE id = '{b}') WHERE id = '{a}'"
    );
    if url.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    } else {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    }
}

/// Neither the data key (raw, base64 or hex), the PIN nor the AWS secret key is in the
/// database's files or dump; the KEK's stored name has no PIN in it.
async fn no_key_material_or_pin_in_the_database(backend: Backend, source: Source) {
    let fresh = Fresh::new(backend).await;
    let kek = new_kek(source).await;
    assert!(
        !kek.name().contains(PIN) && !kek.name().contains("pin"),
        "{}",
        kek.name()
    );
    let keyring = fresh.hsm_keyring(&kek, true).await;
    let store = fresh.sealed(keyring).await;
    for n in 0..5 {
        write(&store, n).await;
    }
    store.close().await;
    // The data key's bytes, as a keyring file would hold them.
    let dir = tempfile::tempdir().unwrap();
    let (encoded, raw) = data_keys_in(&fresh.export_to(kek, dir.path()).await)
        .pop()
        .expect("the data key in the file");

    let stored: Vec<u8> = match backend {
        Backend::Postgres => {
            let dump = std::process::Command::new("pg_dump")
                .arg(&fresh.url)
                .output()
                .expect("pg_dump runs");
            assert!(
                dump.status.success(),
                "{}",
                String::from_utf8_lossy(&dump.stderr)
            );
            dump.stdout
        }
        Backend::Sqlite => {
            let path = fresh.url.trim_start_matches("sqlite://");
            let mut bytes = Vec::new();
            for file in [path.to_owned(), format!("{path}-wal")] {
                bytes.extend(std::fs::read(&file).unwrap_or_default());
            }
            bytes
        }
    };
    let holds = |needle: &[u8]| stored.windows(needle.len()).any(|w| w == needle);
    assert!(!holds(&raw), "the raw data key is in the database");
    assert!(
        !holds(encoded.as_bytes()),
        "the data key's base64 is in the database"
    );
    assert!(
        !holds(hex(&raw).as_bytes()),
        "the data key's hex is in the database"
    );
    assert!(!holds(PIN.as_bytes()), "the PIN is in the database");
    #[cfg(feature = "awskms")]
    assert!(
        !holds(kms::SECRET_KEY.as_bytes()),
        "the AWS secret key is in the database"
    );
    assert!(
        holds(b"dek-"),
        "the search finds what is there: the data key's id"
    );
}

/// Every data key in the keyring file `path`: its base64, as the file holds it, and its
/// bytes.
fn data_keys_in(path: &Path) -> Vec<(String, Vec<u8>)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().split_once(": "))
        .filter(|(id, _)| id.starts_with("dek-"))
        .map(|(_, encoded)| {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .unwrap();
            (encoded.to_owned(), raw)
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The command line end to end on SQLite: `generate kek`, `serve` sealing through the HSM
/// (a secret written, the server restarted, the secret read), `rotate-keys --status`
/// listing the data key and what wraps it, a new data key on demand, and neither data key
/// nor the PIN in the server's debug log or the database's files.
async fn the_command_line_serves_through_the_hsm(_backend: Backend, _source: Source) {
    let dir = tempfile::tempdir().unwrap();
    let store_url = common::sqlite_url(dir.path(), "cli.db");
    let label = unique("kek");
    let uri = generate_kek(TOKEN, &label).await;
    common::process::kuma(&["generate", "kek", &uri], None)
        .await
        .fails_with("exists in the token already");
    let serve_args = ["--store", &store_url, "--encryption-keys", &uri];
    // The first server logs at debug level: searched below for the data key and the PIN.
    let debug_log = dir.path().join("serve-debug.log");
    {
        let (_serve, addr) = serve_logging_to(&store_url, &uri, &debug_log, &[]).await;
        common::http::put_secret_at(&addr, "default", "hsm", b"hsm-sealed").await;
    }
    let (_serve, addr, _log) = common::process::spawn_serve(&serve_args, dir.path());
    let got = common::http::fetch_json(format!("{addr}/meshes/default/secrets/hsm")).await;
    assert_eq!(got["data"], common::http::b64(b"hsm-sealed"), "{got}");
    assert!(
        !dir.path().join("cli.db.keys").exists(),
        "no keyring file is made beside the database"
    );
    let status = common::process::kuma(
        &[
            "rotate-keys",
            "--status",
            "--store",
            &store_url,
            "--encryption-keys",
            &uri,
        ],
        None,
    )
    .await
    .ok();
    assert!(status.stdout.contains("DATA KEY"), "{}", status.stdout);
    assert!(
        status
            .stdout
            .contains(&format!("pkcs11:token={TOKEN};object={label}")),
        "{}",
        status.stdout
    );
    assert!(!status.stdout.contains("pin"), "{}", status.stdout);

    // A data key on demand, sealing at once (`now`: the one server running writes
    // nothing meanwhile): every value is re-sealed onto it, and --status marks it active.
    let store = [
        "--store",
        store_url.as_str(),
        "--encryption-keys",
        uri.as_str(),
    ];
    let bad = common::process::kuma(
        &[
            &["rotate-keys", "--new-data-key", "--seals-after", "soon"],
            &store[..],
        ]
        .concat(),
        None,
    )
    .await;
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(bad.stderr.contains("or now"), "{bad:?}");
    let rotated = common::process::kuma(
        &[
            &["rotate-keys", "--new-data-key", "--seals-after", "now"],
            &store[..],
        ]
        .concat(),
        None,
    )
    .await
    .ok();
    assert!(rotated.stdout.contains("re-sealed "), "{rotated:?}");
    let status = common::process::kuma(&[&["rotate-keys", "--status"], &store[..]].concat(), None)
        .await
        .ok();
    // DATA KEY, WRAPPED BY, CREATED, SEALS FROM, VALUES, STATE
    let rows: Vec<Vec<&str>> = status
        .stdout
        .lines()
        .filter(|l| l.starts_with("dek-") && l.contains(" pkcs11:"))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 2, "{}", status.stdout);
    assert_eq!(
        rows[0][4], "0",
        "nothing is left on the old key: {}",
        status.stdout
    );
    assert_ne!(rows[1][4], "0", "{}", status.stdout);
    assert_eq!(rows[1].get(5), Some(&"active"), "{}", status.stdout);
    let (_serve, addr, _log) = common::process::spawn_serve(&serve_args, dir.path());
    let got = common::http::fetch_json(format!("{addr}/meshes/default/secrets/hsm")).await;
    assert_eq!(got["data"], common::http::b64(b"hsm-sealed"), "{got}");

    // Neither data key nor the PIN is in the debug log or the database's files.
    let exported = dir.path().join("exported.yaml");
    let to_file = format!("file:{}", exported.display());
    common::process::kuma(
        &[&["rotate-keys", "--new-kek", &to_file], &store[..]].concat(),
        None,
    )
    .await
    .ok();
    let db = dir.path().join("cli.db");
    let mut on_disk = Vec::new();
    for file in [db.clone(), db.with_extension("db-wal"), debug_log.clone()] {
        on_disk.extend(std::fs::read(&file).unwrap_or_default());
    }
    let holds = |needle: &[u8]| on_disk.windows(needle.len()).any(|w| w == needle);
    let mut keys = 0;
    for (encoded, raw) in data_keys_in(&exported) {
        assert!(!holds(&raw), "a raw data key is on disk");
        assert!(!holds(encoded.as_bytes()), "a data key's base64 is on disk");
        assert!(!holds(hex(&raw).as_bytes()), "a data key's hex is on disk");
        keys += 1;
    }
    assert_eq!(keys, 2, "both data keys were searched for");
    assert!(!holds(PIN.as_bytes()), "the PIN is on disk");
    let logged = std::fs::read_to_string(&debug_log).unwrap();
    assert!(
        logged.contains("DEBUG") && holds(b"dek-"),
        "the search finds what is there: debug lines, the data keys' ids"
    );
}

type Case = fn(Backend, Source) -> Pin<Box<dyn Future<Output = ()>>>;

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        vec![$((stringify!($name), (|backend, source| Box::pin($name(backend, source))) as Case)),*]
    };
}

fn main() {
    // SoftHSM2 reads SOFTHSM2_CONF when the module initializes, and this crate forbids the
    // `unsafe` of setting the environment: so the run sets up the token, then runs itself
    // again as a child with SOFTHSM2_CONF pointing at it (and, with AWS KMS, the test's AWS
    // credentials in its environment).
    let Ok(hsm_dir) = std::env::var(HSM_DIR_ENV) else {
        let dir = set_up_the_token();
        let mut run = std::process::Command::new(std::env::current_exe().unwrap());
        run.args(std::env::args_os().skip(1))
            .env("SOFTHSM2_CONF", dir.join("softhsm2.conf"))
            .env(HSM_DIR_ENV, &dir);
        #[cfg(feature = "awskms")]
        run.envs(kms::ENVIRONMENT.iter().copied());
        let status = run.status().expect("the test binary runs itself");
        let _ = std::fs::remove_dir_all(&dir);
        std::process::exit(status.code().unwrap_or(1));
    };
    HSM_DIR.set(PathBuf::from(hsm_dir)).unwrap();
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    // On every backend, with every key source.
    let cases = cases![
        values_seal_and_open_through_the_key_source,
        a_kek_rotation_rewrites_no_secret_row,
        a_keyring_file_moves_to_the_key_source_and_back,
        a_tampered_or_foreign_data_key_is_refused,
        no_key_material_or_pin_in_the_database,
        a_wrapping_that_does_not_unwrap_is_never_stored,
        a_running_keyring_loads_new_data_keys_and_seals_from_their_time,
    ];
    // The command line, on SQLite.
    #[allow(unused_mut)]
    let mut cli_cases = cases![
        the_command_line_serves_through_the_hsm,
        a_starting_server_waits_for_the_hsm,
        import_and_export_go_through_the_hsm,
        an_hsm_gone_while_serving_stops_nothing,
        a_scheduled_data_key_reaches_every_server_before_it_seals,
    ];
    #[cfg(feature = "awskms")]
    cli_cases.extend(cases![
        the_command_line_serves_through_aws_kms,
        a_frozen_kms_stops_nothing_and_a_start_waits,
    ]);
    // The command line, on every backend.
    #[allow(unused_mut)]
    let mut cli_backend_cases: Vec<(&str, Case)> = Vec::new();
    #[cfg(feature = "awskms")]
    cli_backend_cases.extend(cases![a_store_moves_from_a_file_to_an_hsm_to_kms_and_back]);
    let mut chosen = Vec::new();
    for (name, case) in cases {
        for backend in [Backend::Postgres, Backend::Sqlite] {
            for &source in SOURCES {
                chosen.push((
                    format!("{name} on {backend:?} with {source:?}"),
                    case,
                    backend,
                    source,
                ));
            }
        }
    }
    for (name, case) in cli_backend_cases {
        for backend in [Backend::Postgres, Backend::Sqlite] {
            chosen.push((format!("{name} on {backend:?}"), case, backend, Source::Hsm));
        }
    }
    for (name, case) in cli_cases {
        chosen.push((name.to_owned(), case, Backend::Sqlite, Source::Hsm));
    }
    chosen.retain(|(name, _, _, _)| {
        filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()))
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // One KMS for the run (killed when the run ends, or unwinds from a failed case).
    #[cfg(feature = "awskms")]
    let _kms = kms::Moto::start_for_the_run();
    let count = chosen.len();
    for (name, case, backend, source) in chosen {
        println!("test {name} ...");
        runtime.block_on(case(backend, source));
        println!("test {name} ... ok");
    }
    println!("\ntest result: ok. {count} passed");
}

/// Where the parent run tells its child the token directory is.
const HSM_DIR_ENV: &str = "KUMA_SECRETS_TEST_SOFTHSM_DIR";

/// A directory of this run with a SoftHSM2 configuration, an initialized token and the PIN
/// in a file.
fn set_up_the_token() -> PathBuf {
    let util = Path::new("/usr/bin/softhsm2-util");
    assert!(
        util.exists() && Path::new(MODULE).exists(),
        "SoftHSM2 is not installed: apt-get install softhsm2 (.ci/install-key-sources installs it)"
    );
    let dir = std::env::temp_dir().join(format!("kuma-secrets-softhsm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("tokens")).unwrap();
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            dir.join("tokens").display()
        ),
    )
    .unwrap();
    std::fs::write(dir.join("pin"), format!("{PIN}\n")).unwrap();
    init_token(&conf, TOKEN);
    dir
}

/// A server started while its HSM shows no token waits: the port answers `/healthz` and a
/// 503 on `/readyz` naming the key source and since when; once the token and its key are
/// there, it serves, and `/metrics` counts the key source's calls by outcome.
async fn a_starting_server_waits_for_the_hsm(_backend: Backend, _source: Source) {
    let dir = tempfile::tempdir().unwrap();
    let store_url = common::sqlite_url(dir.path(), "late.db");
    let token = unique("late");
    let uri = uri_text(&token, "kek");
    let port = kuma_secrets::testing::cluster::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _serve = KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_kuma-secrets"))
            .args(["serve", "--store", &store_url, "--encryption-keys", &uri])
            .args(["--api-addr", &format!("127.0.0.1:{port}")])
            .env("KUMA_SECRETS_LOG", "warn")
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let client = reqwest::Client::new();
    let readyz = || readyz_of(&base);
    let waits = |answer: Option<(u16, String)>| {
        answer.is_some_and(|(status, body)| status == 503 && body.contains("waiting since"))
    };
    common::ha::wait_for(
        WAIT,
        "/readyz to say the server waits for its key source",
        || async { waits(readyz().await) },
    )
    .await;
    let waiting = readyz().await.unwrap();
    assert!(
        waiting
            .1
            .contains(&format!("pkcs11:token={token};object=kek")),
        "{}",
        waiting.1
    );
    assert!(!waiting.1.contains("pin"), "{}", waiting.1);
    let health = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let early = client
        .get(format!("{base}/meshes/default/secrets"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        early.status(),
        503,
        "nothing is served before the keys are there"
    );

    // The HSM comes up: the token is initialized and its key made.
    init_token(&softhsm_conf(), &token);
    generate_kek(&token, "kek").await;

    wait_ready(&base).await;
    common::http::put_secret_at(&base, "default", "late", b"late").await;
    let metrics = common::http::fetch_text(format!("{base}/metrics")).await;
    let count = |outcome: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with(&format!(
                    "kuma_secrets_key_source_calls_total{{outcome=\"{outcome}\"}}"
                ))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert!(count("unavailable") >= 1, "{metrics}");
    assert!(count("ok") >= 2, "a wrap and an unwrap: {metrics}");
}

/// A child process killed when dropped, so a failing case leaves no server behind.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How long a case waits for a server to reach the state it means.
const WAIT: std::time::Duration = std::time::Duration::from_secs(90);

/// `import` into a Postgres database that has no schema yet, sealing through the HSM (the
/// schema is migrated first, then the first data key made), and `export` reading every
/// value back through it.
async fn import_and_export_go_through_the_hsm(_backend: Backend, _source: Source) {
    let db = common::TestDb::empty().await;
    let dir = tempfile::tempdir().unwrap();
    let uri = generate_kek(TOKEN, &unique("kek")).await;
    let mut yaml = String::from("type: Mesh\nname: default\n");
    for n in 0..30 {
        yaml.push_str(&format!(
            "---\ntype: Secret\nmesh: default\nname: s-{n}\ndata: {}\n",
            common::http::b64(value(n))
        ));
    }
    let file = common::write_file(dir.path(), "in.yaml", &yaml);
    common::process::kuma(
        &[
            "import",
            "-f",
            &file,
            "--store",
            &db.url,
            "--encryption-keys",
            &uri,
        ],
        None,
    )
    .await
    .ok();
    let out = dir.path().join("out.yaml");
    common::process::kuma(
        &[
            "export",
            "--store",
            &db.url,
            "--encryption-keys",
            &uri,
            "-o",
            out.to_str().unwrap(),
        ],
        None,
    )
    .await
    .ok();
    let exported = std::fs::read_to_string(&out).unwrap();
    for n in 0..30 {
        let encoded = common::http::b64(value(n));
        assert!(
            exported.contains(&encoded),
            "secret s-{n} not exported as written"
        );
    }
    // Without the HSM, nothing opens.
    common::process::kuma(&["export", "--store", &db.url, "-o", "/dev/null"], None)
        .await
        .failed();
}

/// An HSM that goes away while the server runs stops nothing: reads and writes go on with
/// the data keys held, and `/readyz` (still 200) says since when the key source is down.
async fn an_hsm_gone_while_serving_stops_nothing(_backend: Backend, _source: Source) {
    let dir = tempfile::tempdir().unwrap();
    let store_url = common::sqlite_url(dir.path(), "gone.db");
    let token = unique("gone");
    init_token(&softhsm_conf(), &token);
    let uri = generate_kek(&token, "kek").await;
    let (_serve, base, _log) = common::process::spawn_serve(
        &[
            "--store",
            &store_url,
            "--encryption-keys",
            &uri,
            "--key-source-probe-interval",
            "1s",
        ],
        dir.path(),
    );
    let put = |name: &'static str| common::http::put_secret_at(&base, "default", name, b"sealed");
    let get = |name: &'static str| {
        let url = format!("{base}/meshes/default/secrets/{name}");
        async move {
            let got: serde_json::Value = common::http::get_fresh(url).await.json().await.unwrap();
            assert_eq!(got["data"], common::http::b64(b"sealed"), "{got}");
        }
    };
    let readyz = || async {
        let ready = common::http::send_get(format!("{base}/readyz")).await;
        (ready.status().as_u16(), ready.text().await.unwrap())
    };
    put("before").await;
    assert_eq!(readyz().await, (200, "ok\n".to_owned()));

    softhsm(&softhsm_conf(), &["--delete-token", "--token", &token]);
    common::ha::wait_for(WAIT, "/readyz to say the key source is down", || async {
        let (status, body) = readyz().await;
        status == 200 && body.contains("unavailable since")
    })
    .await;
    let (status, note) = readyz().await;
    assert_eq!(status, 200, "{note}");
    assert!(
        note.contains(&format!("pkcs11:token={token};object=kek")),
        "{note}"
    );
    get("before").await;
    put("during").await;
    get("during").await;
}

/// A key source that answers with a wrapping it cannot undo (a faulty HSM): a stand-in,
/// since SoftHSM2 does not fail that way.
#[derive(Debug)]
struct FaultyKek;

impl KeyEncryptionKey for FaultyKek {
    fn name(&self) -> &str {
        "faulty:kek"
    }
    fn wrap(&self, _id: &str, dek: &[u8; 32]) -> Result<Vec<u8>, KekError> {
        // Garbage of the right length, not the key.
        Ok(dek.iter().map(|b| b ^ 0x5a).rev().collect())
    }
    fn unwrap(&self, id: &str, _wrapped: &[u8]) -> Result<zeroize::Zeroizing<[u8; 32]>, KekError> {
        Err(KekError::Refused {
            source_name: self.name().into(),
            id: id.into(),
        })
    }
}

/// A wrapping the source cannot undo is never stored: no data key is made, the first
/// start fails naming the source, and a rotation onto that source changes nothing.
async fn a_wrapping_that_does_not_unwrap_is_never_stored(backend: Backend, source: Source) {
    let fresh = Fresh::new(backend).await;
    let faulty: Arc<dyn KeyEncryptionKey> = Arc::new(FaultyKek);
    let bare = fresh.bare().await;
    let err = envelope::open_keyring(&bare, faulty.clone(), true)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, EnvelopeError::Kek(KekError::NotReversible { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("nothing was stored"), "{err}");
    assert!(bare.data_keys().await.unwrap().is_empty());

    // A rotation from a good key onto the faulty one leaves the data keys as they were.
    let good = new_kek(source).await;
    envelope::new_data_key(&bare, good.clone(), std::time::Duration::ZERO)
        .await
        .unwrap();
    let before = bare.data_keys().await.unwrap();
    let err = envelope::rewrap(&bare, good.clone(), faulty)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, EnvelopeError::Kek(KekError::NotReversible { .. })),
        "{err}"
    );
    assert_eq!(bare.data_keys().await.unwrap(), before);
    bare.close().await;
}

/// AWS KMS for the run: moto's KMS in server mode, and the credentials the run gives itself
/// and every process it starts.
#[cfg(feature = "awskms")]
mod kms {
    use super::*;

    /// The region every key is made in.
    pub const REGION: &str = "us-east-1";
    /// The run's AWS secret key (moto takes any): searched for on disk and in logs.
    pub const SECRET_KEY: &str = "kuma-secrets-test-aws-secret-4711-do-not-log";
    /// The environment the run's child gets: credentials, and no instance metadata or
    /// profile files to look at.
    pub const ENVIRONMENT: &[(&str, &str)] = &[
        ("AWS_ACCESS_KEY_ID", "AKIAKUMASECRETSTEST1"),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_CONFIG_FILE", "/nonexistent/aws-config"),
        (
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/aws-credentials",
        ),
    ];

    /// The run's KMS endpoint.
    static ENDPOINT: OnceLock<String> = OnceLock::new();

    /// A moto server, killed when dropped.
    pub struct Moto {
        process: KillOnDrop,
        pub endpoint: String,
    }

    impl Moto {
        /// A moto server of its own, answering.
        pub fn start() -> Self {
            let port = kuma_secrets::testing::cluster::free_port();
            let process = std::process::Command::new("moto_server")
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap_or_else(|err| {
                    panic!(
                        "moto_server does not start ({err}): pip install 'moto[server]' (.ci/install-key-sources installs it)"
                    )
                });
            let mut process = KillOnDrop(process);
            let deadline = std::time::Instant::now() + WAIT;
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                if let Ok(Some(status)) = process.0.try_wait() {
                    panic!("moto_server exited before it answered: {status}");
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "moto_server did not answer on port {port}"
                );
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Self {
                process,
                endpoint: format!("http://127.0.0.1:{port}"),
            }
        }

        /// The run's moto server, whose endpoint [`uri_text`] uses.
        pub fn start_for_the_run() -> Self {
            let moto = Self::start();
            ENDPOINT.set(moto.endpoint.clone()).unwrap();
            moto
        }

        /// Stops the server's process: connections still open, nothing answers (as a
        /// partitioned network).
        pub fn freeze(&self) {
            self.signal("-STOP");
        }

        /// Lets it answer again.
        pub fn thaw(&self) {
            self.signal("-CONT");
        }

        fn signal(&self, signal: &str) {
            let sent = std::process::Command::new("kill")
                .args([signal, &self.process.0.id().to_string()])
                .status()
                .unwrap();
            assert!(sent.success(), "kill {signal} moto_server");
        }
    }

    /// The URI of the key aliased `alias` in the KMS at `endpoint`.
    pub fn uri_at(endpoint: &str, alias: &str) -> String {
        format!("awskms:alias/{alias}?region={REGION}&endpoint={endpoint}")
    }

    /// The URI of the key aliased `alias` in the run's KMS.
    pub fn uri_text(alias: &str) -> String {
        uri_at(ENDPOINT.get().expect("the run's KMS is up"), alias)
    }

    /// A new key in the run's KMS, with an alias of its own.
    pub async fn new_kek() -> Arc<dyn KeyEncryptionKey> {
        let uri = uri_text(&unique("kek")).parse().unwrap();
        Arc::new(
            kuma_secrets::envelope::awskms::AwsKmsKek::generate(&uri)
                .await
                .unwrap(),
        )
    }

    /// The key `uri` names, opened.
    pub async fn open(uri: &str) -> Arc<dyn KeyEncryptionKey> {
        envelope::awskms::open(&uri.parse().unwrap()).await.unwrap()
    }
}

/// A `serve` on `store_url` sealing through `uri`, its port of its own, its debug log in
/// `log`: the base URL, once ready.
async fn serve_logging_to(
    store_url: &str,
    uri: &str,
    log: &Path,
    extra: &[&str],
) -> (KillOnDrop, String) {
    let port = kuma_secrets::testing::cluster::free_port();
    let process = KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_kuma-secrets"))
            .args(["serve", "--store", store_url, "--encryption-keys", uri])
            .args(["--api-addr", &format!("127.0.0.1:{port}")])
            .args(extra)
            .env("KUMA_SECRETS_LOG", "debug")
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&base).await;
    (process, base)
}

/// `/readyz` at `base`: its status and body, or `None` while nothing answers.
async fn readyz_of(base: &str) -> Option<(u16, String)> {
    let response = reqwest::get(format!("{base}/readyz")).await.ok()?;
    Some((response.status().as_u16(), response.text().await.ok()?))
}

/// Waits for the server at `base` to say it is ready.
async fn wait_ready(base: &str) {
    common::ha::wait_for(WAIT, "the server to be ready", || async {
        readyz_of(base)
            .await
            .is_some_and(|(status, _)| status == 200)
    })
    .await;
}

/// The command line end to end with the key in AWS KMS, on SQLite: `generate kek` makes
/// the key and its alias (a second time is refused), `serve` seals through it across a
/// restart, `rotate-keys --status` names the key by its ARN, and neither the data key nor
/// the AWS secret key is in the database's files or in the server's debug log.
#[cfg(feature = "awskms")]
async fn the_command_line_serves_through_aws_kms(_backend: Backend, _source: Source) {
    let dir = tempfile::tempdir().unwrap();
    let store_url = common::sqlite_url(dir.path(), "kms.db");
    let alias = unique("kek");
    let uri = kms::uri_text(&alias);
    let made = common::process::kuma(&["generate", "kek", &uri], None)
        .await
        .ok();
    assert!(
        made.stdout
            .contains(&format!("awskms:arn:aws:kms:{}:", kms::REGION)),
        "{}",
        made.stdout
    );
    common::process::kuma(&["generate", "kek", &uri], None)
        .await
        .fails_with(&format!("the alias alias/{alias} exists in KMS already"));
    let refused = common::process::kuma(
        &["generate", "kek", "awskms:alias/x?region=us-east-1&token=1"],
        None,
    )
    .await;
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(
        refused.stderr.contains("unknown query attribute \"token\""),
        "{refused:?}"
    );

    let log = dir.path().join("serve.log");
    {
        let (_serve, base) = serve_logging_to(&store_url, &uri, &log, &[]).await;
        common::http::put_secret_at(&base, "default", "kms", b"kms-sealed").await;
    }
    let log_again = dir.path().join("serve-again.log");
    let (_serve, base) = serve_logging_to(&store_url, &uri, &log_again, &[]).await;
    let got = common::http::fetch_json(format!("{base}/meshes/default/secrets/kms")).await;
    assert_eq!(got["data"], common::http::b64(b"kms-sealed"), "{got}");

    let status = common::process::kuma(
        &[
            "rotate-keys",
            "--status",
            "--store",
            &store_url,
            "--encryption-keys",
            &uri,
        ],
        None,
    )
    .await
    .ok();
    assert!(status.stdout.contains("DATA KEY"), "{}", status.stdout);
    assert!(
        status
            .stdout
            .contains(&format!("awskms:arn:aws:kms:{}:", kms::REGION)),
        "{}",
        status.stdout
    );

    // The data key, written to a file for the search (the store stays on KMS).
    let exported = dir.path().join("exported.yaml");
    let path = format!("file:{}", exported.display());
    common::process::kuma(
        &[
            "rotate-keys",
            "--store",
            &store_url,
            "--encryption-keys",
            &uri,
            "--new-kek",
            &path,
        ],
        None,
    )
    .await
    .ok();
    let (encoded, raw) = data_keys_in(&exported)
        .pop()
        .expect("the data key in the file");
    let db = dir.path().join("kms.db");
    let mut on_disk = Vec::new();
    for file in [
        db.clone(),
        db.with_extension("db-wal"),
        log.clone(),
        log_again.clone(),
    ] {
        on_disk.extend(std::fs::read(&file).unwrap_or_default());
    }
    let holds = |needle: &[u8]| on_disk.windows(needle.len()).any(|w| w == needle);
    for (what, needle) in [
        ("the raw data key", raw.clone()),
        ("the data key's base64", encoded.clone().into_bytes()),
        ("the data key's hex", hex(&raw).into_bytes()),
        ("the AWS secret key", kms::SECRET_KEY.as_bytes().to_vec()),
    ] {
        assert!(
            !holds(&needle),
            "{what} is in the database or the debug log"
        );
    }
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("DEBUG") && holds(b"dek-"),
        "the search finds what is there: debug lines, the data key's id"
    );
}

/// AWS KMS frozen (its process stopped: connections open, nothing answers, as a partitioned
/// network) stops no running server: reads and writes go on with the data keys held and
/// `/readyz` (still 200) says since when the key source is down. A server started
/// meanwhile waits, `/readyz` 503 naming the key; once KMS answers again it serves, and the
/// first server's note clears.
#[cfg(feature = "awskms")]
async fn a_frozen_kms_stops_nothing_and_a_start_waits(_backend: Backend, _source: Source) {
    let moto = kms::Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let alias = unique("frozen");
    let uri = kms::uri_at(&moto.endpoint, &alias);
    common::process::kuma(&["generate", "kek", &uri], None)
        .await
        .ok();
    let running_url = common::sqlite_url(dir.path(), "running.db");
    let (_running, running) = serve_logging_to(
        &running_url,
        &uri,
        &dir.path().join("running.log"),
        &["--key-source-probe-interval", "1s"],
    )
    .await;
    let put = |base: &str, name: &str| {
        let base = base.to_owned();
        let name = name.to_owned();
        async move { common::http::put_secret_at(&base, "default", &name, b"sealed").await }
    };
    let get = |base: &str, name: &str| {
        let url = format!("{base}/meshes/default/secrets/{name}");
        async move {
            let got: serde_json::Value = common::http::get_fresh(url).await.json().await.unwrap();
            assert_eq!(got["data"], common::http::b64(b"sealed"), "{got}");
        }
    };
    put(&running, "before").await;
    assert_eq!(readyz_of(&running).await, Some((200, "ok\n".to_owned())));

    moto.freeze();
    common::ha::wait_for(WAIT, "/readyz to say the key source is down", || async {
        readyz_of(&running)
            .await
            .is_some_and(|(status, body)| status == 200 && body.contains("unavailable since"))
    })
    .await;
    let (_, note) = readyz_of(&running).await.unwrap();
    assert!(note.contains(&format!("awskms:alias/{alias}")), "{note}");
    get(&running, "before").await;
    put(&running, "during").await;
    get(&running, "during").await;

    // A server starting now waits for KMS.
    let port = kuma_secrets::testing::cluster::free_port();
    let starting = format!("http://127.0.0.1:{port}");
    let _starting = KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_kuma-secrets"))
            .args([
                "serve",
                "--store",
                &common::sqlite_url(dir.path(), "starting.db"),
            ])
            .args([
                "--encryption-keys",
                &uri,
                "--api-addr",
                &format!("127.0.0.1:{port}"),
            ])
            .env("KUMA_SECRETS_LOG", "warn")
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    common::ha::wait_for(WAIT, "the starting server to say it waits", || async {
        readyz_of(&starting)
            .await
            .is_some_and(|(status, body)| status == 503 && body.contains("waiting since"))
    })
    .await;
    let (_, waiting) = readyz_of(&starting).await.unwrap();
    assert!(
        waiting.contains(&format!("awskms:alias/{alias}")),
        "{waiting}"
    );
    assert!(!waiting.contains(kms::SECRET_KEY), "{waiting}");

    moto.thaw();
    wait_ready(&starting).await;
    put(&starting, "after").await;
    get(&starting, "after").await;
    common::ha::wait_for(WAIT, "the running server's note to clear", || async {
        readyz_of(&running).await == Some((200, "ok\n".to_owned()))
    })
    .await;
}

/// A store sealed with a keyring file moves online to a key in the HSM, from there to a key
/// in AWS KMS, and back to a keyring file, each with `rotate-keys --new-kek`: no secret
/// row is rewritten, every value reads back at every step, and the key moved from is
/// refused by name.
#[cfg(feature = "awskms")]
async fn a_store_moves_from_a_file_to_an_hsm_to_kms_and_back(backend: Backend, _source: Source) {
    const SECRETS: usize = 40;
    let fresh = Fresh::new(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.yaml");
    let keyring = Keyring::single("key-1", Keyring::random_key())
        .with_key("key-2", Keyring::random_key())
        .with_active("key-2");
    keyring.save_new(&file).unwrap();
    let store = fresh.sealed(keyring).await;
    for n in 0..SECRETS {
        write(&store, n).await;
    }
    store.close().await;
    let before = every_row(&fresh.url).await;

    let hsm = generate_kek(TOKEN, &unique("kek")).await;
    let kms_uri = kms::uri_text(&unique("kek"));
    common::process::kuma(&["generate", "kek", &kms_uri], None)
        .await
        .ok();
    let file_uri = format!("file:{}", file.display());
    let back = dir.path().join("back.yaml");
    let back_uri = format!("file:{}", back.display());
    let moves = [(&file_uri, &hsm), (&hsm, &kms_uri), (&kms_uri, &back_uri)];
    for (from, to) in moves {
        common::process::kuma(
            &[
                "rotate-keys",
                "--store",
                &fresh.url,
                "--encryption-keys",
                from,
                "--new-kek",
                to,
            ],
            None,
        )
        .await
        .ok();
        assert_eq!(
            every_row(&fresh.url).await,
            before,
            "{from} → {to} re-sealed a row"
        );
        let keyring = if to.starts_with("file:") {
            Keyring::load(&back).unwrap()
        } else {
            let kek = if to.starts_with("pkcs11:") {
                envelope::pkcs11::open(&to.parse().unwrap()).await.unwrap()
            } else {
                kms::open(to).await
            };
            fresh.hsm_keyring(&kek, false).await
        };
        assert_eq!(keyring.active_id(), "key-2", "{from} → {to}");
        let store = fresh.sealed(keyring).await;
        every_value_reads_back(&store, SECRETS).await;
        store.close().await;
    }
    // The HSM key no longer opens the store: the data keys are wrapped by the KMS key.
    let bare = fresh.bare().await;
    let refused = envelope::open_keyring(
        &bare,
        envelope::pkcs11::open(&hsm.parse().unwrap()).await.unwrap(),
        false,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&refused, EnvelopeError::OtherKek { wrapped_by, .. } if wrapped_by.starts_with("awskms:arn:")),
        "{refused}"
    );
    bare.close().await;
}

/// What a running server does with its keyring every probe interval
/// (`envelope::refresh_data_keys`): a data key made elsewhere is loaded at once but seals
/// only from its `seals_from`; the scheduled key is made when the newest is older than the
/// rotation period, and two servers due at once store one key between them.
async fn a_running_keyring_loads_new_data_keys_and_seals_from_their_time(
    backend: Backend,
    source: Source,
) {
    use kuma_secrets::sealing::SharedKeyring;
    use std::time::Duration;
    let fresh = Fresh::new(backend).await;
    let kek = new_kek(source).await;
    let bare = fresh.bare().await;
    let first = envelope::open_keyring(&bare, kek.clone(), true)
        .await
        .unwrap()
        .unwrap();
    let first_id = first.active_id().to_owned();
    let running = SharedKeyring::new(Arc::new(first));
    let on_demand = envelope::DataKeyUpkeep {
        refresh: Duration::from_secs(1),
        rotation: None,
    };

    // Made by rotate-keys --new-data-key, sealing in a day: loaded, not yet sealing.
    let later = envelope::new_data_key(&bare, kek.clone(), Duration::from_secs(86_400))
        .await
        .unwrap();
    envelope::refresh_data_keys(&bare, &kek, &running, on_demand)
        .await
        .unwrap();
    assert!(running.current().contains(&later.id), "loaded at once");
    assert_eq!(running.current().active_id(), first_id, "not sealing yet");
    let store = fresh.sealed(Keyring::clone(&running.current())).await;
    write(&store, 0).await;
    store.close().await;

    // One that seals now takes over.
    let now = envelope::new_data_key(&bare, kek.clone(), Duration::ZERO)
        .await
        .unwrap();
    envelope::refresh_data_keys(&bare, &kek, &running, on_demand)
        .await
        .unwrap();
    assert_eq!(running.current().active_id(), now.id);
    let store = fresh.sealed(Keyring::clone(&running.current())).await;
    write(&store, 1).await;
    every_value_reads_back(&store, 2).await;
    store.close().await;
    // A restart chooses the same.
    let restarted = fresh.hsm_keyring(&kek, false).await;
    assert_eq!(restarted.active_id(), now.id);

    // Nothing is due while the newest is younger than the period.
    let monthly = envelope::DataKeyUpkeep {
        refresh: Duration::from_secs(1),
        rotation: Some(Duration::from_secs(30 * 86_400)),
    };
    envelope::refresh_data_keys(&bare, &kek, &running, monthly)
        .await
        .unwrap();
    assert_eq!(bare.data_keys().await.unwrap().len(), 3, "none due");

    // Two servers due at once (every key older than the period) make one scheduled key.
    let second = SharedKeyring::new(Arc::new(fresh.hsm_keyring(&kek, false).await));
    let hourly = envelope::DataKeyUpkeep {
        refresh: Duration::from_secs(1),
        rotation: Some(Duration::from_secs(3600)),
    };
    backdate_data_keys(&fresh.url, 2).await;
    let (a, b) = tokio::join!(
        envelope::refresh_data_keys(&bare, &kek, &running, hourly),
        envelope::refresh_data_keys(&bare, &kek, &second, hourly),
    );
    a.unwrap();
    b.unwrap();
    let keys = bare.data_keys().await.unwrap();
    let scheduled: Vec<_> = keys
        .iter()
        .filter(|key| key.id.ends_with("-scheduled"))
        .collect();
    assert_eq!(scheduled.len(), 1, "{keys:?}");
    let scheduled = scheduled[0];
    assert!(
        scheduled.seals_from >= scheduled.created + chrono::Duration::seconds(3),
        "it seals three refreshes after it is made: {scheduled:?}"
    );
    for keyring in [&running, &second] {
        envelope::refresh_data_keys(&bare, &kek, keyring, on_demand)
            .await
            .unwrap();
        assert!(keyring.current().contains(&scheduled.id));
        assert_eq!(keyring.current().active_id(), now.id, "not sealing yet");
    }
    bare.close().await;
}

/// Moves every data key `hours` hours into the past (made and sealing), behind the store's
/// back: as if they had been made that long ago.
async fn backdate_data_keys(url: &str, hours: i64) {
    let keys = {
        let store = AnyStore::open(url, StoreOptions::for_data_keys())
            .await
            .unwrap();
        let keys = store.data_keys().await.unwrap();
        store.close().await;
        keys
    };
    for key in keys {
        let (created, seals_from) = (
            key.created - chrono::Duration::hours(hours),
            key.seals_from - chrono::Duration::hours(hours),
        );
        if url.starts_with("postgres") {
            let pool = sqlx::PgPool::connect(url).await.unwrap();
            sqlx::query("UPDATE data_keys SET created = $1, seals_from = $2 WHERE id = $3")
                .bind(created)
                .bind(seals_from)
                .bind(&key.id)
                .execute(&pool)
                .await
                .unwrap();
            pool.close().await;
        } else {
            let pool = sqlx::SqlitePool::connect(url).await.unwrap();
            sqlx::query("UPDATE data_keys SET created = $1, seals_from = $2 WHERE id = $3")
                .bind(created)
                .bind(seals_from)
                .bind(&key.id)
                .execute(&pool)
                .await
                .unwrap();
            pool.close().await;
        }
    }
}

/// Two servers on one Postgres database, sealing through the HSM: the one with a rotation
/// period makes a data key on schedule, the other (no schedule) loads it before it seals,
/// so every value either writes opens through both; `rotate-keys --status` lists the key
/// and what it seals.
async fn a_scheduled_data_key_reaches_every_server_before_it_seals(
    _backend: Backend,
    _source: Source,
) {
    let db = common::TestDb::migrated().await;
    let dir = tempfile::tempdir().unwrap();
    let uri = generate_kek(TOKEN, &unique("kek")).await;
    let server = |probe: &'static str, period: &'static str| {
        let args = [
            "--store",
            db.url.as_str(),
            "--encryption-keys",
            uri.as_str(),
            "--key-source-probe-interval",
            probe,
            "--data-key-rotation-period",
            period,
        ];
        common::process::spawn_serve(&args, dir.path())
    };
    // The scheduling server first: it makes the store's first data key.
    let (_scheduler, scheduler, _log) = server("2s", "5s");
    wait_ready(&scheduler).await;
    let (_other, other, _log) = server("1s", "never");
    wait_ready(&other).await;

    let sealed_with = |name: String| {
        let url = db.url.clone();
        async move {
            let pool = sqlx::PgPool::connect(&url).await.unwrap();
            let key: Option<String> = sqlx::query_scalar(
                "SELECT key_id FROM secrets WHERE mesh = 'default' AND name = $1",
            )
            .bind(name)
            .fetch_one(&pool)
            .await
            .unwrap();
            pool.close().await;
            key.unwrap_or_default()
        }
    };
    let reads_through_both = |name: String| {
        let (scheduler, other) = (scheduler.clone(), other.clone());
        async move {
            for base in [&scheduler, &other] {
                let url = format!("{base}/meshes/default/secrets/{name}");
                let got: serde_json::Value =
                    common::http::get_fresh(url).await.json().await.unwrap();
                assert_eq!(
                    got["data"],
                    common::http::b64(name.as_bytes()),
                    "{base}: {got}"
                );
            }
        }
    };
    // Writes through either server until one is sealed with a scheduled key; each reads
    // back through both.
    for (label, base) in [("scheduler", &scheduler), ("other", &other)] {
        let mut n = 0;
        common::ha::wait_for(
            WAIT,
            &format!("a write through the {label} sealed with a scheduled key"),
            || {
                n += 1;
                let name = format!("{label}-{n}");
                let base = base.clone();
                async move {
                    common::http::put_secret_at(&base, "default", &name, name.as_bytes()).await;
                    reads_through_both(name.clone()).await;
                    sealed_with(name).await.ends_with("-scheduled")
                }
            },
        )
        .await;
    }
    let status = common::process::kuma(
        &[
            "rotate-keys",
            "--status",
            "--store",
            &db.url,
            "--encryption-keys",
            &uri,
        ],
        None,
    )
    .await
    .ok();
    assert!(status.stdout.contains("-scheduled"), "{}", status.stdout);
    assert!(status.stdout.contains("SEALS FROM"), "{}", status.stdout);
}
