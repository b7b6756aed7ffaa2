//! Store throughput next to `pgbench` running the same SQL on the same Postgres.
//!
//! ```text
//! cargo bench --bench store_throughput -- [--seconds N] [--callers 1,8,32] [--rounds N]
//!     [--ops get,update]
//! ```
//!
//! For each operation and number of concurrent callers it runs the store for N seconds,
//! then `pgbench -M prepared` for N seconds with a script holding the statement the store
//! sends, and prints ops/s for both and their ratio (the quality bar is >= 0.8).
//!
//! - `get`: read one secret by key (`SELECT … WHERE name = $1 AND mesh = $2`).
//! - `update`: versioned update of one secret (`UPDATE … WHERE version = $4 AND name = $5
//!   AND mesh = $6 RETURNING …`), each caller passing the version its previous update
//!   returned. Each caller owns one secret, so no update conflicts and both sides do the
//!   same work; pgbench carries the version from one transaction to the next with `\gset`.
//!   Every update writes a new 1 KiB value (the store a shifted pattern, pgbench an md5
//!   repeated), as a rotation does.
//!
//! Each cell also runs the store with encryption at rest (AES-256-GCM sealing on every
//! write, opening on every read) on a second database whose rows are sealed, so the table
//! shows what sealing costs next to the plaintext path.
//!
//! Each cell also runs the plaintext store with version history off (`--max-versions 0`)
//! next to the default (10 earlier versions per secret), alternating the same way, so the
//! table shows what keeping history costs.
//!
//! And each cell runs the plaintext store on the same database with the update trigger's
//! event insert taken out (see `set_events`), so the table shows what recording every
//! change as an event (in the writing transaction) costs. Events on and off alternate on,
//! off, off, on, and each column is the mean of its runs: the table grows and ages as the
//! runs go, and this order gives both sides the same share of it. `--rounds N` repeats the
//! whole sequence N times; on a shared machine one round moves by up to ±15 %, so judge
//! the ratios over several.
//!
//! Secrets hold 1 KiB (a typical PEM key). Postgres comes from `DATABASE_URL`; the bench
//! creates and drops its own databases.

mod common;

use kuma_secrets::domain::{Labels, NewMesh, NewSecret, SecretData, SecretKey, SecretUpdate};
use kuma_secrets::sealing::Keyring;
use kuma_secrets::store::{PostgresStore, SecretStore, StoreOptions};
use sqlx::{Connection, Executor, PgConnection};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const MESH: &str = "bench";
const DATA_LEN: usize = 1024;
const TIMESTAMP: &str = "2026-11-28 00:00:00+00";

const GET_SQL: &str = "\\set name :client_id\n\
SELECT mesh, name, version, creation_time, modification_time, labels, data, key_id FROM secrets WHERE name = :name AND mesh = :mesh;\n";

const UPDATE_SQL: &str = "\\set name :client_id\n\
\\set value random(1, 1000000000)\n\
UPDATE secrets SET data = convert_to(repeat(md5(:value::text), 32), 'SQL_ASCII'), key_id = :key_id, labels = :labels, modification_time = :ts, version = version + 1 WHERE version = :version AND name = :name AND mesh = :mesh RETURNING mesh, name, version, creation_time, modification_time, labels, data, key_id \\gset\n";

#[derive(Clone, Copy, PartialEq)]
enum Op {
    Get,
    Update,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Update => "update",
        }
    }
}

struct Args {
    seconds: u64,
    callers: Vec<usize>,
    /// How many times each cell repeats its on/off sequence (the ratios are over all).
    rounds: usize,
    ops: Vec<Op>,
}

fn parse_args() -> Args {
    let mut args = Args {
        seconds: 5,
        callers: vec![1, 8, 32],
        rounds: 1,
        ops: vec![Op::Get, Op::Update],
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--seconds" => {
                args.seconds = it.next().and_then(|s| s.parse().ok()).expect("--seconds N")
            }
            "--callers" => {
                args.callers = it
                    .next()
                    .expect("--callers 1,8,32")
                    .split(',')
                    .map(|c| c.parse().expect("caller count"))
                    .collect()
            }
            "--rounds" => args.rounds = it.next().and_then(|s| s.parse().ok()).expect("--rounds N"),
            "--ops" => {
                args.ops = it
                    .next()
                    .expect("--ops get,update")
                    .split(',')
                    .map(|op| match op {
                        "get" => Op::Get,
                        "update" => Op::Update,
                        other => panic!("--ops: unknown operation {other}"),
                    })
                    .collect()
            }
            // cargo bench passes --bench; ignore it and anything else.
            _ => {}
        }
    }
    args
}

fn secret_name(i: usize) -> String {
    // pgbench names its clients 0..N and can only put numbers in variables, so the secrets
    // are named "0", "1", … (valid RFC 1123 names).
    i.to_string()
}

fn payload() -> Vec<u8> {
    payload_of(0)
}

