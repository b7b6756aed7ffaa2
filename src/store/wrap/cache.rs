//! The read cache: secrets served from memory, kept coherent by the change feed.
//!
//! [`CachedStore`] wraps a store. A GET that finds its secret in the cache opens it from
//! memory; one that does not reads the row and keeps it. What is kept is the row as
//! stored, **still sealed**: each read opens it again (AES-256-GCM of a 1 KiB value costs
//! about a microsecond), so a memory dump of `serve` holds no more plaintext than the
//! requests in flight. (A store without a keyring holds plaintext rows, in memory as in
//! the database.)
//!
//! Coherence, in three rules:
//!
//! 1. **Own writes.** Every write through this store drops the secrets it touched (a Mesh
//!    write drops the Mesh's secrets) before it returns, so this replica's next read goes
//!    to the database: read-your-writes.
//! 2. **Other replicas' writes.** A follower reads the change feed when the store's change
//!    signal wakes it (this process's writes; on Postgres, other processes' commits, by
//!    `LISTEN/NOTIFY`), and at least every [`WATCH_POLL`], and drops every secret an event
//!    names. Another replica's write is visible here within a few milliseconds (one poll
//!    at worst, when a notification is lost). While writes keep coming, the follower reads
//!    the feed at most once every [`BUSY_FEED_INTERVAL`]: on Postgres each read numbers
//!    the events committed since the last one, and numbering a few events at a time cost
//!    blind PUTs at 32 clients about a tenth of their rate (README, "Group commit").
//! 3. **No stale fill.** A read that misses takes a ticket (its shard's epoch) before it
//!    reads the database and keeps the row only if no drop hit that shard since: a row read
//!    just before a write commits is never kept after the write's drop.
//!
//! When the feed cannot be read (the database is down), drops from other replicas stop
//! arriving. The cache then stops answering once [`MAX_STALENESS`] has passed since the
//! follower last read the feed: every read goes to the database (so, during an outage, a
//! 503 rather than data of unknown age). When the feed is back, the follower first applies
//! every event it missed, then the cache answers again. If retention pruned events the
//! follower still needed (410), it empties the cache and starts from the current revision.
//!
//! Single-secret GETs are served from memory. A list's page always comes from the
//! database, but its `total` (a count of every match, the bulk of a page's cost on a large
//! store) is kept by what it counts (scope and filters) and reused until any secret changes
//! (any write here, any event from the feed forgets every total). History reads go to the
//! database. The cache holds at most `capacity` secrets taking at most about a memory
//! budget (64 MiB by default; a secret larger than a sixteenth of it is never kept); a
//! full shard drops arbitrary entries to make room.
//!
//! [`WATCH_POLL`]: crate::store::watch::WATCH_POLL

use crate::domain::{
    ExternalService, Mesh, MeshName, MeshUpdate, NewExternalService, NewMesh, NewSecret, Resource,
    ResourceName, Secret, SecretKey, SecretReferrer, SecretUpdate,
};
use crate::store::contract::feed::{ChangeSignal, Event, EventFilter, EventPage};
use crate::store::contract::history::VersionInfo;
use crate::store::contract::page::{ExternalServiceQuery, MeshQuery, Page, SecretQuery};
use crate::store::contract::{
    CacheReport, CacheStats, Expect, ImportCounts, Put, Result, SealedReads, SealedSecret,
    SecretStore, StoreError,
};
use crate::store::wrap::forward_store_methods;
use crate::store::wrap::watch::{WATCH_POLL, wait_for_change};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long after the follower last read the change feed the cache still answers. Past
/// it, reads go to the database until the feed is read again.
pub const MAX_STALENESS: Duration = Duration::from_secs(1);

/// The shortest time between two reads of the change feed by the follower while every read
/// finds events (under write load); an idle feed is read as soon as the change signal
/// wakes the follower. Bounds how late another replica's write is seen, under load.
pub const BUSY_FEED_INTERVAL: Duration = Duration::from_millis(10);

/// The most events the follower reads at a time.
const FOLLOW_PAGE: u32 = 1000;

/// The default number of secrets kept (`serve --cache-entries`): about 15 MB of sealed
/// 1 KiB secrets.
pub const DEFAULT_CACHE_ENTRIES: usize = 10_000;

/// The default memory the cached rows may take (`serve --cache-mib`), whatever their
/// number: secrets may be up to a MiB each, and ten thousand of those would not fit.
pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;

/// Shards of the cache, each with its own lock and epoch.
const SHARDS: usize = 16;

