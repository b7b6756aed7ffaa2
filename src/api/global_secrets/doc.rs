//! The GlobalSecrets' part of the OpenAPI document (`/global-secrets[/{name}]` and the
//! aliases `/globalsecrets[/{name}]`).

#![allow(dead_code)] // The operation fns exist for their #[utoipa::path] attributes.

use crate::api::openapi::{
    FormatQuery, KubernetesSecretSchema, ListQuery, NamePath, PurgeQuery, item_schema, list_schema,
    resource_operations,
};
use serde::Deserialize;
use utoipa::ToSchema;

item_schema! {
    /// A GlobalSecret: bound to no Mesh.
    pub(crate) struct GlobalSecretItemSchema as GlobalSecretItem {
        /// `GlobalSecret`.
        #[schema(rename = "type", pattern = "^GlobalSecret$")]
        kind: String,
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
    /// A page of GlobalSecrets.
    struct GlobalSecretListSchema as GlobalSecretList of GlobalSecretItemSchema
}

/// A GlobalSecret GET answers the item, or with `?format=k8s` a Kubernetes manifest.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
enum GlobalSecretResponse {
    Item(GlobalSecretItemSchema),
    Kubernetes(KubernetesSecretSchema),
}

resource_operations!(
    type: "GlobalSecret", alias: "",
    list: "/global-secrets" (ListQuery) -> GlobalSecretListSchema,
    item: "/global-secrets/{name}" (NamePath), get (FormatQuery) -> GlobalSecretResponse,
        put GlobalSecretItemSchema, delete (PurgeQuery),
    fns: get_global_secret_list, get_global_secret, put_global_secret, delete_global_secret
);

resource_operations!(
    type: "GlobalSecret", alias: "Alias",
    list: "/globalsecrets" (ListQuery) -> GlobalSecretListSchema,
    item: "/globalsecrets/{name}" (NamePath), get (FormatQuery) -> GlobalSecretResponse,
        put GlobalSecretItemSchema, delete (PurgeQuery),
    fns: get_global_secret_list_alias, get_global_secret_alias, put_global_secret_alias,
        delete_global_secret_alias
);
