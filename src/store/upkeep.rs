//! The background work a store needs while a control plane runs, started and stopped by
//! the embedder (the `serve` command is one): retention (change-feed events and the kept
//! versions of deleted secrets, pruned in small batches every minute), the read cache's
//! follower, and a read replica's monitor.
//!
//! ```no_run
//! # async fn example(store: kuma_secrets::store::AnyStore) {
//! use kuma_secrets::store::upkeep::{Upkeep, UpkeepOptions};
//! let upkeep = Upkeep::start(store.clone(), UpkeepOptions::default());
//! // … serve …
//! upkeep.stop().await;
//! # }
//! ```
//!
//! Several replicas may all run it on one database: pruning twice is harmless.

use crate::store::backend::AnyStore;
use crate::store::contract::{Replication, Result, SealedReads, SecretStore};
use crate::store::wrap::cache::CachedStore;
use crate::store::wrap::replica::ReadReplica;
use std::future::Future;
use std::time::Duration;
use tokio::task::JoinHandle;

/// What the upkeep keeps and how often it prunes.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct UpkeepOptions {
    /// How long change-feed events are kept (default 7 days); a reader asking for older
    /// ones gets [`StoreError::Gone`](crate::store::StoreError::Gone).
    pub events_retention: Duration,
    /// How long the kept versions of a deleted secret stay restorable (default 7 days).
    pub deleted_retention: Duration,
    /// How often it prunes (default every minute).
    pub every: Duration,
    /// Rows per pruning statement (default 1,000), so no lock is held for long.
    pub batch: u32,
}

impl Default for UpkeepOptions {
    fn default() -> Self {
        Self {
            events_retention: Duration::from_secs(7 * 24 * 3600),
            deleted_retention: Duration::from_secs(7 * 24 * 3600),
            every: Duration::from_secs(60),
            batch: 1000,
        }
    }
}

impl UpkeepOptions {
    /// These options with events kept for `retention`.
    #[must_use]
    pub fn events_retention(mut self, retention: Duration) -> Self {
        self.events_retention = retention;
        self
    }

    /// These options with deleted secrets' versions kept for `retention`.
    #[must_use]
    pub fn deleted_retention(mut self, retention: Duration) -> Self {
        self.deleted_retention = retention;
        self
    }
}

/// The running upkeep tasks. [`Upkeep::stop`] ends them; dropping the value does too.
#[derive(Debug)]
pub struct Upkeep {
    tasks: Vec<JoinHandle<()>>,
}

impl Upkeep {
    /// Starts retention on `store`. Needs a Tokio runtime.
    pub fn start(store: AnyStore, options: UpkeepOptions) -> Self {
        let mut upkeep = Self { tasks: Vec::new() };
        upkeep.spawn(prune(store, options));
        upkeep
    }

    /// Also runs `cache`'s follower, which keeps it coherent with the change feed (without
    /// it, the cache stops answering after a second and every read goes to the database).
    #[must_use]
    pub fn with_cache_follower<S>(mut self, cache: CachedStore<S>) -> Self
    where
        S: SecretStore + SealedReads + Clone + 'static,
    {
        self.spawn(cache.follow());
        self
    }

    /// Also runs `replica`'s monitor, which measures the standby's lag (without it, every
    /// read goes to the primary).
    #[must_use]
    pub fn with_replica_monitor<S: Replication>(mut self, replica: ReadReplica<S>) -> Self {
        self.spawn(replica.monitor());
        self
    }

    /// Also runs `task` until the upkeep stops.
    pub fn spawn(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.push(tokio::spawn(task));
    }

    /// Stops every task and waits until they have ended (a prune in flight is cut short:
    /// its batch rolls back and the next start prunes it).
    pub async fn stop(mut self) {
        for task in &self.tasks {
            task.abort();
        }
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }
}

impl Drop for Upkeep {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Every `options.every`, prunes what retention lets go.
async fn prune(store: AnyStore, options: UpkeepOptions) {
    let mut tick = tokio::time::interval(options.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        prune_in_batches("change-feed events", || {
            store.prune_events(cutoff(options.events_retention), options.batch)
        })
        .await;
        prune_in_batches("versions of deleted secrets", || {
            store.prune_deleted_history(cutoff(options.deleted_retention), options.batch)
        })
        .await;
    }
}

/// Runs `batch` until it prunes nothing (or fails: the next tick tries again).
async fn prune_in_batches<F, Fut>(what: &str, mut batch: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<u64>>,
{
    loop {
        match batch().await {
            Ok(0) => break,
            Ok(pruned) => tracing::debug!(pruned, what, "pruned"),
            Err(err) => {
                tracing::warn!(error = %err, what, "could not prune");
                break;
            }
        }
    }
}

/// The time `retention` ago.
fn cutoff(retention: Duration) -> chrono::DateTime<chrono::Utc> {
    chrono::Duration::from_std(retention)
        .ok()
        .and_then(|keep| chrono::Utc::now().checked_sub_signed(keep))
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC)
}
