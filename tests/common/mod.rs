//! Test fixtures: a fresh Postgres database per test, a fresh SQLite file per test.
//!
//! Postgres comes from `DATABASE_URL` (default
//! `postgres://postgres:postgres@127.0.0.1:5432/postgres`). A test that cannot reach it fails
//! with a message saying how to start one; it never skips silently.

#![allow(dead_code, unused_macros)]

/// Defines `postgres::CASE` and `sqlite::CASE` tests for each case, on a two-thread runtime
/// (a server and the test run side by side). Three forms of case:
/// - `on_both_backends! { a, b }`: `async fn a(backend: Backend)`;
/// - `on_both_backends! { stores: [a], shared: [b] }`: `async fn a(store: &S)` on a fresh
///   store, and `async fn b(store: Arc<S>)` for cases that share it between tasks.
macro_rules! on_both_backends {
    (stores: [$($case:ident),* $(,)?], shared: [$($shared:ident),* $(,)?]) => {
        on_both_backends!(@stores postgres, postgres_store, [$($case),*], [$($shared),*]);
        on_both_backends!(@stores sqlite, sqlite_store, [$($case),*], [$($shared),*]);
    };
    (@stores $backend:ident, $make:ident, [$($case:ident),*], [$($shared:ident),*]) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let (_guard, store) = super::common::$make().await;
                    super::$case(&store).await;
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $shared() {
                    let (_guard, store) = super::common::$make().await;
                    super::$shared(std::sync::Arc::new(store)).await;
                }
            )*
        }
    };
    ($($case:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Backend::Postgres).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Backend::Sqlite).await;
                }
            )*
        }
    };
}

/// Writes `contents` to the file `name` in `dir`; its path, as the CLI takes it.
pub fn write_file(dir: &std::path::Path, name: &str, contents: impl AsRef<[u8]>) -> String {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path.to_str().unwrap().to_owned()
}

/// The store URL of the SQLite file `file` in `dir`.
pub fn sqlite_url(dir: &std::path::Path, file: &str) -> String {
    format!("sqlite://{}", dir.join(file).display())
}

pub mod cluster;
pub mod ha;
pub mod http;
pub mod pki;
pub mod process;
pub mod proxy;
pub mod raw;
pub mod server;

use kuma_secrets::store::{PostgresStore, SqliteStore, StoreOptions};
use sqlx::{Connection, Executor, PgConnection};

/// The port the tests look for Postgres on when `DATABASE_URL` is not set: 5432, or
/// `KUMA_SECRETS_TEST_PG_PORT` (which lets a test try the path where nothing answers).
fn default_port() -> u16 {
    std::env::var("KUMA_SECRETS_TEST_PG_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(5432)
}

/// The Postgres server tests create their databases on: `DATABASE_URL` if set; else the
/// default address if a server answers there; else, on a machine with the Postgres
/// binaries installed but no server running, a throwaway cluster started for this test
/// process (and said so on stderr), removed when the process ends.
pub fn database_url() -> String {
    static URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(url) = std::env::var("DATABASE_URL") {
            return url;
        }
        let port = default_port();
        let default = format!("postgres://postgres:postgres@127.0.0.1:{port}/postgres");
        let answers = std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            std::time::Duration::from_secs(1),
        )
        .is_ok();
        if answers || cluster::local_binaries().is_none() {
            // A server to use, or nothing to start one with (the first test to connect
            // then says how to get one).
            return default;
        }
        let url = cluster::Cluster::start().for_this_process();
        eprintln!(
            "DATABASE_URL is not set and no Postgres answers on 127.0.0.1:{port}: \
             these tests use a throwaway cluster at {url}, removed when they end"
        );
        url
    })
    .clone()
}

/// `url` with its database name replaced by `db`.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_and_path = &base[scheme_end..];
    let host = host_and_path
        .split_once('/')
        .map_or(host_and_path, |(h, _)| h);
    let mut out = format!("{}{host}/{db}", &base[..scheme_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

async fn admin_connection() -> PgConnection {
    let url = database_url();
    match PgConnection::connect(&url).await {
        Ok(conn) => conn,
        Err(err) => panic!(
            "these tests need Postgres at {} (DATABASE_URL) and cannot reach it: {err}.\n\
             Start the local one with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`, \
             or install the server binaries (apt-get install postgresql) and the tests start a throwaway one, \
             or run `docker compose up -d` in the repository, or point DATABASE_URL at a server.",
            kuma_secrets::store::StoreUrl::parse(&url)
                .map_or_else(|e| e.to_string(), |u| u.to_string())
        ),
    }
}

/// A database created for one test and dropped when the test ends.
pub struct TestDb {
    /// URL of the test's own database.
    pub url: String,
    name: String,
}

impl TestDb {
    /// Creates an empty database.
    pub async fn empty() -> Self {
        let name = format!("ks_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = admin_connection().await;
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .expect("create test database");
        let _ = admin.close().await;
        Self {
            url: with_database(&database_url(), &name),
            name,
        }
    }

    /// Creates a database with the schema migrated to this binary's version.
    pub async fn migrated() -> Self {
        let db = Self::empty().await;
        PostgresStore::migrate_up(&db.url, false)
            .await
            .expect("migrate test database");
        db
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside async context: use a small runtime on its own thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                if let Ok(mut admin) = PgConnection::connect(&database_url()).await {
                    let _ = admin
                        .execute(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .await;
                    let _ = admin.close().await;
                }
            });
        })
        .join();
    }
}

/// The keyring every test store seals with (one random key per test process), so the
/// whole suite runs with encryption at rest on.
pub fn test_keyring() -> std::sync::Arc<kuma_secrets::sealing::Keyring> {
    static KEYRING: std::sync::OnceLock<std::sync::Arc<kuma_secrets::sealing::Keyring>> =
        std::sync::OnceLock::new();
    KEYRING
        .get_or_init(|| {
            std::sync::Arc::new(kuma_secrets::sealing::Keyring::single(
                "test-1",
                kuma_secrets::sealing::Keyring::random_key(),
            ))
        })
        .clone()
}

/// Writes [`test_keyring`] to `dir/keys.yaml` for the binary's `--encryption-keys`.
pub fn test_keyring_file(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("keys.yaml");
    if !path.exists() {
        test_keyring().save_new(&path).expect("write keyring");
    }
    path
}

/// `options` with the test keyring unless they name one.
pub fn sealed(mut options: StoreOptions) -> StoreOptions {
    if options.keyring.is_none() {
        options.keyring = Some(test_keyring());
    }
    options
}

/// A migrated Postgres store on a fresh database. Keep the `TestDb` alive as long as the store.
pub async fn postgres_store() -> (TestDb, PostgresStore) {
    postgres_store_with(StoreOptions::default()).await
}

/// As [`postgres_store`], with options.
pub async fn postgres_store_with(options: StoreOptions) -> (TestDb, PostgresStore) {
    let db = TestDb::migrated().await;
    let store = PostgresStore::open(&db.url, sealed(options))
        .await
        .expect("open postgres store");
    (db, store)
}

/// A SQLite store on a fresh file in a temporary directory.
pub async fn sqlite_store() -> (tempfile::TempDir, SqliteStore) {
    sqlite_store_with(StoreOptions::default()).await
}

/// As [`sqlite_store`], with options.
pub async fn sqlite_store_with(options: StoreOptions) -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = sqlite_url(dir.path(), "store.db");
    let store = SqliteStore::open(&url, sealed(options))
        .await
        .expect("open sqlite store");
    (dir, store)
}
