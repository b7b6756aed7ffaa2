//! `kuma-secrets import --from-kuma postgres://…`: the Secrets, GlobalSecrets, Meshes and
//! ExternalServices of
//! a running Kuma control plane's database (its `resources` table, reference §4.1), into
//! this store. The SQL is `crate::kuma_db`'s; this file drives it and reports.
//!
//! - It never writes to Kuma's database: everything is read in one `REPEATABLE READ READ
//!   ONLY` transaction, one consistent snapshot, while Kuma keeps serving.
//! - Each row becomes the Universal document Kuma's API would show (`spec` `{"data": …}`,
//!   `labels` as stored, Kuma's computed `kuma.io/*` labels included) and is validated
//!   exactly as `import -f` validates a file.
//! - Meshes go first; a Mesh is written as Kuma stored it, and no CA is generated for it:
//!   its builtin CA (`{mesh}.ca-builtin-cert-{backend}` / `-key-{backend}`) comes along as
//!   the secrets it is, so every proxy certificate it signed stays valid.
//! - Rows this store refuses (a Secret whose spec is `{}`, a name or label our validation
//!   rejects) and secrets whose Mesh row is missing (Kuma leaves REST-created secrets behind
//!   when a Mesh is deleted) are reported by name and skipped; other resource types are
//!   counted. Once everything is in, the API's check runs: every imported Mesh's mTLS
//!   backends find their secrets. The exit status is an error when anything of the three
//!   types was skipped or that check found a problem.
//! - Secrets stream in batches (one transaction each), with a progress bar on a terminal;
//!   a re-run changes nothing (unchanged rows are counted as such); afterwards every
//!   imported secret is read back from this store and compared with the snapshot.
//!
//! - ExternalServices come last, once the Secrets their TLS names are in; then every
//!   Secret they name must be there (reported like a Mesh's missing CA secret).
//! - Kuma's creation and modification times are kept (set after each batch, without a new
//!   version). Versions start at 1, as for any new resource here.

use crate::domain::Resource;
use crate::kuma_db::KumaSnapshot;
use crate::store::{AnyStore, ImportCounts, SecretStore};
use anyhow::Context;
use futures_util::TryStreamExt;
use std::collections::BTreeSet;
use std::io::IsTerminal;

/// What the import found and did.
#[derive(Default)]
pub(super) struct KumaImport {
    pub counts: ImportCounts,
    /// Rows of the three types that were not imported, with why.
    pub skipped: Vec<String>,
    /// What the API's checks found wrong once everything was in.
    pub problems: Vec<String>,
    /// Rows of other types, by type.
    pub other_types: Vec<(String, i64)>,
    /// Secrets that would be (dry run) or were written.
    pub secrets: u64,
    pub meshes: u64,
    pub external_services: u64,
}

/// Reads Kuma's database at `url` and writes into `store` in batches of `batch` (nothing
/// when `dry_run`), then verifies what it wrote.
pub(super) async fn import(
    url: &str,
    store: &AnyStore,
    batch: usize,
    dry_run: bool,
    report_orphans: bool,
) -> anyhow::Result<KumaImport> {
    let mut snapshot = KumaSnapshot::open(url)
        .await
        .context("cannot connect to the Kuma database (--from-kuma)")?;
    let mut found = KumaImport {
        other_types: snapshot
            .other_types()
            .await
            .context("cannot read Kuma's resources table (is this a Kuma database?)")?,
        ..KumaImport::default()
    };

    // The Meshes first: few, and every secret needs its own.
    let mut meshes = Vec::new();
    let mut mesh_times = Vec::new();
    let mut mesh_names = BTreeSet::new();
    for row in snapshot.meshes().await? {
        match row.resource() {
            Ok(resource) => {
                mesh_names.insert(row.name().to_owned());
                mesh_times.push(row.times(&resource));
                meshes.push(resource);
            }
            Err(why) => found.skipped.push(format!("{}: {why}", row.describe())),
        }
    }
    found.meshes = meshes.len() as u64;
    if !dry_run {
        for (chunk, times) in meshes.chunks(batch).zip(mesh_times.chunks(batch)) {
            found.counts += store.import_batch(chunk.to_vec()).await?;
            store.keep_times(times.to_vec()).await?;
        }
    }

    let progress = progress_bar(snapshot.secret_count().await?);
    let mut rows = Box::pin(snapshot.secrets());
    let mut pending = Vec::with_capacity(batch);
    let mut pending_times = Vec::with_capacity(batch);
    while let Some(row) = rows.try_next().await? {
        progress.inc(1);
        if row.kind() == "Secret" && !mesh_names.contains(row.mesh()) {
            if report_orphans {
                found.skipped.push(format!(
                    "{}: its Mesh does not exist (left behind when it was deleted)",
                    row.describe()
                ));
            }
            continue;
        }
        match row.resource() {
            Ok(resource) => {
                found.secrets += 1;
                pending_times.push(row.times(&resource));
                pending.push(resource);
            }
            Err(why) => found.skipped.push(format!("{}: {why}", row.describe())),
        }
        if pending.len() == batch {
            let (full, times) = (
                std::mem::take(&mut pending),
                std::mem::take(&mut pending_times),
            );
            if !dry_run {
                found.counts += store.import_batch(full).await?;
                store.keep_times(times).await?;
            }
        }
    }
    drop(rows);
    if !pending.is_empty() && !dry_run {
        found.counts += store.import_batch(pending).await?;
        store.keep_times(pending_times).await?;
    }
    progress.finish_and_clear();

    // ExternalServices last: the Secrets their TLS names are in by now.
    let mut services = Vec::new();
    let mut service_times = Vec::new();
    for row in snapshot.external_services().await? {
        if !mesh_names.contains(row.mesh()) {
            if report_orphans {
                found.skipped.push(format!(
                    "{}: its Mesh does not exist (left behind when it was deleted)",
                    row.describe()
                ));
            }
            continue;
        }
        match row.resource() {
            Ok(resource) => {
                service_times.push(row.times(&resource));
                services.push(resource);
            }
            Err(why) => found.skipped.push(format!("{}: {why}", row.describe())),
        }
    }
    found.external_services = services.len() as u64;
    if !dry_run {
        for (chunk, times) in services.chunks(batch).zip(service_times.chunks(batch)) {
            found.counts += store.import_batch(chunk.to_vec()).await?;
            store.keep_times(times.to_vec()).await?;
        }
    }

    if !dry_run {
        verify(&mut snapshot, &mesh_names, store).await?;
        found.problems = missing_mtls_secrets(&meshes, store).await?;
        found
            .problems
            .extend(missing_tls_secrets(&services, store).await?);
    }
    snapshot.close().await;
    Ok(found)
}

