//! What a store reports about itself for `/metrics`: its connection pool's and its read
//! cache's counts (see [`SecretStore::pool_report`](super::SecretStore::pool_report) and
//! [`SecretStore::cache_report`](super::SecretStore::cache_report)).

/// Connections a pool threw away, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolReport {
    /// Connections closed after an error that ends them: the server went away, is shutting
    /// down, or only reads now (a write reached a demoted primary).
    pub discarded: u64,
    /// New connections refused by the pool's check: the server only reads (a standby).
    pub refused: u64,
    /// Batches of two secret writes or more committed in one transaction (group commit).
    pub write_batches: u64,
    /// The secret writes in those batches.
    pub batched_writes: u64,
    /// Of those, the puts written by a batch's bulk statements (one upsert, one conditional
    /// update), the rest having run one by one.
    pub bulk_writes: u64,
    /// Statements of secret writes and imports that met a deadlock or a serialization
    /// failure and were run again: zero while every writer takes its row locks in one
    /// order (keys in byte order, Secrets before GlobalSecrets).
    pub write_conflicts: u64,
}

/// The cache's state for `/metrics`: how it has been used, and what it holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheReport {
    /// How it has been used since start.
    pub stats: CacheStats,
    /// Secrets it holds.
    pub entries: usize,
    /// About how much memory they take.
    pub bytes: usize,
}

/// How the cache has been used since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Reads answered from memory.
    pub hits: u64,
    /// Reads that went to the database and kept what they read.
    pub misses: u64,
    /// Reads that went to the database because the cache was not answering (feed not read
    /// for `MAX_STALENESS`, a fill raced a write, or the read asked to bypass it).
    pub bypassed: u64,
    /// Secrets dropped because a write or an event named them.
    pub dropped: u64,
    /// List pages whose `total` came from memory instead of a count.
    pub totals_reused: u64,
}
