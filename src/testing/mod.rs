//! Test helpers for a control plane that embeds the store (cargo feature `testing`): a
//! fresh Postgres database per test in one line, and throwaway clusters for tests that
//! stop, kill or replicate Postgres.
//!
//! ```no_run
//! # async fn example() {
//! let db = kuma_secrets::testing::TestDatabase::migrated().await; // dropped with `db`
//! # }
//! ```
//!
//! Where the databases are made: `DATABASE_URL` if set; else a server on 127.0.0.1:5432
//! (`postgres:postgres`, as the repository's `docker-compose.yml` starts it); else, where
//! the Postgres server binaries are installed, a throwaway cluster for the test process.
//! Helpers panic with a message saying how to get Postgres when none of these works: a
//! test never silently skips.

pub mod cluster;

use crate::store::PostgresStore;
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
            crate::store::StoreUrl::parse(&url).map_or_else(|e| e.to_string(), |u| u.to_string())
        ),
    }
}

/// A database created for one test and dropped (`WITH (FORCE)`) when the value is: on
/// [`database_url`]'s server, named `ks_test_` and a random suffix.
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use kuma_secrets::store::{PostgresStore, StoreOptions};
/// let db = kuma_secrets::testing::TestDatabase::migrated().await;
/// let store = PostgresStore::open(&db.url, StoreOptions::allow_plaintext_secrets()).await?;
/// # Ok(()) }
/// ```
pub struct TestDatabase {
    /// URL of the test's own database.
    pub url: String,
    name: String,
}

impl TestDatabase {
    /// Creates an empty database.
    ///
    /// # Panics
    /// When no Postgres can be reached, with a message saying how to start one.
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

    /// Creates a database with the schema migrated to this build's version.
    ///
    /// # Panics
    /// As [`TestDatabase::empty`], or when the migrations fail.
    pub async fn migrated() -> Self {
        let db = Self::empty().await;
        PostgresStore::migrate_up(&db.url, false)
            .await
            .expect("migrate test database");
        db
    }
}

impl Drop for TestDatabase {
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
