//! The HTTP API against a real server on port 0, on both backends: Kuma's routes, bodies,
//! status codes and messages, the ETag extensions, bad input, and authentication.

#[macro_use]
mod common;

use common::server::{Backend, TestServer};
use kuma_secrets::api::ApiConfig;
use kuma_secrets::store::StoreOptions;
use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};

fn client() -> Client {
    Client::new()
}

async fn put(url: &str, body: &Value) -> Response {
    put_raw(url, &body.to_string()).await
}

async fn put_raw(url: &str, body: &str) -> Response {
    client()
        .put(url)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

async fn get(url: &str) -> Response {
    client().get(url).send().await.unwrap()
}

async fn delete(url: &str) -> Response {
    client().delete(url).send().await.unwrap()
}

/// `DELETE url` with `If-Match: if_match`.
async fn delete_if_match(url: &str, if_match: &str) -> Response {
    client()
        .delete(url)
        .header("if-match", if_match)
        .send()
        .await
        .unwrap()
}

async fn json_of(response: Response) -> Value {
    response.json().await.unwrap()
}

fn secret(mesh: &str, name: &str, data: &str) -> Value {
    json!({"type": "Secret", "name": name, "mesh": mesh, "data": data})
}

fn global(name: &str, data: &str) -> Value {
    json!({"type": "GlobalSecret", "name": name, "data": data})
}

async fn secret_count(server: &TestServer) -> u64 {
    let body = json_of(get(&server.at("/secrets")).await).await;
    body["total"].as_u64().unwrap()
}

fn fields(error: &Value) -> Vec<String> {
    error["invalid_parameters"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| p["field"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

// ---- CRUD ---------------------------------------------------------------------------------

async fn put_creates_then_updates_and_get_returns_kumas_json(backend: Backend) {
    let server = TestServer::start(backend).await;
    let url = server.at("/meshes/default/secrets/sec-1");

    let created = put(&url, &secret("default", "sec-1", "dGVzdAo=")).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    assert_eq!(created.headers()["etag"], "\"1\"");
    assert_eq!(created.text().await.unwrap(), "{}");

    let read = get(&url).await;
    assert_eq!(read.status(), StatusCode::OK);
    assert_eq!(read.headers()["etag"], "\"1\"");
    let text = read.text().await.unwrap();
    assert!(
        text.starts_with(r#"{"type":"Secret","mesh":"default","name":"sec-1","creationTime":""#),
        "{text}"
    );
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["data"], "dGVzdAo=");
    assert_eq!(
        body["labels"],
        json!({"kuma.io/env": "universal", "kuma.io/mesh": "default",
               "kuma.io/origin": "zone", "kuma.io/zone": "default"})
    );
    assert_eq!(body["creationTime"], body["modificationTime"]);

    let mut update = secret("default", "sec-1", "bmV3");
    update["labels"] = json!({"team": "payments"});
    update["creationTime"] = json!("2018-07-17T16:05:36.995Z");
    update["unknownField"] = json!(true);
    let updated = put(&url, &update).await;
    assert_eq!(updated.status(), StatusCode::OK);
    assert_eq!(updated.text().await.unwrap(), "{}");
    let body = json_of(get(&url).await).await;
    assert_eq!(body["data"], "bmV3");
    assert_eq!(body["labels"]["team"], "payments");
    assert_ne!(body["creationTime"], "2018-07-17T16:05:36.995Z");

    let deleted = delete(&url).await;
    assert_eq!(deleted.status(), StatusCode::OK);
    assert_eq!(deleted.text().await.unwrap(), "{}");
    let gone = get(&url).await;
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        json_of(gone).await,
        json!({"type": "/std-errors", "status": 404, "title": "Could not retrieve a resource",
               "detail": "Not found", "details": "Not found"})
    );
    let again = json_of(delete(&url).await).await;
    assert_eq!(again["title"], "Could not delete a resource");
    assert_eq!(again["status"], 404);
}

async fn global_secrets_answer_on_both_spellings(backend: Backend) {
    let server = TestServer::start(backend).await;
    for (i, base) in ["/global-secrets", "/globalsecrets"].iter().enumerate() {
        let name = format!("gs-{i}");
        let body = global(&name, "Z3MtMQo=");
        let created = put(&server.at(&format!("{base}/{name}")), &body).await;
        assert_eq!(created.status(), StatusCode::CREATED);
    }
    for base in ["/global-secrets", "/globalsecrets"] {
        let item = json_of(get(&server.at(&format!("{base}/gs-0"))).await).await;
        assert_eq!(item["type"], "GlobalSecret");
        assert!(item.get("mesh").is_none(), "{item}");
        assert_eq!(item["data"], "Z3MtMQo=");
        let list = json_of(get(&server.at(&format!("{base}?name=gs-"))).await).await;
        assert_eq!(list["total"], 2);
        assert_eq!(list["next"], Value::Null);
        let names: Vec<_> = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].clone())
            .collect();
        assert_eq!(names, [json!("gs-0"), json!("gs-1")]);
    }
    // GlobalSecrets never show up among mesh secrets.
    assert_eq!(secret_count(&server).await, 0);
}

async fn kubernetes_format_returns_a_manifest(backend: Backend) {
    let server = TestServer::start(backend).await;
    put(
        &server.at("/meshes/default/secrets/s"),
        &secret("default", "s", "dGVzdAo="),
    )
    .await;
    let manifest = json_of(get(&server.at("/meshes/default/secrets/s?format=k8s")).await).await;
    common::http::assert_secret_manifest(&manifest, "default", "dGVzdAo=");

    put(&server.at("/global-secrets/g"), &global("g", "eA==")).await;
    let manifest =
        json_of(get(&server.at("/global-secrets/g?format=kubernetes&namespace=ops")).await).await;
    assert_eq!(manifest["type"], "system.kuma.io/global-secret");
    assert_eq!(manifest["metadata"]["namespace"], "ops");

    let bad = get(&server.at("/global-secrets/g?format=xml")).await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let body = json_of(bad).await;
    assert_eq!(body["invalid_parameters"][0]["field"], "format");
}

async fn a_missing_mesh_is_404_on_every_verb(backend: Backend) {
    let server = TestServer::start(backend).await;
    let expected = json!({"type": "/std-errors", "status": 404, "title": "Failed to retrieve Mesh",
                          "detail": "Not found", "details": "Not found"});
    let item = server.at("/meshes/nomesh/secrets/x");
    assert_eq!(
        json_of(get(&server.at("/meshes/nomesh/secrets")).await).await,
        expected
    );
    assert_eq!(json_of(get(&item).await).await, expected);
    assert_eq!(
        json_of(put(&item, &secret("nomesh", "x", "eA==")).await).await,
        expected
    );
    assert_eq!(json_of(delete(&item).await).await, expected);
    assert_eq!(
        json_of(get(&server.at("/meshes/BAD%20MESH/secrets")).await).await,
        expected
    );
    // The item routes look the Mesh up only when a request fails; the Mesh's 404 still
    // comes before what else is wrong with the request.
    assert_eq!(json_of(put_raw(&item, "{not json").await).await, expected);
    assert_eq!(
        json_of(put(&item, &secret("nomesh", "other-name", "eA==")).await).await,
        expected
    );
    let conditional = client()
        .get(&item)
        .header("If-None-Match", "\"1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(json_of(conditional).await, expected);
}

async fn deleting_a_mesh_deletes_its_secrets(backend: Backend) {
    let server = TestServer::start(backend).await;
    let created = put(
        &server.at("/meshes/demo"),
        &json!({"type": "Mesh", "name": "demo"}),
    )
    .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    put(
        &server.at("/meshes/demo/secrets/a"),
        &secret("demo", "a", "eA=="),
    )
    .await;
    put(
        &server.at("/meshes/default/secrets/a"),
        &secret("default", "a", "eA=="),
    )
    .await;
    assert_eq!(secret_count(&server).await, 2);
    assert_eq!(
        delete(&server.at("/meshes/demo")).await.status(),
        StatusCode::OK
    );
    assert_eq!(secret_count(&server).await, 1);
    put(
        &server.at("/meshes/demo"),
        &json!({"type": "Mesh", "name": "demo"}),
    )
    .await;
    let list = json_of(get(&server.at("/meshes/demo/secrets")).await).await;
    assert_eq!(list["total"], 0);
}

async fn meshes_keep_their_spec_fields(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mesh = json!({"type": "Mesh", "name": "m1",
        "mtls": {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]}});
    assert_eq!(
        put(&server.at("/meshes/m1"), &mesh).await.status(),
        StatusCode::CREATED
    );
    let read = json_of(get(&server.at("/meshes/m1")).await).await;
    assert_eq!(read["mtls"], mesh["mtls"]);
    assert_eq!(read["type"], "Mesh");
    let list = json_of(get(&server.at("/meshes")).await).await;
    assert_eq!(list["total"], 2);
    let bad = put(
        &server.at("/meshes/m_2"),
        &json!({"type": "Mesh", "name": "m_2"}),
    )
    .await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
}

// ---- lists --------------------------------------------------------------------------------

async fn lists_paginate_and_filter_in_kumas_shape(backend: Backend) {
    let server = TestServer::start(backend).await;
    for i in 1..=5 {
        let mut body = secret("default", &format!("res-{i}"), "eA==");
        body["labels"] = json!({"parity": if i % 2 == 0 { "even" } else { "odd" }});
        put(
            &server.at(&format!("/meshes/default/secrets/res-{i}")),
            &body,
        )
        .await;
    }

    let first = json_of(get(&server.at("/meshes/default/secrets?size=2")).await).await;
    assert_eq!(first["total"], 5);
    assert_eq!(first["items"].as_array().unwrap().len(), 2);
    let next = first["next"].as_str().unwrap();
    assert!(
        next.starts_with(&server.at("/meshes/default/secrets?cursor=")),
        "{next}"
    );
    assert!(
        next.contains("offset=2") && next.ends_with("size=2"),
        "{next}"
    );

    // Following `next` visits every item once.
    let mut seen = Vec::new();
    let mut url = Some(server.at("/meshes/default/secrets?size=2"));
    while let Some(u) = url {
        let page = json_of(get(&u).await).await;
        for item in page["items"].as_array().unwrap() {
            seen.push(item["name"].as_str().unwrap().to_owned());
        }
        url = page["next"].as_str().map(str::to_owned);
    }
    assert_eq!(seen, ["res-1", "res-2", "res-3", "res-4", "res-5"]);

    // Kuma clients page by offset alone.
    let by_offset = json_of(get(&server.at("/meshes/default/secrets?size=2&offset=4")).await).await;
    assert_eq!(by_offset["items"][0]["name"], "res-5");
    assert_eq!(by_offset["next"], Value::Null);

    let even = json_of(get(&server.at("/secrets?filter%5Blabels.parity%5D=even")).await).await;
    assert_eq!(even["total"], 2);
    let named = json_of(get(&server.at("/meshes/default/secrets?name=res-3")).await).await;
    assert_eq!(named["total"], 1);

    let bad_size = json_of(get(&server.at("/secrets?size=2000")).await).await;
    assert_eq!(bad_size["status"], 400);
    assert_eq!(bad_size["detail"], "Invalid page size");
    assert_eq!(
        bad_size["invalid_parameters"][0]["reason"],
        "invalid page size of 2000. Maximum page size is 1000"
    );
    let bad_offset = json_of(get(&server.at("/secrets?offset=invalid")).await).await;
    assert_eq!(bad_offset["status"], 400);
    let bad_filter = json_of(get(&server.at("/secrets?filter%5Bspec.x%5D=1")).await).await;
    // Kuma's shape: "Resource is not valid", the field the route template plus the filter.
    assert_eq!(bad_filter["detail"], "Resource is not valid");
    assert_eq!(
        bad_filter["invalid_parameters"][0]["field"],
        "/secrets.filter[spec.x]"
    );
    assert_eq!(
        bad_filter["invalid_parameters"][0]["reason"],
        "filters are only supported on labels"
    );
}

// ---- validation and bad input -------------------------------------------------------------

async fn url_and_body_must_agree(backend: Backend) {
    let server = TestServer::start(backend).await;
    let url = server.at("/meshes/default/secrets/sec-1");
    let wrong = json!({"type": "GlobalSecret", "name": "other", "mesh": "demo", "data": "eA=="});
    let response = put(&url, &wrong).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body = json_of(response).await;
    assert_eq!(body["title"], "Could not process a resource");
    assert_eq!(body["detail"], "Resource is not valid");
    assert_eq!(fields(&body), ["name", "type", "mesh"]);
    assert_eq!(
        body["invalid_parameters"][0]["reason"],
        "name from the URL has to be the same as in body"
    );
    assert_eq!(
        body["invalid_parameters"][2]["reason"],
        "mesh from the URL has to be the same as in body"
    );
    assert_eq!(secret_count(&server).await, 0);
}

async fn bad_input_gets_a_clear_4xx_and_changes_nothing(backend: Backend) {
    let server = TestServer::start(backend).await;
    let url = server.at("/meshes/default/secrets/s");
    put(&url, &secret("default", "s", "b3JpZ2luYWw=")).await;

    let cases: Vec<(&str, String, StatusCode, &str)> = vec![
        ("malformed JSON", "{\"type\":".into(), StatusCode::BAD_REQUEST, "malformed JSON"),
        ("not an object", "[1,2]".into(), StatusCode::BAD_REQUEST, "JSON object"),
        ("YAML", "type: Secret\nname: s\n".into(), StatusCode::BAD_REQUEST, "malformed JSON"),
        ("url-safe base64", secret("default", "s", "-_-_").to_string(), StatusCode::BAD_REQUEST,
         "illegal base64 data at input byte 0"),
        ("unpadded base64", secret("default", "s", "dGVzdAo").to_string(), StatusCode::BAD_REQUEST,
         "illegal base64 data"),
        ("data of the wrong type", json!({"type": "Secret", "name": "s", "mesh": "default", "data": 5}).to_string(),
         StatusCode::BAD_REQUEST, "data must be a base64 string"),
        ("labels of the wrong type", json!({"type": "Secret", "name": "s", "mesh": "default", "data": "eA==", "labels": {"a": 1}}).to_string(),
         StatusCode::BAD_REQUEST, "must be a string"),
        ("no data", json!({"type": "Secret", "name": "s", "mesh": "default"}).to_string(),
         StatusCode::BAD_REQUEST, "Resource is not valid"),
        ("empty data", secret("default", "s", "").to_string(), StatusCode::BAD_REQUEST,
         "Resource is not valid"),
        ("hostile labels", json!({"type": "Secret", "name": "s", "mesh": "default", "data": "eA==",
                                  "labels": {"../../etc": "x", "k": "'; DROP TABLE secrets; --"}}).to_string(),
         StatusCode::BAD_REQUEST, "Resource is not valid"),
    ];
    for (what, body, status, needle) in cases {
        let response = put_raw(&url, &body).await;
        assert_eq!(response.status(), status, "{what}");
        let text = response.text().await.unwrap();
        assert!(text.contains(needle), "{what}: {text}");
        assert!(
            text.starts_with(r#"{"type":"/std-errors""#),
            "{what}: {text}"
        );
    }

    let no_content_type = client()
        .put(&url)
        .body(secret("default", "s", "eA==").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(no_content_type.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // Hostile names: rejected or not found, never a 500.
    for name in [
        "UPPER",
        "a_b",
        "..",
        "a%2Fb",
        "%00",
        "x".repeat(300).as_str(),
        "%C3%A9",
        "a..b",
    ] {
        let u = server.at(&format!("/meshes/default/secrets/{name}"));
        let status = put(&u, &secret("default", name, "eA==")).await.status();
        assert!(
            status == StatusCode::BAD_REQUEST || status == StatusCode::NOT_FOUND,
            "{name}: {status}"
        );
        assert_eq!(get(&u).await.status(), StatusCode::NOT_FOUND, "{name}");
        assert_eq!(delete(&u).await.status(), StatusCode::NOT_FOUND, "{name}");
    }

    let item = json_of(get(&url).await).await;
    assert_eq!(item["data"], "b3JpZ2luYWw=");
    assert_eq!(secret_count(&server).await, 1);
}

async fn oversized_data_and_bodies_are_413_naming_the_limit(backend: Backend) {
    let config = ApiConfig {
        max_secret_size: 1024,
        ..ApiConfig::default()
    };
    let options = StoreOptions {
        max_secret_size: 1024,
        ..StoreOptions::allow_plaintext_secrets()
    };
    let server = TestServer::start_with(backend, config, options).await;
    let url = server.at("/meshes/default/secrets/big");
    use base64::Engine;
    let encode = |n: usize| base64::engine::general_purpose::STANDARD.encode(vec![7u8; n]);

    assert_eq!(
        put(&url, &secret("default", "big", &encode(1024)))
            .await
            .status(),
        StatusCode::CREATED
    );

    let over = put(&url, &secret("default", "big", &encode(1025))).await;
    assert_eq!(over.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body = json_of(over).await;
    assert!(body["detail"].as_str().unwrap().contains("1024"), "{body}");

    let huge = put(&url, &secret("default", "big", &encode(1024 * 1024))).await;
    assert_eq!(huge.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body = json_of(huge).await;
    assert_eq!(body["type"], "/std-errors");

    let item = json_of(get(&url).await).await;
    assert_eq!(item["data"], encode(1024));
}

// ---- preconditions ------------------------------------------------------------------------

async fn if_match_and_if_none_match_guard_writes(backend: Backend) {
    let server = TestServer::start(backend).await;
    let url = server.at("/global-secrets/guarded");
    let with = async |h: &'static str, v: &'static str, data: &str| {
        client()
            .put(&url)
            .header("content-type", "application/json")
            .header(h, v)
            .body(global("guarded", data).to_string())
            .send()
            .await
            .unwrap()
    };

    // Create-only.
    assert_eq!(
        with("if-none-match", "*", "djE=").await.status(),
        StatusCode::CREATED
    );
    assert_eq!(
        with("if-none-match", "*", "djI=").await.status(),
        StatusCode::PRECONDITION_FAILED
    );

    // Update only from the version read.
    let stale = with("if-match", "\"7\"", "djI=").await;
    assert_eq!(stale.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(json_of(stale).await["title"], "Precondition Failed");
    let ok = with("if-match", "\"1\"", "djI=").await;
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(ok.headers()["etag"], "\"2\"");
    assert_eq!(
        with("if-match", "\"1\"", "djM=").await.status(),
        StatusCode::PRECONDITION_FAILED
    );
    assert_eq!(json_of(get(&url).await).await["data"], "djI=");

    // If-Match on a missing resource fails rather than creating it.
    let missing = client()
        .put(server.at("/global-secrets/missing"))
        .header("content-type", "application/json")
        .header("if-match", "*")
        .body(global("missing", "eA==").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(
        get(&server.at("/global-secrets/missing")).await.status(),
        StatusCode::NOT_FOUND
    );

    // Versioned delete.
    let stale_delete = delete_if_match(&url, "\"1\"").await;
    assert_eq!(stale_delete.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(get(&url).await.status(), StatusCode::OK);
    let delete_ok = delete_if_match(&url, "\"2\"").await;
    assert_eq!(delete_ok.status(), StatusCode::OK);
    assert_eq!(get(&url).await.status(), StatusCode::NOT_FOUND);

    let garbage = delete_if_match(&url, "seven").await;
    assert_eq!(garbage.status(), StatusCode::BAD_REQUEST);
}

// ---- concurrency --------------------------------------------------------------------------

/// Read, increment, write with If-Match, retry on 412: `writers` x `increments` each.
async fn increment_over_http(urls: Vec<String>, writers: usize, increments: usize) {
    let mut tasks = Vec::new();
    for w in 0..writers {
        let url = urls[w % urls.len()].clone();
        tasks.push(tokio::spawn(async move {
            let client = Client::new();
            for _ in 0..increments {
                loop {
                    let read = client.get(&url).send().await.unwrap();
                    let etag = read.headers()["etag"].to_str().unwrap().to_owned();
                    let body: Value = read.json().await.unwrap();
                    use base64::Engine;
                    let engine = base64::engine::general_purpose::STANDARD;
                    let n: u64 =
                        String::from_utf8(engine.decode(body["data"].as_str().unwrap()).unwrap())
                            .unwrap()
                            .parse()
                            .unwrap();
                    let next = engine.encode((n + 1).to_string());
                    let written = client
                        .put(&url)
                        .header("content-type", "application/json")
                        .header("if-match", etag)
                        .body(global("counter", &next).to_string())
                        .send()
                        .await
                        .unwrap();
                    match written.status() {
                        StatusCode::OK => break,
                        StatusCode::PRECONDITION_FAILED => continue,
                        other => panic!("unexpected {other}: {}", written.text().await.unwrap()),
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

async fn concurrent_http_writers_lose_no_update(backend: Backend) {
    let server = TestServer::start(backend).await;
    let url = server.at("/global-secrets/counter");
    use base64::Engine;
    put(
        &url,
        &global(
            "counter",
            &base64::engine::general_purpose::STANDARD.encode("0"),
        ),
    )
    .await;
    increment_over_http(vec![url.clone()], 8, 20).await;
    let response = get(&url).await;
    assert_eq!(response.headers()["etag"], "\"161\"");
    assert_eq!(
        json_of(response).await["data"],
        base64::engine::general_purpose::STANDARD.encode("160")
    );
}

// ---- health, metrics, openapi -------------------------------------------------------------

async fn health_metrics_and_openapi_are_served(backend: Backend) {
    let server = TestServer::start(backend).await;
    assert_eq!(get(&server.at("/healthz")).await.status(), StatusCode::OK);
    assert_eq!(get(&server.at("/readyz")).await.status(), StatusCode::OK);
    put(
        &server.at("/meshes/default/secrets/m"),
        &secret("default", "m", "eA=="),
    )
    .await;
    get(&server.at("/meshes/default/secrets/m")).await;

    let metrics = get(&server.at("/metrics")).await.text().await.unwrap();
    assert!(
        metrics.contains(r#"kuma_secrets_http_requests_total{method="GET",route="/meshes/{mesh}/secrets/{name}",status="200"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"kuma_secrets_store_operation_duration_seconds_count{operation="put_secret",outcome="ok"} 1"#), "{metrics}");
    assert!(!metrics.contains("eA=="));

    let spec = json_of(get(&server.at("/openapi.json")).await).await;
    for path in [
        "/meshes/{mesh}/secrets",
        "/meshes/{mesh}/secrets/{name}",
        "/secrets",
        "/global-secrets",
        "/global-secrets/{name}",
        "/globalsecrets",
        "/globalsecrets/{name}",
        "/meshes",
        "/meshes/{name}",
        "/tokens/user",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(
            spec["paths"].get(path).is_some(),
            "{path} missing from openapi.json"
        );
    }
}

on_both_backends! {
    put_creates_then_updates_and_get_returns_kumas_json,
    global_secrets_answer_on_both_spellings,
    kubernetes_format_returns_a_manifest,
    a_missing_mesh_is_404_on_every_verb,
    deleting_a_mesh_deletes_its_secrets,
    meshes_keep_their_spec_fields,
    lists_paginate_and_filter_in_kumas_shape,
    url_and_body_must_agree,
    bad_input_gets_a_clear_4xx_and_changes_nothing,
    oversized_data_and_bodies_are_413_naming_the_limit,
    if_match_and_if_none_match_guard_writes,
    concurrent_http_writers_lose_no_update,
    health_metrics_and_openapi_are_served,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_servers_on_one_postgres_lose_no_update() {
    let first = TestServer::start(Backend::Postgres).await;
    let db_url = match &first.guard {
        common::server::Guard::Postgres(db) => db.url.clone(),
        common::server::Guard::Sqlite(_) => unreachable!(),
    };
    let mut others = Vec::new();
    for _ in 0..2 {
        let store = kuma_secrets::store::AnyStore::open(
            &db_url,
            common::sealed(StoreOptions::allow_plaintext_secrets()),
        )
        .await
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        others.push(
            TestServer::start_on(
                store,
                common::server::Guard::Sqlite(dir),
                ApiConfig::default(),
            )
            .await,
        );
    }
    use base64::Engine;
    put(
        &first.at("/global-secrets/counter"),
        &global(
            "counter",
            &base64::engine::general_purpose::STANDARD.encode("0"),
        ),
    )
    .await;
    let urls = vec![
        first.at("/global-secrets/counter"),
        others[0].at("/global-secrets/counter"),
        others[1].at("/global-secrets/counter"),
    ];
    increment_over_http(urls, 6, 20).await;
    let response = get(&others[1].at("/global-secrets/counter")).await;
    assert_eq!(response.headers()["etag"], "\"121\"");
    assert_eq!(
        json_of(response).await["data"],
        base64::engine::general_purpose::STANDARD.encode("120")
    );
}
