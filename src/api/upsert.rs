//! The one PUT flow Secrets, GlobalSecrets and Meshes share: Kuma's upsert (201 `{}` when
//! created, 200 `{}` when updated, with the `ETag` of the new version) under the caller's
//! `If-Match` / `If-None-Match`, and Kuma's immutable labels on update.

use super::error::{ApiError, ApiResult};
use super::extract::{Preconditions, etag};
use crate::domain::{Labels, NewMesh, NewSecret, check_immutable_labels};
use crate::store::{SecretStore, StoreError};
use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

/// What a PUT writes, validated.
pub(super) enum Write {
    /// A Secret or GlobalSecret.
    Secret(NewSecret),
    /// A Mesh.
    Mesh(NewMesh),
}

impl Write {
    fn labels(&self) -> &Labels {
        match self {
            Write::Secret(secret) => &secret.labels,
            Write::Mesh(mesh) => &mesh.labels,
        }
    }

    /// The current version and labels, `None` if the resource does not exist.
    async fn current<S: SecretStore>(
        &self,
        store: &S,
    ) -> Result<Option<(i64, Labels)>, StoreError> {
        let found = match self {
            Write::Secret(secret) => store
                .get_secret(&secret.key)
                .await
                .map(|s| (s.meta.version, s.labels)),
            Write::Mesh(mesh) => store
                .get_mesh(&mesh.name)
                .await
                .map(|m| (m.meta.version, m.labels)),
        };
        match found {
            Ok(current) => Ok(Some(current)),
            Err(StoreError::NotFound(_)) => Ok(None),
            Err(other) => Err(other),
        }
    }

    async fn create<S: SecretStore>(self, store: &S) -> Result<i64, StoreError> {
        match self {
            Write::Secret(secret) => store.create_secret(secret).await.map(|s| s.meta.version),
            Write::Mesh(mesh) => store.create_mesh(mesh).await.map(|m| m.meta.version),
        }
    }

    async fn update<S: SecretStore>(self, store: &S, version: i64) -> Result<i64, StoreError> {
        match self {
            Write::Secret(secret) => {
                let update = crate::domain::SecretUpdate {
                    data: secret.data,
                    labels: secret.labels,
                };
                store
                    .update_secret(&secret.key, version, update)
                    .await
                    .map(|s| s.meta.version)
            }
            Write::Mesh(mesh) => {
                let update = crate::domain::MeshUpdate {
                    spec: mesh.spec,
                    labels: mesh.labels,
                };
                store
                    .update_mesh(&mesh.name, version, update)
                    .await
                    .map(|m| m.meta.version)
            }
        }
    }
}

/// Creates or updates `write` under `preconditions`. The update passes the version just
/// read, so a concurrent writer makes it fail instead of being overwritten.
///
/// # Errors
/// 412 for a failed precondition (also when a conditional write loses a race), 400 for a
/// changed immutable label, 409 when an unconditional update loses a race, and the store's
/// errors.
pub(super) async fn upsert<S: SecretStore>(
    store: &S,
    write: Write,
    preconditions: &Preconditions,
) -> ApiResult<Response> {
    let current = write
        .current(store)
        .await
        .map_err(|e| ApiError::store("Failed to find a resource", e))?;
    preconditions.check(current.as_ref().map(|(version, _)| *version))?;
    let conditional = preconditions.any();
    let (status, version) = match current {
        None => {
            let version = write.create(store).await.map_err(|e| match e {
                StoreError::AlreadyExists(_) if conditional => {
                    ApiError::precondition_failed("the resource was created meanwhile")
                }
                other => ApiError::store("Failed to create a resource", other),
            })?;
            (StatusCode::CREATED, version)
        }
        Some((version, labels)) => {
            check_immutable_labels(&labels, write.labels())
                .map_err(|e| ApiError::invalid("Could not update a resource", e))?;
            let version = write.update(store, version).await.map_err(|e| match e {
                StoreError::Conflict { .. } | StoreError::NotFound(_) if conditional => {
                    ApiError::precondition_failed("the resource changed meanwhile")
                }
                // Deleted between our read and our write: Kuma reports a conflict.
                StoreError::NotFound(key) => ApiError::new(
                    StatusCode::CONFLICT,
                    "Conflict",
                    format!("resource conflict: {key}"),
                ),
                other => ApiError::store("Failed to update a resource", other),
            })?;
            (StatusCode::OK, version)
        }
    };
    Ok((
        status,
        [(header::ETAG, etag(version))],
        Json(serde_json::json!({})),
    )
        .into_response())
}
