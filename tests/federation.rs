//! Multi-zone: one global store and three zones on loopback (SQLite and Postgres mixed), as
//! real `serve` processes. Every zone ends equal to the global store, compared value by
//! value, after: the first sync of 10,000 secrets in 20 Meshes, changes of every kind, a
//! zone stopped during writes and started again (it goes on from its revision, no new full
//! list), the global store restarted, and the global store's feed pruned past a zone's
//! revision (410: it lists again and deletes what vanished). What the global store owns is
//! read-only on a zone (Kuma's 405); a zone's own secrets survive every resync; the secrets
//! Kuma never sends to zones are never found there.

#[macro_use]
mod common;

use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::mpsc::Receiver;
use std::time::Duration;

/// How long a zone may take to reach the state a case waits for.
const CONVERGE: Duration = Duration::from_secs(120);

/// Meshes and secrets the global store starts with.
const MESHES: usize = 20;
const SECRETS: usize = 10_000;

/// A `serve` process on a port of its own (kept across restarts), its log read as it
/// comes.
struct Server {
    process: std::process::Child,
    base: String,
    log: Receiver<String>,
    args: Vec<String>,
    port: u16,
}

impl Server {
    /// `serve ARGS` on a free port; returns once it answers `/healthz`.
    async fn start(args: &[String], dir: &std::path::Path) -> Self {
        Self::start_at(args, dir, kuma_secrets::testing::cluster::free_port()).await
    }

