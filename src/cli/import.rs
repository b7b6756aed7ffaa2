//! `kuma-secrets import`: write a YAML stream (an `export`, Universal files, or
//! `kubectl get secrets -n kuma-system -o yaml` output) into a store, no server needed.
//! Idempotent: resources already there with the same data, labels and spec are left
//! alone, so a second run changes nothing. Each batch is one transaction.

use super::StoreArgs;
use super::apply::read_source;
use super::keyring::{Access, EncryptionArgs, resolve};
use crate::domain::Resource;
use crate::manifest;
use crate::store::{
    AnyStore, Backend, ImportCounts, PostgresStore, SecretStore, StoreError, StoreOptions, StoreUrl,
};

/// `kuma-secrets import …`
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    encryption: EncryptionArgs,
    /// The YAML or JSON stream: a file, a directory, an http(s) URL, or `-` for stdin.
    #[arg(short = 'f', long = "file", required = true)]
    files: Vec<String>,
    /// Resources per transaction.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    batch_size: u32,
}

pub(super) async fn run(args: ImportArgs) -> anyhow::Result<()> {
    let mut text = String::new();
    for source in &args.files {
        if !text.is_empty() {
            text.push_str("\n---\n");
        }
        text.push_str(&read_source(source).await?);
    }
    let stream = match manifest::read_stream(&text) {
        Ok(stream) => stream,
        Err(problems) => {
            for problem in problems {
                eprintln!("{problem}");
            }
            anyhow::bail!("failed to validate some resources; nothing was imported");
        }
    };
    // Meshes first, so the secrets of a mesh defined later in the file find it.
    let (meshes, secrets): (Vec<Resource>, Vec<Resource>) = stream
        .resources
        .into_iter()
        .partition(|r| matches!(r, Resource::Mesh(_)));
    let store = open_destination(&args.store.url, &args.encryption).await?;
    let mut counts = ImportCounts::default();
    let batch = args.batch_size as usize;
    for chunk in meshes.chunks(batch).chain(secrets.chunks(batch)) {
        counts += store
            .import_batch(chunk.to_vec())
            .await
            .map_err(explain_missing_mesh)?;
    }
    store.close().await;
    println!(
        "imported into {}: {} created, {} updated, {} unchanged, {} skipped (not Kuma resources)",
        args.store.url,
        counts.created,
        counts.updated,
        counts.unchanged,
        stream.skipped.len()
    );
    Ok(())
}

/// A secret whose Mesh is neither in the store nor in the files: say how to get one.
fn explain_missing_mesh(err: StoreError) -> anyhow::Error {
    match err {
        StoreError::MeshNotFound { mesh } => anyhow::anyhow!(
            "mesh {mesh:?} not found: the secrets of a Mesh need the Mesh. Include it in the import (a `type: Mesh` document with `name: {mesh}`), or create it first (`kuma-secrets serve` creates Mesh \"default\" on its first start; `kuma-secrets apply` creates others)"
        ),
        other => other.into(),
    }
}

/// Opens a store to write into. A Postgres database gets its pending migrations first
/// (moving data into a fresh database is what these commands are for); SQLite migrates
/// itself on open.
///
/// # Errors
/// Unreachable database, a schema newer than this binary, or a failed migration.
pub(super) async fn open_destination(
    url: &StoreUrl,
    encryption: &EncryptionArgs,
) -> anyhow::Result<AnyStore> {
    let keyring = resolve(url, encryption, Access::Write).await?;
    if url.backend() == Backend::Postgres {
        let report = PostgresStore::migrate_up(url.expose(), false).await?;
        for applied in &report.applied {
            eprintln!(
                "{}: applied migration {} {}",
                url, applied.version, applied.description
            );
        }
    }
    let options = StoreOptions {
        keyring,
        accept_plaintext_rows: encryption.accept_plaintext_rows(),
        ..StoreOptions::default()
    };
    Ok(AnyStore::open(url.expose(), options).await?)
}
