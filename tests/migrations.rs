//! Schema migrations and the start-up gate, on real Postgres and SQLite, through the library
//! and through the `kuma-secrets migrate` command.

mod common;

use common::TestDb;
use kuma_secrets::store::{
    MigrationState, PostgresStore, SchemaError, SecretStore, SqliteStore, StoreError, StoreOptions,
};
use sqlx::{Connection, Executor, PgConnection};
use std::process::Command;

const FUTURE_VERSION: i64 = 99_991_231_000_000;

async fn pretend_a_newer_binary_migrated(url: &str) {
    let mut conn = PgConnection::connect(url).await.unwrap();
    conn.execute(sqlx::AssertSqlSafe(format!(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES ({FUTURE_VERSION}, 'from the future', true, '\\x00', 0)"
    )))
    .await
    .unwrap();
}

#[tokio::test]
async fn migrating_twice_applies_once_then_does_nothing() {
    let db = TestDb::empty().await;
    let first = PostgresStore::migrate_up(&db.url, false).await.unwrap();
    assert!(!first.applied.is_empty());
    let second = PostgresStore::migrate_up(&db.url, false).await.unwrap();
    assert!(second.applied.is_empty());
    assert_eq!(second.version, first.version);
}

#[tokio::test]
async fn status_shows_pending_before_and_applied_after() {
    let db = TestDb::empty().await;
    let before = PostgresStore::migration_status(&db.url).await.unwrap();
    assert!(!before.is_empty());
    assert!(before.iter().all(|m| m.state == MigrationState::Pending));

    PostgresStore::migrate_up(&db.url, false).await.unwrap();
    let after = PostgresStore::migration_status(&db.url).await.unwrap();
    assert_eq!(after.len(), before.len());
    assert!(
        after
            .iter()
            .all(|m| matches!(m.state, MigrationState::Applied { .. }))
    );
}

#[tokio::test]
async fn opening_an_unmigrated_database_names_migrate_up() {
    let db = TestDb::empty().await;
    let err = PostgresStore::open(&db.url, StoreOptions::allow_plaintext_secrets())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Schema(SchemaError::Behind { database: 0, .. })
        ),
        "{err:?}"
    );
    // The library says what is wrong; the command line adds what to type (tests below).
    assert!(err.to_string().contains("not applied yet"), "{err}");
    assert!(!err.to_string().contains("kuma-secrets"), "{err}");
}

#[tokio::test]
async fn a_newer_schema_is_refused_unless_tolerated() {
    let db = TestDb::migrated().await;
    pretend_a_newer_binary_migrated(&db.url).await;

    let err = PostgresStore::open(&db.url, StoreOptions::allow_plaintext_secrets())
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Schema(SchemaError::Newer { .. })),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("newer kuma-secrets migrated it"),
        "{err}"
    );
    assert!(
        !err.to_string().contains("--"),
        "no command-line advice: {err}"
    );

    let tolerant = StoreOptions {
        tolerate_newer_schema: true,
        ..StoreOptions::allow_plaintext_secrets()
    };
    let store = PostgresStore::open(&db.url, tolerant).await.unwrap();
    store.ping().await.unwrap();

    let err = PostgresStore::migrate_up(&db.url, false).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Schema(SchemaError::Newer { .. })),
        "{err:?}"
    );
    let report = PostgresStore::migrate_up(&db.url, true).await.unwrap();
    assert!(report.applied.is_empty());

    let status = PostgresStore::migration_status(&db.url).await.unwrap();
    let future = status.iter().find(|m| m.version == FUTURE_VERSION).unwrap();
    assert_eq!(future.state, MigrationState::Unknown);
}

#[tokio::test]
async fn a_dirty_schema_is_refused_even_when_tolerating_newer() {
    let db = TestDb::migrated().await;
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    conn.execute("UPDATE _sqlx_migrations SET success = false")
        .await
        .unwrap();
    let tolerant = StoreOptions {
        tolerate_newer_schema: true,
        ..StoreOptions::allow_plaintext_secrets()
    };
    let err = PostgresStore::open(&db.url, tolerant).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Schema(SchemaError::Dirty { .. })),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_unreachable_database_is_unavailable() {
    // Nothing listens on port 1.
    let err = PostgresStore::open(
        "postgres://postgres:postgres@127.0.0.1:1/postgres",
        StoreOptions::allow_plaintext_secrets(),
    )
    .await
    .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    assert!(!err.to_string().contains("postgres:postgres"));
}

#[tokio::test]
async fn the_pool_reconnects_after_its_connections_are_killed() {
    let (db, store) = common::postgres_store().await;
    store.ping().await.unwrap();
    let mut admin = PgConnection::connect(&common::database_url())
        .await
        .unwrap();
    let name = db.url.rsplit('/').next().unwrap().to_owned();
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = '{name}' AND pid <> pg_backend_pid()"
        )))
        .await
        .unwrap();
    // The first call may see the dead connection (Unavailable, retryable, never a panic);
    // within a few retries the pool has a fresh one.
    let mut ok = false;
    for _ in 0..5 {
        match store.ping().await {
            Ok(()) => {
                ok = true;
                break;
            }
            Err(err) => assert!(err.is_retryable(), "{err:?}"),
        }
    }
    assert!(ok, "the pool never reconnected");
}

#[tokio::test]
async fn sqlite_migrates_itself_on_open_and_reopens_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let url = common::sqlite_url(dir.path(), "s.db");
    let store = SqliteStore::open(&url, StoreOptions::allow_plaintext_secrets())
        .await
        .unwrap();
    store.ping().await.unwrap();
    store.close().await;
    let again = SqliteStore::open(&url, StoreOptions::allow_plaintext_secrets())
        .await
        .unwrap();
    again.close().await;
    let status = SqliteStore::migration_status(&url).await.unwrap();
    assert!(
        status
            .iter()
            .all(|m| matches!(m.state, MigrationState::Applied { .. }))
    );
}

