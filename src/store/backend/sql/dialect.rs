//! [`Dialect`]: the few SQL fragments in which Postgres and SQLite differ. Everything else
//! is shared text (see `statements.rs`).

use sqlx::Database;
use sqlx::database::HasStatementCache;

/// What differs between the SQL dialects the store speaks.
pub trait Dialect: Database + HasStatementCache {
    /// `column` contains the text parameter `needle` (literally, no wildcards).
    fn contains(column: &str, needle: &str) -> String;
    /// The JSON object `column` has key `key` with string value `value` (both parameters).
    fn label_equals(column: &str, key: &str, value: &str) -> String;
    /// The string value of key `key` (a constant label key, written into the SQL as a
    /// literal) of the JSON object `column`; NULL if absent.
    fn label_value(column: &str, key: &'static str) -> String;
    /// One row, one text column: `off` if the server accepts writes (Postgres
    /// `transaction_read_only`; an SQLite file opened for writing always does).
    const READ_ONLY: &'static str;
    /// Starts a read-only transaction whose reads all see one point in time (Postgres
    /// `REPEATABLE READ READ ONLY`, as `pg_dump`; SQLite a deferred transaction, whose
    /// first read fixes what it sees until it ends).
    const BEGIN_SNAPSHOT: &'static str;
    /// Starts a transaction that will write. SQLite must take the write lock up front
    /// (`BEGIN IMMEDIATE`): a deferred transaction that reads, then writes after another
    /// writer committed, fails instead of waiting.
    const BEGIN_WRITE: &'static str;
    /// `$1` name: a Mesh's version and spec, locked against updates until commit
    /// (Postgres `FOR SHARE`; SQLite's write transaction already excludes other writers).
    const LOCK_MESH_SHARED: &'static str;
    /// `$1` name: a Mesh's version and spec, locked for an update.
    const LOCK_MESH_EXCLUSIVE: &'static str;
    /// `$1` mesh, `$2` name: whether a Secret exists, locked against deletion until commit.
    const LOCK_SECRET_SHARED: &'static str;
    /// Numbers the events whose transactions have all ended, in order (Postgres: after
    /// commit, under an advisory lock; `None` for SQLite, which numbers in the writing
    /// transaction). Returns the highest revision given so far.
    const SEQUENCE_EVENTS: Option<&'static str>;
    /// The highest revision given so far.
    const LAST_REVISION: &'static str;
    /// `$1` cutoff time, `$2` batch size: deletes among the `$2` oldest events those before
    /// the first one newer than the cutoff, so what goes is always a prefix of the
    /// revisions (a reader is told 410 Gone, never silently skips a hole).
    const PRUNE_EVENTS: &'static str;
    /// `$1` cutoff time, `$2` batch size: deletes up to `$2` versions of secrets deleted
    /// before the cutoff, returning their versions.
    const PRUNE_DELETED_HISTORY: &'static str;
    /// Appended to a `SELECT` of one row in a write transaction to lock it for the update
    /// that follows (Postgres `FOR UPDATE`; SQLite's write transaction already excludes
    /// other writers, so nothing).
    const FOR_UPDATE: &'static str;
    /// As [`Dialect::FOR_UPDATE`], for an update that leaves the row's key as it is
    /// (Postgres `FOR NO KEY UPDATE`): it does not wait for, or hold up, a concurrent
    /// insert whose foreign key names the row (that takes `FOR KEY SHARE`).
    const FOR_NO_KEY_UPDATE: &'static str;
    /// The puts of a batch (group commit's step 1, `group_commit.rs`) as rows, from the
    /// JSON array `$1` of their values as text: a `SELECT` of the columns `w_mesh`,
    /// `w_name`, `w_time`, `w_labels`, `w_data`, `w_key_id`, `w_write_id`, `w_actor`,
    /// `w_request_id`, `w_expected`, `w_origin`, `w_zone`, `w_display`, each of the type
    /// its `secrets` column has (data and write ids arrive in hex).
    const BULK_ROWS: &'static str;
    /// How many committers group commit runs, each batching the writes of its share of the
    /// keys: Postgres runs each batch on a server process of its own, so one batch executes
    /// while another's commit waits on the WAL flush; SQLite has one writer.
    const COMMITTERS: usize;
    /// Whether the database has one writer at a time (SQLite): then this process's write
    /// transactions take turns in arrival order (`WriteQueue::write_turn` in
    /// `group_commit.rs`) instead of polling for the lock, where a committer writing back
    /// to back starved an import or a Mesh write past `busy_timeout`.
    const ONE_WRITER: bool;
}
