//! Certificates in secrets, decoded (admin only, kuma-secrets extensions): what the GUI's
//! certificate and Mesh pages show, and each Mesh's earliest CA expiry for `/metrics`.
//!
//! - `GET /meshes/{mesh}/secrets/{name}/_certificates`, `GET /global-secrets/{name}/_certificates`:
//!   every PEM certificate in the value (subject, issuer, SANs, validity, CA or not); an
//!   empty list for a value that holds none. Never the value itself.
//! - `GET /meshes/{mesh}/_certificates`: each mTLS backend of the Mesh, the secret holding
//!   its CA certificate, and when that expires; and the earliest of them.

pub(super) mod doc;

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::Caller;
use super::openapi::Routes;
use super::secrets::SecretAt;
use crate::certificates::{CertificateInfo, certificates_in};
use crate::domain::mtls::{Mtls, backend_field};
use crate::domain::{Mesh, MeshName, ResourceName, SecretKey};
use crate::store::{MeshWalk, SecretStore, StoreError};
use axum::Json;
use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Serialize;

/// The certificate routes.
pub fn router<S: SecretStore + Clone + 'static>() -> Routes<AppState<S>> {
    Routes::new()
        .add::<doc::__path_get_secret_certificates, _, _>(get_certificates::<S>)
        .add::<doc::__path_get_global_secret_certificates, _, _>(get_certificates::<S>)
        .add::<doc::__path_get_mesh_certificates, _, _>(get_mesh_certificates::<S>)
}

#[derive(Serialize)]
struct CertificateList {
    total: usize,
    items: Vec<CertificateInfo>,
}

async fn get_certificates<S: SecretStore + Clone + 'static>(
    Caller { state, user }: Caller<S>,
    at: SecretAt,
) -> ApiResult<Response> {
    const TITLE: &str = "Could not retrieve a resource";
    let key = at.key_for_admin(&user, TITLE)?;
    let secret = state
        .store
        .get_secret(&key)
        .await
        .map_err(|e| ApiError::store(TITLE, e))?;
    let items = certificates_in(secret.data.expose());
    Ok(Json(CertificateList {
        total: items.len(),
        items,
    })
    .into_response())
}

/// One mTLS backend's CA certificate, as `GET /meshes/{mesh}/_certificates` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendCertificate {
    /// The backend.
    pub backend: String,
    /// `builtin` or `provided`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Whether it is the Mesh's enabled backend.
    pub enabled: bool,
    /// The Secret holding its CA certificate (an inline certificate has none).
    pub secret: Option<String>,
    /// When its earliest certificate expires; `None` if the secret is missing or holds no
    /// certificate.
    pub not_after: Option<DateTime<Utc>>,
    /// Its certificates.
    pub certificates: Vec<CertificateInfo>,
}

/// The CA certificate of every mTLS backend of `mesh`, in the Mesh's order.
///
/// # Errors
/// Store failures (a missing secret is no failure: it has no certificate).
pub async fn mesh_ca_certificates<S: SecretStore>(
    store: &S,
    mesh: &Mesh,
) -> Result<Vec<BackendCertificate>, StoreError> {
    let Some(mtls) = Mtls::of(&mesh.spec, &mesh.name).ok().flatten() else {
        return Ok(Vec::new());
    };
    // Where each backend's CA certificate is: the domain's list of the secrets backends use
    // (a builtin backend's generated cert, a provided one's `cert` secret).
    let uses = mtls.used_secrets(&mesh.name);
    let mut backends = Vec::new();
    for backend in &mtls.backends {
        let cert_field = backend_field(&backend.name, "cert");
        let secret = uses
            .iter()
            .find(|u| u.field == cert_field)
            .map(|u| u.secret.clone());
        let certificates = match secret.as_deref().map(ResourceName::parse) {
            Some(Ok(name)) => {
                match store
                    .get_secret(&SecretKey::secret(mesh.name.clone(), name))
                    .await
                {
                    Ok(found) => certificates_in(found.data.expose()),
                    Err(StoreError::NotFound(_)) => Vec::new(),
                    Err(other) => return Err(other),
                }
            }
            _ => Vec::new(),
        };
        backends.push(BackendCertificate {
            backend: backend.name.clone(),
            kind: backend.kind.clone(),
            enabled: mtls.enabled_backend == backend.name,
            secret,
            not_after: certificates.iter().map(|c| c.not_after).min(),
            certificates,
        });
    }
    Ok(backends)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MeshCertificates {
    mesh: String,
    earliest_not_after: Option<DateTime<Utc>>,
    items: Vec<BackendCertificate>,
}

async fn get_mesh_certificates<S: SecretStore + Clone + 'static>(
    Caller { state, user }: Caller<S>,
    Path(mesh): Path<String>,
) -> ApiResult<Response> {
    user.require_admin("Mesh")?;
    let name = MeshName::parse(&mesh).map_err(|_| ApiError::mesh_not_found())?;
    let mesh = state
        .store
        .get_mesh(&name)
        .await
        .map_err(|e| ApiError::store("Failed to retrieve Mesh", e))?;
    let items = mesh_ca_certificates(&state.store, &mesh)
        .await
        .map_err(|e| ApiError::store("Could not retrieve a resource", e))?;
    Ok(Json(MeshCertificates {
        mesh: name.as_str().to_owned(),
        earliest_not_after: items.iter().filter_map(|b| b.not_after).min(),
        items,
    })
    .into_response())
}

/// Each Mesh with a CA certificate, and when its earliest expires: the metric
/// `mesh_ca_expiry_timestamp_seconds`. Reads every Mesh and its backends' CA secrets.
///
/// # Errors
/// Store failures.
pub async fn earliest_ca_expiry_by_mesh<S: SecretStore>(
    store: &S,
) -> Result<Vec<(String, DateTime<Utc>)>, StoreError> {
    let meshes = MeshWalk::new(500)?.collect(store, |mesh| mesh).await?;
    let mut found = Vec::new();
    for mesh in meshes {
        let earliest = mesh_ca_certificates(store, &mesh)
            .await?
            .iter()
            .filter_map(|b| b.not_after)
            .min();
        if let Some(earliest) = earliest {
            found.push((mesh.name.as_str().to_owned(), earliest));
        }
    }
    Ok(found)
}
