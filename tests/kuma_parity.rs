//! Where we match Kuma on purpose, tried as a Kuma user would, on both backends: blind PUTs
//! that never conflict, validation in Kuma's order and words, Kuma's list-filter errors,
//! Mesh names, `kri` and warnings, kumactl's apply and get output, and every example of
//! Kuma's Secrets page working as pasted.

#[macro_use]
mod common;

use common::http::{b64, fetch_json, get_json, put_json, put_plain_mesh, violations};

/// A request's status and JSON body.
async fn send(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let (status, _, body) = common::http::send(request).await;
    (status, body)
}
use common::process::{CliRun, kuma};
use common::server::{Backend, TestServer};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// `kuma-secrets ARGS --api-url URL`, with `stdin`.
async fn cli(server: &TestServer, args: &[&str], stdin: Option<&str>) -> CliRun {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--api-url", &server.url]);
    kuma(&all, stdin).await
}

/// `writers` clients each PUT `path` `rounds` times with no precondition: statuses counted.
async fn blind_puts(
    url: String,
    body: Value,
    writers: usize,
    rounds: usize,
) -> BTreeMap<u16, usize> {
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let (url, body) = (url.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let client = Client::new();
            let mut statuses = Vec::new();
            for _ in 0..rounds {
                let response = client.put(&url).json(&body).send().await.unwrap();
                statuses.push(response.status().as_u16());
            }
            statuses
        }));
    }
    let mut counts = BTreeMap::new();
    for task in tasks {
        for status in task.await.unwrap() {
            *counts.entry(status).or_insert(0) += 1;
        }
    }
    counts
}

async fn version_of(server: &TestServer, path: &str) -> i64 {
    crate::common::http::version_of(&crate::common::http::send_get(server.at(path)).await)
}

/// 32 clients PUT one Secret with no precondition: no 409, every write counted once.
async fn blind_puts_never_conflict_and_every_write_bumps_the_version(backend: Backend) {
    let server = TestServer::start(backend).await;
    let secret = json!({"type": "Secret", "mesh": "default", "name": "bench", "data": b64("v")});
    let (status, _) = put_json(&server, "/meshes/default/secrets/bench", secret.clone()).await;
    assert_eq!(status, StatusCode::CREATED);
    let counts = blind_puts(server.at("/meshes/default/secrets/bench"), secret, 32, 10).await;
    assert_eq!(
        counts,
        BTreeMap::from([(200, 320)]),
        "every blind PUT is a 200"
    );
    assert_eq!(
        version_of(&server, "/meshes/default/secrets/bench").await,
        1 + 320
    );

    // A new name raced by 16 first writers: exactly one creates it.
    let global = json!({"type": "GlobalSecret", "name": "raced", "data": b64("g")});
    let counts = blind_puts(server.at("/global-secrets/raced"), global, 16, 5).await;
    assert_eq!(counts.get(&201), Some(&1), "{counts:?}");
    assert_eq!(counts.get(&200), Some(&79), "{counts:?}");
    assert_eq!(counts.len(), 2, "{counts:?}");
    assert_eq!(version_of(&server, "/global-secrets/raced").await, 80);

    // Meshes too (their mTLS checks run in the same transaction).
    let mesh = json!({"type": "Mesh", "name": "busy"});
    let counts = blind_puts(server.at("/meshes/busy"), mesh, 8, 5).await;
    assert_eq!(counts.get(&201), Some(&1), "{counts:?}");
    assert_eq!(counts.get(&200), Some(&39), "{counts:?}");
    assert_eq!(version_of(&server, "/meshes/busy").await, 40);
}

