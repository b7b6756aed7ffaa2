//! [`SecretStore::import_batch`](crate::store::contract::SecretStore::import_batch) on SQL: a batch
//! of resources written as given, in one write transaction, idempotently; checked as the
//! API checks them first, and run again when a concurrent writer created one meanwhile.
//!
//! The batch takes its row locks in the order every secret writer takes them (see
//! [`lock_order`]), so an import racing the API's writes waits for them, or they for it,
//! and never deadlocks with them. A deadlock or serialization failure that still happens
//! (a writer outside this process) runs the whole batch again, and is counted
//! (`kuma_secrets_store_write_conflicts_total`).

use super::rows::{MeshRow, SecretRow};
use super::statements::{GET_MESH, GET_SECRET, bind_key};
use super::statements::{query, query_as};
use super::{SqlStore, check_mesh_spec, now, seal, seal_spec};
use crate::domain::{Resource, ResourceKey, ValidationError};
use crate::sealing::Keyring;
use crate::store::backend::db_error::{Op, is_transient_conflict, map_db_error};
use crate::store::contract::{ImportCounts, Result, StoreError};
use sqlx::AssertSqlSafe;

/// How often an import batch runs again after a concurrent writer created one of its
/// resources between the batch's read and its insert, or after it met a deadlock.
const IMPORT_ATTEMPTS: usize = 5;

/// Where a resource of an import batch goes in the batch's order of writes: Meshes first
/// (a Secret's foreign key needs its Mesh), then Secrets and GlobalSecrets in the order
/// every secret writer locks them ([`group_commit::lock_order`]), then ExternalServices
/// (whose Secrets, like a Mesh's, may come in the same batch). Byte order throughout.
///
/// [`group_commit::lock_order`]: super::group_commit::lock_order
fn lock_order(resource: &Resource) -> (u8, (bool, &str, &str)) {
    match resource {
        Resource::Mesh(mesh) => (0, (false, mesh.name.as_str(), "")),
        Resource::Secret(secret) => (1, super::group_commit::lock_order(&secret.key)),
        Resource::ExternalService(service) => {
            (2, (false, service.mesh.as_str(), service.name.as_str()))
        }
    }
}

