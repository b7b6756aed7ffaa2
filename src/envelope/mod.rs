//! Envelope encryption: secrets sealed with data keys (DEKs) that the database stores only
//! wrapped by a key-encryption key (KEK) kept in an HSM or a KMS, as Kubernetes' KMS v2
//! plugins and Vault's auto-unseal do.
//!
//! # Design
//! - **Data keys.** 256-bit AES-GCM keys, made from the system's randomness, each with an
//!   id (`dek-…`). They seal exactly as a keyring file's keys do ([`Keyring`]): a sealed
//!   value names its DEK in `key_id`, and its associated data binds it to the secret and
//!   the write (`crate::sealing`). Nothing about a sealed row changes with envelope
//!   encryption.
//! - **Stored wrapped.** Each DEK is stored in the `data_keys` table wrapped by the KEK
//!   ([`KeyEncryptionKey::wrap`]: AES-GCM inside the HSM, the DEK's id as associated data,
//!   so a wrapped key moved to another id does not unwrap), beside the KEK's name. Every
//!   wrapping is unwrapped again and compared before it is stored: a faulty source never
//!   leaves a key behind that could not be unwrapped again.
//! - **Unwrapped once.** A process unwraps every DEK when it opens its keyring
//!   ([`open_keyring`]) and keeps them in memory (zeroed on drop), so the KEK is called a
//!   few times at start, never per request: a slow or briefly unreachable HSM does not
//!   slow reads or writes.
//! - **One DEK seals new writes**: each DEK names when it starts to (`seals_from`), and
//!   of those whose time has come the latest seals ([`sealing_key`]). A DEK made while
//!   servers run seals only a while after it is stored: every running server re-reads the
//!   data keys on a short interval ([`refresh_data_keys`]), so by then each holds the new
//!   key and opens what another server seals with it. Until then the previous DEK seals.
//! - **New DEKs on a schedule and on demand.** A running server makes one when the newest
//!   is older than its rotation period ([`keep_data_keys`]; `serve
//!   --data-key-rotation-period`, 30 days by default), under an id derived from the time it
//!   was due, so two servers due at once store one key; `rotate-keys --new-data-key` makes
//!   one on demand ([`new_data_key`]) and, once it seals, re-seals the rows of older DEKs in
//!   batches, as it does for a keyring file's keys. Older DEKs stay, to open what they
//!   sealed.
//! - **KEK rotation re-wraps DEKs only** ([`rewrap`]): one row per DEK changes, in one
//!   transaction, whatever the number of secrets.
//! - **Moving from a keyring file** ([`import_keyring`]): the file's keys become DEKs
//!   wrapped by the KEK, under the same ids, so no secret is re-sealed; the file can then
//!   be destroyed. The way back is [`export_keyring`].
//!
//! # Threat model
//! - **A dump, a backup, a replica or a stolen disk of the database** holds sealed values
//!   and wrapped DEKs: nothing opens without the KEK, which never leaves the HSM or the KMS
//!   (the `pkcs11:` source makes and uses it as a sensitive, non-extractable token object;
//!   an `awskms:` key cannot be exported from KMS at all).
//! - **Someone who can write to the database** can delete a DEK (its secrets then fail to
//!   open, loudly, naming the key), or plant one wrapped by a KEK they do not hold (it does
//!   not unwrap: the store refuses to open, naming it). They cannot read a DEK, and a DEK
//!   they wrap themselves would need the KEK.
//! - **Someone who can read the process's memory** (root on the host, a core dump) has the
//!   unwrapped DEKs, as with any key source: what the HSM adds is that the key survives
//!   no copy of the disk, and that its use can be revoked at the HSM.
//! - **Whoever holds the HSM PIN and can reach the HSM** can unwrap the DEKs: keep the PIN
//!   in a file only the service reads, or in its environment, never in the database. With
//!   AWS KMS the same holds of credentials allowed `kms:Decrypt` on the key: grant it to
//!   the service's role only, and every unwrap is in CloudTrail; disabling the key (or
//!   revoking the grant) stops every new start at once.

#[cfg(feature = "awskms")]
pub mod awskms;
#[cfg(feature = "pkcs11")]
pub mod pkcs11;

use crate::sealing::{Keyring, SharedKeyring};
use crate::store::{AnyStore, Rewrapped, StoreError, StoredDataKey};
use chrono::{DateTime, Utc};
use std::fmt;
use std::sync::Arc;
use zeroize::Zeroizing;

