//! Small HTTP and store helpers the black-box suites share.

use super::server::TestServer;
use kuma_secrets::domain::SecretKey;
use kuma_secrets::store::{SecretStore, StoreError};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

/// Standard padded base64, as `data` travels.
pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `PUT path` with a JSON body: status and JSON answer.
pub async fn put_json(server: &TestServer, path: &str, body: Value) -> (StatusCode, Value) {
    let response = Client::new()
        .put(server.at(path))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

/// `GET path` answered 200: its JSON body.
pub async fn get_json(server: &TestServer, path: &str) -> Value {
    let response = Client::new().get(server.at(path)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "GET {path}");
    response.json().await.unwrap()
}

/// `GET url`, whatever its status: the JSON body.
pub async fn fetch_json(url: impl reqwest::IntoUrl) -> Value {
    Client::new()
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// `GET url`, whatever its status: the body as text.
pub async fn fetch_text(url: impl reqwest::IntoUrl) -> String {
    Client::new()
        .get(url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The `name` of each item of a list body, in order.
pub fn item_names(body: &Value) -> Vec<String> {
    body["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|i| i["name"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The (field, reason) pairs of a Kuma error body, in order.
pub fn violations(body: &Value) -> Vec<(String, String)> {
    body["invalid_parameters"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|p| {
                    (
                        p["field"].as_str().unwrap().to_owned(),
                        p["reason"].as_str().unwrap().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `DELETE path`: status and JSON answer.
pub async fn delete_path(server: &TestServer, path: &str) -> (StatusCode, Value) {
    let response = Client::new().delete(server.at(path)).send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

/// Creates or updates Secret `name` in `mesh` through the API; panics unless it succeeds.
pub async fn put_secret(server: &TestServer, mesh: &str, name: &str, data: impl AsRef<[u8]>) {
    put_secret_at(&server.url, mesh, name, data).await;
}

/// [`put_secret`] through the API at `base` (`http://HOST:PORT`), a `serve` process say.
pub async fn put_secret_at(base: &str, mesh: &str, name: &str, data: impl AsRef<[u8]>) {
    let response = Client::new()
        .put(format!("{base}/meshes/{mesh}/secrets/{name}"))
        .json(&json!({"type": "Secret", "mesh": mesh, "name": name, "data": b64(data)}))
        .send()
        .await
        .unwrap();
    let status = response.status();
    assert!(
        status.is_success(),
        "{status} {}",
        response.text().await.unwrap_or_default()
    );
}

/// The stored bytes of a secret, read from the store under the server; `None` if absent.
pub async fn stored(server: &TestServer, mesh: Option<&str>, name: &str) -> Option<Vec<u8>> {
    match server
        .store
        .get_secret(&SecretKey::parse(mesh, name).unwrap())
        .await
    {
        Ok(secret) => Some(secret.data.expose().to_vec()),
        Err(StoreError::NotFound(_)) => None,
        Err(other) => panic!("{other}"),
    }
}

/// `GET url`, answered.
pub async fn send_get(url: impl reqwest::IntoUrl) -> reqwest::Response {
    reqwest::Client::new().get(url).send().await.unwrap()
}

/// `GET url` with `Cache-Control: no-cache`: from the database, past the read cache.
pub async fn get_fresh(url: impl reqwest::IntoUrl) -> reqwest::Response {
    Client::new()
        .get(url)
        .header("Cache-Control", "no-cache")
        .send()
        .await
        .unwrap()
}

/// `GET url` with a bearer token, answered.
pub async fn get_as(url: impl reqwest::IntoUrl, token: &str) -> reqwest::Response {
    Client::new()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

/// `PUT /meshes/{name}` of a Mesh with no spec: status and JSON answer.
pub async fn put_plain_mesh(server: &TestServer, name: &str) -> (StatusCode, Value) {
    put_json(
        server,
        &format!("/meshes/{name}"),
        json!({"type": "Mesh", "name": name}),
    )
    .await
}

/// `DELETE url`, answered.
pub async fn send_delete(url: impl reqwest::IntoUrl) -> reqwest::Response {
    reqwest::Client::new().delete(url).send().await.unwrap()
}

/// Sends `request`; returns its status, ETag and JSON body (`null` if none).
pub async fn send(request: reqwest::RequestBuilder) -> (StatusCode, Option<String>, Value) {
    let response = request.send().await.unwrap();
    let status = response.status();
    let etag = response
        .headers()
        .get("etag")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, etag, response.json().await.unwrap_or(Value::Null))
}

/// A Secret's PUT body: `{"type": "Secret", "mesh", "name", "data": base64}`.
pub fn secret_json(mesh: &str, name: &str, data: impl AsRef<[u8]>) -> Value {
    json!({"type": "Secret", "mesh": mesh, "name": name, "data": b64(data)})
}

/// `manifest` is Kuma's Kubernetes manifest of a Secret of `mesh` in `kuma-system` whose
/// `data.value` is `value` (base64).
pub fn assert_secret_manifest(manifest: &Value, mesh: &str, value: &str) {
    assert_eq!(manifest["apiVersion"], "v1");
    assert_eq!(manifest["kind"], "Secret");
    assert_eq!(manifest["type"], "system.kuma.io/secret");
    assert_eq!(manifest["metadata"]["namespace"], "kuma-system");
    assert_eq!(manifest["metadata"]["labels"]["kuma.io/mesh"], mesh);
    assert_eq!(manifest["data"]["value"], value);
}

/// The version an answer's `ETag` names.
pub fn version_of(response: &reqwest::Response) -> i64 {
    response.headers()["etag"]
        .to_str()
        .unwrap()
        .trim_matches('"')
        .parse()
        .unwrap()
}

/// Creates secret `name` (in `mesh`, or a GlobalSecret) holding `data`, unlabelled, in
/// `store` directly; panics unless it is created.
pub async fn create_in_store<S: SecretStore>(
    store: &S,
    mesh: Option<&str>,
    name: &str,
    data: impl Into<Vec<u8>>,
) -> kuma_secrets::domain::Secret {
    let secret = kuma_secrets::domain::NewSecret {
        key: SecretKey::parse(mesh, name).unwrap(),
        data: kuma_secrets::domain::SecretData::new(data.into()).unwrap(),
        labels: kuma_secrets::domain::Labels::default(),
    };
    store.create_secret(secret).await.unwrap()
}

/// Sets secret `key`'s data in `store` (its labels kept), at the version it has now.
pub async fn set_secret_data<S: SecretStore>(
    store: &S,
    key: &SecretKey,
    data: impl Into<Vec<u8>>,
) -> Result<kuma_secrets::domain::Secret, StoreError> {
    let current = store.get_secret(key).await.unwrap();
    let data = kuma_secrets::domain::SecretData::new(data.into()).unwrap();
    let update = kuma_secrets::domain::SecretUpdate {
        data,
        labels: current.labels,
    };
    store.update_secret(key, current.meta.version, update).await
}

/// Sets Mesh `mesh`'s spec in `store` (its labels kept), at the version it has now.
pub async fn set_mesh_spec<S: SecretStore>(
    store: &S,
    mesh: &kuma_secrets::domain::MeshName,
    spec: serde_json::Map<String, Value>,
) -> Result<kuma_secrets::domain::Mesh, StoreError> {
    let current = store.get_mesh(mesh).await.unwrap();
    store
        .update_mesh(
            mesh,
            current.meta.version,
            kuma_secrets::domain::MeshUpdate {
                spec,
                labels: current.labels,
            },
        )
        .await
}
