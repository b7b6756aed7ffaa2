//! ExternalServices, and the table of references from resources to the Secrets they use.
//!
//! A write is one transaction: the Mesh locked against deletion, the ExternalService row
//! locked for the update, every Secret it names locked against deletion (`FOR KEY SHARE`
//! on Postgres; SQLite runs one writer at a time), its references replaced. A Secret's
//! delete locks the Secret row (`FOR UPDATE`) before it reads the references: whichever of
//! the two commits first, the other sees it, so no reference outlives its Secret.

use super::list::{Bind, ListSpec, Statement, build};
use super::rows::{ExternalServiceRow, ListedExternalServiceRow};
use super::statements::{query, query_as};
use super::tx::{RunOnStore, TxError, TxResult};
use super::{SqlStore, labels_json, missed, now, writer};
use crate::domain::external_service::{ExternalServiceTls, check_spec};
use crate::domain::mtls::DataSource;
use crate::domain::mtls::missing_secret_message;
use crate::domain::{
    EXTERNAL_SERVICE, ExternalService, ExternalServiceSpec, MeshName, NewExternalService,
    ResourceName, SecretKey, SecretReferrer, ValidationError, check_immutable_labels,
    external_service_key,
};
use crate::sealing::Keyring;
use crate::store::backend::db_error::Op;
use crate::store::backend::sql::Dialect;
use crate::store::contract::page::{Cursor, ExternalServiceQuery, Page};
use crate::store::contract::{Expect, Put, Result, SecretStore, StoreError};
use chrono::{DateTime, Utc};
use sqlx::AssertSqlSafe;
use sqlx::types::Json;

macro_rules! external_service_columns {
    () => {
        "mesh, name, version, creation_time, modification_time, labels, spec"
    };
}

/// `$1` mesh, `$2` name.
const GET_EXTERNAL_SERVICE: &str = concat!(
    "SELECT ",
    external_service_columns!(),
    " FROM external_services WHERE mesh = $1 AND name = $2"
);
/// `$1` mesh, `$2` name, `$3` time, `$4` labels, `$5` spec, `$6` actor, `$7` request id.
const INSERT_EXTERNAL_SERVICE: &str = concat!(
    "INSERT INTO external_services (mesh, name, version, creation_time, modification_time, ",
    "labels, spec, actor, request_id) VALUES ($1, $2, 1, $3, $3, $4, $5, $6, $7) RETURNING ",
    external_service_columns!()
);
/// `$1` spec, `$2` labels, `$3` time, `$4` expected version, `$5` mesh, `$6` name,
/// `$7` actor, `$8` request id.
const UPDATE_EXTERNAL_SERVICE: &str = concat!(
    "UPDATE external_services SET spec = $1, labels = $2, modification_time = $3, ",
    "version = version + 1, actor = $7, request_id = $8 ",
    "WHERE version = $4 AND mesh = $5 AND name = $6 RETURNING ",
    external_service_columns!()
);
/// `$1` actor, `$2` request id, `$3` mesh, `$4` name: who is about to delete it.
const STAMP_EXTERNAL_SERVICE: &str =
    "UPDATE external_services SET actor = $1, request_id = $2 WHERE mesh = $3 AND name = $4";
/// `$1` actor, `$2` request id, `$3` mesh: who is about to delete a Mesh, on its
/// ExternalServices (its delete cascades to them).
pub(super) const STAMP_MESH_EXTERNAL_SERVICES: &str =
    "UPDATE external_services SET actor = $1, request_id = $2 WHERE mesh = $3";
/// `$1` expected version or NULL, `$2` mesh, `$3` name.
const DELETE_EXTERNAL_SERVICE: &str = "DELETE FROM external_services \
     WHERE version = coalesce($1, version) AND mesh = $2 AND name = $3 RETURNING version";
/// `$1` mesh, `$2` referrer type, `$3` referrer.
const DELETE_REFERENCES: &str = "DELETE FROM secret_references \
     WHERE mesh = $1 AND referrer_type = $2 AND referrer = $3";
/// `$1` mesh, `$2` referrer type, `$3` referrer, `$4` field, `$5` secret.
const INSERT_REFERENCE: &str = "INSERT INTO secret_references \
     (mesh, referrer_type, referrer, field, secret) VALUES ($1, $2, $3, $4, $5)";