/// A key-encryption key: wraps and unwraps data keys without ever handing itself out.
/// Calls may block (an HSM round trip); [`open_keyring`] and the others run them on
/// tokio's blocking threads.
pub trait KeyEncryptionKey: Send + Sync + fmt::Debug {
    /// The KEK's name as stored beside each DEK it wraps: where it lives and which key it
    /// is, never a secret (for PKCS#11: `pkcs11:token=…;object=…`).
    fn name(&self) -> &str;

    /// `dek` wrapped, bound to its id `id`.
    ///
    /// # Errors
    /// The key source failed or is unreachable.
    fn wrap(&self, id: &str, dek: &[u8; 32]) -> Result<Vec<u8>, KekError>;

    /// The DEK `id` from `wrapped`.
    ///
    /// # Errors
    /// The key source failed or is unreachable, or `wrapped` does not unwrap with this KEK
    /// under this id.
    fn unwrap(&self, id: &str, wrapped: &[u8]) -> Result<Zeroizing<[u8; 32]>, KekError>;

    /// Whether the key answers now: a wrap of a throwaway key, discarded (what a running
    /// server checks every `--key-source-probe-interval`).
    ///
    /// # Errors
    /// As [`KeyEncryptionKey::wrap`].
    fn probe(&self) -> Result<(), KekError> {
        self.wrap("probe", &[0u8; 32]).map(drop)
    }
}

/// A running server's view of its key source: whether its last probe failed, since when
/// and why. The server keeps serving with the data keys it holds either way; only a new
/// data key has to wait for the source.
#[derive(Debug)]
pub struct KeySourceHealth {
    name: String,
    down: std::sync::Mutex<Option<(chrono::DateTime<chrono::Utc>, String)>>,
}

impl KeySourceHealth {
    /// The health of the key source named `name`, answering until told otherwise.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            down: std::sync::Mutex::new(None),
        }
    }

    /// Records a probe's outcome: a failure starts (or continues) an outage, a success
    /// ends it.
    pub fn record(&self, outcome: &Result<(), KekError>) {
        let mut down = self.down.lock().unwrap_or_else(|e| e.into_inner());
        match outcome {
            Ok(()) => {
                if down.take().is_some() {
                    tracing::info!(key_source = %self.name, "the key source answers again");
                }
            }
            Err(err) => {
                if down.is_none() {
                    tracing::warn!(key_source = %self.name, error = %err, "the key source does not answer; serving with the data keys held");
                }
                let since = down
                    .as_ref()
                    .map_or_else(chrono::Utc::now, |(since, _)| *since);
                *down = Some((since, err.to_string()));
            }
        }
    }

    /// A line for `/readyz` while the source is down; `None` while it answers.
    pub fn note(&self) -> Option<String> {
        let down = self.down.lock().unwrap_or_else(|e| e.into_inner());
        down.as_ref().map(|(since, reason)| {
            format!(
                "key source {} unavailable since {}: {reason} (serving with the data keys held; a new data key waits for it)",
                self.name,
                since.format("%Y-%m-%dT%H:%M:%SZ")
            )
        })
    }
}

/// Probes `kek` every `interval`, recording each outcome in `health`, until dropped.
pub async fn watch_key_source(
    kek: Arc<dyn KeyEncryptionKey>,
    health: Arc<KeySourceHealth>,
    interval: std::time::Duration,
) {
    loop {
        // (Not more often than ten times a second, whatever was asked.)
        tokio::time::sleep(interval.max(std::time::Duration::from_millis(100))).await;
        let kek = kek.clone();
        let outcome = match tokio::task::spawn_blocking(move || counted(kek.probe())).await {
            Ok(outcome) => outcome,
            Err(_) => return, // the runtime is shutting down
        };
        health.record(&outcome);
    }
}

/// Why a key source did not do what was asked.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum KekError {
    /// The source cannot be used as configured (a module that does not load, no such
    /// token or key, a wrong PIN): retrying will not help.
    #[error("key source {source_name}: {reason}")]
    Config {
        /// The source, by name (no secret in it).
        source_name: String,
        /// What is wrong.
        reason: String,
    },
    /// The source did not answer or failed (a device error, a network error): retrying
    /// may help.
    #[error("key source {source_name} is unavailable: {reason}")]
    Unavailable {
        /// The source, by name.
        source_name: String,
        /// What happened.
        reason: String,
    },
    /// A DEK just wrapped did not unwrap to the same key: the source is faulty, and
    /// nothing was stored (a key that cannot be unwrapped again would lose what it seals).
    #[error(
        "key source {source_name}: data key {id:?} did not unwrap to the key it wrapped; nothing was stored"
    )]
    NotReversible {
        /// The source, by name.
        source_name: String,
        /// The DEK's id.
        id: String,
    },
    /// A wrapped DEK does not unwrap with this KEK under its id: altered, moved from
    /// another id, or wrapped by another key.
    #[error(
        "data key {id:?} does not unwrap with {source_name}: it was altered, moved from another data key, or wrapped by another key"
    )]
    Refused {
        /// The source, by name.
        source_name: String,
        /// The DEK's id.
        id: String,
    },
}

