//! Group commit: secret writes (puts and deletes) that arrive while a commit is in flight
//! commit together, in one transaction and one WAL flush, as etcd batches proposals into
//! one raft entry and one fsync. Postgres and SQLite.
//!
//! - **Gathering.** Each store has its committers ([`Dialect::COMMITTERS`]: two on
//!   Postgres, one on SQLite), started by its first secret write, each fed by a queue and
//!   owning a share of the keys (by hash), so two batches in flight never write the same
//!   secret. A committer takes the first write waiting and every write queued behind it,
//!   up to [`MAX_BATCH`], waiting for no more than one turn of the scheduler: under load, a
//!   batch is what arrived while the previous one committed. A write that begins while no
//!   other is in flight skips the committers and commits at once, as before batching.
//!   (Committers on Postgres, `wrk -c32` blind PUTs over 1,000 names on this repository's
//!   2-core machine, two runs each: one 4,591 and 3,122 req/s, two 5,116 and 4,972, four
//!   4,850 and 4,854.)
//! - **A batch of one** runs exactly as a write did before batching: a put is its one
//!   statement committing on its own, a delete its own transaction.
//! - **A larger batch** runs in two steps.
//!   1. The puts of Secrets whose key no other write of the batch names (the bulk of a
//!      busy store) go first, in at most two statements whatever their number: one upsert
//!      for the blind puts, one conditional update for the If-Match ones, each taking its
//!      rows from one JSON parameter ([`Dialect::BULK_ROWS`]: `json_to_recordset`,
//!      `json_each`). These are statements that cannot fail on one write's account: a
//!      missing Mesh, a changed immutable label or another version leaves that row out, and
//!      no row comes back for it. (One statement per write would cap a batch at the
//!      round-trip rate of one connection on Postgres, and of sqlx's worker thread on
//!      SQLite.)
//!   2. Every put without a row from step 1, and every other write (deletes, creates,
//!      GlobalSecrets, a key named twice), runs alone behind a savepoint (`SAVEPOINT
//!      write`), with the very statements of a write committed alone (`put.rs`,
//!      `crud.rs`). A refusal (a version that does not match: 412; an immutable label; the
//!      delete guard) or a failed statement (its Mesh is missing, a create of a name that
//!      exists) rolls back to its savepoint, and the others go on.
//!
//!   Both steps run in one write transaction, unless step 1 takes every write of the
//!   batch (puts of distinct Secrets, the usual batch under load): then its statements
//!   commit on their own, a round trip each fewer, and what they did not write runs alone
//!   afterwards. A fault of the database itself (it went away, its disk is full, it only
//!   reads) fails what it touched, and every write there gets that error.
//! - **Order.** Within a batch, writes run in key order (in arrival order for one key):
//!   they are all in flight together, so any order is one a client could have seen, and
//!   one order of row locks keeps concurrent transactions from deadlocking on them. So in a
//!   transaction step 1 takes only the batch's first writes (see `taken_by_step_1`), both
//!   statements lock their rows in key order (byte order, as the columns' `COLLATE "C"`),
//!   and imports lock theirs in the same order (`import.rs`). A write that still meets a
//!   deadlock or a serialization failure is rolled back to its savepoint and run again;
//!   `kuma_secrets_store_write_conflicts_total` counts them.
//! - **Acknowledgement.** No write is answered before the statement or transaction that
//!   wrote it commits (with `synchronous_commit` as configured); a failed commit fails
//!   every write in it, and none of them is stored.
//! - **The feed.** Each statement's triggers write its event and kept version, as in any
//!   transaction; the sequencer numbers events only after they commit (`feed.rs`), so the
//!   feed stays in commit order and gap-free, a batch's events one run of revisions.
//!
//! The batch size stays under 64, Postgres' cache of subtransaction ids per backend: past
//! it, every other session's snapshots get slower.

use super::SqlStore;
use super::put::put_op;
use super::rows::SecretRow;
use super::statements::{immutable_label_values, immutable_labels_kept_sql, query_as};
use super::tx::TxError;
use super::{Dialect, now, seal};
use crate::domain::{NewSecret, Secret, SecretKey};
use crate::store::backend::db_error::{Op, is_transient_conflict, map_db_error};
use crate::store::contract::feed::{WriteContext, current_write_context, with_write_context};
use crate::store::contract::{DatabaseError, Expect, Put, Result, StoreError};
use sqlx::{AssertSqlSafe, Executor};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::sync::{mpsc, oneshot};

