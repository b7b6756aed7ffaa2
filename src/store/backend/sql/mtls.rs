//! A Mesh write's mTLS, in two steps: before its transaction, [`SqlStore::prepare_mtls`]
//! loads and checks provided CAs and generates builtin CAs that are missing (off the
//! executor); inside it, [`SqlStore::apply_mtls_plan`] stores the new CAs and locks every
//! secret the Mesh will use, so a concurrent delete waits and then sees the reference.

use super::SqlStore;
use super::seal;
use super::statements::query_as;
use super::statements::{DELETE_SECRET, bind_key};
use super::tx::{TxError, TxResult};
use crate::domain::mtls::{DataSource, Mtls, builtin_ca_names, missing_secret_message};
use crate::domain::{Labels, MeshName, ResourceName, SecretKey, ValidationError};
use crate::sealing::Keyring;
use crate::store::contract::{Result, SecretStore, StoreError};
use chrono::{DateTime, Utc};

/// What [`SqlStore::prepare_mtls`] found: CAs to store, secrets that must still exist.
#[derive(Default)]
pub(super) struct MtlsPlan {
    builtin: Vec<BuiltinCa>,
    /// Builtin CA pairs found in place: they must still be there when the Mesh commits.
    builtin_present: Vec<(String, String)>,
    required: Vec<String>,
    /// Every secret the backends use, (field, secret): the Mesh's rows in the table of
    /// references, which the Secret delete guard reads.
    references: Vec<(String, String)>,
}

/// Why a Mesh write's transaction refused to commit.
pub(super) enum MeshRefusal {
    /// A store-level refusal (not found, conflict, a stored value that does not open).
    Store(StoreError),
    /// An mTLS rule is broken: report it.
    Invalid(ValidationError),
    /// A builtin CA pair seen before the transaction was deleted meanwhile: plan again
    /// (generating a fresh pair) and retry.
    CaVanished(String),
}

impl From<StoreError> for MeshRefusal {
    fn from(err: StoreError) -> Self {
        MeshRefusal::Store(err)
    }
}

impl From<MeshRefusal> for StoreError {
    fn from(refusal: MeshRefusal) -> Self {
        match refusal {
            MeshRefusal::Store(e) => e,
            MeshRefusal::Invalid(e) => StoreError::Invalid(e),
            MeshRefusal::CaVanished(name) => StoreError::Invalid(ValidationError::single(
                "mtls",
                format!(
                    "the builtin CA secret {name:?} was deleted while the Mesh was being written; retry"
                ),
            )),
        }
    }
}

/// The referrer type of a Mesh's rows in the table of references.
pub(super) const MESH_REFERRER: &str = "Mesh";

/// How often a Mesh write re-plans when a concurrent delete removed a builtin CA pair it
/// was about to rely on.
pub(super) const MTLS_ATTEMPTS: usize = 3;

/// A generated builtin CA: (secret name, PEM) of its certificate and key.
struct BuiltinCa {
    cert: (String, Vec<u8>),
    key: (String, Vec<u8>),
}

/// Labels of a generated CA secret: Kuma's computed ones for the mesh.
fn builtin_ca_labels(mesh: &MeshName) -> Labels {
    Labels::from_stored(
        [("kuma.io/mesh".to_owned(), mesh.as_str().to_owned())]
            .into_iter()
            .collect(),
    )
}

