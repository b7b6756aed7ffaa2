//! `GlobalSecret` routes: `/global-secrets[/{name}]` and the identical aliases
//! `/globalsecrets[/{name}]`. The handling is shared with `secrets.rs`, without a Mesh.

use super::AppState;
use super::auth::User;
use super::error::ApiResult;
use super::extract::{JsonBody, Preconditions};
use super::list;
use super::openapi::{self as doc, Routes};
use super::secrets::{delete_secret, get_secret, list_secrets, put_secret};
use crate::store::{SecretScope, SecretStore};
use axum::Extension;
use axum::extract::{MatchedPath, Path, State};
use axum::http::{HeaderMap, Uri};
use axum::response::Response;

/// Routes of global secrets, under both of Kuma's spellings.
pub fn router<S: SecretStore + Clone + 'static>() -> Routes<AppState<S>> {
    Routes::new()
        .add::<doc::__path_get_global_secret_list, _, _>(list_global_secrets::<S>)
        .add::<doc::__path_get_global_secret, _, _>(get_global_secret::<S>)
        .add::<doc::__path_put_global_secret, _, _>(put_global_secret::<S>)
        .add::<doc::__path_delete_global_secret, _, _>(delete_global_secret::<S>)
        .add::<doc::__path_get_global_secret_list_alias, _, _>(list_global_secrets::<S>)
        .add::<doc::__path_get_global_secret_alias, _, _>(get_global_secret::<S>)
        .add::<doc::__path_put_global_secret_alias, _, _>(put_global_secret::<S>)
        .add::<doc::__path_delete_global_secret_alias, _, _>(delete_global_secret::<S>)
}

async fn list_global_secrets<S: SecretStore + Clone + 'static>(
    State(state): State<AppState<S>>,
    route: MatchedPath,
    Extension(user): Extension<User>,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let params = list::parse(uri.query(), route.as_str())?;
    list_secrets(&state, &user, SecretScope::Global, params, &uri, &headers).await
}

async fn get_global_secret<S: SecretStore + Clone + 'static>(
    State(state): State<AppState<S>>,
    Extension(user): Extension<User>,
    Path(name): Path<String>,
    uri: Uri,
) -> ApiResult<Response> {
    get_secret(&state, &user, None, &name, &uri).await
}

async fn put_global_secret<S: SecretStore + Clone + 'static>(
    State(state): State<AppState<S>>,
    Extension(user): Extension<User>,
    Path(name): Path<String>,
    preconditions: Preconditions,
    body: JsonBody,
) -> ApiResult<Response> {
    put_secret(&state, &user, None, &name, &preconditions, body).await
}

async fn delete_global_secret<S: SecretStore + Clone + 'static>(
    State(state): State<AppState<S>>,
    Extension(user): Extension<User>,
    Path(name): Path<String>,
    preconditions: Preconditions,
) -> ApiResult<Response> {
    delete_secret(&state, &user, None, &name, &preconditions).await
}
