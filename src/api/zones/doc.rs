//! The multi-zone part of the OpenAPI document (`POST /tokens/zone`, `GET /zones`).

#![allow(dead_code)] // The operation fns exist for their #[utoipa::path] attributes.

use crate::api::openapi::{WriteErrors, error_responses, operation};
use utoipa::ToSchema;

/// `POST /tokens/zone`.
#[derive(ToSchema)]
#[schema(as = ZoneTokenRequest)]
struct ZoneTokenRequestSchema {
    /// The zone's name (a lowercase DNS label), as the zone's `serve --zone`.
    #[schema(pattern = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")]
    zone: String,
    /// What the token may be used for: `cp` (a zone's sync), `ingress`, `egress`; all three
    /// by default.
    scope: Option<Vec<String>>,
    /// How long the token is valid: `24h`, `7d`, `1h30m`.
    #[schema(
        rename = "validFor",
        pattern = "^([0-9]{1,9}[dhms])+$",
        example = "24h"
    )]
    valid_for: String,
}

/// A zone that follows this global store.
#[derive(ToSchema)]
#[schema(as = ZoneItem)]
struct ZoneItemSchema {
    name: String,
    /// A long poll of the zone is open, or ended in the last 10 s.
    connected: bool,
    /// A long poll of the zone is open now.
    polling: bool,
    /// The revision of this store whose changes the zone has applied.
    #[schema(rename = "appliedRevision")]
    applied_revision: i64,
    #[schema(rename = "lastSeen", format = DateTime)]
    last_seen: String,
}

/// `GET /zones`.
#[derive(ToSchema)]
#[schema(as = ZoneList)]
struct ZoneListSchema {
    total: u64,
    items: Vec<ZoneItemSchema>,
    /// This store's revision now.
    revision: i64,
}

error_responses! {
    /// Errors of `GET /zones`.
    enum ZoneListErrors {
        /// Never (no parameters).
        BadRequest,
    }
}

operation!(
    #[utoipa::path(post, path = "/tokens/zone", tag = "Token",
        operation_id = "generateZoneToken", summary = "Issue a zone token (admin only, on a global store)",
        request_body = ZoneTokenRequestSchema,
        responses(
            (status = 200, description = "The token (a JWT)", body = String, content_type = "text/plain"),
            WriteErrors,
        ))]
    generate_zone_token
);

operation!(
    #[utoipa::path(get, path = "/zones", tag = "Zones", operation_id = "getZones",
        summary = "The zones that follow this global store (admin only)",
        responses(
            (status = 200, description = "Each zone, connected or not, and the revision it holds", body = ZoneListSchema),
            ZoneListErrors,
        ))]
    list_zones
);
