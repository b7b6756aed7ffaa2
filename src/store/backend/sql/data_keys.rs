//! The `data_keys` table: the data keys (DEKs) of envelope encryption, each stored only
//! wrapped by a key-encryption key (see `crate::envelope` for the design). The store keeps
//! them and never sees one unwrapped.

use super::SqlStore;
use super::statements::query_as;
use super::tx::{RunOnStore, TxError};
use crate::store::backend::db_error::Op;
use crate::store::contract::{Result, StoreError};
use chrono::{DateTime, Utc};

/// A data key as stored: wrapped.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredDataKey {
    /// Its id: what a sealed value's `key_id` names.
    pub id: String,
    /// The key-encryption key that wraps it, by its source's name for it.
    pub kek: String,
    /// The wrapped key (the KEK source's format).
    pub wrapped: Vec<u8>,
    /// When it was made.
    pub created: DateTime<Utc>,
    /// When it starts sealing new writes: of the keys whose time has come, the latest seals
    /// (see `crate::envelope`).
    pub seals_from: DateTime<Utc>,
}

/// A data key wrapped again: by `kek` now, where it was wrapped by `was`.
#[derive(Debug, Clone)]
pub struct Rewrapped {
    /// The data key's id.
    pub id: String,
    /// The KEK that wrapped it until now.
    pub was: String,
    /// The KEK that wraps it from now on.
    pub kek: String,
    /// It, wrapped by `kek`.
    pub wrapped: Vec<u8>,
}

const DATA_KEYS: &str =
    "SELECT id, kek, wrapped, created, seals_from FROM data_keys ORDER BY created, id";

const ADD_DATA_KEY: &str = "INSERT INTO data_keys (id, kek, wrapped, created, seals_from) \
     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING RETURNING id";

const REWRAP_DATA_KEY: &str =
    "UPDATE data_keys SET kek = $1, wrapped = $2 WHERE id = $3 AND kek = $4 RETURNING id";

impl_for_sql_databases! {
impl [SqlStore<DB>] {
    /// Every data key, oldest first.
    ///
    /// # Errors
    /// The database failed.
    pub async fn data_keys(&self) -> Result<Vec<StoredDataKey>> {
        query_as::<DB, StoredDataKey>(DATA_KEYS).fetch_all_via(self, Op::Other).await
    }

    /// Stores a new data key, unless a key with its id is stored already (another server
    /// made the same scheduled key first). Returns whether it was stored.
    ///
    /// # Errors
    /// The database failed.
    pub async fn add_data_key(&self, key: &StoredDataKey) -> Result<bool> {
        let added = query_as::<DB, (String,)>(ADD_DATA_KEY)
            .bind(key.id.clone())
            .bind(key.kek.clone())
            .bind(key.wrapped.clone())
            .bind(key.created)
            .bind(key.seals_from)
            .fetch_optional_via(self, Op::Other)
            .await?;
        Ok(added.is_some())
    }

    /// Replaces the wrapping of data keys, all or none, in one transaction: a KEK rotation
    /// touches these rows only, never a secret's.
    ///
    /// # Errors
    /// [`StoreError::Internal`] naming the key when a key is gone or no longer wrapped by
    /// the KEK it was (another rotation ran meanwhile): nothing is changed. Or the
    /// database failed.
    pub async fn rewrap_data_keys(&self, keys: Vec<Rewrapped>) -> Result<u64> {
        self.in_write_transaction::<_, StoreError, _>(Op::Other, move |tx| {
            Box::pin(async move {
                for key in &keys {
                    let updated = query_as::<DB, (String,)>(REWRAP_DATA_KEY)
                        .bind(key.kek.clone())
                        .bind(key.wrapped.clone())
                        .bind(key.id.clone())
                        .bind(key.was.clone())
                        .fetch_optional(&mut *tx)
                        .await?;
                    if updated.is_none() {
                        return Err(TxError::Refused(StoreError::Internal(
                            crate::store::contract::DatabaseError::new(format!(
                                "data key {:?} is no longer wrapped by {:?}: another rotation ran meanwhile; nothing was changed, run it again",
                                key.id, key.was
                            )),
                        )));
                    }
                }
                Ok(keys.len() as u64)
            })
        })
        .await
    }
}
}
