//! Postgres HA as production runs it: a Patroni cluster (etcd, two Postgres 15 nodes in
//! synchronous mode) behind HAProxy, and PgBouncer. `serve` (the real binary) runs on top
//! under load from writers and readers while the cluster switches over (`patronictl
//! switchover`) and fails over (the leader's node is lost: `kill -9` of its Patroni and
//! postmaster), with HAProxy killing open sessions to a server it marks down, and not.
//!
//! What must hold: no 500 and no request past the request timeout; during the gap, 503
//! with `Retry-After`; `serve` recovers by itself within 2 s of HAProxy routing only to the
//! new leader; every acknowledged write is there afterwards with its version, and the
//! change feed has no gap. Behind PgBouncer in transaction mode, the API works with
//! `pool_mode=transaction` in the store URL and says what to set without it.
//!
//! The topologies need `patroni`, `etcd-server`, `haproxy` and `pgbouncer` (Debian
//! packages, installed by `.ci/run`).

mod common;

use common::ha::{OpenSessions, PatroniCluster, PgBouncer};
use common::process::{kuma, serve_sealed, try_spawn_serve};
use reqwest::{Client, StatusCode};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The request timeout `serve` runs with here.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How soon after HAProxy routes only to the new leader every write must succeed again.
const RECOVERY: Duration = Duration::from_secs(2);

/// One topology at a time: each runs two Postgres nodes, Patroni, etcd, HAProxy, `serve`
/// and its load (or PgBouncers and two `serve`s) on a machine that may have two cores, and
/// the bounds checked are timings.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_and_failover_when_haproxy_kills_open_sessions() {
    switchover_then_failover(OpenSessions::Killed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_and_failover_when_haproxy_keeps_open_sessions() {
    switchover_then_failover(OpenSessions::Kept).await;
}

async fn switchover_then_failover(sessions: OpenSessions) {
    let _one = ONE_AT_A_TIME.lock().await;
    let cluster = PatroniCluster::start(sessions).await;
    let url = cluster.url();
    kuma(&["migrate", "up", "--store", &url], None).await.ok();
    let dir = tempfile::tempdir().unwrap();
    let timeout = format!("{}s", REQUEST_TIMEOUT.as_secs());
    let (_serve, base, _log) =
        serve_sealed(&url, dir.path(), &["--request-timeout", &timeout]).await;
    let load = Load::start(&base, 4, 2).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Planned: the operator moves the leader.
    let leader = cluster.leader().await.expect("a leader");
    let trigger = Instant::now();
    cluster.switchover(leader);
    let routed = cluster.wait_routed_to(1 - leader).await;
    load.until_a_write_started_after(routed + RECOVERY * 2)
        .await;
    let switchover = load.judge("switchover", trigger, routed, &cluster);

    // Unplanned: the new leader's node is lost. The old one, back as its synchronous
    // standby, takes over once the leader key expires.
    cluster.wait_replicating(1 - leader).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let trigger = Instant::now();
    let mut cluster = cluster;
    cluster.nodes[1 - leader].crash();
    let routed = cluster.wait_routed_to(leader).await;
    load.until_a_write_started_after(routed + RECOVERY * 2)
        .await;
    let failover = load.judge("failover", trigger, routed, &cluster);

    let acknowledged = load.stop().await;
    every_acknowledged_write_is_there(&base, &acknowledged).await;
    let metrics = common::http::fetch_text(format!("{base}/metrics")).await;
    let count = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0)
    };
    let discarded = count("kuma_secrets_store_connections_discarded_total");
    let refused = count("kuma_secrets_store_connections_refused_total");
    eprintln!(
        "HA figures ({sessions:?} sessions): {switchover}; {failover}; {} writes acknowledged, \
         0 lost; connections discarded {discarded}, refused as read-only {refused}",
        acknowledged.len()
    );
    // The switchover killed the old leader's connections; its restart as a standby, still
    // in HAProxy's rotation for a few seconds, was refused new ones.
    assert!(
        discarded > 0 && refused > 0,
        "/metrics counted {discarded} connections dropped and {refused} refused as read-only \
         across a switchover and a failover"
    );
}

/// What one request did.
#[derive(Debug, Clone)]
struct Outcome {
    write: bool,
    started: Instant,
    elapsed: Duration,
    /// `None`: no HTTP answer (connection error or client timeout).
    status: Option<StatusCode>,
    retry_after: bool,
}

