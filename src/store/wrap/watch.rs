//! Watching the change feed: every event after a revision, once each, in revision order,
//! as they are committed (Kubernetes' watch, on SQL).
//!
//! The events table is the truth; the store's [`ChangeSignal`] only says when to look.
//! A store notifies it after each of its own writes, so a watcher in the same process
//! wakes at once. A Postgres store also tells other processes: after its writes it sends a
//! `NOTIFY` (in a transaction of its own, so the writes' commits are not serialized by it),
//! and while anything watches it `LISTEN`s for theirs, so a watcher wakes a few
//! milliseconds after another replica's write (`benches/watch_latency.rs`). Between
//! wake-ups a watcher still reads every [`WATCH_POLL`], which covers what no notification
//! announces: one lost while the listener reconnects, a write made behind the library's
//! back, a store that cannot listen (Postgres behind a transaction-mode pooler).
//!
//! [`ChangeSignal`]: crate::store::contract::feed::ChangeSignal

use crate::store::contract::feed::{Event, EventFilter};
use crate::store::contract::{Result, SecretStore, StoreError};
use std::collections::VecDeque;
use std::time::Duration;

/// How often a watcher reads the feed when nothing woke it.
pub const WATCH_POLL: Duration = Duration::from_millis(200);

/// How a watch reads the feed.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct WatchOptions {
    /// How often it reads when nothing woke it (default [`WATCH_POLL`]).
    pub poll: Duration,
    /// Events read per query (default 500).
    pub page_size: u32,
}

impl Default for WatchOptions {
    fn default() -> Self {
        Self {
            poll: WATCH_POLL,
            page_size: 500,
        }
    }
}

impl WatchOptions {
    /// These options, reading every `poll` when nothing woke the watch.
    #[must_use]
    pub fn poll(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }
}

/// Every event after `after` that passes `filter`, once each, in revision order, as they
/// are committed: an endless stream. If the database goes away it waits and resumes from
/// its last revision, losing nothing; it ends only when retention pruned events it still
/// needed, with one [`StoreError::Gone`] item (list again, then watch from the list's
/// revision).
pub fn watch<S>(
    store: S,
    after: i64,
    filter: EventFilter,
) -> impl futures_util::Stream<Item = Result<Event>> + Send + 'static
where
    S: SecretStore + Clone + 'static,
{
    watch_with(store, after, filter, WatchOptions::default())
}

/// [`watch`], read as `options` say.
pub fn watch_with<S>(
    store: S,
    after: i64,
    filter: EventFilter,
    options: WatchOptions,
) -> impl futures_util::Stream<Item = Result<Event>> + Send + 'static
where
    S: SecretStore + Clone + 'static,
{
    struct Watch<S> {
        store: S,
        after: i64,
        filter: EventFilter,
        options: WatchOptions,
        waiter: Option<crate::store::contract::feed::ChangeWaiter>,
        ready: VecDeque<Event>,
        ended: bool,
    }
    let waiter = store.change_signal().map(|signal| signal.subscribe());
    let start = Watch {
        store,
        after,
        filter,
        options,
        waiter,
        ready: VecDeque::new(),
        ended: false,
    };
    futures_util::stream::unfold(start, |mut watch| async move {
        if watch.ended {
            return None;
        }
        let mut backoff = Duration::from_millis(100);
        loop {
            if let Some(event) = watch.ready.pop_front() {
                return Some((Ok(event), watch));
            }
            if let Some(waiter) = &mut watch.waiter {
                waiter.mark_seen();
            }
            match watch
                .store
                .events_after(watch.after, watch.options.page_size, &watch.filter)
                .await
            {
                Ok(page) => {
                    watch.after = page.revision;
                    backoff = Duration::from_millis(100);
                    if !page.events.is_empty() {
                        watch.ready.extend(page.events);
                        continue;
                    }
                    wait_for_change(watch.waiter.as_mut(), watch.options.poll).await;
                }
                Err(gone @ StoreError::Gone { .. }) => {
                    watch.ended = true;
                    return Some((Err(gone), watch));
                }
                Err(other) => {
                    tracing::warn!(error = %other, after = watch.after, "the change feed cannot be read; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    })
}

/// Waits until `waiter` is woken or `poll` has passed, whichever is first.
pub(crate) async fn wait_for_change(
    waiter: Option<&mut crate::store::contract::feed::ChangeWaiter>,
    poll: Duration,
) {
    match waiter {
        Some(waiter) => {
            tokio::select! {
                () = waiter.changed() => {}
                () = tokio::time::sleep(poll) => {}
            }
        }
        None => tokio::time::sleep(poll).await,
    }
}
