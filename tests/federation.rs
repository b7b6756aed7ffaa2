//! Multi-zone: one global store and three zones on loopback (SQLite and Postgres mixed), as
//! real `serve` processes. Every zone ends equal to the global store, compared value by
//! value, after: the first sync of 10,000 secrets in 20 Meshes, changes of every kind, a
//! zone stopped during writes and started again (it goes on from its revision, no new full
//! list), the global store restarted, and the global store's feed pruned past a zone's
//! revision (410: it lists again and deletes what vanished), a zone cut off by a frozen
//! network (a proxy that holds connections without an answer) and healed, and a zone whose
//! token was revoked (it stops at once) and then replaced. What the global store owns is
//! read-only on a zone (Kuma's 405); a zone's own secrets survive every resync; the secrets
//! Kuma never sends to zones are never found there, and a zone token reads nothing else.
//! The global store shows its zones (`GET /zones`, `get zones`).

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
    let (status, _, answer) = common::http::send(reqwest::Client::new().put(url).json(&body)).await;
    assert!(!status.is_server_error(), "PUT {url}: {status} {answer}");
    (status, answer)
}

/// DELETEs `url`; its status and answer.
async fn delete(url: &str) -> (StatusCode, Value) {
    let (status, _, answer) = common::http::send(reqwest::Client::new().delete(url)).await;
    assert!(!status.is_server_error(), "DELETE {url}: {status} {answer}");
    (status, answer)
}

