//! The OpenAPI document, served at `/openapi.json`: the operations of every resource's part
//! (the `doc` module beside its handlers: `secrets/doc.rs`, …) joined, with the error
//! schemas and the bearer-token scheme. Operation ids and schema names follow Kuma's own
//! `rest.yaml` for Secret and GlobalSecret (`getSecretList`, `SecretItem` requiring `type`,
//! `name` and `mesh`; `GlobalSecretItem` requiring `type` and `name`).
//!
//! What the parts share is in `openapi.rs`. The document is joined here, beside it rather
//! than in it, because the parts import from `openapi.rs`: naming their operations there
//! would make an import cycle.

use super::openapi::{ErrorSchema, InvalidParameterSchema};
use std::sync::OnceLock;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// The document, as JSON, built once.
pub fn document() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        ApiDoc::openapi()
            .to_pretty_json()
            .expect("the OpenAPI document serializes")
    })
}

struct BearerTokens;

impl Modify for BearerTokens {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "kuma-secrets",
        description = "Kuma-compatible API for Secret, GlobalSecret, Mesh and ExternalService resources, with ETag preconditions and cursor pagination."
    ),
    paths(
        super::secrets::doc::get_secret_list,
        super::secrets::doc::get_secret_list_in_all_meshes,
        super::secrets::doc::get_secret,
        super::secrets::doc::put_secret,
        super::secrets::doc::delete_secret,
        super::secrets::doc::get_secret_usage,
        super::certificates::doc::get_secret_certificates,
        super::certificates::doc::get_global_secret_certificates,
        super::certificates::doc::get_mesh_certificates,
        super::history::doc::get_secret_versions,
        super::history::doc::rollback_secret,
        super::history::doc::restore_secret,
        super::history::doc::get_global_secret_versions,
        super::history::doc::rollback_global_secret,
        super::history::doc::restore_global_secret,
        super::history::doc::get_global_secret_versions_alias,
        super::history::doc::rollback_global_secret_alias,
        super::history::doc::restore_global_secret_alias,
        super::global_secrets::doc::get_global_secret_list,
        super::global_secrets::doc::get_global_secret,
        super::global_secrets::doc::put_global_secret,
        super::global_secrets::doc::delete_global_secret,
        super::global_secrets::doc::get_global_secret_list_alias,
        super::global_secrets::doc::get_global_secret_alias,
        super::global_secrets::doc::put_global_secret_alias,
        super::global_secrets::doc::delete_global_secret_alias,
        super::meshes::doc::get_mesh_list,
        super::meshes::doc::get_mesh,
        super::meshes::doc::put_mesh,
        super::meshes::doc::delete_mesh,
        super::external_services::doc::get_external_service_list,
        super::external_services::doc::get_external_service_list_in_all_meshes,
        super::external_services::doc::get_external_service,
        super::external_services::doc::put_external_service,
        super::external_services::doc::delete_external_service,
        super::user_token::doc::generate_user_token,
        super::zones::doc::generate_zone_token,
        super::zones::doc::list_zones,
        super::changes::doc::get_changes,
        super::changes::doc::watch_changes,
        super::health::doc::index,
        super::health::doc::healthz,
        super::health::doc::readyz,
        super::health::doc::metrics,
        super::health::doc::openapi,
        super::gui::doc::gui,
        super::gui::doc::gui_asset,
    ),
    // The error bodies are named only inside the response enums, which utoipa does not
    // follow into components: register them, or every error response is a dangling $ref.
    components(schemas(ErrorSchema, InvalidParameterSchema)),
    modifiers(&BearerTokens),
    security((), ("bearer" = [])),
)]
struct ApiDoc;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::openapi::{ETAGS_PATTERN, MESH_PATTERN, NAME_PATTERN};

    #[test]
    fn the_document_has_kumas_operation_ids_and_two_secret_schemas() {
        let doc: serde_json::Value = serde_json::from_str(document()).unwrap();
        assert_eq!(
            doc["paths"]["/meshes/{mesh}/secrets"]["get"]["operationId"],
            "getSecretList"
        );
        assert_eq!(
            doc["paths"]["/global-secrets"]["get"]["operationId"],
            "getGlobalSecretList"
        );
        let required = |schema: &str| doc["components"]["schemas"][schema]["required"].clone();
        assert_eq!(
            required("SecretItem"),
            serde_json::json!(["type", "mesh", "name"])
        );
        assert_eq!(
            required("GlobalSecretItem"),
            serde_json::json!(["type", "name"])
        );
        let text = document();
        for pattern in [NAME_PATTERN, MESH_PATTERN, ETAGS_PATTERN] {
            let escaped = serde_json::to_string(pattern).unwrap();
            assert!(text.contains(&escaped), "{pattern} is in the document");
        }
    }

    /// The Secret item's `data` and `labels`, and the list's `size`, as Kuma v2.14.3's
    /// `api/system/v1alpha1/secret/rest.yaml` has them, property by property.
    #[test]
    fn secret_properties_and_page_size_are_kumas() {
        let doc: serde_json::Value = serde_json::from_str(document()).unwrap();
        for item in ["SecretItem", "GlobalSecretItem"] {
            let properties = &doc["components"]["schemas"][item]["properties"];
            assert_eq!(
                properties["data"],
                serde_json::json!({"type": "string", "format": "byte", "description": "Value of the secret"}),
                "{item}.data"
            );
            assert_eq!(
                properties["labels"],
                serde_json::json!({"type": "object", "additionalProperties": {"type": "string"}}),
                "{item}.labels"
            );
        }
        for path in ["/meshes/{mesh}/secrets", "/secrets", "/global-secrets"] {
            let size = doc["paths"][path]["get"]["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == "size")
                .unwrap();
            let schema = &size["schema"];
            assert_eq!(schema["type"], "integer", "{path}");
            assert_eq!(schema["default"], 100, "{path}");
            assert_eq!(schema["minimum"], 1, "{path}");
            assert_eq!(schema["maximum"], 1000, "{path}");
        }
    }
}