/// Why a keyring could not be made from a store's data keys.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// The key source failed.
    #[error(transparent)]
    Kek(#[from] KekError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A DEK is wrapped by another KEK than the one given.
    #[error(
        "data key {id:?} is wrapped by {wrapped_by}, not by {given}: open the store with that key source, or re-wrap its data keys first (kuma-secrets rotate-keys --new-kek)"
    )]
    OtherKek {
        /// The DEK.
        id: String,
        /// The KEK that wraps it.
        wrapped_by: String,
        /// The KEK given.
        given: String,
    },
    /// A stored data key's id is not one a keyring takes (written behind the store's back).
    #[error(
        "the data key id {0:?} is not valid (1 to 64 of a-z, 0-9, '-', '_', '.'): it was written behind the store's back; delete that row"
    )]
    InvalidId(String),
    /// A blocking call was cancelled (the runtime is shutting down).
    #[error("the key source call was cancelled: {0}")]
    Cancelled(String),
}

/// Calls of this process to key sources (opening one, wrapping and unwrapping data keys),
/// by outcome, since start (`/metrics`: `kuma_secrets_key_source_calls_total`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeySourceCalls {
    /// Wraps and unwraps that succeeded.
    pub ok: u64,
    /// Calls the source did not answer or failed ([`KekError::Unavailable`]).
    pub unavailable: u64,
    /// Wrapped keys that did not unwrap ([`KekError::Refused`]).
    pub refused: u64,
    /// Calls refused for the source's configuration ([`KekError::Config`]), and wrappings
    /// that did not unwrap again ([`KekError::NotReversible`]).
    pub config: u64,
}

static CALLS: [std::sync::atomic::AtomicU64; 4] =
    [const { std::sync::atomic::AtomicU64::new(0) }; 4];

/// This process's key source calls so far.
pub fn key_source_calls() -> KeySourceCalls {
    let count = |i: usize| CALLS[i].load(std::sync::atomic::Ordering::Relaxed);
    KeySourceCalls {
        ok: count(0),
        unavailable: count(1),
        refused: count(2),
        config: count(3),
    }
}

/// Counts the outcome of one key source call, and passes it on.
fn counted<T>(result: Result<T, KekError>) -> Result<T, KekError> {
    let slot = match &result {
        Ok(_) => 0,
        Err(KekError::Unavailable { .. }) => 1,
        Err(KekError::Refused { .. }) => 2,
        Err(KekError::Config { .. } | KekError::NotReversible { .. }) => 3,
    };
    CALLS[slot].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    result
}

/// `dek` wrapped by `kek` under `id`, unwrapped again and compared before it is handed
/// back: nothing is ever stored wrapped in a way the source cannot undo.
fn wrap_checked(kek: &dyn KeyEncryptionKey, id: &str, dek: &[u8; 32]) -> Result<Vec<u8>, KekError> {
    let wrapped = counted(kek.wrap(id, dek))?;
    let back = counted(kek.unwrap(id, &wrapped)).map_err(|err| match err {
        KekError::Refused { source_name, id } => KekError::NotReversible { source_name, id },
        other => other,
    })?;
    if *back != *dek {
        return Err(KekError::NotReversible {
            source_name: kek.name().to_owned(),
            id: id.to_owned(),
        });
    }
    Ok(wrapped)
}

/// Whether `err` may pass by itself (the key source or the database did not answer), so a
/// starting server waits and tries again rather than exit.
pub fn is_retryable(err: &EnvelopeError) -> bool {
    match err {
        EnvelopeError::Kek(KekError::Unavailable { .. }) => true,
        EnvelopeError::Store(store) => store.is_retryable(),
        _ => false,
    }
}

/// Runs a blocking key source call on tokio's blocking threads.
async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, KekError> + Send + 'static,
) -> Result<T, EnvelopeError> {
    tokio::task::spawn_blocking(call)
        .await
        .map_err(|err| EnvelopeError::Cancelled(err.to_string()))?
        .map_err(EnvelopeError::from)
}

