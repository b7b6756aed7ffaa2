//! A full disk under load, as it happened: the real `serve` binary on a store whose files
//! sit on a small tmpfs (SQLite: the database file; Postgres: a throwaway cluster whose
//! tables live in a tablespace on it), filled by concurrent writers. Every write the
//! server acknowledged (201, 200) is read back with its data; every refused one is a 503
//! with `Retry-After` whose detail says the disk is full, and left nothing behind; no 500.
//! Then the tmpfs grows (space freed) and writes succeed again without a restart.
//!
//! Mounting a tmpfs needs root (or CAP_SYS_ADMIN): elsewhere these tests say so and pass
//! without running, since no unprivileged way to fill a disk exists.

#[macro_use]
mod common;

use common::cluster::{Cluster, owned_temp_dir, running_as_root};
use common::http::{b64, get_fresh};
use common::process::{kuma, serve_sealed};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Size of each secret the writers create: big enough to fill a few MiB quickly.
const SECRET_BYTES: usize = 30 * 1024;
/// Concurrent writers.
const WRITERS: usize = 4;
/// A writer stops after this many refusals (the disk is full by then) ...
const REFUSALS_PER_WRITER: usize = 8;
/// ... or this many requests, whichever comes first (3 MiB hold about a hundred).
const REQUESTS_PER_WRITER: usize = 400;
/// Requests per writer once space is back (all of them fit).
const REQUESTS_AFTER: usize = 25;

