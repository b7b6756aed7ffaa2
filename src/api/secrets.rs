//! `Secret` routes: `/meshes/{mesh}/secrets[/{name}]` and `/secrets`, and the handling that
//! `GlobalSecret` routes (`global_secrets.rs`) share.
//!
//! Order of checks, as Kuma's (reference §3.4) so status codes match: the Mesh exists
//! (404), the request parses (400), the caller is an admin (403), the resource validates
//! (400), then the store call.

pub(super) mod doc;

use super::AppState;
use super::auth::User;
use super::error::{ApiError, ApiResult};
use super::extract::{Caller, JsonBody, Preconditions, etag, not_modified};
use super::list::{self, ListParams};
use super::openapi::Routes;
use super::upsert::{Write, upsert};
use crate::domain::mtls::Mtls;
use crate::domain::{
    ControlPlane, Labels, MeshName, NewSecret, ORIGIN_GLOBAL, ORIGIN_LABEL, Resource, ResourceName,
    Secret, SecretKey, SecretType, ValidationError, computed_labels,
};
use crate::store::{SecretQuery, SecretScope, SecretStore, StoreError};
use crate::wire::{self, SecretItem, SecretUsage, SecretUsageList};
use axum::Json;
use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;

/// Routes of mesh-scoped secrets.
pub fn router<S: SecretStore + Clone + 'static>() -> Routes<AppState<S>> {
    Routes::new()
        .add::<doc::__path_get_secret_list, _, _>(list_secrets::<S>)
        .add::<doc::__path_get_secret, _, _>(get_secret::<S>)
        .add::<doc::__path_put_secret, _, _>(put_secret::<S>)
        .add::<doc::__path_delete_secret, _, _>(delete_secret::<S>)
        .add::<doc::__path_get_secret_usage, _, _>(get_mesh_secret_usage::<S>)
        .add::<doc::__path_get_secret_list_in_all_meshes, _, _>(list_secrets::<S>)
}

/// The secret a route names: a Secret of a Mesh that exists
/// (`/meshes/{mesh}/secrets/{name}`) or a GlobalSecret (`/global-secrets/{name}`).
/// Resolving it checks the Mesh first, as Kuma does (404 "Failed to retrieve Mesh").
pub(super) struct SecretAt {
    /// The Mesh, `None` for a GlobalSecret.
    pub mesh: Option<MeshName>,
    /// The name as the URL spells it (not yet validated).
    pub name: String,
}

impl SecretAt {
    /// `Secret` or `GlobalSecret`.
    pub fn secret_type(&self) -> SecretType {
        if self.mesh.is_some() {
            SecretType::Secret
        } else {
            SecretType::GlobalSecret
        }
    }

    /// The key the URL names, for an admin (403 otherwise); 404 under `title` for a name
    /// that cannot exist.
    pub fn key_for_admin(&self, user: &User, title: &str) -> ApiResult<SecretKey> {
        user.require_admin(self.secret_type().as_str())?;
        self.key().ok_or_else(|| ApiError::not_found(title))
    }

    /// The key the URL names, for a reader of secrets (an admin, or a zone: 403 otherwise);
    /// 404 under `title` for a name that cannot exist, or that a zone is never sent.
    pub fn key_for_reader(&self, user: &User, title: &str) -> ApiResult<SecretKey> {
        let kind = self.secret_type();
        user.require_reader(kind.as_str())?;
        self.key()
            .filter(|key| user.is_shown(kind.as_str(), key.name().as_str()))
            .ok_or_else(|| ApiError::not_found(title))
    }

    /// The key the URL names, if the name could exist at all.
    pub fn key(&self) -> Option<SecretKey> {
        let name = ResourceName::parse(&self.name).ok()?;
        Some(match &self.mesh {
            Some(mesh) => SecretKey::secret(mesh.clone(), name),
            None => SecretKey::global(name),
        })
    }
}

impl SecretAt {
    /// The path's Mesh and name, the Mesh name parsed (404 "Failed to retrieve Mesh" if it
    /// cannot be one) but not looked up.
    async fn unchecked<S: Send + Sync>(parts: &mut Parts, state: &S) -> ApiResult<Self> {
        let Path(params) = Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
        let mesh = match params.get("mesh") {
            Some(mesh) => Some(MeshName::parse(mesh).map_err(|_| ApiError::mesh_not_found())?),
            None => None,
        };
        let name = params.get("name").cloned().unwrap_or_default();
        Ok(SecretAt { mesh, name })
    }
}

