//! The global store's view of its zones: which are connected, the revision of the global
//! store each has applied, and when each was last seen (`GET /zones`, `get zones`).
//!
//! A zone tells where it is by following the feed: a long poll `/_changes?after=R` with its
//! zone token says "this zone holds every change up to R". The registry is this process's
//! memory, not the database: it costs the global store no write per poll, and a zone that
//! follows a restarted global store is back in it at its next poll (within its backoff,
//! 30 s at most). Each replica of a global store knows the zones that poll it.

use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long after its last poll ended a zone still counts as connected: the time it takes
/// to apply a page of changes and ask for the next.
pub const CONNECTED_GRACE: Duration = Duration::from_secs(10);

/// What the global store knows of its zones.
#[derive(Debug, Default)]
pub struct ZoneRegistry {
    zones: Mutex<BTreeMap<String, Seen>>,
}

#[derive(Debug, Clone)]
struct Seen {
    applied: i64,
    last_seen: DateTime<Utc>,
    polls: usize,
}

/// One zone as `GET /zones` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ZoneView {
    /// The zone's name, from its zone token.
    pub name: String,
    /// Whether a long poll of the zone is open now, or ended within [`CONNECTED_GRACE`].
    pub connected: bool,
    /// Whether a long poll of the zone is open now.
    pub polling: bool,
    /// The global store's revision whose changes the zone has applied.
    pub applied_revision: i64,
    /// When the zone last asked for changes (or its last poll ended).
    pub last_seen: DateTime<Utc>,
}

impl ZoneRegistry {
    /// Records that `zone` polls the feed after `applied`; it counts as connected until
    /// the returned guard drops (the poll answered or the zone hung up), and for
    /// [`CONNECTED_GRACE`] after.
    pub fn polling(self: &Arc<Self>, zone: &str, applied: i64) -> Polling {
        let mut zones = self.lock();
        let seen = zones.entry(zone.to_owned()).or_insert(Seen {
            applied,
            last_seen: Utc::now(),
            polls: 0,
        });
        seen.applied = applied;
        seen.last_seen = Utc::now();
        seen.polls += 1;
        Polling {
            registry: Arc::clone(self),
            zone: zone.to_owned(),
        }
    }

    /// Every zone seen since this process started, by name.
    pub fn zones(&self) -> Vec<ZoneView> {
        let now = Utc::now();
        let grace = chrono::Duration::from_std(CONNECTED_GRACE).unwrap_or_default();
        self.lock()
            .iter()
            .map(|(name, seen)| ZoneView {
                name: name.clone(),
                connected: seen.polls > 0 || now - seen.last_seen < grace,
                polling: seen.polls > 0,
                applied_revision: seen.applied,
                last_seen: seen.last_seen,
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Seen>> {
        self.zones.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A zone's open long poll (see [`ZoneRegistry::polling`]).
#[derive(Debug)]
pub struct Polling {
    registry: Arc<ZoneRegistry>,
    zone: String,
}

impl Drop for Polling {
    fn drop(&mut self) {
        if let Some(seen) = self.registry.lock().get_mut(&self.zone) {
            seen.polls = seen.polls.saturating_sub(1);
            seen.last_seen = Utc::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zone_is_connected_while_it_polls_and_shows_its_revision() {
        let registry = Arc::new(ZoneRegistry::default());
        assert!(registry.zones().is_empty());
        let poll = registry.polling("east", 7);
        let second = registry.polling("east", 9);
        let west = registry.polling("west", 3);
        drop(west);
        let zones = registry.zones();
        assert_eq!(zones.len(), 2);
        assert_eq!(
            (zones[0].name.as_str(), zones[0].applied_revision),
            ("east", 9)
        );
        assert!(zones[0].connected && zones[1].connected);
        assert!(zones[0].polling && !zones[1].polling);
        drop((poll, second));
        assert_eq!(registry.lock()["east"].polls, 0);
    }

    #[test]
    fn a_zone_not_seen_for_the_grace_is_disconnected() {
        let registry = Arc::new(ZoneRegistry::default());
        drop(registry.polling("east", 1));
        registry.lock().get_mut("east").unwrap().last_seen =
            Utc::now() - chrono::Duration::from_std(CONNECTED_GRACE * 2).unwrap();
        assert!(!registry.zones()[0].connected);
    }
}