/// The most writes one batch commits.
pub(crate) const MAX_BATCH: usize = 48;

/// How often a write of a batch that meets a deadlock or a serialization failure is run.
const ATTEMPTS: u32 = 3;

/// A secret write, as the committer takes it.
#[derive(Debug, Clone)]
pub(super) enum SecretWrite {
    /// [`SecretStore::put_secret`](crate::store::contract::SecretStore::put_secret).
    Put { secret: NewSecret, expect: Expect },
    /// [`SecretStore::delete_secret`](crate::store::contract::SecretStore::delete_secret),
    /// and with `purge` its kept versions too.
    Delete {
        key: SecretKey,
        expected_version: Option<i64>,
        purge: bool,
    },
}

impl SecretWrite {
    fn key(&self) -> &SecretKey {
        match self {
            SecretWrite::Put { secret, .. } => &secret.key,
            SecretWrite::Delete { key, .. } => key,
        }
    }

    /// Where the write sorts in a batch: its key's [`lock_order`].
    fn order(&self) -> (bool, &str, &str) {
        lock_order(self.key())
    }
}

/// The order every secret writer takes row locks in (batches here, imports in `import.rs`):
/// Secrets by Mesh, then name; GlobalSecrets after, by name. Byte order, as Postgres'
/// `COLLATE "C"` on these columns.
pub(super) fn lock_order(key: &SecretKey) -> (bool, &str, &str) {
    match key.mesh() {
        Some(mesh) => (false, mesh.as_str(), key.name().as_str()),
        None => (true, "", key.name().as_str()),
    }
}

/// What a secret write did.
#[derive(Debug)]
pub(super) enum Written {
    /// A put: created or replaced, and the secret as stored.
    Put(Put<Secret>),
    /// A delete.
    Deleted,
}

/// A write waiting for its batch, and where its answer goes.
struct Job {
    write: SecretWrite,
    /// Who writes, for the event and the kept version (a task-local of the caller's task,
    /// carried to the committer's).
    context: Option<WriteContext>,
    reply: oneshot::Sender<Result<Written>>,
}

/// A store's queue of secret writes to its committer, and what the committer has done.
/// Clones share both; the committer ends when the last clone is dropped.
#[derive(Clone, Default)]
pub(crate) struct WriteQueue {
    /// One queue per committer, started with the first write.
    senders: Arc<OnceLock<Vec<mpsc::UnboundedSender<Job>>>>,
    counts: Arc<BatchCounts>,
    /// Secret writes begun and not yet answered, through this store's handles.
    in_flight: Arc<AtomicUsize>,
    /// Write transactions' turns, in arrival order, on a database with one writer
    /// ([`Dialect::ONE_WRITER`]).
    turns: Arc<tokio::sync::Mutex<()>>,
}

/// One write counted in flight while it lives.
struct InFlight<'a> {
    count: &'a AtomicUsize,
    /// No other write was in flight when this one began.
    alone: bool,
}

impl<'a> InFlight<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        let alone = count.fetch_add(1, Ordering::AcqRel) == 0;
        Self { count, alone }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What the committer has committed since start.
#[derive(Default)]
struct BatchCounts {
    /// Batches of two writes or more.
    batches: AtomicU64,
    /// The writes in them.
    writes: AtomicU64,
    /// Of those, the puts that step 1's statements wrote.
    bulk: AtomicU64,
    /// Statements that met a deadlock or a serialization failure (and were run again).
    conflicts: AtomicU64,
}

impl BatchCounts {
    /// Counts a committed batch of `writes` writes, `bulk` of them by step 1.
    fn committed(&self, writes: u64, bulk: u64) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.writes.fetch_add(writes, Ordering::Relaxed);
        self.bulk.fetch_add(bulk, Ordering::Relaxed);
    }

    /// Counts a statement that met a deadlock or a serialization failure.
    fn conflict(&self) {
        self.conflicts.fetch_add(1, Ordering::Relaxed);
    }
}

