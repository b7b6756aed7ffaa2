//! [`ConnectionPool`]: the store's own connection pool.
//!
//! Why not `sqlx::Pool`: it pings every connection as it is returned (`return_to_pool` in
//! sqlx-core 0.9), one extra round trip per query. In the benchmark that capped a
//! single-secret get at about half of what `pgbench` reaches on the same Postgres. This pool
//! does what pgx (Kuma's driver) does instead: hand connections back without a ping, ping
//! only a connection that sat idle for over a second, and throw away any connection whose
//! operation did not finish cleanly, so a cancelled query can never leave a half-read
//! connection behind for the next caller.
//!
//! A caller acquires a [`PooledConnection`], runs its statement on it, and passes the
//! result to [`PooledConnection::finish`]: success or a database error (which the server
//! reported in an orderly way) returns the connection to the pool; an I/O or protocol error,
//! an error saying the server is going away or only reads now (a demoted primary after a
//! failover: see [`crate::store::backend::db_error::ends_the_connection`]), or dropping the guard
//! without `finish` (cancellation), closes it, so the next caller opens a fresh connection,
//! which a proxy such as HAProxy routes to the current primary.
//!
//! A pool may check every new connection before handing it out ([`ConnectCheck`]): the
//! Postgres store refuses connections to a server that only reads, as libpq's
//! `target_session_attrs=read-write` does. [`PoolReport`] counts both kinds of refusal,
//! for `/metrics`.

use crate::store::contract::PoolReport;
use futures_util::future::BoxFuture;
use sqlx::{ConnectOptions, Connection};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Idle connections older than this are pinged before use (pgx's default).
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);
/// Connections are replaced after this long, so server-side memory and settings refresh
/// (Kuma's `maxConnectionLifetime` is 1 h).
const MAX_LIFETIME: Duration = Duration::from_secs(60 * 60);
/// How many more connections to open after the check refused one.
const REOPEN_REFUSED: u32 = 3;
/// Pause before the n-th reopen: n times this.
const REOPEN_PAUSE: Duration = Duration::from_millis(25);

struct Idle<C> {
    conn: C,
    created: Instant,
    idle_since: Instant,
}

/// Runs on every new connection before it is used; an error refuses the connection (it is
/// closed and the caller gets the error).
pub(crate) type ConnectCheck<C> = for<'c> fn(&'c mut C) -> BoxFuture<'c, Result<(), sqlx::Error>>;

struct Inner<C: Connection> {
    /// Pinned: one connection, opened once and never replaced (see [`ConnectionPool::pinned`]).
    pinned: Option<std::sync::atomic::AtomicBool>,
    idle: Mutex<Vec<Idle<C>>>,
    permits: Arc<Semaphore>,
    connect: C::Options,
    check: Option<ConnectCheck<C>>,
    acquire_timeout: Duration,
    max_connections: u32,
    discarded: AtomicU64,
    refused: AtomicU64,
}

/// A bounded pool of connections of type `C`.
pub(crate) struct ConnectionPool<C: Connection> {
    inner: Arc<Inner<C>>,
}

impl<C: Connection> Clone for ConnectionPool<C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<C: Connection> ConnectionPool<C> {
    /// A pool of at most `max_connections`, opening them lazily with `connect` and checking
    /// each new one with `check`, if given.
    pub fn new(
        connect: C::Options,
        check: Option<ConnectCheck<C>>,
        max_connections: u32,
        acquire_timeout: Duration,
    ) -> Self {
        Self::with(connect, check, max_connections, acquire_timeout, None)
    }

    /// A pool of one connection, opened (and checked) once and never pinged, aged out or
    /// replaced: if it is lost, every later acquire fails. For a session whose state must
    /// not silently change, such as a snapshot's open transaction.
    pub fn pinned(connect: C::Options, check: ConnectCheck<C>, acquire_timeout: Duration) -> Self {
        Self::with(
            connect,
            Some(check),
            1,
            acquire_timeout,
            Some(std::sync::atomic::AtomicBool::new(false)),
        )
    }

    fn with(
        connect: C::Options,
        check: Option<ConnectCheck<C>>,
        max_connections: u32,
        acquire_timeout: Duration,
        pinned: Option<std::sync::atomic::AtomicBool>,
    ) -> Self {
        let max_connections = max_connections.max(1);
        Self {
            inner: Arc::new(Inner {
                pinned,
                idle: Mutex::new(Vec::new()),
                permits: Arc::new(Semaphore::new(max_connections as usize)),
                connect,
                check,
                acquire_timeout,
                max_connections,
                discarded: AtomicU64::new(0),
                refused: AtomicU64::new(0),
            }),
        }
    }

    /// How the pool opens connections.
    pub fn connect_options(&self) -> &C::Options {
        &self.inner.connect
    }

    /// What the pool has thrown away so far.
    pub fn report(&self) -> PoolReport {
        PoolReport {
            discarded: self.inner.discarded.load(Ordering::Relaxed),
            refused: self.inner.refused.load(Ordering::Relaxed),
            ..PoolReport::default()
        }
    }

    /// Largest number of connections.
    pub fn max_connections(&self) -> u32 {
        self.inner.max_connections
    }

