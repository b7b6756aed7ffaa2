//! `kuma-secrets import --from-kuma postgres://…`: the Secrets, GlobalSecrets and Meshes of
//! a running Kuma control plane's database (its `resources` table, reference §4.1), into
//! this store.
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
//! - Kuma's creation and modification times are kept (set after each batch, without a new
//!   version). Versions start at 1, as for any new resource here.

use crate::domain::Resource;
use crate::manifest::{self, Entry};
use crate::store::{AnyStore, ImportCounts, KeptTimes, SecretStore, TimesOf};
use anyhow::Context;
use futures_util::TryStreamExt;
use serde_json::{Map, Value, json};
use sqlx::{Connection, PgConnection};
use std::collections::BTreeSet;
use std::io::IsTerminal;

/// A `resources` row of one of the three types.
#[derive(sqlx::FromRow)]
struct KumaRow {
    name: String,
    mesh: String,
    #[sqlx(rename = "type")]
    kind: String,
    spec: Option<String>,
    labels: Option<String>,
    creation_time: chrono::NaiveDateTime,
    modification_time: chrono::NaiveDateTime,
}

impl KumaRow {
    /// Kuma's times for `resource` (Kuma stores UTC without a zone).
    fn times(&self, resource: &Resource) -> KeptTimes {
        KeptTimes {
            of: match resource {
                Resource::Secret(secret) => TimesOf::Secret(secret.key.clone()),
                Resource::Mesh(mesh) => TimesOf::Mesh(mesh.name.clone()),
            },
            created: self.creation_time.and_utc(),
            modified: self.modification_time.and_utc(),
        }
    }

    /// How the row is named in reports.
    fn describe(&self) -> String {
        match self.kind.as_str() {
            "Mesh" => format!("Mesh {:?}", self.name),
            "GlobalSecret" => format!("GlobalSecret {:?}", self.name),
            _ => format!("Secret {:?} in Mesh {:?}", self.name, self.mesh),
        }
    }

    /// The row as the Universal document Kuma's API shows, validated as `import` does.
    fn resource(&self) -> Result<Resource, String> {
        let spec: Map<String, Value> = match self.spec.as_deref() {
            None | Some("") => Map::new(),
            Some(text) => {
                serde_json::from_str(text).map_err(|e| format!("spec is not JSON: {e}"))?
            }
        };
        // `labels` is JSON, or the JSON literal `null` for a nil map, or NULL.
        let labels: Value = match self.labels.as_deref() {
            None => Value::Null,
            Some(text) => {
                serde_json::from_str(text).map_err(|e| format!("labels are not JSON: {e}"))?
            }
        };
        let mut document = match self.kind.as_str() {
            "Mesh" => {
                let mut document = spec;
                document.insert("type".into(), json!("Mesh"));
                document.insert("name".into(), json!(self.name));
                document
            }
            kind => {
                let mut document = Map::new();
                document.insert("type".into(), json!(kind));
                document.insert("name".into(), json!(self.name));
                if kind == "Secret" {
                    document.insert("mesh".into(), json!(self.mesh));
                }
                if let Some(data) = spec.get("data") {
                    document.insert("data".into(), data.clone());
                }
                document
            }
        };
        if !labels.is_null() {
            document.insert("labels".into(), labels);
        }
        let entries = manifest::parse_document(Value::Object(document))?;
        match entries.into_iter().next() {
            Some(Entry::Resource(resource)) => Ok(resource),
            _ => Err("not a Kuma resource".to_owned()),
        }
    }
}

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
}

/// Kuma's Meshes.
const MESH_ROWS: &str = "SELECT name, mesh, type, spec, labels::text AS labels, creation_time, \
     modification_time FROM resources WHERE type = 'Mesh' ORDER BY name";
/// Kuma's Secrets and GlobalSecrets (`mesh = ''`).
const SECRET_ROWS: &str = "SELECT name, mesh, type, spec, labels::text AS labels, creation_time, \
     modification_time FROM resources WHERE type IN ('Secret', 'GlobalSecret') ORDER BY type, mesh, name";

/// A connection to the Kuma database at `url`, given as the option `flag`.
pub(super) async fn connect_to_kuma(url: &str, flag: &str) -> anyhow::Result<PgConnection> {
    PgConnection::connect(url)
        .await
        .with_context(|| format!("cannot connect to the Kuma database ({flag})"))
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
    let mut conn = connect_to_kuma(url, "--from-kuma").await?;
    let mut tx = conn.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await?;
    let mut found = KumaImport {
        other_types: sqlx::query_as(
            "SELECT type, count(*) FROM resources \
             WHERE type NOT IN ('Mesh', 'Secret', 'GlobalSecret') GROUP BY type ORDER BY type",
        )
        .fetch_all(&mut *tx)
        .await
        .context("cannot read Kuma's resources table (is this a Kuma database?)")?,
        ..KumaImport::default()
    };

    // The Meshes first: few, and every secret needs its own.
    let mut meshes = Vec::new();
    let mut mesh_times = Vec::new();
    let mut mesh_names = BTreeSet::new();
    let rows: Vec<KumaRow> = sqlx::query_as(MESH_ROWS).fetch_all(&mut *tx).await?;
    for row in rows {
        match row.resource() {
            Ok(resource) => {
                mesh_names.insert(row.name.clone());
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

    let (total,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM resources WHERE type IN ('Secret', 'GlobalSecret')")
            .fetch_one(&mut *tx)
            .await?;
    let progress = progress_bar(total);
    let mut rows = sqlx::query_as::<_, KumaRow>(SECRET_ROWS).fetch(&mut *tx);
    let mut pending = Vec::with_capacity(batch);
    let mut pending_times = Vec::with_capacity(batch);
    while let Some(row) = rows.try_next().await? {
        progress.inc(1);
        if row.kind == "Secret" && !mesh_names.contains(&row.mesh) {
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

    if !dry_run {
        verify(&mut tx, &mesh_names, store).await?;
        found.problems = missing_mtls_secrets(&meshes, store).await?;
    }
    tx.rollback().await?;
    conn.close().await?;
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

/// Reads every imported secret back from `store` and compares it with the snapshot.
async fn verify(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    mesh_names: &BTreeSet<String>,
    store: &AnyStore,
) -> anyhow::Result<()> {
    let mut rows = sqlx::query_as::<_, KumaRow>(SECRET_ROWS).fetch(&mut **tx);
    while let Some(row) = rows.try_next().await? {
        if row.kind == "Secret" && !mesh_names.contains(&row.mesh) {
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