/// `$1` mesh, `$2` secret.
const REFERRERS_OF_SECRET: &str = "SELECT referrer_type, referrer, field FROM secret_references \
     WHERE mesh = $1 AND secret = $2 ORDER BY referrer_type, referrer, field";

/// Statements for an ExternalService list.
fn list_statements<D: Dialect>(query: &ExternalServiceQuery) -> super::list::ListStatements {
    let (scope_filter, order_by, keyset): (_, _, fn(&mut Statement, &Cursor) -> String) =
        match &query.mesh {
            Some(mesh) => (
                Some(("mesh = {}", Some(mesh.as_str().to_owned()))),
                "name",
                |s, c| format!("name > {}", s.param(Bind::Text(c.name.clone()))),
            ),
            None => (None, "mesh, name", |s, c| {
                let mesh = s.param(Bind::Text(c.mesh.clone().unwrap_or_default()));
                let name = s.param(Bind::Text(c.name.clone()));
                format!("(mesh, name) > ({mesh}, {name})")
            }),
        };
    build::<D>(ListSpec {
        table: "external_services",
        columns: external_service_columns!(),
        order_by,
        scope_filter,
        name_contains: query.name_contains.as_deref(),
        labels: &query.labels,
        start: query.page.start(),
        keyset,
        size: query.page.size(),
        known_total: None,
    })
}

/// A spec as stored: its inline client key sealed when there is a keyring.
fn seal_external_spec(
    keyring: Option<&Keyring>,
    mesh: &MeshName,
    name: &ResourceName,
    spec: &ExternalServiceSpec,
) -> ExternalServiceSpec {
    let mut stored = spec.clone();
    if let Some(keyring) = keyring {
        crate::sealing::seal_external_service_spec(
            keyring,
            mesh.as_str(),
            name.as_str(),
            &mut stored,
        );
    }
    stored
}

/// How often a blind put runs again after a concurrent create of the same ExternalService
/// won the insert.
const PUT_ATTEMPTS: usize = 3;

/// What an ExternalService write checked before its transaction: the Secrets it must
/// still find, by field.
#[derive(Clone)]
struct Checked {
    references: Vec<(&'static str, String)>,
}

/// Why an ExternalService write's transaction refused to commit.
enum Refusal {
    Store(StoreError),
    Invalid(ValidationError),
}

impl From<StoreError> for Refusal {
    fn from(err: StoreError) -> Self {
        Refusal::Store(err)
    }
}

impl From<Refusal> for StoreError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Store(e) => e,
            Refusal::Invalid(e) => StoreError::Invalid(e),
        }
    }
}

