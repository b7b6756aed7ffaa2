//! Where statements meet the pool: [`RunOnStore`] runs one statement on a pooled connection
//! and maps its errors; [`SqlStore::in_write_transaction`] runs several in one write
//! transaction, whose body may refuse (roll back) with a domain error of its own type; and
//! [`SqlStore::snapshot`] pins every read to one transaction, one point in time.

use super::{Dialect, Preparing, SqlStore};
use crate::store::backend::db_error::{Op, map_db_error};
use crate::store::contract::{Result, StoreError};
use sqlx::database::HasStatementCache;
use sqlx::query::QueryAs;
use sqlx::{AssertSqlSafe, Database, Executor, FromRow, IntoArguments};
use std::future::Future;
use std::pin::Pin;

/// How a write transaction's body ends when it does not commit: the database failed, or the
/// body refused (a domain rule, decided inside the transaction). Either way it rolls back.
pub(super) enum TxError<E> {
    /// The database failed; mapped with the transaction's [`Op`].
    Db(sqlx::Error),
    /// The body refused with this error.
    Refused(E),
}

impl<E> From<sqlx::Error> for TxError<E> {
    fn from(err: sqlx::Error) -> Self {
        TxError::Db(err)
    }
}

/// What a transaction body returns: its value, or why it did not commit.
pub(super) type TxResult<T, E = StoreError> = std::result::Result<T, TxError<E>>;

/// A transaction body: a future on the transaction's connection.
pub(super) type TxBody<'c, T, E> = Pin<Box<dyn Future<Output = TxResult<T, E>> + Send + 'c>>;

/// Runs `$run` (an expression over `$conn`, the connection) on a pooled connection of
/// `$store` and maps its errors. With unnamed statements ([`Preparing::Unnamed`]) it runs
/// inside a transaction of its own: a pooler in transaction mode keeps one server session
/// only for the length of a transaction, and an unnamed statement is prepared and executed
/// in two exchanges.
macro_rules! on_a_connection {
    ($store:expr, $op:expr, |$conn:ident| $run:expr) => {{
        let store = $store;
        let op = $op;
        let mut pooled = store
            .pool
            .acquire()
            .await
            .map_err(|e| map_db_error(e, op))?;
        let result = match store.preparing {
            Preparing::Named => {
                let $conn = pooled.conn();
                $run.await
            }
            Preparing::Unnamed => {
                async {
                    let mut tx = sqlx::Connection::begin(pooled.conn()).await?;
                    let value = {
                        let $conn = &mut *tx;
                        $run.await?
                    };
                    tx.commit().await?;
                    Ok(value)
                }
                .await
            }
        };
        pooled.finish(result).map_err(|e| map_db_error(e, op))
    }};
}

/// Runs a query on a pooled connection of the store and maps its errors: the one place
/// single statements meet the pool (see `pool.rs` for why the connection is handed back
/// only after a clean finish).
pub(super) trait RunOnStore<DB: Database, O> {
    async fn fetch_optional_via(self, store: &SqlStore<DB>, op: Op<'_>) -> Result<Option<O>>;
    async fn fetch_one_via(self, store: &SqlStore<DB>, op: Op<'_>) -> Result<O>;
    async fn fetch_all_via(self, store: &SqlStore<DB>, op: Op<'_>) -> Result<Vec<O>>;
}

impl<'q, DB, O> RunOnStore<DB, O> for QueryAs<'q, DB, O, DB::Arguments>
where
    DB: Database + HasStatementCache,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    O: for<'r> FromRow<'r, DB::Row> + Send + Unpin,
{
    /// Runs the statement to its end, whatever it returns after its first row. On SQLite
    /// a statement outside a transaction commits when it is stepped to its end: a fetch
    /// that stopped at the first row (sqlx's `fetch_optional`) left that commit to the
    /// statement's reset, whose error (a full disk, an I/O error) nobody sees, so an
    /// `INSERT … RETURNING` answered a row that was never stored.
    async fn fetch_optional_via(self, store: &SqlStore<DB>, op: Op<'_>) -> Result<Option<O>> {
        let query = self.persistent(store.preparing == Preparing::Named);
        on_a_connection!(store, op, |conn| to_the_end(query.fetch(conn)))
    }

    async fn fetch_one_via(self, store: &SqlStore<DB>, op: Op<'_>) -> Result<O> {
        self.fetch_optional_via(store, op)
            .await?
            .ok_or_else(|| map_db_error(sqlx::Error::RowNotFound, op))
    }

    async fn fetch_all_via(self, store: &SqlStore<DB>, op: Op<'_>) -> Result<Vec<O>> {
        let query = self.persistent(store.preparing == Preparing::Named);
        on_a_connection!(store, op, |conn| query.fetch_all(conn))
    }
}

/// The first row of `rows`, after stepping through every other one: see
/// [`RunOnStore::fetch_optional_via`] for why a statement is never left half-run.
pub(super) async fn to_the_end<O>(
    rows: impl futures_util::Stream<Item = std::result::Result<O, sqlx::Error>>,
) -> std::result::Result<Option<O>, sqlx::Error> {
    use futures_util::TryStreamExt;
    let mut rows = std::pin::pin!(rows);
    let mut first = None;
    while let Some(row) = rows.try_next().await? {
        first.get_or_insert(row);
    }
    Ok(first)
}

/// Opens the snapshot's transaction on its connection and reads once, which fixes what
/// it sees (Postgres takes the snapshot at the first statement, SQLite at the first read).
fn begin_snapshot<DB: Dialect>(
    conn: &mut DB::Connection,
) -> futures_util::future::BoxFuture<'_, std::result::Result<(), sqlx::Error>>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    Box::pin(async move {
        conn.execute(DB::BEGIN_SNAPSHOT).await?;
        conn.execute("SELECT 1 FROM meshes LIMIT 1").await?;
        Ok(())
    })
}

