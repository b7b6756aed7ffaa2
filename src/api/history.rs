//! Version history routes, under each secret route (`/meshes/{mesh}/secrets/{name}`,
//! `/global-secrets/{name}`, `/globalsecrets/{name}`): `GET …/_versions`, `POST
//! …/_rollback`, `POST …/_restore`. Reading one version (`GET …?version=V`) and purging
//! (`DELETE …?purge=true`) are options of the item routes in `secrets.rs`. Admin only, like
//! secrets themselves; the rules are `store::history`'s.

pub(super) mod doc;

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{Caller, JsonBody, OptionalJsonBody, Preconditions, etag};
use super::openapi::Routes;
use super::secrets::{SecretAt, expected_version, precondition_or_store_error};
use crate::domain::{Secret, ValidationError};
use crate::store::{SecretStore, StoreError};
use crate::wire::{ListBody, SecretItem, VersionItem, VersionRequest};
use axum::Json;
use axum::body::Bytes;
use axum::http::header;
use axum::response::{IntoResponse, Response};

/// The history routes of Secrets and of GlobalSecrets, under both of Kuma's spellings.
pub fn router<S: SecretStore + Clone + 'static>() -> Routes<AppState<S>> {
    /// The three history operations under one spelling of a secret's path.
    macro_rules! under {
        ($routes:expr, $versions:ident, $rollback:ident, $restore:ident) => {
            $routes
                .add::<doc::$versions, _, _>(list_versions::<S>)
                .add::<doc::$rollback, _, _>(rollback::<S>)
                .add::<doc::$restore, _, _>(restore::<S>)
        };
    }
    let routes = under!(
        Routes::new(),
        __path_get_secret_versions,
        __path_rollback_secret,
        __path_restore_secret
    );
    let routes = under!(
        routes,
        __path_get_global_secret_versions,
        __path_rollback_global_secret,
        __path_restore_global_secret
    );
    under!(
        routes,
        __path_get_global_secret_versions_alias,
        __path_rollback_global_secret_alias,
        __path_restore_global_secret_alias
    )
}

/// `GET …/{name}/_versions`: the versions kept, newest first, as metadata, in Kuma's list
/// shape (never paged: at most the history limit and the current version). A deleted
/// secret's versions are listed too (each with its `deletionTime`), to choose what to
/// restore.
async fn list_versions<S: SecretStore + Clone + 'static>(
    Caller { state, user }: Caller<S>,
    at: SecretAt,
) -> ApiResult<Response> {
    const TITLE: &str = "Could not retrieve a resource";
    let key = at.key_for_admin(&user, TITLE)?;
    let versions = state
        .store
        .secret_versions(&key)
        .await
        .map_err(|e| ApiError::store(TITLE, e))?;
    Ok(Json(ListBody {
        total: versions.len() as u64,
        items: versions.iter().map(VersionItem::from).collect(),
        next: None,
    })
    .into_response())
}

/// `POST …/{name}/_rollback` with `{"version": V}`: writes version V's data and labels as a
/// new version and answers the secret as GET does (`ETag` the new version). With
/// `If-Match`, only if the secret is still at that version.
async fn rollback<S: SecretStore + Clone + 'static>(
    Caller { state, user }: Caller<S>,
    preconditions: Preconditions,
    at: SecretAt,
    body: JsonBody,
) -> ApiResult<Response> {
    const TITLE: &str = "Could not roll back a resource";
    let request = version_request(&body.bytes()?, TITLE)?;
    let Some(version) = request.version else {
        return Err(ApiError::invalid(
            TITLE,
            ValidationError::single("version", "cannot be empty: the version to roll back to"),
        ));
    };
    let key = at.key_for_admin(&user, TITLE)?;
    let expected = expected_version(&state, &key, &preconditions, TITLE).await?;
    let secret = state
        .store
        .rollback_secret(&key, version, expected)
        .await
        .map_err(|e| match e {
            // A missing secret is a 404 even with If-Match (a DELETE answers 412 there):
            // there is nothing to roll back, whatever the caller expected.
            StoreError::NotFound(_) => ApiError::store(TITLE, e),
            other => precondition_or_store_error(other, &preconditions, TITLE),
        })?;
    Ok(answer(&secret))
}

/// `POST …/{name}/_restore`, optionally with `{"version": V}`: brings a deleted secret
/// back as a new version (the newest kept one by default) and answers it as GET does.
async fn restore<S: SecretStore + Clone + 'static>(
    Caller { state, user }: Caller<S>,
    at: SecretAt,
    body: OptionalJsonBody,
) -> ApiResult<Response> {
    const TITLE: &str = "Could not restore a resource";
    let request = match body.bytes()? {
        Some(bytes) => version_request(&bytes, TITLE)?,
        None => VersionRequest::default(),
    };
    let key = at.key_for_admin(&user, TITLE)?;
    let secret = state
        .store
        .restore_secret(&key, request.version)
        .await
        .map_err(|e| ApiError::store(TITLE, e))?;
    Ok(answer(&secret))
}

/// `{"version": V}`, V a whole number from 1.
fn version_request(body: &Bytes, title: &str) -> ApiResult<VersionRequest> {
    let request: VersionRequest = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body must be {{\"version\": <a version of the secret>}}: {e}"
        ))
    })?;
    if request.version.is_some_and(|v| v < 1) {
        return Err(ApiError::invalid(
            title,
            ValidationError::single("version", "must be a whole number from 1"),
        ));
    }
    Ok(request)
}

/// The secret as GET answers it, with its new version as the `ETag`.
fn answer(secret: &Secret) -> Response {
    (
        [(header::ETAG, etag(secret.meta.version))],
        Json(SecretItem::from(secret)),
    )
        .into_response()
}
