//! Where a Postgres server stands in the write-ahead log: what a read replica needs to know
//! whether a standby has replayed a write.

use super::SqlStore;
use super::statements::query_as;
use super::tx::RunOnStore;
use crate::store::backend::db_error::Op;
use crate::store::contract::{Replication, Result};
use sqlx::Postgres;

impl Replication for SqlStore<Postgres> {
    /// This server's current WAL position (`pg_current_wal_lsn()`, a primary's), as text.
    ///
    /// # Errors
    /// The database failed (a standby refuses: it has no current position of its own).
    async fn wal_position(&self) -> Result<String> {
        let (lsn,) = query_as::<Postgres, (String,)>("SELECT pg_current_wal_lsn()::text")
            .fetch_one_via(self, Op::Other)
            .await?;
        Ok(lsn)
    }

    /// Whether this server, a standby, has replayed the WAL up to `lsn` (false on a server
    /// that is not in recovery).
    ///
    /// # Errors
    /// The database failed.
    async fn has_replayed(&self, lsn: &str) -> Result<bool> {
        let (replayed,) = query_as::<Postgres, (bool,)>(
            "SELECT coalesce(pg_last_wal_replay_lsn() >= CAST($1 AS pg_lsn), false)",
        )
        .bind(lsn.to_owned())
        .fetch_one_via(self, Op::Other)
        .await?;
        Ok(replayed)
    }
}