impl_for_sql_databases! {
impl [SqlStore<DB>] {
    /// The body of `import_batch`: checks, then the batch, run again if a concurrent
    /// writer created one of its resources between the batch's read and its insert.
    pub(super) async fn import(&self, mut items: Vec<Resource>) -> Result<ImportCounts> {
        // The same checks as the API's, before anything is written: a Mesh spec the delete
        // guard could not read must never get in.
        let mut errors = ValidationError::default();
        for item in &items {
            let (what, labels) = match item {
                Resource::Secret(secret) => {
                    secret.data.check_size(self.options.max_secret_size)?;
                    (format!("{}: ", secret.key), &secret.labels)
                }
                Resource::Mesh(mesh) => {
                    let what = format!("Mesh {:?}: ", mesh.name.as_str());
                    if let Err(e) = check_mesh_spec(&mesh.name, &mesh.spec) {
                        errors.extend_prefixed(&what, e);
                    }
                    (what, &mesh.labels)
                }
                Resource::ExternalService(service) => {
                    let what = format!("{}: ", service.key());
                    let checked = crate::domain::reject_nul_in_json("", &serde_json::Value::Object(service.spec.clone()))
                        .and_then(|()| crate::domain::external_service::check_spec(&service.spec));
                    if let Err(e) = checked {
                        errors.extend_prefixed(&what, e);
                    }
                    (what, &service.labels)
                }
            };
            // Labels read from another store were validated there, maybe by an older rule.
            for (key, value) in labels.iter() {
                let field = format!("labels[{key:?}]");
                if let Err(e) = crate::domain::reject_nul(&field, &format!("{key}{value}")) {
                    errors.extend_prefixed(&what, e);
                }
            }
        }
        if !errors.is_empty() {
            return Err(StoreError::Invalid(errors));
        }
        // Stable: a resource named twice is written in the order given, the last one kept.
        items.sort_by(|a, b| lock_order(a).cmp(&lock_order(b)));
        for attempt in 1.. {
            let turn = self.writes.write_turn::<DB>().await;
            let mut conn = self.pool.acquire().await.map_err(|e| map_db_error(e, Op::Other))?;
            let mut failed = None;
            let keyring = self.options.keyring();
            let keyring = keyring.as_deref();
            let result = self
                .preparing
                .around(Self::import_in_transaction(conn.conn(), keyring, items.clone(), &mut failed))
                .await;
            let result = conn.finish(result);
            drop(turn);
            if let Err(e) = &result
                && is_transient_conflict(e)
                && attempt < IMPORT_ATTEMPTS
            {
                self.writes.count_conflict();
                continue;
            }
            let outcome = result.map_err(|e| match &failed {
                Some(key) => map_db_error(e, Op::Create(key)),
                None => map_db_error(e, Op::Other),
            });
            match outcome {
                Err(StoreError::AlreadyExists(_)) if attempt < IMPORT_ATTEMPTS => continue,
                other => return other,
            }
        }
        unreachable!("the loop returns")
    }

    /// The body of [`SecretStore::import_batch`], on one connection, in one write
    /// transaction. Each existing row is read locked (`FOR NO KEY UPDATE` on Postgres; SQLite's
    /// write transaction excludes other writers), so a concurrent API write waits for the
    /// batch instead of changing the row between its read and its update. On a constraint
    /// violation, `failed` names the resource being inserted, so the error maps to
    /// `AlreadyExists` or `MeshNotFound` for it.
    async fn import_in_transaction(
        conn: &mut DB::Connection,
        keyring: Option<&Keyring>,
        items: Vec<Resource>,
        failed: &mut Option<ResourceKey>,
    ) -> std::result::Result<ImportCounts, sqlx::Error> {
        let mut tx = sqlx::Connection::begin_with(conn, AssertSqlSafe(DB::BEGIN_WRITE)).await?;
        let mut counts = ImportCounts::default();
        let time = now();
        for item in items {
            match item {
                Resource::Mesh(mesh) => {
                    let existing = query_as::<DB, MeshRow>(AssertSqlSafe(format!("{GET_MESH}{}", DB::FOR_NO_KEY_UPDATE)))
                        .bind(mesh.name.as_str().to_owned())
                        .fetch_optional(&mut *tx)
                        .await?;
                    let stored = seal_spec(keyring, &mesh.name, &mesh.spec);
                    // A stored Mesh whose keys do not open is overwritten: the import is
                    // the authority here.
                    let existing = existing.map(|row| {
                        let version = row.version();
                        row.open(keyring).map_err(|_| version)
                    });
                    // Checked above: the spec parses. Its Secrets may come later in the
                    // batch: the references are recorded, their existence is the importer's
                    // check (as for ExternalServices).
                    let references: Vec<(String, String)> = crate::domain::mtls::Mtls::of(&mesh.spec, &mesh.name)
                        .ok()
                        .flatten()
                        .map(|mtls| mtls.used_secrets(&mesh.name).into_iter().map(|u| (u.field, u.secret)).collect::<std::collections::BTreeMap<_, _>>().into_iter().collect())
                        .unwrap_or_default();
                    match existing {
                        None => {
                            *failed = Some(ResourceKey::mesh(&mesh.name));
                            Self::insert_mesh_query(&mesh.name, time, &mesh.labels, stored)
                                .fetch_one(&mut *tx)
                                .await?;
                            *failed = None;
                            counts.created += 1;
                        }
                        Some(Ok(current)) if current.spec == mesh.spec && current.labels == mesh.labels => {
                            counts.unchanged += 1;
                        }
                        Some(current) => {
                            let version = current.map_or_else(|version| version, |c| c.meta.version);
                            Self::update_mesh_query(&mesh.name, stored, &mesh.labels, time, version)
                                .fetch_one(&mut *tx)
                                .await?;
                            counts.updated += 1;
                        }
                    }
                    Self::record_references(&mut tx, &mesh.name, super::mtls::MESH_REFERRER, mesh.name.as_str(), &references).await?;
                }
                Resource::ExternalService(service) => {
                    let existing = Self::lock_external_service(&mut tx, &service.mesh, &service.name)
                        .await?
                        .map(|row| {
                            let version = row.version();
                            row.open(keyring).map_err(|_| version)
                        });
                    let version = match existing {
                        None => None,
                        Some(Ok(current)) if current.spec == service.spec && current.labels == service.labels => {
                            counts.unchanged += 1;
                            continue;
                        }
                        Some(current) => Some(current.map_or_else(|version| version, |c| c.meta.version)),
                    };
                    // Checked above: the spec parses. Its Secrets may come later in the
                    // batch, so their existence is the importer's check, not this one's.
                    let references = crate::domain::external_service::check_spec(&service.spec)
                        .map(|tls| tls.secret_references())
                        .unwrap_or_default();
                    *failed = Some(service.key());
                    Self::write_external_service_row(&mut tx, keyring, &service, version, time).await?;
                    *failed = None;
                    if let Err(super::tx::TxError::Db(e)) =
                        Self::replace_references(&mut tx, &service.mesh, &service.name, &references, false).await
                    {
                        return Err(e);
                    }
                    if version.is_none() {
                        counts.created += 1;
                    } else {
                        counts.updated += 1;
                    }
                }
                Resource::Secret(secret) => {
                    let key = &secret.key;
                    let get = format!("{}{}", GET_SECRET.for_key(key), DB::FOR_NO_KEY_UPDATE);
                    let get = bind_key(query_as::<DB, SecretRow>(AssertSqlSafe(get)), key);
                    // A stored row that does not open (altered, plaintext, or sealed with a
                    // key this keyring lacks) is overwritten: the import is the authority.
                    let existing = get
                        .fetch_optional(&mut *tx)
                        .await?
                        .map(|row| {
                            let version = row.version();
                            row.open(keyring, false).map_err(|_| version)
                        });
                    match existing {
                        None => {
                            *failed = Some(key.resource_key());
                            let stored = seal(keyring, key, secret.data.expose());
                            Self::insert_secret_query(key, time, &secret.labels, stored)
                                .fetch_one(&mut *tx)
                                .await?;
                            *failed = None;
                            counts.created += 1;
                        }
                        Some(Ok(current))
                            if current.data.expose() == secret.data.expose()
                                && current.labels == secret.labels =>
                        {
                            counts.unchanged += 1;
                        }
                        Some(current) => {
                            let version = current.map_or_else(|version| version, |c| c.meta.version);
                            let stored = seal(keyring, key, secret.data.expose());
                            Self::update_secret_query(key, stored, &secret.labels, time, version)
                                .fetch_one(&mut *tx)
                                .await?;
                            counts.updated += 1;
                        }
                    }
                }
            }
        }
        tx.commit().await?;
        Ok(counts)
    }
}
}