impl<S: SecretStore + Clone + 'static> FromRequestParts<AppState<S>> for SecretAt {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState<S>,
    ) -> Result<Self, Self::Rejection> {
        let at = SecretAt::unchecked(parts, state).await?;
        if let Some(mesh) = &at.mesh {
            mesh_must_exist(state, mesh).await?;
        }
        Ok(at)
    }
}

/// The secret an item GET, PUT or DELETE names, its Mesh not looked up up front: a request
/// that succeeds proves the Mesh exists (a secret's row references its Mesh), so only a
/// failing one looks the Mesh up, to answer as [`SecretAt`] does (the Mesh's 404 before
/// any other error). A GET served from the read cache then costs no database round trip,
/// and a PUT is its one statement.
pub(super) struct SecretItemAt(SecretAt);

impl<S: SecretStore + Clone + 'static> FromRequestParts<AppState<S>> for SecretItemAt {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState<S>,
    ) -> Result<Self, Self::Rejection> {
        Ok(SecretItemAt(SecretAt::unchecked(parts, state).await?))
    }
}

impl SecretItemAt {
    /// Runs `handler` on the secret; if it fails, the Mesh's 404 comes first.
    async fn handle<S, F, Fut>(self, state: &AppState<S>, handler: F) -> ApiResult<Response>
    where
        S: SecretStore,
        F: FnOnce(SecretAt) -> Fut,
        Fut: std::future::Future<Output = ApiResult<Response>>,
    {
        let mesh = self.0.mesh.clone();
        let answer = handler(self.0).await;
        if answer.is_err()
            && let Some(mesh) = &mesh
        {
            mesh_must_exist(state, mesh).await?;
        }
        answer
    }
}

/// The axum handler `$handler` for an item route: it extracts the [`Caller`], the
/// extractors listed, the [`SecretItemAt`] and then the body, if any (so a bad precondition
/// header is refused before the path, as it always was), and runs
/// `$inner(&state, &user, at, extractors…, body)` through [`SecretItemAt::handle`], so a
/// failure answers the Mesh's 404 first.
macro_rules! item_handler {
    ($handler:ident => $inner:ident($($arg:ident: $ty:ty),*) $(then $body:ident: $body_ty:ty)?) => {
        pub(super) async fn $handler<S: SecretStore + Clone + 'static>(
            Caller { state, user }: Caller<S>,
            $($arg: $ty,)*
            at: SecretItemAt,
            $($body: $body_ty)?
        ) -> ApiResult<Response> {
            at.handle(&state, |at| $inner(&state, &user, at, $($arg,)* $($body)?)).await
        }
    };
}

/// Which secrets a list route covers: one existing Mesh's (`/meshes/{mesh}/secrets`),
/// every Mesh's (`/secrets`), or the GlobalSecrets.
pub(super) struct ListScope(SecretScope);

impl<S: SecretStore + Clone + 'static> FromRequestParts<AppState<S>> for ListScope {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState<S>,
    ) -> Result<Self, Self::Rejection> {
        let at = SecretAt::from_request_parts(parts, state).await?;
        Ok(ListScope(match at.mesh {
            Some(mesh) => SecretScope::Mesh(mesh),
            None if parts.uri.path().starts_with("/secrets") => SecretScope::AllMeshes,
            None => SecretScope::Global,
        }))
    }
}

