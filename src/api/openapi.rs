//! The OpenAPI document, generated with utoipa from the types below and the operations they
//! describe, served at `/openapi.json`. Operation ids and schema names follow Kuma's own
//! `rest.yaml` for Secret and GlobalSecret (`getSecretList`, `SecretItem` requiring `type`,
//! `name` and `mesh`; `GlobalSecretItem` requiring `type` and `name`).
//!
//! Every route is registered through [`Routes`], which takes its path from the operation
//! that documents it, so a route cannot be served without a documented operation; the
//! parity test (`tests/openapi.rs`) checks both directions against a running server.

#![allow(dead_code)] // The operation fns exist for their #[utoipa::path] attributes.

use axum::Router;
use axum::handler::Handler;
use axum::routing::{MethodFilter, on};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::OnceLock;
use utoipa::openapi::HttpMethod;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};

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

/// The document, as JSON, built once.
pub fn document() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        ApiDoc::openapi()
            .to_pretty_json()
            .expect("the OpenAPI document serializes")
    })
}

// ---- schemas -------------------------------------------------------------------------------

/// An item schema: the fields given, then the times and labels every resource carries.
macro_rules! item_schema {
    ($(#[$attr:meta])* struct $schema:ident as $name:ident { $($fields:tt)* }) => {
        $(#[$attr])*
        #[derive(Deserialize, ToSchema)]
        #[schema(as = $name)]
        struct $schema {
            $($fields)*
            /// Set by the server.
            #[schema(rename = "creationTime", read_only, format = DateTime)]
            creation_time: Option<String>,
            /// Set by the server.
            #[schema(rename = "modificationTime", read_only, format = DateTime)]
            modification_time: Option<String>,
            /// Labels.
            labels: Option<BTreeMap<String, String>>,
        }
    };
}

/// A page of items: `{"total","items","next"}`.
macro_rules! list_schema {
    ($(#[$attr:meta])* struct $schema:ident as $name:ident of $item:ty) => {
        $(#[$attr])*
        #[derive(ToSchema)]
        #[schema(as = $name)]
        struct $schema {
            /// Every match.
            total: u64,
            /// This page.
            items: Vec<$item>,
            /// The next page's URL, or null.
            next: Option<String>,
        }
    };
}

item_schema! {
    /// A Secret: bound to one Mesh.
    struct SecretItemSchema as SecretItem {
        /// `Secret`.
        #[schema(rename = "type", pattern = "^Secret$")]
        kind: String,
        /// The Mesh.
        mesh: String,
        /// The name.
        name: String,
        /// The bytes, standard padded base64.
        #[schema(format = Byte)]
        data: Option<String>,
    }
}

item_schema! {
    /// A GlobalSecret: bound to no Mesh.
    struct GlobalSecretItemSchema as GlobalSecretItem {
        /// `GlobalSecret`.
        #[schema(rename = "type", pattern = "^GlobalSecret$")]
        kind: String,
        /// The name.
        name: String,
        /// The bytes, standard padded base64.
        #[schema(format = Byte)]
        data: Option<String>,
    }
}

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
    /// A page of Secrets.
    struct SecretListSchema as SecretList of SecretItemSchema
}

list_schema! {
    /// A page of GlobalSecrets.
    struct GlobalSecretListSchema as GlobalSecretList of GlobalSecretItemSchema
}

list_schema! {
    /// A page of Meshes.
    struct MeshListSchema as MeshList of MeshItemSchema
}

/// One field violation.
#[derive(ToSchema)]
#[schema(as = InvalidParameter)]
struct InvalidParameterSchema {
    field: String,
    reason: String,
}

/// Kuma's error body.
#[derive(ToSchema)]
#[schema(as = Error)]
struct ErrorSchema {
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
struct EmptySchema {
    /// Warnings about an accepted write.
    warnings: Option<Vec<String>>,
}

/// One mTLS backend using a secret.
#[derive(ToSchema)]
#[schema(as = SecretUsage)]
struct SecretUsageSchema {
    mesh: String,
    /// The backend's name.
    backend: String,
    /// `builtin` or `provided`.
    #[schema(rename = "backendType")]
    backend_type: String,
    /// It is the Mesh's `enabledBackend`.
    enabled: bool,
}

/// What uses a secret.
#[derive(ToSchema)]
#[schema(as = SecretUsageList)]
struct SecretUsageListSchema {
    total: u64,
    items: Vec<SecretUsageSchema>,
}

/// `?format=k8s`: the Secret as Kuma's Kubernetes mode stores it.
#[derive(Deserialize, ToSchema)]
#[schema(as = KubernetesSecret)]
struct KubernetesSecretSchema {
    #[schema(rename = "apiVersion", pattern = "^v1$")]
    api_version: String,
    #[schema(pattern = "^Secret$")]
    kind: String,
    #[schema(rename = "type")]
    secret_type: String,
    metadata: BTreeMap<String, serde_json::Value>,
    data: BTreeMap<String, String>,
}

/// A Secret GET answers the item, or with `?format=k8s` a Kubernetes manifest.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
enum SecretResponse {
    Item(SecretItemSchema),
    Kubernetes(KubernetesSecretSchema),
}

/// A GlobalSecret GET answers the item, or with `?format=k8s` a Kubernetes manifest.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
enum GlobalSecretResponse {
    Item(GlobalSecretItemSchema),
    Kubernetes(KubernetesSecretSchema),
}

/// One server-sent event of `/_watch`: `event: change` with `id` the revision and `data` a
/// [`ChangeEvent`](ChangeEventSchema) as JSON, or `event: error` with the reason as `data`
/// (the stream then ends; reconnect with `Last-Event-ID`).
#[derive(ToSchema)]
#[schema(as = WatchEvent)]
struct WatchEventSchema {
    /// `change` or `error`.
    event: Option<String>,
    /// The revision of a `change`.
    id: Option<String>,
    /// The event as JSON, or the error's reason.
    data: String,
}

/// `POST /tokens/user`.
#[derive(ToSchema)]
#[schema(as = UserTokenRequest)]
struct UserTokenRequestSchema {
    /// The user's name.
    #[schema(min_length = 1, pattern = r"\S")]
    name: String,
    /// The user's groups.
    groups: Option<Vec<String>>,
    /// How long the token is valid: `24h`, `7d`, `1h30m`.
    #[schema(
        rename = "validFor",
        pattern = "^([0-9]{1,9}[dhms])+$",
        example = "24h"
    )]
    valid_for: String,
}

// ---- parameters ----------------------------------------------------------------------------

/// A struct of parameters in one place (`Path`, `Query`, `Header`): its fields, each with
/// its doc and `#[param]`/`#[serde]` attributes.
macro_rules! parameters {
    (
        $(#[$attr:meta])* struct $name:ident in $place:ident {
            $($(#[$field_attr:meta])* $field:ident: $ty:ty),+ $(,)?
        }
    ) => {
        $(#[$attr])*
        #[derive(Deserialize, IntoParams)]
        #[into_params(parameter_in = $place)]
        struct $name {
            $($(#[$field_attr])* $field: $ty),+
        }
    };
}

/// The path and precondition parameters, with the patterns of a resource name, a Mesh name
/// and a list of ETags each spelled once (utoipa's `pattern =` takes a literal, not a
/// constant: the literals come in as the macro's arguments).
macro_rules! patterned_parameters {
    (name = $name:literal, mesh = $mesh:literal, etags = $etags:literal) => {
        #[cfg(test)]
        const NAME_PATTERN: &str = $name;
        #[cfg(test)]
        const MESH_PATTERN: &str = $mesh;
        #[cfg(test)]
        const ETAGS_PATTERN: &str = $etags;

        parameters! {
            struct MeshPath in Path {
                /// The Mesh.
                #[param(min_length = 1, max_length = 63, pattern = $mesh)]
                mesh: String,
            }
        }
        parameters! {
            struct SecretPath in Path {
                /// The Mesh.
                #[param(min_length = 1, max_length = 63, pattern = $mesh)]
                mesh: String,
                /// The Secret.
                #[param(min_length = 1, max_length = 253, pattern = $name)]
                name: String,
            }
        }
        parameters! {
            struct NamePath in Path {
                /// The resource's name.
                #[param(min_length = 1, max_length = 253, pattern = $name)]
                name: String,
            }
        }
        parameters! {
            struct MeshNamePath in Path {
                /// The Mesh's name.
                #[param(min_length = 1, max_length = 63, pattern = $mesh)]
                name: String,
            }
        }
        parameters! {
            /// Conditional writes.
            struct WriteConditions in Header {
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
        parameters! {
            /// Conditional reads.
            struct ReadConditions in Header {
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
        parameters! {
            /// Conditional deletes.
            struct DeleteConditions in Header {
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
    struct ListQuery in Query {
        /// Page size (default 100).
        #[param(minimum = 1, maximum = 1000)]
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
    struct FormatQuery in Query {
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
    struct PurgeQuery in Query {
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
        $(#[$attr:meta])* enum $name:ident {
            $(#[doc = $bad_request:literal])* BadRequest,
            $($(#[doc = $doc:literal])* $status:literal $variant:ident,)*
        }
    ) => {
        $(#[$attr])*
        #[derive(utoipa::IntoResponses)]
        enum $name {
            $(#[doc = $bad_request])*
            #[response(status = 400)]
            BadRequest(ErrorSchema),
            /// Bad token.
            #[response(status = 401)]
            Unauthorized(ErrorSchema),
            /// Not an admin.
            #[response(status = 403)]
            Forbidden(ErrorSchema),
            $($(#[doc = $doc])* #[response(status = $status)] $variant(ErrorSchema),)*
            /// The store cannot be reached; retry (`Retry-After`).
            #[response(status = 503)]
            Unavailable(ErrorSchema),
        }
    };
}

error_responses! {
    /// Errors of a list.
    enum ListErrors {
        /// Bad parameters.
        BadRequest,
        /// No such Mesh.
        404 NotFound,
    }
}

error_responses! {
    /// Errors of a read or a delete.
    enum ItemErrors {
        /// Bad parameters, or a Secret in use by an mTLS backend (delete).
        BadRequest,
        /// Not found.
        404 NotFound,
        /// `If-Match` failed (delete).
        412 PreconditionFailed,
    }
}

/// A write that succeeded.
#[derive(utoipa::IntoResponses)]
enum Written {
    /// Updated.
    #[response(status = 200, headers(("ETag" = String, description = "\"<version>\"")))]
    Updated(EmptySchema),
    /// Created.
    #[response(status = 201, headers(("ETag" = String, description = "\"<version>\"")))]
    Created(EmptySchema),
}

error_responses! {
    /// Errors of a write.
    enum WriteErrors {
        /// Invalid.
        BadRequest,
        /// No such Mesh.
        404 NotFound,
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
        pub(super) fn $name() {}
    };
}

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
        operation!(
            #[utoipa::path(get, path = $list_path, tag = $kind,
                operation_id = concat!("get", $kind, "List", $suffix),
                summary = concat!("List ", $kind, "s"),
                params($($list_param),*),
                responses(
                    (status = 200, description = "A page", body = $list_schema),
                    ListErrors,
                ))]
            $list
        );
        operation!(
            #[utoipa::path(get, path = $item_path, tag = $kind,
                operation_id = concat!("get", $kind, $suffix),
                summary = concat!("Get a ", $kind, "; its ETag is its version"),
                params($item_param, ReadConditions $(, $get_param)*),
                responses(
                    (status = 200, description = "Found",
                        headers(("ETag" = String, description = "\"<version>\"")),
                        body = $get_schema),
                    (status = 304, description = "At a version `If-None-Match` named",
                        headers(("ETag" = String, description = "\"<version>\""))),
                    ItemErrors,
                ))]
            $get
        );
        operation!(
            #[utoipa::path(put, path = $item_path, tag = $kind,
                operation_id = concat!("put", $kind, $suffix),
                summary = concat!("Create or update a ", $kind),
                params($item_param, WriteConditions),
                request_body = $put_schema,
                responses(Written, WriteErrors))]
            $put
        );
        operation!(
            #[utoipa::path(delete, path = $item_path, tag = $kind,
                operation_id = concat!("delete", $kind, $suffix),
                summary = concat!("Delete a ", $kind),
                params($item_param, DeleteConditions $(, $delete_param)*),
                responses(
                    (status = 200, description = "Deleted", body = EmptySchema),
                    ItemErrors,
                ))]
            $delete
        );
    };
}

resource_operations!(
    type: "Secret", alias: "",
    list: "/meshes/{mesh}/secrets" (MeshPath, ListQuery) -> SecretListSchema,
    item: "/meshes/{mesh}/secrets/{name}" (SecretPath), get (FormatQuery) -> SecretResponse,
        put SecretItemSchema, delete (PurgeQuery),
    fns: get_secret_list, get_secret, put_secret, delete_secret
);
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
resource_operations!(
    type: "Mesh", alias: "",
    list: "/meshes" (ListQuery) -> MeshListSchema,
    item: "/meshes/{name}" (MeshNamePath), get () -> MeshItemSchema, put MeshItemSchema,
        delete (),
    fns: get_mesh_list, get_mesh, put_mesh, delete_mesh
);

/// The version history operations of one secret type under one spelling of its path:
/// `…/_versions`, `…/_rollback`, `…/_restore`.
macro_rules! history_operations {
    (
        type: $kind:literal, alias: $suffix:literal, item: $item_path:literal ($item_param:ident)
            -> $item_schema:ident,
        fns: $versions:ident, $rollback:ident, $restore:ident
    ) => {
        operation!(
            #[utoipa::path(get, path = concat!($item_path, "/_versions"), tag = $kind,
                operation_id = concat!("get", $kind, "Versions", $suffix),
                summary = concat!("List the versions kept of a ", $kind, ", newest first"),
                params($item_param),
                responses(
                    (status = 200, description = "Its versions", body = VersionListSchema),
                    ItemErrors,
                ))]
            $versions
        );
        operation!(
            #[utoipa::path(post, path = concat!($item_path, "/_rollback"), tag = $kind,
                operation_id = concat!("rollback", $kind, $suffix),
                summary = concat!("Write an earlier version of a ", $kind, " as a new version"),
                params($item_param, DeleteConditions),
                request_body = RollbackRequestSchema,
                responses(
                    (status = 200, description = "Rolled back",
                        headers(("ETag" = String, description = "\"<version>\"")),
                        body = $item_schema),
                    WriteErrors,
                ))]
            $rollback
        );
        operation!(
            #[utoipa::path(post, path = concat!($item_path, "/_restore"), tag = $kind,
                operation_id = concat!("restore", $kind, $suffix),
                summary = concat!("Bring a deleted ", $kind, " back from its history"),
                params($item_param),
                request_body(content = Option<RestoreRequestSchema>, description = "Optional: the version to restore (the newest kept by default)"),
                responses(
                    (status = 200, description = "Restored",
                        headers(("ETag" = String, description = "\"<version>\"")),
                        body = $item_schema),
                    WriteErrors,
                ))]
            $restore
        );
    };
}

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
        operation_id = "getSecretUsage", summary = "What mTLS backends use a Secret",
        params(SecretPath),
        responses(
            (status = 200, description = "Its uses", body = SecretUsageListSchema),
            ItemErrors,
        ))]
    get_secret_usage
);

/// An event of the change feed.
#[derive(ToSchema)]
#[schema(as = ChangeEvent)]
struct ChangeEventSchema {
    /// Its place in the store-wide, commit-ordered sequence.
    revision: i64,
    /// `create`, `update` or `delete`.
    #[schema(pattern = "^(create|update|delete)$")]
    operation: String,
    /// `Secret`, `GlobalSecret` or `Mesh`.
    #[schema(rename = "type")]
    resource_type: String,
    /// The Mesh of a Secret; null for a GlobalSecret and a Mesh.
    mesh: Option<String>,
    name: String,
    /// The resource's version after the change.
    version: i64,
    #[schema(format = DateTime)]
    time: String,
    /// Who made it: `{"name", "groups"}`.
    actor: Option<BTreeMap<String, serde_json::Value>>,
    #[schema(rename = "requestId")]
    request_id: Option<String>,
}

/// A page of the change feed.
#[derive(ToSchema)]
#[schema(as = Changes)]
struct ChangesSchema {
    events: Vec<ChangeEventSchema>,
    /// The revision to continue after.
    revision: i64,
}

parameters! {
    /// The change feed's parameters.
    struct ChangesQuery in Query {
        /// Events after this revision (default 0: from the start).
        #[param(minimum = 0)]
        after: Option<i64>,
        /// Events per answer (default 100).
        #[param(minimum = 1, maximum = 1000)]
        limit: Option<u32>,
        /// Wait up to this long for an event when there is none yet (`30s`; at most 60s, and at most nine tenths of the server's `--request-timeout`).
        #[param(pattern = "^(0|([0-9]{1,4}[dhms])+)$")]
        wait: Option<String>,
        /// Only this Mesh's events (its secrets and itself).
        mesh: Option<String>,
        /// Only events of this type.
        #[param(pattern = "^(Secret|GlobalSecret|Mesh)$")]
        r#type: Option<String>,
    }
}

error_responses! {
    /// Errors of the change feed.
    enum FeedErrors {
        /// Bad parameters.
        BadRequest,
        /// Retention pruned the events asked for: list again.
        410 Gone,
    }
}

operation!(
    #[utoipa::path(get, path = "/_changes", tag = "Changes", operation_id = "getChanges",
        summary = "The changes after a revision, in commit order (a long poll with `wait`)",
        params(ChangesQuery),
        responses(
            (status = 200, description = "Events, and the revision to continue after", body = ChangesSchema),
            FeedErrors,
        ))]
    get_changes
);

operation!(
    #[utoipa::path(get, path = "/_watch", tag = "Changes", operation_id = "watchChanges",
        summary = "The changes as server-sent events; `Last-Event-ID` resumes",
        params(ChangesQuery),
        responses(
            (status = 200, description = "A stream of `change` events, `id` the revision", body = WatchEventSchema, content_type = "text/event-stream"),
            FeedErrors,
        ))]
    watch_changes
);

