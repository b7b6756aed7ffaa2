//! Key rotation and what it reports: rows per key id, rows that do not open, and
//! re-sealing secrets and Mesh inline CA keys with the active key, online. And the one way
//! plaintext becomes sealed: [`SqlStore::seal_plaintext`], which the operator asks for by
//! name (`kuma-secrets seal-plaintext`), never a side effect of rotation.

use super::rows::{PlaintextRow, SealedRow, StoredMeshSpec};
use super::statements::query_as;
use super::statements::{
    FULLY_SEALED_AT, MARK_FULLY_SEALED, RESEAL_MESH, ROWS_PER_KEY, SealedRows,
};
use super::tx::{RunOnStore, TxError};
use super::{SqlStore, now, seal, seal_spec};
use crate::domain::{MeshName, ResourceKey, ValidationError};
use crate::sealing::OpenError;
use crate::store::backend::db_error::Op;
use crate::store::contract::{Result, StoreError};
use chrono::{DateTime, Utc};
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

/// A value stored in clear in a store that seals: a secret's current version or a kept
/// one, or a Mesh's inline CA key. Listed (with its times) before `seal-plaintext` writes
/// anything.
#[derive(Debug, Clone)]
pub struct PlaintextValue {
    /// Which table holds it (a Mesh's key: `None`).
    pub rows: Option<SealedRows>,
    /// The row's id in that table (0 for a Mesh).
    pub id: i64,
    /// The resource.
    pub key: ResourceKey,
    /// Its version (a kept version's own number).
    pub version: i64,
    /// When the resource was created.
    pub creation_time: DateTime<Utc>,
    /// When this version was written.
    pub modification_time: DateTime<Utc>,
    /// Whether it grants authority (see [`crate::domain::SecretKey::grants_authority`]; a
    /// Mesh CA key always does): such a value is never sealed from plaintext.
    pub grants_authority: bool,
}

/// Why `seal-plaintext` refused to seal anything.
#[derive(Debug, thiserror::Error)]
pub enum SealRefusal {
    /// The store was fully sealed before: plaintext now was written behind its back.
    #[error(
        "the store has been fully sealed since {since}: {count} values stored in clear since can only have been written behind the service's back; nothing was sealed: delete them (and look for how they got there)"
    )]
    Tampered {
        /// When the store was first found fully sealed.
        since: DateTime<Utc>,
        /// How many plaintext values there are now.
        count: usize,
    },
    /// Some values grant authority: never sealed from plaintext.
    #[error(
        "{} grant authority (token signing keys, the admin token, revocation lists, CA keys) and are stored in clear: they are never sealed from plaintext, and nothing was sealed; delete them with their kept versions (kuma-secrets delete … --purge, or DELETE …?purge=true) and let the service generate new ones (a Mesh: apply it again with its key through the API), then run seal-plaintext again", names.join(", ")
    )]
    Authority {
        /// The values, named.
        names: Vec<String>,
    },
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl PlaintextValue {
    /// `Secret "tls" in Mesh "default" version 3`, for lists and messages.
    pub fn describe(&self) -> String {
        match self.rows {
            Some(SealedRows::History) => format!("{} kept version {}", self.key, self.version),
            Some(SealedRows::Current) => format!("{} version {}", self.key, self.version),
            None => format!("{}: an inline CA key", self.key),
        }
    }
}

/// `$1` spec, `$2` mesh, `$3` name, `$4` version read: a re-sealed spec, the version
/// unchanged.
const RESEAL_EXTERNAL_SERVICE: &str = "UPDATE external_services SET spec = $1 \
     WHERE mesh = $2 AND name = $3 AND version = $4 RETURNING version";

/// An ExternalService's stored spec, for key rotation.
#[derive(sqlx::FromRow)]
pub struct StoredExternalServiceSpec {
    mesh: String,
    name: String,
    version: i64,
    spec: Json<crate::domain::MeshSpec>,
}

impl StoredExternalServiceSpec {
    fn key(&self) -> ResourceKey {
        crate::domain::external_service_key(
            &MeshName::from_stored(self.mesh.clone()),
            &crate::domain::ResourceName::from_stored(self.name.clone()),
        )
    }
}