/// A fresh DEK id: `dek-` and the time it was made, then random hex, sorting by age.
fn new_dek_id() -> String {
    let mut random = [0u8; 4];
    getrandom::fill(&mut random).expect("system randomness");
    format!(
        "dek-{}-{}",
        chrono::Utc::now().format("%Y%m%d-%H%M%S"),
        crate::hex(&random)
    )
}

/// The keyring of `store`'s data keys, each unwrapped with `kek`; the [`sealing_key`] now
/// is active.
/// A store without data keys gets its first one, made and stored here, when `make_first`;
/// otherwise it has no keyring (`None`).
///
/// # Errors
/// A DEK wrapped by another KEK, one that does not unwrap, the key source failing, or the
/// store failing.
pub async fn open_keyring(
    store: &AnyStore,
    kek: Arc<dyn KeyEncryptionKey>,
    make_first: bool,
) -> Result<Option<Keyring>, EnvelopeError> {
    let mut stored = store.data_keys().await?;
    if stored.is_empty() {
        if !make_first {
            return Ok(None);
        }
        // The store's first key seals at once: no server holds another.
        new_data_key(store, kek.clone(), std::time::Duration::ZERO).await?;
        stored = store.data_keys().await?;
    }
    if let Some(bad) = stored.iter().find(|key| !crate::sealing::valid_id(&key.id)) {
        return Err(EnvelopeError::InvalidId(bad.id.clone()));
    }
    if let Some(other) = stored.iter().find(|key| key.kek != kek.name()) {
        return Err(EnvelopeError::OtherKek {
            id: other.id.clone(),
            wrapped_by: other.kek.clone(),
            given: kek.name().to_owned(),
        });
    }
    let sealing = sealing_key(&stored, Utc::now()).map(|key| key.id.clone());
    let unwrapped = unwrap_all(kek, stored).await?;
    let mut keyring: Option<Keyring> = None;
    for (id, raw) in &unwrapped {
        keyring = Some(match keyring {
            None => Keyring::single(id, **raw),
            Some(keyring) => keyring.with_key(id, **raw),
        });
    }
    Ok(keyring.map(|keyring| match &sealing {
        Some(id) => keyring.with_active(id),
        None => keyring,
    }))
}

/// `keys` unwrapped by `kek`, on the blocking threads.
async fn unwrap_all(
    kek: Arc<dyn KeyEncryptionKey>,
    keys: Vec<StoredDataKey>,
) -> Result<Vec<(String, Zeroizing<[u8; 32]>)>, EnvelopeError> {
    blocking(move || {
        keys.into_iter()
            .map(|key| Ok((key.id.clone(), counted(kek.unwrap(&key.id, &key.wrapped))?)))
            .collect::<Result<Vec<_>, KekError>>()
    })
    .await
}

/// The data key that seals new writes at `now`, of `keys`: of those whose `seals_from` has
/// come, the latest (the latest made, of a tie); before any has come, the first to.
pub fn sealing_key(keys: &[StoredDataKey], now: DateTime<Utc>) -> Option<&StoredDataKey> {
    let order = |key: &&StoredDataKey| (key.seals_from, key.created, key.id.clone());
    keys.iter()
        .filter(|key| key.seals_from <= now)
        .max_by_key(order)
        .or_else(|| keys.iter().min_by_key(order))
}

/// A data key just made: its id, and when it starts sealing new writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDataKey {
    /// Its id.
    pub id: String,
    /// When it starts sealing.
    pub seals_from: DateTime<Utc>,
}

/// Makes a new DEK, wraps it with `kek` and stores it, to seal new writes `seals_after`
/// from now (long enough for every running server to load it: three of their
/// `--key-source-probe-interval`s; zero where no server runs).
///
/// # Errors
/// The key source or the store failed.
pub async fn new_data_key(
    store: &AnyStore,
    kek: Arc<dyn KeyEncryptionKey>,
    seals_after: std::time::Duration,
) -> Result<NewDataKey, EnvelopeError> {
    let id = new_dek_id();
    let dek = Zeroizing::new(Keyring::random_key());
    let now = Utc::now();
    let seals_from = now + chrono::Duration::from_std(seals_after).unwrap_or(chrono::Duration::MAX);
    store_wrapped(store, kek, &id, dek, now, seals_from).await?;
    Ok(NewDataKey { id, seals_from })
}