/// `GET /meshes/{mesh}/secrets/{name}/_usage` (admin only, a kuma-secrets extension): the
/// mTLS backends of the Mesh that use the secret, enabled or not, and the ExternalServices
/// whose TLS names it: the same lists the delete guard checks. 404 when the secret neither exists nor is referenced.
async fn get_mesh_secret_usage<S: SecretStore + Clone + 'static>(
    Caller { state, user }: Caller<S>,
    at: SecretAt,
) -> ApiResult<Response> {
    const TITLE: &str = "Could not retrieve a resource";
    let (Some(mesh_name), name) = (at.mesh, at.name) else {
        return Err(ApiError::mesh_not_found());
    };
    user.require_admin("Secret")?;
    let mesh = state
        .store
        .get_mesh(&mesh_name)
        .await
        .map_err(|e| ApiError::store("Failed to retrieve Mesh", e))?;
    // The table of references, which the delete guard reads; a Mesh's rows are shown by
    // backend, with its type and whether it is the enabled one.
    let referrers = match ResourceName::parse(&name) {
        Ok(parsed) => state
            .store
            .secret_referrers(&SecretKey::secret(mesh_name.clone(), parsed))
            .await
            .map_err(|e| ApiError::store(TITLE, e))?,
        Err(_) => Vec::new(),
    };
    let mtls = Mtls::of(&mesh.spec, &mesh_name).ok().flatten();
    let mut items: Vec<SecretUsage> = Vec::new();
    for referrer in referrers {
        let backend = crate::domain::mtls::backend_of_field(&referrer.field)
            .filter(|_| referrer.referrer_type == "Mesh");
        let item = match backend {
            Some(backend) => {
                if items.iter().any(|i| i.backend.as_deref() == Some(&backend)) {
                    continue;
                }
                let known = mtls.as_ref();
                SecretUsage {
                    referrer_type: referrer.referrer_type,
                    mesh: mesh_name.as_str().to_owned(),
                    backend_type: Some(
                        known
                            .and_then(|m| m.backends.iter().find(|b| b.name == backend))
                            .map_or("", |b| b.kind.as_str())
                            .to_owned(),
                    ),
                    enabled: Some(known.is_some_and(|m| m.enabled_backend == backend)),
                    backend: Some(backend),
                    name: None,
                    field: None,
                }
            }
            None => SecretUsage {
                referrer_type: referrer.referrer_type,
                mesh: mesh_name.as_str().to_owned(),
                backend: None,
                backend_type: None,
                enabled: None,
                name: Some(referrer.referrer),
                field: Some(referrer.field),
            },
        };
        items.push(item);
    }
    let stored = match ResourceName::parse(&name) {
        Ok(parsed) => match state
            .store
            .get_secret(&SecretKey::secret(mesh_name, parsed))
            .await
        {
            Ok(secret) => Some(secret),
            Err(StoreError::NotFound(_)) => None,
            Err(other) => return Err(ApiError::store(TITLE, other)),
        },
        Err(_) => None,
    };
    if items.is_empty() && stored.is_none() {
        return Err(ApiError::not_found(TITLE));
    }
    Ok(Json(SecretUsageList {
        total: items.len() as u64,
        items,
        not_after: stored.and_then(|s| wire::not_after_of(s.data.expose())),
    })
    .into_response())
}

/// 404 "Failed to retrieve Mesh" unless `mesh` exists.
pub(super) async fn mesh_must_exist<S: SecretStore>(
    state: &AppState<S>,
    mesh: &MeshName,
) -> ApiResult<()> {
    match state.store.get_mesh(mesh).await {
        Ok(_) => Ok(()),
        Err(StoreError::NotFound(_)) => Err(ApiError::mesh_not_found()),
        Err(other) => Err(ApiError::store("Failed to retrieve Mesh", other)),
    }
}

pub(super) async fn list_secrets<S: SecretStore + Clone + 'static>(
    Caller { state, user }: Caller<S>,
    params: ListParams,
    ListScope(scope): ListScope,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let resource_type = match scope {
        SecretScope::Global => SecretType::GlobalSecret,
        _ => SecretType::Secret,
    };
    user.require_reader(resource_type.as_str())?;
    let mut query = SecretQuery::new(scope).page(params.page.clone());
    query.name_contains = params.name.clone();
    query.labels = params.labels.clone();
    list::answer(
        &state,
        (&params, &uri, &headers),
        || async {
            let mut page = state.store.list_secrets(&query).await?;
            // A zone is not shown what Kuma never sends to zones, nor told how many.
            let before = page.items.len();
            page.items
                .retain(|s| user.is_shown(resource_type.as_str(), s.key.name().as_str()));
            page.total = page
                .total
                .saturating_sub((before - page.items.len()) as u64);
            Ok(page)
        },
        |secret| SecretItem::from(&secret),
    )
    .await
}

item_handler!(get_secret => get_secret_at(uri: Uri, headers: HeaderMap));

