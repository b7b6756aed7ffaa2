//! The change feed and audit trail, on both backends: commit order without gaps under
//! writers whose transactions commit out of order, watches that survive lost connections,
//! 410 after retention, list-then-watch, long polls, two replicas, and the actor of every
//! change made through the API and the CLI.

#[macro_use]
mod common;

use common::http::{b64, fetch_json, put_json, put_plain_mesh, put_secret};
use common::process::kuma;
use common::raw::{store_tool, store_url};
use common::server::{Backend, Guard, TestServer};
use futures_util::StreamExt;
use kuma_secrets::api::ApiConfig;
use kuma_secrets::store::feed::{EventFilter, Operation};
use kuma_secrets::store::watch::{WatchOptions, watch_with};
use kuma_secrets::store::{AnyStore, SecretStore, StoreError, StoreOptions};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Every event of the feed, read to the end.
async fn all_events(store: &AnyStore) -> Vec<i64> {
    let mut revisions = Vec::new();
    let mut after = 0;
    loop {
        let page = store
            .events_after(after, 1000, &EventFilter::default())
            .await
            .unwrap();
        if page.revision == after {
            return revisions;
        }
        revisions.extend(page.events.iter().map(|e| e.revision));
        after = page.revision;
    }
}

/// Inserts a secret in a raw transaction that commits only after `delay`: a slow writer.
async fn slow_insert(server: &TestServer, name: String, delay: Duration) {
    use sqlx::{Connection, Executor};
    let data = match server.guard {
        Guard::Postgres(_) => "'x'::bytea",
        Guard::Sqlite(_) => "X'78'",
    };
    let insert = format!(
        "INSERT INTO secrets (name, mesh, version, creation_time, modification_time, labels, data) \
         VALUES ('{name}', 'default', 1, '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z', '{{}}', {data})"
    );
    match &server.guard {
        Guard::Postgres(db) => {
            let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
            let mut tx = conn.begin().await.unwrap();
            tx.execute(sqlx::AssertSqlSafe(insert)).await.unwrap();
            tokio::time::sleep(delay).await;
            tx.commit().await.unwrap();
        }
        Guard::Sqlite(dir) => {
            let url = common::sqlite_url(dir.path(), "store.db");
            let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
            conn.execute("PRAGMA busy_timeout = 30000").await.unwrap();
            let mut tx =
                sqlx::Connection::begin_with(&mut conn, sqlx::AssertSqlSafe("BEGIN IMMEDIATE"))
                    .await
                    .unwrap();
            tx.execute(sqlx::AssertSqlSafe(insert)).await.unwrap();
            tokio::time::sleep(delay / 10).await;
            tx.commit().await.unwrap();
        }
    }
}

/// 16 writers whose transactions commit after random delays, and a reader following the
/// feed meanwhile: the reader sees every event once, in one unbroken run of revisions. A
/// feed that numbered events when they were inserted would let the reader pass a slow
/// writer's revision before it committed, and never see that event.
async fn a_following_reader_misses_no_event_of_out_of_order_commits(backend: Backend) {
    let server = TestServer::start(backend).await;
    let store = server.store.clone();
    // From the start of the feed: the server's own bootstrap events are in it too, and
    // Postgres may not have numbered them yet (another transaction on the cluster can hold
    // the horizon back for a moment).
    let start = 0;
    let reader = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut after = start;
            let deadline = Instant::now() + Duration::from_secs(60);
            let writes =
                |seen: &Vec<(i64, String)>| seen.iter().filter(|(_, n)| n.starts_with('w')).count();
            while writes(&seen) < 16 * 5 && Instant::now() < deadline {
                let page = store
                    .events_after(after, 7, &EventFilter::default())
                    .await
                    .unwrap();
                seen.extend(page.events.iter().map(|e| (e.revision, e.name.clone())));
                after = page.revision;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            seen
        })
    };
    let mut writers = Vec::new();
    for w in 0..16u64 {
        let guard_server = &server;
        let delays: Vec<Duration> = (0..5u64)
            .map(|i| Duration::from_millis((w * 37 + i * 53) % 120))
            .collect();
        let names: Vec<String> = (0..5).map(|i| format!("w{w}-{i}")).collect();
        writers.push(async move {
            for (name, delay) in names.into_iter().zip(delays) {
                slow_insert(guard_server, name, delay).await;
            }
        });
    }
    futures_util::future::join_all(writers).await;
    let seen: Vec<i64> = reader.await.unwrap().into_iter().map(|(r, _)| r).collect();
    let table = all_events(&store).await;
    assert_eq!(
        table.len(),
        3 + 80,
        "the bootstrap's events and every insert's"
    );
    assert_eq!(seen, table, "the reader saw every event once, in order");
    let expected: Vec<i64> = (1..=83).collect();
    assert_eq!(table, expected, "revisions run without a gap");
}

