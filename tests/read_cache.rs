//! The read cache (`store::cache`), on both backends and through two real `serve`
//! processes: reads served from memory, every write of this replica seen by its next read,
//! another replica's writes seen within a bounded time, and no cached answer while the
//! change feed cannot be read.

#[macro_use]
mod common;

use common::proxy::{Proxy, upstream_of};
use common::raw::{raw_sql, store_url};
use common::server::{Backend, TestServer};
use kuma_secrets::domain::{
    Labels, MeshName, NewSecret, Resource, SecretData, SecretKey, SecretUpdate,
};
use kuma_secrets::store::cache::{CachedStore, MAX_STALENESS};
use kuma_secrets::store::{
    AnyStore, Expect, PageRequest, PageStart, SecretQuery, SecretScope, SecretStore, StoreError,
    StoreOptions,
};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn key(name: &str) -> SecretKey {
    SecretKey::parse(Some("default"), name).unwrap()
}

fn new_secret(name: &str, data: &str) -> NewSecret {
    NewSecret {
        key: key(name),
        data: SecretData::new(data.as_bytes().to_vec()).unwrap(),
        labels: Labels::default(),
    }
}

fn update(data: &str) -> SecretUpdate {
    SecretUpdate {
        data: SecretData::new(data.as_bytes().to_vec()).unwrap(),
        labels: Labels::default(),
    }
}

/// A cached store on `url` with its follower running, once it answers from memory.
async fn cached_on(url: &str) -> (CachedStore<AnyStore>, tokio::task::JoinHandle<()>) {
    let store = AnyStore::open(url, common::sealed(StoreOptions::allow_plaintext_secrets()))
        .await
        .unwrap();
    common::following_cache(store, 1000).await
}

