//! Version history on SQL: reading a kept version, listing versions, rolling back,
//! restoring a deleted secret, purging, the history limit and the pruning of deleted
//! secrets' histories. The rows themselves are written by triggers (migration
//! `secret_history`); see `store::history` for the rules.

use super::rows::SecretRow;
use super::statements::query_as;
use super::statements::{Keyed, bind_key};
use super::tx::{RunOnStore, TxError};
use super::{SqlStore, labels_json, now, seal, writer};
use crate::domain::{Secret, SecretKey};
use crate::store::backend::db_error::Op;
use crate::store::contract::feed::Actor;
use crate::store::contract::history::VersionInfo;
use crate::store::contract::{Result, StoreError};
use chrono::{DateTime, Utc};
use sqlx::AssertSqlSafe;
use sqlx::types::Json;

/// `$1` version, `$2` name [, `$3` mesh]: a kept version of a secret that exists.
const GET_KEPT_VERSION: Keyed = Keyed {
    mesh: concat!(
        "SELECT ",
        secret_columns!(),
        " FROM secret_versions WHERE deleted_time IS NULL AND version = $1 AND name = $2 AND mesh = $3"
    ),
    global: concat!(
        "SELECT ",
        secret_columns!(),
        " FROM secret_versions WHERE deleted_time IS NULL AND version = $1 AND name = $2 AND mesh IS NULL"
    ),
};

/// `$1` name [, `$2` mesh]: the versions of a deleted secret, newest first.
const DELETED_VERSIONS: Keyed = Keyed {
    mesh: concat!(
        "SELECT ",
        secret_columns!(),
        " FROM secret_versions WHERE deleted_time IS NOT NULL AND name = $1 AND mesh = $2 ORDER BY version DESC"
    ),
    global: concat!(
        "SELECT ",
        secret_columns!(),
        " FROM secret_versions WHERE deleted_time IS NOT NULL AND name = $1 AND mesh IS NULL ORDER BY version DESC"
    ),
};

/// `$1` name [, `$2` mesh]: history as metadata, newest first.
const LIST_KEPT: Keyed = Keyed {
    mesh: "SELECT version, modification_time, actor, deleted_time FROM secret_versions \
           WHERE name = $1 AND mesh = $2 ORDER BY version DESC",
    global: "SELECT version, modification_time, actor, deleted_time FROM secret_versions \
             WHERE name = $1 AND mesh IS NULL ORDER BY version DESC",
};

/// `$1` name [, `$2` mesh]: the current version as metadata.
const CURRENT_META: Keyed = Keyed {
    mesh: "SELECT version, modification_time, actor, NULL AS deleted_time FROM secrets \
           WHERE name = $1 AND mesh = $2",
    global: "SELECT version, modification_time, actor, NULL AS deleted_time FROM secrets \
             WHERE name = $1 AND mesh IS NULL",
};

/// `$1` name [, `$2` mesh]: a deleted secret's history belongs to the secret again.
const UNDELETE_HISTORY: Keyed = Keyed {
    mesh: "UPDATE secret_versions SET deleted_time = NULL \
           WHERE deleted_time IS NOT NULL AND name = $1 AND mesh = $2",
    global: "UPDATE secret_versions SET deleted_time = NULL \
             WHERE deleted_time IS NOT NULL AND name = $1 AND mesh IS NULL",
};

/// `$1` name [, `$2` mesh]: every kept version, gone.
pub(super) const PURGE_HISTORY: Keyed = Keyed {
    mesh: "DELETE FROM secret_versions WHERE name = $1 AND mesh = $2 RETURNING version",
    global: "DELETE FROM secret_versions WHERE name = $1 AND mesh IS NULL RETURNING version",
};

