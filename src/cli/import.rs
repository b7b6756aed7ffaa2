//! `kuma-secrets import`: write a YAML stream (an `export`, Universal files, or
//! `kubectl get secrets -n kuma-system -o yaml` output) into a store, no server needed.
//! Idempotent: resources already there with the same data, labels and spec are left
//! alone, so a second run changes nothing. Each batch is one transaction.

use super::StoreArgs;
use super::apply::{fetch, is_url, manifest_files_in};
use super::keyring::{Access, EncryptionArgs, store_options};
use crate::domain::Resource;
use crate::manifest::{self, Documents, Entry};
use crate::store::{
    AnyStore, Backend, ImportCounts, PoolMode, PostgresStore, SecretStore, StoreError,
    StoreOptions, StoreUrl,
};
use anyhow::Context;
use serde_json::Value;

/// `kuma-secrets import …`
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    encryption: EncryptionArgs,
    /// The YAML or JSON stream: a file, a directory, an http(s) URL, or `-` for stdin.
    #[arg(
        short = 'f',
        long = "file",
        required_unless_present = "from_kuma",
        conflicts_with = "from_kuma"
    )]
    files: Vec<String>,
    /// A Kuma control plane's Postgres database (postgres://…) to read Meshes, Secrets and
    /// GlobalSecrets from, in one read-only snapshot; it is never written to.
    #[arg(long = "from-kuma", value_name = "URL")]
    from_kuma: Option<StoreUrl>,
    /// With --from-kuma: report what would be imported and skipped, write nothing.
    #[arg(long, requires = "from_kuma")]
    dry_run: bool,
    /// With --from-kuma: skip secrets whose Mesh is gone without listing them.
    #[arg(long, requires = "from_kuma")]
    quiet_orphans: bool,
    /// Resources per transaction.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    batch_size: u32,
}

pub(super) async fn run(args: ImportArgs) -> anyhow::Result<()> {
    if let Some(kuma) = &args.from_kuma {
        return run_from_kuma(kuma, &args).await;
    }
    let sources = Sources::gather(&args.files).await?;
    // First pass: validate every document, keeping only the Meshes (few and small), so a
    // bad file is reported in full before anything is written.
    let checked = sources.check()?;
    let store = open_destination(&args.store.url, &args.encryption).await?;
    let batch = args.batch_size as usize;
    let mut counts = ImportCounts::default();
    // Meshes first, so the secrets of a mesh defined later in the file find it.
    for chunk in checked.meshes.chunks(batch) {
        counts += store
            .import_batch(chunk.to_vec())
            .await
            .map_err(explain_missing_mesh)?;
    }
    // Second pass: the secrets, one batch in memory at a time.
    let mut pending = Vec::with_capacity(batch);
    for resource in sources.resources() {
        let resource = resource?;
        if matches!(resource, Resource::Mesh(_)) {
            continue;
        }
        pending.push(resource);
        if pending.len() == batch {
            counts += store
                .import_batch(std::mem::take(&mut pending))
                .await
                .map_err(explain_missing_mesh)?;
        }
    }
    if !pending.is_empty() {
        counts += store
            .import_batch(pending)
            .await
            .map_err(explain_missing_mesh)?;
    }
    store.close().await;
    println!(
        "imported into {}: {} created, {} updated, {} unchanged, {} skipped (not Kuma resources)",
        args.store.url, counts.created, counts.updated, counts.unchanged, checked.skipped
    );
    Ok(())
}