/// The `total` of recent lists, by what they count (scope and filters). Any change to any
/// secret (a write here, an event from the feed) forgets them all: a total is reused only
/// while nothing it counts can have changed.
#[derive(Default)]
struct Totals {
    counts: HashMap<String, u64>,
    epoch: u64,
}

/// Totals kept at most; past it the oldest are not told apart, all go.
const MAX_TOTALS: usize = 1000;

#[derive(Default)]
struct Shard {
    entries: HashMap<SecretKey, Arc<SealedSecret>>,
    /// The memory its rows take, by [`SealedSecret::memory_size`].
    bytes: usize,
    /// Goes up on every drop in this shard: a fill keeps its row only if it is unchanged.
    epoch: u64,
}

/// The shared state of a [`CachedStore`] and its follower.
struct ReadCache {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
    per_shard_bytes: usize,
    totals: Mutex<Totals>,
    /// The revision the follower has read the feed to (every change up to it is committed).
    followed: std::sync::atomic::AtomicI64,
    /// When the cache was made: the origin of `fresh_until`.
    origin: Instant,
    /// Milliseconds after `origin` until which the cache answers (0: not yet).
    fresh_until: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    bypassed: AtomicU64,
    dropped: AtomicU64,
    totals_reused: AtomicU64,
}

/// A shard's epoch when a read began.
struct Ticket {
    shard: usize,
    epoch: u64,
}

impl ReadCache {
    fn new(capacity: usize, bytes: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            per_shard_bytes: bytes / SHARDS,
            totals: Mutex::new(Totals::default()),
            followed: std::sync::atomic::AtomicI64::new(0),
            origin: Instant::now(),
            fresh_until: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            bypassed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            totals_reused: AtomicU64::new(0),
        }
    }

    fn shard_of(key: &SecretKey) -> usize {
        use std::hash::BuildHasher;
        // A fixed hasher: the shard only spreads locks, it is not a security boundary.
        let hash =
            std::hash::BuildHasherDefault::<std::hash::DefaultHasher>::default().hash_one(key);
        (hash % SHARDS as u64) as usize
    }

    fn lock(&self, shard: usize) -> std::sync::MutexGuard<'_, Shard> {
        // A panic while holding the lock leaves a consistent map (every change is one call).
        self.shards[shard]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The follower has read the feed with a query that began at `read_from` (by
    /// [`ReadCache::now_ms`]): every change committed before then is applied.
    fn mark_fresh(&self, read_from: u64) {
        let until = read_from + MAX_STALENESS.as_millis() as u64;
        self.fresh_until.store(until, Ordering::Release);
    }

    /// Whether the cache may answer: the feed was read within [`MAX_STALENESS`].
    fn answering(&self) -> bool {
        self.now_ms() < self.fresh_until.load(Ordering::Acquire)
    }

    /// The cached row of `key`, or a ticket to fill it.
    fn get(&self, key: &SecretKey) -> std::result::Result<Arc<SealedSecret>, Ticket> {
        let shard = Self::shard_of(key);
        let guard = self.lock(shard);
        match guard.entries.get(key) {
            Some(row) => Ok(Arc::clone(row)),
            None => Err(Ticket {
                shard,
                epoch: guard.epoch,
            }),
        }
    }

    /// Keeps `row` for `key` if nothing was dropped in its shard since `ticket`.
    fn fill(&self, key: &SecretKey, ticket: Ticket, row: Arc<SealedSecret>) -> bool {
        let mut guard = self.lock(ticket.shard);
        if guard.epoch != ticket.epoch {
            return false;
        }
        let size = row.memory_size();
        if size > self.per_shard_bytes {
            return false; // larger than a shard may hold: always read from the database
        }
        if let Some(replaced) = guard.entries.remove(key) {
            guard.bytes -= replaced.memory_size();
        }
        // Make room: an arbitrary entry goes, as many times as needed.
        while guard.entries.len() >= self.per_shard || guard.bytes + size > self.per_shard_bytes {
            let Some(victim) = guard.entries.keys().next().cloned() else {
                break;
            };
            if let Some(gone) = guard.entries.remove(&victim) {
                guard.bytes -= gone.memory_size();
            }
        }
        guard.bytes += size;
        guard.entries.insert(key.clone(), row);
        true
    }

    fn lock_totals(&self) -> std::sync::MutexGuard<'_, Totals> {
        self.totals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The kept total of the lists `what` names, or a ticket to keep one.
    fn total(&self, what: &str) -> std::result::Result<u64, u64> {
        let totals = self.lock_totals();
        totals.counts.get(what).copied().ok_or(totals.epoch)
    }

    /// Keeps `total` for `what` if no secret changed since `ticket`.
    fn keep_total(&self, what: String, ticket: u64, total: u64) {
        let mut totals = self.lock_totals();
        if totals.epoch != ticket {
            return;
        }
        if totals.counts.len() >= MAX_TOTALS {
            totals.counts.clear();
        }
        totals.counts.insert(what, total);
    }

    /// Forgets every total: some secret changed.
    fn forget_totals(&self) {
        let mut totals = self.lock_totals();
        totals.epoch += 1;
        totals.counts.clear();
    }

    /// Drops `key`, and fails every fill of its shard in flight.
    fn drop_key(&self, key: &SecretKey) {
        self.forget_totals();
        let mut guard = self.lock(Self::shard_of(key));
        guard.epoch += 1;
        if let Some(gone) = guard.entries.remove(key) {
            guard.bytes -= gone.memory_size();
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Drops every secret of `mesh`.
    fn drop_mesh(&self, mesh: &str) {
        self.drop_where(|key| key.mesh().is_some_and(|m| m.as_str() == mesh));
    }

    /// Drops everything.
    fn clear(&self) {
        self.drop_where(|_| true);
    }

    fn drop_where(&self, doomed: impl Fn(&SecretKey) -> bool) {
        self.forget_totals();
        for shard in 0..SHARDS {
            let mut guard = self.lock(shard);
            guard.epoch += 1;
            let (mut gone, mut freed) = (0u64, 0usize);
            guard.entries.retain(|key, row| {
                let keep = !doomed(key);
                if !keep {
                    gone += 1;
                    freed += row.memory_size();
                }
                keep
            });
            guard.bytes -= freed;
            self.dropped.fetch_add(gone, Ordering::Relaxed);
        }
    }

    /// Applies one change-feed event.
    fn apply(&self, event: &Event) {
        let name = || ResourceName::from_stored(event.name.clone());
        match (event.resource_type.as_str(), &event.mesh) {
            ("Secret", Some(mesh)) => self.drop_key(&SecretKey::secret(
                MeshName::from_stored(mesh.clone()),
                name(),
            )),
            ("GlobalSecret", _) => self.drop_key(&SecretKey::global(name())),
            // A Mesh delete's secrets have their own (cascaded) events; a Mesh write may
            // also have generated CA secrets. Dropping the Mesh's secrets covers both.
            ("Mesh", _) => self.drop_mesh(&event.name),
            // An event this version does not know: drop everything rather than guess.
            _ => self.clear(),
        }
    }

    fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            bypassed: self.bypassed.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            totals_reused: self.totals_reused.load(Ordering::Relaxed),
        }
    }

    fn len(&self) -> usize {
        (0..SHARDS).map(|s| self.lock(s).entries.len()).sum()
    }
}