/// Waits until the follower of `store` has applied every event up to `revision`. While the
/// cache answers, the revision it reports is the one its follower has read the feed to (when
/// it does not answer, the database's: hence the looks at `answering` around it).
async fn until_followed(store: &CachedStore<AnyStore>, revision: i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if store.answering()
            && store.current_revision().await.unwrap() >= revision
            && store.answering()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the follower never read the feed to revision {revision}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Polls `check` until it holds, failing after twice the cache's staleness bound.
async fn within_the_bound(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < MAX_STALENESS * 2,
            "{what}: not seen after {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn data_of(secret: &kuma_secrets::domain::Secret) -> String {
    String::from_utf8(secret.data.expose().to_vec()).unwrap()
}

/// A second read of a secret comes from memory (a label changed behind the store's back,
/// without a new version and so without an event, is not seen), a read that bypasses the
/// cache sees the database, and each kind of write through the cached store is seen by the
/// next read at once.
async fn own_writes_are_read_at_once(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (store, _follower) = cached_on(&store_url(&server)).await;
    store.create_secret(new_secret("a", "v1")).await.unwrap();
    // The follower has applied the create's event (which drops the secret): from here on
    // only this test's own steps change what the cache holds.
    until_followed(&store, store.inner().current_revision().await.unwrap()).await;
    assert_eq!(data_of(&store.get_secret(&key("a")).await.unwrap()), "v1");
    let before = store.stats();
    assert_eq!(data_of(&store.get_secret(&key("a")).await.unwrap()), "v1");
    assert_eq!(store.stats().hits, before.hits + 1, "{:?}", store.stats());

    raw_sql(
        &server,
        "UPDATE secrets SET labels = '{\"behind\": \"back\"}' WHERE name = 'a'",
        vec![],
    )
    .await;
    let cached = store.get_secret(&key("a")).await.unwrap();
    assert!(cached.labels.is_empty(), "served from memory");
    let fresh = store.get_secret_fresh(&key("a")).await.unwrap();
    assert_eq!(
        fresh.labels.get("behind"),
        Some("back"),
        "the bypass reads the database"
    );

    let v2 = store
        .update_secret(&key("a"), 1, update("v2"))
        .await
        .unwrap();
    assert_eq!(data_of(&store.get_secret(&key("a")).await.unwrap()), "v2");
    let put = store
        .put_secret(new_secret("a", "v3"), Expect::Version(v2.meta.version))
        .await
        .unwrap();
    assert_eq!(data_of(&store.get_secret(&key("a")).await.unwrap()), "v3");
    store
        .rollback_secret(&key("a"), 1, Some(put.value.meta.version))
        .await
        .unwrap();
    assert_eq!(data_of(&store.get_secret(&key("a")).await.unwrap()), "v1");
    store.delete_secret(&key("a"), None).await.unwrap();
    assert!(matches!(
        store.get_secret(&key("a")).await,
        Err(StoreError::NotFound(_))
    ));
    store.restore_secret(&key("a"), Some(2)).await.unwrap();
    assert_eq!(data_of(&store.get_secret(&key("a")).await.unwrap()), "v2");
    store
        .import_batch(vec![Resource::Secret(new_secret("a", "imported"))])
        .await
        .unwrap();
    assert_eq!(
        data_of(&store.get_secret(&key("a")).await.unwrap()),
        "imported"
    );
    store.purge_secret(&key("a"), None).await.unwrap();
    assert!(store.get_secret(&key("a")).await.is_err());

    store
        .create_secret(new_secret("b", "in mesh"))
        .await
        .unwrap();
    store.get_secret(&key("b")).await.unwrap();
    store
        .delete_mesh(&MeshName::parse("default").unwrap(), None)
        .await
        .unwrap();
    assert!(
        matches!(
            store.get_secret(&key("b")).await,
            Err(StoreError::NotFound(_))
        ),
        "a Mesh delete drops its secrets"
    );
}

/// Another replica (here, another store on the same database) updates a secret this one
/// has cached: the new version is read here within a bounded time. Prints the p99.
async fn another_replicas_writes_are_seen_within_the_bound(backend: Backend) {
    let server = TestServer::start(backend).await;
    let other = &server.store;
    let (store, _follower) = cached_on(&store_url(&server)).await;
    let mut version = other
        .create_secret(new_secret("shared", "0"))
        .await
        .unwrap()
        .meta
        .version;
    let mut lags = Vec::new();
    for round in 1..=30 {
        // Cached here first.
        store.get_secret(&key("shared")).await.unwrap();
        store.get_secret(&key("shared")).await.unwrap();
        let written = Instant::now();
        version = other
            .update_secret(&key("shared"), version, update(&round.to_string()))
            .await
            .unwrap()
            .meta
            .version;
        loop {
            let read = store.get_secret(&key("shared")).await.unwrap();
            if read.meta.version == version {
                assert_eq!(data_of(&read), round.to_string());
                break;
            }
            assert!(
                written.elapsed() < MAX_STALENESS * 2,
                "round {round}: version {version} not seen after {:?}",
                written.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        lags.push(written.elapsed());
    }
    lags.sort();
    let p99 = lags[lags.len() * 99 / 100];
    eprintln!(
        "{backend:?}: another replica's write seen after p50 {:?}, p99 {p99:?}, max {:?}",
        lags[lags.len() / 2],
        lags[lags.len() - 1]
    );
    assert!(store.stats().hits >= 30, "{:?}", store.stats());
}

/// A list's `total` is counted once and reused until a secret changes: at once after a
/// write here, within the bound after another replica's. A known total given to the store
/// is what it answers, even on an empty page past the end.
async fn list_totals_are_reused_until_a_secret_changes(backend: Backend) {
    let server = TestServer::start(backend).await;
    let other = &server.store;
    let (store, _follower) = cached_on(&store_url(&server)).await;
    for name in ["a", "b", "c"] {
        store.create_secret(new_secret(name, "x")).await.unwrap();
    }
    // The follower has applied the creates' events (each forgets every total): from here on
    // only this test's own steps do.
    until_followed(&store, store.inner().current_revision().await.unwrap()).await;
    let mesh = SecretScope::Mesh(MeshName::parse("default").unwrap());
    let query = SecretQuery::new(mesh.clone()).page(PageRequest::first(2).unwrap());
    assert_eq!(store.list_secrets(&query).await.unwrap().total, 3);
    let reused = store.stats().totals_reused;
    let page = store.list_secrets(&query).await.unwrap();
    assert_eq!((page.total, page.items.len()), (3, 2));
    assert_eq!(store.stats().totals_reused, reused + 1, "counted once");
    let filtered = query.clone().name_contains("a");
    assert_eq!(
        store.list_secrets(&filtered).await.unwrap().total,
        1,
        "filters count apart"
    );

    store.create_secret(new_secret("d", "x")).await.unwrap();
    assert_eq!(
        store.list_secrets(&query).await.unwrap().total,
        4,
        "own write"
    );
    other.create_secret(new_secret("e", "x")).await.unwrap();
    within_the_bound("another replica's create", async || {
        store.list_secrets(&query).await.unwrap().total == 5
    })
    .await;
    other.delete_secret(&key("e"), None).await.unwrap();
    within_the_bound("another replica's delete", async || {
        store.list_secrets(&query).await.unwrap().total == 4
    })
    .await;

    // The revision a list carries comes from the follower: never past the store's, and
    // caught up within the bound.
    let exact = other.current_revision().await.unwrap();
    assert!(store.current_revision().await.unwrap() <= exact);
    within_the_bound("the followed revision lags", async || {
        store.current_revision().await.unwrap() == exact
    })
    .await;

    let mut known = SecretQuery::new(mesh.clone());
    known.known_total = Some(42);
    assert_eq!(other.list_secrets(&known).await.unwrap().total, 42);
    let mut past_the_end =
        SecretQuery::new(mesh).page(PageRequest::new(10, PageStart::Offset(100)).unwrap());
    past_the_end.known_total = Some(42);
    let page = other.list_secrets(&past_the_end).await.unwrap();
    assert!(page.items.is_empty());
    assert_eq!(page.total, 42);
}

on_both_backends!(
    own_writes_are_read_at_once,
    another_replicas_writes_are_seen_within_the_bound,
    list_totals_are_reused_until_a_secret_changes,
);

/// Postgres goes away for the cached store (a proxy between them is cut): within
/// MAX_STALENESS (plus one poll) the cache stops answering, so a read fails as unavailable
/// instead of returning what may be stale; a write another replica makes meanwhile is read
/// as soon as the database is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_database_is_down_nothing_is_served_from_memory() {
    let server = TestServer::start(Backend::Postgres).await;
    let url = store_url(&server);
    let proxy = Proxy::start(upstream_of(&url)).await;
    let (store, _follower) = cached_on(&proxy.url_for(&url)).await;
    let v1 = server
        .store
        .create_secret(new_secret("s", "before"))
        .await
        .unwrap();
    store.get_secret(&key("s")).await.unwrap();
    assert!(store.get_secret(&key("s")).await.is_ok());

    proxy.cut();
    server
        .store
        .update_secret(&key("s"), v1.meta.version, update("during"))
        .await
        .unwrap();
    let cut = Instant::now();
    let deadline = cut + MAX_STALENESS + Duration::from_secs(1);
    loop {
        match store.get_secret(&key("s")).await {
            Err(err) => {
                assert!(err.is_retryable(), "unavailable, not {err:?}");
                break;
            }
            Ok(stale) => {
                assert_eq!(data_of(&stale), "before");
                assert!(
                    Instant::now() < deadline,
                    "still served from memory {:?} after the feed broke",
                    cut.elapsed()
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!store.answering());
    eprintln!(
        "cache stopped answering {:?} after the outage",
        cut.elapsed()
    );

    proxy.heal();
    let healed = Instant::now();
    loop {
        if let Ok(read) = store.get_secret(&key("s")).await {
            assert_eq!(data_of(&read), "during", "the write made meanwhile is read");
            break;
        }
        assert!(
            healed.elapsed() < Duration::from_secs(30),
            "never recovered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !store.answering() {
        assert!(Instant::now() < deadline, "the cache never answered again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let hits = store.stats().hits;
    store.get_secret(&key("s")).await.unwrap();
    store.get_secret(&key("s")).await.unwrap();
    assert!(store.stats().hits > hits, "served from memory again");
}

/// Two real `serve` processes on one Postgres, each with its cache: a write through one is
/// read through the other within a bounded time (p99 printed), a write through one is read
/// through the same one at once, `If-None-Match` answers 304, and `Cache-Control: no-cache`
/// reads past the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_postgres_stay_coherent() {
    let db = common::TestDb::migrated().await;
    let dir = tempfile::tempdir().unwrap();
    let replicas = common::process::spawn_replicas(&db.url, dir.path(), 2).await;
    let (a, b) = (replicas[0].1.clone(), replicas[1].1.clone());
    let client = Client::new();
    let path = "/meshes/default/secrets/tls";
    let put = |base: &str, data: &str| {
        let request = client.put(format!("{base}{path}")).json(&json!({
            "type": "Secret", "mesh": "default", "name": "tls",
            "data": common::http::b64(data),
        }));
        async move {
            let response = request.send().await.unwrap();
            assert!(response.status().is_success(), "{:?}", response.status());
            common::http::version_of(&response)
        }
    };
    let get = |base: &str| {
        let request = client.get(format!("{base}{path}"));
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            (
                common::http::version_of(&response),
                response.json::<Value>().await.unwrap(),
            )
        }
    };

    let mut last_write = put(&a, "0").await;
    let mut lags = Vec::new();
    for round in 1..=20 {
        get(&b).await;
        let written = Instant::now();
        let expected = put(&a, &round.to_string()).await;
        loop {
            let (version, body) = get(&b).await;
            if version == expected {
                assert_eq!(body["data"], common::http::b64(round.to_string()));
                break;
            }
            assert!(
                written.elapsed() < MAX_STALENESS * 2,
                "round {round} not seen through the other server"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        lags.push(written.elapsed());
        // Read-your-writes on one server: never a stale read.
        put(&b, &format!("b{round}")).await;
        let (_, body) = get(&b).await;
        assert_eq!(body["data"], common::http::b64(format!("b{round}")));
        last_write = put(&a, &round.to_string()).await;
    }
    lags.sort();
    eprintln!(
        "serve: a write through one server read through the other after p50 {:?}, p99 {:?}",
        lags[lags.len() / 2],
        lags[lags.len() * 99 / 100]
    );

    // From here on b's cache is read as it stands, so first let it settle: b's follower has
    // applied every change up to the loop's last write (made through a), and b's cache
    // holds the secret. Otherwise that write's event could reach b's follower after a read
    // below filled the cache, and drop what the rest of the test reads from memory.
    let written = revision_of_write(&a, "tls", last_write).await;
    until_followed_to(&b, written).await;
    until_a_cache_hit(&b, path).await;

    let (version, _) = get(&b).await;
    let not_modified = client
        .get(format!("{b}{path}"))
        .header("If-None-Match", format!("\"{version}\""))
        .send()
        .await
        .unwrap();
    assert_eq!(not_modified.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(not_modified.headers()["etag"], format!("\"{version}\""));
    assert!(not_modified.bytes().await.unwrap().is_empty());
    let changed = client
        .get(format!("{b}{path}"))
        .header("If-None-Match", format!("\"{}\"", version - 1))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), StatusCode::OK);

    // A change behind the servers' backs that makes no event (same version): the cache
    // keeps serving what it holds; `Cache-Control: no-cache` reads the database.
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&db.url)
        .await
        .unwrap();
    sqlx::Executor::execute(
        &mut conn,
        "UPDATE secrets SET labels = '{\"behind\": \"back\"}' WHERE name = 'tls'",
    )
    .await
    .unwrap();
    let (_, cached) = get(&b).await;
    assert!(cached["labels"].get("behind").is_none(), "{cached}");
    let fresh: Value = common::http::get_fresh(format!("{b}{path}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(fresh["labels"]["behind"], "back", "{fresh}");

    // What the cache did is in /metrics.
    let metrics = common::http::fetch_text(format!("{b}/metrics")).await;
    let hits: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"kuma_secrets_read_cache_reads_total{outcome="hit"} "#))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no cache hits in /metrics:\n{metrics}"));
    assert!(hits > 0);
    assert!(
        metrics.contains("kuma_secrets_read_cache_entries 1"),
        "{metrics}"
    );
}

/// The revision of the change that took Secret `name` (Mesh `default`) to `version`, read
/// from the change feed of the server at `base`.
async fn revision_of_write(base: &str, name: &str, version: i64) -> i64 {
    let feed = common::http::fetch_json(format!(
        "{base}/_changes?after=0&limit=1000&mesh=default&type=Secret"
    ))
    .await;
    feed["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|event| event["name"] == name && event["version"] == version)
        .and_then(|event| event["revision"].as_i64())
        .unwrap_or_else(|| panic!("no event took {name} to version {version}: {feed}"))
}

/// Polls the server at `base` until the revision its lists carry (`Kuma-Secrets-Revision`)
/// reaches `revision`. On a server with a read cache that is the revision its follower has
/// read the change feed to: every event up to it has been applied to the cache.
async fn until_followed_to(base: &str, revision: i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let response =
            common::http::send_get(format!("{base}/meshes/default/secrets?size=1")).await;
        assert_eq!(response.status(), StatusCode::OK);
        let listed: i64 = response.headers()["kuma-secrets-revision"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        if listed >= revision {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{base}'s lists still carry revision {listed}, before {revision}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The reads the read cache of the server at `base` answered from memory, from `/metrics`.
async fn cache_hits(base: &str) -> u64 {
    let metrics = common::http::fetch_text(format!("{base}/metrics")).await;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"kuma_secrets_read_cache_reads_total{outcome="hit"} "#))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Reads `path` through the server at `base` until its read cache answers one from memory
/// (its hit counter went up across the read).
async fn until_a_cache_hit(base: &str, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let before = cache_hits(base).await;
        let response = common::http::send_get(format!("{base}{path}")).await;
        assert_eq!(response.status(), StatusCode::OK);
        if cache_hits(base).await > before {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{base} never answered {path} from its read cache"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