/// `import --from-kuma`: see [`super::from_kuma`].
async fn run_from_kuma(kuma: &StoreUrl, args: &ImportArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        kuma.backend() == Backend::Postgres,
        "--from-kuma reads a Kuma control plane's Postgres database: give a postgres:// URL"
    );
    let store = open_destination(&args.store.url, &args.encryption).await?;
    let found = super::from_kuma::import(
        kuma.expose(),
        &store,
        args.batch_size as usize,
        args.dry_run,
        !args.quiet_orphans,
    )
    .await;
    store.close().await;
    let found = found?;
    for skipped in &found.skipped {
        eprintln!("skipped {skipped}");
    }
    for problem in &found.problems {
        eprintln!("after the import: {problem}");
    }
    let others: Vec<String> = found
        .other_types
        .iter()
        .map(|(kind, count)| format!("{count} {kind}"))
        .collect();
    let counts = found.counts;
    if args.dry_run {
        println!(
            "dry run, nothing written: would import {} meshes, {} secrets and {} external services from {kuma} into {}; {} skipped; other resource types left alone: {}",
            found.meshes,
            found.secrets,
            found.external_services,
            args.store.url,
            found.skipped.len(),
            if others.is_empty() {
                "none".to_owned()
            } else {
                others.join(", ")
            }
        );
    } else {
        println!(
            "imported from {kuma} into {}: {} created, {} updated, {} unchanged{}, verified; {} skipped; other resource types left alone: {}",
            args.store.url,
            counts.created,
            counts.updated,
            counts.unchanged,
            if counts.created + counts.updated == 0 {
                " (nothing new)"
            } else {
                ""
            },
            found.skipped.len(),
            if others.is_empty() {
                "none".to_owned()
            } else {
                others.join(", ")
            }
        );
    }
    anyhow::ensure!(
        found.skipped.is_empty() && found.problems.is_empty(),
        "{} Kuma resources were skipped, {} problems found after the import (listed above)",
        found.skipped.len(),
        found.problems.len()
    );
    Ok(())
}

/// The `-f` sources as files read in order, twice (validate, then write): a directory is
/// its YAML and JSON files, and stdin or a URL is first copied to a temporary file
/// (removed at the end). Memory holds one document and one batch at a time, whatever the
/// size of the input.
struct Sources {
    files: Vec<std::path::PathBuf>,
    _spooled: Vec<tempfile::TempPath>,
}

/// What the validating pass found.
struct Checked {
    meshes: Vec<Resource>,
    skipped: usize,
}

impl Sources {
    async fn gather(sources: &[String]) -> anyhow::Result<Self> {
        let mut files = Vec::new();
        let mut spooled = Vec::new();
        for source in sources {
            if source == "-" || is_url(source) {
                let path = spool(source).await?;
                files.push(path.to_path_buf());
                spooled.push(path);
                continue;
            }
            let path = std::path::Path::new(source);
            if path.is_dir() {
                files.extend(manifest_files_in(path)?);
            } else {
                std::fs::metadata(path).with_context(|| format!("could not read {source}"))?;
                files.push(path.to_path_buf());
            }
        }
        Ok(Self {
            files,
            _spooled: spooled,
        })
    }