/// A store whose single-secret reads are served from a coherent in-memory cache (see the
/// module docs). Every other call goes to the wrapped store.
///
/// The cache answers only while [`CachedStore::follow`] runs: start it once per process.
pub struct CachedStore<S> {
    inner: S,
    cache: Arc<ReadCache>,
}

impl<S: Clone> Clone for CachedStore<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            cache: Arc::clone(&self.cache),
        }
    }
}

impl<S> CachedStore<S> {
    /// Wraps `inner` with a cache of at most `capacity` secrets and
    /// [`DEFAULT_CACHE_BYTES`] of them.
    pub fn new(inner: S, capacity: usize) -> Self {
        Self::with_memory(inner, capacity, DEFAULT_CACHE_BYTES)
    }

    /// Wraps `inner` with a cache of at most `capacity` secrets taking at most about
    /// `bytes` of memory (a secret larger than a sixteenth of it is never kept).
    pub fn with_memory(inner: S, capacity: usize, bytes: usize) -> Self {
        Self {
            inner,
            cache: Arc::new(ReadCache::new(capacity, bytes)),
        }
    }

    /// About how much memory the kept rows take.
    pub fn memory(&self) -> usize {
        (0..SHARDS).map(|s| self.cache.lock(s).bytes).sum()
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// How the cache has been used.
    pub fn stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// How many secrets it holds.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether reads are being answered from memory (the feed was read lately).
    pub fn answering(&self) -> bool {
        self.cache.answering()
    }
}

impl<S: SecretStore + SealedReads + Clone + 'static> CachedStore<S> {
    /// Follows the change feed, dropping what each event names, until the future is
    /// dropped; the store's change signal makes it look at once instead of at the next
    /// [`WATCH_POLL`]. Never ends on its own: database errors are retried with backoff,
    /// and the cache stops answering meanwhile.
    pub async fn follow(self) {
        let cache = &self.cache;
        let mut backoff = Duration::from_millis(50);
        let mut after = None;
        let mut waiter = self.inner.change_signal().map(|signal| signal.subscribe());
        loop {
            if let Some(waiter) = &mut waiter {
                waiter.mark_seen();
            }
            let read_from = cache.now_ms();
            let read_at = Instant::now();
            let Some(from) = after else {
                // Start (or restart after a 410) from the current revision, and empty the
                // cache after reading it: every change up to it is in the database rows
                // any later fill reads, and every later one will come as an event.
                match self.inner.current_revision().await {
                    Ok(revision) => {
                        cache.clear();
                        after = Some(revision);
                        cache.followed.store(revision, Ordering::Release);
                        cache.mark_fresh(read_from);
                        backoff = Duration::from_millis(50);
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "read cache: the change feed cannot be read; reads go to the database");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                    }
                }
                continue;
            };
            match self
                .inner
                .events_after(from, FOLLOW_PAGE, &EventFilter::default())
                .await
            {
                Ok(EventPage { events, revision }) => {
                    for event in &events {
                        cache.apply(event);
                    }
                    after = Some(revision);
                    cache.followed.store(revision, Ordering::Release);
                    cache.mark_fresh(read_from);
                    backoff = Duration::from_millis(50);
                    if events.is_empty() {
                        wait_for_change(waiter.as_mut(), WATCH_POLL).await;
                    } else if events.len() < FOLLOW_PAGE as usize {
                        // More writes are likely under way: let them gather, so the next
                        // read numbers and drops them together. (A full page is a backlog,
                        // read on at once.)
                        tokio::time::sleep_until((read_at + BUSY_FEED_INTERVAL).into()).await;
                    }
                }
                Err(StoreError::Gone { oldest }) => {
                    tracing::warn!(
                        after = from,
                        oldest,
                        "read cache: events it needed were pruned; starting over empty"
                    );
                    after = None;
                }
                Err(err) => {
                    tracing::warn!(error = %err, after = from, "read cache: the change feed cannot be read; reads go to the database");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}

impl<S: SecretStore + SealedReads> CachedStore<S> {
    /// Reads `key` through the cache.
    async fn read(&self, key: &SecretKey) -> Result<Secret> {
        let cache = &self.cache;
        if !cache.answering() {
            cache.bypassed.fetch_add(1, Ordering::Relaxed);
            return self.inner.get_secret(key).await;
        }
        let ticket = match cache.get(key) {
            Ok(row) => {
                cache.hits.fetch_add(1, Ordering::Relaxed);
                return self.inner.open_sealed(&row);
            }
            Err(ticket) => ticket,
        };
        let row = Arc::new(self.inner.get_sealed_secret(key).await?);
        let secret = self.inner.open_sealed(&row)?;
        // Only a row that opens is kept, and only while the cache answers.
        let kept = cache.answering() && cache.fill(key, ticket, row);
        let counter = if kept { &cache.misses } else { &cache.bypassed };
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(secret)
    }

    /// Runs a write, then drops the secret it touched, whatever the outcome (a failed
    /// write may have committed before its connection broke).
    async fn writing<T>(&self, key: &SecretKey, write: impl Future<Output = T>) -> T {
        let result = write.await;
        self.cache.drop_key(key);
        result
    }

    /// As [`CachedStore::writing`], dropping every secret of `mesh`.
    async fn writing_mesh<T>(&self, mesh: &MeshName, write: impl Future<Output = T>) -> T {
        let result = write.await;
        self.cache.drop_mesh(mesh.as_str());
        result
    }
}

impl<S: SecretStore + SealedReads> SecretStore for CachedStore<S> {
    // Reads the cache does not hold, and the feed.
    forward_store_methods! { [inner]
        fn secret_version(key: &SecretKey) -> Option<i64>;
        fn get_secret_version(key: &SecretKey, version: i64) -> Secret;
        fn secret_versions(key: &SecretKey) -> Vec<VersionInfo>;
        fn get_mesh(name: &MeshName) -> Mesh;
        fn list_meshes(query: &MeshQuery) -> Page<Mesh>;
        fn events_after(after: i64, limit: u32, filter: &EventFilter) -> EventPage;
        fn ping() -> ();
        fn put_external_service(service: NewExternalService, expect: Expect) -> Put<ExternalService>;
        fn delete_external_service(mesh: &MeshName, name: &ResourceName, v: Option<i64>) -> ();
        fn get_external_service(mesh: &MeshName, name: &ResourceName) -> ExternalService;
        fn list_external_services(query: &ExternalServiceQuery) -> Page<ExternalService>;
        fn secret_referrers(key: &SecretKey) -> Vec<SecretReferrer>;
    }
    async fn create_secret(&self, secret: NewSecret) -> Result<Secret> {
        let key = secret.key.clone();
        self.writing(&key, self.inner.create_secret(secret)).await
    }
    async fn update_secret(&self, key: &SecretKey, v: i64, u: SecretUpdate) -> Result<Secret> {
        self.writing(key, self.inner.update_secret(key, v, u)).await
    }
    async fn delete_secret(&self, key: &SecretKey, v: Option<i64>) -> Result<()> {
        self.writing(key, self.inner.delete_secret(key, v)).await
    }
    async fn put_secret(&self, secret: NewSecret, expect: Expect) -> Result<Put<Secret>> {
        let key = secret.key.clone();
        self.writing(&key, self.inner.put_secret(secret, expect))
            .await
    }
    async fn put_mesh(&self, mesh: NewMesh, expect: Expect) -> Result<Put<Mesh>> {
        let name = mesh.name.clone();
        self.writing_mesh(&name, self.inner.put_mesh(mesh, expect))
            .await
    }
    async fn get_secret(&self, key: &SecretKey) -> Result<Secret> {
        self.read(key).await
    }
    async fn get_secret_fresh(&self, key: &SecretKey) -> Result<Secret> {
        self.cache.bypassed.fetch_add(1, Ordering::Relaxed);
        self.inner.get_secret_fresh(key).await
    }
    async fn rollback_secret(&self, key: &SecretKey, to: i64, v: Option<i64>) -> Result<Secret> {
        self.writing(key, self.inner.rollback_secret(key, to, v))
            .await
    }
    async fn restore_secret(&self, key: &SecretKey, version: Option<i64>) -> Result<Secret> {
        self.writing(key, self.inner.restore_secret(key, version))
            .await
    }
    async fn purge_secret(&self, key: &SecretKey, expected: Option<i64>) -> Result<()> {
        self.writing(key, self.inner.purge_secret(key, expected))
            .await
    }
    async fn list_secrets(&self, query: &SecretQuery) -> Result<Page<Secret>> {
        let cache = &self.cache;
        if query.known_total.is_some() || !cache.answering() {
            return self.inner.list_secrets(query).await;
        }
        // What the total counts: the scope and the filters, not the page.
        let what = format!(
            "{:?}|{:?}|{:?}",
            query.scope, query.name_contains, query.labels
        );
        match cache.total(&what) {
            Ok(total) => {
                cache.totals_reused.fetch_add(1, Ordering::Relaxed);
                let mut known = query.clone();
                known.known_total = Some(total);
                self.inner.list_secrets(&known).await
            }
            Err(ticket) => {
                let page = self.inner.list_secrets(query).await?;
                if cache.answering() {
                    cache.keep_total(what, ticket, page.total);
                }
                Ok(page)
            }
        }
    }
    async fn create_mesh(&self, mesh: NewMesh) -> Result<Mesh> {
        let name = mesh.name.clone();
        self.writing_mesh(&name, self.inner.create_mesh(mesh)).await
    }
    async fn update_mesh(&self, name: &MeshName, v: i64, u: MeshUpdate) -> Result<Mesh> {
        self.writing_mesh(name, self.inner.update_mesh(name, v, u))
            .await
    }
    async fn delete_mesh(&self, name: &MeshName, v: Option<i64>) -> Result<()> {
        self.writing_mesh(name, self.inner.delete_mesh(name, v))
            .await
    }
    /// While the cache answers, the revision the follower has read the feed to: every
    /// change up to it is in the database, so a list read after it shows them and a watch
    /// from it misses nothing (it may repeat a change up to [`MAX_STALENESS`] old). This
    /// spares each list the sequencer's transaction. Otherwise the store's own.
    async fn current_revision(&self) -> Result<i64> {
        if self.cache.answering() {
            return Ok(self.cache.followed.load(Ordering::Acquire));
        }
        self.inner.current_revision().await
    }
    fn change_signal(&self) -> Option<ChangeSignal> {
        self.inner.change_signal()
    }
    fn readiness_note(&self) -> Option<String> {
        self.inner.readiness_note()
    }
    fn pool_report(&self) -> Option<crate::store::contract::PoolReport> {
        self.inner.pool_report()
    }
    fn cache_report(&self) -> Option<CacheReport> {
        Some(CacheReport {
            stats: self.stats(),
            entries: self.len(),
            bytes: self.memory(),
        })
    }
    async fn import_batch(&self, items: Vec<Resource>) -> Result<ImportCounts> {
        // What the batch touches, noted without copying its data.
        let mut keys = Vec::new();
        let mut meshes = Vec::new();
        for item in &items {
            match item {
                Resource::Secret(secret) => keys.push(secret.key.clone()),
                Resource::Mesh(mesh) => meshes.push(mesh.name.clone()),
                Resource::ExternalService(_) => {}
            }
        }
        let result = self.inner.import_batch(items).await;
        for key in &keys {
            self.cache.drop_key(key);
        }
        for mesh in &meshes {
            self.cache.drop_mesh(mesh.as_str());
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> SecretKey {
        SecretKey::parse(Some("default"), name).unwrap()
    }

    #[test]
    fn a_fill_that_raced_a_drop_is_not_kept() {
        let cache = ReadCache::new(100, DEFAULT_CACHE_BYTES);
        let Err(ticket) = cache.get(&key("a")) else {
            panic!("an empty cache has nothing")
        };
        // A write to the same shard commits and drops while the read is in flight.
        cache.drop_key(&key("a"));
        assert!(!cache.fill(&key("a"), ticket, Arc::new(sealed_stub())));
        assert!(cache.get(&key("a")).is_err());
    }

    #[test]
    fn a_full_shard_makes_room() {
        let cache = ReadCache::new(SHARDS, DEFAULT_CACHE_BYTES); // one entry per shard
        for i in 0..200 {
            let k = key(&format!("s{i}"));
            let Err(ticket) = cache.get(&k) else { continue };
            assert!(cache.fill(&k, ticket, Arc::new(sealed_stub())));
        }
        assert!(cache.len() <= SHARDS);
    }

    #[test]
    fn the_cache_answers_only_while_the_feed_is_read() {
        let cache = ReadCache::new(10, DEFAULT_CACHE_BYTES);
        assert!(
            !cache.answering(),
            "not before the follower first reads the feed"
        );
        cache.mark_fresh(cache.now_ms());
        assert!(cache.answering());
        cache.fresh_until.store(0, Ordering::Release);
        assert!(!cache.answering());
    }

    #[test]
    fn a_mesh_event_drops_that_mesh_only() {
        let cache = ReadCache::new(100, DEFAULT_CACHE_BYTES);
        let other = SecretKey::parse(Some("other"), "a").unwrap();
        for k in [key("a"), other.clone()] {
            let Err(ticket) = cache.get(&k) else { panic!() };
            cache.fill(&k, ticket, Arc::new(sealed_stub()));
        }
        cache.drop_mesh("default");
        assert!(cache.get(&key("a")).is_err());
        assert!(cache.get(&other).is_ok());
    }

    #[test]
    fn the_cache_keeps_to_its_memory_budget() {
        let one = sealed_stub().memory_size();
        // Room for three rows per shard.
        let cache = ReadCache::new(10_000, SHARDS * one * 3);
        for i in 0..500 {
            let k = key(&format!("s{i}"));
            let Err(ticket) = cache.get(&k) else { continue };
            assert!(cache.fill(&k, ticket, Arc::new(sealed_stub())));
        }
        let kept: usize = (0..SHARDS).map(|s| cache.lock(s).bytes).sum();
        assert!(kept <= SHARDS * one * 3, "{kept}");
        assert!(cache.len() <= SHARDS * 3);
        // A row larger than a shard's share is never kept.
        let small = ReadCache::new(10_000, SHARDS * (one - 1));
        let Err(ticket) = small.get(&key("big")) else {
            panic!()
        };
        assert!(!small.fill(&key("big"), ticket, Arc::new(sealed_stub())));
        // Drops give the memory back.
        cache.clear();
        assert_eq!((0..SHARDS).map(|s| cache.lock(s).bytes).sum::<usize>(), 0);
    }

    fn sealed_stub() -> SealedSecret {
        SealedSecret::new(1, 100, ())
    }
}
