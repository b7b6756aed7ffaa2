//! `kuma-secrets apply -f FILE|DIR|URL|-`: kumactl's `apply`. Files are read and joined,
//! `--var` placeholders rendered, every document validated on the client (all problems
//! reported before anything is written), then each resource is PUT in order.

use super::ApiArgs;
use crate::client::{ApiClient, secret_path, segment};
use crate::domain::Resource;
use crate::manifest::{self, template};
use anyhow::Context;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

/// `kuma-secrets apply …`
#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// A file, a directory (its *.yaml, *.yml and *.json, sorted), an http(s) URL, or `-`
    /// for stdin. Repeatable.
    #[arg(short = 'f', long = "file", required = true)]
    files: Vec<String>,
    /// A template variable: `{{ key }}` in the files becomes VALUE. Repeatable.
    #[arg(short = 'v', long = "var", value_name = "KEY=VALUE")]
    vars: Vec<String>,
    /// Print the rendered YAML instead of applying it.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    api: ApiArgs,
}

pub(super) async fn run(args: ApplyArgs) -> anyhow::Result<()> {
    let mut vars = BTreeMap::new();
    for var in &args.vars {
        let (key, value) = template::parse_var(var).map_err(anyhow::Error::msg)?;
        vars.insert(key, value);
    }
    let mut text = String::new();
    for source in &args.files {
        if !text.is_empty() {
            text.push_str("\n---\n");
        }
        text.push_str(&read_source(source).await?);
    }
    let rendered = template::render(&text, &vars).map_err(anyhow::Error::msg)?;
    if args.dry_run {
        print!("{rendered}");
        return Ok(());
    }
    let stream = match manifest::read_stream(&rendered) {
        Ok(stream) => stream,
        Err(problems) => {
            for problem in problems {
                eprintln!("{problem}");
            }
            anyhow::bail!("failed to validate some resources");
        }
    };
    if stream.resources.is_empty() && stream.skipped.is_empty() {
        anyhow::bail!("no resource(s) passed to apply");
    }
    for skipped in &stream.skipped {
        eprintln!("Warning: skipped {skipped}: not a Kuma resource");
    }
    let client = args.api.client()?;
    for resource in &stream.resources {
        apply_one(&client, resource).await?;
    }
    Ok(())
}

/// PUTs one resource and prints kumactl's line for it.
async fn apply_one(client: &ApiClient, resource: &Resource) -> anyhow::Result<()> {
    let key = resource.key();
    let path = match (key.resource_type, &key.mesh) {
        ("Mesh", _) => format!("/meshes/{}", segment(&key.name)),
        ("ExternalService", Some(mesh)) => format!(
            "/meshes/{}/external-services/{}",
            segment(mesh),
            segment(&key.name)
        ),
        (_, mesh) => secret_path(mesh.as_deref(), &key.name),
    };
    let mesh = key.mesh.clone().unwrap_or_default();
    let created = client
        .put(&path, &manifest::to_universal(resource))
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "resource type={:?} mesh={mesh:?} name={:?}: failed server side: {e}",
                key.resource_type,
                key.name
            )
        })?;
    println!(
        "resource type={:?} mesh={mesh:?} name={:?} {}",
        key.resource_type,
        key.name,
        if created { "Created" } else { "Updated" }
    );
    Ok(())
}

/// Whether a `-f` source is an http(s) URL.
pub(super) fn is_url(source: &str) -> bool {
    source.starts_with("http://") || source.starts_with("https://")
}

/// `GET url`, a success status required, the answer's body still to read.
pub(super) async fn fetch(url: &str, timeout: Duration) -> anyhow::Result<reqwest::Response> {
    reqwest::Client::new()
        .get(url)
        .timeout(timeout)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .with_context(|| format!("could not fetch {url}"))
}

/// The YAML and JSON files of directory `dir` (`*.yaml`, `*.yml`, `*.json`), sorted by name.
pub(super) fn manifest_files_in(dir: &Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("could not read directory {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// The text of one `-f`: stdin, a URL, a directory's YAML and JSON files, or a file.
pub(super) async fn read_source(source: &str) -> anyhow::Result<String> {
    if source == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("could not read stdin")?;
        return Ok(text);
    }
    if is_url(source) {
        return fetch(source, Duration::from_secs(10))
            .await?
            .text()
            .await
            .with_context(|| format!("could not fetch {source}"));
    }
    let path = Path::new(source);
    if path.is_dir() {
        let mut texts = Vec::new();
        for file in manifest_files_in(path)? {
            texts.push(
                std::fs::read_to_string(&file)
                    .with_context(|| format!("could not read {}", file.display()))?,
            );
        }
        return Ok(texts.join("\n---\n"));
    }
    std::fs::read_to_string(path).with_context(|| format!("could not read {source}"))
}
