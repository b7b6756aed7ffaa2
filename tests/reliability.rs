//! Faults, tried on the real binary against a throwaway Postgres of the test's own
//! (`common::cluster`): the database stopped (fast shutdown) and crashed (`kill -9` of the
//! postmaster) under load. Every answer during the outage is a 503 with `Retry-After`
//! (never a 500, never a hang past the request timeout), `/readyz` turns 503 within 2 s, the
//! service recovers by itself within 2 s of Postgres accepting connections again, every
//! acknowledged write is there afterwards, and the change feed has no gap. And `serve`
//! itself killed (`kill -9`) under 8 concurrent writers, 5 rounds on each backend: every
//! acknowledged write is there after a restart.

#[macro_use]
mod common;

use common::cluster::Cluster;
use common::http::{get_fresh, send_get};
use common::process::{kuma, serve_sealed, spawn_serve};
use common::server::Backend;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `serve --request-timeout`.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// What the load saw.
#[derive(Default)]
struct Seen {
    /// How long an answer may take before it is a problem (the server's request timeout,
    /// with room for a loaded machine).
    answer_within: Duration,
    /// Acknowledged creates: name → version.
    acked: BTreeMap<String, i64>,
    /// Answers by status.
    statuses: BTreeMap<u16, u64>,
    /// Problems: a 500, a 503 without Retry-After, an answer later than `answer_within`.
    problems: Vec<String>,
    /// When a write last succeeded.
    last_write: Option<Instant>,
}

fn record(seen: &Mutex<Seen>, what: &str, started: Instant, response: &reqwest::Response) {
    let mut seen = seen.lock().unwrap();
    let status = response.status();
    *seen.statuses.entry(status.as_u16()).or_default() += 1;
    let took = started.elapsed();
    if took > seen.answer_within {
        seen.problems
            .push(format!("{what}: answered after {took:?}"));
    }
    if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
        seen.problems.push(format!("{what}: {status}"));
    }
    if status == StatusCode::SERVICE_UNAVAILABLE && !response.headers().contains_key("retry-after")
    {
        seen.problems
            .push(format!("{what}: 503 without Retry-After"));
    }
}

