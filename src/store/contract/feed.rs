//! The change feed and audit trail, as the library sees it: every committed change to a
//! Secret, GlobalSecret, Mesh or ExternalService is an [`Event`] with a store-wide revision, in commit order
//! without gaps (see the `change_feed` migrations for how each backend guarantees it), and
//! the [`Actor`] and request id of the write that made it. An event never holds data.
//!
//! The guarantee: a reader that has consumed every event up to revision R never later
//! finds one at or below R. Postgres numbers events after their transactions commit (one
//! sequencer at a time, run by readers, numbering every visible event without a revision
//! above the highest so far), so a slow writer's event cannot land below what a reader has
//! passed; SQLite, one writer at a time, numbers in the writing transaction. The cost is
//! on writes: a trigger inserts the event (a heap row and one index entry, in the
//! unnumbered index) in the same statement; on Postgres an update's event comes from the
//! one BEFORE UPDATE trigger that also keeps the replaced version (migration
//! `one_trigger_before_updates`). Writers take no shared lock. The benchmark measures it
//! (`events on / off`).
//!
//! Who is writing is a task-local [`WriteContext`]: the HTTP API sets it per request (the
//! token's user, or `localhost`), the CLI per run (`cli:import`, …); an embedding control
//! plane sets its own with [`with_write_context`]. Writes outside any context record no
//! actor.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::future::Future;

/// Who made a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The user's name (a token's `Name`), `localhost`, or the CLI verb (`cli:import`).
    pub name: String,
    /// The user's groups.
    #[serde(default)]
    pub groups: Vec<String>,
}

/// The actor and request of the writes a task makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteContext {
    /// Who.
    pub actor: Actor,
    /// The request (`X-Request-Id`, or one made up per request or CLI run).
    pub request_id: Option<String>,
}

tokio::task_local! {
    static WRITE_CONTEXT: WriteContext;
}

/// Runs `future` with `context` as the actor and request of every store write it makes.
pub async fn with_write_context<F: Future>(context: WriteContext, future: F) -> F::Output {
    WRITE_CONTEXT.scope(context, future).await
}

/// The write context of the current task, if any.
pub fn current_write_context() -> Option<WriteContext> {
    WRITE_CONTEXT.try_with(Clone::clone).ok()
}

/// What a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    /// The resource was created.
    Create,
    /// The resource was changed (its version went up).
    Update,
    /// The resource was deleted.
    Delete,
}

impl Operation {
    /// As stored.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "create" => Some(Operation::Create),
            "update" => Some(Operation::Update),
            "delete" => Some(Operation::Delete),
            _ => None,
        }
    }
}

/// One committed change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// Its place in the store-wide, commit-ordered sequence (1, 2, 3, …).
    pub revision: i64,
    /// What happened.
    pub operation: Operation,
    /// `Secret`, `GlobalSecret` or `Mesh`.
    #[serde(rename = "type")]
    pub resource_type: String,
    /// The Mesh of a Secret; `None` for a GlobalSecret and for a Mesh.
    pub mesh: Option<String>,
    /// The resource's name.
    pub name: String,
    /// The resource's version after the change (the deleted version for a delete).
    pub version: i64,
    /// When the writing transaction ran.
    pub time: DateTime<Utc>,
    /// Who made it, when known.
    pub actor: Option<Actor>,
    /// The request that made it, when known.
    pub request_id: Option<String>,
}

/// Which events to return.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Only events of resources in this Mesh (and the Mesh itself).
    pub mesh: Option<String>,
    /// Only events of this resource type.
    pub resource_type: Option<String>,
}

impl EventFilter {
    /// Whether `event` passes.
    pub fn matches(&self, event: &Event) -> bool {
        let mesh_ok = match &self.mesh {
            None => true,
            Some(mesh) => {
                event.mesh.as_deref() == Some(mesh)
                    || (event.resource_type == "Mesh" && &event.name == mesh)
            }
        };
        mesh_ok
            && self
                .resource_type
                .as_ref()
                .is_none_or(|t| t == &event.resource_type)
    }
}