/// A resource's creation and modification times, as another store recorded them.
#[derive(Debug, Clone)]
pub struct KeptTimes {
    /// Whose times.
    pub of: TimesOf,
    /// When it was created.
    pub created: chrono::DateTime<chrono::Utc>,
    /// When it was last modified.
    pub modified: chrono::DateTime<chrono::Utc>,
}

/// The resource [`KeptTimes`] belong to.
#[derive(Debug, Clone)]
pub enum TimesOf {
    /// A Secret or GlobalSecret.
    Secret(crate::domain::SecretKey),
    /// A Mesh.
    Mesh(crate::domain::MeshName),
    /// An ExternalService: its Mesh and name.
    ExternalService(crate::domain::MeshName, crate::domain::ResourceName),
}

/// `$1` created, `$2` modified, `$3` name [, `$4` mesh]: sets a secret's times without a
/// new version (so no event and no kept version), if they differ.
const KEEP_SECRET_TIMES: super::statements::Keyed = super::statements::Keyed {
    mesh: "UPDATE secrets SET creation_time = $1, modification_time = $2 \
           WHERE name = $3 AND mesh = $4 AND (creation_time <> $1 OR modification_time <> $2)",
    global: "UPDATE secrets SET creation_time = $1, modification_time = $2 \
             WHERE name = $3 AND mesh IS NULL AND (creation_time <> $1 OR modification_time <> $2)",
};

/// As [`KEEP_SECRET_TIMES`] for a Mesh (`$3` its name).
const KEEP_MESH_TIMES: &str = "UPDATE meshes SET creation_time = $1, modification_time = $2 \
     WHERE name = $3 AND (creation_time <> $1 OR modification_time <> $2)";

/// As [`KEEP_MESH_TIMES`] for an ExternalService (`$3` its Mesh, `$4` its name).
const KEEP_EXTERNAL_SERVICE_TIMES: &str = "UPDATE external_services SET creation_time = $1, \
     modification_time = $2 WHERE mesh = $3 AND name = $4 \
     AND (creation_time <> $1 OR modification_time <> $2)";

impl_for_sql_databases! {
impl [SqlStore<DB>] {
    /// Gives resources just imported the times another store recorded for them (`import
    /// --from-kuma`), in one write transaction. A time is not a change: no version, no
    /// event, no kept version.
    ///
    /// # Errors
    /// The database failed.
    pub async fn keep_times(&self, times: Vec<KeptTimes>) -> Result<()> {
        self.in_write_transaction::<_, StoreError, _>(Op::Other, move |tx| {
            Box::pin(async move {
                for kept in times {
                    match &kept.of {
                        TimesOf::Secret(key) => {
                            let query = query(KEEP_SECRET_TIMES.for_key(key))
                                .bind(kept.created)
                                .bind(kept.modified)
                                .bind(key.name().as_str().to_owned());
                            let query = match key.mesh() {
                                Some(mesh) => query.bind(mesh.as_str().to_owned()),
                                None => query,
                            };
                            query.execute(&mut *tx).await?;
                        }
                        TimesOf::ExternalService(mesh, name) => {
                            query(KEEP_EXTERNAL_SERVICE_TIMES)
                                .bind(kept.created)
                                .bind(kept.modified)
                                .bind(mesh.as_str().to_owned())
                                .bind(name.as_str().to_owned())
                                .execute(&mut *tx)
                                .await?;
                        }
                        TimesOf::Mesh(mesh) => {
                            query(KEEP_MESH_TIMES)
                                .bind(kept.created)
                                .bind(kept.modified)
                                .bind(mesh.as_str().to_owned())
                                .execute(&mut *tx)
                                .await?;
                        }
                    }
                }
                Ok(())
            })
        })
        .await
    }
}
}
