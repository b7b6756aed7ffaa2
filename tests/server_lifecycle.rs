//! The server as a process: the real binary starting, serving and stopping on SIGTERM,
//! refusing a schema it does not match, and graceful shutdown finishing a request that is
//! in flight when the signal comes.

mod common;

use common::TestDb;
use common::server::{Backend, TestServer, wait_ready};
use kuma_secrets::domain::SecretKey;
use kuma_secrets::store::SecretStore;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Starts `kuma-secrets serve` with `args` and returns it with its API address, read from
/// its log, and the rest of its log lines.
fn spawn_serve(args: &[&str], dir: &std::path::Path) -> (Child, String, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kuma-secrets"))
        .arg("serve")
        .args(["--api-addr", "127.0.0.1:0"])
        .args(args)
        .current_dir(dir)
        .env_remove("KUMA_SECRETS_STORE")
        .env("KUMA_SECRETS_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kuma-secrets");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the server never logged its address");
        };
        if let Some(rest) = line.split("addr=").nth(1) {
            let addr = rest.split_whitespace().next().unwrap().to_owned();
            return (child, format!("http://{addr}"), rx);
        }
    }
}

fn terminate(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "the server did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn the_binary_serves_the_embedded_default_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, url, logs) = spawn_serve(&[], dir.path());
    wait_ready(&url).await;
    assert!(
        dir.path().join("kuma-secrets.db").exists(),
        "the default store is a file in the working directory"
    );

    let client = reqwest::Client::new();
    let meshes: serde_json::Value = client
        .get(format!("{url}/meshes"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(meshes["items"][0]["name"], "default");
    let put = client
        .put(format!("{url}/meshes/default/secrets/sample"))
        .header("content-type", "application/json")
        .body(r#"{"type":"Secret","name":"sample","mesh":"default","data":"dGVzdAo="}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);

    terminate(&child);
    let status = wait_exit(&mut child);
    assert!(status.success(), "{status:?}");
    let log: Vec<String> = logs.try_iter().collect();
    assert!(log.iter().any(|l| l.contains("stopped")), "{log:?}");
    assert!(
        !log.iter().any(|l| l.contains("dGVzdAo=")),
        "secret data in the log: {log:?}"
    );

    // The data survives a restart.
    let (mut again, url, logs) = spawn_serve(&[], dir.path());
    // Nobody reads the log from here on: the server must not mind.
    drop(logs);
    wait_ready(&url).await;
    let read: serde_json::Value = client
        .get(format!("{url}/meshes/default/secrets/sample"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(read["data"], "dGVzdAo=");
    terminate(&again);
    let status = wait_exit(&mut again);
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn serve_refuses_an_unmigrated_postgres_naming_migrate_up() {
    let db = TestDb::empty().await;
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_kuma-secrets"))
        .args(["serve", "--api-addr", "127.0.0.1:0", "--store", &db.url])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("kuma-secrets migrate up"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_the_request_in_flight() {
    let mut server = TestServer::start(Backend::Sqlite).await;
    let body = r#"{"type":"GlobalSecret","name":"late","data":"aW4tZmxpZ2h0"}"#;
    let (first, rest) = body.split_at(20);
    let addr = server.url.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    stream
        .write_all(
            format!(
                "PUT /global-secrets/late HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{first}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();

    // Wait until the server is inside that request (it is waiting for the rest of the body).
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = client
            .get(server.at("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics
            .contains(r#"kuma_secrets_http_requests_in_flight{route="/global-secrets/{name}"} 1"#)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the request never reached the server"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    server.signal_stop();
    stream.write_all(rest.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8(response).unwrap();
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");
    server.join().await;

    let stored = server
        .store
        .get_secret(&SecretKey::parse(None, "late").unwrap())
        .await
        .unwrap();
    assert_eq!(stored.data.expose(), b"in-flight");
    // And the server no longer accepts connections.
    assert!(reqwest::get(server.at("/healthz")).await.is_err());
}
