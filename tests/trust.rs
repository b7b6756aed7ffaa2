//! The second attack, as someone who can write to the database would try it, on both
//! backends: a planted plaintext signing key run through the operator's routine commands
//! (`rotate-keys`, `seal-plaintext`) never becomes trusted; a Mesh CA key given in two
//! fields, or planted in clear beside a sealed one, never sits in clear unnoticed; an older
//! sealed Mesh CA key written back beside a newer certificate does not open.

#[macro_use]
mod common;

use common::http::get_as;
use common::raw::{
    P, attacker_signing_key, plant_plaintext_global, raw_count, raw_sql, store_tool,
};
use common::server::{Backend, TestServer};
use kuma_secrets::api::User;
use kuma_secrets::store::SecretStore;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;

/// Rows of `secrets` stored in clear (`key_id` NULL) named `name`.
async fn plaintext_rows(server: &TestServer, name: &str) -> i64 {
    raw_count(
        server,
        "SELECT count(*) FROM secrets WHERE key_id IS NULL AND name = $1",
        &[name],
    )
    .await
}

/// A token signed with a key of the attacker's own, planted in the victim's database in
/// clear as `user-token-signing-key-7`: returns the token (kid 7, admin).
async fn plant_signing_key_and_forge_admin_token(server: &TestServer) -> String {
    let (key, token) = attacker_signing_key(7).await;
    plant_plaintext_global(server, "user-token-signing-key-7", key).await;
    token
}

/// The forged token reads nothing: 401, whose body names no row.
async fn assert_refused(server: &TestServer, forged: &str) {
    let response = get_as(server.at("/meshes/default/secrets/crown-jewels"), forged).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let body = response.text().await.unwrap();
    assert!(
        !body.contains("signing-key") && !body.contains("unsealed"),
        "the answer says nothing about the row: {body}"
    );
}

async fn routine_commands_never_make_a_planted_signing_key_trusted(backend: Backend) {
    let server = TestServer::start_tokens_only(backend).await;
    common::http::create_in_store(&server.store, Some("default"), "crown-jewels", "top secret")
        .await;
    let forged = plant_signing_key_and_forge_admin_token(&server).await;
    // A plain planted secret too: nothing is sealed in a store that was fully sealed.
    plant_plaintext_global(&server, "planted", b"plain".to_vec()).await;
    assert_refused(&server, &forged).await;

    let dir = tempfile::tempdir().unwrap();
    let keys = common::test_keyring_file(dir.path());
    // --status reports it, as not sealed...
    let run = rotation_status(&server).await;
    assert!(
        run.stdout.contains("(plaintext)") && run.stdout.contains("user-token-signing-key-7"),
        "{run:?}"
    );
    // ...rotation leaves it in clear and says so...
    store_tool(&server, &keys, &["rotate-keys"])
        .await
        .fails_with("rotation never seals plaintext");
    assert_eq!(plaintext_rows(&server, "user-token-signing-key-7").await, 1);
    // ...and seal-plaintext refuses: the store was fully sealed, so this is tampering.
    let run = store_tool(&server, &keys, &["seal-plaintext", "--yes"])
        .await
        .fails_with("fully sealed since");
    assert!(run.stdout.contains("user-token-signing-key-7"), "{run:?}");
    assert_eq!(plaintext_rows(&server, "user-token-signing-key-7").await, 1);
    assert_eq!(plaintext_rows(&server, "planted").await, 1);
    assert_refused(&server, &forged).await;

    // The attacker clears the record of the store being sealed: a signing key is still
    // never sealed from plaintext, and the run writes nothing at all.
    raw_sql(
        &server,
        "UPDATE sealing_state SET fully_sealed_at = NULL",
        vec![],
    )
    .await;
    store_tool(&server, &keys, &["seal-plaintext", "--yes"])
        .await
        .fails_with("never sealed from plaintext");
    assert_eq!(plaintext_rows(&server, "user-token-signing-key-7").await, 1);
    assert_eq!(plaintext_rows(&server, "planted").await, 1);
    assert_refused(&server, &forged).await;

    // The same for a version kept in history, planted in clear and named by version.
    raw_sql(
        &server,
        "UPDATE secret_versions SET data = $1, key_id = NULL, write_id = NULL \
         WHERE name = 'crown-jewels'",
        vec![P::Bytes(b"old".to_vec())],
    )
    .await;
    store_tool(&server, &keys, &["rotate-keys"])
        .await
        .fails_with("rotation never seals plaintext");
}

