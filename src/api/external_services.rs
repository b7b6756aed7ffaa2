//! `ExternalService` routes: `/meshes/{mesh}/external-services[/{name}]` and
//! `/external-services` (every Mesh's), as Kuma v2.14 serves them. A body is
//! `{"type":"ExternalService","mesh":…,"name":…,"networking":…,"tags":…}`; the store checks
//! it with Kuma's validator and, beyond Kuma, that every Secret its TLS names exists in the
//! Mesh, that its PEM parses and that its client key matches its certificate.
//!
//! Reads are open to every caller, as in Kuma, except an inline client key, which only an
//! admin sees; writes need an admin, as Mesh writes do here.

pub(super) mod doc;

use super::AppState;
use super::auth::User;
use super::error::{ApiError, ApiResult};
use super::extract::{Caller, JsonBody, Preconditions, etag, not_modified};
use super::list::{self, ListParams};
use super::openapi::Routes;
use super::secrets::mesh_must_exist;
use super::upsert::{Write, upsert};
use crate::domain::external_service::redact_private_key;
use crate::domain::{
    EXTERNAL_SERVICE, ExternalService, MeshName, Resource, ResourceName, ValidationError,
    computed_labels, external_service_key,
};
use crate::manifest::external_service_resource_of;
use crate::store::{ExternalServiceQuery, SecretStore, StoreError};
use crate::wire::{self, ExternalServiceItem};
use axum::Json;
use axum::extract::{Path, RawQuery};
use axum::http::{HeaderMap, Uri, header};
use axum::response::{IntoResponse, Response};

/// Routes of ExternalServices.
pub fn router<S: SecretStore + Clone + 'static>() -> Routes<AppState<S>> {
    Routes::new()
        .add::<doc::__path_get_external_service_list, _, _>(list_in_mesh::<S>)
        .add::<doc::__path_get_external_service, _, _>(get_external_service::<S>)
        .add::<doc::__path_put_external_service, _, _>(put_external_service::<S>)
        .add::<doc::__path_delete_external_service, _, _>(delete_external_service::<S>)
        .add::<doc::__path_get_external_service_list_in_all_meshes, _, _>(list_in_all_meshes::<S>)
}

/// What a caller sees of an ExternalService: an inline client key only if an admin.
fn shown_to(user: &User, mut service: ExternalService) -> ExternalServiceItem {
    if !user.is_admin() {
        redact_private_key(&mut service.spec);
    }
    ExternalServiceItem::from(&service)
}

/// The Mesh of a path, 404 "Failed to retrieve Mesh" unless it exists.
async fn existing_mesh<S: SecretStore>(state: &AppState<S>, mesh: &str) -> ApiResult<MeshName> {
    let mesh = MeshName::parse(mesh).map_err(|_| ApiError::mesh_not_found())?;
    mesh_must_exist(state, &mesh).await?;
    Ok(mesh)
}

async fn list_in_mesh<S: SecretStore + Clone + 'static>(
    caller: Caller<S>,
    Path(mesh): Path<String>,
    params: ListParams,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let mesh = existing_mesh(&caller.state, &mesh).await?;
    list_external_services(caller, Some(mesh), params, uri, headers).await
}

async fn list_in_all_meshes<S: SecretStore + Clone + 'static>(
    caller: Caller<S>,
    params: ListParams,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult<Response> {
    list_external_services(caller, None, params, uri, headers).await
}

async fn list_external_services<S: SecretStore + Clone + 'static>(
    Caller { state, user }: Caller<S>,
    mesh: Option<MeshName>,
    params: ListParams,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let query = ExternalServiceQuery {
        mesh,
        name_contains: params.name.clone(),
        labels: params.labels.clone(),
        page: params.page.clone(),
    };
    let mut response = list::answer(
        &state,
        (&params, &uri, &headers),
        || state.store.list_external_services(&query),
        |service| shown_to(&user, service),
    )
    .await?;
    // As for Meshes: the store-wide revision is for admins, who may read the feed.
    if !user.is_admin() {
        response.headers_mut().remove(list::REVISION_HEADER);
    }
    Ok(response)
}