async fn get_secret_at<S: SecretStore>(
    state: &AppState<S>,
    user: &User,
    at: SecretAt,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult<Response> {
    const TITLE: &str = "Could not retrieve a resource";
    let ItemQuery { format, version } = ItemQuery::parse(uri.query())?;
    let key = at.key_for_reader(user, TITLE)?;
    let preconditions = Preconditions::from_headers(&headers)?;
    let secret = match version {
        None if bypasses_cache(&headers) => state.store.get_secret_fresh(&key).await,
        None => state.store.get_secret(&key).await,
        Some(version) => state.store.get_secret_version(&key, version).await,
    }
    .map_err(|e| ApiError::store(TITLE, e))?;
    if let Some(unchanged) = not_modified(&preconditions, secret.meta.version) {
        return Ok(unchanged);
    }
    let tag = etag(secret.meta.version);
    let body = match format {
        Format::Universal => (
            [(
                header::CONTENT_TYPE,
                axum::http::HeaderValue::from_static("application/json"),
            )],
            wire::secret_json(&secret),
        )
            .into_response(),
        Format::Kubernetes { namespace } => {
            Json(kubernetes_manifest(&secret, &namespace)).into_response()
        }
    };
    Ok(([(header::ETAG, tag)], body).into_response())
}

/// Whether a read asks to skip the read cache: `Cache-Control: no-cache` (or `no-store`,
/// `max-age=0`), as RFC 9111 §5.2.1 lets a client ask a cache to revalidate.
fn bypasses_cache(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|directive| directive.trim().to_ascii_lowercase())
        .any(|d| d == "no-cache" || d == "no-store" || d == "max-age=0")
}

/// The Kubernetes manifest Kuma returns for `?format=k8s` (reference §8): the only label it
/// carries is `kuma.io/mesh`.
fn kubernetes_manifest(secret: &Secret, namespace: &str) -> serde_json::Value {
    let resource = Resource::Secret(NewSecret {
        key: secret.key.clone(),
        data: secret.data.clone(),
        labels: Labels::default(),
    });
    wire::to_kubernetes(&resource, Some(&secret.meta.creation_time), namespace)
}

/// The query of an item GET: `?format=` and `?version=`.
struct ItemQuery {
    format: Format,
    /// A version kept in the secret's history, instead of the current one.
    version: Option<i64>,
}

/// `?format=` of an item GET.
enum Format {
    Universal,
    Kubernetes { namespace: String },
}

impl ItemQuery {
    fn parse(query: Option<&str>) -> ApiResult<Self> {
        const TITLE: &str = "Could not retrieve a resource";
        let pairs: Vec<(String, String)> = form_urlencoded::parse(query.unwrap_or("").as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let get = |key: &str| {
            pairs
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        let format = match get("format").unwrap_or("") {
            "" | "universal" => Format::Universal,
            "k8s" | "kubernetes" => Format::Kubernetes {
                namespace: get("namespace")
                    .filter(|n| !n.is_empty())
                    .unwrap_or("kuma-system")
                    .to_owned(),
            },
            _ => {
                return Err(ApiError::invalid(
                    TITLE,
                    ValidationError::single(
                        "format",
                        r#""format" must be one of ["k8s", "kubernetes", "universal"]"#,
                    ),
                ));
            }
        };
        let version = match get("version").map(str::parse::<i64>) {
            None => None,
            Some(Ok(version)) if version >= 1 => Some(version),
            Some(_) => {
                return Err(ApiError::invalid(
                    TITLE,
                    ValidationError::single(
                        "version",
                        r#""version" must be a whole number from 1"#,
                    ),
                ));
            }
        };
        Ok(ItemQuery { format, version })
    }
}

item_handler!(put_secret => put_secret_at(preconditions: Preconditions) then body: JsonBody);

async fn put_secret_at<S: SecretStore>(
    state: &AppState<S>,
    user: &User,
    at: SecretAt,
    preconditions: Preconditions,
    body: JsonBody,
) -> ApiResult<Response> {
    const TITLE: &str = "Could not process a resource";
    let kind = at.secret_type();
    let type_name = kind.as_str();
    let parsed = wire::parse_body(type_name, &body.bytes()?).map_err(ApiError::bad_request)?;
    user.require_admin(type_name)?;

    // Every violation at once, in Kuma's order: where the body disagrees with the URL,
    // then the body's own fields.
    let mut errors = ValidationError::default();
    if parsed.name != at.name {
        errors.push("name", "name from the URL has to be the same as in body");
    }
    if parsed.kind != type_name {
        errors.push("type", "type from the URL has to be the same as in body");
    }
    if let Some(mesh) = &at.mesh
        && parsed.mesh != mesh.as_str()
    {
        errors.push("mesh", "mesh from the URL has to be the same as in body");
    }
    let cp = &state.config.control_plane;
    if let ControlPlane::Zone {
        name: zone,
        federated: true,
    } = cp
        && zone.len() + 1 + at.name.len() >= crate::domain::MAX_NAME_LEN
    {
        // The name must still fit once the global store prefixes it with the zone's.
        errors.push("name", "the length of the name must be shorter");
    }
    let secret = errors
        .collect(parsed.into_new_secret(kind, |given, mesh| computed_labels(given, mesh, cp)));
    let Some(secret) = secret.filter(|_| errors.is_empty()) else {
        return Err(ApiError::invalid(TITLE, errors));
    };
    if cp.is_federated_zone()
        && (secret.labels.get(ORIGIN_LABEL) == Some(ORIGIN_GLOBAL)
            || synced_from_global(&state.store, &secret.key).await?)
    {
        return Err(ApiError::zone_read_only());
    }
    if secret
        .data
        .check_size(state.config.max_secret_size)
        .is_err()
    {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            TITLE,
            format!(
                "data is {} bytes once decoded; the limit is {} bytes (--max-secret-size)",
                secret.data.len(),
                state.config.max_secret_size
            ),
        ));
    }
    upsert(
        &state.store,
        Write::Secret(secret),
        &preconditions,
        Vec::new(),
    )
    .await
}

