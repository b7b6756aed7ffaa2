//! `kuma-secrets export --to-kuma postgres://…`: this store's Meshes, Secrets,
//! GlobalSecrets and ExternalServices written back into a Kuma control plane's `resources` table (reference
//! §4.1), in the form Kuma itself writes, to go back after `import --from-kuma`. The SQL
//! is `crate::kuma_db`'s; this file walks the store and reports.
//!
//! - One transaction: all of it or nothing.
//! - Rows as Kuma writes them: `mesh = ''` for Meshes and GlobalSecrets, `spec` the JSON
//!   text (`{"data":"<base64>"}` for a secret), `labels` JSON, this store's creation and
//!   modification times, integer versions (0 for a new row, one more for a replaced one),
//!   and the owner columns set to the Mesh for its
//!   builtin CA secrets (`{mesh}.ca-builtin-cert-{backend}`, `-key-{backend}`), as Kuma
//!   sets them, NULL otherwise.
//! - A row that already exists and says the same (spec and labels; a `null` labels and
//!   `{}` are the same) is left alone. One that differs is refused, every such row listed,
//!   and nothing written, unless `--overwrite`.

use crate::domain::mtls::{Mtls, builtin_ca_names};
use crate::kuma_db::{KumaResource, KumaWriter, Written};
use crate::store::{AnyStore, ExternalServiceWalk, MeshWalk, SecretScope, SecretWalk};
use anyhow::Context;
use std::collections::BTreeMap;

/// What the export did.
#[derive(Debug, Default)]
pub(super) struct KumaExport {
    pub created: u64,
    pub replaced: u64,
    pub unchanged: u64,
    /// Rows that differ and were not replaced (without `--overwrite`; nothing was written).
    pub differing: Vec<String>,
}

/// Writes every Mesh and secret of `store` into the Kuma database at `url`.
pub(super) async fn export(
    url: &str,
    store: &AnyStore,
    overwrite: bool,
) -> anyhow::Result<KumaExport> {
    // Meshes first (owners of their CA secrets), then secrets; a page at a time from the
    // store, each row compared with Kuma's and written in the one transaction.
    let mut writer = KumaWriter::open(url)
        .await
        .context("cannot connect to the Kuma database (--to-kuma)")?;
    let mut done = KumaExport::default();
    let mut owners = BTreeMap::new();
    let mut meshes = MeshWalk::new(500)?;
    while let Some(page) = meshes.next_page(store).await? {
        for mesh in &page.items {
            if let Ok(Some(mtls)) = Mtls::of(&mesh.spec, &mesh.name) {
                for backend in mtls.builtin_backends() {
                    let (cert, key) = builtin_ca_names(&mesh.name, &backend.name);
                    for secret in [cert, key] {
                        owners.insert(
                            (mesh.name.as_str().to_owned(), secret),
                            mesh.name.as_str().to_owned(),
                        );
                    }
                }
            }
            write(
                &mut writer,
                KumaResource::of_mesh(mesh),
                overwrite,
                &mut done,
            )
            .await?;
        }
    }
    for scope in [SecretScope::AllMeshes, SecretScope::Global] {
        let mut secrets = SecretWalk::new(scope, 500)?;
        while let Some(page) = secrets.next_page(store).await? {
            for secret in &page.items {
                let row = KumaResource::of_secret(secret, &owners);
                write(&mut writer, row, overwrite, &mut done).await?;
            }
        }
    }
    let mut services = ExternalServiceWalk::new(500)?;
    while let Some(page) = services.next_page(store).await? {
        for service in &page.items {
            let row = KumaResource::of_external_service(service);
            write(&mut writer, row, overwrite, &mut done).await?;
        }
    }
    if done.differing.is_empty() {
        writer.commit().await?;
    } else {
        writer.rollback().await;
    }
    Ok(done)
}

/// Writes `row` and counts what it did.
async fn write(
    writer: &mut KumaWriter,
    row: KumaResource,
    overwrite: bool,
    done: &mut KumaExport,
) -> anyhow::Result<()> {
    let written = writer.write(&row, overwrite).await.with_context(|| {
        format!(
            "cannot write {} into Kuma's resources table (is this a Kuma database?)",
            row.describe()
        )
    })?;
    match written {
        Written::Created => done.created += 1,
        Written::Replaced => done.replaced += 1,
        Written::Unchanged => done.unchanged += 1,
        Written::Differs => done.differing.push(row.describe()),
    }
    Ok(())
}
