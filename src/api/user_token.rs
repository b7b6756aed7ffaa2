//! `POST /tokens/user`: mint a user token (admin only), as Kuma's
//! `kumactl generate user-token` does.

pub(super) mod doc;

use super::AppState;
use super::auth::{AUTHENTICATED, User, tokens};
use super::error::{ApiError, ApiResult};
use super::extract::{Caller, JsonBody};
use super::openapi::Routes;
use crate::domain::ValidationError;
use crate::store::SecretStore;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

/// The token route.
pub fn router<S: SecretStore + Clone + 'static>() -> Routes<AppState<S>> {
    Routes::new().add::<doc::__path_generate_user_token, _, _>(generate_user_token::<S>)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TokenRequest {
    name: String,
    #[serde(default)]
    groups: Vec<String>,
    valid_for: String,
}

async fn generate_user_token<S: SecretStore + Clone + 'static>(
    Caller { state, user }: Caller<S>,
    body: JsonBody,
) -> ApiResult<Response> {
    const TITLE: &str = "Could not issue a token";
    let body = body.bytes()?;
    let request: TokenRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid token request: {e}")))?;
    user.require_admin("UserToken")?;
    let mut errors = ValidationError::default();
    if request.name.trim().is_empty() {
        errors.push("name", "cannot be empty");
    }
    // A token's identity is stored as the actor of every write it makes (Postgres cannot
    // store NUL) and printed by audit, history and the log: no control characters.
    if crate::printable::has_controls(&request.name) {
        errors.push("name", CONTROL_CHARACTERS);
    }
    for (i, group) in request.groups.iter().enumerate() {
        if crate::printable::has_controls(group) {
            errors.push(format!("groups[{i}]"), CONTROL_CHARACTERS);
        }
    }
    let valid_for = match crate::duration::parse(&request.valid_for) {
        Ok(valid_for) => Some(valid_for),
        Err(reason) => {
            errors.push("validFor", reason);
            None
        }
    };
    let Some(valid_for) = valid_for.filter(|_| errors.is_empty()) else {
        return Err(ApiError::invalid(TITLE, errors));
    };
    let mut groups = request.groups;
    if !groups.iter().any(|g| g == AUTHENTICATED) {
        groups.push(AUTHENTICATED.into());
    }
    let subject = User {
        name: request.name,
        groups,
        zone: None,
    };
    let token = tokens::issue(&state.store, &subject, valid_for).await?;
    tracing::info!(
        user = %crate::printable::escaped(&subject.name),
        by = %crate::printable::escaped(&user.name),
        "issued a user token"
    );
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], token).into_response())
}

/// Why a token name or group is refused.
const CONTROL_CHARACTERS: &str = "must not contain control characters (NUL, newline, ESC, ...)";