/// If-Match stays compare-and-swap and If-None-Match: * create-only, in one statement.
async fn preconditions_still_hold_with_one_statement_writes(backend: Backend) {
    let server = TestServer::start(backend).await;
    let url = server.at("/meshes/default/secrets/cas");
    let body = json!({"type": "Secret", "mesh": "default", "name": "cas", "data": b64("1")});
    let client = Client::new();
    let put = |header: &'static str, value: &'static str| {
        client.put(&url).header(header, value).json(&body).send()
    };
    assert_eq!(
        put("If-Match", "\"1\"").await.unwrap().status(),
        412,
        "absent"
    );
    assert_eq!(put("If-None-Match", "*").await.unwrap().status(), 201);
    assert_eq!(put("If-None-Match", "*").await.unwrap().status(), 412);
    assert_eq!(put("If-Match", "\"1\"").await.unwrap().status(), 200);
    let stale = put("If-Match", "\"1\"").await.unwrap();
    assert_eq!(stale.status(), 412);
    let text = stale.text().await.unwrap();
    assert!(text.contains("version \\\"2\\\""), "{text}");
    assert_eq!(put("If-Match", "*").await.unwrap().status(), 200);
    assert_eq!(version_of(&server, "/meshes/default/secrets/cas").await, 3);
    // Kuma's immutable labels, checked in the same statement as a blind write.
    let relabel = json!({"type": "Secret", "mesh": "default", "name": "cas", "data": b64("1"),
        "labels": {"kuma.io/zone": "elsewhere", "kuma.io/origin": "global"}});
    let (status, answer) = put_json(&server, "/meshes/default/secrets/cas", relabel).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(answer.to_string().contains("is immutable"), "{answer}");
    // Kuma checks them as it updates, after the request's own validation.
    assert_eq!(answer["title"], "Could not update a resource", "{answer}");
    assert_eq!(version_of(&server, "/meshes/default/secrets/cas").await, 3);
}

async fn validation_reports_everything_in_kumas_order(backend: Backend) {
    let server = TestServer::start(backend).await;
    let (status, body) = put_json(
        &server,
        "/meshes/default/secrets/a",
        json!({"type": "Secret", "name": "Bad_Name", "mesh": "Other_Mesh", "data": b64("x")}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let found = violations(&body);
    let fields: Vec<&str> = found.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(fields, ["name", "mesh", "name", "mesh"], "{body}");
    assert_eq!(
        found[0].1,
        "name from the URL has to be the same as in body"
    );
    assert_eq!(
        found[1].1,
        "mesh from the URL has to be the same as in body"
    );
    assert!(found[2].1.starts_with("invalid characters"), "{body}");
    assert!(found[3].1.starts_with("invalid characters"), "{body}");

    let (_, body) = put_json(
        &server,
        "/meshes/default/secrets/a",
        json!({"type": "Secret", "name": "a", "mesh": "", "data": b64("x")}),
    )
    .await;
    assert_eq!(
        violations(&body),
        [
            (
                "mesh".to_owned(),
                "mesh from the URL has to be the same as in body".to_owned()
            ),
            ("mesh".to_owned(), "cannot be empty".to_owned()),
        ]
    );

    // Today's Kubernetes wording for label keys.
    let (_, body) = put_json(
        &server,
        "/meshes/default/secrets/a",
        json!({"type": "Secret", "name": "a", "mesh": "default", "data": b64("x"), "labels": {"only/one/slash": "x"}}),
    )
    .await;
    let found = violations(&body);
    assert_eq!(found[0].0, "labels[\"only/one/slash\"]");
    assert!(
        found[0].1.starts_with(
            "a valid label key must consist of alphanumeric characters, '-', '_' or '.'"
        ),
        "{body}"
    );

    // A bad list filter names the route template and the parameter.
    let response = crate::common::http::send_get(
        server.at("/meshes/default/secrets?filter%5Bnotlabels.x%5D=1"),
    )
    .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["detail"], "Resource is not valid");
    assert_eq!(
        body["invalid_parameters"][0]["field"],
        "/meshes/{mesh}/secrets.filter[notlabels.x]"
    );
    let body: Value = fetch_json(server.at("/secrets?filter%5Blabels.x%5D%5Beq%5D=1")).await;
    assert_eq!(
        body["invalid_parameters"][0]["field"],
        "/secrets.filter[labels.x][eq]"
    );
}

async fn meshes_carry_kri_warnings_and_kumas_titles(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mesh = get_json(&server, "/meshes/default").await;
    assert_eq!(mesh["kri"], "kri_m____default_");
    let list = get_json(&server, "/meshes").await;
    assert_eq!(list["items"][0]["kri"], "kri_m____default_");

    let long = "m".repeat(64);
    let (status, body) = put_json(
        &server,
        &format!("/meshes/{long}"),
        json!({"type": "Mesh", "name": long}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["title"], "Failed to create a resource");

    let (status, body) = put_plain_mesh(&server, "aa.a").await;
    assert_eq!(status, StatusCode::CREATED);
    // Kuma's `Deprecations()` text, with Kubernetes' `IsDNS1035Label` message, word for word.
    assert_eq!(
        body["warnings"],
        json!([
            "Invalid name: 'aa.a'. It does not conform to the DNS format (RFC 1035). This is deprecated. Errors: a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
        ])
    );
    let (status, body) = put_plain_mesh(&server, "fine").await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body, json!({}));
    // A Mesh read and written back keeps no `kri` in its spec.
    let mut fine = get_json(&server, "/meshes/fine").await;
    fine.as_object_mut().unwrap().remove("creationTime");
    let (status, _) = put_json(&server, "/meshes/fine", fine).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        get_json(&server, "/meshes/fine").await["kri"],
        "kri_m____fine_"
    );
}

