//! `kuma-secrets export --to-kuma postgres://…`: this store's Meshes, Secrets and
//! GlobalSecrets written back into a Kuma control plane's `resources` table (reference
//! §4.1), in the form Kuma itself writes, to go back after `import --from-kuma`.
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
use crate::domain::{Mesh, Secret};
use crate::store::{AnyStore, MeshWalk, SecretScope, SecretWalk};
use anyhow::Context;
use serde_json::{Value, json};
use sqlx::Connection;
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

/// A row to write.
struct Row {
    name: String,
    mesh: String,
    kind: &'static str,
    spec: Value,
    labels: Value,
    owner: Option<String>,
    /// Creation and modification times, UTC (Kuma stores them without a zone).
    times: (chrono::NaiveDateTime, chrono::NaiveDateTime),
}

impl Row {
    fn describe(&self) -> String {
        match self.kind {
            "Secret" => format!("Secret {:?} in Mesh {:?}", self.name, self.mesh),
            kind => format!("{kind} {:?}", self.name),
        }
    }

    fn of_mesh(mesh: &Mesh) -> Self {
        Self {
            name: mesh.name.as_str().to_owned(),
            mesh: String::new(),
            kind: "Mesh",
            spec: Value::Object(mesh.spec.clone()),
            labels: labels_json(&mesh.labels),
            owner: None,
            times: (
                mesh.meta.creation_time.naive_utc(),
                mesh.meta.modification_time.naive_utc(),
            ),
        }
    }

    fn of_secret(secret: &Secret, owners: &BTreeMap<(String, String), String>) -> Self {
        use base64::Engine;
        let mesh = secret.key.mesh().map(|m| m.as_str().to_owned());
        let name = secret.key.name().as_str().to_owned();
        Self {
            owner: mesh
                .as_ref()
                .and_then(|m| owners.get(&(m.clone(), name.clone())).cloned()),
            kind: if mesh.is_some() {
                "Secret"
            } else {
                "GlobalSecret"
            },
            mesh: mesh.unwrap_or_default(),
            spec: json!({
                "data": base64::engine::general_purpose::STANDARD.encode(secret.data.expose())
            }),
            labels: labels_json(&secret.labels),
            times: (
                secret.meta.creation_time.naive_utc(),
                secret.meta.modification_time.naive_utc(),
            ),
            name,
        }
    }
}

/// Labels as the JSON object Kuma stores.
fn labels_json(labels: &crate::domain::Labels) -> Value {
    json!(labels.as_map())
}

/// Labels as Kuma stored them: a `null` (a nil map) is the same as `{}`.
fn same_labels(stored: Option<&str>, ours: &Value) -> bool {
    let stored: Value = stored
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or(Value::Null);
    match stored {
        Value::Null => ours.as_object().is_none_or(serde_json::Map::is_empty),
        stored => &stored == ours,
    }
}

/// Writes every Mesh and secret of `store` into the Kuma database at `url`.
pub(super) async fn export(
    url: &str,
    store: &AnyStore,
    overwrite: bool,
) -> anyhow::Result<KumaExport> {
    // Meshes first (owners of their CA secrets), then secrets; a page at a time from the
    // store, each row compared with Kuma's and written in the one transaction.
    let mut conn = super::from_kuma::connect_to_kuma(url, "--to-kuma").await?;
    let mut tx = conn.begin().await?;
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
            write(&mut tx, Row::of_mesh(mesh), overwrite, &mut done).await?;
        }
    }
    for scope in [SecretScope::AllMeshes, SecretScope::Global] {
        let mut secrets = SecretWalk::new(scope, 500)?;
        while let Some(page) = secrets.next_page(store).await? {
            for secret in &page.items {
                write(
                    &mut tx,
                    Row::of_secret(secret, &owners),
                    overwrite,
                    &mut done,
                )
                .await?;
            }
        }
    }
    if done.differing.is_empty() {
        tx.commit().await?;
    } else {
        tx.rollback().await?;
    }
    conn.close().await?;
    Ok(done)
}

async fn write(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    row: Row,
    overwrite: bool,
    done: &mut KumaExport,
) -> anyhow::Result<()> {
    let existing: Option<(i32, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT version, spec, labels::text FROM resources WHERE name = $1 AND mesh = $2 AND type = $3 FOR UPDATE",
    )
    .bind(&row.name)
    .bind(&row.mesh)
    .bind(row.kind)
    .fetch_optional(&mut **tx)
    .await
    .context("cannot read Kuma's resources table (is this a Kuma database?)")?;
    let spec = row.spec.to_string();
    let labels = row.labels.to_string();
    match existing {
        None => {
            sqlx::query(
                "INSERT INTO resources (name, mesh, type, version, spec, creation_time, modification_time, \
                 labels, owner_name, owner_mesh, owner_type) \
                 VALUES ($1, $2, $3, 0, $4, $7, $8, \
                 CAST($5 AS jsonb), $6, CASE WHEN $6 IS NULL THEN NULL ELSE '' END, \
                 CASE WHEN $6 IS NULL THEN NULL ELSE 'Mesh' END)",
            )
            .bind(&row.name)
            .bind(&row.mesh)
            .bind(row.kind)
            .bind(&spec)
            .bind(&labels)
            .bind(&row.owner)
            .bind(row.times.0)
            .bind(row.times.1)
            .execute(&mut **tx)
            .await
            .with_context(|| format!("cannot write {}", row.describe()))?;
            done.created += 1;
        }
        Some((version, stored_spec, stored_labels)) => {
            let stored_spec: Value = stored_spec
                .as_deref()
                .and_then(|text| serde_json::from_str(text).ok())
                .unwrap_or(Value::Null);
            if stored_spec == row.spec && same_labels(stored_labels.as_deref(), &row.labels) {
                done.unchanged += 1;
            } else if !overwrite {
                done.differing.push(row.describe());
            } else {
                sqlx::query(
                    "UPDATE resources SET spec = $1, labels = CAST($2 AS jsonb), version = $3 + 1, \
                     modification_time = $7 \
                     WHERE name = $4 AND mesh = $5 AND type = $6 AND version = $3",
                )
                .bind(&spec)
                .bind(&labels)
                .bind(version)
                .bind(&row.name)
                .bind(&row.mesh)
                .bind(row.kind)
                .bind(row.times.1)
                .execute(&mut **tx)
                .await
                .with_context(|| format!("cannot write {}", row.describe()))?;
                done.replaced += 1;
            }
        }
    }
    Ok(())
}