impl WriteQueue {
    /// A queue of its own, with no committer yet, sharing the counts: the committer's own
    /// store, which commits its batches directly.
    fn for_committer(&self) -> Self {
        Self {
            senders: Arc::default(),
            counts: self.counts.clone(),
            in_flight: Arc::default(),
            turns: self.turns.clone(),
        }
    }

    /// Batches of two writes or more committed since start, the writes in them, and how
    /// many of those step 1's statements wrote.
    pub(crate) fn batch_counts(&self) -> (u64, u64, u64) {
        (
            self.counts.batches.load(Ordering::Relaxed),
            self.counts.writes.load(Ordering::Relaxed),
            self.counts.bulk.load(Ordering::Relaxed),
        )
    }

    /// Waits for this process's turn to write on a database with one writer
    /// ([`Dialect::ONE_WRITER`]), and holds it while the guard lives; on any other, returns
    /// at once. Taken before a connection, by write transactions only (never while holding
    /// a connection or a turn), so waiting for it cannot deadlock.
    pub(crate) async fn write_turn<D: Dialect>(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        if D::ONE_WRITER {
            Some(self.turns.clone().lock_owned().await)
        } else {
            None
        }
    }

    /// Statements of secret writes and imports that met a deadlock or a serialization
    /// failure since start (each was run again): zero while every writer takes its row
    /// locks in one order.
    pub(crate) fn conflicts(&self) -> u64 {
        self.counts.conflicts.load(Ordering::Relaxed)
    }

    /// Counts a statement that met a deadlock or a serialization failure.
    pub(crate) fn count_conflict(&self) {
        self.counts.conflict();
    }
}

impl std::fmt::Debug for WriteQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (batches, writes, bulk) = self.batch_counts();
        f.debug_struct("WriteQueue")
            .field("committers", &self.senders.get().map_or(0, Vec::len))
            .field("batches", &batches)
            .field("batched_writes", &writes)
            .field("bulk_writes", &bulk)
            .finish()
    }
}

/// A copy of a batch's failure for each of its other writes: the same variant and text
/// (the driver's error itself goes to the first write only).
fn copy_of(err: &StoreError) -> StoreError {
    let text = |source: &DatabaseError| DatabaseError::new(source.to_string());
    match err {
        StoreError::ReadOnly => StoreError::ReadOnly,
        StoreError::Unavailable(source) => StoreError::Unavailable(text(source)),
        StoreError::TransactionPooler(source) => StoreError::TransactionPooler(text(source)),
        StoreError::Storage { fault, source } => StoreError::Storage {
            fault: *fault,
            source: text(source),
        },
        StoreError::Internal(source) => StoreError::Internal(text(source)),
        other => StoreError::Internal(DatabaseError::new(other.to_string())),
    }
}

/// Answers every write of a batch that failed as a whole with `err`.
fn fail_all(jobs: Vec<Job>, err: StoreError) {
    let mut jobs = jobs.into_iter();
    let first = jobs.next();
    for job in jobs {
        let _ = job.reply.send(Err(copy_of(&err)));
    }
    if let Some(first) = first {
        let _ = first.reply.send(Err(err));
    }
}

/// Whether a write's failure is the database's rather than the write's: the batch's
/// transaction cannot be trusted to go on, so the batch fails.
fn fails_the_batch(err: &StoreError) -> bool {
    matches!(
        err,
        StoreError::Unavailable(_)
            | StoreError::Storage { .. }
            | StoreError::ReadOnly
            | StoreError::TransactionPooler(_)
    )
}

