//! Reads from a Postgres streaming standby (`serve --read-replica`), writes to the primary.
//!
//! [`ReadReplica`] sends single-secret reads, history reads, Mesh reads and list pages whose
//! total is already known to the standby, and everything else (writes, counts, the change
//! feed, the read cache's fills) to the primary. A monitor ([`ReadReplica::monitor`])
//! measures how far the standby is behind: it notes the primary's WAL position, then waits
//! for the standby to replay it. The standby serves a read only when
//!
//! - it answered the monitor lately and its lag is within `--max-replica-lag`, and
//! - it has replayed everything the primary had when this process's last write had
//!   committed: a client never reads older than its own write through the same server.
//!   (Writes through other servers are seen within the lag, as with any replica.)
//!
//! Otherwise the read goes to the primary. `/readyz` reports the standby's state in its
//! body and stays 200 while the primary serves.
//!
//! Why the read cache is filled from the primary: a fill from a lagging standby could keep
//! a version older than one whose change event the cache has already applied, and nothing
//! would drop it. Why a list's total is counted on the primary: the cache keeps totals
//! until a secret changes, so a stale count from the standby could stay.

use crate::domain::{
    ExternalService, Mesh, MeshName, MeshUpdate, NewExternalService, NewMesh, NewSecret, Resource,
    ResourceName, Secret, SecretKey, SecretReferrer, SecretUpdate,
};
use crate::store::contract::feed::{EventFilter, EventPage};
use crate::store::contract::history::VersionInfo;
use crate::store::contract::page::{ExternalServiceQuery, MeshQuery, Page, SecretQuery};
use crate::store::contract::{
    Expect, ImportCounts, Put, Replication, Result, SecretStore, feed::ChangeSignal,
};
use crate::store::contract::{SealedReads, SealedSecret};
use crate::store::wrap::forward_store_methods;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The default of `--max-replica-lag`.
pub const DEFAULT_MAX_REPLICA_LAG: Duration = Duration::from_secs(5);

/// How often the monitor measures the standby.
const MONITOR_EVERY: Duration = Duration::from_millis(100);

#[derive(Debug, Default)]
struct Standing {
    /// The standby has replayed everything the primary had at this instant.
    caught_up_to: Option<Instant>,
    /// The last measured lag.
    lag: Option<Duration>,
    /// When this process's last write (through this store) ended.
    last_write: Option<Instant>,
    /// Why the standby is not used, if it is not.
    trouble: Option<String>,
}

/// A store that reads from a standby where it safely can (see the module docs).
#[derive(Clone)]
pub struct ReadReplica<S> {
    primary: S,
    replica: S,
    max_lag: Duration,
    standing: Arc<Mutex<Standing>>,
}

impl<S: Replication> ReadReplica<S> {
    /// Reads from `replica` (a standby of `primary`) while it is within `max_lag`.
    pub fn new(primary: S, replica: S, max_lag: Duration) -> Self {
        Self {
            primary,
            replica,
            max_lag,
            standing: Arc::new(Mutex::new(Standing {
                trouble: Some("not measured yet".to_owned()),
                ..Standing::default()
            })),
        }
    }

