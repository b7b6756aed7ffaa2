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
    let request: TokenRequest = token_request(&user, &body.bytes()?, "UserToken")?;
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
    let valid_for = valid_for(&mut errors, &request.valid_for);
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

/// A token request's body read as `T`, from an admin (403 for anyone else, after a body
/// that does not parse is refused: the same order whatever the token kind).
///
/// # Errors
/// 400 for a body that is not a `T`, 403 for a caller who is not an admin.
pub(super) fn token_request<T: serde::de::DeserializeOwned>(
    user: &super::auth::User,
    body: &[u8],
    resource_type: &str,
) -> ApiResult<T> {
    let request = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid token request: {e}")))?;
    user.require_admin(resource_type)?;
    Ok(request)
}

/// A token request's `validFor`: its duration, or its violation added to `errors`.
pub(super) fn valid_for(errors: &mut ValidationError, text: &str) -> Option<std::time::Duration> {
    match crate::duration::parse(text) {
        Ok(valid_for) => Some(valid_for),
        Err(reason) => {
            errors.push("validFor", reason);
            None
        }
    }
}

/// Why a token name or group is refused.
const CONTROL_CHARACTERS: &str = "must not contain control characters (NUL, newline, ESC, ...)";