impl_for_sql_databases! {
impl [SqlStore<DB>] {
    /// Commits `write` with whatever other secret writes are in flight (see the module
    /// docs), and answers when its batch has committed.
    pub(super) async fn write_secret(&self, write: SecretWrite) -> Result<Written> {
        if let SecretWrite::Put { secret, .. } = &write {
            secret.data.check_size(self.options.max_secret_size)?;
        }
        let in_flight = InFlight::enter(&self.writes.in_flight);
        if in_flight.alone {
            // No other write in flight: nothing to batch with, so no trip through a
            // committer either (a lone writer waits no longer than before batching).
            return self.write_alone(write).await;
        }
        let committers = self.writes.senders.get_or_init(|| {
            (0..DB::COMMITTERS)
                .map(|_| {
                    let (sender, queue) = mpsc::unbounded_channel();
                    let committer = Self {
                        writes: self.writes.for_committer(),
                        ..self.clone()
                    };
                    tokio::spawn(committer.commit_batches(queue));
                    sender
                })
                .collect()
        });
        // Each key has its committer, so no two batches in flight ever write one secret
        // (and so never wait on each other's row locks).
        let sender = &committers[committer_of(write.key(), committers.len())];
        let (reply, answer) = oneshot::channel();
        let job = Job {
            write,
            context: current_write_context(),
            reply,
        };
        if let Err(mpsc::error::SendError(job)) = sender.send(job) {
            // The committer is gone with the runtime that ran it: commit here, alone.
            return self.write_alone(job.write).await;
        }
        answer.await.unwrap_or_else(|_| {
            Err(StoreError::Unavailable(DatabaseError::new(
                "the store's committer stopped before the write's batch ended; it may not have been stored",
            )))
        })
    }

    /// The committer: takes what is queued, up to [`MAX_BATCH`], and commits it, until
    /// every handle on the queue is gone.
    async fn commit_batches(self, mut queue: mpsc::UnboundedReceiver<Job>) {
        let mut jobs = Vec::with_capacity(MAX_BATCH);
        while queue.recv_many(&mut jobs, MAX_BATCH).await > 0 {
            if jobs.len() > 1 && jobs.len() < MAX_BATCH {
                // Writes are arriving together: let the requests already running on this
                // runtime reach the queue too (one turn of the scheduler, no timer).
                tokio::task::yield_now().await;
                while jobs.len() < MAX_BATCH {
                    match queue.try_recv() {
                        Ok(job) => jobs.push(job),
                        Err(_) => break,
                    }
                }
            }
            let batch = std::mem::replace(&mut jobs, Vec::with_capacity(MAX_BATCH));
            if let [_] = batch[..] {
                let job = batch.into_iter().next().expect("one job");
                let result = in_context(job.context, self.write_alone(job.write)).await;
                // A caller that gave up (its request went away) takes no answer.
                let _ = job.reply.send(result);
            } else {
                self.commit_batch(batch).await;
            }
        }
    }

    /// One write, committed on its own: as a write was before batching.
    async fn write_alone(&self, write: SecretWrite) -> Result<Written> {
        match write {
            SecretWrite::Put { secret, expect } => self.put_secret_with(secret, expect).await.map(Written::Put),
            SecretWrite::Delete { key, expected_version, purge } => {
                self.delete_secret_with(&key, expected_version, purge).await.map(|()| Written::Deleted)
            }
        }
    }

    /// Commits `jobs` in one transaction, each behind a savepoint, and answers each.
    async fn commit_batch(&self, mut jobs: Vec<Job>) {
        jobs.sort_by(|a, b| a.write.order().cmp(&b.write.order()));
        let writes: Vec<(SecretWrite, Option<WriteContext>)> =
            jobs.iter().map(|job| (job.write.clone(), job.context.clone())).collect();
        let count = writes.len();
        let keyring = self.options.keyring();
        if all_in_bulk(&writes) {
            self.commit_in_bulk(jobs, writes).await;
            return;
        }
        let guarded = !self.options.unsafe_delete;
        let counts = self.writes.counts.clone();
        let outcome = self
            .in_write_transaction::<_, StoreError, _>(Op::Other, move |tx| {
                Box::pin(async move {
                    let mut results: Vec<Option<Result<Written>>> = writes.iter().map(|_| None).collect();
                    let bulk = Self::put_in_bulk(&counts, tx, keyring.as_deref(), &writes, &mut results, true, true).await?;
                    for ((write, context), result) in writes.iter().zip(results.iter_mut()) {
                        if result.is_none() {
                            let written = in_context(context.clone(), async {
                                Self::write_behind_savepoint(&counts, tx, keyring.as_deref(), write, guarded).await
                            })
                            .await?;
                            *result = Some(written);
                        }
                    }
                    let results: Vec<_> = results.into_iter().map(|result| result.expect("every write ran")).collect();
                    Ok((results, bulk))
                })
            })
            .await;
        match outcome {
            Ok((results, bulk)) => {
                self.writes.counts.committed(count as u64, bulk);
                for (job, result) in jobs.into_iter().zip(results) {
                    let _ = job.reply.send(result);
                }
            }
            Err(err) => fail_all(jobs, err),
        }
    }

    /// A batch that is all step 1 (the usual one under load: puts of distinct Secrets):
    /// its statements commit on their own, without a transaction around them (a round trip
    /// each fewer), and the puts they did not write then run alone, in arrival order.
    async fn commit_in_bulk(&self, jobs: Vec<Job>, writes: Vec<(SecretWrite, Option<WriteContext>)>) {
        let count = writes.len() as u64;
        let keyring = self.options.keyring();
        let counts = self.writes.counts.clone();
        // A pooler in transaction mode gets statements of one operation in one transaction.
        let one_transaction = self.preparing == super::Preparing::Unnamed;
        let outcome = self
            .on_one_connection(Op::Other, move |conn| {
                Box::pin(async move {
                    let mut results: Vec<Option<Result<Written>>> = writes.iter().map(|_| None).collect();
                    let bulk = Self::put_in_bulk(&counts, conn, keyring.as_deref(), &writes, &mut results, false, one_transaction).await?;
                    Ok((results, bulk))
                })
            })
            .await;
        match outcome {
            Ok((results, bulk)) => {
                self.writes.counts.committed(count, bulk);
                for (job, result) in jobs.into_iter().zip(results) {
                    let result = match result {
                        Some(result) => result,
                        None => in_context(job.context, self.write_alone(job.write)).await,
                    };
                    let _ = job.reply.send(result);
                }
            }
            Err(err) => fail_all(jobs, err),
        }
    }

    /// Step 1 of a batch (see the module docs): the puts of Secrets whose key no other
    /// write of the batch names, in one upsert and one conditional update, on `conn`: in
    /// the batch's transaction (`in_transaction`: each statement behind a savepoint), or
    /// each statement committing on its own (`one_transaction` when a pooler in transaction
    /// mode has them share one all the same, see [`taken_by_step_1`]). Fills `results`
    /// for each put that wrote its row (and counts them); leaves the rest to run alone.
    async fn put_in_bulk(
        counts: &BatchCounts,
        conn: &mut DB::Connection,
        keyring: Option<&crate::sealing::Keyring>,
        writes: &[(SecretWrite, Option<WriteContext>)],
        results: &mut [Option<Result<Written>>],
        in_transaction: bool,
        one_transaction: bool,
    ) -> std::result::Result<u64, TxError<StoreError>> {
        let mut bulk = 0;
        let (blind, conditional) = bulk_rows(keyring, writes, in_transaction || one_transaction);
        for (statement, rows) in [(bulk_upsert::<DB>(), blind), (bulk_replace::<DB>(), conditional)] {
            if rows.is_empty() {
                continue;
            }
            let json = serde_json::to_string(&rows.iter().map(|(_, row)| row).collect::<Vec<_>>())
                .expect("bulk rows serialize");
            if in_transaction {
                conn.execute("SAVEPOINT bulk").await?;
            }
            let written = match query_as::<DB, SecretRow>(AssertSqlSafe(statement))
                .bind(json)
                .fetch_all(&mut *conn)
                .await
            {
                Ok(written) => written,
                Err(err) => {
                    let conflict = is_transient_conflict(&err);
                    let failure = map_db_error(err, Op::Other);
                    if fails_the_batch(&failure) {
                        if in_transaction {
                            return Err(TxError::Refused(failure));
                        }
                        // What an earlier statement wrote is committed: only these fail.
                        for (index, _) in rows {
                            results[index] = Some(Err(copy_of(&failure)));
                        }
                        continue;
                    }
                    // A race the statement could not rule out (a Mesh deleted under it, a
                    // deadlock): its writes run alone instead.
                    if conflict {
                        counts.conflict();
                    }
                    tracing::debug!(error = %failure, "a bulk put failed; its writes run alone");
                    if in_transaction {
                        conn.execute("ROLLBACK TO SAVEPOINT bulk").await?;
                    }
                    continue;
                }
            };
            let mut written: std::collections::HashMap<SecretKey, SecretRow> =
                written.into_iter().map(|row| (row.key(), row)).collect();
            for (index, _) in rows {
                let SecretWrite::Put { secret, expect } = &writes[index].0 else { continue };
                if let Some(row) = written.remove(&secret.key) {
                    bulk += 1;
                    results[index] = Some(Ok(Written::Put(Put {
                        // Only an upsert inserts, and an inserted row starts at version 1.
                        created: *expect == Expect::Any && row.version() == 1,
                        value: row.with_data(secret.data.clone()),
                    })));
                }
            }
        }
        Ok(bulk)
    }

    /// One write of a batch, behind a savepoint: `Ok` with the write's own result (its
    /// refusal or failed statement rolled back to the savepoint), or `Err` when the batch
    /// must fail (the database failed, or the savepoint could not be rolled back to).
    async fn write_behind_savepoint(
        counts: &BatchCounts,
        tx: &mut DB::Connection,
        keyring: Option<&crate::sealing::Keyring>,
        write: &SecretWrite,
        guarded: bool,
    ) -> std::result::Result<Result<Written>, TxError<StoreError>> {
        for attempt in 1..=ATTEMPTS {
            tx.execute("SAVEPOINT write").await?;
            let (outcome, resource) = match write.clone() {
                SecretWrite::Put { secret, expect } => {
                    let resource = secret.key.resource_key();
                    let outcome = Self::put_secret_on(tx, keyring, secret, expect).await.map(Written::Put);
                    (outcome, Some((resource, expect)))
                }
                SecretWrite::Delete { key, expected_version, purge } => {
                    let outcome = Self::delete_secret_in(tx, &key, expected_version, purge, guarded)
                        .await
                        .map(|()| Written::Deleted);
                    (outcome, None)
                }
            };
            let failure = match outcome {
                Ok(written) => return Ok(Ok(written)),
                Err(TxError::Db(err)) if is_transient_conflict(&err) && attempt < ATTEMPTS => {
                    counts.conflict();
                    tx.execute("ROLLBACK TO SAVEPOINT write").await?;
                    continue;
                }
                Err(TxError::Db(err)) => match &resource {
                    Some((resource, expect)) => map_db_error(err, put_op(*expect, resource)),
                    None => map_db_error(err, Op::Other),
                },
                Err(TxError::Refused(refusal)) => refusal,
            };
            if fails_the_batch(&failure) {
                return Err(TxError::Refused(failure));
            }
            tx.execute("ROLLBACK TO SAVEPOINT write").await?;
            return Ok(Err(failure));
        }
        unreachable!("the last attempt returns")
    }
}
}

