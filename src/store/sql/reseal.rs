//! Key rotation and what it reports: rows per key id, rows that do not open, and
//! re-sealing secrets and Mesh inline CA keys with the active key, online.

use super::rows::SealedRow;
use super::statements::query_as;
use super::statements::{RESEAL_MESH, ROWS_PER_KEY, SealedRows};
use super::tx::{RunOnStore, TxError};
use super::{SqlStore, seal, seal_spec};
use crate::domain::{MeshName, MeshSpec, ResourceKey, ValidationError};
use crate::sealing::OpenError;
use crate::store::error::Op;
use crate::store::{Result, StoreError};
use sqlx::AssertSqlSafe;
use sqlx::types::Json;

/// What one [`SqlStore::reseal_batch`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResealBatch {
    /// The id to continue after.
    pub last_id: i64,
    /// Rows now sealed with the active key.
    pub resealed: u64,
    /// Rows changed concurrently (and so sealed by that write).
    pub skipped: u64,
    /// No rows remain after this batch.
    pub finished: bool,
}

/// How many secrets a key id seals (`key_id` `None`: plaintext rows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyUsage {
    /// The key id, `None` for plaintext rows.
    pub key_id: Option<String>,
    /// Rows sealed with it.
    pub rows: u64,
    /// Of those, rows still in seal format 1 (not bound to their write): `rotate-keys`
    /// rewrites them.
    pub format_1: u64,
}

/// A stored resource whose value does not open, for `rotate-keys --status`.
#[derive(Debug)]
pub struct Unreadable {
    /// The resource.
    pub key: ResourceKey,
    /// The version, for a version kept in history (`None`: the current one).
    pub version: Option<i64>,
    /// Why.
    pub reason: OpenError,
}