/// A tmpfs mounted on a directory of its own, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`mount`'s syntax, e.g. `3m`) owned by `owner`; `None`
    /// (after saying why) where this process may not mount.
    fn mount(size: &str, owner: &str) -> Option<Self> {
        if !running_as_root() {
            eprintln!("SKIPPED: filling a disk needs a tmpfs, and mounting one needs root");
            return None;
        }
        let dir = owned_temp_dir("ks-full-disk-");
        let mounted = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .unwrap();
        if !mounted.status.success() {
            eprintln!(
                "SKIPPED: mounting a tmpfs is not allowed here: {}",
                String::from_utf8_lossy(&mounted.stderr)
            );
            return None;
        }
        let chown = Command::new("chown")
            .arg(format!("{owner}:{owner}"))
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(chown.success());
        Some(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Frees space: the tmpfs grows to `size`.
    fn grow(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.path())
            .status()
            .unwrap();
        assert!(status.success(), "remount of {}", self.path().display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// What the writers saw.
#[derive(Default, Clone)]
struct Seen {
    /// Acknowledged writes: secret name → the data the server acknowledged.
    acked: BTreeMap<String, String>,
    /// Refused creates (503): these names must not exist afterwards.
    refused: Vec<String>,
    statuses: BTreeMap<u16, u64>,
    /// A 500, a 503 without Retry-After or not naming the full disk, anything else odd.
    problems: Vec<String>,
}

/// The data of secret `name`: distinct per secret, base64.
fn data_of(name: &str) -> String {
    let mut bytes = name.as_bytes().to_vec();
    bytes.resize(SECRET_BYTES, b'.');
    // Not compressible into nothing (tmpfs does not compress, but keep the bytes honest).
    for (i, b) in bytes.iter_mut().enumerate().skip(name.len()) {
        *b = (i * 31 % 251) as u8 ^ name.len() as u8;
    }
    b64(bytes)
}

/// Checks a refusal is the 503 a full disk must give.
async fn check_refusal(seen: &Mutex<Seen>, what: &str, response: reqwest::Response) {
    let status = response.status();
    let retry_after = response.headers().contains_key("retry-after");
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let detail = body["detail"].as_str().unwrap_or_default().to_owned();
    let mut seen = seen.lock().unwrap();
    if status != StatusCode::SERVICE_UNAVAILABLE {
        seen.problems.push(format!("{what}: {status} {body}"));
    } else if !retry_after {
        seen.problems
            .push(format!("{what}: 503 without Retry-After"));
    } else if !detail.contains("disk is full") && !detail.contains("I/O error") {
        seen.problems
            .push(format!("{what}: 503 that does not say why: {detail:?}"));
    }
}

/// `WRITERS` writers creating secrets through `base`, each until it was refused
/// `REFUSALS_PER_WRITER` times or sent `requests`.
async fn fill(base: &str, seen: &Arc<Mutex<Seen>>, round: &str, requests: usize) {
    let client = Client::new();
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let (client, base, seen) = (client.clone(), base.to_owned(), seen.clone());
        let round = round.to_owned();
        writers.push(tokio::spawn(async move {
            let mut refusals = 0;
            for n in 0..requests {
                let name = format!("{round}-w{writer}-{n}");
                let data = data_of(&name);
                let response = client
                    .put(format!("{base}/meshes/default/secrets/{name}"))
                    .json(&json!({"type": "Secret", "mesh": "default", "name": name, "data": data}))
                    .send()
                    .await
                    .unwrap();
                let status = response.status();
                *seen
                    .lock()
                    .unwrap()
                    .statuses
                    .entry(status.as_u16())
                    .or_default() += 1;
                if status == StatusCode::CREATED {
                    seen.lock().unwrap().acked.insert(name, data);
                } else {
                    check_refusal(&seen, &format!("PUT {name}"), response).await;
                    seen.lock().unwrap().refused.push(name);
                    refusals += 1;
                    if refusals == REFUSALS_PER_WRITER {
                        break;
                    }
                }
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
}

/// A conditional update, a delete and a Mesh create on the full disk: each either
/// succeeds (and is recorded) or is the full disk's 503 and changed nothing.
async fn other_writes_on_a_full_disk(base: &str, seen: &Arc<Mutex<Seen>>, victim: &str) {
    let client = Client::new();
    let url = format!("{base}/meshes/default/secrets/{victim}");
    let before = get_fresh(&url).await;
    let version = common::http::version_of(&before);
    let new_data = data_of(&format!("{victim}-updated"));
    let update = client
        .put(&url)
        .header("If-Match", format!("\"{version}\""))
        .json(&json!({"type": "Secret", "mesh": "default", "name": victim, "data": new_data}))
        .send()
        .await
        .unwrap();
    if update.status() == StatusCode::OK {
        seen.lock()
            .unwrap()
            .acked
            .insert(victim.to_owned(), new_data);
    } else {
        check_refusal(seen, "If-Match PUT", update).await;
    }

    let mesh = client
        .put(format!("{base}/meshes/full-disk"))
        .json(&json!({"type": "Mesh", "name": "full-disk"}))
        .send()
        .await
        .unwrap();
    let mesh_created = mesh.status() == StatusCode::CREATED;
    if !mesh_created {
        check_refusal(seen, "Mesh PUT", mesh).await;
    }
    let mesh_now = client
        .get(format!("{base}/meshes/full-disk"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(
        mesh_now,
        if mesh_created {
            StatusCode::OK
        } else {
            StatusCode::NOT_FOUND
        },
        "the Mesh is stored exactly when its create was acknowledged"
    );
}

/// Reads every acknowledged write back (past the read cache) and checks every refused
/// create left nothing.
async fn assert_stored(base: &str, seen: &Seen) {
    let mut lost = Vec::new();
    for (name, data) in &seen.acked {
        let response = get_fresh(format!("{base}/meshes/default/secrets/{name}")).await;
        if response.status() != StatusCode::OK {
            lost.push(format!("{name}: {}", response.status()));
            continue;
        }
        let body: Value = response.json().await.unwrap();
        if body["data"] != *data {
            lost.push(format!("{name}: another value"));
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes are not stored: {lost:?}",
        lost.len(),
        seen.acked.len()
    );
    for name in &seen.refused {
        let response = get_fresh(format!("{base}/meshes/default/secrets/{name}")).await;
        assert_eq!(
            response.status(),
            StatusCode::NOT_FOUND,
            "{name} was refused with a 503 saying nothing was written, yet it is stored"
        );
    }
}

/// Fill, check, free space, check the server writes again by itself, fill again, check.
async fn full_disk_under_load(base: &str, disk: &Tmpfs) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    // One secret written while there is room, to be updated once the disk is full.
    let victim = "victim";
    let created = Client::new()
        .put(format!("{base}/meshes/default/secrets/{victim}"))
        .json(
            &json!({"type": "Secret", "mesh": "default", "name": victim, "data": data_of(victim)}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    seen.lock()
        .unwrap()
        .acked
        .insert(victim.to_owned(), data_of(victim));

    fill(base, &seen, "a", REQUESTS_PER_WRITER).await;
    other_writes_on_a_full_disk(base, &seen, victim).await;
    {
        let seen = seen.lock().unwrap();
        eprintln!(
            "full disk: {} writes acknowledged, {} refused; answers {:?}",
            seen.acked.len(),
            seen.refused.len(),
            seen.statuses
        );
        assert!(seen.problems.is_empty(), "{:#?}", seen.problems);
        assert!(
            seen.statuses.get(&503).copied().unwrap_or(0) >= (WRITERS * REFUSALS_PER_WRITER) as u64,
            "the disk never filled: {:?}",
            seen.statuses
        );
        assert!(
            seen.acked.len() > 10,
            "too few writes fit: {:?}",
            seen.statuses
        );
    }
    let snapshot = seen.lock().unwrap().clone();
    assert_stored(base, &snapshot).await;

    // Space freed: the server writes again, by itself.
    disk.grow("64m");
    let deadline = Instant::now() + Duration::from_secs(30);
    let client = Client::new();
    loop {
        let response = client
            .put(format!("{base}/meshes/default/secrets/after"))
            .json(&json!({"type": "Secret", "mesh": "default", "name": "after", "data": data_of("after")}))
            .send()
            .await
            .unwrap();
        if response.status().is_success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no write succeeded 30 s after space was freed: {}",
            response.status()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    seen.lock()
        .unwrap()
        .acked
        .insert("after".into(), data_of("after"));
    let refused_before = seen.lock().unwrap().refused.len();
    // A second round fits whole now (each writer stops at its request bound).
    let round_two = Arc::new(Mutex::new(Seen::default()));
    fill(base, &round_two, "b", REQUESTS_AFTER).await;
    let round_two = Arc::try_unwrap(round_two)
        .ok()
        .unwrap()
        .into_inner()
        .unwrap();
    assert!(
        round_two.refused.is_empty() && round_two.problems.is_empty(),
        "writes still refused after space was freed: {:?} {:?}",
        round_two.statuses,
        round_two.problems
    );
    assert_eq!(seen.lock().unwrap().refused.len(), refused_before);
    assert_stored(base, &round_two).await;
    let snapshot = seen.lock().unwrap().clone();
    assert_stored(base, &snapshot).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_on_a_full_disk_acknowledges_only_stored_writes() {
    let Some(disk) = Tmpfs::mount("3m", "root") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", disk.path().join("kuma-secrets.db").display());
    let (_serve, base, _log) = serve_sealed(&url, work.path(), &[]).await;
    full_disk_under_load(&base, &disk).await;
    let integrity = Command::new("sqlite3")
        .arg(disk.path().join("kuma-secrets.db"))
        .arg("PRAGMA integrity_check")
        .output();
    if let Ok(out) = integrity {
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_on_a_full_disk_acknowledges_only_stored_writes() {
    let Some(disk) = Tmpfs::mount("3m", "postgres") else {
        return;
    };
    let cluster = Cluster::start();
    // The store's tables and indexes live on the tmpfs; the WAL and catalogs do not (a
    // full WAL disk stops Postgres itself, which is the crash test's business).
    cluster.psql(&format!(
        "CREATE TABLESPACE tiny LOCATION '{}'",
        disk.path().display()
    ));
    cluster.psql("CREATE DATABASE kuma_secrets");
    cluster.psql("ALTER DATABASE kuma_secrets SET default_tablespace = 'tiny'");
    let url = common::with_database(&cluster.url, "kuma_secrets");
    kuma(&["migrate", "up", "--store", &url], None).await.ok();
    let work = tempfile::tempdir().unwrap();
    let (_serve, base, _log) = serve_sealed(&url, work.path(), &[]).await;
    full_disk_under_load(&base, &disk).await;
    let log = cluster.log();
    assert!(
        log.contains("No space left on device"),
        "the disk never filled for Postgres:\n{log}"
    );
}