/// Which of `committers` commits the writes of secret `key`.
fn committer_of(key: &SecretKey, committers: usize) -> usize {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(key);
    usize::try_from(hash % committers as u64).expect("an index under the count")
}

/// Runs `future` as the writer `context` (when there is one).
async fn in_context<F: Future>(context: Option<WriteContext>, future: F) -> F::Output {
    match context {
        Some(context) => with_write_context(context, future).await,
        None => future.await,
    }
}

/// One put of step 1 of a batch, as a row of its statement's JSON parameter: each value
/// as text, as the database's driver would bind it (read back by [`Dialect::BULK_ROWS`]).
#[derive(serde::Serialize)]
struct BulkRow<'a> {
    mesh: &'a str,
    name: &'a str,
    /// RFC 3339, as sqlx encodes a time for SQLite (Postgres parses it alike).
    time: String,
    /// The labels as JSON text.
    labels: String,
    /// The stored bytes (sealed, or as given), in hex.
    data: String,
    key_id: Option<String>,
    /// The write id, in hex.
    write_id: Option<String>,
    /// Who writes, as JSON text.
    actor: Option<String>,
    request_id: Option<&'a str>,
    /// For a conditional put: the version it expects, if any.
    expected: Option<i64>,
    /// The new values of Kuma's immutable labels (`kuma.io/origin`, `kuma.io/zone`,
    /// `kuma.io/display-name`), which the conditional put may not change.
    origin: Option<String>,
    zone: Option<String>,
    display: Option<String>,
}

