//! `Mesh` routes: `/meshes` and `/meshes/{name}`. A Mesh body is `{"type":"Mesh","name":…}`
//! plus its spec fields, kept as given; the `mtls` section is validated (`domain::mtls`).
//!
//! Kuma lets any caller write Meshes; here writes need an admin, because deleting a Mesh
//! deletes its secrets. Reads stay open, as in Kuma, except inline CA private keys, which
//! only an admin sees.

use super::AppState;
use super::auth::User;
use super::error::{ApiError, ApiResult};
use super::list;
use super::request::{Preconditions, check_immutable_labels, computed_labels, etag, json_body};
use super::wire::{self, ListBody, MeshItem};
use crate::domain::mtls::redact_private_keys;
use crate::domain::{Mesh, MeshName, MeshUpdate, NewMesh, ValidationError};
use crate::store::{MeshQuery, SecretStore, StoreError};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};

/// Routes of meshes.
pub fn router<S: SecretStore + Clone + 'static>() -> Router<AppState<S>> {
    Router::new().route("/meshes", get(list_meshes::<S>)).route(
        "/meshes/{name}",
        get(get_mesh::<S>)
            .put(put_mesh::<S>)
            .delete(delete_mesh::<S>),
    )
}

async fn list_meshes<S: SecretStore + Clone + 'static>(
    State(state): State<AppState<S>>,
    Extension(user): Extension<User>,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let params = list::parse(uri.query())?;
    let query = MeshQuery {
        name_contains: params.name.clone(),
        labels: params.labels.clone(),
        page: params.page.clone(),
    };
    let mut page = state
        .store
        .list_meshes(&query)
        .await
        .map_err(|e| ApiError::store("Could not retrieve resources", e))?;
    for mesh in &mut page.items {
        shown_to(&user, mesh);
    }
    let next = list::next_link(
        &uri,
        &headers,
        state.config.scheme(),
        &params,
        page.next.as_ref(),
    );
    Ok(Json(ListBody {
        total: page.total,
        items: page.items.iter().map(MeshItem::from).collect(),
        next,
    })
    .into_response())
}

/// Meshes are readable by anyone, as in Kuma; inline CA private keys only by admins.
fn shown_to(user: &User, mesh: &mut Mesh) {
    if !user.is_admin() {
        redact_private_keys(&mut mesh.spec);
    }
}

async fn get_mesh<S: SecretStore + Clone + 'static>(
    State(state): State<AppState<S>>,
    Extension(user): Extension<User>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    const TITLE: &str = "Could not retrieve a resource";
    let name = MeshName::parse(&name).map_err(|_| ApiError::not_found(TITLE))?;
    let mut mesh = state
        .store
        .get_mesh(&name)
        .await
        .map_err(|e| ApiError::store(TITLE, e))?;
    shown_to(&user, &mut mesh);
    Ok((
        [(header::ETAG, etag(mesh.meta.version))],
        Json(MeshItem::from(&mesh)),
    )
        .into_response())
}

async fn put_mesh<S: SecretStore + Clone + 'static>(
    State(state): State<AppState<S>>,
    Extension(user): Extension<User>,
    Path(url_name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    const TITLE: &str = "Could not process a resource";
    let body = json_body(&headers, body)?;
    let preconditions = Preconditions::from_headers(&headers)?;
    let parsed = wire::parse_body("Mesh", &body).map_err(ApiError::bad_request)?;
    user.require_admin("Mesh")?;

    let mut errors = ValidationError::default();
    let name = errors.collect(MeshName::parse_new(&url_name));
    if parsed.name != url_name {
        errors.push("name", "name from the URL has to be the same as in body");
    }
    if parsed.kind != "Mesh" {
        errors.push("type", "type from the URL has to be the same as in body");
    }
    let labels = errors.collect(computed_labels(parsed.labels, None, &state.config.zone));
    let (Some(name), Some(labels)) = (name, labels) else {
        return Err(ApiError::invalid(TITLE, errors));
    };
    if !errors.is_empty() {
        return Err(ApiError::invalid(TITLE, errors));
    }
    let spec = parsed.rest;

    let current = match state.store.get_mesh(&name).await {
        Ok(mesh) => Some(mesh),
        Err(StoreError::NotFound(_)) => None,
        Err(other) => return Err(ApiError::store("Failed to find a resource", other)),
    };
    preconditions.check(current.as_ref().map(|m| m.meta.version))?;
    let conditional = preconditions.if_match.is_some() || preconditions.if_none_match.is_some();
    let (status, version) = match current {
        None => {
            let created = state
                .store
                .create_mesh(NewMesh { name, spec, labels })
                .await
                .map_err(|e| match e {
                    StoreError::AlreadyExists(_) if conditional => {
                        ApiError::precondition_failed("the resource was created meanwhile")
                    }
                    other => ApiError::store("Failed to create a resource", other),
                })?;
            (StatusCode::CREATED, created.meta.version)
        }
        Some(current) => {
            check_immutable_labels(&current.labels, &labels)
                .map_err(|e| ApiError::invalid("Could not update a resource", e))?;
            let updated = state
                .store
                .update_mesh(&name, current.meta.version, MeshUpdate { spec, labels })
                .await
                .map_err(|e| match e {
                    StoreError::Conflict { .. } | StoreError::NotFound(_) if conditional => {
                        ApiError::precondition_failed("the resource changed meanwhile")
                    }
                    StoreError::NotFound(key) => ApiError::new(
                        StatusCode::CONFLICT,
                        "Conflict",
                        format!("resource conflict: {key}"),
                    ),
                    other => ApiError::store("Failed to update a resource", other),
                })?;
            (StatusCode::OK, updated.meta.version)
        }
    };
    Ok((
        status,
        [(header::ETAG, etag(version))],
        Json(serde_json::json!({})),
    )
        .into_response())
}

async fn delete_mesh<S: SecretStore + Clone + 'static>(
    State(state): State<AppState<S>>,
    Extension(user): Extension<User>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    const TITLE: &str = "Could not delete a resource";
    let preconditions = Preconditions::from_headers(&headers)?;
    user.require_admin("Mesh")?;
    let name = MeshName::parse(&name).map_err(|_| ApiError::not_found(TITLE))?;
    let expected = if preconditions.if_match.is_some() {
        let current = state
            .store
            .get_mesh(&name)
            .await
            .map_err(|e| ApiError::store(TITLE, e))?;
        preconditions.check(Some(current.meta.version))?;
        Some(current.meta.version)
    } else {
        None
    };
    state
        .store
        .delete_mesh(&name, expected)
        .await
        .map_err(|e| match e {
            StoreError::Conflict { .. } => {
                ApiError::precondition_failed("the resource changed meanwhile")
            }
            other => ApiError::store(TITLE, other),
        })?;
    Ok(Json(serde_json::json!({})).into_response())
}
