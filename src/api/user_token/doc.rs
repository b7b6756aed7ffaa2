//! The user token's part of the OpenAPI document (`POST /tokens/user`).

#![allow(dead_code)] // The operation fns exist for their #[utoipa::path] attributes.

use crate::api::openapi::{WriteErrors, operation};
use utoipa::ToSchema;

/// `POST /tokens/user`.
#[derive(ToSchema)]
#[schema(as = UserTokenRequest)]
struct UserTokenRequestSchema {
    /// The user's name.
    #[schema(min_length = 1, pattern = r"\S")]
    name: String,
    /// The user's groups.
    groups: Option<Vec<String>>,
    /// How long the token is valid: `24h`, `7d`, `1h30m`.
    #[schema(
        rename = "validFor",
        pattern = "^([0-9]{1,9}[dhms])+$",
        example = "24h"
    )]
    valid_for: String,
}

operation!(
    #[utoipa::path(post, path = "/tokens/user", tag = "Token",
        operation_id = "generateUserToken", summary = "Issue a user token (admin only)",
        request_body = UserTokenRequestSchema,
        responses(
            (status = 200, description = "The token (a JWT)", body = String, content_type = "text/plain"),
            WriteErrors,
        ))]
    generate_user_token
);