    /// Every document of every file, in order, numbered across all of them.
    fn documents(
        &self,
    ) -> impl Iterator<Item = anyhow::Result<(usize, Result<Value, String>)>> + '_ {
        self.files
            .iter()
            .flat_map(|file| {
                let opened = std::fs::File::open(file)
                    .with_context(|| format!("could not read {}", file.display()));
                let (documents, error) = match opened {
                    Ok(f) => (Some(Documents::new(std::io::BufReader::new(f))), None),
                    Err(e) => (None, Some(Err(e))),
                };
                let name = file.display().to_string();
                error
                    .into_iter()
                    .chain(documents.into_iter().flatten().map(move |document| {
                        document.with_context(|| format!("could not read {name}"))
                    }))
            })
            .enumerate()
            .map(|(i, document)| document.map(|d| (i, d)))
    }

    /// Validates every document: the Meshes and the count of skipped objects, or every
    /// problem (kumactl's words, by index), and nothing is written.
    fn check(&self) -> anyhow::Result<Checked> {
        let mut checked = Checked {
            meshes: Vec::new(),
            skipped: 0,
        };
        let mut problems = 0;
        for document in self.documents() {
            let (i, document) = document?;
            match document.and_then(manifest::parse_document) {
                Ok(entries) => {
                    for entry in entries {
                        match entry {
                            Entry::Resource(mesh @ Resource::Mesh(_)) => checked.meshes.push(mesh),
                            Entry::Resource(Resource::Secret(_) | Resource::ExternalService(_)) => {
                            }
                            Entry::Skipped(_) => checked.skipped += 1,
                        }
                    }
                }
                Err(why) => {
                    eprintln!("resource[{i}]: failed to parse resource: {why}");
                    problems += 1;
                }
            }
        }
        if problems > 0 {
            anyhow::bail!("failed to validate some resources; nothing was imported");
        }
        Ok(checked)
    }

    /// Every resource, in order (after [`Sources::check`] passed).
    fn resources(&self) -> impl Iterator<Item = anyhow::Result<Resource>> + '_ {
        self.documents().flat_map(|document| {
            let entries = document.and_then(|(i, document)| {
                document
                    .and_then(manifest::parse_document)
                    .map_err(|why| anyhow::anyhow!("resource[{i}] changed while importing: {why}"))
            });
            let (entries, error) = match entries {
                Ok(entries) => (entries, None),
                Err(e) => (Vec::new(), Some(Err(e))),
            };
            error
                .into_iter()
                .chain(entries.into_iter().filter_map(|entry| match entry {
                    Entry::Resource(resource) => Some(Ok(resource)),
                    Entry::Skipped(_) => None,
                }))
        })
    }
}

/// Copies stdin (`-`) or a URL into a temporary file.
async fn spool(source: &str) -> anyhow::Result<tempfile::TempPath> {
    let mut file = tempfile::NamedTempFile::new().context("could not create a temporary file")?;
    if source == "-" {
        std::io::copy(&mut std::io::stdin().lock(), &mut file).context("could not read stdin")?;
    } else {
        let mut response = fetch(source, std::time::Duration::from_secs(600)).await?;
        while let Some(chunk) = response
            .chunk()
            .await
            .with_context(|| format!("could not fetch {source}"))?
        {
            std::io::Write::write_all(&mut file, &chunk)
                .context("could not write a temporary file")?;
        }
    }
    std::io::Write::flush(&mut file).context("could not write a temporary file")?;
    Ok(file.into_temp_path())
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
/// (moving data into a fresh database is what these commands are for), unless it is reached
/// through a pooler in transaction mode, where migrations cannot run (they need one
/// session) and the store's schema gate says to run `migrate up` if it is behind; SQLite
/// migrates itself on open.
///
/// # Errors
/// Unreachable database, a schema newer than this binary, or a failed migration.
pub(super) async fn open_destination(
    url: &StoreUrl,
    encryption: &EncryptionArgs,
) -> anyhow::Result<AnyStore> {
    // Keys in an HSM or a KMS are the store's data keys: its schema must be there to read
    // them. A keyring file is checked first, so a wrong one fails before anything is
    // migrated.
    let hsm = matches!(encryption.keys, Some(super::keyring::KeySource::Kek(_)));
    let file_options = if hsm {
        None
    } else {
        Some(store_options(url, encryption, Access::Write).await?)
    };
    if url.backend() == Backend::Postgres && url.pool_mode() == PoolMode::Session {
        let report = PostgresStore::migrate_up(url.expose(), false).await?;
        for applied in &report.applied {
            eprintln!(
                "{}: applied migration {} {}",
                url, applied.version, applied.description
            );
        }
    }
    let options = match file_options {
        Some(options) => options,
        None => store_options(url, encryption, Access::Write).await?,
    };
    let options = StoreOptions {
        accept_plaintext_rows: encryption.accept_plaintext_rows(),
        ..options
    };
    Ok(AnyStore::open(url.expose(), options).await?)
}