/// An acknowledged write: its secret, version and data.
type Ack = (String, i64, String);

/// Writers and readers going through `serve` until stopped, every outcome recorded.
struct Load {
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    acks: Arc<Mutex<Vec<Ack>>>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    async fn start(base: &str, writers: usize, readers: usize) -> Self {
        let client = Client::builder()
            .timeout(REQUEST_TIMEOUT * 3)
            .build()
            .unwrap();
        for w in 0..writers {
            common::http::put_secret_at(base, "default", &format!("ha-{w}"), "start").await;
        }
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let acks = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        for w in 0..writers + readers {
            let write = w < writers;
            let (client, base) = (client.clone(), base.to_owned());
            let (outcomes, acks, stopped) = (outcomes.clone(), acks.clone(), stopped.clone());
            tasks.push(tokio::spawn(async move {
                let name = format!("ha-{}", w % writers);
                let url = format!("{base}/meshes/default/secrets/{name}");
                let mut i = 0u64;
                while !*stopped.borrow() {
                    i += 1;
                    let data = common::http::b64(format!("w{w}-{i}"));
                    let started = Instant::now();
                    let request = if write {
                        client
                            .put(&url)
                            .json(&json!({"type": "Secret", "mesh": "default",
                            "name": name, "data": data}))
                    } else {
                        client.get(&url)
                    };
                    let response = request.send().await;
                    let elapsed = started.elapsed();
                    let (status, retry_after) = match &response {
                        Ok(r) => (Some(r.status()), r.headers().contains_key("retry-after")),
                        Err(_) => (None, false),
                    };
                    if let (true, Ok(r)) = (write, &response)
                        && r.status().is_success()
                    {
                        let version = common::http::version_of(r);
                        acks.lock().unwrap().push((name.clone(), version, data));
                    }
                    outcomes.lock().unwrap().push(Outcome {
                        write,
                        started,
                        elapsed,
                        status,
                        retry_after,
                    });
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }));
        }
        Self {
            outcomes,
            acks,
            stop,
            tasks,
        }
    }

    /// Waits until a write that started at `at` or later has been answered (at most 60 s
    /// past `at`), so the writes [`Load::judge`] checks after `RECOVERY` were made: on a
    /// loaded machine a fixed sleep may end before any has.
    async fn until_a_write_started_after(&self, at: Instant) {
        let deadline = at + Duration::from_secs(60);
        loop {
            let answered = self
                .outcomes
                .lock()
                .unwrap()
                .iter()
                .any(|o| o.write && o.started >= at);
            if answered {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no write started after the awaited instant was answered within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Checks the requests since `trigger`: no 500, no other 5xx than 503 (with
    /// `Retry-After`), no request past the request timeout, and every write that started
    /// `RECOVERY` after HAProxy routed only to the new leader (`routed`) succeeded.
    /// Returns the figures.
    fn judge(
        &self,
        event: &str,
        trigger: Instant,
        routed: Instant,
        cluster: &PatroniCluster,
    ) -> String {
        let outcomes: Vec<Outcome> = self
            .outcomes
            .lock()
            .unwrap()
            .iter()
            .filter(|o| o.started >= trigger)
            .cloned()
            .collect();
        let failed: Vec<&Outcome> = outcomes
            .iter()
            .filter(|o| !o.status.is_some_and(|s| s.is_success()))
            .collect();
        for o in &failed {
            assert_eq!(
                o.status,
                Some(StatusCode::SERVICE_UNAVAILABLE),
                "{event}: a request failed with {:?} (only 503 may answer during a failover); logs:\n{}",
                o.status,
                cluster.logs()
            );
            assert!(o.retry_after, "{event}: a 503 without Retry-After");
        }
        let slowest = outcomes.iter().map(|o| o.elapsed).max().unwrap_or_default();
        assert!(
            slowest <= REQUEST_TIMEOUT + Duration::from_secs(1),
            "{event}: a request took {slowest:?}, past the request timeout {REQUEST_TIMEOUT:?}"
        );
        let late: Vec<&&Outcome> = failed
            .iter()
            .filter(|o| o.write && o.started >= routed + RECOVERY)
            .collect();
        assert!(
            late.is_empty(),
            "{event}: {} writes failed more than {RECOVERY:?} after HAProxy routed to the new leader \
             (the first {:?} after)",
            late.len(),
            late[0].started - routed
        );
        let first_success_after_routing = outcomes
            .iter()
            .filter(|o| o.write && o.started >= routed && o.status.is_some_and(|s| s.is_success()))
            .map(|o| o.started + o.elapsed)
            .min()
            .expect("writes succeed after HAProxy routed to the new leader");
        let gap = match (
            failed.iter().map(|o| o.started).min(),
            failed.iter().map(|o| o.started + o.elapsed).max(),
        ) {
            (Some(first), Some(last)) => last - first,
            _ => Duration::ZERO,
        };
        format!(
            "{event}: gap {:.1} s, {} answers of 503 (of {} requests), 0 of 500, slowest {:.2} s, \
             HAProxy routed to the new leader {:.1} s after the trigger, writes back {:.2} s after that",
            gap.as_secs_f64(),
            failed.len(),
            outcomes.len(),
            slowest.as_secs_f64(),
            (routed - trigger).as_secs_f64(),
            first_success_after_routing
                .saturating_duration_since(routed)
                .as_secs_f64(),
        )
    }

    async fn stop(self) -> Vec<Ack> {
        self.stop.send(true).unwrap();
        for task in self.tasks {
            task.await.unwrap();
        }
        std::mem::take(&mut *self.acks.lock().unwrap())
    }
}

/// Every acknowledged write is in the change feed (written in the write's transaction),
/// whose revisions run without a gap or a repeat; each secret's current version is at least
/// its last acknowledged one, and that version (read by `?version=`) holds the write's data.
async fn every_acknowledged_write_is_there(base: &str, acks: &[Ack]) {
    let mut revisions = Vec::new();
    let mut versions = BTreeSet::new();
    let mut after = 0;
    loop {
        let page =
            common::http::fetch_json(format!("{base}/_changes?after={after}&limit=1000")).await;
        let events = page["events"].as_array().unwrap();
        if events.is_empty() {
            break;
        }
        for event in events {
            revisions.push(event["revision"].as_i64().unwrap());
            if event["type"] == "Secret" {
                versions.insert((
                    event["name"].as_str().unwrap().to_owned(),
                    event["version"].as_i64().unwrap(),
                ));
            }
        }
        after = page["revision"].as_i64().unwrap();
    }
    for pair in revisions.windows(2) {
        assert_eq!(
            pair[1],
            pair[0] + 1,
            "the change feed has a gap or a repeat"
        );
    }
    let mut last: BTreeMap<&str, (i64, &str)> = BTreeMap::new();
    for (name, version, data) in acks {
        assert!(
            versions.contains(&(name.clone(), *version)),
            "acknowledged write {name} version {version} is not in the change feed: lost"
        );
        let entry = last.entry(name).or_insert((*version, data));
        if *version > entry.0 {
            *entry = (*version, data);
        }
    }
    let client = Client::new();
    for (name, (version, data)) in last {
        let url = format!("{base}/meshes/default/secrets/{name}");
        let (_, current, _) = common::http::send(client.get(&url)).await;
        let current: i64 = current.unwrap().trim_matches('"').parse().unwrap();
        assert!(
            current >= version,
            "{name} is at version {current}, behind its acknowledged version {version}"
        );
        let (_, _, stored) =
            common::http::send(client.get(format!("{url}?version={version}"))).await;
        assert_eq!(
            stored["data"], data,
            "{name} version {version} does not hold the acknowledged data"
        );
    }
}

/// Behind PgBouncer in transaction mode, the API works with `pool_mode=transaction` in the
/// store URL, and `migrate up` through it says to connect directly; without the option the
/// store says what to set (at start, or in its log and a 503), never a 500. In session
/// mode nothing needs setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_works_behind_pgbouncer_in_transaction_and_session_mode() {
    let _one = ONE_AT_A_TIME.lock().await;
    let db = common::TestDb::migrated().await;
    let upstream = reqwest::Url::parse(&db.url).unwrap().port().unwrap_or(5432);
    let transaction = PgBouncer::start(upstream, "transaction");
    let session = PgBouncer::start(upstream, "session");
    let dir = tempfile::tempdir().unwrap();
    let keys = common::test_keyring_file(dir.path());
    let keys = keys.to_str().unwrap();
    let plain = transaction.url_for(&db.url);
    let pooled = format!("{plain}?pool_mode=transaction");

    kuma(&["migrate", "up", "--store", &pooled], None)
        .await
        .fails_with("run them against Postgres directly");
    kuma(
        &["migrate", "up", "--store", &session.url_for(&db.url)],
        None,
    )
    .await
    .ok();

    // In session mode each of serve's connections holds one of PgBouncer's server
    // connections (4 per database here) for its life, and so does the session that LISTENs
    // for other replicas' changes: serve's pool must be smaller by one.
    let session_url = session.url_for(&db.url);
    for (store, connections, mesh) in [(&pooled, "32", "tx"), (&session_url, "3", "session")] {
        let (serve, base, log) =
            serve_sealed(store, dir.path(), &["--max-connections", connections]).await;
        api_core(&base, mesh).await;
        drop(serve);
        let named: Vec<String> = common::process::rest_of_log(&log)
            .into_iter()
            .filter(|line| line.contains("prepared under a name"))
            .collect();
        assert!(named.is_empty(), "{named:?}");
        store_tools(store, dir.path(), mesh).await;
    }

    // Without the option, named statements meet other clients' server sessions: the store
    // either refuses to start, saying what to set, or starts and says it under load.
    let (mut serve, base, log) = match try_spawn_serve(
        &["--store", &plain, "--encryption-keys", keys],
        dir.path(),
    ) {
        Ok(started) => started,
        Err(not) => {
            assert!(not.status.is_some_and(|s| !s.success()), "{:?}", not.status);
            let said = not.said.join("\n");
            assert!(
                said.contains("add pool_mode=transaction to the store URL"),
                "serve behind PgBouncer in transaction mode failed without saying what to set:\n{said}"
            );
            return;
        }
    };
    let client = Client::new();
    // Rounds of 64 concurrent writes until one meets another client's statement (the first
    // almost always does; five rounds make a lucky streak vanishingly unlikely).
    let mut unavailable = 0;
    for round in 0..5 {
        if unavailable > 0 {
            break;
        }
        let writes = (0..64).map(|i| {
            let client = client.clone();
            let name = format!("plain-{round}-{i}");
            let url = format!("{base}/meshes/default/secrets/{name}");
            async move {
                let body = common::http::secret_json("default", &name, "x");
                client.put(url).json(&body).send().await.unwrap().status()
            }
        });
        for status in futures_util::future::join_all(writes).await {
            assert_ne!(status, StatusCode::INTERNAL_SERVER_ERROR);
            if status == StatusCode::SERVICE_UNAVAILABLE {
                unavailable += 1;
            }
        }
    }
    let _ = serve.kill();
    let _ = serve.wait();
    let said = common::process::rest_of_log(&log);
    assert!(
        unavailable > 0 && said.iter().any(|l| l.contains("add pool_mode=transaction")),
        "without pool_mode=transaction behind PgBouncer in transaction mode, {unavailable} \
         writes were refused and the log said:\n{}",
        said.join("\n")
    );
}

/// The store tools straight on `store`: `export`, `import` of what was exported (nothing
/// changes), `rotate-keys` to a new key (checked by `--status`) and back.
async fn store_tools(store: &str, dir: &std::path::Path, mesh: &str) {
    let keys = common::test_keyring_file(dir);
    let file = dir.join(format!("{mesh}.yaml"));
    let file = file.to_str().unwrap();
    common::raw::store_tool_at(store, &keys, &["export", "-m", mesh, "-o", file])
        .await
        .ok();
    let run = common::raw::store_tool_at(store, &keys, &["import", "-f", file])
        .await
        .ok();
    assert!(run.stdout.contains("0 created"), "{run:#?}");
    let next = kuma_secrets::sealing::Keyring::random_key();
    let keyring = |active: &str| {
        let path = dir.join(format!("{mesh}-{active}.keys"));
        (*common::test_keyring())
            .clone()
            .with_key("next", next)
            .with_active(active)
            .save_new(&path)
            .unwrap();
        path
    };
    let (forward, back) = (keyring("next"), keyring("test-1"));
    common::raw::store_tool_at(store, &forward, &["rotate-keys"])
        .await
        .ok();
    let status = common::raw::store_tool_at(store, &forward, &["rotate-keys", "--status"])
        .await
        .ok();
    assert!(status.stdout.contains("next"), "{status:#?}");
    common::raw::store_tool_at(store, &back, &["rotate-keys"])
        .await
        .ok();
}

/// The core of the API under 16 concurrent clients: a Mesh, secrets created, read, updated
/// under `If-Match` (and refused with a stale one), listed, deleted; a global secret; a
/// secret's versions; the change feed.
async fn api_core(base: &str, mesh: &str) {
    let client = Client::new();
    let send = common::http::send;
    let (status, _, body) = send(
        client
            .put(format!("{base}/meshes/{mesh}"))
            .json(&json!({"type": "Mesh", "name": mesh})),
    )
    .await;
    assert!(status.is_success(), "{status} {body}");

    let clients = (0..16).map(|c| {
        let (client, base, mesh) = (client.clone(), base.to_owned(), mesh.to_owned());
        async move {
            for i in 0..5 {
                let name = format!("s-{c}-{i}");
                let url = format!("{base}/meshes/{mesh}/secrets/{name}");
                let body = |data: &str| common::http::secret_json(&mesh, &name, data);
                let (status, etag, _) = send(client.put(&url).json(&body("one"))).await;
                assert_eq!(status, StatusCode::CREATED);
                assert_eq!(etag.as_deref(), Some("\"1\""));
                let (status, _, read) = send(client.get(&url)).await;
                assert_eq!(status, StatusCode::OK);
                assert_eq!(read["data"], common::http::b64("one"));
                let put_if_at_1 = |data: &str| {
                    send(
                        client
                            .put(&url)
                            .header("if-match", "\"1\"")
                            .json(&body(data)),
                    )
                };
                let (status, etag, _) = put_if_at_1("two").await;
                assert_eq!(status, StatusCode::OK);
                assert_eq!(etag.as_deref(), Some("\"2\""));
                let (status, _, _) = put_if_at_1("stale").await;
                assert_eq!(status, StatusCode::PRECONDITION_FAILED);
                if i % 2 == 1 {
                    let (status, _, _) = send(client.delete(&url)).await;
                    assert_eq!(status, StatusCode::OK);
                    let (status, _, _) = send(client.get(&url)).await;
                    assert_eq!(status, StatusCode::NOT_FOUND);
                }
            }
        }
    });
    futures_util::future::join_all(clients).await;

    let (status, _, list) =
        send(client.get(format!("{base}/meshes/{mesh}/secrets?size=100"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["total"], 16 * 3, "{list}");
    let (status, _, versions) =
        send(client.get(format!("{base}/meshes/{mesh}/secrets/s-0-0/_versions"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(versions["total"], 2, "{versions}");

    // History: roll back to version 1 (a new version 3), restore a deleted secret.
    let item = format!("{base}/meshes/{mesh}/secrets");
    let (status, etag, read) = send(
        client
            .post(format!("{item}/s-0-0/_rollback"))
            .json(&json!({"version": 1})),
    )
    .await;
    assert_eq!((status, etag.as_deref()), (StatusCode::OK, Some("\"3\"")));
    assert_eq!(read["data"], common::http::b64("one"));
    let (status, _, _) = send(client.post(format!("{item}/s-0-1/_restore"))).await;
    assert_eq!(status, StatusCode::OK);

    // A Mesh with a builtin CA: its two secrets are generated in the Mesh's transaction.
    let ca_mesh = format!("{mesh}-mtls");
    let (status, _, body) = send(client.put(format!("{base}/meshes/{ca_mesh}")).json(&json!({
        "type": "Mesh", "name": ca_mesh,
        "mtls": {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]}
    })))
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, _, generated) = send(client.get(format!("{base}/meshes/{ca_mesh}/secrets"))).await;
    assert_eq!(generated["total"], 2, "{generated}");

    let global = format!("{base}/global-secrets/{mesh}-global");
    let (status, _, _) =
        send(client.put(&global).json(
            &json!({"type": "GlobalSecret", "name": format!("{mesh}-global"), "data": "eA=="}),
        ))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _, read) = send(client.get(&global)).await;
    assert_eq!(
        (status, read["data"].as_str()),
        (StatusCode::OK, Some("eA=="))
    );

    // The Mesh, then 80 creates, 80 updates, 32 deletes, a rollback and a restore in it: one
    // event each, in order.
    let changes = common::http::fetch_json(format!("{base}/_changes?mesh={mesh}&limit=1000")).await;
    let revisions: Vec<i64> = changes["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["revision"].as_i64().unwrap())
        .collect();
    assert_eq!(revisions.len(), 1 + 80 + 80 + 32 + 2);
    assert!(revisions.windows(2).all(|w| w[1] > w[0]));
}