/// Stores `dek` as data key `id`, made at `created`, sealing from `seals_from`, wrapped by
/// `kek` (checked to unwrap again first), unless a key `id` is stored already. Returns
/// whether it was stored.
async fn store_wrapped(
    store: &AnyStore,
    kek: Arc<dyn KeyEncryptionKey>,
    id: &str,
    dek: Zeroizing<[u8; 32]>,
    created: DateTime<Utc>,
    seals_from: DateTime<Utc>,
) -> Result<bool, EnvelopeError> {
    let name = kek.name().to_owned();
    let wrapped = {
        let id = id.to_owned();
        blocking(move || wrap_checked(kek.as_ref(), &id, &dek)).await?
    };
    Ok(store
        .add_data_key(&StoredDataKey {
            id: id.to_owned(),
            kek: name,
            wrapped,
            created,
            seals_from,
        })
        .await?)
}

/// Re-wraps every DEK of `store` wrapped by `from` with `to`, in one transaction: no secret
/// row is read or written. Returns how many DEKs were re-wrapped.
///
/// # Errors
/// A DEK wrapped by neither, one that does not unwrap, a key source or the store failing,
/// or another rotation meanwhile (nothing is changed).
pub async fn rewrap(
    store: &AnyStore,
    from: Arc<dyn KeyEncryptionKey>,
    to: Arc<dyn KeyEncryptionKey>,
) -> Result<u64, EnvelopeError> {
    let stored = store.data_keys().await?;
    if let Some(other) = stored
        .iter()
        .find(|key| key.kek != from.name() && key.kek != to.name())
    {
        return Err(EnvelopeError::OtherKek {
            id: other.id.clone(),
            wrapped_by: other.kek.clone(),
            given: from.name().to_owned(),
        });
    }
    let (from_name, to_name) = (from.name().to_owned(), to.name().to_owned());
    let rewrapped = blocking(move || {
        stored
            .into_iter()
            .filter(|key| key.kek == from.name())
            .map(|key| {
                let dek = counted(from.unwrap(&key.id, &key.wrapped))?;
                Ok(Rewrapped {
                    wrapped: wrap_checked(to.as_ref(), &key.id, &dek)?,
                    id: key.id,
                    was: from_name.clone(),
                    kek: to_name.clone(),
                })
            })
            .collect::<Result<Vec<_>, KekError>>()
    })
    .await?;
    if rewrapped.is_empty() {
        return Ok(0);
    }
    Ok(store.rewrap_data_keys(rewrapped).await?)
}

/// Stores every key of `keyring` (a keyring file's) as a DEK wrapped by `kek`, under the
/// same id, so the rows it sealed open with the store's data keys without being re-sealed.
/// The keyring's active key is made the newest DEK. Keys already stored are left as they
/// are. Returns how many were added.
///
/// # Errors
/// The key source or the store failed.
pub async fn import_keyring(
    store: &AnyStore,
    keyring: &Keyring,
    kek: Arc<dyn KeyEncryptionKey>,
) -> Result<u64, EnvelopeError> {
    let existing: Vec<String> = store
        .data_keys()
        .await?
        .into_iter()
        .map(|key| key.id)
        .collect();
    // The active key last, so it is the newest.
    let mut ids: Vec<String> = keyring
        .key_ids()
        .filter(|id| *id != keyring.active_id())
        .map(str::to_owned)
        .collect();
    ids.push(keyring.active_id().to_owned());
    let mut added = 0;
    let (start, count) = (Utc::now(), ids.len());
    for (order, id) in ids.into_iter().enumerate() {
        if existing.contains(&id) {
            continue;
        }
        let raw = Zeroizing::new(keyring.key_bytes(&id).expect("a key of the keyring"));
        // A millisecond apart, in order, up to now, so the active key (last) is the newest;
        // each seals from then, as the file's keys were in use already.
        let before = i64::try_from(count - 1 - order).unwrap_or(0);
        let created = start - chrono::Duration::milliseconds(before);
        if store_wrapped(store, kek.clone(), &id, raw, created, created).await? {
            added += 1;
        }
    }
    Ok(added)
}

/// The store's DEKs unwrapped with `kek`, as a keyring (to write to a file): the way back
/// from a key source to a keyring file.
///
/// # Errors
/// As [`open_keyring`].
pub async fn export_keyring(
    store: &AnyStore,
    kek: Arc<dyn KeyEncryptionKey>,
) -> Result<Option<Keyring>, EnvelopeError> {
    open_keyring(store, kek, false).await
}

