//! The client verbs end to end: the built `kuma-secrets` binary against a real server on
//! port 0, on both backends. kumactl's lines, tables, footers and messages; every output
//! format; Kubernetes manifests in and out; templating; client-side validation; exit codes.

#[macro_use]
mod common;

use common::http::stored;
use common::process::{kuma, kuma_with_env};
use common::server::{Backend, TestServer};
use serde_json::Value;

/// `kuma-secrets ARGS --api-url URL`.
async fn cli(server: &TestServer, args: &[&str]) -> common::process::CliRun {
    cli_in(server, args, None).await
}

async fn cli_in(
    server: &TestServer,
    args: &[&str],
    stdin: Option<&str>,
) -> common::process::CliRun {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--api-url", &server.url]);
    kuma(&all, stdin).await
}

const SECRETS: &str = "\
type: Secret
mesh: default
name: sample
labels:
  team: payments
data: aGVsbG8=
---
type: GlobalSecret
name: shared
data: d29ybGQ=
";

async fn apply_get_delete_round_trip_in_every_output_format(backend: Backend) {
    let server = TestServer::start(backend).await;

    // apply prints kumactl's lines: Created, then Updated.
    let run = cli_in(&server, &["apply", "-f", "-"], Some(SECRETS))
        .await
        .ok();
    assert_eq!(
        run.stdout,
        "resource type=\"Secret\" mesh=\"default\" name=\"sample\" Created\n\
         resource type=\"GlobalSecret\" mesh=\"\" name=\"shared\" Created\n"
    );
    let run = cli_in(&server, &["apply", "-f", "-"], Some(SECRETS))
        .await
        .ok();
    assert!(run.stdout.contains("name=\"sample\" Updated"), "{run:?}");
    assert_eq!(
        stored(&server, Some("default"), "sample").await.unwrap(),
        b"hello"
    );

    // table
    let run = cli(&server, &["get", "secrets"]).await.ok();
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["MESH", "NAME", "AGE"]
    );
    assert_eq!(
        &lines[1].split_whitespace().collect::<Vec<_>>()[..2],
        ["default", "sample"]
    );
    assert_eq!(lines.len(), 2, "{run:?}");
    let run = cli(&server, &["get", "global-secrets"]).await.ok();
    assert!(run.stdout.starts_with("NAME"), "{run:?}");
    assert!(
        run.stdout.lines().any(|l| l.starts_with("shared ")),
        "{run:?}"
    );
    assert!(
        cli(&server, &["get", "globalsecrets"]).await.ok().stdout == run.stdout,
        "kumactl's alias"
    );

    // json and yaml are the API's list body
    let run = cli(&server, &["get", "secrets", "-o", "json"]).await.ok();
    let body: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(body["total"], 1);
    assert_eq!(body["items"][0]["data"], "aGVsbG8=");
    assert_eq!(body["items"][0]["labels"]["team"], "payments");
    assert!(body["next"].is_null());
    let run = cli(&server, &["get", "secrets", "-o", "yaml"]).await.ok();
    let yaml: Value = serde_yaml_ng::from_str(&run.stdout).unwrap();
    assert_eq!(yaml, body);

    // one item, each format
    let run = cli(&server, &["get", "secret", "sample", "-o", "json"])
        .await
        .ok();
    let item: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(item["type"], "Secret");
    assert_eq!(item["mesh"], "default");
    let run = cli(&server, &["get", "global-secret", "shared", "-o", "yaml"])
        .await
        .ok();
    let item: Value = serde_yaml_ng::from_str(&run.stdout).unwrap();
    assert_eq!(item["data"], "d29ybGQ=");
    let run = cli(&server, &["get", "secret", "sample"]).await.ok();
    assert!(run.stdout.starts_with("MESH"), "{run:?}");

    // kubernetes manifests, as Kuma's Kubernetes mode stores them
    let run = cli(&server, &["get", "secret", "sample", "-o", "kubernetes"])
        .await
        .ok();
    let manifest: Value = serde_yaml_ng::from_str(&run.stdout).unwrap();
    common::http::assert_secret_manifest(&manifest, "default", "aGVsbG8=");
    let run = cli(&server, &["get", "global-secrets", "-o", "k8s"])
        .await
        .ok();
    let list: Value = serde_yaml_ng::from_str(&run.stdout).unwrap();
    assert_eq!(list["kind"], "List");
    assert!(
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["type"] == "system.kuma.io/global-secret")
    );

    // meshes
    let run = cli(&server, &["get", "meshes"]).await.ok();
    assert!(
        run.stdout.lines().nth(1).unwrap().starts_with("default "),
        "{run:?}"
    );
    cli(&server, &["get", "mesh", "default", "-o", "json"])
        .await
        .ok();

    // delete, kumactl's messages
    let run = cli(&server, &["delete", "secret", "sample"]).await.ok();
    assert_eq!(run.stdout, "deleted Secret \"sample\"\n");
    assert_eq!(stored(&server, Some("default"), "sample").await, None);
    let run = cli(&server, &["delete", "secret", "sample"]).await.failed();
    assert!(
        run.stderr
            .contains("there is no Secret with name \"sample\""),
        "{run:?}"
    );
    cli(&server, &["get", "secret", "sample"])
        .await
        .fails_with("No resources found in default mesh");
    cli(&server, &["get", "global-secret", "nope"])
        .await
        .fails_with("Error: No resources found\n");
    let run = cli(&server, &["delete", "global-secret", "shared"])
        .await
        .ok();
    assert_eq!(run.stdout, "deleted GlobalSecret \"shared\"\n");
}

