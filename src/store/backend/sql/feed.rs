//! Reading the change feed: numbering (Postgres' sequencer), pages of events after a
//! revision, the current revision, and retention.

use super::SqlStore;
use super::statements::query_as;
use super::tx::RunOnStore;
use crate::store::backend::db_error::{Op, map_db_error};
use crate::store::contract::feed::{Actor, Event, EventFilter, EventPage, Operation};
use crate::store::contract::{Result, StoreError};
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{AssertSqlSafe, Connection};

/// An `events` row.
#[derive(sqlx::FromRow)]
pub struct EventRow {
    revision: i64,
    time: DateTime<Utc>,
    operation: String,
    resource_type: String,
    mesh: Option<String>,
    name: String,
    version: i64,
    actor: Option<Json<Actor>>,
    request_id: Option<String>,
}

impl EventRow {
    fn into_event(self) -> Event {
        Event {
            revision: self.revision,
            operation: Operation::parse(&self.operation).unwrap_or(Operation::Update),
            resource_type: self.resource_type,
            mesh: self.mesh,
            name: self.name,
            version: self.version,
            time: self.time,
            actor: self.actor.map(|Json(actor)| actor),
            request_id: self.request_id,
        }
    }
}

/// `$1` after revision, `$2` limit.
const EVENTS_AFTER: &str = "SELECT revision, time, operation, resource_type, mesh, name, version, \
     actor, request_id FROM events WHERE revision > $1 ORDER BY revision LIMIT $2";

/// The oldest revision still kept.
const OLDEST_REVISION: &str = "SELECT min(revision) FROM events";

/// The advisory lock that makes one sequencer at a time number events (any constant the
/// application does not use otherwise).
const SEQUENCER_LOCK: i64 = 0x006b_756d_6173_6571;

impl_for_sql_databases! {
impl [SqlStore<DB>] {
    /// Numbers the events whose transactions have ended (Postgres) and returns the highest
    /// revision given so far.
    pub(super) async fn sequence_events(&self) -> Result<i64> {
        let Some(sequence) = DB::SEQUENCE_EVENTS else {
            let (last,) = query_as::<DB, (i64,)>(DB::LAST_REVISION)
                .fetch_one_via(self, Op::Other)
                .await?;
            return Ok(last);
        };
        let mut conn = self.pool.acquire().await.map_err(|e| map_db_error(e, Op::Other))?;
        let result = self.preparing.around(async {
            let mut tx = conn.conn().begin().await?;
            query_as::<DB, (i64,)>("SELECT CAST(1 AS BIGINT) FROM (SELECT pg_advisory_xact_lock($1)) l")
                .bind(SEQUENCER_LOCK)
                .fetch_one(&mut *tx)
                .await?;
            // The events still to number are found through the partial index
            // `events_unnumbered_idx`, which keeps an entry for every numbered event until
            // vacuum. A bitmap scan visits each of them on every run (27 ms per run after
            // 340,000 writes without vacuum, measured); an index scan marks the dead ones
            // once and then passes over them (1.8 ms), so the planner is kept to it.
            sqlx::Executor::execute(&mut *tx, "SET LOCAL enable_bitmapscan = off").await?;
            let (last,) = query_as::<DB, (i64,)>(AssertSqlSafe(sequence))
                .fetch_one(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(last)
        })
        .await;
        conn.finish(result).map_err(|e| map_db_error(e, Op::Other))
    }

    /// The events after revision `after` that pass `filter`, at most `limit` examined.
    ///
    /// # Errors
    /// [`StoreError::Gone`] when events after `after` were pruned, or `after` is beyond the
    /// last revision (the feed was reset): the reader must list again. Or the database
    /// failed.
    pub(super) async fn events_after_with(&self, after: i64, limit: u32, filter: &EventFilter) -> Result<EventPage> {
        let last = self.sequence_events().await?;
        let (oldest,) = query_as::<DB, (Option<i64>,)>(OLDEST_REVISION)
            .fetch_one_via(self, Op::Other)
            .await?;
        let oldest = oldest.unwrap_or(last + 1);
        // Pruned past `after`; or a revision the feed never reached, which a reader can only
        // hold from before the store was reset (restored from a backup, or another store at
        // the same address): waiting for it would miss every change up to it.
        if (after < last && after + 1 < oldest) || after > last {
            return Err(StoreError::Gone { oldest });
        }
        let rows = query_as::<DB, EventRow>(EVENTS_AFTER)
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all_via(self, Op::Other)
            .await?;
        let revision = rows.last().map_or(after.max(0), |row| row.revision);
        let events = rows
            .into_iter()
            .map(EventRow::into_event)
            .filter(|event| filter.matches(event))
            .collect();
        Ok(EventPage { events, revision })
    }

    /// Deletes up to `batch` of the oldest events written before `cutoff` (a prefix of the
    /// revisions); returns how many.
    ///
    /// # Errors
    /// The database failed.
    pub async fn prune_events(&self, cutoff: DateTime<Utc>, batch: u32) -> Result<u64> {
        // Only numbered events are pruned: number what can be first.
        self.sequence_events().await?;
        self.delete_before(DB::PRUNE_EVENTS, cutoff, batch).await
    }

    /// Runs a pruning statement (`$1` cutoff time, `$2` batch size, a row per deleted row
    /// returned); returns how many rows it deleted.
    pub(super) async fn delete_before(&self, sql: &'static str, cutoff: DateTime<Utc>, batch: u32) -> Result<u64> {
        let cutoff = cutoff.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
        let pruned = query_as::<DB, (i64,)>(sql)
            .bind(cutoff)
            .bind(i64::from(batch))
            .fetch_all_via(self, Op::Other)
            .await?;
        Ok(pruned.len() as u64)
    }
}
}
