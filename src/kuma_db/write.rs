//! Writing resources into Kuma's `resources` table, as Kuma writes them, in one transaction.

use super::{connect, db};
use crate::domain::{ExternalService, Labels, Mesh, Secret};
use crate::store::StoreError;
use serde_json::{Value, json};
use sqlx::{Connection, Executor, PgConnection};
use std::collections::BTreeMap;

/// The row of one resource as Kuma writes it.
#[derive(Debug, Clone)]
pub struct KumaResource {
    name: String,
    /// `""` for Meshes and GlobalSecrets.
    mesh: String,
    kind: &'static str,
    spec: Value,
    labels: Value,
    /// The owning Mesh of a builtin CA secret (Kuma's `owner_name`).
    owner: Option<String>,
    /// Creation and modification times, UTC (Kuma stores them without a zone).
    times: (chrono::NaiveDateTime, chrono::NaiveDateTime),
}

impl KumaResource {
    /// How the row is named in reports.
    pub fn describe(&self) -> String {
        match self.kind {
            "Secret" | "ExternalService" => {
                format!("{} {:?} in Mesh {:?}", self.kind, self.name, self.mesh)
            }
            kind => format!("{kind} {:?}", self.name),
        }
    }

    /// A Mesh's row: its spec as the row's `spec`.
    pub fn of_mesh(mesh: &Mesh) -> Self {
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

    /// An ExternalService's row: its spec (`networking`, `tags`) as the row's `spec`.
    pub fn of_external_service(service: &ExternalService) -> Self {
        Self {
            name: service.name.as_str().to_owned(),
            mesh: service.mesh.as_str().to_owned(),
            kind: "ExternalService",
            spec: Value::Object(service.spec.clone()),
            labels: labels_json(&service.labels),
            owner: None,
            times: (
                service.meta.creation_time.naive_utc(),
                service.meta.modification_time.naive_utc(),
            ),
        }
    }

    /// A secret's row: `{"data": "<base64>"}`, owned by the Mesh `owners` names for its
    /// (mesh, name), as Kuma owns builtin CA secrets.
    pub fn of_secret(secret: &Secret, owners: &BTreeMap<(String, String), String>) -> Self {
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

/// What writing one row did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The row did not exist: inserted at version 0.
    Created,
    /// It differed and was replaced (version + 1).
    Replaced,
    /// It said the same: left alone.
    Unchanged,
    /// It differs and replacing was not asked for: left alone.
    Differs,
}

/// Labels as the JSON object Kuma stores.
fn labels_json(labels: &Labels) -> Value {
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

/// Writes into a Kuma database, in one transaction: [`KumaWriter::commit`] keeps it all,
/// dropping or [`KumaWriter::rollback`] keeps none of it.
#[derive(Debug)]
pub struct KumaWriter {
    conn: PgConnection,
}

impl KumaWriter {
    /// Connects to the Kuma database at `url` and begins the transaction.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] if it cannot be reached, [`StoreError::UnsupportedUrl`].
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let mut conn = connect(url).await?;
        conn.execute("BEGIN").await.map_err(db)?;
        Ok(Self { conn })
    }

    /// Writes `row`: inserts it if missing; if present and different, replaces it only when
    /// `overwrite` (the row is locked while compared, so the comparison holds).
    ///
    /// # Errors
    /// The database failed, or it has no `resources` table (not a Kuma database).
    pub async fn write(
        &mut self,
        row: &KumaResource,
        overwrite: bool,
    ) -> Result<Written, StoreError> {
        let existing: Option<(i32, Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT version, spec, labels::text FROM resources WHERE name = $1 AND mesh = $2 AND type = $3 FOR UPDATE",
        )
        .bind(&row.name)
        .bind(&row.mesh)
        .bind(row.kind)
        .fetch_optional(&mut self.conn)
        .await
        .map_err(db)?;
        let spec = row.spec.to_string();
        let labels = row.labels.to_string();
        let Some((version, stored_spec, stored_labels)) = existing else {
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
            .execute(&mut self.conn)
            .await
            .map_err(db)?;
            return Ok(Written::Created);
        };
        let stored_spec: Value = stored_spec
            .as_deref()
            .and_then(|text| serde_json::from_str(text).ok())
            .unwrap_or(Value::Null);
        if stored_spec == row.spec && same_labels(stored_labels.as_deref(), &row.labels) {
            return Ok(Written::Unchanged);
        }
        if !overwrite {
            return Ok(Written::Differs);
        }
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
        .execute(&mut self.conn)
        .await
        .map_err(db)?;
        Ok(Written::Replaced)
    }

    /// Commits every write and disconnects.
    ///
    /// # Errors
    /// The commit failed: nothing was written.
    pub async fn commit(mut self) -> Result<(), StoreError> {
        self.conn.execute("COMMIT").await.map_err(db)?;
        let _ = self.conn.close().await;
        Ok(())
    }

    /// Rolls every write back and disconnects.
    pub async fn rollback(mut self) {
        let _ = self.conn.execute("ROLLBACK").await;
        let _ = self.conn.close().await;
    }
}