/// `$1` name, `$2` mesh (NULL for global), `$3` version, `$4` creation time, `$5` time,
/// `$6` labels, `$7` data, `$8` key id, `$9` write id, `$10` actor, `$11` request id.
const RESTORE_SECRET: &str = concat!(
    "INSERT INTO secrets (name, mesh, version, creation_time, modification_time, labels, data, ",
    "key_id, write_id, actor, request_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING ",
    secret_columns!()
);

/// `$1` version, `$2` name [, `$3` mesh]: a secret's current version, renumbered.
const RENUMBER_CURRENT: Keyed = Keyed {
    mesh: "UPDATE secrets SET version = $1 WHERE version <> $1 AND name = $2 AND mesh = $3 \
           RETURNING version",
    global: "UPDATE secrets SET version = $1 WHERE version <> $1 AND name = $2 AND mesh IS NULL \
             RETURNING version",
};

/// `$1` name, `$2` mesh (NULL for global), `$3` slot, `$4` version, `$5` creation time,
/// `$6` modification time, `$7` labels, `$8` data, `$9` key id, `$10` write id, `$11` actor,
/// `$12` request id.
const INSERT_KEPT: &str = "INSERT INTO secret_versions (name, mesh, slot, version, creation_time, \
     modification_time, labels, data, key_id, write_id, actor, request_id) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING version";

/// `$1` the limit: records it if it changes (then the history rings are re-cut).
const SET_MAX_VERSIONS: &str = "UPDATE history_settings SET max_versions = $1 \
     WHERE id = 1 AND max_versions <> $1 RETURNING CAST(max_versions AS BIGINT)";

/// `$1` the new limit: of two kept versions of a secret that fall into one slot of the new
/// ring, the older goes.
const DROP_SLOT_COLLISIONS: &str = "DELETE FROM secret_versions WHERE EXISTS ( \
     SELECT 1 FROM secret_versions AS newer WHERE newer.name = secret_versions.name \
     AND (newer.mesh = secret_versions.mesh OR (newer.mesh IS NULL AND secret_versions.mesh IS NULL)) \
     AND newer.version > secret_versions.version \
     AND newer.version % $1 = secret_versions.version % $1) RETURNING version";

/// Moves every slot out of the way (negative), so the next statement can renumber them
/// without two rows meeting in one slot midway.
const PARK_SLOTS: &str = "UPDATE secret_versions SET slot = -1 - slot RETURNING version";

/// `$1` the new limit.
const RENUMBER_SLOTS: &str = "UPDATE secret_versions SET slot = version % $1 RETURNING version";
const GET_MAX_VERSIONS: &str =
    "SELECT CAST(max_versions AS BIGINT) FROM history_settings WHERE id = 1";

/// A version of a secret as `_versions` lists it (an implementation detail of
/// [`super::SqlStore`]).
#[derive(sqlx::FromRow)]
pub struct VersionRow {
    version: i64,
    modification_time: DateTime<Utc>,
    actor: Option<Json<Actor>>,
    deleted_time: Option<DateTime<Utc>>,
}

