//! The change feed's part of the OpenAPI document (`/_changes`, `/_watch`).

#![allow(dead_code)] // The operation fns exist for their #[utoipa::path] attributes.

use crate::api::openapi::{error_responses, operation, parameters};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// An event of the change feed.
#[derive(ToSchema)]
#[schema(as = ChangeEvent)]
struct ChangeEventSchema {
    /// Its place in the store-wide, commit-ordered sequence.
    revision: i64,
    /// `create`, `update` or `delete`.
    #[schema(pattern = "^(create|update|delete)$")]
    operation: String,
    /// `Secret`, `GlobalSecret` or `Mesh`.
    #[schema(rename = "type")]
    resource_type: String,
    /// The Mesh of a Secret; null for a GlobalSecret and a Mesh.
    mesh: Option<String>,
    name: String,
    /// The resource's version after the change.
    version: i64,
    #[schema(format = DateTime)]
    time: String,
    /// Who made it: `{"name", "groups"}`.
    actor: Option<BTreeMap<String, serde_json::Value>>,
    #[schema(rename = "requestId")]
    request_id: Option<String>,
}

/// A page of the change feed.
#[derive(ToSchema)]
#[schema(as = Changes)]
struct ChangesSchema {
    events: Vec<ChangeEventSchema>,
    /// The revision to continue after.
    revision: i64,
}

/// One server-sent event of `/_watch`: `event: change` with `id` the revision and `data` a
/// [`ChangeEvent`](ChangeEventSchema) as JSON, or `event: error` with the reason as `data`
/// (the stream then ends; reconnect with `Last-Event-ID`).
#[derive(ToSchema)]
#[schema(as = WatchEvent)]
struct WatchEventSchema {
    /// `change` or `error`.
    event: Option<String>,
    /// The revision of a `change`.
    id: Option<String>,
    /// The event as JSON, or the error's reason.
    data: String,
}

parameters! {
    /// The change feed's parameters.
    struct ChangesQuery in Query {
        /// Events after this revision (default 0: from the start).
        #[param(minimum = 0)]
        after: Option<i64>,
        /// Events per answer (default 100).
        #[param(minimum = 1, maximum = 1000)]
        limit: Option<u32>,
        /// Wait up to this long for an event when there is none yet (`30s`; at most 60s, and at most nine tenths of the server's `--request-timeout`).
        #[param(pattern = "^(0|([0-9]{1,4}[dhms])+)$")]
        wait: Option<String>,
        /// Only this Mesh's events (its secrets and itself).
        mesh: Option<String>,
        /// Only events of this type.
        #[param(pattern = "^(Secret|GlobalSecret|Mesh|ExternalService)$")]
        r#type: Option<String>,
    }
}

error_responses! {
    /// Errors of the change feed.
    enum FeedErrors {
        /// Bad parameters.
        BadRequest,
        /// Retention pruned the events asked for: list again.
        410 Gone,
    }
}

operation!(
    #[utoipa::path(get, path = "/_changes", tag = "Changes", operation_id = "getChanges",
        summary = "The changes after a revision, in commit order (a long poll with `wait`)",
        params(ChangesQuery),
        responses(
            (status = 200, description = "Events, and the revision to continue after", body = ChangesSchema),
            FeedErrors,
        ))]
    get_changes
);

operation!(
    #[utoipa::path(get, path = "/_watch", tag = "Changes", operation_id = "watchChanges",
        summary = "The changes as server-sent events; `Last-Event-ID` resumes",
        params(ChangesQuery),
        responses(
            (status = 200, description = "A stream of `change` events, `id` the revision", body = WatchEventSchema, content_type = "text/event-stream"),
            FeedErrors,
        ))]
    watch_changes
);
