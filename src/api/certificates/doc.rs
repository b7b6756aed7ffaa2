//! The certificates' part of the OpenAPI document.

#![allow(dead_code)] // The operation fns exist for their #[utoipa::path] attributes.

use crate::api::openapi::{ItemErrors, MeshPath, NamePath, SecretPath, operation};
use utoipa::ToSchema;

/// A certificate, decoded.
#[derive(ToSchema)]
#[schema(as = Certificate)]
struct CertificateSchema {
    subject: String,
    issuer: String,
    /// `DNS:…`, `IP:…`, `URI:…`, `email:…`.
    sans: Vec<String>,
    /// Hex.
    serial: String,
    #[schema(rename = "notBefore", format = DateTime)]
    not_before: String,
    #[schema(rename = "notAfter", format = DateTime)]
    not_after: String,
    #[schema(rename = "isCa")]
    is_ca: bool,
}

/// The certificates in a secret's value.
#[derive(ToSchema)]
#[schema(as = CertificateList)]
struct CertificateListSchema {
    total: u64,
    items: Vec<CertificateSchema>,
}

/// An mTLS backend's CA certificate.
#[derive(ToSchema)]
#[schema(as = BackendCertificate)]
struct BackendCertificateSchema {
    backend: String,
    /// `builtin` or `provided`.
    #[schema(rename = "type")]
    kind: String,
    enabled: bool,
    secret: Option<String>,
    #[schema(rename = "notAfter", format = DateTime)]
    not_after: Option<String>,
    certificates: Vec<CertificateSchema>,
}

/// A Mesh's CA certificates.
#[derive(ToSchema)]
#[schema(as = MeshCertificates)]
struct MeshCertificatesSchema {
    mesh: String,
    #[schema(rename = "earliestNotAfter", format = DateTime)]
    earliest_not_after: Option<String>,
    items: Vec<BackendCertificateSchema>,
}

operation!(
    #[utoipa::path(get, path = "/meshes/{mesh}/secrets/{name}/_certificates", tag = "Secret",
        operation_id = "getSecretCertificates", summary = "The PEM certificates in a Secret, decoded (admin only)",
        params(SecretPath),
        responses(
            (status = 200, description = "Each certificate; none for a value without one", body = CertificateListSchema),
            ItemErrors,
        ))]
    get_secret_certificates
);

operation!(
    #[utoipa::path(get, path = "/global-secrets/{name}/_certificates", tag = "GlobalSecret",
        operation_id = "getGlobalSecretCertificates", summary = "The PEM certificates in a GlobalSecret, decoded (admin only)",
        params(NamePath),
        responses(
            (status = 200, description = "Each certificate; none for a value without one", body = CertificateListSchema),
            ItemErrors,
        ))]
    get_global_secret_certificates
);

operation!(
    #[utoipa::path(get, path = "/meshes/{mesh}/_certificates", tag = "Mesh",
        operation_id = "getMeshCertificates", summary = "Each mTLS backend's CA certificate and when it expires (admin only)",
        params(MeshPath),
        responses(
            (status = 200, description = "The backends' CA certificates, and the earliest expiry", body = MeshCertificatesSchema),
            ItemErrors,
        ))]
    get_mesh_certificates
);
