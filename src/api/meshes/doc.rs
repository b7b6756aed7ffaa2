//! The Meshes' part of the OpenAPI document (`/meshes[/{name}]`).

#![allow(dead_code)] // The operation fns exist for their #[utoipa::path] attributes.

use crate::api::openapi::{ListQuery, MeshNamePath, item_schema, list_schema, resource_operations};
use std::collections::BTreeMap;

item_schema! {
    /// A Mesh: meta fields, then its spec fields (`mtls`, …) flat beside them.
    struct MeshItemSchema as MeshItem {
        /// `Mesh`.
        #[schema(rename = "type", pattern = "^Mesh$")]
        kind: String,
        /// The name.
        name: String,
        /// The spec fields.
        #[serde(flatten)]
        spec: BTreeMap<String, serde_json::Value>,
    }
}

list_schema! {
    /// A page of Meshes.
    struct MeshListSchema as MeshList of MeshItemSchema
}

resource_operations!(
    type: "Mesh", alias: "",
    list: "/meshes" (ListQuery) -> MeshListSchema,
    item: "/meshes/{name}" (MeshNamePath), get () -> MeshItemSchema, put MeshItemSchema,
        delete (),
    fns: get_mesh_list, get_mesh, put_mesh, delete_mesh
);
