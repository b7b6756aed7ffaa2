//! How long a write made through one process takes to reach a watcher in another, on one
//! Postgres: the change feed's cross-replica latency.
//!
//! ```text
//! cargo bench --bench watch_latency -- [--writes N]
//! ```
//!
//! Process B is the real binary (`kuma-secrets serve` on a fresh database); process A is
//! this bench, with two watchers on the same database through the library:
//!
//! - `LISTEN/NOTIFY`: a store opened as an embedder would; it is woken by the NOTIFY the
//!   events trigger sends at commit (and reads every 200 ms anyway);
//! - `poll only` (the anchor, how every watcher worked before): the same store opened with
//!   `pool_mode=transaction`, under which it cannot LISTEN and reads every 200 ms.
//!
//! Each write is a PUT of a new secret to B, sent at a random moment (0–50 ms after the
//! previous one was seen by both watchers); its latency is from just before the PUT is sent
//! to the moment each watcher yields its event, so it includes B's HTTP handling and
//! commit. The PUT's own round trip is printed beside it. Postgres comes from
//! `DATABASE_URL` (or the suite's default); the bench makes and drops its own database.

use futures_util::StreamExt;
use kuma_secrets::store::feed::EventFilter;
use kuma_secrets::store::watch::watch;
use kuma_secrets::store::{AnyStore, SecretStore, StoreOptions};
use kuma_secrets::testing::TestDatabase;
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn main() {
    let mut writes = 300usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--writes" => {
                writes = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--writes N")
            }
            "--bench" => {}
            other => panic!("unknown argument {other}: use --writes N"),
        }
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(run(writes));
}

/// `kuma-secrets serve` on `url`, killed when dropped.
struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_server(url: &str) -> Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_kuma-secrets"))
        .args(["serve", "--store", url, "--allow-plaintext-secrets"])
        .args(["--api-addr", &format!("127.0.0.1:{port}")])
        .env("KUMA_SECRETS_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start kuma-secrets serve");
    let server = Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = client.get(format!("{}/readyz", server.base)).send().await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            return server;
        }
        assert!(Instant::now() < deadline, "serve never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A watcher's arrivals: secret name → when its event was yielded.
type Arrivals = tokio::sync::mpsc::UnboundedReceiver<(String, Instant)>;

fn watching(store: AnyStore, after: i64) -> Arrivals {
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut events = Box::pin(watch(store, after, EventFilter::default()));
        while let Some(event) = events.next().await {
            let event = event.expect("the feed");
            if sender.send((event.name, Instant::now())).is_err() {
                return;
            }
        }
    });
    receiver
}

async fn run(writes: usize) {
    let db = TestDatabase::migrated().await;
    let server = start_server(&db.url).await;
    let options = StoreOptions::allow_plaintext_secrets;
    let listening = AnyStore::open(&db.url, options()).await.unwrap();
    let polling = AnyStore::open(&format!("{}?pool_mode=transaction", db.url), options())
        .await
        .unwrap();
    let after = listening.current_revision().await.unwrap();
    let mut watchers = [
        ("LISTEN/NOTIFY", watching(listening.clone(), after)),
        ("poll only (anchor)", watching(polling.clone(), after)),
    ];
    // Let the listener's session come up before measuring.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let client = reqwest::Client::new();
    let mut latencies: HashMap<&str, Vec<Duration>> = HashMap::new();
    let mut round_trips = Vec::with_capacity(writes);
    let mut jitter = 0x9e37_79b9_u64;
    for i in 0..writes {
        jitter ^= jitter << 13;
        jitter ^= jitter >> 7;
        jitter ^= jitter << 17;
        tokio::time::sleep(Duration::from_millis(jitter % 50)).await;
        let name = format!("w-{i}");
        let sent = Instant::now();
        let response = client
            .put(format!("{}/meshes/default/secrets/{name}", server.base))
            .json(&serde_json::json!({"type": "Secret", "mesh": "default", "name": name, "data": "MQ=="}))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{}", response.status());
        round_trips.push(sent.elapsed());
        for (label, arrivals) in &mut watchers {
            let (seen, at) = arrivals.recv().await.expect("watcher ended");
            assert_eq!(seen, name, "events arrive in order");
            latencies.entry(label).or_default().push(at - sent);
        }
    }

    println!(
        "watch latency, write through `kuma-secrets serve` (another process) to a watcher here, \
         one Postgres, {writes} writes"
    );
    println!("| watcher | p50 | p90 | p99 | max |");
    println!("| --- | --- | --- | --- | --- |");
    for (label, _) in &watchers {
        print_row(label, latencies.get_mut(label).unwrap());
    }
    print_row("(the PUT's own round trip)", &mut round_trips);
    drop(watchers);
    listening.close().await;
    polling.close().await;
    drop(server);
}

fn print_row(label: &str, values: &mut [Duration]) {
    values.sort();
    let at = |q: f64| {
        let i = ((values.len() as f64 * q).ceil() as usize).clamp(1, values.len()) - 1;
        format!("{:.1} ms", values[i].as_secs_f64() * 1000.0)
    };
    println!(
        "| {label} | {} | {} | {} | {} |",
        at(0.50),
        at(0.90),
        at(0.99),
        at(1.0)
    );
}
