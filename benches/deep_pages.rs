//! Deep pages: with 100,000 secrets in one Mesh, is the last page, reached by following
//! `next` links, as cheap as the first? (The quality bar: at most 3x.)
//!
//! ```text
//! cargo bench --bench deep_pages -- [--secrets N] [--size 100]
//! ```
//!
//! For each backend it seeds N secrets with one SQL statement, seals them all with a
//! keyring (as `rotate-keys` does), starts the real API on port 0, and times over HTTP
//! (every page opens its sealed rows): the first page (median of 30), every page while following
//! `next` to the end, and for comparison the last page requested by `offset` alone (what
//! Kuma's clients send, and what Kuma itself answers by loading every row). Each backend is
//! measured as `serve` runs it (with the read cache, which keeps a list's `total` until a
//! secret changes) and without the cache (every page counts every match).

mod common;

use kuma_secrets::api::{self, ApiConfig, AppState};
use kuma_secrets::sealing::Keyring;
use kuma_secrets::store::cache::{CachedStore, DEFAULT_CACHE_ENTRIES};
use kuma_secrets::store::{AnyStore, SecretStore, StoreOptions};
use std::sync::Arc;

/// A store on `url` sealing with a fresh key, its seeded plaintext rows sealed.
async fn sealed_store(url: &str) -> AnyStore {
    let options = StoreOptions {
        keyring: Some(Arc::new(Keyring::single("bench-1", Keyring::random_key())).into()),
        ..StoreOptions::allow_plaintext_secrets()
    };
    let store = AnyStore::open(url, options).await.unwrap();
    let mut after = 0;
    loop {
        let batch = store
            .reseal_batch(kuma_secrets::store::SealedRows::Current, after, 1000)
            .await
            .unwrap();
        after = batch.last_id;
        if batch.finished {
            break;
        }
    }
    store
}
use sqlx::{Connection, Executor, PgConnection, SqliteConnection};
use std::time::{Duration, Instant};

struct Args {
    secrets: u64,
    size: u64,
}

fn parse_args() -> Args {
    let mut args = Args {
        secrets: 100_000,
        size: 100,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--secrets" => {
                args.secrets = it.next().and_then(|s| s.parse().ok()).expect("--secrets N")
            }
            "--size" => args.size = it.next().and_then(|s| s.parse().ok()).expect("--size N"),
            _ => {}
        }
    }
    args
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

async fn timed_get(client: &reqwest::Client, url: &str) -> (Duration, serde_json::Value) {
    let started = Instant::now();
    let response = client.get(url).send().await.unwrap();
    assert_eq!(response.status(), 200, "{url}");
    let body: serde_json::Value = response.json().await.unwrap();
    (started.elapsed(), body)
}

/// Measures `store` served as `serve` serves it (with the read cache, which keeps a list's
/// `total`), then without the cache.
async fn measure(name: &str, store: AnyStore, args: &Args) {
    api::bootstrap(&store, false, &Default::default())
        .await
        .unwrap();
    let cached = CachedStore::new(store.clone(), DEFAULT_CACHE_ENTRIES);
    let state = AppState::new(cached.clone(), ApiConfig::default());
    let follower = tokio::spawn(cached.clone().follow());
    while !cached.answering() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    measure_app(name, state, args).await;
    follower.abort();
    let state = AppState::new(store.clone(), ApiConfig::default());
    measure_app(&format!("{name} (no cache)"), state, args).await;
    store.close().await;
}