operation!(
    #[utoipa::path(post, path = "/tokens/user", tag = "Token",
        operation_id = "generateUserToken", summary = "Issue a user token (admin only)",
        request_body = UserTokenRequestSchema,
        responses(
            (status = 200, description = "The token (a JWT)", body = String, content_type = "text/plain"),
            WriteErrors,
        ))]
    generate_user_token
);

/// An operation of the service itself: a GET tagged `Operations` whose operation id is
/// its name, with one body type and content type for each of its responses.
macro_rules! service_operation {
    ($name:ident, $path:literal, $summary:literal, body = $body:ty, content_type = $content:literal,
     $(($status:literal, $description:literal)),+) => {
        operation!(
            #[utoipa::path(get, path = $path, tag = "Operations", operation_id = stringify!($name),
                summary = $summary,
                responses($((status = $status, description = $description, body = $body, content_type = $content)),+))]
            $name
        );
    };
}

service_operation!(index, "/", "Product and version",
    body = BTreeMap<String, String>, content_type = "application/json",
    (200, "Product and version"));
service_operation!(
    healthz,
    "/healthz",
    "The process answers",
    body = String,
    content_type = "text/plain",
    (200, "ok")
);
service_operation!(
    readyz,
    "/readyz",
    "The store answers",
    body = String,
    content_type = "text/plain",
    (200, "ok"),
    (503, "The store cannot be reached")
);
service_operation!(
    metrics,
    "/metrics",
    "Prometheus metrics",
    body = String,
    content_type = "text/plain",
    (200, "Prometheus text format")
);
service_operation!(
    openapi,
    "/openapi.json",
    "This document",
    body = serde_json::Value,
    content_type = "application/json",
    (200, "OpenAPI 3.1")
);

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
        description = "Kuma-compatible API for Secret, GlobalSecret and Mesh resources, with ETag preconditions and cursor pagination."
    ),
    paths(
        get_secret_list, get_secret_list_in_all_meshes, get_secret, put_secret, delete_secret,
        get_secret_usage,
        get_secret_versions, rollback_secret, restore_secret,
        get_global_secret_versions, rollback_global_secret, restore_global_secret,
        get_global_secret_versions_alias, rollback_global_secret_alias,
        restore_global_secret_alias,
        get_global_secret_list, get_global_secret, put_global_secret, delete_global_secret,
        get_global_secret_list_alias, get_global_secret_alias, put_global_secret_alias,
        delete_global_secret_alias,
        get_mesh_list, get_mesh, put_mesh, delete_mesh,
        generate_user_token,
        get_changes, watch_changes,
        index, healthz, readyz, metrics, openapi,
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
}
