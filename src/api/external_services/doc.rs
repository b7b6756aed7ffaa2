//! The ExternalServices' part of the OpenAPI document
//! (`/meshes/{mesh}/external-services[/{name}]`, `/external-services`).

#![allow(dead_code)] // The operation fns exist for their #[utoipa::path] attributes.

use crate::api::openapi::{
    ExternalServicePath, ListErrors, ListQuery, MeshPath, item_schema, list_schema, operation,
    resource_operations,
};
use serde::Deserialize;
use std::collections::BTreeMap;
use utoipa::{IntoParams, ToSchema};

item_schema! {
    /// An ExternalService: meta fields, then its spec fields (`networking`, `tags`) flat
    /// beside them.
    struct ExternalServiceItemSchema as ExternalServiceItem {
        /// `ExternalService`.
        #[schema(rename = "type", pattern = "^ExternalService$")]
        kind: String,
        /// The Mesh.
        mesh: String,
        /// The name.
        name: String,
        /// Where the service is and how it is reached: `address` (`host:port`), `tls`.
        networking: BTreeMap<String, serde_json::Value>,
        /// Its tags: `kuma.io/service` is required.
        tags: BTreeMap<String, String>,
    }
}

list_schema! {
    /// A page of ExternalServices.
    struct ExternalServiceListSchema as ExternalServiceList of ExternalServiceItemSchema
}

/// The Kubernetes form of an ExternalService (`?format=k8s`).
#[derive(Deserialize, ToSchema)]
#[schema(as = KubernetesExternalService)]
struct KubernetesExternalServiceSchema {
    #[schema(rename = "apiVersion", pattern = "^kuma\\.io/v1alpha1$")]
    api_version: String,
    #[schema(pattern = "^ExternalService$")]
    kind: String,
    mesh: String,
    metadata: BTreeMap<String, serde_json::Value>,
    spec: BTreeMap<String, serde_json::Value>,
}

/// An ExternalService GET answers the item, or with `?format=k8s` a Kubernetes manifest.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
enum ExternalServiceResponse {
    Item(ExternalServiceItemSchema),
    Kubernetes(KubernetesExternalServiceSchema),
}

/// `?format=` of an ExternalService GET.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ExternalServiceFormat {
    /// `universal` (default) or `k8s`/`kubernetes` for a Kubernetes manifest.
    #[param(pattern = "^(universal|k8s|kubernetes)$")]
    format: Option<String>,
}

resource_operations!(
    type: "ExternalService", alias: "",
    list: "/meshes/{mesh}/external-services" (MeshPath, ListQuery) -> ExternalServiceListSchema,
    item: "/meshes/{mesh}/external-services/{name}" (ExternalServicePath),
        get (ExternalServiceFormat) -> ExternalServiceResponse,
        put ExternalServiceItemSchema, delete (),
    fns: get_external_service_list, get_external_service, put_external_service,
        delete_external_service
);

operation!(
    #[utoipa::path(get, path = "/external-services", tag = "ExternalService",
        operation_id = "getExternalServiceListInAllMeshes",
        summary = "List the ExternalServices of every Mesh",
        params(ListQuery),
        responses(
            (status = 200, description = "A page of ExternalServices", body = ExternalServiceListSchema),
            ListErrors,
        ))]
    get_external_service_list_in_all_meshes
);
