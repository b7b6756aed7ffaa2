//! Version history as the library sees it: what `GET …/_versions` lists.
//!
//! Every update keeps the version it replaces, up to the store's history limit
//! (`serve --max-versions`, default 10 earlier versions per secret; 0 keeps none and makes
//! deletes final). A delete keeps the deleted secret's versions for the deleted-retention
//! period (`serve --deleted-retention`, default 7 days), so it can be restored. History rows
//! are written by triggers in the writing statement (migration `secret_history`; on
//! Postgres an update's from the trigger of `one_trigger_before_updates`), sealed as the
//! row they were, and bound to the write that made them.
//!
//! Creating a secret with the name of a deleted one starts a fresh history: the deleted
//! secret's versions are dropped (restore it first to keep them). Deleting a Mesh drops its
//! secrets' histories with them.

use super::feed::Actor;
use chrono::{DateTime, Utc};

/// One version of a secret, as metadata (never its data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionInfo {
    /// The version.
    pub version: i64,
    /// When it was written.
    pub modification_time: DateTime<Utc>,
    /// It is the secret's current version.
    pub current: bool,
    /// Who wrote it, when known.
    pub actor: Option<Actor>,
    /// When the secret was deleted, for the versions of a deleted secret.
    pub deletion_time: Option<DateTime<Utc>>,
}

/// The default number of earlier versions a secret keeps.
pub const DEFAULT_MAX_VERSIONS: u32 = 10;