async fn measure_app<S: SecretStore + Clone + 'static>(
    name: &str,
    state: AppState<S>,
    args: &Args,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = api::app(state);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(api::serve(listener, app, Default::default(), async {
        let _ = rx.await;
    }));
    let client = reqwest::Client::new();
    let first_url = format!("{base}/meshes/default/secrets?size={}", args.size);

    // Warm up, then the first page.
    for _ in 0..5 {
        timed_get(&client, &first_url).await;
    }
    let mut first = Vec::new();
    for _ in 0..30 {
        first.push(timed_get(&client, &first_url).await.0);
    }

    // Follow `next` to the end.
    let mut pages = Vec::new();
    let mut url = Some(first_url.clone());
    let mut seen = 0u64;
    while let Some(u) = url {
        let (took, body) = timed_get(&client, &u).await;
        seen += body["items"].as_array().unwrap().len() as u64;
        pages.push(took);
        url = body["next"].as_str().map(str::to_owned);
    }
    assert_eq!(
        seen, args.secrets,
        "following next visits every secret once"
    );
    let last_pages = median(pages[pages.len().saturating_sub(10)..].to_vec());

    let last_offset = args.secrets - args.size;
    let offset_url = format!(
        "{base}/meshes/default/secrets?size={}&offset={last_offset}",
        args.size
    );
    let mut by_offset = Vec::new();
    for _ in 0..10 {
        by_offset.push(timed_get(&client, &offset_url).await.0);
    }

    let first = median(first);
    let by_offset = median(by_offset);
    println!(
        "| {name} | {} | {:.2} ms | {:.2} ms | {:.2} | {:.2} ms | {:.2} |",
        pages.len(),
        first.as_secs_f64() * 1e3,
        last_pages.as_secs_f64() * 1e3,
        last_pages.as_secs_f64() / first.as_secs_f64(),
        by_offset.as_secs_f64() * 1e3,
        by_offset.as_secs_f64() / first.as_secs_f64(),
    );
    let _ = tx.send(());
    server.await.unwrap().unwrap();
}

/// Seeds `secret-000001`…; `{name}` is the dialect's zero-padding of `i`.
const SEED_SQL: &str = "INSERT INTO secrets (name, mesh, version, creation_time, modification_time, labels, data) \
    SELECT 'secret-' || {name}, 'default', 1, $1, $1, '{}', $2 FROM series";

fn main() {
    let args = parse_args();
    let runtime = common::runtime();
    runtime.block_on(async {
        println!("{} secrets in Mesh default, pages of {}, over HTTP on loopback", args.secrets, args.size);
        println!();
        println!("| backend | pages | first page | last pages via `next` | ratio | last page via `offset` | ratio |");
        println!("|---|---:|---:|---:|---:|---:|---:|");
        let now = chrono::Utc::now();
        let data = vec![7u8; 1024];

        // Postgres.
        let admin_url = common::database_url();
        let db = format!("ks_bench_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&admin_url).await.expect("Postgres at DATABASE_URL");
        let url = common::create_migrated_database(&mut admin, &admin_url, &db).await;
        let mut conn = PgConnection::connect(&url).await.unwrap();
        conn.execute("INSERT INTO meshes (name, version, creation_time, modification_time) VALUES ('default', 1, now(), now())")
            .await
            .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "WITH series AS (SELECT generate_series(1, {}) AS i) {}",
            args.secrets,
            SEED_SQL.replace("{name}", "lpad(i::text, 6, '0')")
        )))
        .bind(now)
        .bind(&data)
        .execute(&mut conn)
        .await
        .unwrap();
        conn.execute("VACUUM ANALYZE secrets").await.unwrap();
        conn.close().await.unwrap();
        let store = sealed_store(&url).await;
        // Sealing rewrote every row: vacuum as autovacuum would before measuring.
        let mut conn = PgConnection::connect(&url).await.unwrap();
        conn.execute("VACUUM ANALYZE secrets").await.unwrap();
        conn.close().await.unwrap();
        measure("postgres", store, &args).await;
        common::drop_database(&mut admin, &db).await;

        // SQLite.
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("bench.db").display());
        // Opening migrates the new file; the seeded rows are sealed below.
        AnyStore::open(&url, StoreOptions::allow_plaintext_secrets()).await.unwrap().close().await;
        let mut conn = SqliteConnection::connect(&url).await.unwrap();
        conn.execute("INSERT INTO meshes (name, version, creation_time, modification_time) VALUES ('default', 1, '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z')")
            .await
            .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "WITH RECURSIVE series(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM series WHERE i < {}) {}",
            args.secrets,
            SEED_SQL.replace("{name}", "substr('000000' || i, -6, 6)")
        )))
        .bind(now)
        .bind(&data)
        .execute(&mut conn)
        .await
        .unwrap();
        conn.execute("ANALYZE").await.unwrap();
        conn.close().await.unwrap();
        let store = sealed_store(&url).await;
        measure("sqlite", store, &args).await;
    });
}