impl<'a> BulkRow<'a> {
    fn new(
        keyring: Option<&crate::sealing::Keyring>,
        secret: &'a NewSecret,
        expect: Expect,
        context: Option<&'a WriteContext>,
    ) -> Self {
        let stored = seal(keyring, &secret.key, secret.data.expose());
        let [origin, zone, display] = immutable_label_values(&secret.labels);
        Self {
            mesh: secret.key.mesh().map_or("", |mesh| mesh.as_str()),
            name: secret.key.name().as_str(),
            time: now().to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false),
            labels: serde_json::to_string(secret.labels.as_map()).expect("labels serialize"),
            data: crate::hex(&stored.bytes),
            key_id: stored.key_id,
            write_id: stored.write_id.as_deref().map(crate::hex),
            actor: context
                .map(|context| serde_json::to_string(&context.actor).expect("an actor serializes")),
            request_id: context.and_then(|context| context.request_id.as_deref()),
            expected: match expect {
                Expect::Version(version) => Some(version),
                _ => None,
            },
            origin,
            zone,
            display,
        }
    }
}

/// Which writes of a batch (in key order) step 1 takes: the puts of a Secret (not a
/// GlobalSecret, whose key is another index), not creates, of a key no other write of the
/// batch names (one statement may not write a row twice).
///
/// When step 1 shares one transaction with what follows it (`one_transaction`), it takes
/// only the batch's first writes, blind puts then If-Match ones, up to the first write it
/// could not take: the blind upsert, then the conditional update, then each write behind
/// its savepoint then lock their rows in key order, as every other writer does (imports,
/// the other committer), so none of them deadlocks with the batch.
fn taken_by_step_1(
    writes: &[(SecretWrite, Option<WriteContext>)],
    one_transaction: bool,
) -> Vec<bool> {
    let mut named = std::collections::HashMap::<&SecretKey, usize>::new();
    for (write, _) in writes {
        *named.entry(write.key()).or_default() += 1;
    }
    let mut taken: Vec<bool> = writes
        .iter()
        .map(|(write, _)| match write {
            SecretWrite::Put { secret, expect } => {
                secret.key.mesh().is_some() && *expect != Expect::Absent && named[&secret.key] == 1
            }
            SecretWrite::Delete { .. } => false,
        })
        .collect();
    if one_transaction {
        let blind = |index: usize| {
            matches!(
                writes[index].0,
                SecretWrite::Put {
                    expect: Expect::Any,
                    ..
                }
            )
        };
        let mut conditional_seen = false;
        let mut prefix = true;
        for (index, taken) in taken.iter_mut().enumerate() {
            prefix = prefix && *taken && !(conditional_seen && blind(index));
            conditional_seen |= !blind(index);
            *taken = prefix;
        }
    }
    taken
}