item_handler!(delete_secret => delete_secret_at(preconditions: Preconditions, uri: Uri));

async fn delete_secret_at<S: SecretStore>(
    state: &AppState<S>,
    user: &User,
    at: SecretAt,
    preconditions: Preconditions,
    uri: Uri,
) -> ApiResult<Response> {
    const TITLE: &str = "Could not delete a resource";
    let key = at.key_for_admin(user, TITLE)?;
    if state.config.control_plane.is_federated_zone()
        && synced_from_global(&state.store, &key).await?
    {
        return Err(ApiError::zone_read_only());
    }
    // With If-Match, delete only the version the caller saw: the store checks it in the
    // DELETE itself, so a write in between makes the delete fail, not vanish. The row is
    // never opened, so a secret whose sealed value is unreadable can still be deleted.
    let expected = expected_version(state, &key, &preconditions, TITLE).await?;
    let deleted = if purge_requested(uri.query())? {
        state.store.purge_secret(&key, expected).await
    } else {
        state.store.delete_secret(&key, expected).await
    };
    deleted.map_err(|e| precondition_or_store_error(e, &preconditions, TITLE))?;
    Ok(Json(serde_json::json!({})).into_response())
}

/// Whether the secret `key` is one a federated zone holds from the global store (origin
/// `global`): the zone does not write it.
async fn synced_from_global<S: SecretStore>(store: &S, key: &SecretKey) -> ApiResult<bool> {
    match store.get_secret(key).await {
        Ok(secret) => Ok(secret.labels.get(ORIGIN_LABEL) == Some(ORIGIN_GLOBAL)),
        Err(StoreError::NotFound(_)) => Ok(false),
        Err(other) => Err(ApiError::store("Could not process a resource", other)),
    }
}

/// `?purge=true` of a DELETE: destroy the secret's history with it.
fn purge_requested(query: Option<&str>) -> ApiResult<bool> {
    let purge = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(k, _)| k == "purge")
        .map(|(_, v)| v.into_owned());
    match purge.as_deref() {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(_) => Err(ApiError::invalid(
            "Could not delete a resource",
            ValidationError::single("purge", r#""purge" must be true or false"#),
        )),
    }
}

/// The version a conditional write of `key` expects (`If-Match`), checked by the store in
/// the write itself; several ETags are checked here against the current version.
pub(super) async fn expected_version<S: SecretStore>(
    state: &AppState<S>,
    key: &SecretKey,
    preconditions: &Preconditions,
    title: &str,
) -> ApiResult<Option<i64>> {
    preconditions
        .expected_version(async {
            state
                .store
                .secret_version(key)
                .await
                .map_err(|e| ApiError::store(title, e))
        })
        .await
}

/// A store error of a conditional write: a failed `If-Match` is 412, the rest as usual.
pub(super) fn precondition_or_store_error(
    err: StoreError,
    preconditions: &Preconditions,
    title: &str,
) -> ApiError {
    match err {
        StoreError::Conflict { actual, .. } => ApiError::precondition_failed(format!(
            "If-Match failed: the resource is at version \"{actual}\""
        )),
        StoreError::NotFound(_) if preconditions.if_match.is_some() => {
            ApiError::precondition_failed("If-Match failed: the resource does not exist")
        }
        other => ApiError::store(title, other),
    }
}