async fn kubernetes_manifests_are_applied_as_kuma_maps_them(backend: Backend) {
    let server = TestServer::start(backend).await;
    cli_in(
        &server,
        &["apply", "-f", "-"],
        Some("type: Mesh\nname: payments\n"),
    )
    .await
    .ok();
    // As `kubectl get secrets -n kuma-system -o yaml` prints them: a v1 List, with an
    // application's TLS secret in the same namespace that is not Kuma's.
    let list = "\
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Secret
  type: system.kuma.io/secret
  metadata:
    name: no-mesh-label
    namespace: kuma-system
  data:
    value: YQ==
- apiVersion: v1
  kind: Secret
  type: system.kuma.io/secret
  metadata:
    name: in-payments
    namespace: kuma-system
    labels:
      kuma.io/mesh: payments
  data:
    value: Yg==
- apiVersion: v1
  kind: Secret
  type: system.kuma.io/global-secret
  metadata:
    name: global-one
  stringData:
    value: plain text
- apiVersion: v1
  kind: Secret
  type: kubernetes.io/tls
  metadata:
    name: app-tls
  data:
    tls.crt: eA==
";
    let run = cli_in(&server, &["apply", "-f", "-"], Some(list))
        .await
        .ok();
    assert_eq!(run.stdout.lines().count(), 3, "{run:?}");
    assert!(
        run.stderr.contains("Warning: skipped Secret \"app-tls\""),
        "{run:?}"
    );
    assert_eq!(
        stored(&server, Some("default"), "no-mesh-label")
            .await
            .unwrap(),
        b"a"
    );
    assert_eq!(
        stored(&server, Some("payments"), "in-payments")
            .await
            .unwrap(),
        b"b"
    );
    assert_eq!(
        stored(&server, None, "global-one").await.unwrap(),
        b"plain text"
    );
    assert_eq!(stored(&server, None, "app-tls").await, None);

    // And what -o kubernetes prints applies back unchanged.
    let out = cli(
        &server,
        &["get", "secrets", "-m", "payments", "-o", "kubernetes"],
    )
    .await
    .ok()
    .stdout;
    let run = cli_in(&server, &["apply", "-f", "-"], Some(&out))
        .await
        .ok();
    assert_eq!(
        run.stdout,
        "resource type=\"Secret\" mesh=\"payments\" name=\"in-payments\" Updated\n"
    );

    // A global secret may not carry a mesh.
    let bad = "apiVersion: v1\nkind: Secret\ntype: system.kuma.io/global-secret\nmetadata:\n  name: g\n  labels: {kuma.io/mesh: default}\ndata: {value: YQ==}\n";
    cli_in(&server, &["apply", "-f", "-"], Some(bad))
        .await
        .fails_with("mesh cannot be set on global secret");
}