/// Writers creating new secrets and readers reading one and listing, until `stop`.
fn start_load(
    base: &str,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let client = Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let mut tasks = Vec::new();
    for writer in 0..4 {
        let (client, base, seen, stop) =
            (client.clone(), base.to_owned(), seen.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("w-{writer}-{i}");
                i += 1;
                let started = Instant::now();
                let Ok(response) = client
                    .put(format!("{base}/meshes/default/secrets/{name}"))
                    .json(&json!({"type": "Secret", "mesh": "default", "name": name,
                                  "data": common::http::b64(&name)}))
                    .send()
                    .await
                else {
                    seen.lock()
                        .unwrap()
                        .problems
                        .push(format!("PUT {name}: no answer"));
                    continue;
                };
                record(&seen, &format!("PUT {name}"), started, &response);
                if response.status().is_success() {
                    let version: i64 = response.headers()["etag"]
                        .to_str()
                        .unwrap()
                        .trim_matches('"')
                        .parse()
                        .unwrap();
                    let mut seen = seen.lock().unwrap();
                    seen.acked.insert(name, version);
                    seen.last_write = Some(Instant::now());
                } else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    for reader in 0..2 {
        let (client, base, seen, stop) =
            (client.clone(), base.to_owned(), seen.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let path = if reader == 0 {
                "/meshes/default/secrets/seed"
            } else {
                "/meshes/default/secrets?size=10"
            };
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                match client.get(format!("{base}{path}")).send().await {
                    Ok(response) => {
                        let ok = response.status().is_success();
                        record(&seen, &format!("GET {path}"), started, &response);
                        if !ok {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                    Err(e) => seen
                        .lock()
                        .unwrap()
                        .problems
                        .push(format!("GET {path}: {e}")),
                }
            }
        }));
    }
    tasks
}

/// Waits until the load has written and read: some writes acknowledged and 20 answers.
async fn until_the_load_runs(seen: &Mutex<Seen>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        {
            let seen = seen.lock().unwrap();
            if !seen.acked.is_empty() && seen.statuses.values().sum::<u64>() >= 20 {
                return;
            }
        }
        assert!(Instant::now() < deadline, "the load never got going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `serve` at `base` has committed writes in batches of two or more (group
/// commit), as `/metrics` counts them: the faults that follow then hit the batched path.
async fn until_writes_are_batched(base: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = common::http::fetch_text(format!("{base}/metrics")).await;
        let batched = metrics
            .lines()
            .find_map(|line| line.strip_prefix("kuma_secrets_store_batched_writes_total "))
            .map_or(0.0, |value| value.trim().parse::<f64>().unwrap());
        if batched > 0.0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no writes were committed in batches"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How long until `/readyz` answers `want`.
async fn until_ready_is(base: &str, want: StatusCode, limit: Duration) -> Duration {
    let client = Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let started = Instant::now();
    loop {
        if let Ok(response) = client.get(format!("{base}/readyz")).send().await
            && response.status() == want
        {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "/readyz never answered {want} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `/readyz` is 200 (the primary serves) and its body says `text`, at most 30 s.
async fn until_ready_says(base: &str, text: &str) {
    let started = Instant::now();
    loop {
        let response = Client::new()
            .get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body = response.text().await.unwrap();
        assert_eq!(status, StatusCode::OK, "the primary still serves: {body}");
        if body.contains(text) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{text:?} never said: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A throwaway primary with this store's schema, and a hot standby streaming from it.
async fn migrated_primary_with_standby() -> (Cluster, Cluster) {
    let primary = Cluster::start();
    kuma(&["migrate", "up", "--store", &primary.url], None)
        .await
        .ok();
    let standby = Cluster::standby_of(&primary);
    (primary, standby)
}

/// How long after `since` until a write succeeds again.
async fn until_writes_succeed(seen: &Mutex<Seen>, since: Instant, limit: Duration) -> Duration {
    loop {
        if let Some(last) = seen.lock().unwrap().last_write
            && last > since
        {
            return last.duration_since(since);
        }
        assert!(
            since.elapsed() < limit,
            "no write succeeded within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_and_crashed_under_load() {
    let cluster = Cluster::start();
    kuma(&["migrate", "up", "--store", &cluster.url], None)
        .await
        .ok();
    let dir = tempfile::tempdir().unwrap();
    let timeout = format!("{}s", REQUEST_TIMEOUT.as_secs());
    let (_serve, base, _log) =
        serve_sealed(&cluster.url, dir.path(), &["--request-timeout", &timeout]).await;
    common::http::put_secret_at(&base, "default", "seed", b"seed").await;

    let seen = Arc::new(Mutex::new(Seen {
        answer_within: REQUEST_TIMEOUT + Duration::from_millis(1500),
        ..Seen::default()
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(&base, seen.clone(), stop.clone());
    until_the_load_runs(&seen).await;
    until_writes_are_batched(&base).await;

    let mut report = Vec::new();
    for (fault, crash) in [
        ("fast shutdown", false),
        ("kill -9 of the postmaster", true),
    ] {
        let before = seen.lock().unwrap().acked.len();
        if crash {
            cluster.kill_postmaster();
        } else {
            cluster.stop_fast();
        }
        let down = until_ready_is(
            &base,
            StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_secs(2),
        )
        .await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        cluster.start_again();
        let back = Instant::now();
        let ready = until_ready_is(&base, StatusCode::OK, Duration::from_secs(2)).await;
        let writing = until_writes_succeed(&seen, back, Duration::from_secs(2)).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let after = seen.lock().unwrap().acked.len();
        report.push(format!(
            "{fault}: /readyz 503 after {down:?}; Postgres back: /readyz 200 after {ready:?}, \
             writes after {writing:?}; {} writes acknowledged around it",
            after - before
        ));
    }
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let seen = Arc::try_unwrap(seen).ok().unwrap().into_inner().unwrap();
    for line in &report {
        eprintln!("{line}");
    }
    eprintln!("answers by status: {:?}", seen.statuses);
    assert!(
        seen.problems.is_empty(),
        "{} problems, first: {:?}\n{}",
        seen.problems.len(),
        &seen.problems[..seen.problems.len().min(5)],
        cluster.log()
    );
    assert!(
        seen.statuses.get(&503).copied().unwrap_or(0) > 0,
        "the outage was never seen: {:?}",
        seen.statuses
    );

    // Every acknowledged write is there, at its acknowledged version.
    for (name, version) in &seen.acked {
        let response = get_fresh(format!("{base}/meshes/default/secrets/{name}")).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "acknowledged {name} is gone"
        );
        assert_eq!(
            response.headers()["etag"],
            format!("\"{version}\"").as_str()
        );
    }

    // The change feed: revisions without a gap, a create for every acknowledged write.
    let mut after = 0;
    let mut created = std::collections::BTreeSet::new();
    loop {
        let body: Value =
            common::http::fetch_json(format!("{base}/_changes?after={after}&limit=1000")).await;
        let events = body["events"].as_array().unwrap();
        if events.is_empty() {
            break;
        }
        for event in events {
            let revision = event["revision"].as_i64().unwrap();
            assert_eq!(
                revision,
                after + 1,
                "a gap in the change feed after {after}"
            );
            after = revision;
            if event["operation"] == "create" {
                created.insert(event["name"].as_str().unwrap().to_owned());
            }
        }
    }
    for name in seen.acked.keys() {
        assert!(
            created.contains(name),
            "no create event for acknowledged {name}"
        );
    }
    eprintln!(
        "{} acknowledged writes all present; change feed 1..={after} without a gap",
        seen.acked.len()
    );
}

/// `kill -9` of `serve` while 8 writers update their own secrets (blind PUTs, committed in
/// batches: group commit), 5 rounds:
/// after each restart every secret is at least at the version its last acknowledged write
/// returned (one more when a write committed but its answer was lost with the process).
async fn serve_killed_under_writers_loses_no_acknowledged_write(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let keys = common::test_keyring_file(dir.path());
    let _db;
    let store = match backend {
        Backend::Postgres => {
            let db = common::TestDb::migrated().await;
            let url = db.url.clone();
            _db = Some(db);
            url
        }
        Backend::Sqlite => {
            _db = None;
            common::sqlite_url(dir.path(), "store.db")
        }
    };
    let args = [
        "--store",
        store.as_str(),
        "--encryption-keys",
        keys.to_str().unwrap(),
    ];
    let acked: Arc<Mutex<BTreeMap<String, i64>>> = Arc::default();
    let mut checked = 0;
    for round in 1..=5 {
        let (mut serve, base, _log) = spawn_serve(&args, dir.path());
        common::server::wait_ready(&base).await;
        // What the previous round acknowledged survived the kill.
        let previous = acked.lock().unwrap().clone();
        for (name, version) in previous {
            let response = send_get(format!("{base}/meshes/default/secrets/{name}")).await;
            assert_eq!(
                response.status(),
                StatusCode::OK,
                "round {round}: {name} is gone"
            );
            let stored: i64 = response.headers()["etag"]
                .to_str()
                .unwrap()
                .trim_matches('"')
                .parse()
                .unwrap();
            assert!(
                stored == version || stored == version + 1,
                "round {round}: {name} acknowledged at {version}, stored at {stored}"
            );
            checked += 1;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let acked_this_round: Arc<Mutex<std::collections::BTreeSet<String>>> = Arc::default();
        let mut writers = Vec::new();
        for writer in 0..8 {
            let (base, acked, stop) = (base.clone(), acked.clone(), stop.clone());
            let acked_this_round = acked_this_round.clone();
            writers.push(tokio::spawn(async move {
                let client = Client::new();
                let name = format!("k-{writer}");
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let sent = client
                        .put(format!("{base}/meshes/default/secrets/{name}"))
                        .json(&json!({"type": "Secret", "mesh": "default", "name": name,
                                      "data": common::http::b64(format!("{i}"))}))
                        .send()
                        .await;
                    let Ok(response) = sent else { break }; // the server is gone
                    if let Some(tag) = response.headers().get("etag") {
                        let version = tag.to_str().unwrap().trim_matches('"').parse().unwrap();
                        acked.lock().unwrap().insert(name.clone(), version);
                        acked_this_round.lock().unwrap().insert(name.clone());
                    }
                }
            }));
        }
        // Killed once every writer has had a write acknowledged this round; they keep
        // writing, so writes are in flight when it comes.
        let deadline = Instant::now() + Duration::from_secs(30);
        while acked_this_round.lock().unwrap().len() < 8 {
            assert!(
                Instant::now() < deadline,
                "round {round}: not every writer had a write acknowledged"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        until_writes_are_batched(&base).await;
        serve.kill().unwrap(); // SIGKILL
        serve.wait().unwrap();
        stop.store(true, Ordering::Relaxed);
        for writer in writers {
            writer.await.unwrap();
        }
    }
    assert!(
        checked >= 8 * 4,
        "only {checked} acknowledged versions were checked"
    );
}

on_both_backends!(serve_killed_under_writers_loses_no_acknowledged_write);

/// A test that needs Postgres and finds one (what the next test runs in a child process).
#[tokio::test]
async fn a_test_database_is_reachable() {
    let db = common::TestDb::migrated().await;
    let store = kuma_secrets::store::PostgresStore::open(
        &db.url,
        common::sealed(kuma_secrets::store::StoreOptions::allow_plaintext_secrets()),
    )
    .await
    .unwrap();
    kuma_secrets::store::SecretStore::ping(&store)
        .await
        .unwrap();
}

/// With `DATABASE_URL` unset and nothing answering on the default address, the suite starts
/// a throwaway cluster from the local binaries (and says so), and it is gone after the run.
#[test]
fn without_a_running_postgres_the_suite_starts_its_own() {
    let nothing_there = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port(); // bound, then released: nothing listens there
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "a_test_database_is_reachable", "--nocapture"])
        .env_remove("DATABASE_URL")
        .env("KUMA_SECRETS_TEST_PG_PORT", nothing_there.to_string())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("1 passed"), "{stdout}");
    let said = stderr
        .lines()
        .find(|l| l.contains("throwaway cluster at"))
        .unwrap_or_else(|| panic!("the run did not say it started a cluster:\n{stderr}"));
    let port: u16 = said
        .split("127.0.0.1:")
        .nth(2)
        .and_then(|rest| rest.split('/').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {said:?}"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the throwaway cluster outlived its run"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A stopped cluster whose port another process took meanwhile: the restart waits for
/// the port (its clients know it) and then starts, where it used to fail at once; the log
/// of the refused start is what tells it apart from any other failure.
#[test]
fn a_restart_waits_for_its_port_when_another_process_holds_it() {
    let cluster = Cluster::start();
    cluster.stop_fast();
    let squatter = std::net::TcpListener::bind(("127.0.0.1", cluster.port))
        .expect("the stopped cluster's port is free");
    std::thread::scope(|scope| {
        let restart = scope.spawn(|| cluster.start_again());
        // Release the port only once a start has been refused for it.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !cluster.log().contains("could not bind") {
            assert!(
                !restart.is_finished(),
                "start_again returned while the port was taken:\n{}",
                cluster.log()
            );
            assert!(
                Instant::now() < deadline,
                "no start was refused for the port:\n{}",
                cluster.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(squatter);
        restart
            .join()
            .expect("the restart succeeds once the port is free");
    });
    assert_eq!(cluster.psql("SELECT 1"), "1");
}

/// Three `serve` processes on one Postgres: If-Match increments spread over all three lose
/// no increment; blind PUTs end at version = accepted writes + 1; a Mesh deleted through one
/// while the others create secrets in it leaves no orphan; every replica's change feed is
/// the same sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_on_one_postgres_lose_nothing() {
    let db = common::TestDb::migrated().await;
    let dir = tempfile::tempdir().unwrap();
    let replicas = common::process::spawn_replicas(&db.url, dir.path(), 3).await;
    let bases: Vec<String> = replicas.iter().map(|(_, base)| base.clone()).collect();
    let client = Client::new();
    let put = |base: &str, mesh: &str, name: &str, if_match: Option<i64>| {
        let mut request = client
            .put(format!("{base}/meshes/{mesh}/secrets/{name}"))
            .json(&json!({"type": "Secret", "mesh": mesh, "name": name, "data": "eA=="}));
        if let Some(version) = if_match {
            request = request.header("If-Match", format!("\"{version}\""));
        }
        request.send()
    };
    let version_of = common::http::version_of;
    common::http::put_secret_at(&bases[0], "default", "counter", b"0").await;
    common::http::put_secret_at(&bases[0], "default", "blind", b"0").await;

    // 6 workers, two per replica: If-Match increments of `counter` (re-read on 412) and
    // blind PUTs of `blind`.
    let increments = Arc::new(Mutex::new(0u64));
    let blind_accepted = Arc::new(Mutex::new(0u64));
    let mut workers = Vec::new();
    for worker in 0..6 {
        let base = bases[worker % 3].clone();
        let (client, increments, blind_accepted) =
            (client.clone(), increments.clone(), blind_accepted.clone());
        workers.push(tokio::spawn(async move {
            for _ in 0..25 {
                loop {
                    let current = get_fresh(format!("{base}/meshes/default/secrets/counter")).await;
                    let version: i64 = current.headers()["etag"]
                        .to_str()
                        .unwrap()
                        .trim_matches('"')
                        .parse()
                        .unwrap();
                    let response = client
                        .put(format!("{base}/meshes/default/secrets/counter"))
                        .header("If-Match", format!("\"{version}\""))
                        .json(
                            &json!({"type": "Secret", "mesh": "default", "name": "counter",
                                      "data": common::http::b64(format!("{}", version + 1))}),
                        )
                        .send()
                        .await
                        .unwrap();
                    match response.status() {
                        StatusCode::OK => {
                            *increments.lock().unwrap() += 1;
                            break;
                        }
                        StatusCode::PRECONDITION_FAILED => continue,
                        other => panic!("If-Match PUT: {other}"),
                    }
                }
                let response = client
                    .put(format!("{base}/meshes/default/secrets/blind"))
                    .json(
                        &json!({"type": "Secret", "mesh": "default", "name": "blind",
                                  "data": "eA=="}),
                    )
                    .send()
                    .await
                    .unwrap();
                assert!(
                    response.status().is_success(),
                    "blind PUT: {}",
                    response.status()
                );
                *blind_accepted.lock().unwrap() += 1;
            }
        }));
    }
    for worker in workers {
        worker.await.unwrap();
    }
    let counter = put(&bases[1], "default", "counter", Some(1)).await.unwrap();
    let detail: Value = counter.json().await.unwrap();
    let increments = *increments.lock().unwrap();
    assert!(
        detail["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("\"{}\"", increments + 1)),
        "counter should be at {} after {increments} increments: {detail}",
        increments + 1
    );
    let blind = get_fresh(format!("{}/meshes/default/secrets/blind", bases[2])).await;
    let blind_accepted = *blind_accepted.lock().unwrap();
    assert_eq!(version_of(&blind) as u64, blind_accepted + 1);

    // A Mesh deleted through one replica while the other two create secrets in it.
    let created = client
        .put(format!("{}/meshes/doomed", bases[0]))
        .json(&json!({"type": "Mesh", "name": "doomed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let mut creators = Vec::new();
    let mut created_so_far = Vec::new();
    for (creator, base) in bases.iter().enumerate().skip(1) {
        let base = base.clone();
        let client = client.clone();
        let created = Arc::new(std::sync::atomic::AtomicU64::new(0));
        created_so_far.push(created.clone());
        creators.push(tokio::spawn(async move {
            // Until the Mesh is gone: the delete lands in the middle of the creates.
            for i in 0..5000 {
                let response = client
                    .put(format!("{base}/meshes/doomed/secrets/c-{creator}-{i}"))
                    .json(&json!({"type": "Secret", "mesh": "doomed",
                                  "name": format!("c-{creator}-{i}"), "data": "eA=="}))
                    .send()
                    .await
                    .unwrap();
                let status = response.status();
                assert!(
                    status.is_success() || status == StatusCode::NOT_FOUND,
                    "create in a Mesh being deleted: {status}"
                );
                if status == StatusCode::NOT_FOUND {
                    return i;
                }
                created.fetch_add(1, Ordering::Relaxed);
            }
            panic!("the Mesh was never deleted")
        }));
    }
    // The delete goes once each creator has created in the Mesh, and lands among creates.
    let deadline = Instant::now() + Duration::from_secs(30);
    while created_so_far
        .iter()
        .any(|created| created.load(Ordering::Relaxed) == 0)
    {
        assert!(Instant::now() < deadline, "the creators never created");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let deleted = client
        .delete(format!("{}/meshes/doomed", bases[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::OK);
    for creator in creators {
        let created_before_the_delete = creator.await.unwrap();
        assert!(
            created_before_the_delete > 0,
            "the delete came before any create"
        );
    }
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&db.url)
        .await
        .unwrap();
    let (orphans,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM secrets s WHERE s.mesh IS NOT NULL \
         AND NOT EXISTS (SELECT 1 FROM meshes m WHERE m.name = s.mesh)",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(orphans, 0, "secrets left without their Mesh");
    let meshes: Value = common::http::fetch_json(format!("{}/meshes/doomed", bases[1])).await;
    assert_eq!(meshes["title"], "Could not retrieve a resource", "{meshes}");

    // Every replica's change feed: the same sequence.
    let mut feeds = Vec::new();
    for base in &bases {
        let mut after = 0;
        let mut feed = Vec::new();
        loop {
            let body: Value =
                common::http::fetch_json(format!("{base}/_changes?after={after}&limit=1000")).await;
            let events = body["events"].as_array().unwrap().clone();
            if events.is_empty() {
                break;
            }
            for event in events {
                after = event["revision"].as_i64().unwrap();
                feed.push((
                    after,
                    event["operation"].as_str().unwrap().to_owned(),
                    event["name"].as_str().unwrap().to_owned(),
                    event["version"].as_i64().unwrap(),
                ));
            }
        }
        feeds.push(feed);
    }
    assert!(feeds[0].len() as u64 >= increments + blind_accepted);
    assert_eq!(feeds[0], feeds[1]);
    assert_eq!(feeds[0], feeds[2]);
}

/// The embedded store shared by `serve` under load and the store tools run beside it
/// (`import`, `export`, `rotate-keys`): no client sees an error (`database is locked` or
/// any 5xx), every tool run succeeds, and nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_tools_beside_a_loaded_server() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::sqlite_url(dir.path(), "kuma-secrets.db");
    let (_serve, base, _log) = spawn_serve(&["--store", &store], dir.path());
    common::server::wait_ready(&base).await;
    common::http::put_secret_at(&base, "default", "seed", b"seed").await;
    let file = dir.path().join("import.yaml");
    let documents: Vec<String> = (0..1000)
        .map(|i| format!("type: Secret\nmesh: default\nname: imported-{i}\ndata: eA==\n"))
        .collect();
    std::fs::write(&file, documents.join("---\n")).unwrap();

    // No --request-timeout here (30 s by default), and the claim is no error and no loss,
    // not latency: the bound only tells a hang apart from a slow answer on a loaded machine.
    let seen = Arc::new(Mutex::new(Seen {
        answer_within: Duration::from_secs(10),
        ..Seen::default()
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(&base, seen.clone(), stop.clone());
    let export = dir.path().join("export.yaml");
    let runs = [
        vec!["import", "-f", file.to_str().unwrap(), "--batch-size", "50"],
        vec!["export", "-o", export.to_str().unwrap()],
        vec!["rotate-keys"],
        vec!["import", "-f", file.to_str().unwrap()],
    ];
    for args in runs.iter().chain(runs.iter()) {
        let mut all = args.clone();
        all.extend(["--store", &store]);
        kuma(&all, None).await.ok();
    }
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let seen = Arc::try_unwrap(seen).ok().unwrap().into_inner().unwrap();
    eprintln!("answers while the tools ran: {:?}", seen.statuses);
    assert!(
        seen.statuses.values().sum::<u64>() > 200,
        "too little load: {:?}",
        seen.statuses
    );
    let errors: u64 = seen
        .statuses
        .iter()
        .filter(|(status, _)| **status >= 500)
        .map(|(_, count)| count)
        .sum();
    assert_eq!(
        errors,
        0,
        "answers by status: {:?}, {:?}",
        seen.statuses,
        &seen.problems[..seen.problems.len().min(3)]
    );
    assert!(
        seen.problems.is_empty(),
        "{:?}",
        &seen.problems[..seen.problems.len().min(3)]
    );
    assert!(!seen.acked.is_empty());
    let client = Client::new();
    for (name, version) in &seen.acked {
        let response = client
            .get(format!("{base}/meshes/default/secrets/{name}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{name} is gone");
        assert_eq!(
            response.headers()["etag"],
            format!("\"{version}\"").as_str()
        );
    }
    let listed: Value = common::http::fetch_json(format!(
        "{base}/meshes/default/secrets?size=1&name=imported-"
    ))
    .await;
    assert_eq!(listed["total"], 1000);
}

/// `serve --read-replica` on a real hot standby of a throwaway primary: reads go to the
/// standby (a change made on the primary behind the server's back while the standby's
/// replay is paused is not seen; `Cache-Control: no-cache` reads the primary), a client
/// reads its own write at once even while the standby is behind, and a standby that lags
/// past `--max-replica-lag` or is down is reported in `/readyz` (still 200) while reads go
/// to the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_to_a_standby_but_never_older_than_the_servers_own_writes() {
    let (primary, standby) = migrated_primary_with_standby().await;
    let dir = tempfile::tempdir().unwrap();
    let keys = common::test_keyring_file(dir.path());
    let (_serve, base, _log) = spawn_serve(
        &[
            "--store",
            &primary.url,
            "--read-replica",
            &standby.url,
            "--max-replica-lag",
            "2s",
            "--cache-entries",
            "0",
            "--encryption-keys",
            keys.to_str().unwrap(),
        ],
        dir.path(),
    );
    common::server::wait_ready(&base).await;
    let read = async |fresh: bool| -> Value {
        let url = format!("{base}/meshes/default/secrets/s");
        let response = if fresh {
            get_fresh(url).await
        } else {
            send_get(url).await
        };
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.unwrap()
    };

    common::http::put_secret_at(&base, "default", "s", b"v1").await;
    assert_eq!(
        read(false).await["data"],
        common::http::b64("v1"),
        "own write, at once"
    );
    // Reads come from the standby: a change made on the primary behind the server's back
    // while the standby's replay is paused is not seen (WAL written after the pause is not
    // replayed). The standby serves a read only while the monitor's last look at it, taken
    // before the pause, is within --max-replica-lag and past the server's own write: on a
    // loaded machine the read may come too late, or that look before the write, and rightly
    // go to the primary. Then replay resumes and the round is tried again with a new value.
    let deadline = Instant::now() + Duration::from_secs(60);
    for round in 1.. {
        until_ready_says(&base, "read replica: in use").await;
        // Time for the monitor to look at the standby again: not what the round relies on
        // (a look that came too early only costs a round).
        tokio::time::sleep(Duration::from_millis(500)).await;
        standby.psql("SELECT pg_wal_replay_pause()");
        let behind = format!("back-{round}");
        primary.psql(&format!(
            "UPDATE secrets SET labels = '{{\"behind\": \"{behind}\"}}' WHERE name = 's'"
        ));
        let from_standby = read(false).await["labels"]["behind"] != behind.as_str();
        assert_eq!(
            read(true).await["labels"]["behind"],
            behind.as_str(),
            "no-cache reads the primary"
        );
        if from_standby {
            eprintln!("a read came from the paused standby in round {round}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "in {round} rounds, no read came from the standby"
        );
        standby.psql("SELECT pg_wal_replay_resume()");
    }

    common::http::put_secret_at(&base, "default", "s", b"v2").await;
    assert_eq!(
        read(false).await["data"],
        common::http::b64("v2"),
        "a client's own write, while the standby is behind"
    );
    // Paused past --max-replica-lag: reported, and reads keep going to the primary.
    until_ready_says(&base, "lagging more than 2s").await;
    assert_eq!(read(false).await["data"], common::http::b64("v2"));
    standby.psql("SELECT pg_wal_replay_resume()");
    until_ready_says(&base, "read replica: in use").await;

    standby.stop_fast();
    until_ready_says(&base, "read replica: not used").await;
    assert_eq!(read(false).await["data"], common::http::b64("v2"));
}

/// After a failover, the proxy in front of Postgres (HAProxy) may keep the server's open
/// connections on the old primary, now a read-only standby, while new ones go to the new
/// primary. A write on such a connection (SQLSTATE 25006, read-only) is a 503 with
/// `Retry-After`, never a 500, and the connection is dropped rather than pooled again; a
/// new connection to the read-only server is refused (as `target_session_attrs=read-write`)
/// and `/readyz` says the store accepts only reads; the server recovers by itself once the
/// proxy routes to a primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_that_reach_a_standby_after_failover_are_503_and_recover() {
    let (primary, standby) = migrated_primary_with_standby().await;
    let proxy = common::proxy::Proxy::start(format!("127.0.0.1:{}", primary.port)).await;
    let dir = tempfile::tempdir().unwrap();
    let through_proxy = proxy.url_for(&primary.url);
    let (_serve, base, _log) = serve_sealed(&through_proxy, dir.path(), &[]).await;
    let client = Client::new();
    let write = async |i: u32| {
        client
            .put(format!("{base}/meshes/default/secrets/f-{i}"))
            .json(&common::http::secret_json(
                "default",
                &format!("f-{i}"),
                "x",
            ))
            .send()
            .await
            .unwrap()
    };
    for i in 0..20 {
        assert!(write(i).await.status().is_success());
    }

    // The old primary is lost and the proxy now reaches a read-only server.
    proxy.set_upstream(format!("127.0.0.1:{}", standby.port));
    proxy.cut();
    proxy.heal();
    let mut refused = 0;
    for i in 20..60 {
        let response = write(i).await;
        let status = response.status();
        assert_ne!(
            status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{}",
            response.text().await.unwrap()
        );
        if status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(response.headers()["retry-after"], "1");
            refused += 1;
        }
    }
    assert!(refused > 0, "no write reached the read-only server");
    let ready = common::http::send_get(format!("{base}/readyz")).await;
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let said = ready.text().await.unwrap();
    assert!(said.contains("store accepts only reads"), "{said}");

    // The proxy routes new connections to a primary again; open ones stay on the standby.
    proxy.set_upstream(format!("127.0.0.1:{}", primary.port));
    let switched = Instant::now();
    let mut i = 100;
    loop {
        let response = write(i).await;
        i += 1;
        let status = response.status();
        assert_ne!(status, StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_success() {
            break;
        }
        assert!(
            switched.elapsed() < Duration::from_secs(30),
            "writes never recovered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "{refused} writes refused with 503 on the read-only server; writes back {:?} after the proxy switched",
        switched.elapsed()
    );
    for j in i..i + 50 {
        assert!(
            write(j).await.status().is_success(),
            "a write after recovery failed"
        );
    }
}