/// The writes of a batch that step 1 takes ([`taken_by_step_1`]), as rows of its two
/// statements: (index, row) of the blind puts and of the conditional ones.
#[allow(clippy::type_complexity)]
fn bulk_rows<'a>(
    keyring: Option<&crate::sealing::Keyring>,
    writes: &'a [(SecretWrite, Option<WriteContext>)],
    one_transaction: bool,
) -> (Vec<(usize, BulkRow<'a>)>, Vec<(usize, BulkRow<'a>)>) {
    let mut blind = Vec::new();
    let mut conditional = Vec::new();
    let taken = taken_by_step_1(writes, one_transaction);
    for (index, ((write, context), taken)) in writes.iter().zip(taken).enumerate() {
        let (SecretWrite::Put { secret, expect }, true) = (write, taken) else {
            continue;
        };
        let row = (
            index,
            BulkRow::new(keyring, secret, *expect, context.as_ref()),
        );
        match expect {
            Expect::Any => blind.push(row),
            _ => conditional.push(row),
        }
    }
    (blind, conditional)
}

/// Whether step 1 takes every write of `writes`.
fn all_in_bulk(writes: &[(SecretWrite, Option<WriteContext>)]) -> bool {
    taken_by_step_1(writes, false)
        .into_iter()
        .all(|taken| taken)
}