impl_for_sql_databases! {
impl [SqlStore<DB>] {
    /// Everything about a Mesh's mTLS that needs reading or computing before its write
    /// transaction: the provided CAs loaded and checked (unless `skipValidation`), and a
    /// fresh CA for every builtin backend whose secrets are missing. Key generation and
    /// certificate parsing run on the blocking pool, off the executor.
    pub(super) async fn prepare_mtls(&self, mesh: &MeshName, mtls: Option<&Mtls>) -> Result<MtlsPlan> {
        let mut plan = MtlsPlan::default();
        let Some(mtls) = mtls else {
            return Ok(plan);
        };
        let by_field: std::collections::BTreeMap<String, String> = mtls
            .used_secrets(mesh)
            .into_iter()
            .map(|u| (u.field, u.secret))
            .collect();
        plan.references = by_field.into_iter().collect();
        for backend in mtls.builtin_backends() {
            let (cert, key) = builtin_ca_names(mesh, &backend.name);
            let mut present = 0;
            for name in [&cert, &key] {
                let key = SecretKey::secret(mesh.clone(), ResourceName::from_stored(name.clone()));
                if self.stored_secret_version(&key).await?.is_some() {
                    present += 1;
                }
            }
            if present == 2 {
                plan.builtin_present.push((cert, key));
                continue;
            }
            let (for_mesh, backend_name) = (mesh.clone(), backend.name.clone());
            let generated = tokio::task::spawn_blocking(move || {
                crate::ca::generate_builtin_ca(&for_mesh, &backend_name)
            })
            .await
            .map_err(|e| StoreError::Generation(e.to_string()))?
            .map_err(|e| StoreError::Generation(e.to_string()))?;
            plan.builtin.push(BuiltinCa {
                cert: (cert, generated.cert_pem.into_bytes()),
                key: (key, generated.key_pem.into_bytes()),
            });
        }
        if mtls.skip_validation {
            return Ok(plan);
        }
        let mut errors = ValidationError::default();
        for (i, backend) in mtls.backends.iter().enumerate() {
            let (Some(cert), Some(key)) = (&backend.cert, &backend.key) else {
                continue;
            };
            let conf = format!("mtls.backends[{i}].conf");
            let mut loaded = Vec::new();
            for (field, source) in [("cert", cert), ("key", key)] {
                match source {
                    DataSource::Inline(bytes) => loaded.push(Some(bytes.clone())),
                    DataSource::File(_) => {
                        errors.push(
                            format!("{conf}.{field}"),
                            "could not load data: file data sources are not read by kuma-secrets; use secret or inline, or set skipValidation",
                        );
                        loaded.push(None);
                    }
                    DataSource::Secret(name) => {
                        let found = match ResourceName::parse(name) {
                            Ok(parsed) => {
                                let key = SecretKey::secret(mesh.clone(), parsed);
                                match self.get_secret(&key).await {
                                    Ok(secret) => Some(secret.data.expose().to_vec()),
                                    Err(StoreError::NotFound(_)) => None,
                                    Err(other) => return Err(other),
                                }
                            }
                            Err(_) => None,
                        };
                        if found.is_none() {
                            let why = missing_secret_message(name, mesh);
                            errors.push(format!("{conf}.cert"), why.clone());
                            errors.push(format!("{conf}.key"), why);
                        } else {
                            plan.required.push(name.clone());
                        }
                        loaded.push(found);
                    }
                }
            }
            if let [Some(cert), Some(key)] = &loaded[..] {
                let (cert, key, path) = (cert.clone(), key.clone(), conf.clone());
                let checked = tokio::task::spawn_blocking(move || {
                    crate::ca::validate_provided_ca(&cert, &key, &path)
                })
                .await
                .map_err(|e| StoreError::Generation(e.to_string()))?;
                if let Err(violations) = checked {
                    errors.violations.extend(violations.violations);
                }
            }
        }
        if errors.is_empty() {
            Ok(plan)
        } else {
            Err(StoreError::Invalid(errors))
        }
    }

    /// Inside a Mesh's write transaction: stores the builtin CAs that are still missing,
    /// and checks that every secret a provided backend references still exists, locking
    /// it so a concurrent delete waits for this commit (and then sees the reference).
    /// Locks the Secret `name` of `mesh` against deletion until commit, if it exists.
    async fn lock_mesh_secret(tx: &mut DB::Connection, mesh: &MeshName, name: &str) -> TxResult<bool, MeshRefusal> {
        let row = query_as::<DB, (i64,)>(DB::LOCK_SECRET_SHARED)
            .bind(mesh.as_str().to_owned())
            .bind(name.to_owned())
            .fetch_optional(&mut *tx)
            .await?;
        Ok(row.is_some())
    }

    pub(super) async fn apply_mtls_plan(
        tx: &mut DB::Connection,
        keyring: Option<&Keyring>,
        mesh: &MeshName,
        plan: MtlsPlan,
        time: DateTime<Utc>,
    ) -> TxResult<(), MeshRefusal> {
        // A pair seen before the transaction must still be there, locked against deletion
        // until commit; a concurrent delete that won the race sends us back to planning.
        for (cert, key) in plan.builtin_present {
            for name in [cert, key] {
                if !Self::lock_mesh_secret(tx, mesh, &name).await? {
                    return Err(TxError::Refused(MeshRefusal::CaVanished(name)));
                }
            }
        }
        for ca in plan.builtin {
            let mut present = 0;
            for (name, _) in [&ca.cert, &ca.key] {
                present += Self::lock_mesh_secret(tx, mesh, name).await? as u8;
            }
            if present == 2 {
                // Created meanwhile by a concurrent write: never regenerated.
                continue;
            }
            for (name, pem) in [ca.cert, ca.key] {
                // A lone half of a pair is useless: replace it with the new pair's half.
                let stale = SecretKey::secret(mesh.clone(), ResourceName::from_stored(name.clone()));
                let delete = query_as::<DB, (i64,)>(DELETE_SECRET.for_key(&stale)).bind(None::<i64>);
                bind_key(delete, &stale).fetch_optional(&mut *tx).await?;
                let stored = seal(keyring, &stale, &pem);
                Self::insert_secret_query(&stale, time, &builtin_ca_labels(mesh), stored)
                    .fetch_one(&mut *tx)
                    .await?;
            }
        }
        let mut errors = ValidationError::default();
        for name in plan.required {
            if !Self::lock_mesh_secret(tx, mesh, &name).await? {
                errors.push("mtls", missing_secret_message(&name, mesh));
            }
        }
        if !errors.is_empty() {
            return Err(TxError::Refused(MeshRefusal::Invalid(errors)));
        }
        Self::record_references(tx, mesh, MESH_REFERRER, mesh.as_str(), &plan.references).await?;
        Ok(())
    }
}
}