/// Kuma's REST layer titles an error by the stage that found it (reference §3.4): the
/// request's own validation is "Could not process a resource"; what the Mesh's CA managers
/// check as they write it is "Failed to create a resource" or "Failed to update a
/// resource"; a changed immutable label, checked on update, is "Could not update a
/// resource".
async fn errors_are_titled_by_the_stage_that_found_them(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mesh_with = |name: &str, backends: Value| json!({"type": "Mesh", "name": name, "mtls": {"backends": backends}});
    let title_of = |body: &Value| body["title"].as_str().unwrap_or_default().to_owned();
    let (cert, key) = common::pki::ca_pair("stage CA");
    let (_, other_key) = common::pki::ca_pair("other");
    let manager_stage = [
        ("unknown type", json!([{"name": "ca-1", "type": "vault"}])),
        (
            "provided, no conf",
            json!([{"name": "ca-1", "type": "provided"}]),
        ),
        (
            "provided, missing secrets",
            json!([{"name": "ca-1", "type": "provided",
                "conf": {"cert": {"secret": "nope"}, "key": {"secret": "nope-key"}}}]),
        ),
        (
            "provided, key of another CA",
            json!([{"name": "ca-1", "type": "provided",
                "conf": {"cert": {"inlineString": cert}, "key": {"inlineString": other_key}}}]),
        ),
    ];
    for (case, backends) in &manager_stage {
        let (status, body) = put_json(
            &server,
            "/meshes/staged",
            mesh_with("staged", backends.clone()),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{case}: {body}");
        assert_eq!(
            title_of(&body),
            "Failed to create a resource",
            "{case}: {body}"
        );
    }
    let (status, _) = put_plain_mesh(&server, "staged").await;
    assert_eq!(status, StatusCode::CREATED);
    for (case, backends) in &manager_stage {
        let (status, body) = put_json(
            &server,
            "/meshes/staged",
            mesh_with("staged", backends.clone()),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{case}: {body}");
        assert_eq!(
            title_of(&body),
            "Failed to update a resource",
            "{case}: {body}"
        );
    }
    // The same with a precondition, which tells create from update without a read.
    let (status, body) = send(
        Client::new()
            .put(server.at("/meshes/staged-2"))
            .header("If-None-Match", "*")
            .json(&mesh_with("staged-2", manager_stage[0].1.clone())),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(title_of(&body), "Failed to create a resource", "{body}");
    // Kuma's Mesh validator: a backend name used twice, an enabledBackend naming none.
    let twice = json!([{"name": "ca-1", "type": "builtin"}, {"name": "ca-1", "type": "builtin"}]);
    let (status, body) = put_json(&server, "/meshes/staged", mesh_with("staged", twice)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(title_of(&body), "Could not process a resource", "{body}");
    let (status, body) = put_json(
        &server,
        "/meshes/staged",
        json!({"type": "Mesh", "name": "staged", "mtls": {"enabledBackend": "none",
            "backends": [{"name": "ca-1", "type": "builtin"}]}}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(title_of(&body), "Could not process a resource", "{body}");
    // A valid provided CA still goes in, and the Mesh is at the version it was.
    let good = json!([{"name": "ca-1", "type": "provided",
        "conf": {"cert": {"inlineString": cert}, "key": {"inlineString": key}}}]);
    let (status, body) = put_json(&server, "/meshes/staged", mesh_with("staged", good)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(version_of(&server, "/meshes/staged").await, 2);
    // A Mesh's immutable label.
    let (status, body) = put_json(
        &server,
        "/meshes/staged",
        json!({"type": "Mesh", "name": "staged", "labels": {"kuma.io/origin": "global"}}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(title_of(&body), "Could not update a resource", "{body}");
}

async fn kumactl_apply_parity(backend: Backend) {
    let server = TestServer::start(backend).await;
    // No documents at all: an empty file, an empty directory.
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.yaml");
    std::fs::write(&empty, "# nothing here\n").unwrap();
    for source in [
        empty.to_str().unwrap(),
        dir.path().join("none").to_str().unwrap(),
    ] {
        if !source.ends_with(".yaml") {
            std::fs::create_dir(source).unwrap();
        }
        let run = cli(&server, &["apply", "-f", source], None)
            .await
            .fails_with("Error: no resource(s) passed to apply");
        assert_eq!(run.code, 1);
    }

    // Each document on its own: a broken quote in document 1 swallows nothing after it.
    let stream = "type: Secret\nmesh: default\nname: ok\ndata: eA==\n---\n\
                  type: Secret\nname: \"unclosed\nmesh: default\n---\n\
                  type: Foo\nname: x\n---\n\
                  type: Secret\nmesh: default\nname: Bad_Name\ndata: eA==\n";
    let run = cli(&server, &["apply", "-f", "-"], Some(stream))
        .await
        .failed();
    for expected in [
        "resource[1]: failed to parse resource:",
        "resource[2]: failed to parse resource: invalid resource type \"Foo\"",
        "resource[3]: failed to parse resource:",
    ] {
        assert!(run.stderr.contains(expected), "{expected} in {run:?}");
    }
    assert!(!run.stderr.contains("resource[0]"), "{run:?}");

    // A server-side rejection, as kumactl prints it.
    let run = cli(
        &server,
        &["apply", "-f", "-"],
        Some(
            "type: Secret\nmesh: default\nname: s\ndata: eA==\nlabels:\n  kuma.io/origin: bogus\n",
        ),
    )
    .await
    .failed();
    assert!(
        run.stderr.contains(
            "resource type=\"Secret\" mesh=\"default\" name=\"s\": failed server side: Could not process a resource (Resource is not valid);labels[\"kuma.io/origin\"]=unknown resource origin \"bogus\" "
        ),
        "{run:?}"
    );
}

async fn kumactl_get_parity(backend: Backend) {
    let server = TestServer::start(backend).await;
    common::http::create_in_store(&server.store, Some("default"), "sec-1", "test2\n").await;
    // One item: meta keys sorted, quoted timestamps, then data.
    let run = cli(&server, &["get", "secret", "sec-1", "-o", "yaml"], None)
        .await
        .ok();
    let keys: Vec<&str> = run
        .stdout
        .lines()
        .map(|l| l.split(':').next().unwrap())
        .collect();
    assert_eq!(
        keys,
        [
            "creationTime",
            "mesh",
            "modificationTime",
            "name",
            "type",
            "data"
        ],
        "{run:?}"
    );
    assert!(run.stdout.contains("creationTime: \"20"), "{run:?}");
    assert!(run.stdout.ends_with("data: dGVzdDIK\n"), "{run:?}");
    // A list: every key sorted, items then next then total.
    let run = cli(&server, &["get", "secrets", "-o", "yaml"], None)
        .await
        .ok();
    let top: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| !l.starts_with([' ', '-']))
        .map(|l| l.split(':').next().unwrap())
        .collect();
    assert_eq!(top, ["items", "next", "total"], "{run:?}");
    assert!(
        run.stdout.starts_with("items:\n- creationTime: \"20"),
        "{run:?}"
    );
    assert!(run.stdout.contains("  data: dGVzdDIK\n"), "{run:?}");

    // The table is kumactl's; usage lines only when asked for.
    let run = cli(&server, &["get", "secret", "sec-1"], None).await.ok();
    assert_eq!(run.stdout.lines().count(), 2, "{run:?}");
    assert!(!run.stdout.contains("used by"), "{run:?}");
    let run = cli(&server, &["get", "secret", "sec-1", "--show-usage"], None)
        .await
        .ok();
    assert!(
        run.stdout.contains("Not used by any mTLS backend"),
        "{run:?}"
    );
}

fn fixture(name: &str) -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/secrets-page")
        .join(name)
        .display()
        .to_string()
}

/// Every example of Kuma's Secrets page, as printed there, through our CLI.
async fn the_secrets_page_examples_work_as_pasted(backend: Backend) {
    let server = TestServer::start(backend).await;
    for (file, line) in [
        (
            "universal-secret.yaml",
            "resource type=\"Secret\" mesh=\"default\" name=\"sample-secret\" Created",
        ),
        (
            "universal-secret-echo.yaml",
            "resource type=\"Secret\" mesh=\"default\" name=\"sample-secret\" Updated",
        ),
        (
            "universal-global-secret.yaml",
            "resource type=\"GlobalSecret\" mesh=\"\" name=\"sample-global-secret\" Created",
        ),
        (
            "kubernetes-secret.yaml",
            "resource type=\"Secret\" mesh=\"default\" name=\"sample-secret\" Updated",
        ),
        (
            "kubernetes-global-secret.yaml",
            "resource type=\"GlobalSecret\" mesh=\"\" name=\"sample-secret\" Created",
        ),
    ] {
        let run = cli(&server, &["apply", "-f", &fixture(file)], None)
            .await
            .ok();
        assert!(run.stdout.contains(line), "{file}: {run:?}");
    }
    let secret = get_json(&server, "/meshes/default/secrets/sample-secret").await;
    assert_eq!(secret["data"], "dGVzdAo=");

    // The Mesh examples use `config:`; they need their secrets first.
    let (cert, key) = common::pki::ca_pair("kuma-parity");
    for (name, pem) in [("my-cert", cert), ("my-key", key)] {
        let (status, body) = put_json(
            &server,
            &format!("/meshes/default/secrets/{name}"),
            json!({"type": "Secret", "mesh": "default", "name": name, "data": b64(pem)}),
        )
        .await;
        assert!(status.is_success(), "{body}");
    }
    for file in ["universal-mesh.yaml", "kubernetes-mesh.yaml"] {
        let run = cli(&server, &["apply", "-f", &fixture(file)], None)
            .await
            .ok();
        assert!(
            run.stdout
                .contains("resource type=\"Mesh\" mesh=\"\" name=\"default\" Updated"),
            "{file}: {run:?}"
        );
        let mesh = get_json(&server, "/meshes/default").await;
        let backend = &mesh["mtls"]["backends"][0];
        assert_eq!(backend["conf"]["cert"]["secret"], "my-cert", "{mesh}");
        assert!(backend.get("config").is_none(), "stored as conf: {mesh}");
    }
    // Both spellings at once is a clear 400.
    let (status, body) = put_json(
        &server,
        "/meshes/default",
        json!({"type": "Mesh", "name": "default", "mtls": {"backends": [{"name": "ca-1", "type": "provided",
            "conf": {"cert": {"secret": "my-cert"}, "key": {"secret": "my-key"}},
            "config": {"cert": {"secret": "my-cert"}, "key": {"secret": "my-key"}}}]}}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body["invalid_parameters"][0]["field"],
        "mtls.backends[0].config"
    );

    // The Kubernetes secret examples through `import` too.
    let dir = tempfile::tempdir().unwrap();
    let keys = common::test_keyring_file(dir.path());
    let run = common::raw::store_tool(
        &server,
        &keys,
        &[
            "import",
            "-f",
            &fixture("kubernetes-secret.yaml"),
            "-f",
            &fixture("kubernetes-global-secret.yaml"),
        ],
    )
    .await
    .ok();
    // Both exist already (applied above); the import rewrites them with the manifests'
    // labels, which lack the ones the API computes.
    assert!(run.stdout.contains("0 created, 2 updated"), "{run:?}");
}

on_both_backends! {
    blind_puts_never_conflict_and_every_write_bumps_the_version,
    preconditions_still_hold_with_one_statement_writes,
    validation_reports_everything_in_kumas_order,
    meshes_carry_kri_warnings_and_kumas_titles,
    errors_are_titled_by_the_stage_that_found_them,
    kumactl_apply_parity,
    kumactl_get_parity,
    the_secrets_page_examples_work_as_pasted,
}

/// `import` of secrets into a store that has no Mesh for them says what to do.
#[tokio::test]
async fn importing_secrets_without_their_mesh_says_how_to_fix_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::sqlite_url(dir.path(), "fresh.db");
    let run = kuma(
        &[
            "import",
            "--store",
            &store,
            "-f",
            &fixture("universal-secret.yaml"),
        ],
        None,
    )
    .await
    .failed();
    assert!(
        run.stderr.contains("mesh \"default\" not found")
            && run.stderr.contains("Include it in the import")
            && run.stderr.contains("create it first"),
        "{run:?}"
    );
}