impl_for_sql_databases! {
impl [SqlStore<DB>] {
    /// The checks before an ExternalService write's transaction: Kuma's validator, then
    /// every Secret it names read (it must exist in the Mesh) and its PEM parsed.
    async fn check_external_service(&self, service: &NewExternalService) -> Result<Checked> {
        crate::domain::reject_nul_in_json("", &serde_json::Value::Object(service.spec.clone()))?;
        let tls: ExternalServiceTls = check_spec(&service.spec)?;
        let mut errors = ValidationError::default();
        let mut material: [Option<Vec<u8>>; 3] = [None, None, None];
        let sources = [&tls.ca_cert, &tls.client_cert, &tls.client_key];
        for (slot, (source, (field, _))) in material
            .iter_mut()
            .zip(sources.into_iter().zip(crate::domain::external_service::TLS_SOURCES))
        {
            match source {
                None | Some(DataSource::File(_)) => {}
                Some(DataSource::Inline(bytes)) => *slot = Some(bytes.clone()),
                Some(DataSource::Secret(name)) => {
                    let found = match ResourceName::parse(name) {
                        Ok(parsed) => {
                            let key = SecretKey::secret(service.mesh.clone(), parsed);
                            match self.get_secret(&key).await {
                                Ok(secret) => Some(secret.data.expose().to_vec()),
                                Err(StoreError::NotFound(_)) => None,
                                Err(other) => return Err(other),
                            }
                        }
                        Err(_) => None,
                    };
                    match found {
                        Some(bytes) => *slot = Some(bytes),
                        None => errors.push(field, missing_secret_message(name, &service.mesh)),
                    }
                }
            }
        }
        if errors.is_empty() {
            let [ca, cert, key] = material;
            let checked = tokio::task::spawn_blocking(move || {
                crate::ca::validate_external_service_tls(ca.as_deref(), cert.as_deref(), key.as_deref())
            })
            .await
            .map_err(|e| StoreError::Generation(e.to_string()))?;
            if let Err(violations) = checked {
                errors.violations.extend(violations.violations);
            }
        }
        if !errors.is_empty() {
            return Err(StoreError::Invalid(errors));
        }
        Ok(Checked { references: tls.secret_references() })
    }

    /// Replaces the references of ExternalService `name` with `references`, inside a write
    /// transaction. With `lock`, each Secret must exist and is locked against deletion
    /// until commit (a missing one is a violation naming its field).
    pub(super) async fn replace_references(
        tx: &mut DB::Connection,
        mesh: &MeshName,
        name: &ResourceName,
        references: &[(&'static str, String)],
        lock: bool,
    ) -> TxResult<(), ValidationError> {
        let mut errors = ValidationError::default();
        if lock {
            for (field, secret) in references {
                let row = query_as::<DB, (i64,)>(DB::LOCK_SECRET_SHARED)
                    .bind(mesh.as_str().to_owned())
                    .bind(secret.clone())
                    .fetch_optional(&mut *tx)
                    .await?;
                if row.is_none() {
                    errors.push(*field, missing_secret_message(secret, mesh));
                }
            }
            if !errors.is_empty() {
                return Err(TxError::Refused(errors));
            }
        }
        let references: Vec<(String, String)> = references
            .iter()
            .map(|(field, secret)| ((*field).to_owned(), secret.clone()))
            .collect();
        Self::record_references(tx, mesh, EXTERNAL_SERVICE, name.as_str(), &references).await?;
        Ok(())
    }

    /// Inside a write transaction: the rows of the table of references for referrer
    /// (`referrer_type`, `referrer`) of `mesh` become `references`, (field, secret) each.
    pub(super) async fn record_references(
        tx: &mut DB::Connection,
        mesh: &MeshName,
        referrer_type: &str,
        referrer: &str,
        references: &[(String, String)],
    ) -> std::result::Result<(), sqlx::Error> {
        query::<DB>(DELETE_REFERENCES)
            .bind(mesh.as_str().to_owned())
            .bind(referrer_type.to_owned())
            .bind(referrer.to_owned())
            .execute(&mut *tx)
            .await?;
        for (field, secret) in references {
            query::<DB>(INSERT_REFERENCE)
                .bind(mesh.as_str().to_owned())
                .bind(referrer_type.to_owned())
                .bind(referrer.to_owned())
                .bind(field.clone())
                .bind(secret.clone())
                .execute(&mut *tx)
                .await?;
        }
        Ok(())
    }

    /// Inserts or updates (at `version`) an ExternalService row, its spec sealed.
    pub(super) async fn write_external_service_row(
        tx: &mut DB::Connection,
        keyring: Option<&Keyring>,
        service: &NewExternalService,
        version: Option<i64>,
        time: DateTime<Utc>,
    ) -> std::result::Result<ExternalServiceRow, sqlx::Error> {
        let stored = seal_external_spec(keyring, &service.mesh, &service.name, &service.spec);
        let (actor, request_id) = writer();
        match version {
            None => {
                query_as::<DB, ExternalServiceRow>(INSERT_EXTERNAL_SERVICE)
                    .bind(service.mesh.as_str().to_owned())
                    .bind(service.name.as_str().to_owned())
                    .bind(time)
                    .bind(labels_json(&service.labels))
                    .bind(Json(stored))
                    .bind(actor)
                    .bind(request_id)
                    .fetch_one(&mut *tx)
                    .await
            }
            Some(version) => {
                query_as::<DB, ExternalServiceRow>(UPDATE_EXTERNAL_SERVICE)
                    .bind(Json(stored))
                    .bind(labels_json(&service.labels))
                    .bind(time)
                    .bind(version)
                    .bind(service.mesh.as_str().to_owned())
                    .bind(service.name.as_str().to_owned())
                    .bind(actor)
                    .bind(request_id)
                    .fetch_one(&mut *tx)
                    .await
            }
        }
    }

    /// An ExternalService row locked for an update, as (version, labels, stored spec).
    pub(super) async fn lock_external_service(
        tx: &mut DB::Connection,
        mesh: &MeshName,
        name: &ResourceName,
    ) -> std::result::Result<Option<ExternalServiceRow>, sqlx::Error> {
        query_as::<DB, ExternalServiceRow>(AssertSqlSafe(format!("{GET_EXTERNAL_SERVICE}{}", DB::FOR_UPDATE)))
            .bind(mesh.as_str().to_owned())
            .bind(name.as_str().to_owned())
            .fetch_optional(&mut *tx)
            .await
    }

    /// The body of [`SecretStore::put_external_service`].
    pub(super) async fn put_external_service_with(
        &self,
        service: NewExternalService,
        expect: Expect,
    ) -> Result<Put<ExternalService>> {
        let checked = self.check_external_service(&service).await?;
        let key = service.key();
        for attempt in 1..=PUT_ATTEMPTS {
        let (service, checked) = (service.clone(), checked.clone());
        let keyring = self.options.keyring();
        let time = now();
        let outcome = self
            .in_write_transaction::<_, Refusal, _>(Op::Create(&key), move |tx| {
                Box::pin(async move {
                    let refuse = |e: StoreError| Err(TxError::Refused(Refusal::Store(e)));
                    let mesh = query_as::<DB, (i64, Json<crate::domain::MeshSpec>)>(DB::LOCK_MESH_SHARED)
                        .bind(service.mesh.as_str().to_owned())
                        .fetch_optional(&mut *tx)
                        .await?;
                    if mesh.is_none() {
                        return refuse(StoreError::MeshNotFound { mesh: service.mesh.as_str().to_owned() });
                    }
                    let current = Self::lock_external_service(tx, &service.mesh, &service.name).await?;
                    let version = match (current, expect) {
                        (None, Expect::Exists | Expect::Version(_)) => return refuse(StoreError::NotFound(service.key())),
                        (None, Expect::Any | Expect::Absent) => None,
                        (Some(_), Expect::Absent) => return refuse(StoreError::AlreadyExists(service.key())),
                        (Some(row), Expect::Version(expected)) if row.version() != expected => {
                            return refuse(missed(service.key(), Some(expected), Some(row.version())));
                        }
                        (Some(row), _) => {
                            if let Err(e) = check_immutable_labels(&row.labels(), &service.labels) {
                                return refuse(StoreError::ImmutableLabels(e));
                            }
                            Some(row.version())
                        }
                    };
                    Self::replace_references(tx, &service.mesh, &service.name, &checked.references, true)
                        .await
                        .map_err(|e| match e {
                            TxError::Db(e) => TxError::Db(e),
                            TxError::Refused(v) => TxError::Refused(Refusal::Invalid(v)),
                        })?;
                    let row = Self::write_external_service_row(tx, keyring.as_deref(), &service, version, time).await?;
                    Ok(Put { created: version.is_none(), value: row.with_spec(service.spec) })
                })
            })
            .await;
        match outcome {
            // Two blind creates raced: the loser finds the row the next time round.
            Err(Refusal::Store(StoreError::AlreadyExists(_)))
                if expect == Expect::Any && attempt < PUT_ATTEMPTS => {}
            other => return other.map_err(StoreError::from),
        }
        }
        unreachable!("the last attempt returns")
    }

    /// The body of [`SecretStore::delete_external_service`].
    pub(super) async fn delete_external_service_with(
        &self,
        mesh: &MeshName,
        name: &ResourceName,
        expected_version: Option<i64>,
    ) -> Result<()> {
        let (m, n) = (mesh.clone(), name.clone());
        let deleted = self
            .in_write_transaction::<_, StoreError, _>(Op::Other, move |tx| {
                Box::pin(async move {
                    let (actor, request_id) = writer();
                    query::<DB>(STAMP_EXTERNAL_SERVICE)
                        .bind(actor)
                        .bind(request_id)
                        .bind(m.as_str().to_owned())
                        .bind(n.as_str().to_owned())
                        .execute(&mut *tx)
                        .await?;
                    let gone = query_as::<DB, (i64,)>(DELETE_EXTERNAL_SERVICE)
                        .bind(expected_version)
                        .bind(m.as_str().to_owned())
                        .bind(n.as_str().to_owned())
                        .fetch_optional(&mut *tx)
                        .await?;
                    if gone.is_none() {
                        return Err(TxError::Refused(StoreError::NotFound(external_service_key(&m, &n))));
                    }
                    Self::replace_references(tx, &m, &n, &[], false)
                        .await
                        .map_err(|e| match e {
                            TxError::Db(e) => TxError::Db(e),
                            TxError::Refused(v) => TxError::Refused(StoreError::Invalid(v)),
                        })?;
                    Ok(())
                })
            })
            .await;
        match deleted {
            Err(StoreError::NotFound(key)) => {
                let actual = self.get_external_service_row(mesh, name).await?.map(|r| r.version());
                Err(missed(key, expected_version, actual))
            }
            other => other,
        }
    }

    /// The stored row of an ExternalService, if any.
    async fn get_external_service_row(&self, mesh: &MeshName, name: &ResourceName) -> Result<Option<ExternalServiceRow>> {
        query_as::<DB, ExternalServiceRow>(GET_EXTERNAL_SERVICE)
            .bind(mesh.as_str().to_owned())
            .bind(name.as_str().to_owned())
            .fetch_optional_via(self, Op::Other)
            .await
    }

    /// The body of [`SecretStore::get_external_service`].
    pub(super) async fn get_external_service_with(&self, mesh: &MeshName, name: &ResourceName) -> Result<ExternalService> {
        self.get_external_service_row(mesh, name)
            .await?
            .ok_or_else(|| StoreError::NotFound(external_service_key(mesh, name)))?
            .open(self.options.keyring().as_deref())
    }

    /// The body of [`SecretStore::list_external_services`].
    pub(super) async fn list_external_services_with(&self, query: &ExternalServiceQuery) -> Result<Page<ExternalService>> {
        let first_page = query.page.start() == &crate::store::contract::PageStart::Offset(0);
        let keyring = self.options.keyring();
        self.run_list(
            list_statements::<DB>(query),
            first_page,
            |row: ListedExternalServiceRow| {
                let total = row.total;
                Ok((row.row.open(keyring.as_deref())?, total))
            },
            |s: &ExternalService| (Some(s.mesh.as_str().to_owned()), s.name.as_str().to_owned()),
            query.page.size(),
            query.page.offset(),
        )
        .await
    }

    /// The body of [`SecretStore::secret_referrers`].
    pub(super) async fn secret_referrers_with(&self, key: &SecretKey) -> Result<Vec<SecretReferrer>> {
        let Some(mesh) = key.mesh() else {
            return Ok(Vec::new());
        };
        let rows = query_as::<DB, (String, String, String)>(REFERRERS_OF_SECRET)
            .bind(mesh.as_str().to_owned())
            .bind(key.name().as_str().to_owned())
            .fetch_all_via(self, Op::Other)
            .await?;
        Ok(rows.into_iter().map(referrer).collect())
    }

    /// Inside a Secret's delete transaction: locks the Secret row against new references
    /// (a referrer's write waits, then finds it gone), then reads who names it.
    pub(super) async fn lock_and_read_referrers(
        tx: &mut DB::Connection,
        key: &SecretKey,
    ) -> std::result::Result<Vec<SecretReferrer>, sqlx::Error> {
        let Some(mesh) = key.mesh() else {
            return Ok(Vec::new());
        };
        let lock = format!("SELECT version FROM secrets WHERE mesh = $1 AND name = $2{}", DB::FOR_UPDATE);
        query_as::<DB, (i64,)>(AssertSqlSafe(lock))
            .bind(mesh.as_str().to_owned())
            .bind(key.name().as_str().to_owned())
            .fetch_optional(&mut *tx)
            .await?;
        let rows = query_as::<DB, (String, String, String)>(REFERRERS_OF_SECRET)
            .bind(mesh.as_str().to_owned())
            .bind(key.name().as_str().to_owned())
            .fetch_all(&mut *tx)
            .await?;
        Ok(rows.into_iter().map(referrer).collect())
    }
}
}

fn referrer((referrer_type, referrer, field): (String, String, String)) -> SecretReferrer {
    SecretReferrer {
        referrer_type,
        referrer,
        field,
    }
}
