//! The change feed and audit trail, as the library sees it: every committed change to a
//! Secret, GlobalSecret or Mesh is an [`Event`] with a store-wide revision, in commit order
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

/// How often [`watch`] looks for new events when nothing woke it.
pub const WATCH_POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// Every event after `after` that passes `filter`, once each, in revision order, as they
/// are committed: an endless stream (Kubernetes' watch, on SQL). The table is the truth:
/// `wake` (notified by this process's writes) only makes it look sooner than every
/// [`WATCH_POLL`]. If the database goes away it waits and resumes from its last revision,
/// losing nothing; it ends only when retention pruned events it still needed, with one
/// [`StoreError::Gone`](crate::store::StoreError::Gone) item (list again, then watch).
pub fn watch<S>(
    store: S,
    after: i64,
    filter: EventFilter,
    wake: std::sync::Arc<tokio::sync::Notify>,
) -> impl futures_util::Stream<Item = crate::store::Result<Event>> + Send + 'static
where
    S: crate::store::SecretStore + Clone + 'static,
{
    struct Watch<S> {
        store: S,
        after: i64,
        filter: EventFilter,
        wake: std::sync::Arc<tokio::sync::Notify>,
        ready: std::collections::VecDeque<Event>,
        ended: bool,
    }
    let start = Watch {
        store,
        after,
        filter,
        wake,
        ready: std::collections::VecDeque::new(),
        ended: false,
    };
    futures_util::stream::unfold(start, |mut watch| async move {
        if watch.ended {
            return None;
        }
        let mut backoff = std::time::Duration::from_millis(100);
        loop {
            if let Some(event) = watch.ready.pop_front() {
                return Some((Ok(event), watch));
            }
            let wake = std::sync::Arc::clone(&watch.wake);
            let woken = wake.notified();
            match watch
                .store
                .events_after(watch.after, 500, &watch.filter)
                .await
            {
                Ok(page) => {
                    watch.after = page.revision;
                    backoff = std::time::Duration::from_millis(100);
                    if !page.events.is_empty() {
                        watch.ready.extend(page.events);
                        continue;
                    }
                    tokio::select! {
                        () = woken => {}
                        () = tokio::time::sleep(WATCH_POLL) => {}
                    }
                }
                Err(gone @ crate::store::StoreError::Gone { .. }) => {
                    watch.ended = true;
                    return Some((Err(gone), watch));
                }
                Err(other) => {
                    tracing::warn!(error = %other, after = watch.after, "the change feed cannot be read; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(2));
                }
            }
        }
    })
}
