//! The version history's part of the OpenAPI document (`…/_versions`, `…/_rollback`,
//! `…/_restore` under each secret route).

#![allow(dead_code)] // The operation fns exist for their #[utoipa::path] attributes.

use crate::api::global_secrets::doc::GlobalSecretItemSchema;
use crate::api::openapi::{NamePath, SecretPath, history_operations, list_schema};
use crate::api::secrets::doc::SecretItemSchema;
use std::collections::BTreeMap;
use utoipa::ToSchema;

history_operations!(
    type: "Secret", alias: "", item: "/meshes/{mesh}/secrets/{name}" (SecretPath)
        -> SecretItemSchema,
    fns: get_secret_versions, rollback_secret, restore_secret
);

history_operations!(
    type: "GlobalSecret", alias: "", item: "/global-secrets/{name}" (NamePath)
        -> GlobalSecretItemSchema,
    fns: get_global_secret_versions, rollback_global_secret, restore_global_secret
);

history_operations!(
    type: "GlobalSecret", alias: "Alias", item: "/globalsecrets/{name}" (NamePath)
        -> GlobalSecretItemSchema,
    fns: get_global_secret_versions_alias, rollback_global_secret_alias,
        restore_global_secret_alias
);

/// One version of a secret (metadata, never data).
#[derive(ToSchema)]
#[schema(as = VersionItem)]
struct VersionItemSchema {
    /// The version.
    #[schema(minimum = 1)]
    version: i64,
    /// When it was written.
    #[schema(rename = "modificationTime", format = DateTime)]
    modification_time: String,
    /// It is the current version.
    current: bool,
    /// Who wrote it: `{"name", "groups"}`.
    actor: Option<BTreeMap<String, serde_json::Value>>,
    /// When the secret was deleted (versions of a deleted secret).
    #[schema(rename = "deletionTime", format = DateTime)]
    deletion_time: Option<String>,
}

list_schema! {
    /// The versions of a secret, newest first (`next` is always null).
    struct VersionListSchema as VersionList of VersionItemSchema
}

/// `POST …/_rollback`.
#[derive(ToSchema)]
#[schema(as = RollbackRequest)]
struct RollbackRequestSchema {
    /// The version to return to.
    #[schema(minimum = 1)]
    version: i64,
}

/// `POST …/_restore`.
#[derive(ToSchema)]
#[schema(as = RestoreRequest)]
struct RestoreRequestSchema {
    /// The version to restore (the newest kept by default).
    #[schema(minimum = 1)]
    version: Option<i64>,
}
