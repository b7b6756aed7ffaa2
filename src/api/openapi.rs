//! What the parts of the OpenAPI document share, and [`Routes`], through which every route
//! is registered.
//!
//! The document, served at `/openapi.json`, is generated with utoipa from schema types and
//! the operations they describe. Each resource's part of it stands beside its handlers, in a
//! child module `doc`: `secrets/doc.rs`, `global_secrets/doc.rs`, `meshes/doc.rs`,
//! `history/doc.rs`, `changes/doc.rs`, `user_token/doc.rs` and `health/doc.rs`. This module
//! holds what several parts use: the macros that declare schemas, parameters, error responses
//! and operations; the error, empty and Kubernetes bodies; the path, precondition, list,
//! format and purge parameters; and the answers of each kind of operation. `document.rs`
//! joins the parts into the document (it names every part's operations, and the parts import
//! from here, so it cannot live here without an import cycle).
//!
//! Every route is registered through [`Routes`], which takes its path from the operation
//! that documents it, so a route cannot be served without a documented operation; the
//! parity test (`tests/openapi.rs`) checks both directions against a running server.

#![allow(dead_code)] // The schemas' fields exist for their #[derive(ToSchema)].

use axum::Router;
use axum::handler::Handler;
use axum::routing::{MethodFilter, on};
use serde::Deserialize;
use std::collections::BTreeMap;
use utoipa::ToSchema;
use utoipa::openapi::HttpMethod;

/// A router whose every route is a documented operation (see the module docs).
pub(super) struct Routes<S> {
    router: Router<S>,
    /// `(METHOD, path)` of every operation served, for the parity test.
    served: Vec<(String, String)>,
}

impl<S: Clone + Send + Sync + 'static> Routes<S> {
    /// No routes yet.
    pub(super) fn new() -> Self {
        Self {
            router: Router::new(),
            served: Vec::new(),
        }
    }

    /// Serves `handler` at the path and for the method of operation `P` (the type a
    /// `#[utoipa::path]` attribute makes): the document decides both, so the two cannot
    /// drift apart. Operations on one path merge into one route.
    pub(super) fn add<P, H, T>(self, handler: H) -> Self
    where
        P: utoipa::Path,
        H: Handler<T, S>,
        T: 'static,
    {
        let path = P::path();
        let mut served = self.served;
        let mut filter = None::<MethodFilter>;
        for method in P::methods() {
            served.push((method_name(&method).to_owned(), path.clone()));
            let this = method_filter(method);
            filter = Some(filter.map_or(this, |f| f.or(this)));
        }
        let filter = filter.expect("an operation has a method");
        Self {
            router: self.router.route(&axum_path(&path), on(filter, handler)),
            served,
        }
    }

    /// Both sets of routes.
    pub(super) fn merge(mut self, other: Routes<S>) -> Self {
        self.router = self.router.merge(other.router);
        self.served.extend(other.served);
        self
    }

    /// The router, and the `(METHOD, path)` of every operation it serves.
    pub(super) fn into_parts(self) -> (Router<S>, Vec<(String, String)>) {
        (self.router, self.served)
    }
}

fn method_name(method: &HttpMethod) -> &'static str {
    match method {
        HttpMethod::Get => "GET",
        HttpMethod::Post => "POST",
        HttpMethod::Put => "PUT",
        HttpMethod::Delete => "DELETE",
        HttpMethod::Options => "OPTIONS",
        HttpMethod::Head => "HEAD",
        HttpMethod::Patch => "PATCH",
        HttpMethod::Trace => "TRACE",
    }
}

fn method_filter(method: HttpMethod) -> MethodFilter {
    match method {
        HttpMethod::Get => MethodFilter::GET,
        HttpMethod::Post => MethodFilter::POST,
        HttpMethod::Put => MethodFilter::PUT,
        HttpMethod::Delete => MethodFilter::DELETE,
        HttpMethod::Options => MethodFilter::OPTIONS,
        HttpMethod::Head => MethodFilter::HEAD,
        HttpMethod::Patch => MethodFilter::PATCH,
        HttpMethod::Trace => MethodFilter::TRACE,
    }
}

/// OpenAPI and axum 0.8 spell path parameters alike (`{name}`).
fn axum_path(openapi_path: &str) -> String {
    openapi_path.to_owned()
}

// ---- schemas -------------------------------------------------------------------------------

