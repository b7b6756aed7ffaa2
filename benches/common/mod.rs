//! What the benches share: the Postgres server they measure on, databases of their own
//! there, and the runtime they drive the store from.

use sqlx::{Executor, PgConnection};

/// The Postgres server: `DATABASE_URL`, or the local default.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".to_owned())
}

/// `url` naming database `db` instead (its query kept).
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let cut = base.rfind('/').expect("database URL has a path");
    let mut out = format!("{}/{db}", &base[..cut]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// Creates database `db` through `admin` and returns its URL, migrated to this build's
/// schema.
pub async fn create_migrated_database(
    admin: &mut PgConnection,
    admin_url: &str,
    db: &str,
) -> String {
    admin
        .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
        .await
        .unwrap();
    let url = with_database(admin_url, db);
    kuma_secrets::store::PostgresStore::migrate_up(&url, false)
        .await
        .unwrap();
    url
}

/// Drops database `db`, closing whatever is still connected to it.
pub async fn drop_database(admin: &mut PgConnection, db: &str) {
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE {db} WITH (FORCE)"
        )))
        .await
        .unwrap();
}

/// A runtime with a worker per core, as `serve` runs.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}
