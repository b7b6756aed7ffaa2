//! Multi-zone on the global store's API: `POST /tokens/zone` issues the zone token a zone
//! presents (admin only, as `kumactl generate zone-token`), and `GET /zones` shows which
//! zones follow this store, how far each has got and when each was last seen (admin only).

pub(super) mod doc;

use super::AppState;
use super::auth::tokens::{self, ZONE_SCOPES};
use super::error::{ApiError, ApiResult};
use super::extract::{Caller, JsonBody};
use super::openapi::Routes;
use super::user_token::{token_request, valid_for};
use crate::domain::{ControlPlane, ValidationError};
use crate::store::SecretStore;
use axum::Json;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

/// The multi-zone routes.
pub fn router<S: SecretStore + Clone + 'static>() -> Routes<AppState<S>> {
    Routes::new()
        .add::<doc::__path_generate_zone_token, _, _>(generate_zone_token::<S>)
        .add::<doc::__path_list_zones, _, _>(list_zones::<S>)
}

/// `POST /tokens/zone`, as Kuma's.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ZoneTokenRequest {
    zone: String,
    /// Kuma's default: every scope.
    #[serde(default)]
    scope: Option<Vec<String>>,
    valid_for: String,
}

async fn generate_zone_token<S: SecretStore + Clone + 'static>(
    Caller { state, user }: Caller<S>,
    body: JsonBody,
) -> ApiResult<Response> {
    const TITLE: &str = "Could not issue a token";
    let request: ZoneTokenRequest = token_request(&user, &body.bytes()?, "ZoneToken")?;
    if !matches!(state.config.control_plane, ControlPlane::Global) {
        return Err(ApiError::bad_request(
            "zone tokens are issued by the global store (serve --mode global), which zones present them to",
        ));
    }
    let mut errors = ValidationError::default();
    if !crate::domain::is_zone_name(&request.zone) {
        errors.push("zone", crate::domain::ZONE_NAME_RULE);
    }
    let scope = request
        .scope
        .unwrap_or_else(|| ZONE_SCOPES.map(str::to_owned).to_vec());
    if scope.is_empty() {
        errors.push("scope", "must name at least one of cp, ingress, egress");
    }
    for (i, s) in scope.iter().enumerate() {
        if !ZONE_SCOPES.contains(&s.as_str()) {
            errors.push(format!("scope[{i}]"), "must be cp, ingress or egress");
        }
    }
    let valid_for = valid_for(&mut errors, &request.valid_for);
    let Some(valid_for) = valid_for.filter(|_| errors.is_empty()) else {
        return Err(ApiError::invalid(TITLE, errors));
    };
    let token = tokens::issue_zone_token(&state.store, &request.zone, scope, valid_for).await?;
    tracing::info!(
        zone = %request.zone,
        by = %crate::printable::escaped(&user.name),
        "issued a zone token"
    );
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], token).into_response())
}

/// `GET /zones`.
#[derive(Serialize)]
struct ZoneList {
    total: usize,
    items: Vec<crate::federation::global::ZoneView>,
    /// The global store's revision now: how far a zone could have got.
    revision: i64,
}

async fn list_zones<S: SecretStore + Clone + 'static>(
    Caller { state, user }: Caller<S>,
) -> ApiResult<Response> {
    user.require_admin("Zone")?;
    let revision = state
        .store
        .current_revision()
        .await
        .map_err(|e| ApiError::store("Could not retrieve zones", e))?;
    let items = state.config.zones.zones();
    Ok(Json(ZoneList {
        total: items.len(),
        items,
        revision,
    })
    .into_response())
}