impl_for_sql_databases! {
impl [SqlStore<DB>] {
    /// Version `version` of the secret `key`: the current one or one kept in history.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] if the secret does not exist (a deleted secret included),
    /// [`StoreError::VersionNotFound`] if it exists but that version is not kept.
    pub(super) async fn get_secret_version_with(&self, key: &SecretKey, version: i64) -> Result<Secret> {
        let current = self.get_secret_row(key).await?;
        let row = if current.version() == version {
            current
        } else {
            let kept = query_as::<DB, SecretRow>(GET_KEPT_VERSION.for_key(key)).bind(version);
            bind_key(kept, key)
                .fetch_optional_via(self, Op::Other)
                .await?
                .ok_or_else(|| StoreError::VersionNotFound { key: key.resource_key(), version })?
        };
        row.open(self.options.keyring().as_deref(), self.options.accept_plaintext_rows)
    }

    /// The current version of `key` as the transaction `tx` sees it.
    async fn current_version_in(tx: &mut DB::Connection, key: &SecretKey) -> std::result::Result<Option<i64>, sqlx::Error> {
        let row = bind_key(
            query_as::<DB, (i64,)>(super::statements::GET_SECRET_VERSION.for_key(key)),
            key,
        )
        .fetch_optional(&mut *tx)
        .await?;
        Ok(row.map(|(v,)| v))
    }

    /// The versions of the secret `key`, newest first: the current one and those kept, or
    /// a deleted secret's kept versions (each with its deletion time).
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when the secret neither exists nor has kept versions.
    pub(super) async fn secret_versions_with(&self, key: &SecretKey) -> Result<Vec<VersionInfo>> {
        let current = bind_key(query_as::<DB, VersionRow>(CURRENT_META.for_key(key)), key)
            .fetch_optional_via(self, Op::Other)
            .await?;
        let kept = bind_key(query_as::<DB, VersionRow>(LIST_KEPT.for_key(key)), key)
            .fetch_all_via(self, Op::Other)
            .await?;
        let mut versions: Vec<VersionInfo> = current
            .into_iter()
            .map(|row| VersionInfo {
                version: row.version,
                modification_time: row.modification_time,
                current: true,
                actor: row.actor.map(|Json(a)| a),
                deletion_time: None,
            })
            .collect();
        let exists = !versions.is_empty();
        versions.extend(
            kept.into_iter()
                // A delete committed after the current row was read: not this secret's.
                .filter(|row| !exists || row.deleted_time.is_none())
                .map(|row| VersionInfo {
                    version: row.version,
                    modification_time: row.modification_time,
                    current: false,
                    actor: row.actor.map(|Json(a)| a),
                    deletion_time: row.deleted_time,
                }),
        );
        if versions.is_empty() {
            return Err(StoreError::NotFound(key.resource_key()));
        }
        Ok(versions)
    }

    /// Writes version `version`'s data and labels as a new version of the secret `key`
    /// (history is never rewritten), if it is at `expected_version` when one is given.
    ///
    /// # Errors
    /// [`StoreError::NotFound`], [`StoreError::VersionNotFound`], [`StoreError::Conflict`]
    /// when `expected_version` is not the current one.
    pub(super) async fn rollback_secret_with(
        &self,
        key: &SecretKey,
        version: i64,
        expected_version: Option<i64>,
    ) -> Result<Secret> {
        let keyring = self.options.keyring();
        let accept_plaintext = self.options.accept_plaintext_rows;
        let key = key.clone();
        self.in_write_transaction::<_, StoreError, _>(Op::Other, move |tx| {
            Box::pin(async move {
                let refuse = |e: StoreError| Err(TxError::Refused(e));
                let lock = format!(
                    "{}{}",
                    super::statements::GET_SECRET.for_key(&key),
                    DB::FOR_UPDATE
                );
                let current = bind_key(query_as::<DB, SecretRow>(AssertSqlSafe(lock)), &key)
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some(current) = current else {
                    return refuse(StoreError::NotFound(key.resource_key()));
                };
                let at = current.version();
                if let Some(expected) = expected_version
                    && expected != at
                {
                    return refuse(super::missed(key.resource_key(), Some(expected), Some(at)));
                }
                let source = if version == at {
                    current
                } else {
                    let kept = query_as::<DB, SecretRow>(GET_KEPT_VERSION.for_key(&key)).bind(version);
                    match bind_key(kept, &key).fetch_optional(&mut *tx).await? {
                        Some(row) => row,
                        None => {
                            return refuse(StoreError::VersionNotFound { key: key.resource_key(), version });
                        }
                    }
                };
                let source = match source.open(keyring.as_deref(), accept_plaintext) {
                    Ok(secret) => secret,
                    Err(e) => return refuse(e),
                };
                let stored = seal(keyring.as_deref(), &key, source.data.expose());
                let row = Self::update_secret_query(&key, stored, &source.labels, now(), at)
                    .fetch_one(&mut *tx)
                    .await?;
                Ok(row.with_data(source.data))
            })
        })
        .await
    }

    /// Brings the deleted secret `key` back from its history: version `version` (the
    /// newest kept if `None`) becomes a new version, above every kept one, and its history
    /// is the secret's again.
    ///
    /// # Errors
    /// [`StoreError::NotDeleted`] if the secret exists, [`StoreError::NotFound`] if nothing
    /// of it is kept, [`StoreError::VersionNotFound`] if that version is not.
    pub(super) async fn restore_secret_with(&self, key: &SecretKey, version: Option<i64>) -> Result<Secret> {
        let keyring = self.options.keyring();
        let accept_plaintext = self.options.accept_plaintext_rows;
        let max_size = self.options.max_secret_size;
        let resource = key.resource_key();
        let key = key.clone();
        // A secret created meanwhile under the name makes the insert collide: as a create,
        // that is AlreadyExists (409), not an internal error.
        self.in_write_transaction::<_, StoreError, _>(Op::Create(&resource), move |tx| {
            Box::pin(async move {
                let refuse = |e: StoreError| Err(TxError::Refused(e));
                if Self::current_version_in(tx, &key).await?.is_some() {
                    return refuse(StoreError::NotDeleted(key.resource_key()));
                }
                let kept = bind_key(query_as::<DB, SecretRow>(DELETED_VERSIONS.for_key(&key)), &key)
                    .fetch_all(&mut *tx)
                    .await?;
                let Some(newest) = kept.first().map(SecretRow::version) else {
                    return refuse(StoreError::NotFound(key.resource_key()));
                };
                let Some(source) = kept.into_iter().find(|row| version.is_none_or(|v| row.version() == v)) else {
                    let version = version.unwrap_or(newest);
                    return refuse(StoreError::VersionNotFound { key: key.resource_key(), version });
                };
                let creation_time = source.creation_time();
                let source = match source.open(keyring.as_deref(), accept_plaintext) {
                    Ok(secret) => secret,
                    Err(e) => return refuse(e),
                };
                if let Err(e) = source.data.check_size(max_size) {
                    return refuse(e.into());
                }
                bind_key(query_as::<DB, (i64,)>(UNDELETE_HISTORY.for_key(&key)), &key)
                    .fetch_optional(&mut *tx)
                    .await?;
                let stored = seal(keyring.as_deref(), &key, source.data.expose());
                let (actor, request_id) = writer();
                let row = query_as::<DB, SecretRow>(RESTORE_SECRET)
                    .bind(key.name().as_str().to_owned())
                    .bind(key.mesh().map(|m| m.as_str().to_owned()))
                    .bind(newest + 1)
                    .bind(creation_time)
                    .bind(now())
                    .bind(labels_json(&source.labels))
                    .bind(stored.bytes)
                    .bind(stored.key_id)
                    .bind(stored.write_id)
                    .bind(actor)
                    .bind(request_id)
                    .fetch_one(&mut *tx)
                    .await?;
                Ok(row.with_data(source.data))
            })
        })
        .await
    }

    /// Makes `versions` the kept versions of the existing secret `key`, and
    /// `current_version` the number of its current one (`copy --with-history`, after the
    /// current value was copied; its content is left as it is). Versions are sealed anew
    /// with this store's keyring, each bound to a write of its own; of those older than the
    /// current one, the newest this store's history limit has room for are kept. Returns
    /// how many.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] if the secret does not exist here.
    pub async fn replace_history(
        &self,
        key: &SecretKey,
        current_version: i64,
        versions: Vec<(Secret, Option<Actor>)>,
    ) -> Result<u64> {
        let keyring = self.options.keyring();
        let key = key.clone();
        self.in_write_transaction::<_, StoreError, _>(Op::Other, move |tx| {
            Box::pin(async move {
                if Self::current_version_in(tx, &key).await?.is_none() {
                    return Err(TxError::Refused(StoreError::NotFound(key.resource_key())));
                }
                let renumber = query_as::<DB, (i64,)>(RENUMBER_CURRENT.for_key(&key)).bind(current_version);
                bind_key(renumber, &key).fetch_optional(&mut *tx).await?;
                // Renumbering kept the version it replaced: start from nothing.
                bind_key(query_as::<DB, (i64,)>(PURGE_HISTORY.for_key(&key)), &key)
                    .fetch_all(&mut *tx)
                    .await?;
                let (keep,) = query_as::<DB, (i64,)>(GET_MAX_VERSIONS).fetch_one(&mut *tx).await?;
                let mut versions: Vec<_> = versions
                    .into_iter()
                    .filter(|(v, _)| v.meta.version < current_version)
                    .collect();
                versions.sort_by_key(|(v, _)| std::cmp::Reverse(v.meta.version));
                versions.truncate(usize::try_from(keep).unwrap_or(0));
                let (_, request_id) = writer();
                let mut kept = 0;
                for (version, actor) in versions {
                    let stored = seal(keyring.as_deref(), &key, version.data.expose());
                    query_as::<DB, (i64,)>(INSERT_KEPT)
                        .bind(key.name().as_str().to_owned())
                        .bind(key.mesh().map(|m| m.as_str().to_owned()))
                        .bind(version.meta.version % keep)
                        .bind(version.meta.version)
                        .bind(version.meta.creation_time)
                        .bind(version.meta.modification_time)
                        .bind(labels_json(&version.labels))
                        .bind(stored.bytes)
                        .bind(stored.key_id)
                        .bind(stored.write_id)
                        .bind(actor.map(Json))
                        .bind(request_id.clone())
                        .fetch_one(&mut *tx)
                        .await?;
                    kept += 1;
                }
                Ok(kept)
            })
        })
        .await
    }

    /// How many earlier versions each secret keeps.
    ///
    /// # Errors
    /// The database failed.
    pub async fn max_versions(&self) -> Result<u32> {
        let (limit,) = query_as::<DB, (i64,)>(GET_MAX_VERSIONS)
            .fetch_one_via(self, Op::Other)
            .await?;
        Ok(u32::try_from(limit).unwrap_or(0))
    }

    /// Sets how many earlier versions each secret keeps (0: none, and deletes are final).
    /// A new limit re-cuts every secret's ring of kept versions in one transaction: the
    /// newest versions stay, those the smaller ring has no room for go. With 0, what is
    /// kept stays readable until purged or expired, and nothing more is kept.
    ///
    /// # Errors
    /// The database failed.
    pub async fn set_max_versions(&self, limit: u32) -> Result<()> {
        let limit = i64::from(limit);
        self.in_write_transaction::<_, StoreError, _>(Op::Other, move |tx| {
            Box::pin(async move {
                let changed = query_as::<DB, (i64,)>(SET_MAX_VERSIONS)
                    .bind(limit)
                    .fetch_optional(&mut *tx)
                    .await?;
                if changed.is_none() || limit == 0 {
                    return Ok(());
                }
                query_as::<DB, (i64,)>(DROP_SLOT_COLLISIONS)
                    .bind(limit)
                    .fetch_all(&mut *tx)
                    .await?;
                query_as::<DB, (i64,)>(PARK_SLOTS).fetch_all(&mut *tx).await?;
                query_as::<DB, (i64,)>(RENUMBER_SLOTS)
                    .bind(limit)
                    .fetch_all(&mut *tx)
                    .await?;
                Ok(())
            })
        })
        .await
    }

    /// Deletes up to `batch` versions of secrets deleted before `cutoff`; returns how many.
    ///
    /// # Errors
    /// The database failed.
    pub async fn prune_deleted_history(&self, cutoff: DateTime<Utc>, batch: u32) -> Result<u64> {
        self.delete_before(DB::PRUNE_DELETED_HISTORY, cutoff, batch).await
    }
}
}