/// How a running server keeps its data keys (`serve`): how often it reads them again, and
/// how often it makes a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataKeyUpkeep {
    /// How often the store's data keys are read again: new ones unwrapped, the sealing one
    /// chosen again (`--key-source-probe-interval`).
    pub refresh: std::time::Duration,
    /// A new data key when the newest is this old (`--data-key-rotation-period`); `None`:
    /// only on demand.
    pub rotation: Option<std::time::Duration>,
}

impl DataKeyUpkeep {
    /// How long a key made on schedule waits before it seals: three refreshes, so every
    /// server running with the same interval holds it by then.
    pub fn settle(&self) -> std::time::Duration {
        self.refresh.saturating_mul(3)
    }
}

/// Keeps `keyring` (the store's data keys unwrapped by `kek`) current every
/// `upkeep.refresh` ([`refresh_data_keys`]), until dropped. A failure is logged and tried
/// again next time; the keys held go on sealing and opening meanwhile.
pub async fn keep_data_keys(
    store: AnyStore,
    kek: Arc<dyn KeyEncryptionKey>,
    keyring: SharedKeyring,
    upkeep: DataKeyUpkeep,
) {
    loop {
        tokio::time::sleep(upkeep.refresh.max(std::time::Duration::from_millis(100))).await;
        if let Err(err) = refresh_data_keys(&store, &kek, &keyring, upkeep).await {
            tracing::warn!(error = %err, "the data keys could not be refreshed; sealing and opening with the keys held");
        }
    }
}

/// One refresh of a running server's keyring: makes the scheduled data key when the newest
/// is `upkeep.rotation` old (under an id derived from when it was due, so servers due at
/// once store one), unwraps the data keys it does not hold yet (made by another server or
/// by `rotate-keys`), and seals from then on with [`sealing_key`] of the keys it holds.
///
/// # Errors
/// The store or the key source failed: the keyring is left as it was, or holds the keys
/// that did unwrap.
pub async fn refresh_data_keys(
    store: &AnyStore,
    kek: &Arc<dyn KeyEncryptionKey>,
    keyring: &SharedKeyring,
    upkeep: DataKeyUpkeep,
) -> Result<(), EnvelopeError> {
    let mut stored = store.data_keys().await?;
    let now = Utc::now();
    let ours = stored.iter().all(|key| key.kek == kek.name());
    if let (Some(period), Some(newest)) =
        (upkeep.rotation, stored.iter().max_by_key(|key| key.created))
    {
        let due =
            newest.created + chrono::Duration::from_std(period).unwrap_or(chrono::Duration::MAX);
        // (Keys moved under another KEK meanwhile: this server is to restart with it, and
        // makes none under the old one.)
        if due <= now && ours {
            let id = format!("dek-{}-scheduled", due.format("%Y%m%d-%H%M%S"));
            let seals_from =
                now + chrono::Duration::from_std(upkeep.settle()).unwrap_or(chrono::Duration::MAX);
            let dek = Zeroizing::new(Keyring::random_key());
            if store_wrapped(store, kek.clone(), &id, dek, now, seals_from).await? {
                tracing::info!(data_key = %id, %seals_from, "made the scheduled data key; it seals new writes from then on");
            }
            stored = store.data_keys().await?;
        }
    }
    let current = keyring.current();
    let missing: Vec<StoredDataKey> = stored
        .iter()
        .filter(|key| !current.contains(&key.id) && key.kek == kek.name())
        .cloned()
        .collect();
    let unwrapped = if missing.is_empty() {
        Vec::new()
    } else {
        unwrap_all(kek.clone(), missing).await?
    };
    let held: Vec<StoredDataKey> = stored
        .into_iter()
        .filter(|key| current.contains(&key.id) || unwrapped.iter().any(|(id, _)| *id == key.id))
        .collect();
    let sealing = sealing_key(&held, now).map_or(current.active_id(), |key| key.id.as_str());
    if unwrapped.is_empty() && sealing == current.active_id() {
        return Ok(());
    }
    let mut next = (*current).clone();
    for (id, raw) in &unwrapped {
        next = next.with_key(id, **raw);
        tracing::info!(data_key = %id, "loaded a new data key");
    }
    if sealing != current.active_id() {
        tracing::info!(data_key = %sealing, "new writes are sealed with this data key from now on");
        next = next.with_active(sealing);
    }
    keyring.replace(Arc::new(next));
    Ok(())
}