/// The blind puts of step 1, one upsert. A row whose Mesh does not exist is left out (it
/// would fail the statement on the foreign key), as is one that would change an immutable
/// label. Rows are written in key order.
fn bulk_upsert<D: Dialect>() -> String {
    let kept = immutable_labels_kept_sql::<D>("secrets.labels", |_, key| {
        D::label_value("excluded.labels", key)
    });
    format!(
        "WITH w AS ({}) \
         INSERT INTO secrets (name, mesh, version, creation_time, modification_time, labels, \
           data, key_id, write_id, actor, request_id) \
         SELECT w_name, w_mesh, 1, w_time, w_time, w_labels, w_data, w_key_id, w_write_id, \
           w_actor, w_request_id \
         FROM w WHERE EXISTS (SELECT 1 FROM meshes m WHERE m.name = w_mesh) \
         ORDER BY w_mesh, w_name \
         ON CONFLICT (mesh, name) DO UPDATE SET data = excluded.data, key_id = excluded.key_id, \
           write_id = excluded.write_id, labels = excluded.labels, \
           modification_time = excluded.modification_time, version = secrets.version + 1, \
           actor = excluded.actor, request_id = excluded.request_id \
         WHERE {kept} RETURNING {}",
        D::BULK_ROWS,
        secret_columns!()
    )
}

/// The If-Match puts of step 1, one update. A row at another version, gone, or whose
/// immutable labels would change is left out. On a database with row locks (Postgres) its
/// rows are locked first, in key order (`locked`), as the upsert's are: the order of an
/// update's joined rows is the planner's. SQLite's writer excludes every other, so it
/// needs no such step (which cost its If-Match PUTs about 10 %).
fn bulk_replace<D: Dialect>() -> String {
    let new = ["w_origin", "w_zone", "w_display"];
    let kept = immutable_labels_kept_sql::<D>("secrets.labels", |index, _| new[index].to_owned());
    let (locked, join) = if D::ONE_WRITER {
        (String::new(), "")
    } else {
        (
            format!(
                ", locked AS MATERIALIZED (SELECT s.mesh AS l_mesh, s.name AS l_name \
                   FROM secrets s JOIN w ON s.mesh = w_mesh AND s.name = w_name \
                   ORDER BY s.mesh, s.name{} OF s)",
                D::FOR_NO_KEY_UPDATE
            ),
            " JOIN locked ON l_mesh = w_mesh AND l_name = w_name",
        )
    };
    format!(
        "WITH w AS ({}){locked} \
         UPDATE secrets SET data = w_data, key_id = w_key_id, write_id = w_write_id, \
           labels = w_labels, modification_time = w_time, version = secrets.version + 1, \
           actor = w_actor, request_id = w_request_id \
         FROM w{join} \
         WHERE secrets.mesh = w_mesh AND secrets.name = w_name \
           AND secrets.version = coalesce(w_expected, secrets.version) AND {kept} \
         RETURNING {}",
        D::BULK_ROWS,
        secret_columns!()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Labels, SecretData};

    fn put(name: &str, expect: Expect) -> (SecretWrite, Option<WriteContext>) {
        let secret = NewSecret {
            key: SecretKey::parse(Some("default"), name).unwrap(),
            data: SecretData::new(b"v".to_vec()).unwrap(),
            labels: Labels::default(),
        };
        (SecretWrite::Put { secret, expect }, None)
    }

    fn delete(name: &str) -> (SecretWrite, Option<WriteContext>) {
        let key = SecretKey::parse(Some("default"), name).unwrap();
        (
            SecretWrite::Delete {
                key,
                expected_version: None,
                purge: false,
            },
            None,
        )
    }

    #[test]
    fn in_one_transaction_step_1_takes_only_the_batch_s_first_writes_blind_then_if_match() {
        let writes = [
            put("a", Expect::Any),
            put("b", Expect::Any),
            put("c", Expect::Version(3)),
            put("d", Expect::Any),
            put("e", Expect::Version(1)),
            delete("f"),
        ];
        assert_eq!(
            taken_by_step_1(&writes, false),
            [true, true, true, true, true, false]
        );
        // "d" after an If-Match put would be locked by the upsert before "c" by the update.
        assert_eq!(
            taken_by_step_1(&writes, true),
            [true, true, true, false, false, false]
        );
        // A key named twice at the start leaves step 1 nothing in a transaction.
        let writes = [
            put("a", Expect::Any),
            put("a", Expect::Any),
            put("b", Expect::Any),
        ];
        assert_eq!(taken_by_step_1(&writes, false), [false, false, true]);
        assert_eq!(taken_by_step_1(&writes, true), [false, false, false]);
    }
}