/// `?format=` of an item GET: `universal` (default) or `k8s`/`kubernetes`.
fn kubernetes_requested(query: Option<&str>) -> ApiResult<bool> {
    let format = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(k, _)| k == "format")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    match format.as_str() {
        "" | "universal" => Ok(false),
        "k8s" | "kubernetes" => Ok(true),
        _ => Err(ApiError::invalid(
            "Could not retrieve a resource",
            ValidationError::single(
                "format",
                r#""format" must be one of ["k8s", "kubernetes", "universal"]"#,
            ),
        )),
    }
}

async fn get_external_service<S: SecretStore + Clone + 'static>(
    Caller { state, user }: Caller<S>,
    Path((mesh, name)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    preconditions: Preconditions,
) -> ApiResult<Response> {
    const TITLE: &str = "Could not retrieve a resource";
    let kubernetes = kubernetes_requested(query.as_deref())?;
    let mesh = existing_mesh(&state, &mesh).await?;
    let name = ResourceName::parse(&name).map_err(|_| ApiError::not_found(TITLE))?;
    let mut service = state
        .store
        .get_external_service(&mesh, &name)
        .await
        .map_err(|e| ApiError::store(TITLE, e))?;
    if let Some(unchanged) = not_modified(&preconditions, service.meta.version) {
        return Ok(unchanged);
    }
    let tag = etag(service.meta.version);
    let body = if kubernetes {
        if !user.is_admin() {
            redact_private_key(&mut service.spec);
        }
        let created = service.meta.creation_time;
        let resource: Resource = external_service_resource_of(&service);
        Json(wire::to_kubernetes(&resource, Some(&created), "")).into_response()
    } else {
        Json(shown_to(&user, service)).into_response()
    };
    Ok(([(header::ETAG, tag)], body).into_response())
}

async fn put_external_service<S: SecretStore + Clone + 'static>(
    Caller { state, user }: Caller<S>,
    Path((mesh, name)): Path<(String, String)>,
    preconditions: Preconditions,
    body: JsonBody,
) -> ApiResult<Response> {
    const TITLE: &str = "Could not process a resource";
    let mesh = existing_mesh(&state, &mesh).await?;
    let parsed =
        wire::parse_body(EXTERNAL_SERVICE, &body.bytes()?).map_err(ApiError::bad_request)?;
    user.require_admin(EXTERNAL_SERVICE)?;
    let mut errors = ValidationError::default();
    if parsed.name != name {
        errors.push("name", "name from the URL has to be the same as in body");
    }
    if parsed.kind != EXTERNAL_SERVICE {
        errors.push("type", "type from the URL has to be the same as in body");
    }
    if parsed.mesh != mesh.as_str() {
        errors.push("mesh", "mesh from the URL has to be the same as in body");
    }
    let cp = &state.config.control_plane;
    let service = errors
        .collect(parsed.into_new_external_service(|given, mesh| computed_labels(given, mesh, cp)));
    let Some(service) = service.filter(|_| errors.is_empty()) else {
        return Err(ApiError::invalid(TITLE, errors));
    };
    upsert(
        &state.store,
        Write::ExternalService(service),
        &preconditions,
        Vec::new(),
    )
    .await
}

async fn delete_external_service<S: SecretStore + Clone + 'static>(
    Caller { state, user }: Caller<S>,
    Path((mesh, name)): Path<(String, String)>,
    preconditions: Preconditions,
) -> ApiResult<Response> {
    const TITLE: &str = "Could not delete a resource";
    let mesh = existing_mesh(&state, &mesh).await?;
    user.require_admin(EXTERNAL_SERVICE)?;
    let name = ResourceName::parse(&name).map_err(|_| ApiError::not_found(TITLE))?;
    let expected = if preconditions.if_match.is_some() {
        let current = state
            .store
            .get_external_service(&mesh, &name)
            .await
            .map_err(|e| ApiError::store(TITLE, e))?;
        preconditions.check(Some(current.meta.version))?;
        Some(current.meta.version)
    } else {
        None
    };
    state
        .store
        .delete_external_service(&mesh, &name, expected)
        .await
        .map_err(|e| match e {
            StoreError::Conflict { .. } => {
                ApiError::precondition_failed("the resource changed meanwhile")
            }
            StoreError::NotFound(_) => ApiError::store(
                TITLE,
                StoreError::NotFound(external_service_key(&mesh, &name)),
            ),
            other => ApiError::store(TITLE, other),
        })?;
    Ok(Json(serde_json::json!({})).into_response())
}
