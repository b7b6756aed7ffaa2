//! The README's commands, run as a new user would paste them: the quick start's curl
//! session, the authentication examples and the version history walk-through, against a
//! real server (its address put in
//! place of Kuma's port), each command required to succeed.

#[macro_use]
mod common;

use common::server::{Backend, TestServer};

/// The `sh` blocks of the README section headed `heading`.
fn shell_blocks(heading: &str) -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("\n##")
        .find(|s| s.trim_start_matches('#').trim_start().starts_with(heading))
        .unwrap_or_else(|| panic!("README has a section {heading:?}"));
    section
        .split("```sh\n")
        .skip(1)
        .map(|block| block.split("```").next().unwrap().to_owned())
        .collect()
}

/// Runs `script` with bash, every command required to succeed (curl failing on 4xx/5xx),
/// `kuma-secrets` being the built binary pointed at the server.
fn run(server: &TestServer, script: &str) -> String {
    let binary = env!("CARGO_BIN_EXE_kuma-secrets");
    let script = script
        .replace("http://127.0.0.1:5681", &server.url)
        .replace("curl ", "curl --fail-with-body --silent --show-error ")
        .replace("kuma-secrets ", &format!("{binary} "));
    let output = std::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .env("KUMA_SECRETS_API_URL", &server.url)
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{script}\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quick_start_and_authentication_commands_work_as_pasted() {
    let server = TestServer::start(Backend::Sqlite).await;
    let quick_start = shell_blocks("Quick start");
    let curl_session = quick_start
        .iter()
        .find(|b| b.contains("curl"))
        .expect("the quick start has a curl session");
    let server_ref = &server;
    let out = tokio::task::block_in_place(|| run(server_ref, curl_session));
    assert!(out.contains("my-password"), "the value decodes: {out}");

    let auth = shell_blocks("Authentication");
    let out = tokio::task::block_in_place(|| run(server_ref, &auth[0]));
    // The admin token, then the minted one: two JWTs.
    assert_eq!(out.matches("eyJ0eXAi").count(), 2, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_version_history_commands_work_as_pasted() {
    let server = TestServer::start(Backend::Sqlite).await;
    // The secret the walk-through starts from, at version 3.
    for value in ["v1", "v2", "v3"] {
        common::http::put_secret(&server, "default", "tls-key", value).await;
    }
    let history = shell_blocks("Version history");
    let server_ref = &server;
    let out = tokio::task::block_in_place(|| run(server_ref, &history[0]));
    assert!(out.contains("\"current\":true"), "{out}");
    assert!(out.contains("VERSION   CURRENT"), "{out}");
    let gone =
        common::http::fetch_json(server.at("/meshes/default/secrets/tls-key/_versions")).await;
    assert_eq!(gone["status"], 404, "purged: {gone}");
}