/// The API's check, once everything is in: each imported Mesh's mTLS backends find the
/// secrets they use (a builtin backend's CA, a provided backend's certificate and key).
/// What is missing is reported (Kuma had a Mesh referring to nothing).
async fn missing_mtls_secrets(
    meshes: &[Resource],
    store: &AnyStore,
) -> anyhow::Result<Vec<String>> {
    let mut missing = Vec::new();
    for mesh in meshes {
        let Resource::Mesh(mesh) = mesh else { continue };
        let Ok(Some(mtls)) = crate::domain::mtls::Mtls::of(&mesh.spec, &mesh.name) else {
            continue;
        };
        for used in mtls.used_secrets(&mesh.name) {
            let key = crate::domain::SecretKey::parse(Some(mesh.name.as_str()), &used.secret)
                .map_err(|e| anyhow::anyhow!("Mesh {:?}: {e}", mesh.name.as_str()))?;
            match store.get_secret(&key).await {
                Ok(_) => {}
                Err(crate::store::StoreError::NotFound(_)) => missing.push(format!(
                    "Mesh {:?}: mTLS backend {:?} uses Secret {:?}, which is not there",
                    mesh.name.as_str(),
                    used.backend,
                    used.secret
                )),
                Err(other) => return Err(other.into()),
            }
        }
    }
    Ok(missing)
}

/// The API's check for ExternalServices, once everything is in: every Secret their TLS
/// names is there (Kuma itself never checked).
async fn missing_tls_secrets(
    services: &[Resource],
    store: &AnyStore,
) -> anyhow::Result<Vec<String>> {
    let mut missing = Vec::new();
    for service in services {
        let Resource::ExternalService(service) = service else {
            continue;
        };
        let Ok(tls) = crate::domain::external_service::check_spec(&service.spec) else {
            continue;
        };
        for (field, secret) in tls.secret_references() {
            let found = match crate::domain::SecretKey::parse(Some(service.mesh.as_str()), &secret)
            {
                Err(_) => false,
                Ok(key) => match store.get_secret(&key).await {
                    Ok(_) => true,
                    Err(crate::store::StoreError::NotFound(_)) => false,
                    Err(other) => return Err(other.into()),
                },
            };
            if !found {
                missing.push(format!(
                    "ExternalService {:?} in Mesh {:?}: {field} names Secret {secret:?}, which is not there",
                    service.name.as_str(),
                    service.mesh.as_str(),
                ));
            }
        }
    }
    Ok(missing)
}

/// Reads every imported secret back from `store` and compares it with the snapshot.
async fn verify(
    snapshot: &mut KumaSnapshot,
    mesh_names: &BTreeSet<String>,
    store: &AnyStore,
) -> anyhow::Result<()> {
    let mut rows = Box::pin(snapshot.secrets());
    while let Some(row) = rows.try_next().await? {
        if row.kind() == "Secret" && !mesh_names.contains(row.mesh()) {
            continue;
        }
        let Ok(Resource::Secret(expected)) = row.resource() else {
            continue;
        };
        let stored = store
            .get_secret(&expected.key)
            .await
            .with_context(|| format!("verification: {} is not in the store", row.describe()))?;
        anyhow::ensure!(
            stored.data.expose() == expected.data.expose() && stored.labels == expected.labels,
            "verification: {} differs in the store from Kuma's",
            row.describe()
        );
    }
    Ok(())
}

fn progress_bar(total: i64) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(u64::try_from(total).unwrap_or(0));
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{bar:40} {pos}/{len} secrets ({per_sec}, {eta} left)",
    ) {
        bar.set_style(style);
    }
    bar
}