/// Kuma's DataSource holds one field: a Mesh CA key given as both `inline` and
/// `inlineString` is refused (it used to store the second in clear), and a key planted in
/// clear beside a sealed one is found by `--status` and never served.
async fn a_mesh_ca_key_in_two_fields_is_refused_and_a_planted_one_is_found(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (cert, key) = common::pki::ca_pair("two-fields");
    let key_b64 = common::http::b64(&key);
    let mesh = |key_source: Value| {
        json!({"type": "Mesh", "name": "default", "mtls": {"backends": [{
            "name": "ca-1", "type": "provided",
            "conf": {"cert": {"inlineString": cert}, "key": key_source}}]}})
    };
    let response = Client::new()
        .put(server.at("/meshes/default"))
        .json(&mesh(json!({"inline": key_b64, "inlineString": key})))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert!(
        body.to_string()
            .contains("oneof kuma.system.v1alpha1.DataSource.type is already set"),
        "{body}"
    );
    assert!(
        !common::raw::contains(&common::raw::raw_database(&server), b"PRIVATE KEY"),
        "nothing of it was stored"
    );

    // Stored properly, then a key in clear planted beside the sealed one.
    let (status, body) = common::http::put_json(
        &server,
        "/meshes/default",
        mesh(json!({"inlineString": key})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let spec: String = stored_spec(&server).await;
    let mut planted: Value = serde_json::from_str(&spec).unwrap();
    planted["mtls"]["backends"][0]["conf"]["key"]["inlineString"] = json!("PLANTED KEY");
    write_spec(&server, &planted).await;
    let run = rotation_status(&server).await;
    assert!(
        run.stdout.contains("do not open") && run.stdout.contains("name=\"default\""),
        "{run:?}"
    );
    let response = common::http::send_get(server.at("/meshes/default")).await;
    assert!(
        !response.text().await.unwrap().contains("PLANTED"),
        "never served"
    );
}

/// An older sealed CA key written back into the Mesh beside the newer certificate does not
/// open: the seal is bound to the write and to the rest of the backend.
async fn an_older_mesh_ca_key_written_back_does_not_open(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mesh = |(cert, key): (String, String)| {
        json!({"type": "Mesh", "name": "default", "mtls": {"backends": [{
            "name": "ca-1", "type": "provided",
            "conf": {"cert": {"inlineString": cert}, "key": {"inlineString": key}}}]}})
    };
    let (status, body) = common::http::put_json(
        &server,
        "/meshes/default",
        mesh(common::pki::ca_pair("one")),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let old: Value = serde_json::from_str(&stored_spec(&server).await).unwrap();
    let new_pair = common::pki::ca_pair("two");
    let (status, body) =
        common::http::put_json(&server, "/meshes/default", mesh(new_pair.clone())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new: Value = serde_json::from_str(&stored_spec(&server).await).unwrap();
    let mut replayed = new.clone();
    replayed["mtls"]["backends"][0]["conf"]["key"] =
        old["mtls"]["backends"][0]["conf"]["key"].clone();
    write_spec(&server, &replayed).await;

    let response = common::http::send_get(server.at("/meshes/default")).await;
    assert_ne!(response.status(), StatusCode::OK, "the old key was served");
    let text = response.text().await.unwrap();
    assert!(!text.contains("PRIVATE KEY"), "{text}");

    // The new key object put back where it was opens again: the refusal was the binding.
    write_spec(&server, &new).await;
    let response = common::http::send_get(server.at("/meshes/default")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["mtls"]["backends"][0]["conf"]["key"]["inlineString"],
        new_pair.1.as_str()
    );
}

/// `rotate-keys --status` on the server's store, with the test keyring; it succeeds.
async fn rotation_status(server: &TestServer) -> common::process::CliRun {
    let dir = tempfile::tempdir().unwrap();
    let keys = common::test_keyring_file(dir.path());
    store_tool(server, &keys, &["rotate-keys", "--status"])
        .await
        .ok()
}

/// The Mesh `default`'s stored spec, as JSON text, read behind the service's back.
async fn stored_spec(server: &TestServer) -> String {
    let url = common::raw::store_url(server);
    if url.starts_with("postgres") {
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
            .await
            .unwrap();
        sqlx::query_as::<_, (String,)>("SELECT spec::text FROM meshes WHERE name = 'default'")
            .fetch_one(&mut conn)
            .await
            .unwrap()
            .0
    } else {
        let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url)
            .await
            .unwrap();
        sqlx::query_as::<_, (String,)>("SELECT spec FROM meshes WHERE name = 'default'")
            .fetch_one(&mut conn)
            .await
            .unwrap()
            .0
    }
}

/// Writes `spec` into the Mesh `default` behind the service's back.
async fn write_spec(server: &TestServer, spec: &Value) {
    let sql = if common::raw::store_url(server).starts_with("postgres") {
        "UPDATE meshes SET spec = CAST($1 AS jsonb) WHERE name = 'default'"
    } else {
        "UPDATE meshes SET spec = $1 WHERE name = 'default'"
    };
    raw_sql(server, sql, vec![P::Text(spec.to_string())]).await;
}

/// A token's name and groups become the actor of its writes and reach audit output and
/// logs: control characters are refused when minting (400), and a token that carries them
/// anyway (issued before the rule) is 401, never a 500.
async fn token_identities_with_control_characters_are_refused(backend: Backend) {
    let server = TestServer::start(backend).await;
    let client = Client::new();
    for (name, groups) in [
        ("ja\u{0}ne", json!([])),
        ("jane\nINFO forged log line", json!([])),
        ("jane", json!(["\u{1b}[31madmins"])),
    ] {
        let response = client
            .post(server.at("/tokens/user"))
            .json(&json!({"name": name, "groups": groups, "validFor": "1h"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{name:?}");
        let body = response.text().await.unwrap();
        assert!(body.contains("control characters"), "{body}");
    }
    let issued_before = kuma_secrets::api::auth::tokens::issue(
        &server.store,
        &User {
            name: "ja\u{0}ne\n".into(),
            groups: vec!["mesh-system:admin".into()],
            zone: None,
        },
        Duration::from_secs(3600),
    )
    .await
    .unwrap();
    let response = client
        .put(server.at("/meshes/default/secrets/s"))
        .bearer_auth(&issued_before)
        .header("X-Forwarded-For", "203.0.113.7")
        .json(&json!({"type": "Secret", "mesh": "default", "name": "s", "data": "dg=="}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

/// Smaller leaks: an anonymous Mesh list does not carry the revision (which moves on every
/// secret write); headers proxies and CDNs add make a loopback request not the local
/// admin; a request with two Host headers is refused.
async fn anonymous_callers_learn_nothing_from_headers(backend: Backend) {
    let server = TestServer::start(backend).await;
    put_secret_local(&server).await;
    let anonymous = Client::new()
        .get(server.at("/meshes"))
        .header("X-Forwarded-For", "203.0.113.7")
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::OK);
    assert!(anonymous.headers().get("kuma-secrets-revision").is_none());
    let admin = common::http::send_get(server.at("/meshes")).await;
    assert!(admin.headers().get("kuma-secrets-revision").is_some());

    for header in [
        "X-Cluster-Client-IP",
        "Client-IP",
        "Fastly-Client-IP",
        "X-Envoy-External-Address",
        "X-Forwarded-Server",
        "X-ProxyUser-Ip",
        "X-Envoy-Original-IP",
        "CF-Connecting-IPv6",
        "X-Azure-ClientIP",
        "X-AppEngine-User-IP",
        "Akamai-Origin-Hop",
        "Forwarded-For",
    ] {
        let response = Client::new()
            .get(server.at("/meshes/default/secrets/s"))
            .header(header, "203.0.113.7")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{header}");
    }

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = server.at("").trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    stream
        .write_all(
            format!(
                "GET /meshes/default/secrets/s HTTP/1.1\r\nHost: {addr}\r\nHost: example.com\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(!answer.contains("\"data\""), "{answer}");
}

async fn put_secret_local(server: &TestServer) {
    common::http::put_secret(server, "default", "s", b"value").await;
}

on_both_backends! {
    exports_and_copies_are_one_point_in_time,
    token_identities_with_control_characters_are_refused,
    anonymous_callers_learn_nothing_from_headers,
    routine_commands_never_make_a_planted_signing_key_trusted,
    a_mesh_ca_key_in_two_fields_is_refused_and_a_planted_one_is_found,
    an_older_mesh_ca_key_written_back_does_not_open,
}

/// Another local user reads nothing of the embedded store: its database, `-wal` and `-shm`
/// files are created owner-only under umask 022 (and an existing file others may read is
/// made so), and a keyring others may read, or that another user owns, is refused at start.
#[tokio::test]
async fn store_files_are_owner_only_and_an_open_keyring_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ks.db");
    let mode = |suffix: &str| {
        let mut file = db.as_os_str().to_owned();
        file.push(suffix);
        std::fs::metadata(&file).map(|m| m.permissions().mode() & 0o777)
    };
    let serve = || {
        std::process::Command::new("sh")
            .arg("-c")
            .arg("umask 022; exec \"$0\" serve --api-addr 127.0.0.1:0 --store \"$1\"")
            .arg(env!("CARGO_BIN_EXE_kuma-secrets"))
            .arg(format!("sqlite://{}", db.display()))
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let wait_for_wal = || {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while mode("-wal").is_err() || mode("-shm").is_err() {
            assert!(std::time::Instant::now() < deadline, "no -wal/-shm file");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let mut server = serve();
    wait_for_wal();
    let modes: Vec<_> = ["", "-wal", "-shm", ".keys"]
        .into_iter()
        .map(|suffix| (suffix, mode(suffix).unwrap()))
        .collect();
    server.kill().unwrap();
    server.wait().unwrap();
    for (suffix, mode) in modes {
        assert_eq!(mode, 0o600, "ks.db{suffix}");
    }

    // A database file left open to others is made owner-only at the next start (the
    // server answering /readyz has opened its store).
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (_server, base, _) = common::process::spawn_serve(
        &["--store", &format!("sqlite://{}", db.display())],
        dir.path(),
    );
    common::server::wait_ready(&base).await;
    assert_eq!(mode("").unwrap(), 0o600);
    let keys = common::test_keyring_file(dir.path());

    let url = common::sqlite_url(dir.path(), "other.db");
    let start = |keys: &std::path::Path| {
        let (keys, url) = (keys.to_str().unwrap().to_owned(), url.clone());
        async move {
            common::process::kuma(
                &[
                    "serve",
                    "--api-addr",
                    "127.0.0.1:0",
                    "--store",
                    &url,
                    "--encryption-keys",
                    &keys,
                ],
                None,
            )
            .await
        }
    };
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o644)).unwrap();
    start(&keys).await.fails_with("chmod 600");
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o600)).unwrap();
    if common::cluster::running_as_root() {
        let chown = std::process::Command::new("chown")
            .args(["postgres"])
            .arg(&keys)
            .status()
            .unwrap();
        assert!(chown.success());
        start(&keys).await.fails_with("owned by uid");
    }
}

/// Input that costs too much is refused before it is parsed (a YAML file nested 100,000
/// levels deep took seconds of CPU), and `export -o -` writes to standard output, not to a
/// file named `-`.
#[tokio::test]
async fn deep_yaml_is_refused_before_parsing_and_export_dash_is_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let url = common::sqlite_url(dir.path(), "store.db");
    for (name, text) in [
        (
            "flow.yaml",
            format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)),
        ),
        ("block.yaml", format!("{}x\n", "- ".repeat(100_000))),
    ] {
        let file = common::write_file(dir.path(), name, text);
        common::process::kuma(&["import", "--store", &url, "-f", &file], None)
            .await
            .fails_with("nested more than 100 levels deep");
    }
    let mesh = common::write_file(dir.path(), "mesh.yaml", "type: Mesh\nname: exported\n");
    common::process::kuma(&["import", "--store", &url, "-f", &mesh], None)
        .await
        .ok();
    let run = common::process::kuma(&["export", "--store", &url, "-o", "-"], None)
        .await
        .ok();
    assert!(run.stdout.contains("name: exported"), "{run:?}");
    assert!(
        !std::path::Path::new("-").exists(),
        "export wrote a file named - in the working directory"
    );
}

/// Many slow clients (headers never finished) do not stop a normal request: under a low
/// file-descriptor limit, connections past `--max-client-connections` are closed as soon as
/// they are accepted, and a client that does not finish its headers within
/// `--header-read-timeout` is disconnected. Before, 90 half-sent requests made every other
/// request fail, for as long as they stayed open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_do_not_stop_a_normal_request() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let url = common::sqlite_url(dir.path(), "store.db");
    let (serve, base, _log) = common::process::spawn_serve(
        &[
            "--store",
            &url,
            "--max-client-connections",
            "40",
            "--header-read-timeout",
            "2s",
        ],
        dir.path(),
    );
    common::server::wait_ready(&base).await;
    let limited = std::process::Command::new("prlimit")
        .args(["--nofile=128:128", "--pid", &serve.id().to_string()])
        .status()
        .unwrap();
    assert!(limited.success(), "prlimit");

    let addr = base.trim_start_matches("http://").to_owned();
    let mut slow = Vec::new();
    for _ in 0..200 {
        if let Ok(mut stream) = tokio::net::TcpStream::connect(&addr).await {
            // A request's first line and one header, never finished.
            let _ = stream
                .write_all(b"GET /meshes HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                .await;
            slow.push(stream);
        }
    }
    // A normal request, on a connection of its own each try, is served while they hang.
    let client = Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let started = std::time::Instant::now();
    loop {
        let response = client
            .get(format!("{base}/healthz"))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        if response.is_ok_and(|r| r.status() == StatusCode::OK) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no normal request served in 30 s beside 200 slow clients"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "a normal request served {:?} after 200 slow clients connected",
        started.elapsed()
    );
    // Every slow client is disconnected, by the cap at once or by the header deadline.
    for stream in &mut slow {
        let mut buf = [0u8; 256];
        let closed = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "a slow client was still connected after 30 s"
        );
    }
}

/// Under an open-files limit too low for the default cap, `serve` lowers the cap to what
/// fits beside its database pool (and says so), so the cap is reached before descriptors
/// run out.
#[test]
fn the_connection_cap_fits_the_open_files_limit() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut serve = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 200; exec \"$0\" serve --api-addr 127.0.0.1:0 --store \"$1\"")
        .arg(env!("CARGO_BIN_EXE_kuma-secrets"))
        .arg(common::sqlite_url(dir.path(), "store.db"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = serve.stderr.take().unwrap();
    let mut said = Vec::new();
    for line in std::io::BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
    {
        let listening = line.contains("API listening");
        said.push(line);
        if listening {
            break;
        }
    }
    serve.kill().unwrap();
    serve.wait().unwrap();
    assert!(
        said.iter()
            .any(|l| l.contains("--max-client-connections lowered to 104")),
        "{said:#?}"
    );
}

/// A backup is one point in time: while a writer sets secret `a` to n and then `z` to n,
/// again and again, every `export` (and every `copy`, verified against the same snapshot)
/// holds `a` at `z` or one ahead, never `z` ahead of `a`. The export reads 2,000 other
/// secrets between the two, over several pages.
async fn exports_and_copies_are_one_point_in_time(backend: Backend) {
    use base64::Engine;
    let server = TestServer::start(backend).await;
    let store = server.store.clone();
    let (a, z) = (
        kuma_secrets::domain::SecretKey::parse(Some("default"), "a").unwrap(),
        kuma_secrets::domain::SecretKey::parse(Some("default"), "z").unwrap(),
    );
    common::http::create_in_store(&store, Some("default"), "a", "0").await;
    for i in 0..2000 {
        common::http::create_in_store(&store, Some("default"), &format!("m-{i:04}"), "x").await;
    }
    common::http::create_in_store(&store, Some("default"), "z", "0").await;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (store, stop, a, z) = (store.clone(), stop.clone(), a.clone(), z.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                common::http::set_secret_data(&store, &a, n.to_string())
                    .await
                    .unwrap();
                common::http::set_secret_data(&store, &z, n.to_string())
                    .await
                    .unwrap();
            }
            n
        })
    };
    let value = |document: &Value| -> u64 {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(document["data"].as_str().unwrap())
            .unwrap();
        String::from_utf8(bytes).unwrap().parse().unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let keys = common::test_keyring_file(dir.path());
    for round in 0..4 {
        let run = store_tool(&server, &keys, &["export", "-o", "-"])
            .await
            .ok();
        let documents = kuma_secrets::manifest::documents(&run.stdout);
        let of = |name: &str| {
            documents
                .iter()
                .filter_map(|d| d.as_ref().ok())
                .find(|d| d["name"] == name)
                .map(value)
                .unwrap_or_else(|| panic!("{name} not exported"))
        };
        let (in_a, in_z) = (of("a"), of("z"));
        assert!(
            in_a == in_z || in_a == in_z + 1,
            "export {round}: a = {in_a}, z = {in_z}: not one point in time"
        );

        let to = common::sqlite_url(dir.path(), &format!("copy-{round}.db"));
        common::process::kuma(
            &[
                "copy",
                "--from",
                &common::raw::store_url(&server),
                "--from-encryption-keys",
                keys.to_str().unwrap(),
                "--to",
                &to,
                "--encryption-keys",
                keys.to_str().unwrap(),
            ],
            None,
        )
        .await
        .ok();
        let copied = kuma_secrets::store::AnyStore::open(
            &to,
            common::sealed(kuma_secrets::store::StoreOptions::allow_plaintext_secrets()),
        )
        .await
        .unwrap();
        let number = |secret: kuma_secrets::domain::Secret| -> u64 {
            String::from_utf8(secret.data.expose().to_vec())
                .unwrap()
                .parse()
                .unwrap()
        };
        let in_a = number(copied.get_secret(&a).await.unwrap());
        let in_z = number(copied.get_secret(&z).await.unwrap());
        copied.close().await;
        assert!(
            in_a == in_z || in_a == in_z + 1,
            "copy {round}: a = {in_a}, z = {in_z}: not one point in time"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes = writer.await.unwrap();
    assert!(
        writes > 4,
        "the writer ran beside the backups ({writes} rounds)"
    );
}