impl_for_sql_databases! {
impl [SqlStore<DB>] {
    /// Seals `plaintext`, the value of `row` (a row of `table`), with the keyring's active
    /// key and writes it over the row if the row is still at the version read: whether it
    /// was. Its version and times do not change.
    async fn overwrite_sealed(
        tx: &mut DB::Connection,
        table: SealedRows,
        keyring: &crate::sealing::Keyring,
        row: &SealedRow,
        plaintext: &[u8],
    ) -> sqlx::Result<bool> {
        let stored = seal(Some(keyring), &row.value.key(), plaintext);
        let written = query_as::<DB, (i64,)>(AssertSqlSafe(table.reseal()))
            .bind(stored.bytes)
            .bind(stored.key_id)
            .bind(stored.write_id)
            .bind(row.id)
            .bind(row.version)
            .fetch_optional(&mut *tx)
            .await?;
        Ok(written.is_some())
    }

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

    /// Every Mesh's name, version, times and stored spec (inline CA keys still sealed).
    /// Meshes are few (one per mesh of a control plane), so this reads them all.
    async fn stored_mesh_specs(&self) -> Result<Vec<StoredMeshSpec>> {
        query_as::<DB, StoredMeshSpec>(
            "SELECT name, version, creation_time, modification_time, spec FROM meshes ORDER BY name",
        )
        .fetch_all_via(self, Op::Other)
        .await
    }

    /// Every row `select` picks from `table` (`$1` after id, `$2` batch size: one of
    /// [`SealedRows`]' keyset walks), in id order, in batches of 500, each handed to `each`.
    async fn walk_rows<R>(
        &self,
        table: SealedRows,
        select: fn(SealedRows) -> String,
        id_of: fn(&R) -> i64,
        mut each: impl FnMut(R),
    ) -> Result<()>
    where
        R: for<'r> sqlx::FromRow<'r, DB::Row> + Send + Unpin,
    {
        let mut after = 0;
        loop {
            let rows = query_as::<DB, R>(AssertSqlSafe(select(table)))
                .bind(after)
                .bind(500_i64)
                .fetch_all_via(self, Op::Other)
                .await?;
            let Some(last) = rows.last() else {
                return Ok(());
            };
            after = id_of(last);
            rows.into_iter().for_each(&mut each);
        }
    }

    /// Key ids in use (by secrets, and by Mesh inline CA keys), and whether any value is
    /// stored in clear.
    async fn seals_in_use(&self) -> Result<(Vec<String>, bool)> {
        let mut ids = Vec::new();
        let mut plaintext = false;
        for usage in self.rows_per_key().await? {
            match usage.key_id {
                Some(id) => ids.push(id),
                None => plaintext = true,
            }
        }
        for mesh in self.stored_mesh_specs().await? {
            let seals = crate::sealing::mesh_spec_seals(&mesh.spec);
            ids.extend(seals.key_ids);
            plaintext |= seals.plaintext;
        }
        for service in self.stored_external_service_specs().await? {
            let seals = crate::sealing::external_service_spec_seals(&service.spec.0);
            ids.extend(seals.key_ids);
            plaintext |= seals.plaintext;
        }
        ids.sort();
        ids.dedup();
        Ok((ids, plaintext))
    }

    /// Whether anything in the store is sealed (a store that is must never get a freshly
    /// generated keyring in place of a lost one).
    ///
    /// # Errors
    /// The database failed.
    pub async fn holds_sealed_values(&self) -> Result<bool> {
        Ok(!self.seals_in_use().await?.0.is_empty())
    }

    /// Secrets and Meshes whose sealed values do not open with this store's keyring
    /// (altered, moved, sealed with a key it lacks, or plaintext while it has a keyring),
    /// for `rotate-keys --status`. Reads every row, in batches.
    ///
    /// # Errors
    /// The database failed.
    pub async fn unreadable(&self) -> Result<Vec<Unreadable>> {
        let keyring = self.options.keyring();
        let keyring = keyring.as_deref();
        let mut found = Vec::new();
        for table in SealedRows::ALL {
            self.walk_rows(table, SealedRows::after, |row: &SealedRow| row.id, |row| {
                if let Err(reason) = row.value.open(keyring, false) {
                    found.push(Unreadable {
                        key: row.value.key().resource_key(),
                        version: (table == SealedRows::History).then_some(row.version),
                        reason,
                    });
                }
            })
            .await?;
        }
        for StoredMeshSpec { name, spec: Json(mut spec), .. } in self.stored_mesh_specs().await? {
            if let Err(reason) =
                crate::sealing::open_mesh_spec(keyring, &name, &mut spec)
            {
                found.push(Unreadable {
                    key: ResourceKey::mesh(&MeshName::from_stored(name)),
                    version: None,
                    reason,
                });
            }
        }
        for stored in self.stored_external_service_specs().await? {
            let mut spec = stored.spec.0.clone();
            if let Err(reason) = crate::sealing::open_external_service_spec(keyring, &stored.mesh, &stored.name, &mut spec) {
                found.push(Unreadable { key: stored.key(), version: None, reason });
            }
        }
        Ok(found)
    }

    /// At open: refuses a keyring that lacks a key id some row is sealed with (or no
    /// keyring when any row is sealed): better to stop at start-up, naming the ids, than
    /// fail every read. With a keyring, records the store as fully sealed when no value is
    /// in clear; once it has been, `accept_plaintext_rows` is turned off (a plaintext row
    /// now was written behind the service's back), saying so in the log.
    ///
    /// # Errors
    /// [`StoreError::MissingKeys`]; the database failed.
    pub(in crate::store::backend) async fn check_sealing(&mut self) -> Result<()> {
        if !self.options.check_keys {
            return Ok(());
        }
        let (in_use, plaintext) = self.seals_in_use().await?;
        let keyring = self.options.keyring();
        let keyring = keyring.as_deref();
        let missing: Vec<String> = in_use
            .into_iter()
            .filter(|id| !keyring.is_some_and(|k| k.contains(id)))
            .collect();
        if !missing.is_empty() {
            return Err(StoreError::MissingKeys { key_ids: missing });
        }
        if keyring.is_none() {
            return Ok(());
        }
        let mut since = self.fully_sealed_since().await?;
        if since.is_none() && !plaintext && !self.options.reads_only {
            query_as::<DB, (i64,)>(MARK_FULLY_SEALED)
                .bind(now())
                .fetch_optional_via(self, Op::Other)
                .await?;
            since = self.fully_sealed_since().await?;
        }
        if let Some(since) = since
            && self.options.accept_plaintext_rows
        {
            tracing::warn!(
                %since,
                "--accept-plaintext-rows is ignored: this store has been fully sealed since then, so a value stored in clear now was written behind the service's back"
            );
            self.options.accept_plaintext_rows = false;
        }
        Ok(())
    }

    /// Re-seals with the active key the next `size` `rows` after id `after` that are sealed
    /// with another key or not at all, in one transaction. Each row is written only if its
    /// version is still the one read, so a concurrent write (which seals with the active
    /// key itself) is never overwritten; its version and times do not change.
    ///
    /// # Errors
    /// No keyring, a row that does not open (named), or the database failed.
    pub async fn reseal_batch(&self, rows: SealedRows, after: i64, size: u32) -> Result<ResealBatch> {
        let Some(keyring) = self.options.keyring() else {
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
                    // Only sealed rows are selected: rotation never seals plaintext.
                    let opened = row.value.open(Some(&keyring), false);
                    let plaintext = match opened {
                        Ok(plaintext) => zeroize::Zeroizing::new(plaintext),
                        Err(reason) => {
                            return Err(TxError::Refused(StoreError::Sealed {
                                key: key.resource_key(),
                                reason,
                            }));
                        }
                    };
                    if Self::overwrite_sealed(&mut *tx, table, &keyring, &row, &plaintext).await? {
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
    /// key or in format 1 (a Mesh with a key in clear is left alone); each Mesh only if its version is still the one read (its
    /// version and times do not change). Returns how many Meshes were rewritten.
    ///
    /// # Errors
    /// No keyring, a Mesh whose keys do not open (named), or the database failed.
    pub async fn reseal_meshes(&self) -> Result<u64> {
        let Some(keyring) = self.options.keyring() else {
            return Err(StoreError::Invalid(ValidationError::single(
                "encryption-keys",
                "rotating keys needs a keyring",
            )));
        };
        let mut resealed = 0;
        for StoredMeshSpec { name, version, spec: Json(stored), .. } in self.stored_mesh_specs().await? {
            let seals = crate::sealing::mesh_spec_seals(&stored);
            // A key in clear is never sealed here (`plaintext_values` lists it).
            if seals.plaintext
                || (!seals.format_1 && seals.key_ids.iter().all(|id| id == keyring.active_id()))
            {
                continue;
            }
            let mut spec = stored;
            crate::sealing::open_mesh_spec(Some(&keyring), &name, &mut spec).map_err(
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

    /// Re-seals with the active key every ExternalService whose inline client key is sealed
    /// with another key (one in clear is left alone), each only if its version is still the
    /// one read (its version and times do not change). Returns how many were rewritten.
    ///
    /// # Errors
    /// No keyring, an ExternalService whose key does not open (named), or the database
    /// failed.
    pub async fn reseal_external_services(&self) -> Result<u64> {
        let Some(keyring) = self.options.keyring() else {
            return Err(StoreError::Invalid(ValidationError::single(
                "encryption-keys",
                "rotating keys needs a keyring",
            )));
        };
        let mut resealed = 0;
        for stored in self.stored_external_service_specs().await? {
            let seals = crate::sealing::external_service_spec_seals(&stored.spec.0);
            if seals.plaintext || seals.key_ids.iter().all(|id| id == keyring.active_id()) {
                continue;
            }
            let mut spec = stored.spec.0.clone();
            crate::sealing::open_external_service_spec(Some(&keyring), &stored.mesh, &stored.name, &mut spec)
                .map_err(|reason| StoreError::Sealed { key: stored.key(), reason })?;
            crate::sealing::seal_external_service_spec(&keyring, &stored.mesh, &stored.name, &mut spec);
            let written = query_as::<DB, (i64,)>(RESEAL_EXTERNAL_SERVICE)
                .bind(Json(spec))
                .bind(stored.mesh.clone())
                .bind(stored.name.clone())
                .bind(stored.version)
                .fetch_optional_via(self, Op::Other)
                .await?;
            resealed += u64::from(written.is_some());
        }
        Ok(resealed)
    }

    /// Every ExternalService with an inline client key: its stored spec (key still sealed).
    async fn stored_external_service_specs(&self) -> Result<Vec<StoredExternalServiceSpec>> {
        query_as::<DB, StoredExternalServiceSpec>(
            "SELECT mesh, name, version, spec FROM external_services ORDER BY mesh, name",
        )
        .fetch_all_via(self, Op::Other)
        .await
        .map(|specs| {
            specs
                .into_iter()
                .filter(|s| {
                    s.spec.0.get("networking")
                        .and_then(|n| n.get("tls"))
                        .and_then(|t| t.get("clientKey"))
                        .is_some()
                })
                .collect()
        })
    }

    /// When the store was first found fully sealed, if it was.
    ///
    /// # Errors
    /// The database failed.
    pub async fn fully_sealed_since(&self) -> Result<Option<DateTime<Utc>>> {
        Ok(query_as::<DB, (Option<DateTime<Utc>>,)>(FULLY_SEALED_AT)
            .fetch_optional_via(self, Op::Other)
            .await?
            .and_then(|(at,)| at))
    }

    /// Every value stored in clear: secrets' current and kept versions (`key_id` NULL) and
    /// Mesh inline CA keys, with their times, in table then id order.
    ///
    /// # Errors
    /// The database failed.
    pub async fn plaintext_values(&self) -> Result<Vec<PlaintextValue>> {
        let mut found = Vec::new();
        for table in SealedRows::ALL {
            self.walk_rows(table, SealedRows::plaintext_after, |row: &PlaintextRow| row.id, |row| {
                let key = super::rows::stored_key(row.mesh.as_deref(), &row.name);
                found.push(PlaintextValue {
                    rows: Some(table),
                    id: row.id,
                    grants_authority: key.grants_authority(),
                    key: key.resource_key(),
                    version: row.version,
                    creation_time: row.creation_time,
                    modification_time: row.modification_time,
                });
            })
            .await?;
        }
        for mesh in self.stored_mesh_specs().await? {
            if crate::sealing::mesh_spec_seals(&mesh.spec).plaintext {
                found.push(PlaintextValue {
                    rows: None,
                    id: 0,
                    key: ResourceKey::mesh(&MeshName::from_stored(mesh.name)),
                    version: mesh.version,
                    creation_time: mesh.creation_time,
                    modification_time: mesh.modification_time,
                    grants_authority: true,
                });
            }
        }
        Ok(found)
    }

    /// Why `listed` (from [`Self::plaintext_values`]) may not be sealed, checked before
    /// anything is written: the store was fully sealed before (plaintext now is
    /// tampering), or a value grants authority.
    ///
    /// # Errors
    /// [`SealRefusal`]; the database failed.
    pub async fn check_sealable(&self, listed: &[PlaintextValue]) -> std::result::Result<(), SealRefusal> {
        if let Some(since) = self.fully_sealed_since().await? {
            return Err(SealRefusal::Tampered { since, count: listed.len() });
        }
        let authority: Vec<String> = listed
            .iter()
            .filter(|value| value.grants_authority)
            .map(PlaintextValue::describe)
            .collect();
        if authority.is_empty() {
            Ok(())
        } else {
            Err(SealRefusal::Authority { names: authority })
        }
    }

    /// Seals with the active key exactly the plaintext values `listed` (from
    /// [`Self::plaintext_values`], shown to the operator first): each only if it is still
    /// the row listed (same id and version, still in clear), in batches of one transaction,
    /// calling `progress` with the count sealed so far after each. Refuses before writing
    /// anything as [`Self::check_sealable`] does; a batch that meets a
    /// row granting authority all the same (renamed behind the service's back meanwhile)
    /// rolls back. Returns how many values were sealed; values that changed since they
    /// were listed are left as they are (and a later run lists them again).
    ///
    /// # Errors
    /// [`SealRefusal`]; no keyring; the database failed.
    pub async fn seal_plaintext(
        &self,
        listed: &[PlaintextValue],
        batch: usize,
        mut progress: impl FnMut(u64) + Send,
    ) -> std::result::Result<u64, SealRefusal> {
        let Some(keyring) = self.options.keyring() else {
            return Err(SealRefusal::Store(StoreError::Invalid(ValidationError::single(
                "encryption-keys",
                "sealing needs a keyring",
            ))));
        };
        self.check_sealable(listed).await?;
        let mut sealed = 0;
        for table in SealedRows::ALL {
            let rows: Vec<(i64, i64)> = listed
                .iter()
                .filter(|value| value.rows == Some(table))
                .map(|value| (value.id, value.version))
                .collect();
            for chunk in rows.chunks(batch.max(1)) {
                let chunk = chunk.to_vec();
                let keyring = keyring.clone();
                sealed += self
                    .in_write_transaction::<_, SealRefusal, _>(Op::Other, move |tx| {
                        Box::pin(async move {
                            let mut sealed = 0;
                            for (id, version) in chunk {
                                let row = query_as::<DB, SealedRow>(AssertSqlSafe(table.plaintext_as_listed()))
                                    .bind(id)
                                    .bind(version)
                                    .fetch_optional(&mut *tx)
                                    .await?;
                                let Some(row) = row else { continue };
                                let key = row.value.key();
                                if key.grants_authority() {
                                    return Err(TxError::Refused(SealRefusal::Authority {
                                        names: vec![format!("{} version {version}", key.resource_key())],
                                    }));
                                }
                                let plaintext = zeroize::Zeroizing::new(
                                    row.value.open(None, true).map_err(|reason| {
                                        TxError::Refused(SealRefusal::Store(StoreError::Sealed {
                                            key: key.resource_key(),
                                            reason,
                                        }))
                                    })?,
                                );
                                let written = Self::overwrite_sealed(&mut *tx, table, &keyring, &row, &plaintext).await?;
                                sealed += u64::from(written);
                            }
                            Ok(sealed)
                        })
                    })
                    .await?;
                progress(sealed);
            }
        }
        Ok(sealed)
    }
}
}
