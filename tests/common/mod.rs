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

pub mod ha;
pub mod http;
pub mod pki;
pub mod process;
pub mod proxy;
pub mod raw;
pub mod server;
pub mod webdriver;

use kuma_secrets::store::{PostgresStore, SqliteStore, StoreOptions};
pub use kuma_secrets::testing::TestDatabase as TestDb;
#[allow(unused_imports)]
pub use kuma_secrets::testing::{cluster, database_url, with_database};

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
        options.keyring = Some(test_keyring().into());
    }
    options
}

/// A migrated Postgres store on a fresh database. Keep the `TestDb` alive as long as the store.
pub async fn postgres_store() -> (TestDb, PostgresStore) {
    postgres_store_with(StoreOptions::allow_plaintext_secrets()).await
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
    sqlite_store_with(StoreOptions::allow_plaintext_secrets()).await
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

/// A read cache of `store`, with its follower running, once it answers from memory (for at
/// most 30 s). Abort the handle when done.
pub async fn following_cache<S>(
    store: S,
    capacity: usize,
) -> (
    kuma_secrets::store::cache::CachedStore<S>,
    tokio::task::JoinHandle<()>,
)
where
    S: kuma_secrets::store::SecretStore
        + kuma_secrets::store::SealedReads
        + Clone
        + Send
        + Sync
        + 'static,
{
    let cached = kuma_secrets::store::cache::CachedStore::new(store, capacity);
    let follower = tokio::spawn(cached.clone().follow());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !cached.answering() {
        assert!(
            std::time::Instant::now() < deadline,
            "the cache's follower never read the feed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    (cached, follower)
}
