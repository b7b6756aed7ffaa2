//! `kuma-secrets export`: a whole store (or one mesh, with its secrets and external
//! services) as a YAML stream that `apply` and
//! `import` read back, in Kuma's Universal form or as Kubernetes manifests. Read straight
//! from the store, no server needed; streamed page by page, so memory stays flat.

use super::StoreArgs;
use super::keyring::{Access, EncryptionArgs, store_options};
use crate::domain::MeshName;
use crate::manifest::{self, external_service_resource_of, mesh_resource_of, secret_resource_of};
use crate::store::{
    AnyStore, ExternalServiceQuery, ExternalServiceWalk, MeshWalk, PageRequest, PageWalk,
    SecretScope, SecretStore, SecretWalk, StoreOptions,
};
use anyhow::Context;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

/// Output formats of `export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Kuma Universal YAML (`type: Secret`, …), as `kumactl apply` takes it.
    Universal,
    /// Kubernetes manifests (`v1` `Secret` of type `system.kuma.io/secret`, …).
    #[value(alias = "k8s")]
    Kubernetes,
}

/// `kuma-secrets export …`
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    encryption: EncryptionArgs,
    /// Output format.
    #[arg(long, value_enum, default_value = "universal")]
    format: Format,
    /// Only this mesh and its secrets (no global secrets).
    #[arg(short = 'm', long)]
    mesh: Option<String>,
    /// Write to this file (created owner-only, 0600) instead of stdout (`-`: stdout).
    #[arg(short = 'o', long = "output")]
    output: Option<PathBuf>,
    /// Write secret data to a terminal anyway.
    #[arg(long)]
    force: bool,
    /// Write into a Kuma control plane's Postgres database (its `resources` table), in the
    /// form Kuma writes, in one transaction: to go back after `import --from-kuma`.
    #[arg(long = "to-kuma", value_name = "URL", conflicts_with_all = ["output", "mesh", "format"])]
    to_kuma: Option<crate::store::StoreUrl>,
    /// With --to-kuma: replace Kuma rows that differ instead of refusing.
    #[arg(long, requires = "to_kuma")]
    overwrite: bool,
}

/// `export --to-kuma`: see [`super::to_kuma`].
async fn run_to_kuma(kuma: &crate::store::StoreUrl, args: &ExportArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        kuma.backend() == crate::store::Backend::Postgres,
        "--to-kuma writes a Kuma control plane's Postgres database: give a postgres:// URL"
    );
    let options = StoreOptions {
        accept_plaintext_rows: args.encryption.accept_plaintext_rows(),
        ..store_options(&args.store.url, &args.encryption, Access::Read).await?
    };
    let opened = AnyStore::open(args.store.url.expose(), options).await?;
    // One point in time, as pg_dump reads (the pages of a live store otherwise mix times).
    let store = opened.snapshot();
    let done = super::to_kuma::export(kuma.expose(), &store, args.overwrite).await;
    store.close().await;
    opened.close().await;
    let done = done?;
    for row in &done.differing {
        eprintln!("differs in Kuma's database: {row}");
    }
    anyhow::ensure!(
        done.differing.is_empty(),
        "{} Kuma rows differ from this store's: nothing was written (--overwrite replaces them)",
        done.differing.len()
    );
    println!(
        "exported {} into {kuma}: {} created, {} replaced, {} unchanged",
        args.store.url, done.created, done.replaced, done.unchanged
    );
    Ok(())
}

/// Resources per store page.
const PAGE: u32 = 500;

