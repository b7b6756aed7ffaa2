//! The server as a process: the real binary starting, serving and stopping on SIGTERM,
//! refusing a schema it does not match, and graceful shutdown finishing a request that is
//! in flight when the signal comes.

mod common;

use common::TestDb;
use common::http::{fetch_json, fetch_text};
use common::process::{spawn_serve, terminate, wait_exit};
use common::server::{Backend, TestServer, wait_ready};
use kuma_secrets::domain::SecretKey;
use kuma_secrets::store::SecretStore;
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn the_binary_serves_the_embedded_default_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, url, logs) = spawn_serve(&[], dir.path());
    wait_ready(&url).await;
    assert!(
        dir.path().join("kuma-secrets.db").exists(),
        "the default store is a file in the working directory"
    );
    let keys = dir.path().join("kuma-secrets.db.keys");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&keys).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the generated keyring is owner-only");

    let client = reqwest::Client::new();
    let meshes: serde_json::Value = fetch_json(format!("{url}/meshes")).await;
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
    let log = common::process::rest_of_log(&logs);
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
    let read: serde_json::Value = fetch_json(format!("{url}/meshes/default/secrets/sample")).await;
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
        .arg("--allow-plaintext-secrets")
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
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = fetch_text(server.at("/metrics")).await;
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

#[tokio::test]
async fn the_binary_serves_https_with_the_given_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_path = dir.path().join("tls.crt");
    let key_path = dir.path().join("tls.key");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();

    let (mut child, url, _logs) = spawn_serve(
        &[
            "--tls-cert",
            cert_path.to_str().unwrap(),
            "--tls-key",
            key_path.to_str().unwrap(),
        ],
        dir.path(),
    );
    let port = url.rsplit(':').next().unwrap().to_owned();
    let https = format!("https://localhost:{port}");
    let curl = |path: &str| {
        Command::new("curl")
            .args([
                "-sS",
                "--cacert",
                cert_path.to_str().unwrap(),
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ])
            .arg(format!("{https}{path}"))
            .output()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = curl("/readyz");
        if String::from_utf8_lossy(&out.stdout) == "200" {
            break;
        }
        assert!(Instant::now() < deadline, "HTTPS never answered: {out:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Verified TLS to localhost is still a direct loopback request: the admin.
    assert_eq!(String::from_utf8_lossy(&curl("/secrets").stdout), "200");
    // Plain HTTP on the TLS port gets nowhere.
    assert!(
        reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
            .await
            .is_err()
    );

    terminate(&child);
    let status = wait_exit(&mut child);
    assert!(status.success(), "{status:?}");
}
