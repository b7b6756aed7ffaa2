//! The rows the statements return, and how a stored row becomes a domain value: secret
//! data opened with the keyring (plaintext, seal format 1 or 2), Mesh specs with their
//! inline CA keys opened.

use crate::domain::{
    ExternalService, Labels, Mesh, MeshName, MeshSpec, Meta, ResourceName, Secret, SecretData,
    SecretKey,
};
use crate::sealing::{Binding, Keyring, OpenError, WriteId};
use crate::store::contract::StoreError;
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use std::collections::BTreeMap;

/// The columns of a `secrets` (or kept version) row that name the secret and hold its
/// value: plaintext (`key_id` NULL), seal format 1 (`write_id` NULL) or format 2.
#[derive(Clone, sqlx::FromRow)]
pub struct StoredValue {
    mesh: Option<String>,
    name: String,
    data: Vec<u8>,
    key_id: Option<String>,
    write_id: Option<Vec<u8>>,
}

impl StoredValue {
    /// The secret's key.
    pub fn key(&self) -> SecretKey {
        stored_key(self.mesh.as_deref(), &self.name)
    }

    /// The value opened with `keyring`, as its columns say it was sealed.
    ///
    /// # Errors
    /// Why the value does not open; plaintext with a keyring unless `accept_plaintext`, and
    /// a plaintext value that [grants authority](SecretKey::grants_authority) always.
    pub fn open(
        &self,
        keyring: Option<&Keyring>,
        accept_plaintext: bool,
    ) -> Result<Vec<u8>, OpenError> {
        match (self.key_id.as_deref(), keyring) {
            (None, Some(_)) if self.key().grants_authority() => Err(OpenError::PlaintextAuthority),
            (None, Some(_)) if !accept_plaintext => Err(OpenError::Plaintext),
            (None, _) => Ok(self.data.clone()),
            (Some(key_id), None) => Err(OpenError::MissingKey {
                key_id: key_id.to_owned(),
            }),
            (Some(key_id), Some(keyring)) => {
                let key = self.key();
                match self.write_id.as_deref() {
                    None => keyring.open(&Binding::LegacySecret(&key), key_id, &self.data),
                    Some(bytes) => {
                        let write = WriteId::from_stored(bytes).ok_or(OpenError::Corrupt {
                            key_id: key_id.to_owned(),
                        })?;
                        let binding = Binding::Secret { key: &key, write };
                        keyring.open(&binding, key_id, &self.data)
                    }
                }
            }
        }
    }

    /// About how many bytes the names and the value take in memory.
    fn memory_size(&self) -> usize {
        self.data.len()
            + self.name.len()
            + self.mesh.as_ref().map_or(0, String::len)
            + self.key_id.as_ref().map_or(0, String::len)
            + self.write_id.as_ref().map_or(0, Vec::len)
    }
}

/// A `secrets` row (an implementation detail of [`super::SqlStore`]).
#[derive(Clone, sqlx::FromRow)]
pub struct SecretRow {
    #[sqlx(flatten)]
    value: StoredValue,
    version: i64,
    creation_time: DateTime<Utc>,
    modification_time: DateTime<Utc>,
    labels: Json<BTreeMap<String, String>>,
}

impl SecretRow {
    /// The stored secret, its data opened with `keyring` if the row is sealed.
    ///
    /// # Errors
    /// [`StoreError::Sealed`] naming the secret when the row does not open (a key id not in
    /// the keyring, or a value that fails authentication under its key and write id), is
    /// sealed and the store has no keyring, or is plaintext while the store has a keyring
    /// (unless `accept_plaintext`, for the upgrade window before `rotate-keys`).
    pub fn open(
        mut self,
        keyring: Option<&Keyring>,
        accept_plaintext: bool,
    ) -> Result<Secret, StoreError> {
        let data = self.opened_data(keyring, accept_plaintext)?;
        zeroize::Zeroize::zeroize(&mut self.value.data);
        Ok(self.with_data(data))
    }