/// Creates, updates, deletes and cascades each make one event with their actor; key
/// rotation makes none.
async fn every_change_is_an_event_with_its_actor(backend: Backend) {
    let config = ApiConfig::default();
    let server =
        TestServer::start_with(backend, config, StoreOptions::allow_plaintext_secrets()).await;
    let start = server.store.current_revision().await.unwrap();
    put_secret(&server, "default", "a", b"1").await;
    put_secret(&server, "default", "a", b"2").await;
    let (status, _) = put_plain_mesh(&server, "other").await;
    assert_eq!(status, StatusCode::CREATED);
    put_secret(&server, "other", "b", b"x").await;
    // A token's user, through a proxy (so not the local admin).
    let token = server.admin_token().await;
    let response = Client::new()
        .put(server.at("/global-secrets/g"))
        .header("x-forwarded-for", "10.0.0.1")
        .header("x-request-id", "req-42")
        .bearer_auth(&token)
        .json(&json!({"type": "GlobalSecret", "name": "g", "data": b64("g")}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.headers()["x-request-id"], "req-42");
    let response = crate::common::http::send_delete(server.at("/meshes/other")).await;
    assert_eq!(response.status(), StatusCode::OK);

    let page = server
        .store
        .events_after(start, 100, &EventFilter::default())
        .await
        .unwrap();
    let mut summary: Vec<(Operation, String, Option<String>, String, i64, String)> = page
        .events
        .iter()
        .map(|e| {
            (
                e.operation,
                e.resource_type.clone(),
                e.mesh.clone(),
                e.name.clone(),
                e.version,
                e.actor.as_ref().map(|a| a.name.clone()).unwrap_or_default(),
            )
        })
        .collect();
    let s = |op, t: &str, m: Option<&str>, n: &str, v, a: &str| {
        (
            op,
            t.to_owned(),
            m.map(str::to_owned),
            n.to_owned(),
            v,
            a.to_owned(),
        )
    };
    // A Mesh delete and the secret deletes it cascades to are one transaction: their
    // order among themselves is the database's.
    summary[5..].sort_by(|a, b| a.1.cmp(&b.1).reverse());
    assert_eq!(
        summary,
        [
            s(
                Operation::Create,
                "Secret",
                Some("default"),
                "a",
                1,
                "localhost"
            ),
            s(
                Operation::Update,
                "Secret",
                Some("default"),
                "a",
                2,
                "localhost"
            ),
            s(Operation::Create, "Mesh", None, "other", 1, "localhost"),
            s(
                Operation::Create,
                "Secret",
                Some("other"),
                "b",
                1,
                "localhost"
            ),
            s(
                Operation::Create,
                "GlobalSecret",
                None,
                "g",
                1,
                "mesh-system:admin"
            ),
            s(
                Operation::Delete,
                "Secret",
                Some("other"),
                "b",
                1,
                "localhost"
            ),
            s(Operation::Delete, "Mesh", None, "other", 1, "localhost"),
        ],
        "{:#?}",
        page.events
    );
    assert_eq!(page.events[4].request_id.as_deref(), Some("req-42"));
    let ids: std::collections::BTreeSet<_> =
        page.events.iter().map(|e| e.request_id.clone()).collect();
    assert_eq!(
        ids.len(),
        6,
        "a request id per request (the cascade shares its delete's)"
    );

    // Key rotation rewrites every row, and changes nothing anyone can see: no event.
    let before = server.store.current_revision().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("rotated.keys");
    (*common::test_keyring())
        .clone()
        .with_key("test-2", kuma_secrets::sealing::Keyring::random_key())
        .with_active("test-2")
        .save_new(&keys)
        .unwrap();
    store_tool(&server, &keys, &["rotate-keys"]).await.ok();
    assert_eq!(server.store.current_revision().await.unwrap(), before);

    // The CLI's changes carry its verb; `audit` answers who did what.
    let file = common::write_file(
        dir.path(),
        "import.yaml",
        "type: Secret\nmesh: default\nname: imported\ndata: eA==\n",
    );
    store_tool(&server, &keys, &["import", "-f", &file])
        .await
        .ok();
    let run = kuma(&["audit", "-o", "json", "--api-url", &server.url], None)
        .await
        .ok();
    let audit: Value = serde_json::from_str(&run.stdout).unwrap();
    let imported = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "imported")
        .expect("the import is in the audit trail");
    assert_eq!(imported["actor"]["name"], "cli:import");
    let run = kuma(
        &[
            "audit",
            "--actor",
            "localhost",
            "--name",
            "a",
            "--api-url",
            &server.url,
        ],
        None,
    )
    .await
    .ok();
    assert_eq!(
        run.stdout.lines().count(),
        3,
        "header and two changes: {run:?}"
    );
}

