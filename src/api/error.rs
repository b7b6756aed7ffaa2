//! API errors in Kuma's body (`pkg/core/rest/errors`): every failure a client sees is one of
//! these, with a status, a title naming what failed, and a detail. Store and database
//! internals are logged, never sent.

use crate::domain::{ValidationError, Violation};
use crate::store::StoreError;
use crate::wire::{Cause, ErrorBody, InvalidParameter};
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Kuma's answer to a write on a zone control plane of what the global one owns
/// (`zoneReadOnlyMessage`, `pkg/api-server/resource_endpoints.go`).
pub const ZONE_READ_ONLY_MESSAGE: &str = "On zone control plane you can only modify zone resources with 'kumactl apply' or via the HTTP API. You can still use 'kumactl' or the HTTP API to modify the rest of the resource on the global control plane.\n";

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What failed, e.g. "Could not retrieve a resource".
    pub title: String,
    /// Why.
    pub detail: String,
    /// Field violations, for validation errors.
    pub violations: Vec<Violation>,
}

impl ApiError {
    /// An error with no field violations.
    pub fn new(status: StatusCode, title: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            status,
            title: title.into(),
            detail: detail.into(),
            violations: Vec::new(),
        }
    }

    /// 405: a write on a federated zone to what the global store owns (a Mesh, or a
    /// Secret or GlobalSecret synced from it), with Kuma's message.
    pub fn zone_read_only() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method not allowed",
            ZONE_READ_ONLY_MESSAGE,
        )
    }

    /// 401: credentials that do not verify (malformed, unknown key, expired, revoked), with
    /// Kuma's text and nothing on why.
    pub fn unauthenticated() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "Invalid authentication data",
            "Unauthenticated",
        )
    }

    /// 400 "Bad Request": a body that cannot be read as the resource.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "Bad Request", detail)
    }

    /// 400 with Kuma's "Resource is not valid" and the violations.
    pub fn invalid(title: impl Into<String>, err: ValidationError) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            title: title.into(),
            detail: "Resource is not valid".into(),
            violations: err.violations,
        }
    }

    /// Replaces the detail.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }

    /// 404 "Not found" under `title`.
    pub fn not_found(title: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, title, "Not found")
    }

    /// 404 for a mesh-scoped route whose Mesh does not exist.
    pub fn mesh_not_found() -> Self {
        Self::not_found("Failed to retrieve Mesh")
    }

    /// 412 for a failed `If-Match` / `If-None-Match`.
    pub fn precondition_failed(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PRECONDITION_FAILED,
            "Precondition Failed",
            detail,
        )
    }

    /// Maps a store error, under `title` (what the handler was doing).
    pub fn store(title: &str, err: StoreError) -> Self {
        match err {
            StoreError::NotFound(_) => Self::not_found(title),
            StoreError::VersionNotFound { .. } => {
                Self::new(StatusCode::NOT_FOUND, title, err.to_string())
            }
            StoreError::NotDeleted(_) => {
                Self::new(StatusCode::CONFLICT, "Conflict", err.to_string())
            }
            StoreError::MeshNotFound { .. } => Self::mesh_not_found(),
            StoreError::AlreadyExists(_) | StoreError::Conflict { .. } => {
                Self::new(StatusCode::CONFLICT, "Conflict", err.to_string())
            }
            StoreError::Invalid(violations) => Self::invalid(title, violations),
            // Kuma checks them as it updates, after the request's own validation.
            StoreError::ImmutableLabels(violations) => {
                Self::invalid("Could not update a resource", violations)
            }
            StoreError::Sealed { .. } => {
                // The store's fault, not the caller's: name the secret (never its data).
                tracing::error!(error = %err, "a sealed secret did not open");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, title, err.to_string())
            }
            StoreError::InUse { .. } | StoreError::ReferencedBy { .. } => Self::invalid(
                "Could not delete a resource",
                ValidationError::single("name", err.to_string()),
            ),
            StoreError::Unavailable(ref cause) => {
                tracing::warn!(error = %cause, "store unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Store unavailable",
                    "the secret store cannot be reached; retry later",
                )
            }
            StoreError::Storage { fault, ref source } => {
                tracing::error!(%fault, error = %source, "the database cannot store data");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Store unavailable",
                    format!(
                        "the secret store's database cannot store data: {fault}; nothing was written, retry later"
                    ),
                )
            }
            StoreError::ReadOnly => {
                tracing::warn!(error = %err, "store unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Store unavailable",
                    "the secret store accepts only reads now (a database failover is under way); retry later",
                )
            }
            StoreError::TransactionPooler(_) => {
                tracing::error!(error = %crate::error_chain(&err), "store misconfigured");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Store unavailable",
                    "the secret store cannot run statements through its connection pooler; see the server log",
                )
            }
            other => {
                tracing::error!(error = %crate::error_chain(&other), "store error");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    title,
                    "Internal Server Error",
                )
            }
        }
    }
}

impl ApiError {
    /// The body Kuma's clients read.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            kind: "/std-errors".into(),
            status: self.status.as_u16(),
            title: self.title.clone(),
            detail: self.detail.clone(),
            invalid_parameters: self
                .violations
                .iter()
                .map(|v| InvalidParameter {
                    field: v.field.clone(),
                    reason: v.reason.clone(),
                })
                .collect(),
            details: self.detail.clone(),
            causes: self
                .violations
                .iter()
                .map(|v| Cause {
                    field: v.field.clone(),
                    message: v.reason.clone(),
                })
                .collect(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            // The store is down or restarting: tell clients when to come back.
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        response
    }
}