    async fn start_at(args: &[String], dir: &std::path::Path, port: u16) -> Self {
        let mut process = std::process::Command::new(env!("CARGO_BIN_EXE_kuma-secrets"))
            .arg("serve")
            .args(["--api-addr", &format!("127.0.0.1:{port}")])
            .args(args)
            .current_dir(dir)
            .env_remove("KUMA_SECRETS_STORE")
            .env("KUMA_SECRETS_LOG", "info")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start kuma-secrets");
        let stderr = process.stderr.take().unwrap();
        let (tx, log) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let base = format!("http://127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + CONVERGE;
        while !reqwest::get(format!("{base}/healthz"))
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            if let Ok(Some(status)) = process.try_wait() {
                let said: Vec<String> = log.try_iter().collect();
                panic!("serve {args:?} exited ({status}):\n{}", said.join("\n"));
            }
            assert!(
                std::time::Instant::now() < deadline,
                "serve {args:?} never answered"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self {
            process,
            base,
            log,
            args: args.to_vec(),
            port,
        }
    }

    /// Stops it (SIGKILL: nothing is flushed on the way out).
    fn kill(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }

    /// Starts it again, same flags, same port.
    async fn restart(&mut self, dir: &std::path::Path) {
        self.kill();
        *self = Self::start_at(&self.args.clone(), dir, self.port).await;
    }

    /// What it logged so far.
    fn said(&self) -> Vec<String> {
        self.log.try_iter().collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `check` until it is `Ok`, or `limit` passes: then its last `Err`.
async fn converge<F, Fut>(limit: Duration, mut check: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = std::time::Instant::now() + limit;
    loop {
        let last = match check().await {
            Ok(()) => return Ok(()),
            Err(last) => last,
        };
        if std::time::Instant::now() > deadline {
            return Err(last);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `/readyz` of `base`: status and body, `None` while nothing answers.
async fn readyz(base: &str) -> Option<(u16, String)> {
    let response = reqwest::get(format!("{base}/readyz")).await.ok()?;
    Some((response.status().as_u16(), response.text().await.ok()?))
}

/// Every page of the list at `url`.
async fn list_all(url: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let mut next = Some(format!("{url}?size=1000"));
    while let Some(url) = next {
        let page: Value = common::http::get_fresh(&url).await.json().await.unwrap();
        items.extend(page["items"].as_array().cloned().unwrap_or_default());
        next = page["next"].as_str().map(str::to_owned);
    }
    items
}

/// Labels as the global store sets them (what a zone adds or keeps of its own dropped).
fn global_labels(item: &Value) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> =
        serde_json::from_value(item["labels"].clone()).unwrap_or_default();
    for own in ["kuma.io/origin", "kuma.io/zone", "kuma.io/env"] {
        labels.remove(own);
    }
    labels
}

/// What a store holds from the global store's point of view: every Mesh (its spec and
/// labels), every Secret and every GlobalSecret Kuma sends to zones (data and labels). On a
/// zone, only what carries `kuma.io/origin: global`.
async fn synced_state(base: &str, zone: bool) -> BTreeMap<String, Value> {
    let from_global = |item: &Value| !zone || item["labels"]["kuma.io/origin"] == "global";
    let mut state = BTreeMap::new();
    for mesh in list_all(&format!("{base}/meshes")).await {
        let name = mesh["name"].as_str().unwrap().to_owned();
        if from_global(&mesh) {
            let mut spec = mesh.clone();
            for field in ["creationTime", "modificationTime", "labels", "kri"] {
                spec.as_object_mut().unwrap().remove(field);
            }
            state.insert(
                format!("Mesh/{name}"),
                json!({"spec": spec, "labels": global_labels(&mesh)}),
            );
        }
        for secret in list_all(&format!("{base}/meshes/{name}/secrets")).await {
            if from_global(&secret) {
                state.insert(
                    format!("Secret/{name}/{}", secret["name"].as_str().unwrap()),
                    json!({"data": secret["data"], "labels": global_labels(&secret)}),
                );
            }
        }
    }
    for secret in list_all(&format!("{base}/global-secrets")).await {
        let name = secret["name"].as_str().unwrap();
        if from_global(&secret) && kuma_secrets::federation::sent_to_zones("GlobalSecret", name) {
            state.insert(
                format!("GlobalSecret/{name}"),
                json!({"data": secret["data"], "labels": global_labels(&secret)}),
            );
        }
    }
    state
}

/// Waits until every zone holds exactly what the global store has; panics naming the first
/// difference otherwise.
async fn every_zone_equals_the_global_store(global: &str, zones: &[&Server]) {
    let expected = synced_state(global, false).await;
    for zone in zones {
        let converged = converge(CONVERGE, || async {
            let held = synced_state(&zone.base, true).await;
            if held == expected {
                return Ok(());
            }
            let missing = expected.keys().find(|k| held.get(*k) != expected.get(*k));
            let extra = held.keys().find(|k| !expected.contains_key(*k));
            Err(format!(
                "{} of {} held; first differing {missing:?}, first extra {extra:?}",
                held.len(),
                expected.len()
            ))
        })
        .await;
        if let Err(last) = converged {
            panic!("zone {} never equalled the global store: {last}", zone.base);
        }
    }
}

/// The global store's first content: `MESHES` Meshes (the first with builtin mTLS), their
/// `SECRETS` secrets, and two GlobalSecrets.
fn global_yaml() -> String {
    let mut yaml = String::new();
    for m in 0..MESHES {
        yaml.push_str(&format!("---\ntype: Mesh\nname: mesh-{m}\n"));
        if m == 0 {
            yaml.push_str(
                "mtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n",
            );
        }
    }
    for n in 0..SECRETS {
        yaml.push_str(&format!(
            "---\ntype: Secret\nmesh: mesh-{}\nname: secret-{n}\nlabels:\n  team: t{}\ndata: {}\n",
            n % MESHES,
            n % 7,
            common::http::b64(format!("value {n}"))
        ));
    }
    for name in ["shared-ca", "shared-token"] {
        yaml.push_str(&format!(
            "---\ntype: GlobalSecret\nname: {name}\ndata: {}\n",
            common::http::b64(format!("global {name}"))
        ));
    }
    yaml
}

/// PUTs `body` at `url`; its status and answer.
async fn put(url: &str, body: Value) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .put(url)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// DELETEs `url`; its status and answer.
async fn delete(url: &str) -> (StatusCode, Value) {
    let response = reqwest::Client::new().delete(url).send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn secret_body(mesh: &str, name: &str, data: &str) -> Value {
    json!({"type": "Secret", "mesh": mesh, "name": name, "data": common::http::b64(data)})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zones_follow_the_global_store_through_restarts_partitions_and_pruning() {
    let dir = tempfile::tempdir().unwrap();
    let global_path = dir.path().join("global.db");
    let global_url = format!("sqlite://{}", global_path.display());
    // The global store's content, imported before it starts.
    let file = common::write_file(dir.path(), "global.yaml", global_yaml());
    common::process::kuma(&["import", "-f", &file, "--store", &global_url], None)
        .await
        .ok();
    let global_args: Vec<String> = ["--mode", "global", "--store", &global_url]
        .map(str::to_owned)
        .to_vec();
    let mut global = Server::start(&global_args, dir.path()).await;

    // Three zones: SQLite, Postgres, SQLite.
    let postgres = common::TestDb::migrated().await;
    // (Each zone seals with keys of its own: SQLite's next to its file, Postgres' given.)
    let postgres_keys = common::test_keyring_file(dir.path());
    let zone_args = |n: usize, global: &str| -> Vec<String> {
        let mut args: Vec<String> = ["--zone", &format!("zone-{n}"), "--global-url", global]
            .map(str::to_owned)
            .to_vec();
        match n {
            1 => args.extend([
                "--store".to_owned(),
                postgres.url.clone(),
                "--encryption-keys".to_owned(),
                postgres_keys.display().to_string(),
            ]),
            _ => args.extend([
                "--store".to_owned(),
                common::sqlite_url(dir.path(), &format!("zone-{n}.db")),
            ]),
        }
        args
    };
    let mut zones = Vec::new();
    for n in 0..3 {
        zones.push(Server::start(&zone_args(n, &global.base), dir.path()).await);
    }
    for zone in &zones {
        common::ha::wait_for(CONVERGE, "a zone to take its first full copy", || async {
            readyz(&zone.base)
                .await
                .is_some_and(|(status, _)| status == 200)
        })
        .await;
    }
    every_zone_equals_the_global_store(&global.base, &zones.iter().collect::<Vec<_>>()).await;
    // /metrics says where each zone is: one full list, caught up, a revision held.
    for zone in &zones {
        let metric = |text: &str, name: &str| -> i64 {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("kuma_secrets_{name} ")))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(-1)
        };
        common::ha::wait_for(
            CONVERGE,
            "a zone's metrics to say it is caught up",
            || async {
                let text = common::http::fetch_text(format!("{}/metrics", zone.base)).await;
                metric(&text, "zone_sync_behind_seconds") == 0
                    && metric(&text, "zone_sync_applied_revision") > 0
                    && metric(&text, "zone_sync_full_lists_total") == 1
                    && metric(&text, "zone_sync_global_unreachable_seconds") == 0
            },
        )
        .await;
    }

    // What Kuma never sends: each zone has its own admin token, never the global one.
    let global_admin =
        common::http::fetch_json(format!("{}/global-secrets/admin-user-token", global.base)).await;
    for zone in &zones {
        let own =
            common::http::fetch_json(format!("{}/global-secrets/admin-user-token", zone.base))
                .await;
        assert_ne!(own["data"], global_admin["data"], "{}", zone.base);
        assert_ne!(own["labels"]["kuma.io/origin"], "global", "{own}");
    }

    // Read-only on a zone: what the global store owns, with Kuma's 405.
    let zone0 = zones[0].base.clone();
    let synced = format!("{zone0}/meshes/mesh-1/secrets/secret-1");
    let (status, body) = put(&synced, secret_body("mesh-1", "secret-1", "zone write")).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .starts_with("On zone control plane you can only modify zone resources"),
        "{body}"
    );
    assert_eq!(delete(&synced).await.0, StatusCode::METHOD_NOT_ALLOWED);
    let (status, _) = put(
        &format!("{zone0}/global-secrets/shared-ca"),
        json!({"type": "GlobalSecret", "name": "shared-ca", "data": common::http::b64("x")}),
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (status, _) = put(
        &format!("{zone0}/meshes/mesh-1"),
        json!({"type": "Mesh", "name": "mesh-1"}),
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        delete(&format!("{zone0}/meshes/mesh-1")).await.0,
        StatusCode::METHOD_NOT_ALLOWED
    );
    // The zone's own secrets: made there, kept through everything below.
    let own = format!("{zone0}/meshes/mesh-1/secrets/zone-own");
    let (status, body) = put(&own, secret_body("mesh-1", "zone-own", "mine")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = put(
        &format!("{zone0}/meshes/mesh-2/secrets/secret-2"),
        secret_body("mesh-2", "secret-2", "x"),
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");

    // Changes of every kind on the global store reach every zone.
    let g = global.base.clone();
    put(
        &format!("{g}/meshes/mesh-3/secrets/secret-3"),
        secret_body("mesh-3", "secret-3", "changed"),
    )
    .await;
    delete(&format!("{g}/meshes/mesh-4/secrets/secret-4")).await;
    put(
        &format!("{g}/meshes/new-mesh"),
        json!({"type": "Mesh", "name": "new-mesh"}),
    )
    .await;
    put(
        &format!("{g}/meshes/new-mesh/secrets/fresh"),
        secret_body("new-mesh", "fresh", "fresh"),
    )
    .await;
    delete(&format!("{g}/meshes/mesh-19")).await;
    put(
        &format!("{g}/global-secrets/shared-token"),
        json!({"type": "GlobalSecret", "name": "shared-token", "data": common::http::b64("rotated")}),
    )
    .await;
    // mTLS enabled on a Mesh: the zone holds the global store's CA, never one of its own.
    put(
        &format!("{g}/meshes/mesh-5"),
        json!({"type": "Mesh", "name": "mesh-5", "mtls": {"enabledBackend": "ca-1",
            "backends": [{"name": "ca-1", "type": "builtin"}]}}),
    )
    .await;
    every_zone_equals_the_global_store(&g, &zones.iter().collect::<Vec<_>>()).await;
    let global_ca = common::http::fetch_json(format!(
        "{g}/meshes/mesh-5/secrets/mesh-5.ca-builtin-cert-ca-1"
    ))
    .await;
    let zone_ca = common::http::fetch_json(format!(
        "{zone0}/meshes/mesh-5/secrets/mesh-5.ca-builtin-cert-ca-1"
    ))
    .await;
    assert_eq!(zone_ca["data"], global_ca["data"]);

    // A zone killed during writes, started again: it goes on from its revision.
    zones[1].kill();
    for n in 0..50 {
        put(
            &format!("{g}/meshes/mesh-6/secrets/while-down-{n}"),
            secret_body("mesh-6", &format!("while-down-{n}"), "w"),
        )
        .await;
    }
    zones[1].restart(dir.path()).await;
    every_zone_equals_the_global_store(&g, &zones.iter().collect::<Vec<_>>()).await;
    assert!(
        !zones[1]
            .said()
            .iter()
            .any(|line| line.contains("took the global store's state whole")),
        "a restarted zone goes on from its revision, without a full list"
    );

    // The global store restarted: zones wait, then go on.
    global.kill();
    common::ha::wait_for(
        CONVERGE,
        "a zone to say the global store is away",
        || async {
            readyz(&zone0)
                .await
                .is_some_and(|(status, body)| status == 200 && body.contains("unreachable since"))
        },
    )
    .await;
    // Still serving what it holds.
    let held = common::http::fetch_json(format!("{zone0}/meshes/mesh-3/secrets/secret-3")).await;
    assert_eq!(held["data"], common::http::b64("changed"));
    global.restart(dir.path()).await;
    put(
        &format!("{g}/meshes/mesh-7/secrets/after-restart"),
        secret_body("mesh-7", "after-restart", "r"),
    )
    .await;
    every_zone_equals_the_global_store(&g, &zones.iter().collect::<Vec<_>>()).await;
    common::ha::wait_for(CONVERGE, "the zone's note to clear", || async {
        readyz(&zone0).await == Some((200, "ok\n".to_owned()))
    })
    .await;

    // The global store's feed pruned past a stopped zone's revision: 410, a new full list,
    // and what vanished meanwhile is deleted; the zone's own secret stays.
    zones[0].kill();
    delete(&format!("{g}/meshes/mesh-8/secrets/secret-8")).await;
    put(
        &format!("{g}/meshes/mesh-9/secrets/after-prune"),
        secret_body("mesh-9", "after-prune", "p"),
    )
    .await;
    prune_every_event(&global_path).await;
    zones[0].restart(dir.path()).await;
    every_zone_equals_the_global_store(&g, &zones.iter().collect::<Vec<_>>()).await;
    let relisted = zones[0]
        .said()
        .iter()
        .any(|line| line.contains("listing again"));
    assert!(relisted, "the pruned feed made the zone list again");
    let kept = common::http::fetch_json(&own).await;
    assert_eq!(kept["data"], common::http::b64("mine"));
    assert_eq!(kept["labels"]["kuma.io/origin"], "zone");
}

/// Deletes every event of the global store's feed behind its back, as retention would
/// after a long outage: a zone asking for what came after its revision gets 410.
async fn prune_every_event(global: &std::path::Path) {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", global.display()))
        .await
        .unwrap();
    sqlx::query("DELETE FROM events")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
}