/// A list carries its revision; following the feed from it shows every change made after.
async fn list_then_watch_misses_nothing_and_long_polls_wake(backend: Backend) {
    let server = TestServer::start(backend).await;
    put_secret(&server, "default", "before", b"1").await;
    let response = crate::common::http::send_get(server.at("/meshes/default/secrets")).await;
    let revision: i64 = response.headers()["kuma-secrets-revision"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    put_secret(&server, "default", "after-1", b"1").await;
    put_secret(&server, "default", "after-2", b"1").await;
    let changes: Value = fetch_json(server.at(&format!("/_changes?after={revision}"))).await;
    let names: Vec<&str> = changes["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["after-1", "after-2"]);
    let next = changes["revision"].as_i64().unwrap();

    // A long poll answers as soon as a change commits.
    let url = server.at(&format!("/_changes?after={next}&wait=20s&mesh=default"));
    let poll = tokio::spawn(async move {
        let started = Instant::now();
        let body: Value = fetch_json(url).await;
        (started.elapsed(), body)
    });
    until_in_flight(&server, "/_changes").await;
    put_secret(&server, "default", "woke", b"1").await;
    let (waited, body) = poll.await.unwrap();
    assert_eq!(body["events"][0]["name"], "woke");
    // Answered by the change, not at the end of its 20 s wait.
    assert!(waited < Duration::from_secs(15), "{waited:?}");
    eprintln!("a long poll answered {waited:?} after it was sent");

    // Server-sent events from a revision.
    let mut sse =
        crate::common::http::send_get(server.at(&format!("/_watch?after={revision}"))).await;
    assert_eq!(sse.headers()["content-type"], "text/event-stream");
    let mut text = String::new();
    while text.matches("event: change").count() < 3 {
        let chunk = tokio::time::timeout(Duration::from_secs(30), sse.chunk())
            .await
            .expect("events arrive")
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.contains(&format!("id: {}", revision + 1)), "{text}");
    assert!(text.contains("\"name\":\"woke\""), "{text}");
}

/// Waits until `/metrics` of `server` counts a request to `route` in flight.
async fn until_in_flight(server: &TestServer, route: &str) {
    let line = format!(r#"kuma_secrets_http_requests_in_flight{{route="{route}"}} 1"#);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !common::http::fetch_text(server.at("/metrics"))
        .await
        .lines()
        .any(|l| l == line)
    {
        assert!(
            Instant::now() < deadline,
            "no request to {route} reached the server"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Retention pruned the events a reader needs: 410 Gone, naming the oldest kept.
async fn pruned_revisions_answer_410_gone(backend: Backend) {
    let server = TestServer::start(backend).await;
    for i in 0..5 {
        put_secret(&server, "default", &format!("s{i}"), b"1").await;
    }
    let pruned = server
        .store
        .prune_events(chrono::Utc::now() + chrono::Duration::seconds(5), 1000)
        .await
        .unwrap();
    assert!(pruned >= 5, "{pruned}");
    put_secret(&server, "default", "kept", b"1").await;
    assert!(matches!(
        server
            .store
            .events_after(0, 10, &EventFilter::default())
            .await,
        Err(StoreError::Gone { .. })
    ));
    let response = crate::common::http::send_get(server.at("/_changes?after=0")).await;
    assert_eq!(response.status(), StatusCode::GONE);
    let latest = server.store.current_revision().await.unwrap();
    let page = server
        .store
        .events_after(latest - 1, 10, &EventFilter::default())
        .await
        .unwrap();
    assert_eq!(page.events[0].name, "kept");
}

/// A revision beyond the feed's last can only be held from before the store was reset (a
/// restore from a backup): 410 Gone, saying so, rather than a wait that would miss every
/// change up to that revision. The last revision itself is the head: an empty page.
async fn a_revision_beyond_the_last_answers_410_gone(backend: Backend) {
    let server = TestServer::start(backend).await;
    put_secret(&server, "default", "s", b"1").await;
    let last = server.store.current_revision().await.unwrap();
    let head = server
        .store
        .events_after(last, 10, &EventFilter::default())
        .await
        .unwrap();
    assert!(head.events.is_empty());
    assert_eq!(head.revision, last);
    assert!(matches!(
        server
            .store
            .events_after(last + 1, 10, &EventFilter::default())
            .await,
        Err(StoreError::Gone { .. })
    ));
    let response =
        crate::common::http::send_get(server.at(&format!("/_changes?after={}", last + 100))).await;
    assert_eq!(response.status(), StatusCode::GONE);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["detail"].as_str().unwrap().contains("it was reset"),
        "{body}"
    );
    // The largest revision there is: the same answer, no overflow on the way.
    let response = crate::common::http::send_get(server.at(&format!(
        "/_changes?after={}&limit=1&wait=0&type=Secret",
        i64::MAX
    )))
    .await;
    assert_eq!(response.status(), StatusCode::GONE);
}

/// A long poll that asks to wait longer than the server's request timeout answers, empty,
/// before the timeout would cut it off with a 503.
#[tokio::test]
async fn a_long_poll_answers_before_the_request_timeout() {
    // The poll waits nine tenths of the timeout, then reads the feed once more and answers
    // within the last tenth: 500 ms here, room enough on a loaded machine.
    let config = ApiConfig {
        request_timeout: Duration::from_secs(5),
        ..ApiConfig::default()
    };
    let server = TestServer::start_with(
        Backend::Sqlite,
        config,
        StoreOptions::allow_plaintext_secrets(),
    )
    .await;
    let revision = server.store.current_revision().await.unwrap();
    let started = Instant::now();
    let response =
        crate::common::http::send_get(server.at(&format!("/_changes?after={revision}&wait=50s")))
            .await;
    let waited = started.elapsed();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["events"], json!([]));
    assert_eq!(body["revision"], json!(revision));
    // It did wait (nine tenths of the timeout), and the 200 says it beat the timeout.
    assert!(waited >= Duration::from_millis(4400), "waited {waited:?}");
}

on_both_backends! {
    a_following_reader_misses_no_event_of_out_of_order_commits,
    every_change_is_an_event_with_its_actor,
    list_then_watch_misses_nothing_and_long_polls_wake,
    pruned_revisions_answer_410_gone,
    a_revision_beyond_the_last_answers_410_gone,
}

/// A watch keeps going when Postgres drops every connection (a restart, a failover),
/// resuming from its last revision: nothing is lost or repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_survives_postgres_dropping_its_connections() {
    let server = TestServer::start(Backend::Postgres).await;
    let Guard::Postgres(db) = &server.guard else {
        unreachable!()
    };
    let start = server.store.current_revision().await.unwrap();
    let mut watch = Box::pin(kuma_secrets::store::watch::watch(
        server.store.clone(),
        start,
        EventFilter::default(),
    ));
    for i in 0..3 {
        put_secret(&server, "default", &format!("before-{i}"), b"1").await;
    }
    let mut names = Vec::new();
    while names.len() < 3 {
        names.push(watch.next().await.unwrap().unwrap().name);
    }
    // Every backend of the test database is terminated, as a restart would.
    {
        use sqlx::{Connection, Executor};
        let mut admin = sqlx::PgConnection::connect(&common::database_url())
            .await
            .unwrap();
        let name = db.url.rsplit('/').next().unwrap().to_owned();
        admin
            .execute(sqlx::AssertSqlSafe(format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()"
            )))
            .await
            .unwrap();
    }
    for i in 0..3 {
        // The first write after the drop may find a dead pooled connection: retry it.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, _) = put_json(
                &server,
                &format!("/meshes/default/secrets/after-{i}"),
                json!({"type": "Secret", "mesh": "default", "name": format!("after-{i}"), "data": b64("1")}),
            )
            .await;
            if status.is_success() {
                break;
            }
            assert!(Instant::now() < deadline, "{status}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    while names.len() < 6 {
        let next = tokio::time::timeout(Duration::from_secs(30), watch.next())
            .await
            .expect("the watch goes on")
            .unwrap()
            .unwrap();
        names.push(next.name);
    }
    assert_eq!(
        names,
        [
            "before-0", "before-1", "before-2", "after-0", "after-1", "after-2"
        ]
    );
}

/// An event written through one replica reaches a watcher on another, on one Postgres,
/// within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_on_one_replica_reaches_a_watcher_on_another_within_a_second() {
    let first = TestServer::start(Backend::Postgres).await;
    let url = store_url(&first);
    let store = AnyStore::open(
        &url,
        common::sealed(StoreOptions::allow_plaintext_secrets()),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let second = TestServer::start_on(store, Guard::Sqlite(dir), ApiConfig::default()).await;
    let after = second.store.current_revision().await.unwrap();
    let poll_url = second.at(&format!("/_changes?after={after}&wait=10s"));
    let poll = tokio::spawn(async move {
        let body: Value = fetch_json(poll_url).await;
        (Instant::now(), body)
    });
    until_in_flight(&second, "/_changes").await;
    put_secret(&first, "default", "cross", b"1").await;
    // From the commit (the PUT's answer), not from when the PUT was sent.
    let written = Instant::now();
    let (seen, body) = poll.await.unwrap();
    assert_eq!(body["events"][0]["name"], "cross");
    let latency = seen.saturating_duration_since(written);
    eprintln!("a change through one replica reached a watcher on another after {latency:?}");
    assert!(latency < Duration::from_secs(1), "{latency:?}");
}

/// A watch that would poll only once an hour still sees a write made through another store
/// on the same Postgres (another replica): the store LISTENs for the NOTIFY the events
/// trigger sends at commit. Nothing else could wake it within the test's limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_is_woken_by_another_replicas_commit() {
    let server = TestServer::start(Backend::Postgres).await;
    let url = store_url(&server);
    let other = AnyStore::open(
        &url,
        common::sealed(StoreOptions::allow_plaintext_secrets()),
    )
    .await
    .unwrap();
    let start = server.store.current_revision().await.unwrap();
    let signal = server.store.change_signal().unwrap();
    let mut events = watching(server.store.clone(), start);
    until_listening(&url).await;
    for i in 0..3 {
        // The watch has read the feed to its end and waits (an hour, unless woken).
        until_parked(&signal).await;
        other
            .create_secret(new_secret(&format!("w{i}")))
            .await
            .unwrap();
        let name = tokio::time::timeout(Duration::from_secs(60), events.recv())
            .await
            .expect("the watch was not woken by the other store's commit (LISTEN/NOTIFY)")
            .unwrap();
        assert_eq!(name, format!("w{i}"));
    }
}

/// The names of the events after `start` a watch that polls once an hour delivers.
fn watching(store: AnyStore, start: i64) -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    let options = WatchOptions::default().poll(Duration::from_secs(3600));
    tokio::spawn(async move {
        let mut watch = Box::pin(watch_with(store, start, EventFilter::default(), options));
        while let Some(event) = watch.next().await {
            if sender.send(event.unwrap().name).is_err() {
                return;
            }
        }
    });
    receiver
}

