//! The Secrets' part of the OpenAPI document (`/meshes/{mesh}/secrets[/{name}]`, `/secrets`).

#![allow(dead_code)] // The operation fns exist for their #[utoipa::path] attributes.

use crate::api::openapi::{
    FormatQuery, ItemErrors, KubernetesSecretSchema, ListErrors, ListQuery, MeshPath, PurgeQuery,
    SecretPath, item_schema, list_schema, operation, resource_operations,
};
use serde::Deserialize;
use utoipa::ToSchema;

item_schema! {
    /// A Secret: bound to one Mesh.
    pub(crate) struct SecretItemSchema as SecretItem {
        /// `Secret`.
        #[schema(rename = "type", pattern = "^Secret$")]
        kind: String,
        /// The Mesh.
        mesh: String,
        /// The name.
        name: String,
        /// Value of the secret
        #[serde(default)]
        #[schema(format = Byte, required = false)]
        data: String,
        /// When the earliest PEM certificate in the value expires (a kuma-secrets
        /// extension; absent when the value holds none).
        #[schema(rename = "notAfter", read_only, format = DateTime)]
        not_after: Option<String>,
    }
}

list_schema! {
    /// A page of Secrets.
    struct SecretListSchema as SecretList of SecretItemSchema
}

/// One use of a secret: an mTLS backend of its Mesh, or a field of an ExternalService.
#[derive(ToSchema)]
#[schema(as = SecretUsage)]
struct SecretUsageSchema {
    /// `Mesh` or `ExternalService`.
    #[schema(rename = "referrerType")]
    referrer_type: String,
    mesh: String,
    /// The backend's name (a Mesh's).
    backend: Option<String>,
    /// `builtin` or `provided` (a Mesh's).
    #[schema(rename = "backendType")]
    backend_type: Option<String>,
    /// It is the Mesh's `enabledBackend` (a Mesh's).
    enabled: Option<bool>,
    /// The ExternalService's name.
    name: Option<String>,
    /// The field naming the secret, e.g. `networking.tls.clientKey`.
    field: Option<String>,
}

/// What uses a secret.
#[derive(ToSchema)]
#[schema(as = SecretUsageList)]
struct SecretUsageListSchema {
    total: u64,
    items: Vec<SecretUsageSchema>,
    /// When the earliest PEM certificate in the secret expires; absent when it holds none.
    #[schema(rename = "notAfter", format = DateTime)]
    not_after: Option<String>,
}

/// A Secret GET answers the item, or with `?format=k8s` a Kubernetes manifest.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
enum SecretResponse {
    Item(SecretItemSchema),
    Kubernetes(KubernetesSecretSchema),
}

resource_operations!(
    type: "Secret", alias: "",
    list: "/meshes/{mesh}/secrets" (MeshPath, ListQuery) -> SecretListSchema,
    item: "/meshes/{mesh}/secrets/{name}" (SecretPath), get (FormatQuery) -> SecretResponse,
        put SecretItemSchema, delete (PurgeQuery),
    fns: get_secret_list, get_secret, put_secret, delete_secret
);

operation!(
    #[utoipa::path(get, path = "/secrets", tag = "Secret",
        operation_id = "getSecretListInAllMeshes", summary = "List the Secrets of every Mesh",
        params(ListQuery),
        responses(
            (status = 200, description = "A page of Secrets", body = SecretListSchema),
            ListErrors,
        ))]
    get_secret_list_in_all_meshes
);

operation!(
    #[utoipa::path(get, path = "/meshes/{mesh}/secrets/{name}/_usage", tag = "Secret",
        operation_id = "getSecretUsage", summary = "What uses a Secret: mTLS backends and ExternalServices",
        params(SecretPath),
        responses(
            (status = 200, description = "Its uses", body = SecretUsageListSchema),
            ItemErrors,
        ))]
    get_secret_usage
);