/// An item schema: the fields given, then the times and labels every resource carries.
macro_rules! item_schema {
    ($(#[$attr:meta])* $vis:vis struct $schema:ident as $name:ident { $($fields:tt)* }) => {
        $(#[$attr])*
        #[derive(::serde::Deserialize, ::utoipa::ToSchema)]
        #[schema(as = $name)]
        $vis struct $schema {
            $($fields)*
            /// Set by the server.
            #[schema(rename = "creationTime", read_only, format = DateTime)]
            creation_time: Option<String>,
            /// Set by the server.
            #[schema(rename = "modificationTime", read_only, format = DateTime)]
            modification_time: Option<String>,
            // As Kuma's `rest.yaml` has it: an object of strings, no description.
            #[serde(default)]
            #[schema(required = false, schema_with = $crate::api::openapi::labels_schema)]
            labels: ::std::collections::BTreeMap<String, String>,
        }
    };
}
pub(crate) use item_schema;

/// Kuma's schema of `labels`: an object whose values are strings (no `propertyNames`, which
/// utoipa would add for a map).
pub(crate) fn labels_schema() -> utoipa::openapi::Object {
    use utoipa::openapi::schema::Type;
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(Type::Object)
        .additional_properties(Some(
            utoipa::openapi::ObjectBuilder::new().schema_type(Type::String),
        ))
        .build()
}

/// A page of items: `{"total","items","next"}`.
macro_rules! list_schema {
    ($(#[$attr:meta])* $vis:vis struct $schema:ident as $name:ident of $item:ty) => {
        $(#[$attr])*
        #[derive(::utoipa::ToSchema)]
        #[schema(as = $name)]
        $vis struct $schema {
            /// Every match.
            total: u64,
            /// This page.
            items: Vec<$item>,
            /// The next page's URL, or null.
            next: Option<String>,
        }
    };
}
pub(crate) use list_schema;

/// One field violation.
#[derive(ToSchema)]
#[schema(as = InvalidParameter)]
pub(crate) struct InvalidParameterSchema {
    field: String,
    reason: String,
}

/// Kuma's error body.
#[derive(ToSchema)]
#[schema(as = Error)]
pub(crate) struct ErrorSchema {
    /// `/std-errors`.
    #[schema(rename = "type")]
    kind: String,
    status: u16,
    title: String,
    detail: String,
    invalid_parameters: Option<Vec<InvalidParameterSchema>>,
    details: Option<String>,
    causes: Option<Vec<BTreeMap<String, String>>>,
}

/// The answer of a PUT or DELETE: `{}`, or Kuma's `{"warnings": […]}` (a Mesh name that is
/// not a DNS-1035 label).
#[derive(ToSchema)]
#[schema(as = Empty)]
pub(crate) struct EmptySchema {
    /// Warnings about an accepted write.
    warnings: Option<Vec<String>>,
}

/// `?format=k8s`: the Secret as Kuma's Kubernetes mode stores it.
#[derive(Deserialize, ToSchema)]
#[schema(as = KubernetesSecret)]
pub(crate) struct KubernetesSecretSchema {
    #[schema(rename = "apiVersion", pattern = "^v1$")]
    api_version: String,
    #[schema(pattern = "^Secret$")]
    kind: String,
    #[schema(rename = "type")]
    secret_type: String,
    metadata: BTreeMap<String, serde_json::Value>,
    data: BTreeMap<String, String>,
}

// ---- parameters ----------------------------------------------------------------------------

/// A struct of parameters in one place (`Path`, `Query`, `Header`): its fields, each with
/// its doc and `#[param]`/`#[serde]` attributes.
macro_rules! parameters {
    (
        $(#[$attr:meta])* $vis:vis struct $name:ident in $place:ident {
            $($(#[$field_attr:meta])* $field:ident: $ty:ty),+ $(,)?
        }
    ) => {
        $(#[$attr])*
        #[derive(::serde::Deserialize, ::utoipa::IntoParams)]
        #[into_params(parameter_in = $place)]
        $vis struct $name {
            $($(#[$field_attr])* $field: $ty),+
        }
    };
}
pub(crate) use parameters;

/// The path and precondition parameters, with the patterns of a resource name, a Mesh name
/// and a list of ETags each spelled once (utoipa's `pattern =` takes a literal, not a
/// constant: the literals come in as the macro's arguments).
macro_rules! patterned_parameters {
    (name = $name:literal, mesh = $mesh:literal, etags = $etags:literal) => {
        #[cfg(test)]
        pub(crate) const NAME_PATTERN: &str = $name;
        #[cfg(test)]
        pub(crate) const MESH_PATTERN: &str = $mesh;
        #[cfg(test)]
        pub(crate) const ETAGS_PATTERN: &str = $etags;

        $crate::api::openapi::parameters! {
            pub(crate) struct MeshPath in Path {
                /// The Mesh.
                #[param(min_length = 1, max_length = 63, pattern = $mesh)]
                mesh: String,
            }
        }
        $crate::api::openapi::parameters! {
            pub(crate) struct SecretPath in Path {
                /// The Mesh.
                #[param(min_length = 1, max_length = 63, pattern = $mesh)]
                mesh: String,
                /// The Secret.
                #[param(min_length = 1, max_length = 253, pattern = $name)]
                name: String,
            }
        }
        $crate::api::openapi::parameters! {
            pub(crate) struct ExternalServicePath in Path {
                /// The Mesh.
                #[param(min_length = 1, max_length = 63, pattern = $mesh)]
                mesh: String,
                /// The ExternalService.
                #[param(min_length = 1, max_length = 253, pattern = $name)]
                name: String,
            }
        }
        $crate::api::openapi::parameters! {
            pub(crate) struct NamePath in Path {
                /// The resource's name.
                #[param(min_length = 1, max_length = 253, pattern = $name)]
                name: String,
            }
        }
        $crate::api::openapi::parameters! {
            pub(crate) struct MeshNamePath in Path {
                /// The Mesh's name.
                #[param(min_length = 1, max_length = 63, pattern = $mesh)]
                name: String,
            }
        }
        $crate::api::openapi::parameters! {
            /// Conditional writes.
            pub(crate) struct WriteConditions in Header {
                /// Apply only if the resource is at this ETag (`"<version>"`), or exists (`*`).
                #[serde(rename = "If-Match")]
                #[param(pattern = $etags)]
                if_match: Option<String>,
                /// `*`: create only.
                #[serde(rename = "If-None-Match")]
                #[param(pattern = $etags)]
                if_none_match: Option<String>,
            }
        }
        $crate::api::openapi::parameters! {
            /// Conditional reads.
            pub(crate) struct ReadConditions in Header {
                /// ETags the client holds: 304 Not Modified (no body) if the resource is at
                /// one of them, or exists (`*`).
                #[serde(rename = "If-None-Match")]
                #[param(pattern = $etags)]
                if_none_match: Option<String>,
                /// `no-cache` (or `no-store`, `max-age=0`): read a Secret from the database,
                /// not from the server's read cache.
                #[serde(rename = "Cache-Control")]
                cache_control: Option<String>,
            }
        }
        $crate::api::openapi::parameters! {
            /// Conditional deletes.
            pub(crate) struct DeleteConditions in Header {
                /// Delete only if the resource is at this ETag (`"<version>"`), or exists (`*`).
                #[serde(rename = "If-Match")]
                #[param(pattern = $etags)]
                if_match: Option<String>,
            }
        }
    };
}

patterned_parameters!(
    name = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
    mesh = "^[0-9a-z_.-]+$",
    etags = r#"^\s*(\*|(W/)?"[0-9]+"(\s*,\s*(W/)?"[0-9]+")*)\s*$"#
);

parameters! {
    /// Kuma's list parameters, plus `cursor`.
    pub(crate) struct ListQuery in Query {
        /// Page size (default 100).
        #[param(minimum = 1, maximum = 1000, default = 100)]
        size: Option<u32>,
        /// Items to skip.
        #[param(minimum = 0)]
        offset: Option<u64>,
        /// Opaque position from a `next` link; as fast on the last page as on the first.
        #[param(pattern = "^[A-Za-z0-9_-]*$")]
        cursor: Option<String>,
        /// Name substring.
        name: Option<String>,
        /// `filter[labels.KEY]=VALUE`: exact, ANDed.
        #[param(style = DeepObject, explode)]
        filter: Option<BTreeMap<String, String>>,
    }
}

parameters! {
    /// `?format=` of a Secret GET.
    pub(crate) struct FormatQuery in Query {
        /// `universal` (default) or `k8s`/`kubernetes` for a Kubernetes manifest.
        #[param(pattern = "^(universal|k8s|kubernetes)$")]
        format: Option<String>,
        /// Namespace of the Kubernetes manifest (default `kuma-system`).
        namespace: Option<String>,
        /// A version kept in the secret's history (`GET …/_versions` lists them); the `ETag`
        /// is that version.
        #[param(minimum = 1)]
        version: Option<i64>,
    }
}

parameters! {
    /// `?purge=` of a Secret DELETE.
    pub(crate) struct PurgeQuery in Query {
        /// `true`: destroy the secret and its whole history now (no restore).
        #[param(pattern = "^(true|false)$")]
        purge: Option<String>,
    }
}

// ---- error responses, by kind of operation -------------------------------------------------

/// An enum of the error answers of a kind of operation: 400 (its own doc), the 401 and 403
/// every operation can answer, the given others, and 503.
macro_rules! error_responses {
    (
        $(#[$attr:meta])* $vis:vis enum $name:ident {
            $(#[doc = $bad_request:literal])* BadRequest,
            $($(#[doc = $doc:literal])* $status:literal $variant:ident,)*
        }
    ) => {
        $(#[$attr])*
        #[derive(::utoipa::IntoResponses)]
        $vis enum $name {
            $(#[doc = $bad_request])*
            #[response(status = 400)]
            BadRequest($crate::api::openapi::ErrorSchema),
            /// Bad token.
            #[response(status = 401)]
            Unauthorized($crate::api::openapi::ErrorSchema),
            /// Not an admin.
            #[response(status = 403)]
            Forbidden($crate::api::openapi::ErrorSchema),
            $($(#[doc = $doc])* #[response(status = $status)] $variant($crate::api::openapi::ErrorSchema),)*
            /// The store cannot be reached; retry (`Retry-After`).
            #[response(status = 503)]
            Unavailable($crate::api::openapi::ErrorSchema),
        }
    };
}
pub(crate) use error_responses;

error_responses! {
    /// Errors of a list.
    pub(crate) enum ListErrors {
        /// Bad parameters.
        BadRequest,
        /// No such Mesh.
        404 NotFound,
    }
}

error_responses! {
    /// Errors of a read or a delete.
    pub(crate) enum ItemErrors {
        /// Bad parameters, or a Secret in use by an mTLS backend (delete).
        BadRequest,
        /// Not found.
        404 NotFound,
        /// A delete on a federated zone of a Mesh or a synced resource (Kuma's message).
        405 ZoneReadOnly,
        /// `If-Match` failed (delete).
        412 PreconditionFailed,
    }
}

/// A write that succeeded.
#[derive(utoipa::IntoResponses)]
pub(crate) enum Written {
    /// Updated.
    #[response(status = 200, headers(("ETag" = String, description = "\"<version>\"")))]
    Updated(EmptySchema),
    /// Created.
    #[response(status = 201, headers(("ETag" = String, description = "\"<version>\"")))]
    Created(EmptySchema),
}

error_responses! {
    /// Errors of a write.
    pub(crate) enum WriteErrors {
        /// Invalid.
        BadRequest,
        /// No such Mesh.
        404 NotFound,
        /// A federated zone: a Mesh, or a resource synced from the global store, is
        /// read-only there (Kuma's message).
        405 ZoneReadOnly,
        /// Changed meanwhile.
        409 Conflict,
        /// A precondition failed.
        412 PreconditionFailed,
        /// Too large.
        413 TooLarge,
        /// Not JSON.
        415 NotJson,
    }
}

// ---- operations ----------------------------------------------------------------------------

/// Declares an operation fn: its `#[utoipa::path]` attribute is the documentation, and its
/// type is what [`Routes::add`] takes the path from.
macro_rules! operation {
    ($(#[$attr:meta])* $name:ident) => {
        $(#[$attr])*
        pub(crate) fn $name() {}
    };
}
pub(crate) use operation;

/// The list and item operations of one resource type (Kuma's `get{Type}List`,
/// `get{Type}`, `put{Type}`, `delete{Type}`), under one spelling of its path.
macro_rules! resource_operations {
    (
        type: $kind:literal, alias: $suffix:literal,
        list: $list_path:literal ($($list_param:ident),*) -> $list_schema:ident,
        item: $item_path:literal ($item_param:ident), get ($($get_param:ident),*) -> $get_schema:ident,
            put $put_schema:ident, delete ($($delete_param:ident),*),
        fns: $list:ident, $get:ident, $put:ident, $delete:ident
    ) => {
        $crate::api::openapi::operation!(
            #[utoipa::path(get, path = $list_path, tag = $kind,
                operation_id = concat!("get", $kind, "List", $suffix),
                summary = concat!("List ", $kind, "s"),
                params($($list_param),*),
                responses(
                    (status = 200, description = "A page", body = $list_schema),
                    $crate::api::openapi::ListErrors,
                ))]
            $list
        );
        $crate::api::openapi::operation!(
            #[utoipa::path(get, path = $item_path, tag = $kind,
                operation_id = concat!("get", $kind, $suffix),
                summary = concat!("Get a ", $kind, "; its ETag is its version"),
                params($item_param, $crate::api::openapi::ReadConditions $(, $get_param)*),
                responses(
                    (status = 200, description = "Found",
                        headers(("ETag" = String, description = "\"<version>\"")),
                        body = $get_schema),
                    (status = 304, description = "At a version `If-None-Match` named",
                        headers(("ETag" = String, description = "\"<version>\""))),
                    $crate::api::openapi::ItemErrors,
                ))]
            $get
        );
        $crate::api::openapi::operation!(
            #[utoipa::path(put, path = $item_path, tag = $kind,
                operation_id = concat!("put", $kind, $suffix),
                summary = concat!("Create or update a ", $kind),
                params($item_param, $crate::api::openapi::WriteConditions),
                request_body = $put_schema,
                responses($crate::api::openapi::Written, $crate::api::openapi::WriteErrors))]
            $put
        );
        $crate::api::openapi::operation!(
            #[utoipa::path(delete, path = $item_path, tag = $kind,
                operation_id = concat!("delete", $kind, $suffix),
                summary = concat!("Delete a ", $kind),
                params($item_param, $crate::api::openapi::DeleteConditions $(, $delete_param)*),
                responses(
                    (status = 200, description = "Deleted", body = $crate::api::openapi::EmptySchema),
                    $crate::api::openapi::ItemErrors,
                ))]
            $delete
        );
    };
}
pub(crate) use resource_operations;

/// The version history operations of one secret type under one spelling of its path:
/// `…/_versions`, `…/_rollback`, `…/_restore`. `VersionListSchema`, `RollbackRequestSchema`
/// and `RestoreRequestSchema` are the caller's (`history/doc.rs`).
macro_rules! history_operations {
    (
        type: $kind:literal, alias: $suffix:literal, item: $item_path:literal ($item_param:ident)
            -> $item_schema:ident,
        fns: $versions:ident, $rollback:ident, $restore:ident
    ) => {
        $crate::api::openapi::operation!(
            #[utoipa::path(get, path = concat!($item_path, "/_versions"), tag = $kind,
                operation_id = concat!("get", $kind, "Versions", $suffix),
                summary = concat!("List the versions kept of a ", $kind, ", newest first"),
                params($item_param),
                responses(
                    (status = 200, description = "Its versions", body = VersionListSchema),
                    $crate::api::openapi::ItemErrors,
                ))]
            $versions
        );
        $crate::api::openapi::operation!(
            #[utoipa::path(post, path = concat!($item_path, "/_rollback"), tag = $kind,
                operation_id = concat!("rollback", $kind, $suffix),
                summary = concat!("Write an earlier version of a ", $kind, " as a new version"),
                params($item_param, $crate::api::openapi::DeleteConditions),
                request_body = RollbackRequestSchema,
                responses(
                    (status = 200, description = "Rolled back",
                        headers(("ETag" = String, description = "\"<version>\"")),
                        body = $item_schema),
                    $crate::api::openapi::WriteErrors,
                ))]
            $rollback
        );
        $crate::api::openapi::operation!(
            #[utoipa::path(post, path = concat!($item_path, "/_restore"), tag = $kind,
                operation_id = concat!("restore", $kind, $suffix),
                summary = concat!("Bring a deleted ", $kind, " back from its history"),
                params($item_param),
                request_body(content = Option<RestoreRequestSchema>, description = "Optional: the version to restore (the newest kept by default)"),
                responses(
                    (status = 200, description = "Restored",
                        headers(("ETag" = String, description = "\"<version>\"")),
                        body = $item_schema),
                    $crate::api::openapi::WriteErrors,
                ))]
            $restore
        );
    };
}
pub(crate) use history_operations;