async fn templating_fills_vars_and_dry_run_applies_nothing(backend: Backend) {
    let server = TestServer::start(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let file = common::write_file(
        dir.path(),
        "secret.yaml",
        "type: Secret\nmesh: {{ mesh }}\nname: templated\ndata: {{key}}\n",
    );
    // `apply -f FILE --var mesh=default`, then `more`.
    let apply = async |more: &[&str]| {
        let mut args = vec!["apply", "-f", &file, "--var", "mesh=default"];
        args.extend_from_slice(more);
        cli(&server, &args).await
    };

    let run = apply(&["-v", "key=c2VjcmV0", "--dry-run"]).await.ok();
    assert_eq!(
        run.stdout,
        "type: Secret\nmesh: default\nname: templated\ndata: c2VjcmV0\n"
    );
    assert_eq!(
        stored(&server, Some("default"), "templated").await,
        None,
        "dry run"
    );

    apply(&[]).await.fails_with("--var key=VALUE");
    apply(&["--var", "key=c2VjcmV0"]).await.ok();
    assert_eq!(
        stored(&server, Some("default"), "templated").await.unwrap(),
        b"secret"
    );

    // A directory: its YAML and JSON files, sorted.
    std::fs::write(
        dir.path().join("a.json"),
        r#"{"type":"GlobalSecret","name":"from-json","data":"eA=="}"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not: yaml: at: all").unwrap();
    let run = cli(
        &server,
        &[
            "apply",
            "-f",
            dir.path().to_str().unwrap(),
            "-v",
            "mesh=default",
            "-v",
            "key=eQ==",
        ],
    )
    .await
    .ok();
    assert_eq!(run.stdout.lines().count(), 2, "{run:?}");
    assert_eq!(stored(&server, None, "from-json").await.unwrap(), b"x");
}

async fn client_side_validation_reports_every_bad_document_and_applies_nothing(backend: Backend) {
    let server = TestServer::start(backend).await;
    let stream = "\
type: Secret
mesh: default
name: fine
data: aGVsbG8=
---
type: Secret
mesh: default
name: Not_A_Name
data: '%%%'
---
type: GlobalSecret
name: empty
---
type: Sekret
name: typo
";
    let run = cli_in(&server, &["apply", "-f", "-"], Some(stream))
        .await
        .failed();
    for expected in [
        "resource[1]: failed to parse resource:",
        "illegal base64 data",
        "resource[2]: failed to parse resource: data: cannot be empty",
        "resource[3]: failed to parse resource: invalid resource type \"Sekret\"",
        "Error: failed to validate some resources",
    ] {
        assert!(run.stderr.contains(expected), "{expected:?} in {run:#?}");
    }
    assert!(!run.stderr.contains("resource[0]"), "{run:?}");
    assert_eq!(
        stored(&server, Some("default"), "fine").await,
        None,
        "nothing applied"
    );

    cli_in(&server, &["apply", "-f", "-"], Some("name: [unclosed\n"))
        .await
        .fails_with("resource[0]: failed to parse resource");

    // A server-side failure names the resource.
    let run = cli_in(
        &server,
        &["apply", "-f", "-"],
        Some("type: Secret\nmesh: nowhere\nname: s\ndata: eA==\n"),
    )
    .await
    .failed();
    assert!(
        run.stderr
            .contains("resource type=\"Secret\" mesh=\"nowhere\" name=\"s\": failed server side:"),
        "{run:?}"
    );
}

async fn lists_page_with_kumactls_footer(backend: Backend) {
    let server = TestServer::start(backend).await;
    let stream: Vec<String> = (0..3)
        .map(|i| format!("type: Secret\nmesh: default\nname: s{i}\ndata: eA==\n"))
        .collect();
    cli_in(&server, &["apply", "-f", "-"], Some(&stream.join("---\n")))
        .await
        .ok();
    let run = cli(&server, &["get", "secrets", "--size", "2"]).await.ok();
    assert_eq!(run.stdout.lines().count(), 5, "{run:?}");
    assert!(
        run.stdout
            .ends_with("\nRerun command with --offset=2 argument to retrieve more resources\n"),
        "{run:?}"
    );
    let run = cli(&server, &["get", "secrets", "--size", "2", "--offset", "2"])
        .await
        .ok();
    assert_eq!(run.stdout.lines().count(), 2, "{run:?}");
    assert!(run.stdout.contains("s2"), "{run:?}");
    assert!(!run.stdout.contains("Rerun"), "{run:?}");
}

async fn failures_exit_non_zero_with_one_line(backend: Backend) {
    let server = TestServer::start_tokens_only(backend).await;

    // No token: 403 with Kuma's text.
    cli(&server, &["get", "secrets"])
        .await
        .fails_with("Access Denied");
    // A bad token: 401.
    let run = cli(&server, &["get", "secrets", "--token", "not-a-jwt"])
        .await
        .failed();
    assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
    // The admin token works, and mints a non-admin token that is refused.
    let admin = server.admin_token().await;
    cli(&server, &["get", "secrets", "--token", &admin])
        .await
        .ok();
    let run = cli(
        &server,
        &[
            "generate",
            "user-token",
            "--name",
            "john",
            "--group",
            "team-a",
            "--valid-for",
            "1h",
            "--token",
            &admin,
        ],
    )
    .await
    .ok();
    let john = run.stdout.trim().to_owned();
    assert_eq!(john.split('.').count(), 3, "a JWT: {run:?}");
    cli(&server, &["get", "secrets", "--token", &john])
        .await
        .fails_with("Access Denied");
    // The token also comes from the environment.
    let run = kuma_with_env(
        &["get", "meshes"],
        None,
        &[
            ("KUMA_SECRETS_API_URL", &server.url),
            ("KUMA_SECRETS_TOKEN", &admin),
        ],
    )
    .await
    .ok();
    assert!(run.stdout.contains("default"), "{run:?}");

    // Nothing listening.
    let run = kuma(&["get", "secrets", "--api-url", "http://127.0.0.1:9"], None)
        .await
        .failed();
    assert!(
        run.stderr
            .contains("could not reach the API at http://127.0.0.1:9"),
        "{run:?}"
    );
    kuma(&["get", "secrets", "--api-url", "not a url"], None)
        .await
        .fails_with("invalid --api-url");
    // Missing file.
    cli(&server, &["apply", "-f", "/nonexistent.yaml"])
        .await
        .fails_with("could not read /nonexistent.yaml");
}

on_both_backends! {
    apply_get_delete_round_trip_in_every_output_format,
    kubernetes_manifests_are_applied_as_kuma_maps_them,
    templating_fills_vars_and_dry_run_applies_nothing,
    client_side_validation_reports_every_bad_document_and_applies_nothing,
    lists_page_with_kumactls_footer,
    failures_exit_non_zero_with_one_line,
}