fn kuma_secrets(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kuma-secrets"))
        .args(args)
        .env_remove("KUMA_SECRETS_STORE")
        .output()
        .expect("run kuma-secrets")
}

#[tokio::test]
async fn migrate_commands_report_what_they_did() {
    let db = TestDb::empty().await;

    let status = kuma_secrets(&["migrate", "status", "--store", &db.url]);
    assert!(status.status.success());
    let out = String::from_utf8(status.stdout).unwrap();
    assert!(out.contains("pending"), "{out}");
    assert!(out.contains("run \"kuma-secrets migrate up\""), "{out}");

    let up = kuma_secrets(&["migrate", "up", "--store", &db.url]);
    assert!(up.status.success());
    let out = String::from_utf8(up.stdout).unwrap();
    assert!(
        out.contains("applied 20261128000001 create meshes and secrets"),
        "{out}"
    );

    let again = kuma_secrets(&["migrate", "up", "--store", &db.url]);
    let out = String::from_utf8(again.stdout).unwrap();
    assert!(out.contains("already up to date"), "{out}");

    let status = kuma_secrets(&["migrate", "status", "--store", &db.url]);
    let out = String::from_utf8(status.stdout).unwrap();
    assert!(out.contains("applied") && !out.contains("pending"), "{out}");
}

#[tokio::test]
async fn migrate_fails_with_one_line_and_no_password_when_postgres_is_unreachable() {
    let out = kuma_secrets(&[
        "migrate",
        "up",
        "--store",
        "postgres://kuma:hunter2@127.0.0.1:1/kuma",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("store unavailable"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

#[tokio::test]
async fn migrate_rejects_unknown_store_schemes() {
    let out = kuma_secrets(&["migrate", "up", "--store", "mysql://x/y"]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("unsupported store URL"), "{err}");
}

/// Replicas of a control plane starting at once on an empty database, each migrating then
/// opening through the library: every one starts, and each migration is applied once (they
/// take turns on the migrator's advisory lock; the later ones find nothing to apply).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_at_once_migrate_once_and_all_open() {
    let db = TestDb::empty().await;
    let starts = (0..4).map(|_| {
        let url = db.url.clone();
        tokio::spawn(async move {
            let report = kuma_secrets::store::AnyStore::migrate_up(&url, false).await?;
            let store = kuma_secrets::store::AnyStore::open(
                &url,
                common::sealed(StoreOptions::allow_plaintext_secrets()),
            )
            .await?;
            store.ping().await?;
            store.close().await;
            Ok::<_, StoreError>(report)
        })
    });
    let mut applied = Vec::new();
    for start in starts.collect::<Vec<_>>() {
        let report = start.await.unwrap().unwrap();
        applied.extend(report.applied.iter().map(|m| m.version));
    }
    applied.sort_unstable();
    let all: Vec<i64> = kuma_secrets::store::AnyStore::migration_status(&db.url)
        .await
        .unwrap()
        .iter()
        .map(|m| m.version)
        .collect();
    assert_eq!(
        applied, all,
        "each migration applied by exactly one replica"
    );
}

/// `secrets` keeps room on its pages (fillfactor 50, migration
/// `20261208000001_secrets_room_for_updates`), so rewriting a secret is a heap-only update:
/// no new index entries and no growth of the table. Each secret is written, then rewritten
/// once: with half of each page free every rewrite finds room beside its row, without
/// waiting for the page to be pruned (which a snapshot anywhere in the database can hold
/// back); with the default fill, a page of 1 KiB secrets is full and few do.
#[tokio::test]
async fn rewriting_secrets_updates_them_in_place() {
    use kuma_secrets::domain::{
        Labels, MeshName, MeshSpec, NewMesh, NewSecret, SecretData, SecretKey,
    };
    use kuma_secrets::store::Expect;
    let (db, store) = common::postgres_store().await;
    store
        .put_mesh(
            NewMesh {
                name: MeshName::parse("room").unwrap(),
                spec: MeshSpec::default(),
                labels: Labels::default(),
            },
            Expect::Absent,
        )
        .await
        .unwrap();
    let value = vec![b'x'; 1024];
    for round in 0..2 {
        for n in 0..24 {
            let secret = NewSecret {
                key: SecretKey::parse(Some("room"), &format!("s-{n}")).unwrap(),
                data: SecretData::new([value.as_slice(), format!("{round}").as_bytes()].concat())
                    .unwrap(),
                labels: Labels::default(),
            };
            store.put_secret(secret, Expect::Any).await.unwrap();
        }
    }
    // A backend's table statistics reach `pg_stat_user_tables` when it ends: close them all.
    store.close().await;
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let (updates, in_place): (i64, i64) = loop {
        let counts: (i64, i64) = sqlx::query_as(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'secrets'",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        if counts.0 >= 24 {
            break counts;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the updates never reached the statistics: {counts:?}"
        );
        // The statistics of the store's closed connections are still being written.
        sqlx::query("SELECT pg_stat_clear_snapshot()")
            .execute(&mut conn)
            .await
            .unwrap();
        tokio::task::yield_now().await;
    };
    assert_eq!(
        in_place, updates,
        "{in_place} of {updates} rewrites of `secrets` were heap-only"
    );
    let (options,): (Vec<String>,) =
        sqlx::query_as("SELECT coalesce(reloptions, '{}') FROM pg_class WHERE relname = 'secrets'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(options, ["fillfactor=50"]);
}
