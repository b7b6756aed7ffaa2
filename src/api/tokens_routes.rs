//! `POST /tokens/user`: mint a user token (admin only), as Kuma's
//! `kumactl generate user-token` does.

use super::AppState;
use super::auth::{AUTHENTICATED, User};
use super::error::{ApiError, ApiResult};
use super::request::json_body;
use super::tokens;
use crate::domain::ValidationError;
use crate::store::SecretStore;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Router};
use serde::Deserialize;

/// The token route.
pub fn router<S: SecretStore + Clone + 'static>() -> Router<AppState<S>> {
    Router::new().route("/tokens/user", post(generate_user_token::<S>))
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
    State(state): State<AppState<S>>,
    Extension(user): Extension<User>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    const TITLE: &str = "Could not issue a token";
    let body = json_body(&headers, body)?;
    let request: TokenRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid token request: {e}")))?;
    user.require_admin("UserToken")?;
    let mut errors = ValidationError::default();
    if request.name.trim().is_empty() {
        errors.push("name", "cannot be empty");
    }
    let valid_for = errors.collect(tokens::parse_duration(&request.valid_for));
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
    };
    let token = tokens::issue(&state.store, &subject, valid_for).await?;
    tracing::info!(user = %subject.name, by = %user.name, "issued a user token");
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], token).into_response())
}