impl_for_sql_databases! {
impl [SqlStore<DB>] {
    /// Rows per key id that sealed them (`None`: plaintext), for `rotate-keys --status`
    /// and the start-up check.
    ///
    /// # Errors
    /// The database failed.
    pub async fn rows_per_key(&self) -> Result<Vec<KeyUsage>> {
        let rows = query_as::<DB, (String, i64, i64)>(ROWS_PER_KEY)
            .fetch_all_via(self, Op::Other)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(id, n, format_1)| KeyUsage {
                key_id: (!id.is_empty()).then_some(id),
                rows: u64::try_from(n).unwrap_or(0),
                format_1: u64::try_from(format_1).unwrap_or(0),
            })
            .collect())
    }

    /// Every Mesh's name, version and stored spec (inline CA keys still sealed). Meshes are
    /// few (one per mesh of a control plane), so this reads them all.
    async fn stored_mesh_specs(&self) -> Result<Vec<(String, i64, Json<MeshSpec>)>> {
        query_as::<DB, (String, i64, Json<MeshSpec>)>(
            "SELECT name, version, spec FROM meshes ORDER BY name",
        )
        .fetch_all_via(self, Op::Other)
        .await
    }

    /// Key ids in use: by secrets, and by Mesh inline CA keys.
    async fn key_ids_in_use(&self) -> Result<Vec<String>> {
        let mut ids: Vec<String> = self
            .rows_per_key()
            .await?
            .into_iter()
            .filter_map(|usage| usage.key_id)
            .collect();
        for (_, _, Json(spec)) in self.stored_mesh_specs().await? {
            ids.extend(crate::sealing::mesh_spec_key_ids(&spec).0);
        }
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    /// Whether anything in the store is sealed (a store that is must never get a freshly
    /// generated keyring in place of a lost one).
    ///
    /// # Errors
    /// The database failed.
    pub async fn holds_sealed_values(&self) -> Result<bool> {
        Ok(!self.key_ids_in_use().await?.is_empty())
    }

    /// Secrets and Meshes whose sealed values do not open with this store's keyring
    /// (altered, moved, sealed with a key it lacks, or plaintext while it has a keyring),
    /// for `rotate-keys --status`. Reads every row, in batches.
    ///
    /// # Errors
    /// The database failed.
    pub async fn unreadable(&self) -> Result<Vec<Unreadable>> {
        let keyring = self.options.keyring.as_deref();
        let mut found = Vec::new();
        for table in SealedRows::ALL {
            let mut after = 0;
            loop {
                let rows = query_as::<DB, SealedRow>(AssertSqlSafe(table.after()))
                    .bind(after)
                    .bind(500_i64)
                    .fetch_all_via(self, Op::Other)
                    .await?;
                let Some(last) = rows.last() else { break };
                after = last.id;
                for row in rows {
                    if let Err(reason) = row.value.open(keyring, false) {
                        found.push(Unreadable {
                            key: row.value.key().resource_key(),
                            version: (table == SealedRows::History).then_some(row.version),
                            reason,
                        });
                    }
                }
            }
        }
        for (name, _, Json(mut spec)) in self.stored_mesh_specs().await? {
            if let Err(reason) =
                crate::sealing::open_mesh_spec(keyring, false, &name, &mut spec)
            {
                found.push(Unreadable {
                    key: ResourceKey::mesh(&MeshName::from_stored(name)),
                    version: None,
                    reason,
                });
            }
        }
        Ok(found)
    }

    /// Refuses a keyring that lacks a key id some row is sealed with (or no keyring when
    /// any row is sealed): better to stop at start-up, naming the ids, than fail every read.
    ///
    /// # Errors
    /// [`StoreError::MissingKeys`].
    pub async fn check_keyring(&self) -> Result<()> {
        let keyring = self.options.keyring.as_deref();
        let missing: Vec<String> = self
            .key_ids_in_use()
            .await?
            .into_iter()
            .filter(|id| !keyring.is_some_and(|k| k.contains(id)))
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(StoreError::MissingKeys { key_ids: missing })
        }
    }

    /// Re-seals with the active key the next `size` `rows` after id `after` that are sealed
    /// with another key or not at all, in one transaction. Each row is written only if its
    /// version is still the one read, so a concurrent write (which seals with the active
    /// key itself) is never overwritten; its version and times do not change.
    ///
    /// # Errors
    /// No keyring, a row that does not open (named), or the database failed.
    pub async fn reseal_batch(&self, rows: SealedRows, after: i64, size: u32) -> Result<ResealBatch> {
        let Some(keyring) = self.options.keyring.clone() else {
            return Err(StoreError::Invalid(ValidationError::single(
                "encryption-keys",
                "rotating keys needs a keyring",
            )));
        };
        self.in_write_transaction::<_, StoreError, _>(Op::Other, move |tx| {
            Box::pin(async move {
                let table = rows;
                let rows = query_as::<DB, SealedRow>(AssertSqlSafe(table.to_reseal()))
                    .bind(after)
                    .bind(keyring.active_id().to_owned())
                    .bind(i64::from(size))
                    .fetch_all(&mut *tx)
                    .await?;
                let mut batch = ResealBatch {
                    last_id: after,
                    resealed: 0,
                    skipped: 0,
                    finished: rows.len() < size as usize,
                };
                for row in rows {
                    batch.last_id = row.id;
                    let key = row.value.key();
                    // Plaintext rows are sealed here whatever `accept_plaintext_rows` says:
                    // that is how a store from before encryption at rest gets sealed.
                    let opened = row.value.open(Some(&keyring), true);
                    let plaintext = match opened {
                        Ok(plaintext) => zeroize::Zeroizing::new(plaintext),
                        Err(reason) => {
                            return Err(TxError::Refused(StoreError::Sealed {
                                key: key.resource_key(),
                                reason,
                            }));
                        }
                    };
                    let stored = seal(Some(&keyring), &key, &plaintext);
                    let written = query_as::<DB, (i64,)>(AssertSqlSafe(table.reseal()))
                        .bind(stored.bytes)
                        .bind(stored.key_id)
                        .bind(stored.write_id)
                        .bind(row.id)
                        .bind(row.version)
                        .fetch_optional(&mut *tx)
                        .await?;
                    if written.is_some() {
                        batch.resealed += 1;
                    } else {
                        batch.skipped += 1;
                    }
                }
                Ok(batch)
            })
        })
        .await
    }

    /// Re-seals with the active key every Mesh whose inline CA keys are sealed with another
    /// key or stored unsealed; each Mesh only if its version is still the one read (its
    /// version and times do not change). Returns how many Meshes were rewritten.
    ///
    /// # Errors
    /// No keyring, a Mesh whose keys do not open (named), or the database failed.
    pub async fn reseal_meshes(&self) -> Result<u64> {
        let Some(keyring) = self.options.keyring.clone() else {
            return Err(StoreError::Invalid(ValidationError::single(
                "encryption-keys",
                "rotating keys needs a keyring",
            )));
        };
        let mut resealed = 0;
        for (name, version, Json(stored)) in self.stored_mesh_specs().await? {
            let (ids, plaintext) = crate::sealing::mesh_spec_key_ids(&stored);
            if !plaintext && ids.iter().all(|id| id == keyring.active_id()) {
                continue;
            }
            let mut spec = stored;
            crate::sealing::open_mesh_spec(Some(&keyring), true, &name, &mut spec).map_err(
                |reason| StoreError::Sealed {
                    key: ResourceKey::mesh(&MeshName::from_stored(name.clone())),
                    reason,
                },
            )?;
            let mesh = MeshName::from_stored(name);
            let written = query_as::<DB, (i64,)>(RESEAL_MESH)
                .bind(Json(seal_spec(Some(&keyring), &mesh, &spec)))
                .bind(mesh.as_str().to_owned())
                .bind(version)
                .fetch_optional_via(self, Op::Other)
                .await?;
            resealed += u64::from(written.is_some());
        }
        Ok(resealed)
    }
}
}