    /// Number of idle connections.
    pub fn idle(&self) -> usize {
        self.inner.idle.lock().map_or(0, |idle| idle.len())
    }

    /// Waits (up to the acquire timeout) for a connection.
    ///
    /// # Errors
    /// `PoolTimedOut` if none frees up in time, `PoolClosed` after [`Self::close`], or the
    /// error of opening a new connection.
    pub async fn acquire(&self) -> Result<PooledConnection<C>, sqlx::Error> {
        let permit = tokio::time::timeout(
            self.inner.acquire_timeout,
            self.inner.permits.clone().acquire_owned(),
        )
        .await
        .map_err(|_| sqlx::Error::PoolTimedOut)?
        .map_err(|_| sqlx::Error::PoolClosed)?;
        loop {
            let reused = self.inner.idle.lock().ok().and_then(|mut idle| idle.pop());
            let Some(mut idle) = reused else {
                break;
            };
            let pinned = self.inner.pinned.is_some();
            if !pinned && idle.created.elapsed() > MAX_LIFETIME {
                tokio::spawn(idle.conn.close());
                continue;
            }
            if !pinned
                && idle.idle_since.elapsed() > PING_IF_IDLE_FOR
                && idle.conn.ping().await.is_err()
            {
                continue;
            }
            return Ok(PooledConnection {
                conn: Some(idle.conn),
                created: idle.created,
                pool: self.inner.clone(),
                _permit: permit,
            });
        }
        let conn = self.open_checked().await?;
        Ok(PooledConnection {
            conn: Some(conn),
            created: Instant::now(),
            pool: self.inner.clone(),
            _permit: permit,
        })
    }

    /// Opens a new connection and runs the pool's check on it. A refused connection is
    /// closed and another opened, a few times: behind a proxy that still spreads new
    /// connections over the old and the new primary during a failover (HAProxy between
    /// health checks), the next one may well reach the primary.
    async fn open_checked(&self) -> Result<C, sqlx::Error> {
        if let Some(opened) = &self.inner.pinned
            && opened.swap(true, Ordering::SeqCst)
        {
            return Err(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "the pinned connection was lost (its session, such as a snapshot, is gone)",
            )));
        }
        let deadline = Instant::now() + self.inner.acquire_timeout;
        let mut attempt = 0;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut conn = tokio::time::timeout(left, self.inner.connect.connect())
                .await
                .map_err(|_| sqlx::Error::PoolTimedOut)??;
            let Some(check) = self.inner.check else {
                return Ok(conn);
            };
            match check(&mut conn).await {
                Ok(()) => return Ok(conn),
                Err(refusal) => {
                    self.inner.refused.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(conn.close_hard());
                    attempt += 1;
                    let pause = REOPEN_PAUSE * attempt;
                    if attempt > REOPEN_REFUSED || Instant::now() + pause >= deadline {
                        return Err(refusal);
                    }
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    /// Stops handing out connections and closes the idle ones. Connections in use are
    /// closed when their guards drop.
    pub async fn close(&self) {
        self.inner.permits.close();
        let idle: Vec<_> = self
            .inner
            .idle
            .lock()
            .map(|mut idle| idle.drain(..).collect())
            .unwrap_or_default();
        for idle in idle {
            let _ = idle.conn.close().await;
        }
    }
}

/// A connection on loan from a [`ConnectionPool`].
pub(crate) struct PooledConnection<C: Connection> {
    conn: Option<C>,
    created: Instant,
    pool: Arc<Inner<C>>,
    _permit: OwnedSemaphorePermit,
}

impl<C: Connection> PooledConnection<C> {
    /// The connection, to run statements on.
    pub fn conn(&mut self) -> &mut C {
        self.conn.as_mut().expect("connection present until finish")
    }

    /// Returns the connection to the pool if `result` shows it is in a known state, and
    /// passes `result` through.
    pub fn finish<T>(mut self, result: Result<T, sqlx::Error>) -> Result<T, sqlx::Error> {
        let reusable = match &result {
            Err(e) if crate::store::backend::db_error::ends_the_connection(e) => false,
            Ok(_) | Err(sqlx::Error::Database(_) | sqlx::Error::RowNotFound) => true,
            Err(sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_)) => true,
            Err(_) => false,
        };
        // A transaction the driver still counts as open (its commit or rollback failed: SQLite
        // rolls back on its own on a full disk, and its ROLLBACK then fails) would refuse the
        // next caller's `BEGIN`: such a connection is not handed out again.
        let reusable = reusable && !self.conn.as_ref().is_some_and(C::is_in_transaction);
        if !reusable && self.conn.is_some() {
            self.pool.discarded.fetch_add(1, Ordering::Relaxed);
        }
        if reusable
            && !self.pool.permits.is_closed()
            && let (Some(conn), Ok(mut idle)) = (self.conn.take(), self.pool.idle.lock())
        {
            idle.push(Idle {
                conn,
                created: self.created,
                idle_since: Instant::now(),
            });
        }
        result
    }
}

impl<C: Connection> Drop for PooledConnection<C> {
    fn drop(&mut self) {
        // Not finished (cancelled or failed): the connection may hold half a conversation
        // with the server. Drop it; the socket closes and the server cleans up.
        if let Some(conn) = self.conn.take()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            handle.spawn(conn.close_hard());
        }
    }
}