    fn standing(&self) -> std::sync::MutexGuard<'_, Standing> {
        self.standing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Measures the standby until the future is dropped: every `MONITOR_EVERY` (100 ms), the
    /// primary's WAL position, then how long the standby takes to replay it (given up past
    /// the maximum lag).
    pub async fn monitor(self) {
        loop {
            let noted = Instant::now();
            let outcome = async {
                let lsn = self
                    .primary
                    .wal_position()
                    .await
                    .map_err(|e| format!("primary: {e}"))?;
                loop {
                    let replayed = self
                        .replica
                        .has_replayed(&lsn)
                        .await
                        .map_err(|e| format!("unreachable: {e}"))?;
                    if replayed {
                        return Ok(noted.elapsed());
                    }
                    if noted.elapsed() > self.max_lag {
                        return Err(format!(
                            "lagging more than {:?} (--max-replica-lag)",
                            self.max_lag
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            .await;
            {
                let mut standing = self.standing();
                match outcome {
                    Ok(lag) => {
                        standing.caught_up_to = Some(noted);
                        standing.lag = Some(lag);
                        standing.trouble = None;
                    }
                    Err(why) => {
                        if standing.trouble.as_deref() != Some(why.as_str()) {
                            tracing::warn!(reason = %why, "read replica not used; reads go to the primary");
                        }
                        standing.trouble = Some(why);
                    }
                }
            }
            tokio::time::sleep(MONITOR_EVERY).await;
        }
    }

    /// The standby, if it may serve a read now; else the primary.
    fn reader(&self) -> &S {
        let standing = self.standing();
        let fresh = standing
            .caught_up_to
            .is_some_and(|at| at.elapsed() <= self.max_lag + MONITOR_EVERY);
        let has_own_writes = match (standing.last_write, standing.caught_up_to) {
            (None, _) => true,
            (Some(write), Some(caught_up)) => caught_up >= write,
            (Some(_), None) => false,
        };
        if standing.trouble.is_none() && fresh && has_own_writes {
            &self.replica
        } else {
            &self.primary
        }
    }

    /// Runs a write on the primary, then notes when it ended.
    async fn writing<T>(&self, write: impl std::future::Future<Output = T>) -> T {
        let result = write.await;
        self.standing().last_write = Some(Instant::now());
        result
    }

    /// The standby's state, for `/readyz`.
    pub fn describe(&self) -> String {
        let standing = self.standing();
        match (&standing.trouble, standing.lag) {
            (Some(trouble), _) => {
                format!("read replica: not used ({trouble}); reads go to the primary")
            }
            (None, Some(lag)) => format!("read replica: in use, lag {} ms", lag.as_millis()),
            (None, None) => "read replica: in use".to_owned(),
        }
    }
}

impl<S: Replication + SealedReads> SealedReads for ReadReplica<S> {
    async fn get_sealed_secret(&self, key: &SecretKey) -> Result<SealedSecret> {
        self.primary.get_sealed_secret(key).await
    }
    fn open_sealed(&self, sealed: &SealedSecret) -> Result<Secret> {
        self.primary.open_sealed(sealed)
    }
}

impl<S: Replication + SecretStore> SecretStore for ReadReplica<S> {
    forward_store_methods! { [primary] through writing
        fn create_secret(secret: NewSecret) -> Secret;
        fn update_secret(key: &SecretKey, v: i64, u: SecretUpdate) -> Secret;
        fn delete_secret(key: &SecretKey, v: Option<i64>) -> ();
        fn put_secret(secret: NewSecret, expect: Expect) -> Put<Secret>;
        fn put_mesh(mesh: NewMesh, expect: Expect) -> Put<Mesh>;
        fn rollback_secret(key: &SecretKey, to: i64, v: Option<i64>) -> Secret;
        fn restore_secret(key: &SecretKey, version: Option<i64>) -> Secret;
        fn purge_secret(key: &SecretKey, expected: Option<i64>) -> ();
        fn create_mesh(mesh: NewMesh) -> Mesh;
        fn update_mesh(name: &MeshName, v: i64, u: MeshUpdate) -> Mesh;
        fn delete_mesh(name: &MeshName, v: Option<i64>) -> ();
        fn put_external_service(service: NewExternalService, expect: Expect) -> Put<ExternalService>;
        fn delete_external_service(mesh: &MeshName, name: &ResourceName, v: Option<i64>) -> ();
        fn import_batch(items: Vec<Resource>) -> ImportCounts;
    }
    forward_store_methods! { [reader()]
        fn get_secret(key: &SecretKey) -> Secret;
        fn get_secret_version(key: &SecretKey, version: i64) -> Secret;
        fn secret_versions(key: &SecretKey) -> Vec<VersionInfo>;
        fn get_mesh(name: &MeshName) -> Mesh;
        fn list_meshes(query: &MeshQuery) -> Page<Mesh>;
        fn get_external_service(mesh: &MeshName, name: &ResourceName) -> ExternalService;
        fn list_external_services(query: &ExternalServiceQuery) -> Page<ExternalService>;
    }
    forward_store_methods! { [primary]
        fn secret_version(key: &SecretKey) -> Option<i64>;
        fn secret_referrers(key: &SecretKey) -> Vec<SecretReferrer>;
        fn current_revision() -> i64;
        fn events_after(after: i64, limit: u32, filter: &EventFilter) -> EventPage;
        fn ping() -> ();
    }
    async fn get_secret_fresh(&self, key: &SecretKey) -> Result<Secret> {
        self.primary.get_secret(key).await
    }
    async fn list_secrets(&self, query: &SecretQuery) -> Result<Page<Secret>> {
        // Counts on the primary (see the module docs); pages with a known total anywhere.
        let store = if query.known_total.is_some() {
            self.reader()
        } else {
            &self.primary
        };
        store.list_secrets(query).await
    }
    fn readiness_note(&self) -> Option<String> {
        Some(self.describe())
    }
    fn change_signal(&self) -> Option<ChangeSignal> {
        self.primary.change_signal()
    }
    /// The primary's pool: where failover trouble shows.
    fn pool_report(&self) -> Option<crate::store::contract::PoolReport> {
        self.primary.pool_report()
    }
}
