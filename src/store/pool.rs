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
//! or dropping the guard without `finish` (cancellation), closes it.

use sqlx::{ConnectOptions, Connection};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Idle connections older than this are pinged before use (pgx's default).
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);
/// Connections are replaced after this long, so server-side memory and settings refresh
/// (Kuma's `maxConnectionLifetime` is 1 h).
const MAX_LIFETIME: Duration = Duration::from_secs(60 * 60);

struct Idle<C> {
    conn: C,
    created: Instant,
    idle_since: Instant,
}

struct Inner<C: Connection> {
    idle: Mutex<Vec<Idle<C>>>,
    permits: Arc<Semaphore>,
    connect: C::Options,
    acquire_timeout: Duration,
    max_connections: u32,
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
    /// A pool of at most `max_connections`, opening them lazily with `connect`.
    pub fn new(connect: C::Options, max_connections: u32, acquire_timeout: Duration) -> Self {
        let max_connections = max_connections.max(1);
        Self {
            inner: Arc::new(Inner {
                idle: Mutex::new(Vec::new()),
                permits: Arc::new(Semaphore::new(max_connections as usize)),
                connect,
                acquire_timeout,
                max_connections,
            }),
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
            if idle.created.elapsed() > MAX_LIFETIME {
                tokio::spawn(idle.conn.close());
                continue;
            }
            if idle.idle_since.elapsed() > PING_IF_IDLE_FOR && idle.conn.ping().await.is_err() {
                continue;
            }
            return Ok(PooledConnection {
                conn: Some(idle.conn),
                created: idle.created,
                pool: self.inner.clone(),
                _permit: permit,
            });
        }
        let conn = tokio::time::timeout(self.inner.acquire_timeout, self.inner.connect.connect())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)??;
        Ok(PooledConnection {
            conn: Some(conn),
            created: Instant::now(),
            pool: self.inner.clone(),
            _permit: permit,
        })
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
            Err(e) if crate::store::error::ends_the_connection(e) => false,
            Ok(_) | Err(sqlx::Error::Database(_) | sqlx::Error::RowNotFound) => true,
            Err(sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_)) => true,
            Err(_) => false,
        };
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