/// A page of the feed as the API sends it: `{"events": […], "revision": R}`, R being the
/// revision to continue after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changes {
    /// The events.
    pub events: Vec<Event>,
    /// The revision to continue after.
    pub revision: i64,
}

/// A page of the feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventPage {
    /// The events after the asked revision, in revision order (filtered).
    pub events: Vec<Event>,
    /// The revision to continue after: the last event's, or (when none matched) the last
    /// revision examined, so a filtered reader still moves forward.
    pub revision: i64,
}

/// A wake-up for change-feed readers: readers [wait](ChangeWaiter::changed) on it between
/// reads, and it is notified when the store may hold new events, from two sides:
///
/// - **this process's writes** ([`ChangeSignal::notify_local_write`]): they wake this
///   process's readers at once, and, when the store can tell other processes (a Postgres
///   store sends `NOTIFY`), they are announced by a task started at the first write;
/// - **other processes' writes** ([`ChangeSignal::notify`]): a listener (Postgres `LISTEN`)
///   started while anyone waits.
///
/// Only a hint: the events table stays the truth, so a reader that misses a wake-up still
/// finds every event at its next read.
#[derive(Clone)]
pub struct ChangeSignal {
    inner: std::sync::Arc<SignalInner>,
}

struct SignalInner {
    generation: tokio::sync::watch::Sender<u64>,
    /// Goes up on every write of this process: what the announcer follows.
    local_writes: tokio::sync::watch::Sender<u64>,
    /// Waiters parked in [`ChangeWaiter::changed`] now.
    parked: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    hooks: SignalHooks,
    listening: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    announcing: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// What a store runs beside its [`ChangeSignal`] to reach other processes. Both are
/// optional; a store without them (SQLite) wakes only its own process's readers.
#[derive(Default)]
pub struct SignalHooks {
    /// Starts a task that [notifies](ChangeSignal::notify) the signal it is given on other
    /// processes' writes, until [`WeakChangeSignal::upgrade`] fails or nobody
    /// [waits](ChangeSignal::has_waiters) any more. Started when a reader subscribes and
    /// none is running.
    pub listen: Option<Box<dyn Fn(WeakChangeSignal) -> tokio::task::JoinHandle<()> + Send + Sync>>,
    /// Starts a task that tells other processes about this process's writes, one
    /// announcement for each [`LocalWrites::next`] (many writes fold into one), until the
    /// store is gone. Started at the first write.
    pub announce: Option<Box<dyn Fn(LocalWrites) -> tokio::task::JoinHandle<()> + Send + Sync>>,
}

impl std::fmt::Debug for ChangeSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeSignal")
            .field("generation", &*self.inner.generation.borrow())
            .field("listens", &self.inner.hooks.listen.is_some())
            .field("announces", &self.inner.hooks.announce.is_some())
            .finish()
    }
}

impl Default for ChangeSignal {
    fn default() -> Self {
        Self::new()
    }
}

impl ChangeSignal {
    /// A signal that only reaches this process's readers.
    pub fn new() -> Self {
        Self::with_hooks(SignalHooks::default())
    }

    /// A signal that also reaches other processes, through `hooks`.
    pub fn with_hooks(hooks: SignalHooks) -> Self {
        Self {
            inner: std::sync::Arc::new(SignalInner {
                generation: tokio::sync::watch::Sender::new(0),
                local_writes: tokio::sync::watch::Sender::new(0),
                parked: std::sync::Arc::default(),
                hooks,
                listening: std::sync::Mutex::new(None),
                announcing: std::sync::Mutex::new(None),
            }),
        }
    }

    /// Wakes every waiter: the store may hold new events (another process wrote).
    pub fn notify(&self) {
        self.inner
            .generation
            .send_modify(|g| *g = g.wrapping_add(1));
    }

