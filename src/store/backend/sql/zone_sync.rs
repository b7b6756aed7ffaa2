//! The `zone_sync` table: where a federated zone is in its global store's change feed
//! (`crate::federation`), so a restart goes on from there.

use super::SqlStore;
use super::statements::query_as;
use super::tx::RunOnStore;
use crate::store::backend::db_error::Op;
use crate::store::contract::Result;

const ZONE_SYNC_REVISION: &str = "SELECT revision FROM zone_sync WHERE id = 1 AND global = $1";

const SET_ZONE_SYNC_REVISION: &str = "INSERT INTO zone_sync (id, global, revision, updated) \
     VALUES (1, $1, $2, $3) ON CONFLICT (id) DO UPDATE SET global = $1, revision = $2, \
     updated = $3 RETURNING revision";

impl_for_sql_databases! {
impl [SqlStore<DB>] {
    /// The revision of the global store `global` whose changes this zone has applied, if
    /// it follows that store; `None` if it never synced with it.
    ///
    /// # Errors
    /// The database failed.
    pub async fn zone_sync_revision(&self, global: &str) -> Result<Option<i64>> {
        Ok(query_as::<DB, (i64,)>(ZONE_SYNC_REVISION)
            .bind(global.to_owned())
            .fetch_optional_via(self, Op::Other)
            .await?
            .map(|(revision,)| revision))
    }

    /// Records that this zone has applied the changes of the global store `global` up to
    /// `revision`.
    ///
    /// # Errors
    /// The database failed.
    pub async fn set_zone_sync_revision(&self, global: &str, revision: i64) -> Result<()> {
        query_as::<DB, (i64,)>(SET_ZONE_SYNC_REVISION)
            .bind(global.to_owned())
            .bind(revision)
            .bind(chrono::Utc::now())
            .fetch_one_via(self, Op::Other)
            .await?;
        Ok(())
    }
}
}
