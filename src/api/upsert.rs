//! The one PUT flow Secrets, GlobalSecrets, Meshes and ExternalServices share: Kuma's upsert (201 `{}` when
//! created, 200 `{}` when updated, with the `ETag` of the new version), under the caller's
//! `If-Match` / `If-None-Match`.
//!
//! The precondition goes to the store with the write ([`Expect`]), which checks it in the
//! same statement (a Secret) or transaction (a Mesh): a PUT without preconditions is last
//! writer wins and never answers 409, `If-Match: "3"` is compare-and-swap, and
//! `If-None-Match: *` creates only. Kuma's immutable labels are checked there too.

use super::error::{ApiError, ApiResult};
use super::extract::{Condition, Preconditions, etag};
use crate::domain::{NewExternalService, NewMesh, NewSecret, ResourceKey};
use crate::store::{Expect, SecretStore, StoreError};
use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

/// What a PUT writes, validated.
pub(super) enum Write {
    /// A Secret or GlobalSecret.
    Secret(NewSecret),
    /// A Mesh.
    Mesh(NewMesh),
    /// An ExternalService.
    ExternalService(NewExternalService),
}

impl Write {
    fn key(&self) -> ResourceKey {
        match self {
            Write::Secret(secret) => secret.key.resource_key(),
            Write::Mesh(mesh) => ResourceKey::mesh(&mesh.name),
            Write::ExternalService(service) => service.key(),
        }
    }

    /// The current version, `None` if the resource does not exist (never opening data).
    async fn current_version<S: SecretStore>(&self, store: &S) -> Result<Option<i64>, StoreError> {
        match self {
            Write::Secret(secret) => store.secret_version(&secret.key).await,
            Write::Mesh(mesh) => match store.get_mesh(&mesh.name).await {
                Ok(mesh) => Ok(Some(mesh.meta.version)),
                Err(StoreError::NotFound(_)) => Ok(None),
                Err(other) => Err(other),
            },
            Write::ExternalService(service) => {
                match store
                    .get_external_service(&service.mesh, &service.name)
                    .await
                {
                    Ok(service) => Ok(Some(service.meta.version)),
                    Err(StoreError::NotFound(_)) => Ok(None),
                    Err(other) => Err(other),
                }
            }
        }
    }

    /// Writes it as `expect` allows: `(created, version)`.
    ///
    /// # Errors
    /// The store's.
    async fn put<S: SecretStore>(
        self,
        store: &S,
        expect: Expect,
    ) -> Result<(bool, i64), StoreError> {
        match self {
            Write::Secret(secret) => store
                .put_secret(secret, expect)
                .await
                .map(|put| (put.created, put.value.meta.version)),
            Write::Mesh(mesh) => store
                .put_mesh(mesh, expect)
                .await
                .map(|put| (put.created, put.value.meta.version)),
            Write::ExternalService(service) => store
                .put_external_service(service, expect)
                .await
                .map(|put| (put.created, put.value.meta.version)),
        }
    }
}

/// What the preconditions ask of the store, when one store check can decide it.
fn expectation(preconditions: &Preconditions) -> Option<Expect> {
    match (&preconditions.if_match, &preconditions.if_none_match) {
        (None, None) => Some(Expect::Any),
        (None, Some(Condition::Any)) => Some(Expect::Absent),
        (Some(Condition::Any), None) => Some(Expect::Exists),
        (Some(Condition::Versions(versions)), None) if versions.len() == 1 => {
            Some(Expect::Version(versions[0]))
        }
        _ => None,
    }
}

/// Creates or updates `write` under `preconditions`.
///
/// # Errors
/// 412 for a failed precondition, 400 for a changed immutable label, and the store's
/// errors; never 409 for a PUT without preconditions.
pub(super) async fn upsert<S: SecretStore>(
    store: &S,
    write: Write,
    preconditions: &Preconditions,
    warnings: Vec<String>,
) -> ApiResult<Response> {
    let expect = match expectation(preconditions) {
        Some(expect) => expect,
        // Several ETags, or both headers: read the version, check, then write only that
        // version (or only a create), so a write in between still fails the precondition.
        None => {
            let current = write
                .current_version(store)
                .await
                .map_err(|e| ApiError::store("Failed to find a resource", e))?;
            preconditions.check(current)?;
            current.map_or(Expect::Absent, Expect::Version)
        }
    };
    let key = write.key();
    let mesh = match &write {
        Write::Mesh(mesh) => Some(mesh.name.clone()),
        Write::Secret(_) | Write::ExternalService(_) => None,
    };
    let refused = match (write.put(store, expect).await, &mesh) {
        (Ok(put), _) => Ok(put),
        (Err(StoreError::AlreadyExists(_)), _) => Err(ApiError::precondition_failed(format!(
            "If-None-Match failed: the resource exists ({key})"
        ))),
        (Err(StoreError::Conflict { actual, .. }), _) => Err(ApiError::precondition_failed(
            format!("If-Match failed: the resource is at version \"{actual}\""),
        )),
        (Err(StoreError::NotFound(_)), _) => Err(ApiError::precondition_failed(
            "If-Match failed: the resource does not exist",
        )),
        (Err(StoreError::Invalid(violations)), Some(name))
            if !violations
                .violations
                .iter()
                .any(crate::domain::mtls::is_spec_violation) =>
        {
            // What Kuma's CA managers check as they write the Mesh: titled by that stage.
            let updating = match expect {
                Expect::Absent => false,
                Expect::Exists | Expect::Version(_) => true,
                Expect::Any => store.get_mesh(name).await.is_ok(),
            };
            let title = if updating {
                "Failed to update a resource"
            } else {
                "Failed to create a resource"
            };
            Err(ApiError::invalid(title, violations))
        }
        (Err(other), _) => Err(ApiError::store("Could not process a resource", other)),
    };
    let (created, version) = refused?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    // Kuma's `CreateOrUpdateSuccessResponse`: `{}`, or `{"warnings": […]}`.
    let body = if warnings.is_empty() {
        serde_json::json!({})
    } else {
        serde_json::json!({ "warnings": warnings })
    };
    Ok((status, [(header::ETAG, etag(version))], Json(body)).into_response())
}
