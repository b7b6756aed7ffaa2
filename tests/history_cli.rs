//! The history verbs of the real binary against a real `serve`: `history`, `get --version`,
//! `rollback --to`, `restore`, `delete --purge`, and `serve --max-versions` /
//! `--deleted-retention`.

mod common;

use common::process::{kuma, spawn_serve, terminate, wait_exit};
use std::time::{Duration, Instant};

fn secret_yaml(data: &str) -> String {
    use base64::Engine;
    format!(
        "type: Secret\nmesh: default\nname: tls\ndata: {}\n",
        base64::engine::general_purpose::STANDARD.encode(data)
    )
}

async fn at(url: &str, args: &[&str]) -> common::process::CliRun {
    let mut all = args.to_vec();
    all.extend(["--api-url", url]);
    kuma(&all, None).await
}

#[tokio::test]
async fn history_verbs_through_a_real_server() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::sqlite_url(dir.path(), "store.db");
    let (mut server, url, _log) =
        spawn_serve(&["--store", &store, "--max-versions", "2"], dir.path());
    common::server::wait_ready(&url).await;
    for data in ["d1", "d2", "d3", "d4"] {
        kuma(
            &["apply", "-f", "-", "--api-url", &url],
            Some(&secret_yaml(data)),
        )
        .await
        .ok();
    }

    // The current version and the two before it (--max-versions 2).
    let run = at(&url, &["history", "secret", "tls", "-m", "default"])
        .await
        .ok();
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(lines[0].starts_with("VERSION   CURRENT   AGE"), "{run:?}");
    let versions: Vec<&str> = lines[1..]
        .iter()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(versions, ["4", "3", "2"], "{run:?}");
    assert!(
        lines[1].contains("yes") && lines[1].contains("localhost"),
        "{run:?}"
    );

    let run = at(
        &url,
        &["get", "secret", "tls", "--version", "3", "-o", "json"],
    )
    .await
    .ok();
    let body: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(body["data"], "ZDM=", "{run:?}");
    at(&url, &["get", "secret", "tls", "--version", "1"])
        .await
        .fails_with("No resources found");

    let run = at(&url, &["rollback", "secret", "tls", "--to", "2"])
        .await
        .ok();
    assert_eq!(
        run.stdout,
        "rolled back Secret \"tls\" to version 2: it is now version 5\n"
    );
    at(&url, &["rollback", "secret", "tls"])
        .await
        .fails_with("--to is required");

    at(&url, &["delete", "secret", "tls"]).await.ok();
    let run = at(&url, &["restore", "secret", "tls"]).await.ok();
    assert_eq!(run.stdout, "restored Secret \"tls\" as version 6\n");
    at(&url, &["restore", "secret", "tls"])
        .await
        .fails_with("only a deleted secret can be restored");

    let run = at(&url, &["delete", "secret", "tls", "--purge"]).await.ok();
    assert_eq!(run.stdout, "purged Secret \"tls\" and its history\n");
    at(&url, &["history", "secret", "tls"])
        .await
        .fails_with("Secret \"tls\"");

    // A deleted secret's history outlives the server, until --deleted-retention lets go.
    kuma(
        &["apply", "-f", "-", "--api-url", &url],
        Some(&secret_yaml("again")),
    )
    .await
    .ok();
    at(&url, &["delete", "secret", "tls"]).await.ok();
    terminate(&server);
    wait_exit(&mut server);
    let (_kept, url, _log) = spawn_serve(&["--store", &store], dir.path());
    common::server::wait_ready(&url).await;
    let run = at(&url, &["history", "secret", "tls", "-o", "json"])
        .await
        .ok();
    assert!(run.stdout.contains("deletionTime"), "{run:?}");
    drop(_kept);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_pruning, url, _log) = spawn_serve(
        &["--store", &store, "--deleted-retention", "1s"],
        dir.path(),
    );
    common::server::wait_ready(&url).await;
    // The pruner runs at start, then every minute.
    let deadline = Instant::now() + Duration::from_secs(30);
    while at(&url, &["history", "secret", "tls"]).await.code == 0 {
        assert!(
            Instant::now() < deadline,
            "the deleted secret's history was never pruned"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    at(&url, &["restore", "secret", "tls"])
        .await
        .fails_with("Secret \"tls\"");
}