/// The value of a secret at `version`: every byte differs from the previous version's, as
/// a rotated key or certificate does. (Rewriting identical bytes would let Postgres log
/// only the changed columns of the row and make every write unrealistically small.)
fn payload_of(version: i64) -> Vec<u8> {
    (0..DATA_LEN)
        .map(|i| ((i as i64 * 31 + version * 7) % 251) as u8)
        .collect()
}

async fn run_store(store: &Arc<PostgresStore>, op: Op, callers: usize, seconds: u64) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for caller in 0..callers {
        let store = store.clone();
        let stop = stop.clone();
        let count = count.clone();
        tasks.push(tokio::spawn(async move {
            let key = SecretKey::parse(Some(MESH), &secret_name(caller)).unwrap();
            let mut version = store.get_secret(&key).await.unwrap().meta.version;
            let mut done = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match op {
                    Op::Get => {
                        let secret = store.get_secret(&key).await.unwrap();
                        std::hint::black_box(secret);
                    }
                    Op::Update => {
                        let update = SecretUpdate {
                            data: SecretData::new(payload_of(version)).unwrap(),
                            labels: Labels::default(),
                        };
                        version = store
                            .update_secret(&key, version, update)
                            .await
                            .unwrap()
                            .meta
                            .version;
                    }
                }
                done += 1;
            }
            count.fetch_add(done, Ordering::Relaxed);
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

async fn reset_versions(url: &str) {
    let mut conn = PgConnection::connect(url).await.unwrap();
    // Versions start again at 1: the history the previous run kept (and the versions this
    // reset itself moves into history) would collide with them.
    conn.execute("UPDATE secrets SET version = 1; DELETE FROM secret_versions")
        .await
        .unwrap();
    conn.close().await.unwrap();
}

/// Sets the store's history limit (`serve --max-versions`).
async fn set_max_versions(url: &str, limit: u32) {
    let store = PostgresStore::open(url, StoreOptions::allow_plaintext_secrets())
        .await
        .unwrap();
    store.set_max_versions(limit).await.unwrap();
    store.close().await;
}

/// Turns the change feed's event on an update on or off: "off" is the update trigger
/// (`kuma_secrets_secret_updated`) with its event insert, the lines from `-- event:` to
/// `-- end event`, taken out; "on" puts the function back as the migration wrote it.
async fn set_events(url: &str, on: bool) {
    static MIGRATED: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let mut conn = PgConnection::connect(url).await.unwrap();
    let (migrated,): (String,) =
        sqlx::query_as("SELECT pg_get_functiondef('kuma_secrets_secret_updated'::regproc)")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    let migrated = MIGRATED.get_or_init(|| migrated);
    let definition = if on {
        migrated.clone()
    } else {
        let start = migrated.find("-- event:").expect("the event block starts");
        let end = migrated.find("-- end event").expect("the event block ends");
        format!("{}{}", &migrated[..start], &migrated[end..])
    };
    conn.execute(sqlx::AssertSqlSafe(definition)).await.unwrap();
    conn.close().await.unwrap();
}

fn run_pgbench(
    url: &str,
    op: Op,
    callers: usize,
    seconds: u64,
    script_dir: &std::path::Path,
) -> f64 {
    let script = script_dir.join(format!("{}.sql", op.name()));
    std::fs::write(&script, if op == Op::Get { GET_SQL } else { UPDATE_SQL }).unwrap();
    let output = Command::new("pgbench")
        .arg("-n")
        .args(["-M", "prepared"])
        .args(["-c", &callers.to_string()])
        .args(["-j", &callers.min(2).to_string()])
        .args(["-T", &seconds.to_string()])
        .arg("-f")
        .arg(&script)
        .args(["-D", &format!("mesh={MESH}")])
        .args(["-D", "labels={}"])
        .args(["-D", &format!("ts={TIMESTAMP}")])
        .args(["-D", "version=1"])
        .args(["-D", "key_id=bench-1"])
        .arg(url)
        .output()
        .expect("pgbench is needed: apt-get install postgresql-client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "pgbench failed:\n{stdout}\n{stderr}"
    );
    if let Some(failed) = stdout
        .lines()
        .find(|l| l.contains("number of failed transactions"))
    {
        assert!(
            failed.contains(": 0 "),
            "pgbench transactions failed:\n{stdout}"
        );
    }
    stdout
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no tps in pgbench output:\n{stdout}"))
}

/// Creates database `db` with the bench mesh and one secret per caller, sealed with
/// `keyring` if given.
async fn prepare(
    admin: &mut PgConnection,
    admin_url: &str,
    db: &str,
    callers: usize,
    keyring: Option<Arc<Keyring>>,
) -> String {
    let url = common::create_migrated_database(admin, admin_url, db).await;
    let options = StoreOptions {
        keyring: keyring.map(Into::into),
        ..StoreOptions::allow_plaintext_secrets()
    };
    let store = PostgresStore::open(&url, options).await.unwrap();
    store
        .create_mesh(NewMesh {
            name: kuma_secrets::domain::MeshName::parse(MESH).unwrap(),
            spec: Default::default(),
            labels: Labels::default(),
        })
        .await
        .unwrap();
    for i in 0..callers {
        store
            .create_secret(NewSecret {
                key: SecretKey::parse(Some(MESH), &secret_name(i)).unwrap(),
                data: SecretData::new(payload()).unwrap(),
                labels: Labels::default(),
            })
            .await
            .unwrap();
    }
    store.close().await;
    let mut conn = PgConnection::connect(&url).await.unwrap();
    conn.execute("VACUUM ANALYZE secrets").await.unwrap();
    conn.close().await.unwrap();
    url
}

fn main() {
    let args = parse_args();
    let runtime = common::runtime();
    let admin_url = common::database_url();
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let (plain_db, sealed_db) = (
        format!("ks_bench_{suffix}"),
        format!("ks_bench_sealed_{suffix}"),
    );
    let keyring = Arc::new(Keyring::single("bench-1", Keyring::random_key()));
    let script_dir = tempfile::tempdir().unwrap();

    runtime.block_on(async {
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .expect("Postgres at DATABASE_URL");
        let max = args.callers.iter().copied().max().unwrap_or(1);
        let url = prepare(&mut admin, &admin_url, &plain_db, max, None).await;
        let sealed_url = prepare(&mut admin, &admin_url, &sealed_db, max, Some(keyring.clone())).await;

        println!(
            "store vs pgbench, {}s per cell, {} cores, Postgres at {}",
            args.seconds,
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            kuma_secrets::store::StoreUrl::parse(&admin_url).map_or_else(|e| e.to_string(), |u| u.to_string())
        );
        println!();
        println!("| operation | callers | kuma-secrets ops/s | pgbench tps | ratio | sealed ops/s | sealed / plaintext | events off ops/s | events on / off | max-versions 0 ops/s | max-versions 10 / 0 |");
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for &op in &args.ops {
            for &callers in &args.callers {
                let run = |url: String, keyring: Option<Arc<Keyring>>| async move {
                    let options = StoreOptions {
                        max_connections: callers as u32,
                        keyring: keyring.map(Into::into),
                        ..StoreOptions::allow_plaintext_secrets()
                    };
                    let store = Arc::new(PostgresStore::open(&url, options).await.unwrap());
                    let rate = run_store(&store, op, callers, args.seconds).await;
                    store.close().await;
                    reset_versions(&url).await;
                    rate
                };
                // on, events off, events off, on, history off, history off, on: each
                // comparison is between the runs around it; --rounds repeats the sequence.
                let (mut on, mut with_events, mut no_events) = (Vec::new(), 0.0, 0.0);
                let (mut with_history, mut no_history) = (0.0, 0.0);
                for _ in 0..args.rounds {
                    let on_1 = run(url.clone(), None).await;
                    set_events(&url, false).await;
                    no_events += run(url.clone(), None).await;
                    no_events += run(url.clone(), None).await;
                    set_events(&url, true).await;
                    let on_2 = run(url.clone(), None).await;
                    set_max_versions(&url, 0).await;
                    no_history += run(url.clone(), None).await;
                    no_history += run(url.clone(), None).await;
                    set_max_versions(&url, 10).await;
                    let on_3 = run(url.clone(), None).await;
                    with_events += on_1 + on_2;
                    with_history += on_2 + on_3;
                    on.extend([on_1, on_2, on_3]);
                }
                let ours = on.iter().sum::<f64>() / on.len() as f64;
                let events_ratio = with_events / no_events;
                let history_ratio = with_history / no_history;
                let no_events = no_events / (2 * args.rounds) as f64;
                let no_history = no_history / (2 * args.rounds) as f64;
                let sealed = run(sealed_url.clone(), Some(keyring.clone())).await;
                let theirs = run_pgbench(&url, op, callers, args.seconds, script_dir.path());
                // pgbench wrote its plaintext payload with a key id: make the rows plaintext
                // rows again for the next plaintext run.
                let mut conn = PgConnection::connect(&url).await.unwrap();
                conn.execute("UPDATE secrets SET version = 1, key_id = NULL; DELETE FROM secret_versions")
                    .await
                    .unwrap();
                conn.close().await.unwrap();
                println!(
                    "| {} | {callers} | {ours:.0} | {theirs:.0} | {:.2} | {sealed:.0} | {:.2} | {no_events:.0} | {:.2} | {no_history:.0} | {:.2} |",
                    op.name(),
                    ours / theirs,
                    sealed / ours,
                    events_ratio,
                    history_ratio
                );
            }
        }
        for db in [&plain_db, &sealed_db] {
            common::drop_database(&mut admin, db).await;
        }
    });
}