/// Waits until a watcher waits on `signal`.
async fn until_parked(signal: &kuma_secrets::store::feed::ChangeSignal) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while signal.parked() == 0 {
        assert!(Instant::now() < deadline, "the watch never waited");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn new_secret(name: &str) -> kuma_secrets::domain::NewSecret {
    kuma_secrets::domain::NewSecret {
        key: kuma_secrets::domain::SecretKey::parse(Some("default"), name).unwrap(),
        data: kuma_secrets::domain::SecretData::new(b"1".to_vec()).unwrap(),
        labels: Default::default(),
    }
}

/// Waits until a session on `url`'s database LISTENs on the change channel.
async fn until_listening(url: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (listeners,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND query LIKE 'LISTEN %kuma_secrets_changes%'",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        if listeners > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "no store ever LISTENed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A watch on SQLite (no other process writes there) is woken at once by the store's own
/// writes: with an hour's poll, nothing else could wake it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_is_woken_by_its_own_stores_writes() {
    let server = TestServer::start(Backend::Sqlite).await;
    let start = server.store.current_revision().await.unwrap();
    let signal = server.store.change_signal().unwrap();
    let mut events = watching(server.store.clone(), start);
    for i in 0..3 {
        until_parked(&signal).await;
        server
            .store
            .create_secret(new_secret(&format!("own{i}")))
            .await
            .unwrap();
        let name = tokio::time::timeout(Duration::from_secs(60), events.recv())
            .await
            .expect("the watch was not woken by its store's own write")
            .unwrap();
        assert_eq!(name, format!("own{i}"));
    }
}