impl_for_sql_databases! {
impl [SqlStore<DB>] {
    /// A view of this store in which every read sees one point in time, as `pg_dump` reads:
    /// all its statements run on one connection in one read-only transaction (Postgres
    /// `REPEATABLE READ READ ONLY`, SQLite one read transaction), begun here. For backups
    /// and copies that walk a live store page by page. Writes through it fail. If its
    /// connection is lost, its reads fail rather than go on at another point in time.
    /// [`close`](SqlStore::close) it when done (that ends the transaction).
    pub fn snapshot(&self) -> Self {
        Self {
            pool: crate::store::backend::pool::ConnectionPool::pinned(
                self.pool.connect_options().clone(),
                begin_snapshot::<DB>,
                self.options.acquire_timeout,
            ),
            options: self.options.clone(),
            // Statements run inside the snapshot's own transaction; the unnamed path would
            // wrap each in another one (and its commit would end the snapshot).
            preparing: Preparing::Named,
            changes: self.changes.clone(),
            writes: super::WriteQueue::default(),
        }
    }

    /// Runs `body`, writes, on one pooled connection, each statement committing on its own
    /// (as [`RunOnStore`] runs one): a refusal comes back as it is, a database error is
    /// mapped for `op`. With unnamed statements ([`Preparing::Unnamed`]) the body runs in a
    /// transaction of its own, as [`RunOnStore`]'s statements do. Takes this process's turn
    /// to write first, as [`SqlStore::in_write_transaction`] does.
    pub(super) async fn on_one_connection<T, F>(&self, op: Op<'_>, body: F) -> Result<T>
    where
        F: for<'c> FnOnce(&'c mut DB::Connection) -> TxBody<'c, T, StoreError>,
    {
        let _turn = self.writes.write_turn::<DB>().await;
        let mut conn = self.pool.acquire().await.map_err(|e| map_db_error(e, op))?;
        let result = self.preparing.around(async {
            match self.preparing {
                Preparing::Named => Ok(body(conn.conn()).await),
                Preparing::Unnamed => {
                    let mut tx = sqlx::Connection::begin(conn.conn()).await?;
                    let outcome = body(&mut tx).await;
                    match outcome {
                        Ok(_) => tx.commit().await?,
                        Err(_) => tx.rollback().await?,
                    }
                    Ok(outcome)
                }
            }
        })
        .await;
        // The connection goes back to the pool only in a known state: a database error of
        // the body counts as the body's end.
        let result = match result {
            Ok(Err(TxError::Db(err))) => Err(err),
            Ok(Ok(value)) => Ok(Ok(value)),
            Ok(Err(TxError::Refused(refusal))) => Ok(Err(refusal)),
            Err(err) => Err(err),
        };
        conn.finish(result).map_err(|e| map_db_error(e, op))?
    }

    /// Runs `body` in a write transaction on a pooled connection: commits if it returns
    /// `Ok`, rolls back otherwise. A refusal comes back as it is; a database error is
    /// mapped for `op` (so a constraint violation names the resource being created). On a
    /// database with one writer, waits for this process's turn to write first
    /// ([`WriteQueue::write_turn`](super::group_commit::WriteQueue::write_turn)).
    pub(super) async fn in_write_transaction<T, E, F>(&self, op: Op<'_>, body: F) -> std::result::Result<T, E>
    where
        E: From<StoreError>,
        F: for<'c> FnOnce(&'c mut DB::Connection) -> TxBody<'c, T, E>,
    {
        let _turn = self.writes.write_turn::<DB>().await;
        let mut conn = self.pool.acquire().await.map_err(|e| E::from(map_db_error(e, op)))?;
        let result = self.preparing.around(async {
            let mut tx = sqlx::Connection::begin_with(conn.conn(), AssertSqlSafe(DB::BEGIN_WRITE)).await?;
            let outcome = body(&mut tx).await;
            if self.preparing == Preparing::Unnamed && sqlx::Connection::cached_statements_size(&*tx) > 0 {
                // Nothing named may outlive the transaction on a pooler's server session: a
                // statement built outside the operation (so prepared under a name) is closed
                // here, before the session goes back to the pooler.
                tracing::warn!("a statement was prepared under a name with pool_mode=transaction; closing it");
                sqlx::Connection::clear_cached_statements(&mut *tx).await?;
            }
            match outcome {
                Ok(value) => {
                    tx.commit().await?;
                    Ok(Ok(value))
                }
                Err(TxError::Refused(refusal)) => {
                    // A rollback that fails (SQLite already rolled back on a full disk; the
                    // connection broke) leaves the refusal as the answer; the connection
                    // still counts the transaction as open, so `finish` closes it.
                    if let Err(err) = tx.rollback().await {
                        tracing::debug!(error = %err, "a refused write transaction did not roll back");
                    }
                    Ok(Err(refusal))
                }
                Err(TxError::Db(err)) => Err(err),
            }
        })
        .await;
        conn.finish(result).map_err(|e| E::from(map_db_error(e, op)))?
    }
}
}