pub(super) async fn run(args: ExportArgs) -> anyhow::Result<()> {
    if let Some(kuma) = &args.to_kuma {
        return run_to_kuma(kuma, &args).await;
    }
    // `-o -` is standard output, as for most tools (it used to create a file named `-`).
    let output = args
        .output
        .as_deref()
        .filter(|path| *path != std::path::Path::new("-"));
    let file = output.map(create_private).transpose()?;
    let mut out: Box<dyn Write> = match &file {
        Some(file) => Box::new(std::io::BufWriter::new(
            file.as_file()
                .try_clone()
                .context("could not open the export file")?,
        )),
        None => {
            if std::io::stdout().is_terminal() && !args.force {
                anyhow::bail!(
                    "refusing to write secret data to a terminal: redirect stdout, use -o FILE, or pass --force"
                );
            }
            Box::new(std::io::BufWriter::new(std::io::stdout().lock()))
        }
    };
    let mesh = args
        .mesh
        .as_deref()
        .map(MeshName::parse)
        .transpose()
        .map_err(|e| anyhow::anyhow!("invalid --mesh: {e}"))?;
    let options = StoreOptions {
        accept_plaintext_rows: args.encryption.accept_plaintext_rows(),
        ..store_options(&args.store.url, &args.encryption, Access::Read).await?
    };
    let opened = AnyStore::open(args.store.url.expose(), options).await?;
    // Every page from one point in time, as pg_dump reads: a writer that sets A then B
    // never gives an export holding the new B beside the old A.
    let store = opened.snapshot();
    let mut writer = DocumentWriter {
        out: &mut out,
        format: args.format,
        count: 0,
    };
    let mut counts = [0u64; 4];

    match &mesh {
        Some(name) => {
            let found = store
                .get_mesh(name)
                .await
                .with_context(|| format!("no Mesh {:?} in the store", name.as_str()))?;
            writer.write(&mesh_resource_of(&found), &found.meta.creation_time)?;
            counts[0] += 1;
        }
        None => {
            let mut walk = MeshWalk::new(PAGE)?;
            while let Some(page) = walk.next_page(&store).await? {
                for found in &page.items {
                    writer.write(&mesh_resource_of(found), &found.meta.creation_time)?;
                    counts[0] += 1;
                }
            }
        }
    }
    let scopes = match mesh.clone() {
        Some(name) => vec![SecretScope::Mesh(name)],
        None => vec![SecretScope::AllMeshes, SecretScope::Global],
    };
    for scope in scopes {
        let slot = if scope == SecretScope::Global { 2 } else { 1 };
        let mut walk = SecretWalk::new(scope, PAGE)?;
        while let Some(page) = walk.next_page(&store).await? {
            for secret in &page.items {
                writer.write(&secret_resource_of(secret), &secret.meta.creation_time)?;
                counts[slot] += 1;
            }
        }
    }
    // ExternalServices last: `apply` and `import` then find the Secrets they name.
    let mut walk = match mesh {
        Some(name) => PageWalk::of(ExternalServiceQuery {
            mesh: Some(name),
            page: PageRequest::first(PAGE)?,
            ..ExternalServiceQuery::default()
        }),
        None => ExternalServiceWalk::new(PAGE)?,
    };
    while let Some(page) = walk.next_page(&store).await? {
        for service in &page.items {
            writer.write(
                &external_service_resource_of(service),
                &service.meta.creation_time,
            )?;
            counts[3] += 1;
        }
    }
    out.flush().context("could not write the export")?;
    drop(out);
    if let (Some(file), Some(path)) = (file, output) {
        file.as_file()
            .sync_all()
            .context("could not write the export")?;
        file.persist(path)
            .with_context(|| format!("could not write {}", path.display()))?;
    }
    store.close().await;
    opened.close().await;
    eprintln!(
        "exported {} meshes, {} secrets, {} global secrets and {} external services{}",
        counts[0],
        counts[1],
        counts[2],
        counts[3],
        output
            .map(|p| format!(" to {}", p.display()))
            .unwrap_or_default()
    );
    Ok(())
}

/// Writes documents with `---` between them.
struct DocumentWriter<'a> {
    out: &'a mut Box<dyn Write>,
    format: Format,
    count: u64,
}

impl DocumentWriter<'_> {
    /// Writes `resource` (created at `created`) as the next document of the stream.
    fn write(
        &mut self,
        resource: &crate::domain::Resource,
        created: &chrono::DateTime<chrono::Utc>,
    ) -> anyhow::Result<()> {
        let document = match self.format {
            Format::Universal => manifest::to_universal(resource),
            Format::Kubernetes => {
                manifest::to_kubernetes(resource, Some(created), manifest::KUMA_NAMESPACE)
            }
        };
        let text = manifest::to_yaml_stream([&document]);
        if self.count > 0 {
            self.out.write_all(b"---\n")?;
        }
        self.out
            .write_all(text.as_bytes())
            .context("could not write the export")?;
        self.count += 1;
        Ok(())
    }
}

/// A new file next to `path`, readable by its owner only (it will hold every secret), to
/// be renamed over `path` once complete: an existing file at `path` never keeps its own
/// (perhaps wider) mode, and an interrupted export never leaves half a file there.
fn create_private(path: &std::path::Path) -> anyhow::Result<tempfile::NamedTempFile> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => std::path::Path::new("."),
    };
    // tempfile creates the file 0600 on Unix.
    tempfile::Builder::new()
        .prefix(".kuma-secrets-export")
        .tempfile_in(dir)
        .with_context(|| format!("could not create a file next to {}", path.display()))
}