    /// Wakes every waiter and has the write announced to other processes: this process
    /// wrote (or tried to).
    pub fn notify_local_write(&self) {
        self.notify();
        self.inner
            .local_writes
            .send_modify(|g| *g = g.wrapping_add(1));
        if let Some(announce) = &self.inner.hooks.announce {
            let mut running = lock(&self.inner.announcing);
            if running
                .as_ref()
                .is_none_or(tokio::task::JoinHandle::is_finished)
            {
                // Subscribed before this write's bump was seen: the first `next` returns
                // at once, and announces it.
                let mut writes = self.inner.local_writes.subscribe();
                writes.mark_changed();
                *running = Some(announce(LocalWrites(writes)));
            }
        }
    }

    /// A guard that calls [`ChangeSignal::notify_local_write`] when it is dropped: taken
    /// at the start of a write, it wakes watchers once the write has ended, however it
    /// ended (a failed write wakes them for nothing, which costs one read).
    pub fn notify_on_drop(&self) -> NotifyOnDrop<'_> {
        NotifyOnDrop(self)
    }

    /// How many waiters are parked in [`ChangeWaiter::changed`] now: readers that have read
    /// the feed to its end and wait for the next change.
    pub fn parked(&self) -> usize {
        self.inner.parked.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Whether anyone waits on the signal.
    pub fn has_waiters(&self) -> bool {
        self.inner.generation.receiver_count() > 0
    }

    /// A waiter, woken by every notification from now on (starting the listener for other
    /// processes' writes if the store has one and it is not running).
    pub fn subscribe(&self) -> ChangeWaiter {
        let waiter = ChangeWaiter {
            generation: self.inner.generation.subscribe(),
            parked: std::sync::Arc::clone(&self.inner.parked),
        };
        if let Some(listen) = &self.inner.hooks.listen {
            let mut running = lock(&self.inner.listening);
            if running
                .as_ref()
                .is_none_or(tokio::task::JoinHandle::is_finished)
            {
                *running = Some(listen(WeakChangeSignal {
                    inner: std::sync::Arc::downgrade(&self.inner),
                }));
            }
        }
        waiter
    }
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// This process's writes, as an announcer follows them (see [`SignalHooks::announce`]).
#[derive(Debug)]
pub struct LocalWrites(tokio::sync::watch::Receiver<u64>);

impl LocalWrites {
    /// Waits for writes since the last call (returns at once if there were any); `false`
    /// once the store is gone.
    pub async fn next(&mut self) -> bool {
        self.0.changed().await.is_ok()
    }
}

/// Notifies its [`ChangeSignal`] when dropped (see [`ChangeSignal::notify_on_drop`]).
#[must_use = "it notifies when dropped: keep it for the length of the write"]
pub struct NotifyOnDrop<'a>(&'a ChangeSignal);

impl Drop for NotifyOnDrop<'_> {
    fn drop(&mut self) {
        self.0.notify_local_write();
    }
}

/// A [`ChangeSignal`] that does not keep its store's signal alive (held by a listener task).
#[derive(Clone)]
pub struct WeakChangeSignal {
    inner: std::sync::Weak<SignalInner>,
}

impl WeakChangeSignal {
    /// The signal, while its store lives.
    pub fn upgrade(&self) -> Option<ChangeSignal> {
        self.inner.upgrade().map(|inner| ChangeSignal { inner })
    }
}

/// One reader's subscription to a [`ChangeSignal`].
#[derive(Debug)]
pub struct ChangeWaiter {
    generation: tokio::sync::watch::Receiver<u64>,
    parked: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl ChangeWaiter {
    /// Forgets notifications so far: call it before reading the events, then
    /// [`ChangeWaiter::changed`] after, and no write between the two is missed.
    pub fn mark_seen(&mut self) {
        self.generation.borrow_and_update();
    }

    /// Completes at the first notification since the last [`ChangeWaiter::mark_seen`] (at
    /// once if there was one). Never completes once the signal is gone.
    pub async fn changed(&mut self) {
        /// Counts the waiter as parked while it waits, however the wait ends.
        struct Parked<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Parked<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
            }
        }
        self.parked
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let _parked = Parked(&self.parked);
        if self.generation.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
