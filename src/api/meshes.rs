//! `Mesh` routes: `/meshes` and `/meshes/{name}`. A Mesh body is `{"type":"Mesh","name":…}`
//! plus its spec fields, kept as given; the `mtls` section is validated (`domain::mtls`).
//!
//! Kuma lets any caller write Meshes; here writes need an admin, because deleting a Mesh
//! deletes its secrets. Reads stay open, as in Kuma, except inline CA private keys, which
//! only an admin sees.

pub(super) mod doc;

use super::AppState;
use super::auth::User;
use super::error::{ApiError, ApiResult};
use super::extract::{Caller, JsonBody, Preconditions, etag, not_modified};
use super::list::{self, ListParams};
use super::openapi::Routes;
use super::upsert::{Write, upsert};
use crate::domain::mtls::redact_private_keys;
use crate::domain::{MESH_NAME_TOO_LONG, Mesh, MeshName, ValidationError, computed_labels};
use crate::store::{MeshQuery, SecretStore, StoreError};
use crate::wire::{self, MeshItem};
use axum::Json;
use axum::extract::Path;
use axum::http::{HeaderMap, Uri, header};
use axum::response::{IntoResponse, Response};

/// Routes of meshes.
pub fn router<S: SecretStore + Clone + 'static>() -> Routes<AppState<S>> {
    Routes::new()
        .add::<doc::__path_get_mesh_list, _, _>(list_meshes::<S>)
        .add::<doc::__path_get_mesh, _, _>(get_mesh::<S>)
        .add::<doc::__path_put_mesh, _, _>(put_mesh::<S>)
        .add::<doc::__path_delete_mesh, _, _>(delete_mesh::<S>)
}

async fn list_meshes<S: SecretStore + Clone + 'static>(
    Caller { state, user }: Caller<S>,
    params: ListParams,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let query = MeshQuery {
        name_contains: params.name.clone(),
        labels: params.labels.clone(),
        page: params.page.clone(),
    };
    let mut response = list::answer(
        &state,
        (&params, &uri, &headers),
        || state.store.list_meshes(&query),
        |mut mesh| {
            shown_to(&user, &mut mesh);
            MeshItem::from(&mesh)
        },
    )
    .await?;
    // The revision moves on every secret write: anyone could watch when secrets change.
    // It is for admins, who may read the feed it leads to.
    if !user.reads_for_zones() {
        response.headers_mut().remove(list::REVISION_HEADER);
    }
    Ok(response)
}

/// A Mesh name that is not a DNS-1035 label (`aa.a`, `1mesh`, `a_b`) is accepted, as Kuma
/// does, with a warning that such names are deprecated.
fn dns_1035_warning(name: &str) -> Option<String> {
    // Kubernetes' `IsDNS1035Label`, whose messages Kuma joins with "; ".
    let bytes = name.as_bytes();
    let mut errors = Vec::new();
    if bytes.len() > 63 {
        errors.push("must be no more than 63 characters");
    }
    let label = bytes.first().is_some_and(u8::is_ascii_lowercase)
        && bytes
            .last()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
    if !label {
        errors.push(DNS_1035_LABEL_ERROR);
    }
    (!errors.is_empty()).then(|| {
        format!(
            "Invalid name: '{name}'. It does not conform to the DNS format (RFC 1035). This is deprecated. Errors: {}",
            errors.join("; ")
        )
    })
}

/// Kubernetes' message for a name that is not a DNS-1035 label, word for word (its two
/// spaces after `'my-name',` included: `RegexError` writes them).
const DNS_1035_LABEL_ERROR: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

/// Meshes are readable by anyone, as in Kuma; inline CA private keys only by admins and
/// zones (which need them to issue the same certificates).
fn shown_to(user: &User, mesh: &mut Mesh) {
    if !user.reads_for_zones() {
        redact_private_keys(&mut mesh.spec);
    }
}

async fn get_mesh<S: SecretStore + Clone + 'static>(
    Caller { state, user }: Caller<S>,
    Path(name): Path<String>,
    preconditions: Preconditions,
) -> ApiResult<Response> {
    const TITLE: &str = "Could not retrieve a resource";
    let name = MeshName::parse(&name).map_err(|_| ApiError::not_found(TITLE))?;
    let mut mesh = state
        .store
        .get_mesh(&name)
        .await
        .map_err(|e| ApiError::store(TITLE, e))?;
    if let Some(unchanged) = not_modified(&preconditions, mesh.meta.version) {
        return Ok(unchanged);
    }
    shown_to(&user, &mut mesh);
    Ok((
        [(header::ETAG, etag(mesh.meta.version))],
        Json(MeshItem::from(&mesh)),
    )
        .into_response())
}

async fn put_mesh<S: SecretStore + Clone + 'static>(
    Caller { state, user }: Caller<S>,
    Path(url_name): Path<String>,
    preconditions: Preconditions,
    body: JsonBody,
) -> ApiResult<Response> {
    const TITLE: &str = "Could not process a resource";
    let parsed = wire::parse_body("Mesh", &body.bytes()?).map_err(ApiError::bad_request)?;
    user.require_admin("Mesh")?;

    let mut errors = ValidationError::default();
    if parsed.name != url_name {
        errors.push("name", "name from the URL has to be the same as in body");
    }
    if parsed.kind != "Mesh" {
        errors.push("type", "type from the URL has to be the same as in body");
    }
    if state.config.control_plane.is_federated_zone() {
        // Meshes are the global store's: a zone holds them as synced.
        return Err(ApiError::zone_read_only());
    }
    let cp = &state.config.control_plane;
    let mesh = errors.collect(parsed.into_new_mesh(MeshName::parse_new, |given| {
        computed_labels(given, None, cp)
    }));
    let Some(mesh) = mesh.filter(|_| errors.is_empty()) else {
        // Kuma caps Mesh names at 63 when it creates one, after the other checks.
        let title = if errors
            .violations
            .iter()
            .all(|v| v.reason == MESH_NAME_TOO_LONG)
        {
            "Failed to create a resource"
        } else {
            TITLE
        };
        return Err(ApiError::invalid(title, errors));
    };
    let warnings = dns_1035_warning(mesh.name.as_str()).into_iter().collect();
    upsert(&state.store, Write::Mesh(mesh), &preconditions, warnings).await
}

async fn delete_mesh<S: SecretStore + Clone + 'static>(
    Caller { state, user }: Caller<S>,
    Path(name): Path<String>,
    preconditions: Preconditions,
) -> ApiResult<Response> {
    const TITLE: &str = "Could not delete a resource";
    user.require_admin("Mesh")?;
    if state.config.control_plane.is_federated_zone() {
        return Err(ApiError::zone_read_only());
    }
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
