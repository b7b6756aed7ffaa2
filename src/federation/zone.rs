//! A federated zone's sync: list the global store, then follow its change feed, applying
//! each change to the zone's store (see the module above for the design).

use super::sent_to_zones;
use crate::client::{ApiClient, ClientError, path_of, secret_path, segment};
use crate::domain::{
    ENV_LABEL, Labels, MeshName, NewMesh, NewSecret, ORIGIN_GLOBAL, ORIGIN_LABEL, SecretKey,
    SecretType, ValidationError, ZONE_LABEL,
};
use crate::store::feed::{Changes, Event};
use crate::store::{
    AnyStore, Expect, MeshQuery, PageRequest, PageStart, PageWalk, SecretQuery, SecretScope,
    SecretStore, StoreError,
};
use crate::wire::{self, ListBody};
use chrono::{DateTime, Utc};
use futures_util::{StreamExt, TryStreamExt};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Items per list page asked of the global store (Kuma's largest).
const PAGE_SIZE: u32 = 1000;
/// How long one long poll of the global store's feed waits for a change.
const POLL_WAIT: &str = "20s";
/// How long any request to the global store may take: a long poll's wait and 10 s more. A
/// network that froze (nothing refused, nothing answered) is noticed then.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Secrets applied at once (read from the global store and written here concurrently).
const APPLY_AT_ONCE: usize = 16;
/// The longest wait between two tries while the global store does not answer.
const BACKOFF_CAP: Duration = Duration::from_secs(30);

/// Why a round of sync stopped.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The global store did not answer, or refused.
    #[error("global store: {0}")]
    Global(#[from] ClientError),
    /// The zone's store failed.
    #[error("zone store: {0}")]
    Store(#[from] StoreError),
    /// The global store sent something this zone cannot take.
    #[error("global store sent an invalid {resource}: {reason}")]
    Invalid {
        /// Which resource.
        resource: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl SyncError {
    /// Whether the global store refused the zone's credentials (401, 403).
    pub fn refused(&self) -> bool {
        matches!(self, SyncError::Global(err) if matches!(err.status(), Some(401 | 403)))
    }
}

/// What a zone knows of its sync, for `/readyz` and `/metrics`.
#[derive(Debug)]
pub struct ZoneSyncStatus {
    global: String,
    started: DateTime<Utc>,
    state: Mutex<SyncState>,
}

#[derive(Debug, Default, Clone)]
struct SyncState {
    /// The global store's revision this zone holds everything up to.
    applied: Option<i64>,
    /// When the global store last answered.
    last_contact: Option<DateTime<Utc>>,
    /// Since when, and why, it does not.
    down: Option<(DateTime<Utc>, String)>,
    /// Full lists taken (the first, and after each 410).
    lists: u64,
    /// When the zone last held every change the global store had (a page of changes that
    /// was not full, or a full list).
    caught_up: Option<DateTime<Utc>>,
    /// Whether the last page of changes was full (more were waiting).
    more_waiting: bool,
}

impl ZoneSyncStatus {
    fn new(global: &str) -> Self {
        Self {
            global: global.to_owned(),
            started: Utc::now(),
            state: Mutex::default(),
        }
    }

    /// The global store's URL.
    pub fn global(&self) -> &str {
        &self.global
    }

    /// Whether the zone holds a complete copy (it has synced at least once, now or before
    /// a restart): until then it is not ready.
    pub fn has_synced(&self) -> bool {
        self.lock().applied.is_some()
    }

    /// The revision of the global store this zone holds everything up to.
    pub fn applied_revision(&self) -> Option<i64> {
        self.lock().applied
    }

    /// Full lists taken since start.
    pub fn lists(&self) -> u64 {
        self.lock().lists
    }

    /// How far behind the global store the zone is, in seconds: 0 while it holds every
    /// change (its long poll waits for the next), else since it last did (or since start).
    pub fn seconds_behind(&self) -> i64 {
        let state = self.lock();
        if state.down.is_none() && !state.more_waiting && state.caught_up.is_some() {
            return 0;
        }
        let since = state.caught_up.unwrap_or(self.started);
        (Utc::now() - since).num_seconds().max(0)
    }

    /// Seconds since the global store stopped answering; `None` while it answers.
    pub fn seconds_since_contact(&self) -> Option<i64> {
        let state = self.lock();
        state
            .down
            .as_ref()
            .map(|(since, _)| (Utc::now() - *since).num_seconds().max(0))
    }

    /// A line for `/readyz`: why the zone is not ready, or since when the global store does
    /// not answer; `None` while all is well.
    pub fn note(&self) -> Option<String> {
        let state = self.lock();
        let holds = match state.applied {
            Some(revision) => {
                format!("holding the global store's changes up to revision {revision}")
            }
            None => "waiting for its first full copy".to_owned(),
        };
        let (since, reason) = state.down.as_ref()?;
        Some(format!(
            "global store {} unreachable since {}: {reason} (serving what this zone holds, {holds}; retrying)",
            self.global,
            since.format("%Y-%m-%dT%H:%M:%SZ")
        ))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SyncState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn applied(&self, revision: i64) {
        let mut state = self.lock();
        state.applied = Some(revision);
    }

    /// The zone applied a page of changes; `full` when more may be waiting.
    fn caught_up(&self, full: bool) {
        let mut state = self.lock();
        state.more_waiting = full;
        if !full {
            state.caught_up = Some(Utc::now());
        }
    }

    fn contact(&self) {
        let mut state = self.lock();
        state.last_contact = Some(Utc::now());
        if state.down.take().is_some() {
            tracing::info!("the global store answers again");
        }
    }

    fn failed(&self, err: &SyncError) {
        let mut state = self.lock();
        let since = state
            .down
            .as_ref()
            .map_or_else(Utc::now, |(since, _)| *since);
        let reason = if err.refused() {
            format!(
                "it refuses this zone's token ({err}); issue a new one with kuma-secrets generate zone-token"
            )
        } else {
            err.to_string()
        };
        state.down = Some((since, reason));
    }
}

/// A federated zone's sync with its global store.
#[derive(Debug, Clone)]
pub struct ZoneSync {
    store: AnyStore,
    global: ApiClient,
    status: Arc<ZoneSyncStatus>,
    /// Where the zone token is kept (`--global-token-file`): read again when the global
    /// store refuses the one in use, so a new token takes effect without a restart.
    token_file: Option<std::path::PathBuf>,
}

impl ZoneSync {
    /// The sync of `store` with the global store `global` (a client carrying the zone's
    /// credentials).
    pub fn new(store: AnyStore, global: ApiClient) -> Self {
        let status = Arc::new(ZoneSyncStatus::new(global.base()));
        let global = global.with_timeout(REQUEST_TIMEOUT);
        Self {
            store,
            global,
            status,
            token_file: None,
        }
    }

    /// Reads the token again from `path` whenever the global store refuses it (401, 403).
    #[must_use]
    pub fn with_token_file(mut self, path: std::path::PathBuf) -> Self {
        self.token_file = Some(path);
        self
    }

    /// After the global store refused the token: the token file's token, if it changed.
    fn reread_token(&mut self) {
        let Some(path) = &self.token_file else { return };
        match std::fs::read_to_string(path) {
            Ok(token) if !self.global.sends_token(token.trim()) => {
                tracing::info!(file = %path.display(), "using the new token in the token file");
                self.global = self.global.with_token(Some(token.trim().to_owned()));
            }
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(file = %path.display(), error = %err, "cannot read the token file")
            }
        }
    }

    /// What it knows of itself, shared.
    pub fn status(&self) -> Arc<ZoneSyncStatus> {
        self.status.clone()
    }

    /// Syncs until dropped: on any failure, waits (0.5 s doubling to 30 s, back to 0.5 s
    /// once the global store answered) and goes on from the last revision applied.
    pub async fn run(mut self) {
        if let Ok(Some(revision)) = self.store.zone_sync_revision(self.global.base()).await {
            self.status.applied(revision);
        }
        let mut backoff = Duration::from_millis(500);
        loop {
            let contacted_before = self.status.lock().last_contact;
            let err = match self.follow().await {
                Ok(never) => match never {},
                Err(err) => err,
            };
            if self.status.lock().last_contact != contacted_before {
                backoff = Duration::from_millis(500);
            }
            self.status.failed(&err);
            if err.refused() {
                tracing::error!(error = %err, retry_in = ?backoff, "the global store refused this zone's token (revoked, expired, or not a zone token): issue one with kuma-secrets generate zone-token and write it to --global-token-file; serving what this zone holds");
                self.reread_token();
            } else {
                tracing::warn!(error = %err, retry_in = ?backoff, "zone sync interrupted; serving what this zone holds");
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_CAP);
        }
    }

    /// Lists (unless this zone holds a revision of this global store already), then
    /// follows the feed, until something fails.
    async fn follow(&self) -> Result<std::convert::Infallible, SyncError> {
        let global = self.global.base().to_owned();
        let mut after = match self.store.zone_sync_revision(&global).await? {
            Some(revision) => revision,
            None => self.list_and_reconcile().await?,
        };
        loop {
            let path = format!("/_changes?after={after}&limit={PAGE_SIZE}&wait={POLL_WAIT}");
            let changes: Changes = match self.global.get(&path).await {
                Ok(changes) => changes,
                Err(err) if err.status() == Some(410) => {
                    tracing::info!(
                        after,
                        "the global store's feed has no longer (pruned) or not yet (reset, as by a restore from a backup) this zone's revision: listing again"
                    );
                    after = self.list_and_reconcile().await?;
                    continue;
                }
                Err(err) => return Err(err.into()),
            };
            self.status.contact();
            self.apply_changes(&changes.events).await?;
            if changes.revision != after {
                self.store
                    .set_zone_sync_revision(&global, changes.revision)
                    .await?;
                after = changes.revision;
            }
            self.status.applied(after);
            self.status
                .caught_up(changes.events.len() >= PAGE_SIZE as usize);
        }
    }

    /// Applies the resources `events` name, each once, in the order first named: read from
    /// the global store now, written to (or deleted from) the zone's store.
    async fn apply_changes(&self, events: &[Event]) -> Result<(), SyncError> {
        let mut seen = BTreeSet::new();
        // Secrets between two Mesh changes, applied together; a Mesh change waits for the
        // secrets named before it, and the secrets after it wait for it.
        let mut secrets: Vec<(SecretKey, String)> = Vec::new();
        for event in events {
            let key = (
                event.resource_type.clone(),
                event.mesh.clone(),
                event.name.clone(),
            );
            if !seen.insert(key) || !sent_to_zones(&event.resource_type, &event.name) {
                continue;
            }
            match event.resource_type.as_str() {
                "Mesh" => {
                    self.fetch_and_apply_secrets(std::mem::take(&mut secrets))
                        .await?;
                    let name = mesh_name(&event.name)?;
                    let global = self
                        .fetch(&format!("/meshes/{}", segment(&event.name)))
                        .await?;
                    self.apply_mesh(&name, global).await?;
                }
                "Secret" | "GlobalSecret" => {
                    let mesh = event.mesh.as_deref();
                    secrets.push((
                        secret_key(mesh, &event.name)?,
                        secret_path(mesh, &event.name),
                    ));
                }
                // ExternalServices and anything newer stay each zone's own.
                _ => {}
            }
        }
        self.fetch_and_apply_secrets(secrets).await
    }

    /// Reads each secret at its path on the global store and applies it, up to
    /// [`APPLY_AT_ONCE`] at a time (each is independent; the store commits concurrent
    /// writes together).
    async fn fetch_and_apply_secrets(
        &self,
        secrets: Vec<(SecretKey, String)>,
    ) -> Result<(), SyncError> {
        futures_util::stream::iter(secrets.into_iter().map(|(key, path)| async move {
            let global = self.fetch(&path).await?;
            self.apply_secret(&key, global).await
        }))
        .buffer_unordered(APPLY_AT_ONCE)
        .try_collect::<Vec<()>>()
        .await?;
        Ok(())
    }

    /// Applies secrets as listed by the global store (`items` of `mesh`, or GlobalSecrets),
    /// up to [`APPLY_AT_ONCE`] at a time; their keys.
    async fn apply_listed_secrets(
        &self,
        mesh: Option<&MeshName>,
        items: Vec<Value>,
    ) -> Result<Vec<SecretKey>, SyncError> {
        futures_util::stream::iter(
            items
                .into_iter()
                .map(|item| self.apply_listed_secret(mesh, item)),
        )
        .buffer_unordered(APPLY_AT_ONCE)
        .try_collect()
        .await
    }

    /// The resource at `path` on the global store, `None` if it is gone.
    async fn fetch(&self, path: &str) -> Result<Option<Value>, SyncError> {
        match self.global.get::<Value>(path).await {
            Ok(value) => Ok(Some(value)),
            Err(err) if err.status() == Some(404) => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    /// Every page of the list at `path`, and the revision the first page reflects.
    async fn list_all(&self, path: &str) -> Result<(Vec<Value>, i64), SyncError> {
        let separator = if path.contains('?') { '&' } else { '?' };
        let (mut page, revision): (ListBody<Value>, i64) = self
            .global
            .get_list(&format!("{path}{separator}size={PAGE_SIZE}"))
            .await?;
        let mut items = std::mem::take(&mut page.items);
        while let Some(next) = page.next.take() {
            page = self.global.get(&path_of(&next)).await?;
            items.append(&mut page.items);
        }
        Ok((items, revision))
    }

    /// Takes the global store's state whole: every Mesh, Secret and GlobalSecret it sends
    /// to zones is written here, and what this zone holds from it that it no longer has is
    /// deleted. Returns the revision to follow the feed from (read before the lists, so a
    /// change made meanwhile is followed again, never missed).
    async fn list_and_reconcile(&self) -> Result<i64, SyncError> {
        let (meshes, revision) = self.list_all("/meshes").await?;
        self.status.contact();
        let mut global_meshes = BTreeSet::new();
        let mut global_secrets = std::collections::HashSet::new();
        for mesh in meshes {
            let name = mesh_name(mesh.get("name").and_then(Value::as_str).unwrap_or(""))?;
            global_meshes.insert(name.clone());
            self.apply_mesh(&name, Some(mesh)).await?;
            let (secrets, _) = self
                .list_all(&format!("/meshes/{}/secrets", segment(name.as_str())))
                .await?;
            global_secrets.extend(self.apply_listed_secrets(Some(&name), secrets).await?);
        }
        let (mut secrets, _) = self.list_all("/global-secrets").await?;
        secrets.retain(|secret| {
            sent_to_zones(
                "GlobalSecret",
                secret.get("name").and_then(Value::as_str).unwrap_or(""),
            )
        });
        global_secrets.extend(self.apply_listed_secrets(None, secrets).await?);
        // What this zone holds from the global store that the global store no longer has.
        for scope in [SecretScope::AllMeshes, SecretScope::Global] {
            for key in self.held_from_global(scope).await? {
                if !global_secrets.contains(&key) {
                    self.apply_secret(&key, None).await?;
                }
            }
        }
        for name in self.meshes_held_from_global().await? {
            if !global_meshes.contains(&name) {
                self.apply_mesh(&name, None).await?;
            }
        }
        self.store
            .set_zone_sync_revision(self.global.base(), revision)
            .await?;
        self.status.applied(revision);
        self.status.lock().lists += 1;
        // (Changes made during the list are next: the feed is followed from `revision`.)
        tracing::info!(
            revision,
            meshes = global_meshes.len(),
            secrets = global_secrets.len(),
            "took the global store's state whole"
        );
        Ok(revision)
    }

    /// Applies one Secret of a list; its key.
    async fn apply_listed_secret(
        &self,
        mesh: Option<&MeshName>,
        item: Value,
    ) -> Result<SecretKey, SyncError> {
        let name = item.get("name").and_then(Value::as_str).unwrap_or("");
        let key = secret_key(mesh.map(MeshName::as_str), name)?;
        self.apply_secret(&key, Some(item)).await?;
        Ok(key)
    }

    /// The keys of the secrets in `scope` this zone holds from the global store.
    async fn held_from_global(&self, scope: SecretScope) -> Result<Vec<SecretKey>, SyncError> {
        let query = SecretQuery {
            scope,
            name_contains: None,
            labels: origin_global(),
            page: page_at(PageStart::Offset(0)),
            known_total: None,
        };
        Ok(PageWalk::of(query)
            .collect(&self.store, |secret| secret.key)
            .await?)
    }

    /// The Meshes this zone holds from the global store.
    async fn meshes_held_from_global(&self) -> Result<Vec<MeshName>, SyncError> {
        let query = MeshQuery {
            name_contains: None,
            labels: origin_global(),
            page: page_at(PageStart::Offset(0)),
        };
        Ok(PageWalk::of(query)
            .collect(&self.store, |mesh| mesh.name)
            .await?)
    }

    /// Makes the zone's Secret or GlobalSecret `key` what the global store has (`global`,
    /// its JSON), or deletes it when the global store has none. A secret the zone made
    /// itself is never touched; one already equal is not written again.
    async fn apply_secret(&self, key: &SecretKey, global: Option<Value>) -> Result<(), SyncError> {
        let local = match self.store.get_secret(key).await {
            Ok(secret) => Some(secret),
            Err(StoreError::NotFound(_)) => None,
            Err(other) => return Err(other.into()),
        };
        if let Some(local) = &local
            && local.labels.get(ORIGIN_LABEL) != Some(ORIGIN_GLOBAL)
        {
            if global.is_some() {
                tracing::warn!(secret = %key.resource_key(), "the global store has a secret this zone made itself: the zone's is kept");
            }
            return Ok(());
        }
        let Some(global) = global else {
            if local.is_some() {
                match self.store.delete_secret(key, None).await {
                    Ok(()) | Err(StoreError::NotFound(_)) => {}
                    Err(other) => return Err(other.into()),
                }
            }
            return Ok(());
        };
        let kind = if key.mesh().is_some() {
            SecretType::Secret
        } else {
            SecretType::GlobalSecret
        };
        let invalid = |reason: String| SyncError::Invalid {
            resource: key.resource_key().to_string(),
            reason,
        };
        let secret = wire::parse_value(kind.as_str(), global)
            .map_err(invalid)?
            .into_new_secret(kind, |labels, _| synced_labels(labels))
            .map_err(|e| invalid(e.to_string()))?;
        if local.is_some_and(|local| {
            local.labels == secret.labels && local.data.expose() == secret.data.expose()
        }) {
            return Ok(());
        }
        self.store
            .put_secret(
                NewSecret {
                    key: key.clone(),
                    ..secret
                },
                Expect::Any,
            )
            .await?;
        Ok(())
    }

    /// Makes the zone's Mesh `name` what the global store has (`global`, its JSON), or
    /// deletes it (and its Secrets) when the global store has none. A new Mesh is made
    /// without mTLS first, then its Secrets, then its mTLS: the zone never generates a CA
    /// of its own, it holds the global store's.
    async fn apply_mesh(&self, name: &MeshName, global: Option<Value>) -> Result<(), SyncError> {
        let local = match self.store.get_mesh(name).await {
            Ok(mesh) => Some(mesh),
            Err(StoreError::NotFound(_)) => None,
            Err(other) => return Err(other.into()),
        };
        let Some(global) = global else {
            if local.is_some() {
                match self.store.delete_mesh(name, None).await {
                    Ok(()) | Err(StoreError::NotFound(_)) => {}
                    Err(other) => return Err(other.into()),
                }
            }
            return Ok(());
        };
        let invalid = |reason: String| SyncError::Invalid {
            resource: format!("Mesh {name}"),
            reason,
        };
        let mesh = wire::parse_value("Mesh", global)
            .map_err(invalid)?
            .into_new_mesh(MeshName::parse, synced_labels)
            .map_err(|e| invalid(e.to_string()))?;
        if local
            .as_ref()
            .is_some_and(|local| local.spec == mesh.spec && local.labels == mesh.labels)
        {
            return Ok(());
        }
        if mesh.spec.contains_key("mtls") {
            if local.is_none() {
                let mut bare = mesh.spec.clone();
                bare.remove("mtls");
                self.store
                    .put_mesh(
                        NewMesh {
                            name: name.clone(),
                            spec: bare,
                            labels: mesh.labels.clone(),
                        },
                        Expect::Any,
                    )
                    .await?;
            }
            // The CAs and other secrets its backends name must be here first.
            let (secrets, _) = self
                .list_all(&format!("/meshes/{}/secrets", segment(name.as_str())))
                .await?;
            self.apply_listed_secrets(Some(name), secrets).await?;
        }
        self.store.put_mesh(mesh, Expect::Any).await?;
        Ok(())
    }
}

/// A page of the zone's store of [`PAGE_SIZE`] items from `start`.
fn page_at(start: PageStart) -> PageRequest {
    PageRequest::new(PAGE_SIZE, start).expect("PAGE_SIZE is a valid page size")
}

/// `kuma.io/origin: global`, as a label filter.
fn origin_global() -> BTreeMap<String, String> {
    [(ORIGIN_LABEL.to_owned(), ORIGIN_GLOBAL.to_owned())].into()
}

/// The labels a zone gives what it holds from the global store: the global store's, with
/// `kuma.io/origin: global` and without a zone's own `kuma.io/zone` and `kuma.io/env`.
fn synced_labels(mut labels: BTreeMap<String, String>) -> Result<Labels, ValidationError> {
    labels.remove(ZONE_LABEL);
    labels.remove(ENV_LABEL);
    labels.insert(ORIGIN_LABEL.to_owned(), ORIGIN_GLOBAL.to_owned());
    Labels::parse(labels)
}

fn mesh_name(name: &str) -> Result<MeshName, SyncError> {
    MeshName::parse(name).map_err(|e| SyncError::Invalid {
        resource: format!("Mesh {name:?}"),
        reason: e.to_string(),
    })
}

fn secret_key(mesh: Option<&str>, name: &str) -> Result<SecretKey, SyncError> {
    SecretKey::parse(mesh, name).map_err(|e| SyncError::Invalid {
        resource: format!("secret {name:?}"),
        reason: e.to_string(),
    })
}
