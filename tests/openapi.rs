//! The OpenAPI document against the router, both directions: every operation the document
//! lists is served (by a running server, for its method), every route the server registers
//! is in the document, and no route is registered outside the documented builder.

#[macro_use]
mod common;

use common::http::fetch_json;
use common::server::{Backend, TestServer};
use reqwest::{Client, Method, StatusCode};
use serde_json::Value;
use std::collections::BTreeSet;

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "patch", "head", "options", "trace",
];

/// `(METHOD, path)` of every operation in the document.
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut operations = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in METHODS {
            if item.get(method).is_some() {
                operations.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    operations
}

async fn every_documented_operation_is_served_and_every_route_is_documented(backend: Backend) {
    let server = TestServer::start(backend).await;
    let client = Client::new();
    let doc: Value = fetch_json(server.at("/openapi.json")).await;
    let documented = documented(&doc);

    // Router to document: what the server registers is exactly what is documented.
    let served: BTreeSet<(String, String)> =
        kuma_secrets::api::served_operations().into_iter().collect();
    assert_eq!(
        served.difference(&documented).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "served but not documented"
    );
    assert_eq!(
        documented.difference(&served).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "documented but not served"
    );

    // Document to router, on the wire: each operation reaches a handler for its method (a
    // handler's 404 carries Kuma's error body; the router's carries nothing).
    for (method, path) in &documented {
        let url = server.at(&path
            .replace("{mesh}", "default")
            .replace("{name}", "default")
            .replace("{asset}", "missing.js"));
        let response = client
            .request(Method::from_bytes(method.as_bytes()).unwrap(), &url)
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        let status = response.status();
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        if status == StatusCode::NOT_FOUND {
            let body: Value = response.json().await.unwrap_or(Value::Null);
            assert_eq!(body["type"], "/std-errors", "{method} {path}: no route");
        }
    }
}

on_both_backends! {
    every_documented_operation_is_served_and_every_route_is_documented,
}

/// Every route goes through the documented builder (`Routes::add`, which takes its path
/// and method from the operation): no `.route(` anywhere else in the API.
#[test]
fn no_route_is_registered_outside_the_documented_builder() {
    let api = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api");
    let mut offenders = Vec::new();
    let mut stack = vec![api];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().unwrap() != "openapi.rs"
                && std::fs::read_to_string(&path).unwrap().contains(".route(")
            {
                offenders.push(path.display().to_string());
            }
        }
    }
    assert!(offenders.is_empty(), "raw routes in {offenders:?}");
}