/// A zone token for `zone`, issued by the global store at `global` (its loopback admin).
async fn zone_token(global: &str, zone: &str) -> String {
    let response = reqwest::Client::new()
        .post(format!("{global}/tokens/zone"))
        .json(&json!({"zone": zone, "validFor": "1h"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.text().await.unwrap()
}

/// The `jti` of a token: what a revocation lists.
fn jti_of(token: &str) -> String {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    claims["jti"].as_str().unwrap().to_owned()
}

/// `GET url` with `token`: status and body.
async fn get_with(url: &str, token: &str) -> (StatusCode, Value) {
    let request = reqwest::Client::new().get(url).bearer_auth(token);
    let (status, _, body) = common::http::send(request).await;
    (status, body)
}

/// The global store's `GET /zones`: each zone by name.
async fn zones_of(global: &str) -> BTreeMap<String, Value> {
    let body = common::http::fetch_json(format!("{global}/zones")).await;
    body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|z| (z["name"].as_str().unwrap().to_owned(), z.clone()))
        .collect()
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
    // Each zone presents a zone token of its own: zone-0's made with the CLI.
    let token_file = |n: usize| dir.path().join(format!("zone-{n}.token"));
    let cli_token = common::process::kuma(
        &[
            "generate",
            "zone-token",
            "--zone",
            "zone-0",
            "--valid-for",
            "1h",
            "--api-url",
            &global.base,
        ],
        None,
    )
    .await
    .ok();
    std::fs::write(token_file(0), cli_token.stdout.trim()).unwrap();
    for n in 1..3 {
        std::fs::write(
            token_file(n),
            zone_token(&global.base, &format!("zone-{n}")).await,
        )
        .unwrap();
    }
    // zone-2 reaches the global store through a proxy that can freeze.
    let proxy = common::proxy::Proxy::start(format!("127.0.0.1:{}", global.port)).await;
    let through_proxy = format!("http://127.0.0.1:{}", proxy.port);
    let zone_args = |n: usize, global: &str| -> Vec<String> {
        let global = if n == 2 {
            through_proxy.as_str()
        } else {
            global
        };
        let mut args: Vec<String> = [
            "--zone",
            &format!("zone-{n}"),
            "--global-url",
            global,
            "--global-token-file",
            &token_file(n).display().to_string(),
        ]
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

    // What Kuma never sends: each zone has its own admin token, never the global one, and
    // the public half of the zone-token signing key, never the key.
    let global_admin =
        common::http::fetch_json(format!("{}/global-secrets/admin-user-token", global.base)).await;
    let public_key = common::http::fetch_json(format!(
        "{}/global-secrets/zone-token-signing-public-key-1",
        global.base
    ))
    .await;
    assert!(
        String::from_utf8(base64_decode(&public_key["data"]))
            .unwrap()
            .starts_with("-----BEGIN PUBLIC KEY-----"),
        "{public_key}"
    );
    for zone in &zones {
        let own =
            common::http::fetch_json(format!("{}/global-secrets/admin-user-token", zone.base))
                .await;
        assert_ne!(own["data"], global_admin["data"], "{}", zone.base);
        assert_ne!(own["labels"]["kuma.io/origin"], "global", "{own}");
        let held = common::http::fetch_json(format!(
            "{}/global-secrets/zone-token-signing-public-key-1",
            zone.base
        ))
        .await;
        assert_eq!(held["data"], public_key["data"], "{}", zone.base);
        for never in ["zone-token-signing-key-1", "user-token-signing-key-1"] {
            let status = reqwest::get(format!("{}/global-secrets/{never}", zone.base))
                .await
                .unwrap()
                .status();
            if never.starts_with("zone") {
                assert_eq!(status, StatusCode::NOT_FOUND, "{never} on {}", zone.base);
            } else {
                let own =
                    common::http::fetch_json(format!("{}/global-secrets/{never}", zone.base)).await;
                assert_ne!(own["labels"]["kuma.io/origin"], "global", "{own}");
            }
        }
    }

    // A zone token, used on the global store directly, reads what zones are sent and
    // nothing else.
    let token0 = std::fs::read_to_string(token_file(0)).unwrap();
    let g = global.base.clone();
    for never in [
        "admin-user-token",
        "user-token-signing-key-1",
        "zone-token-signing-key-1",
        "user-token-revocations",
    ] {
        let (status, body) = get_with(&format!("{g}/global-secrets/{never}"), &token0).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{never}: {body}");
    }
    let (status, listed) = get_with(&format!("{g}/global-secrets?size=1000"), &token0).await;
    assert_eq!(status, StatusCode::OK);
    let names = common::http::item_names(&listed);
    assert!(
        names.iter().any(|n| n == "zone-token-signing-public-key-1"),
        "{names:?}"
    );
    assert!(
        names
            .iter()
            .all(|n| kuma_secrets::federation::sent_to_zones("GlobalSecret", n)),
        "{names:?}"
    );
    assert_eq!(listed["total"], names.len(), "{listed}");
    assert_eq!(
        get_with(&format!("{g}/meshes/mesh-1/secrets/secret-1"), &token0)
            .await
            .0,
        StatusCode::OK
    );
    for refused in ["/zones", "/meshes/mesh-1/secrets/secret-1/_versions"] {
        let (status, body) = get_with(&format!("{g}{refused}"), &token0).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{refused}: {body}");
    }
    let written = reqwest::Client::new()
        .put(format!("{g}/meshes/mesh-1/secrets/by-a-zone"))
        .bearer_auth(&token0)
        .json(&common::http::secret_json("mesh-1", "by-a-zone", "x"))
        .send()
        .await
        .unwrap();
    assert_eq!(written.status(), StatusCode::FORBIDDEN);
    // A zone token with a forged signature is refused, loopback or not.
    let forged = format!("{}.AAAA", token0.rsplit_once('.').unwrap().0);
    let (status, body) = get_with(&format!("{g}/meshes/mesh-1/secrets/secret-1"), &forged).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

    // The global store shows its zones: connected, each at its revision.
    common::ha::wait_for(
        CONVERGE,
        "GET /zones to show three zones caught up",
        || async {
            let head = common::http::fetch_json(format!("{g}/zones")).await["revision"].clone();
            let zones = zones_of(&g).await;
            zones.len() == 3
                && zones
                    .values()
                    .all(|z| z["connected"] == true && z["appliedRevision"] == head)
        },
    )
    .await;
    let table = common::process::kuma(&["get", "zones", "--api-url", &g], None)
        .await
        .ok()
        .stdout;
    assert!(table.starts_with("NAME "), "{table}");
    for n in 0..3 {
        assert!(
            table
                .lines()
                .any(|l| l.starts_with(&format!("zone-{n} ")) && l.contains("Online")),
            "{table}"
        );
    }

    // Read-only on a zone: what the global store owns, with Kuma's 405.
    let zone0 = zones[0].base.clone();
    let synced = format!("{zone0}/meshes/mesh-1/secrets/secret-1");
    let (status, body) = put(
        &synced,
        common::http::secret_json("mesh-1", "secret-1", "zone write"),
    )
    .await;
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
    let (status, body) = put(
        &own,
        common::http::secret_json("mesh-1", "zone-own", "mine"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = put(
        &format!("{zone0}/meshes/mesh-2/secrets/secret-2"),
        common::http::secret_json("mesh-2", "secret-2", "x"),
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");

    // Changes of every kind on the global store reach every zone.
    put(
        &format!("{g}/meshes/mesh-3/secrets/secret-3"),
        common::http::secret_json("mesh-3", "secret-3", "changed"),
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
        common::http::secret_json("new-mesh", "fresh", "fresh"),
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

    // A frozen network between zone-2 and the global store (the proxy holds connections
    // open without an answer), and meanwhile a zone killed during writes and started again:
    // it goes on from its revision.
    proxy.stall();
    zones[1].kill();
    for n in 0..50 {
        put(
            &format!("{g}/meshes/mesh-6/secrets/while-down-{n}"),
            common::http::secret_json("mesh-6", &format!("while-down-{n}"), "w"),
        )
        .await;
    }
    zones[1].restart(dir.path()).await;
    every_zone_equals_the_global_store(&g, &[&zones[0], &zones[1]]).await;
    // zone-2 notices (its request times out), keeps serving, and the global store shows it
    // offline.
    let zone2 = zones[2].base.clone();
    common::ha::wait_for(
        CONVERGE,
        "zone-2 to say the global store is away",
        || async {
            readyz(&zone2)
                .await
                .is_some_and(|(status, body)| status == 200 && body.contains("unreachable since"))
        },
    )
    .await;
    let held = common::http::fetch_json(format!("{zone2}/meshes/mesh-3/secrets/secret-3")).await;
    assert_eq!(held["data"], common::http::b64("changed"));
    common::ha::wait_for(CONVERGE, "GET /zones to show zone-2 offline", || async {
        zones_of(&g).await["zone-2"]["connected"] == false
    })
    .await;
    proxy.heal();
    every_zone_equals_the_global_store(&g, &zones.iter().collect::<Vec<_>>()).await;
    common::ha::wait_for(CONVERGE, "GET /zones to show zone-2 back", || async {
        zones_of(&g).await["zone-2"]["connected"] == true
    })
    .await;
    assert!(
        !zones[1]
            .said()
            .iter()
            .any(|line| line.contains("took the global store's state whole")),
        "a restarted zone goes on from its revision, without a full list"
    );

    // The global store restarted: zones wait, then go on. While it is down, a backup of
    // its database is taken (restored below).
    global.kill();
    let backup = dir.path().join("global-backup");
    std::fs::create_dir(&backup).unwrap();
    copy_database(dir.path(), &backup);
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
        common::http::secret_json("mesh-7", "after-restart", "r"),
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
        common::http::secret_json("mesh-9", "after-prune", "p"),
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

    // The global store restored from that backup: its feed is back at a revision below the
    // zones'. Each zone is told so (410), lists again, and ends equal to the restored store:
    // what was written after the backup is gone, what was deleted after it is back.
    global.kill();
    copy_database(&backup, dir.path());
    global.restart(dir.path()).await;
    every_zone_equals_the_global_store(&g, &zones.iter().collect::<Vec<_>>()).await;
    for zone in &zones {
        let gone = reqwest::get(format!("{}/meshes/mesh-9/secrets/after-prune", zone.base))
            .await
            .unwrap();
        assert_eq!(gone.status(), StatusCode::NOT_FOUND, "{}", zone.base);
    }
    assert!(
        zones[1]
            .said()
            .iter()
            .any(|line| line.contains("listing again")),
        "the reset feed made zone-1 list again"
    );

    // zone-0's token revoked: its sync stops at once (its open long poll included); the
    // other zones go on. A new token in its token file, and it catches up.
    let (status, _) = put(
        &format!("{g}/global-secrets/zone-token-revocations"),
        json!({"type": "GlobalSecret", "name": "zone-token-revocations",
            "data": common::http::b64(jti_of(&token0))}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = get_with(&format!("{g}/meshes/mesh-1/secrets/secret-1"), &token0).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    common::ha::wait_for(CONVERGE, "zone-0 to say its token is refused", || async {
        readyz(&zone0)
            .await
            .is_some_and(|(_, body)| body.contains("refuses this zone's token"))
    })
    .await;
    let after_revocation = format!("{g}/meshes/mesh-1/secrets/after-revocation");
    put(
        &after_revocation,
        common::http::secret_json("mesh-1", "after-revocation", "v"),
    )
    .await;
    every_zone_equals_the_global_store(&g, &[&zones[1], &zones[2]]).await;
    let on_zone0 = reqwest::get(format!("{zone0}/meshes/mesh-1/secrets/after-revocation"))
        .await
        .unwrap();
    assert_eq!(
        on_zone0.status(),
        StatusCode::NOT_FOUND,
        "a revoked zone synced"
    );
    std::fs::write(token_file(0), zone_token(&g, "zone-0").await).unwrap();
    every_zone_equals_the_global_store(&g, &zones.iter().collect::<Vec<_>>()).await;
    let said = zones[0].said();
    assert!(
        said.iter()
            .any(|line| line.contains("using the new token in the token file")),
        "{said:?}"
    );
    // No 500 anywhere: not to the test's writes, not to a zone's sync, not on a zone (each
    // server's requests by status, since its last start). `/readyz` answers 503 by design
    // while a zone is cut off or refused (the test polls it then): that is no error.
    for base in std::iter::once(&g).chain(zones.iter().map(|z| &z.base)) {
        let metrics = common::http::fetch_text(format!("{base}/metrics")).await;
        let errors: Vec<&str> = metrics
            .lines()
            .filter(|l| l.contains("http_requests_total") && l.contains("status=\"5"))
            .filter(|l| !l.contains("route=\"/readyz\""))
            .collect();
        assert!(errors.is_empty(), "{base}: {errors:?}");
    }
}

fn base64_decode(data: &Value) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(data.as_str().unwrap())
        .unwrap()
}

/// Copies the global store's SQLite database (`global.db` and its write-ahead log) from the
/// directory `from` to `to`, as a backup of a stopped server is taken and restored.
fn copy_database(from: &std::path::Path, to: &std::path::Path) {
    for file in ["global.db", "global.db-wal", "global.db-shm"] {
        let _ = std::fs::remove_file(to.join(file));
        if from.join(file).exists() && file != "global.db-shm" {
            std::fs::copy(from.join(file), to.join(file)).unwrap();
        }
    }
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

/// The sync channel over TLS: a global store serving HTTPS with a certificate from an
/// operator's own CA. A zone given that CA (`--global-ca-cert`) follows it; a zone without
/// it refuses the certificate, says so on `/readyz`, and holds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_follows_a_global_store_over_tls_and_trusts_only_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    // The CA, and the global store's certificate for localhost and 127.0.0.1.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "operator CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server_cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    let ca_file = common::write_file(dir.path(), "ca.crt", ca_cert.pem());
    let cert_file = common::write_file(dir.path(), "tls.crt", server_cert.pem());
    let key_file = common::write_file(dir.path(), "tls.key", server_key.serialize_pem());

    let global_url = common::sqlite_url(dir.path(), "global.db");
    let global_port = kuma_secrets::testing::cluster::free_port();
    let mut global = std::process::Command::new(env!("CARGO_BIN_EXE_kuma-secrets"))
        .args(["serve", "--mode", "global", "--store", &global_url])
        .args(["--api-addr", &format!("127.0.0.1:{global_port}")])
        .args(["--tls-cert", &cert_file, "--tls-key", &key_file])
        .env_remove("KUMA_SECRETS_STORE")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let https = format!("https://localhost:{global_port}");
    let trusting = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    common::ha::wait_for(CONVERGE, "the global store to answer over TLS", || async {
        trusting
            .get(format!("{https}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    // The global store's content, and a zone token (its loopback admin, over TLS).
    let token = trusting
        .post(format!("{https}/tokens/zone"))
        .json(&json!({"zone": "east", "validFor": "1h"}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let token_file = common::write_file(dir.path(), "east.token", &token);
    let written = trusting
        .put(format!("{https}/meshes/default/secrets/over-tls"))
        .json(&common::http::secret_json(
            "default",
            "over-tls",
            "encrypted in transit",
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(written.status(), StatusCode::CREATED);

    let zone_args = |name: &str, ca: Option<&str>| -> Vec<String> {
        let mut args: Vec<String> = [
            "--zone",
            name,
            "--global-url",
            &https,
            "--global-token-file",
            &token_file,
            "--store",
            &common::sqlite_url(dir.path(), &format!("{name}.db")),
        ]
        .map(str::to_owned)
        .to_vec();
        if let Some(ca) = ca {
            args.extend(["--global-ca-cert".to_owned(), ca.to_owned()]);
        }
        args
    };
    let east = Server::start(&zone_args("east", Some(&ca_file)), dir.path()).await;
    let west = Server::start(&zone_args("west", None), dir.path()).await;
    common::ha::wait_for(CONVERGE, "the zone with the CA to sync", || async {
        readyz(&east.base)
            .await
            .is_some_and(|(status, _)| status == 200)
    })
    .await;
    let held =
        common::http::fetch_json(format!("{}/meshes/default/secrets/over-tls", east.base)).await;
    assert_eq!(held["data"], common::http::b64("encrypted in transit"));
    common::ha::wait_for(
        CONVERGE,
        "the zone without the CA to refuse the certificate",
        || async {
            readyz(&west.base).await.is_some_and(|(status, body)| {
                status == 503 && body.contains("unreachable since") && body.contains("certificate")
            })
        },
    )
    .await;
    let _ = global.kill();
    let _ = global.wait();
}