    /// As [`open`](Self::open), for a row that stays where it is (the read cache's): only
    /// the opened value and the names are new; the sealed value is not copied.
    ///
    /// # Errors
    /// As [`open`](Self::open).
    pub fn open_shared(
        &self,
        keyring: Option<&Keyring>,
        accept_plaintext: bool,
    ) -> Result<Secret, StoreError> {
        Ok(Secret {
            key: self.key(),
            data: self.opened_data(keyring, accept_plaintext)?,
            labels: Labels::from_stored(self.labels.0.clone()),
            meta: self.meta(),
        })
    }

    /// The value opened with `keyring` (what [`open`](Self::open) and
    /// [`open_shared`](Self::open_shared) share), or why it does not open.
    fn opened_data(
        &self,
        keyring: Option<&Keyring>,
        accept_plaintext: bool,
    ) -> Result<SecretData, StoreError> {
        self.value
            .open(keyring, accept_plaintext)
            .map(SecretData::from_stored)
            .map_err(|reason| StoreError::Sealed {
                key: self.key().resource_key(),
                reason,
            })
    }

    fn meta(&self) -> Meta {
        Meta {
            version: self.version,
            creation_time: self.creation_time,
            modification_time: self.modification_time,
        }
    }

    /// The row's version.
    pub fn version(&self) -> i64 {
        self.version
    }

    /// About how many bytes the row takes in memory: its data, labels and names.
    pub fn memory_size(&self) -> usize {
        let labels: usize = self
            .labels
            .0
            .iter()
            .map(|(k, v)| k.len() + v.len() + 48)
            .sum();
        self.value.memory_size() + labels + std::mem::size_of::<Self>()
    }

    /// When the secret was created.
    pub fn creation_time(&self) -> DateTime<Utc> {
        self.creation_time
    }

    /// The secret's key.
    pub fn key(&self) -> SecretKey {
        self.value.key()
    }

    /// The row as a Secret with `data`: after a write, which knows the plaintext it sealed.
    pub fn with_data(self, data: SecretData) -> Secret {
        Secret {
            key: self.key(),
            data,
            meta: self.meta(),
            labels: Labels::from_stored(self.labels.0),
        }
    }
}

/// The key of a stored row (its names were validated when written).
pub(super) fn stored_key(mesh: Option<&str>, name: &str) -> SecretKey {
    let name = ResourceName::from_stored(name.to_owned());
    match mesh {
        Some(mesh) => SecretKey::secret(MeshName::from_stored(mesh.to_owned()), name),
        None => SecretKey::global(name),
    }
}

/// A `secrets` row as key rotation reads it.
#[derive(sqlx::FromRow)]
pub struct SealedRow {
    pub id: i64,
    pub version: i64,
    #[sqlx(flatten)]
    pub value: StoredValue,
}

/// A plaintext `secrets` (or kept version) row as `seal-plaintext` lists it.
#[derive(sqlx::FromRow)]
pub struct PlaintextRow {
    pub id: i64,
    pub mesh: Option<String>,
    pub name: String,
    pub version: i64,
    pub creation_time: DateTime<Utc>,
    pub modification_time: DateTime<Utc>,
}

/// A Mesh's stored spec (inline CA keys still sealed) with its name, version and times, as
/// key rotation and `seal-plaintext` read it.
#[derive(sqlx::FromRow)]
pub struct StoredMeshSpec {
    pub name: String,
    pub version: i64,
    pub creation_time: DateTime<Utc>,
    pub modification_time: DateTime<Utc>,
    pub spec: Json<MeshSpec>,
}

/// A `secrets` row of a list page, with the count of all matches.
#[derive(sqlx::FromRow)]
pub struct ListedSecretRow {
    #[sqlx(flatten)]
    pub row: SecretRow,
    pub total: i64,
}

