//! Sealed reads: a secret's row as stored, not opened, for the read cache to keep (so its
//! memory holds no plaintext) and open on each read.

use super::Result;
use crate::domain::{Secret, SecretKey};
use std::any::Any;
use std::future::Future;
use std::sync::Arc;

/// A secret's row as stored, still sealed. What the row is belongs to the store that read
/// it: only that store's [`SealedReads::open_sealed`] opens it.
#[derive(Clone)]
pub struct SealedSecret {
    version: i64,
    memory_size: usize,
    row: Arc<dyn Any + Send + Sync>,
}

impl SealedSecret {
    /// Wraps `row`, a store's own representation of a sealed secret.
    pub(crate) fn new<R: Any + Send + Sync>(version: i64, memory_size: usize, row: R) -> Self {
        Self {
            version,
            memory_size,
            row: Arc::new(row),
        }
    }

    /// The row, if it is an `R`.
    pub(crate) fn row<R: Any>(&self) -> Option<&R> {
        self.row.downcast_ref()
    }

    /// The version the row is at.
    pub fn version(&self) -> i64 {
        self.version
    }

    /// About how many bytes it takes in memory.
    pub fn memory_size(&self) -> usize {
        self.memory_size
    }
}

impl std::fmt::Debug for SealedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedSecret")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// The reads a store gives the cache: a secret's row without opening it, and opening it.
pub trait SealedReads: Send + Sync {
    /// The secret's row as stored, still sealed.
    ///
    /// # Errors
    /// As [`SecretStore::get_secret`](super::SecretStore::get_secret), except that nothing
    /// is opened.
    fn get_sealed_secret(
        &self,
        key: &SecretKey,
    ) -> impl Future<Output = Result<SealedSecret>> + Send;

    /// Opens a row [`SealedReads::get_sealed_secret`] read.
    ///
    /// # Errors
    /// [`StoreError::Sealed`](super::StoreError::Sealed) when it does not open.
    fn open_sealed(&self, sealed: &SealedSecret) -> Result<Secret>;
}
