//! The service's own part of the OpenAPI document (`/`, `/healthz`, `/readyz`, `/metrics`,
//! `/openapi.json`).

#![allow(dead_code)] // The operation fns exist for their #[utoipa::path] attributes.

/// An operation of the service itself: a GET tagged `Operations` whose operation id is
/// its name, with one body type and content type for each of its responses.
macro_rules! service_operation {
    ($name:ident, $path:literal, $summary:literal, body = $body:ty, content_type = $content:literal,
     $(($status:literal, $description:literal)),+) => {
        $crate::api::openapi::operation!(
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