/// A `meshes` row.
#[derive(sqlx::FromRow)]
pub struct MeshRow {
    name: String,
    version: i64,
    creation_time: DateTime<Utc>,
    modification_time: DateTime<Utc>,
    labels: Json<BTreeMap<String, String>>,
    spec: Json<MeshSpec>,
}

impl MeshRow {
    /// The row's version.
    pub fn version(&self) -> i64 {
        self.version
    }

    /// The stored Mesh, the inline CA keys of its spec opened with `keyring`.
    ///
    /// # Errors
    /// [`StoreError::Sealed`] naming the Mesh when an inline key does not open (or is
    /// stored unsealed while the store has a keyring: a CA key grants authority, so this
    /// holds even while plaintext secret rows are accepted).
    pub fn open(self, keyring: Option<&Keyring>) -> Result<Mesh, StoreError> {
        let mut spec = self.spec.0.clone();
        crate::sealing::open_mesh_spec(keyring, &self.name, &mut spec).map_err(|reason| {
            StoreError::Sealed {
                key: crate::domain::ResourceKey::mesh(&MeshName::from_stored(self.name.clone())),
                reason,
            }
        })?;
        Ok(self.with_spec(spec))
    }

    /// The row as a Mesh with `spec`: after a write, which knows the spec it sealed.
    pub fn with_spec(self, spec: MeshSpec) -> Mesh {
        Mesh {
            name: MeshName::from_stored(self.name),
            spec,
            labels: Labels::from_stored(self.labels.0),
            meta: Meta {
                version: self.version,
                creation_time: self.creation_time,
                modification_time: self.modification_time,
            },
        }
    }
}

/// An `external_services` row.
#[derive(sqlx::FromRow)]
pub struct ExternalServiceRow {
    mesh: String,
    name: String,
    version: i64,
    creation_time: DateTime<Utc>,
    modification_time: DateTime<Utc>,
    labels: Json<BTreeMap<String, String>>,
    spec: Json<MeshSpec>,
}

impl ExternalServiceRow {
    /// The row's version.
    pub fn version(&self) -> i64 {
        self.version
    }

    /// The row's labels.
    pub fn labels(&self) -> Labels {
        Labels::from_stored(self.labels.0.clone())
    }

    /// The stored ExternalService, its inline client key opened with `keyring`.
    ///
    /// # Errors
    /// [`StoreError::Sealed`] naming it when the key does not open (or is stored unsealed
    /// while the store has a keyring).
    pub fn open(self, keyring: Option<&Keyring>) -> Result<ExternalService, StoreError> {
        let mut spec = self.spec.0.clone();
        crate::sealing::open_external_service_spec(keyring, &self.mesh, &self.name, &mut spec)
            .map_err(|reason| StoreError::Sealed {
                key: crate::domain::external_service_key(
                    &MeshName::from_stored(self.mesh.clone()),
                    &ResourceName::from_stored(self.name.clone()),
                ),
                reason,
            })?;
        Ok(self.with_spec(spec))
    }

    /// The row as an ExternalService with `spec`: after a write, which knows what it sealed.
    pub fn with_spec(self, spec: MeshSpec) -> ExternalService {
        ExternalService {
            mesh: MeshName::from_stored(self.mesh),
            name: ResourceName::from_stored(self.name),
            spec,
            labels: Labels::from_stored(self.labels.0),
            meta: Meta {
                version: self.version,
                creation_time: self.creation_time,
                modification_time: self.modification_time,
            },
        }
    }
}

/// An `external_services` row of a list page, with the count of all matches.
#[derive(sqlx::FromRow)]
pub struct ListedExternalServiceRow {
    #[sqlx(flatten)]
    pub row: ExternalServiceRow,
    pub total: i64,
}

/// A `meshes` row of a list page, with the count of all matches.
#[derive(sqlx::FromRow)]
pub struct ListedMeshRow {
    #[sqlx(flatten)]
    pub row: MeshRow,
    pub total: i64,
}
