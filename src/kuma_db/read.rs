//! Reading Kuma's Meshes, Secrets, GlobalSecrets and ExternalServices from one snapshot of
//! its database.

use super::{connect, db};
use crate::domain::Resource;
use crate::manifest::{self, Entry};
use crate::store::{KeptTimes, StoreError, TimesOf};
use futures_util::{Stream, StreamExt};
use serde_json::{Map, Value, json};
use sqlx::{Connection, Executor, PgConnection};

/// Kuma's Meshes.
const MESH_ROWS: &str = "SELECT name, mesh, type, spec, labels::text AS labels, creation_time, \
     modification_time FROM resources WHERE type = 'Mesh' ORDER BY name";
/// Kuma's Secrets and GlobalSecrets (`mesh = ''`).
const SECRET_ROWS: &str = "SELECT name, mesh, type, spec, labels::text AS labels, creation_time, \
     modification_time FROM resources WHERE type IN ('Secret', 'GlobalSecret') ORDER BY type, mesh, name";
/// Kuma's ExternalServices.
const EXTERNAL_SERVICE_ROWS: &str = "SELECT name, mesh, type, spec, labels::text AS labels, \
     creation_time, modification_time FROM resources WHERE type = 'ExternalService' \
     ORDER BY mesh, name";
/// How many secret rows there are.
const SECRET_COUNT: &str =
    "SELECT count(*) FROM resources WHERE type IN ('Secret', 'GlobalSecret')";
/// Rows of every other type, by type.
const OTHER_TYPES: &str = "SELECT type, count(*) FROM resources \
     WHERE type NOT IN ('Mesh', 'Secret', 'GlobalSecret', 'ExternalService') \
     GROUP BY type ORDER BY type";

/// A `resources` row of one of the four types.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KumaRow {
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
    /// `Mesh`, `Secret` or `GlobalSecret`.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// Its Mesh (`""` for a Mesh or a GlobalSecret).
    pub fn mesh(&self) -> &str {
        &self.mesh
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Kuma's times for `resource` (Kuma stores UTC without a zone).
    pub fn times(&self, resource: &Resource) -> KeptTimes {
        KeptTimes {
            of: match resource {
                Resource::Secret(secret) => TimesOf::Secret(secret.key.clone()),
                Resource::Mesh(mesh) => TimesOf::Mesh(mesh.name.clone()),
                Resource::ExternalService(service) => {
                    TimesOf::ExternalService(service.mesh.clone(), service.name.clone())
                }
            },
            created: self.creation_time.and_utc(),
            modified: self.modification_time.and_utc(),
        }
    }

    /// How the row is named in reports.
    pub fn describe(&self) -> String {
        match self.kind.as_str() {
            "Mesh" => format!("Mesh {:?}", self.name),
            "GlobalSecret" => format!("GlobalSecret {:?}", self.name),
            "ExternalService" => format!("ExternalService {:?} in Mesh {:?}", self.name, self.mesh),
            _ => format!("Secret {:?} in Mesh {:?}", self.name, self.mesh),
        }
    }

    /// The row as the Universal document Kuma's API shows, validated as `import` does.
    ///
    /// # Errors
    /// Why this store refuses it (a spec that is not JSON, a name or label our validation
    /// rejects, a Secret without data).
    pub fn resource(&self) -> Result<Resource, String> {
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
            "ExternalService" => {
                let mut document = spec;
                document.insert("type".into(), json!("ExternalService"));
                document.insert("mesh".into(), json!(self.mesh));
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

/// One consistent, read-only point in time of a Kuma database.
#[derive(Debug)]
pub struct KumaSnapshot {
    conn: PgConnection,
}

impl KumaSnapshot {
    /// Connects to the Kuma database at `url` and begins a `REPEATABLE READ READ ONLY`
    /// transaction: every read sees one point in time, and nothing can be written.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] if it cannot be reached, [`StoreError::UnsupportedUrl`].
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let mut conn = connect(url).await?;
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(db)?;
        Ok(Self { conn })
    }

    /// The rows of other types than the three, counted by type (for the report).
    ///
    /// # Errors
    /// The database failed, or it has no `resources` table (not a Kuma database).
    pub async fn other_types(&mut self) -> Result<Vec<(String, i64)>, StoreError> {
        sqlx::query_as(OTHER_TYPES)
            .fetch_all(&mut self.conn)
            .await
            .map_err(db)
    }

    /// Every Mesh row, by name.
    ///
    /// # Errors
    /// The database failed.
    pub async fn meshes(&mut self) -> Result<Vec<KumaRow>, StoreError> {
        sqlx::query_as(MESH_ROWS)
            .fetch_all(&mut self.conn)
            .await
            .map_err(db)
    }

    /// Every ExternalService row, by Mesh and name.
    ///
    /// # Errors
    /// The database failed.
    pub async fn external_services(&mut self) -> Result<Vec<KumaRow>, StoreError> {
        sqlx::query_as(EXTERNAL_SERVICE_ROWS)
            .fetch_all(&mut self.conn)
            .await
            .map_err(db)
    }

    /// How many Secret and GlobalSecret rows there are.
    ///
    /// # Errors
    /// The database failed.
    pub async fn secret_count(&mut self) -> Result<i64, StoreError> {
        let (count,): (i64,) = sqlx::query_as(SECRET_COUNT)
            .fetch_one(&mut self.conn)
            .await
            .map_err(db)?;
        Ok(count)
    }

    /// Every Secret and GlobalSecret row, streamed (GlobalSecrets, then Secrets by Mesh and
    /// name): memory stays at one row.
    pub fn secrets(&mut self) -> impl Stream<Item = Result<KumaRow, StoreError>> + Send + '_ {
        sqlx::query_as::<_, KumaRow>(SECRET_ROWS)
            .fetch(&mut self.conn)
            .map(|row| row.map_err(db))
    }

    /// Ends the snapshot (its transaction rolls back: it wrote nothing) and disconnects.
    pub async fn close(mut self) {
        let _ = self.conn.execute("ROLLBACK").await;
        let _ = self.conn.close().await;
    }
}
