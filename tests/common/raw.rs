//! The database behind a test server's back: raw statements and reads, as someone with
//! write access to it (a compromised replica, a restored backup) would do them, and
//! everything it holds as bytes (a `pg_dump`, the SQLite files).

use super::server::{Guard, TestServer};

/// A value bound to a raw statement.
pub enum P {
    Bytes(Vec<u8>),
    Text(String),
    Int(i64),
}

/// Runs `$body` with `$conn` connected straight to the database under `$server`, on
/// either backend (the body is the same text for both drivers).
macro_rules! with_raw_connection {
    ($server:expr, |$conn:ident| $body:expr) => {{
        use sqlx::Connection;
        match &$server.guard {
            Guard::Postgres(db) => {
                let mut $conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
                $body
            }
            Guard::Sqlite(_) => {
                let mut $conn = sqlx::SqliteConnection::connect(&store_url($server))
                    .await
                    .unwrap();
                $body
            }
        }
    }};
}

/// Runs one SQL statement straight on the server's database, as someone with write access
/// to it (a compromised replica, a restored backup) would.
pub async fn raw_sql(server: &TestServer, sql: &str, params: Vec<P>) {
    with_raw_connection!(server, |conn| {
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()));
        for p in params {
            query = match p {
                P::Bytes(b) => query.bind(b),
                P::Text(t) => query.bind(t),
                P::Int(i) => query.bind(i),
            };
        }
        query.execute(&mut conn).await.unwrap();
    })
}

/// The stored `(data, write_id)` of a secret, read behind the service's back.
pub async fn raw_row(server: &TestServer, name: &str) -> (Vec<u8>, Vec<u8>) {
    use sqlx::Row;
    let sql = "SELECT data, write_id FROM secrets WHERE name = $1";
    with_raw_connection!(server, |conn| {
        let row = sqlx::query(sql)
            .bind(name)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        (row.get(0), row.get(1))
    })
}

/// How many rows `sql` (a `SELECT count(*) …` with text parameters) counts, read behind
/// the service's back.
pub async fn raw_count(server: &TestServer, sql: &str, params: &[&str]) -> i64 {
    with_raw_connection!(server, |conn| {
        let mut query = sqlx::query_as::<_, (i64,)>(sqlx::AssertSqlSafe(sql.to_owned()));
        for p in params {
            query = query.bind(p.to_string());
        }
        query.fetch_one(&mut conn).await.unwrap().0
    })
}

/// The URL of the store under a test server.
pub fn store_url(server: &TestServer) -> String {
    match &server.guard {
        Guard::Postgres(db) => db.url.clone(),
        Guard::Sqlite(dir) => super::sqlite_url(dir.path(), "store.db"),
    }
}

/// Runs a store tool (`import`, `export`, `rotate-keys`, …) directly on the store under
/// `server`, opened with the keyring file `keys`: `ARGS --store URL --encryption-keys KEYS`.
pub async fn store_tool(
    server: &TestServer,
    keys: &std::path::Path,
    args: &[&str],
) -> super::process::CliRun {
    store_tool_at(&store_url(server), keys, args).await
}

/// As [`store_tool`], on the store at `store` (a store URL).
pub async fn store_tool_at(
    store: &str,
    keys: &std::path::Path,
    args: &[&str],
) -> super::process::CliRun {
    let mut all = args.to_vec();
    all.extend([
        "--store",
        store,
        "--encryption-keys",
        keys.to_str().unwrap(),
    ]);
    super::process::kuma(&all, None).await
}

/// Everything the database holds, as bytes.
pub fn raw_database(server: &TestServer) -> Vec<u8> {
    match &server.guard {
        Guard::Postgres(db) => {
            let out = std::process::Command::new("pg_dump")
                .args(["--data-only", &db.url])
                .output()
                .expect("pg_dump runs");
            assert!(out.status.success());
            out.stdout
        }
        Guard::Sqlite(dir) => {
            let mut all = Vec::new();
            for file in ["store.db", "store.db-wal"] {
                if let Ok(bytes) = std::fs::read(dir.path().join(file)) {
                    all.extend(bytes);
                }
            }
            all
        }
    }
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Inserts the GlobalSecret `name` holding `data` in clear (key id NULL) behind the
/// service's back, with the times and labels of `user-token-signing-key-1`: a planted row.
pub async fn plant_plaintext_global(server: &TestServer, name: &str, data: Vec<u8>) {
    raw_sql(
        server,
        "INSERT INTO secrets (name, mesh, version, creation_time, modification_time, labels, data) \
         SELECT $1, NULL, 1, creation_time, modification_time, labels, $2 \
         FROM secrets WHERE name = 'user-token-signing-key-1'",
        vec![P::Text(name.to_owned()), P::Bytes(data)],
    )
    .await;
}

/// An attacker's own user-token signing key (its private PEM) and an admin token it
/// signed naming `kid` `serial`: made in a plaintext store of the attacker's, never the
/// victim's.
pub async fn attacker_signing_key(serial: u32) -> (Vec<u8>, String) {
    use kuma_secrets::api::auth::tokens;
    use kuma_secrets::domain::{Labels, NewSecret, SecretKey};
    use kuma_secrets::store::{SecretStore, SqliteStore, StoreOptions};
    let dir = tempfile::tempdir().unwrap();
    let theirs = SqliteStore::open(
        &super::sqlite_url(dir.path(), "evil.db"),
        StoreOptions::allow_plaintext_secrets(),
    )
    .await
    .unwrap();
    // Generated as serial 1, then filed as `serial` (and 1 removed), so the tokens it
    // issues name that kid.
    tokens::ensure_signing_key(&theirs, tokens::USER_TOKENS)
        .await
        .unwrap();
    let first = SecretKey::parse(None, "user-token-signing-key-1").unwrap();
    let key = theirs.get_secret(&first).await.unwrap();
    if serial != 1 {
        theirs
            .create_secret(NewSecret {
                key: SecretKey::parse(None, &format!("user-token-signing-key-{serial}")).unwrap(),
                data: key.data.clone(),
                labels: Labels::default(),
            })
            .await
            .unwrap();
        theirs.delete_secret(&first, None).await.unwrap();
    }
    let token = tokens::issue(
        &theirs,
        &kuma_secrets::api::User::admin(),
        std::time::Duration::from_secs(3600),
    )
    .await
    .unwrap();
    (key.data.expose().to_vec(), token)
}

/// The stored spec of an ExternalService as JSON text, read behind the service's back.
pub async fn external_service_spec(server: &TestServer, mesh: &str, name: &str) -> String {
    use sqlx::Row;
    let sql = "SELECT CAST(spec AS TEXT) FROM external_services WHERE mesh = $1 AND name = $2";
    with_raw_connection!(server, |conn| {
        let row = sqlx::query(sql)
            .bind(mesh)
            .bind(name)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        row.get::<String, _>(0)
    })
}

/// Copies the stored spec of ExternalService `from` onto `to`, behind the service's back.
pub async fn copy_external_service_spec(server: &TestServer, mesh: &str, from: &str, to: &str) {
    let sql = "UPDATE external_services SET spec = (SELECT spec FROM external_services \
               WHERE mesh = $1 AND name = $2) WHERE mesh = $1 AND name = $3";
    raw_sql(
        server,
        sql,
        vec![
            P::Text(mesh.to_owned()),
            P::Text(from.to_owned()),
            P::Text(to.to_owned()),
        ],
    )
    .await;
}
