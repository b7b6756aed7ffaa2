//! Authentication and access, against a real server: localhost-is-admin only for direct
//! loopback requests, bearer user tokens (valid admin, valid non-admin, expired, tampered,
//! `alg: none`, HMAC-forged, unknown key, revoked), and Kuma's 401/403 bodies.

#[macro_use]
mod common;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::server::{Backend, TestServer};
use kuma_secrets::domain::SecretKey;
use kuma_secrets::store::SecretStore;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

async fn status_with(server: &TestServer, token: Option<&str>) -> (StatusCode, Value) {
    let mut request = Client::new().get(server.at("/secrets"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

async fn issue(server: &TestServer, admin: &str, body: Value) -> reqwest::Response {
    Client::new()
        .post(server.at("/tokens/user"))
        .bearer_auth(admin)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

/// A token the admin issues for `body` (which must be valid).
async fn issued_token(server: &TestServer, admin: &str, body: Value) -> String {
    let response = issue(server, admin, body).await;
    assert_eq!(response.status(), StatusCode::OK);
    response.text().await.unwrap()
}

/// A token for user `ops`, an admin by group (`mesh-system:admin`), valid for an hour.
async fn ops_admin_token(server: &TestServer, admin: &str) -> String {
    let body = json!({"name": "ops", "groups": ["mesh-system:admin"], "validFor": "1h"});
    issued_token(server, admin, body).await
}

fn unauthenticated() -> Value {
    json!({"type": "/std-errors", "status": 401, "title": "Invalid authentication data",
           "detail": "Unauthenticated", "details": "Unauthenticated"})
}

async fn loopback_is_admin_only_when_direct(backend: Backend) {
    let server = TestServer::start(backend).await;
    let client = Client::new();
    let get = |headers: &[(&'static str, &'static str)]| {
        let mut r = client.get(server.at("/secrets"));
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.send()
    };
    assert_eq!(get(&[]).await.unwrap().status(), StatusCode::OK);
    assert_eq!(
        get(&[("origin", "http://127.0.0.1")])
            .await
            .unwrap()
            .status(),
        StatusCode::FORBIDDEN,
        "an origin on another port is another site"
    );
    let denied = json!({"type": "/std-errors", "status": 403, "title": "Access Denied",
        "detail": "user \"mesh-system:anonymous/mesh-system:unauthenticated\" cannot access the resource of type \"Secret\"",
        "details": "user \"mesh-system:anonymous/mesh-system:unauthenticated\" cannot access the resource of type \"Secret\""});
    for header in [
        ("x-forwarded-for", "1.2.3.4"),
        ("forwarded", "for=1.2.3.4"),
        ("x-real-ip", "1.2.3.4"),
        ("host", "kuma.example.com"),
        ("origin", "https://evil.com"),
        ("sec-fetch-site", "cross-site"),
    ] {
        let response = get(&[header]).await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{header:?}");
        assert_eq!(
            response.json::<Value>().await.unwrap(),
            denied,
            "{header:?}"
        );
    }
    // Every verb is admin-only, GlobalSecrets included; Mesh reads stay open, as in Kuma.
    let put_body = json!({"type": "GlobalSecret", "name": "x", "data": "eA=="}).to_string();
    for (request, (header, value), expected) in [
        (
            client
                .put(server.at("/global-secrets/x"))
                .header("content-type", "application/json")
                .body(put_body),
            ("x-forwarded-for", "1.2.3.4"),
            StatusCode::FORBIDDEN,
        ),
        (
            client.delete(server.at("/global-secrets/admin-user-token")),
            ("x-real-ip", "1.2.3.4"),
            StatusCode::FORBIDDEN,
        ),
        (
            client.get(server.at("/meshes")),
            ("x-real-ip", "1.2.3.4"),
            StatusCode::OK,
        ),
    ] {
        let response = request.header(header, value).send().await.unwrap();
        assert_eq!(response.status(), expected, "{header}: {value}");
    }
}

async fn tokens_decide_access_when_localhost_is_not_admin(backend: Backend) {
    let server = TestServer::start_tokens_only(backend).await;
    let admin = server.admin_token().await;

    assert_eq!(status_with(&server, None).await.0, StatusCode::FORBIDDEN);
    assert_eq!(status_with(&server, Some(&admin)).await.0, StatusCode::OK);

    // A non-admin user: authenticated, but not allowed near secrets.
    let issued = issue(
        &server,
        &admin,
        json!({"name": "john", "groups": ["users"], "validFor": "24h"}),
    )
    .await;
    assert_eq!(issued.status(), StatusCode::OK);
    let john = issued.text().await.unwrap();
    let (status, body) = status_with(&server, Some(&john)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body["detail"],
        "user \"john/users,mesh-system:authenticated\" cannot access the resource of type \"Secret\""
    );
    assert_eq!(
        issue(&server, &john, json!({"name": "x", "validFor": "1h"}))
            .await
            .status(),
        StatusCode::FORBIDDEN
    );

    // Admin by group.
    let ops = ops_admin_token(&server, &admin).await;
    assert_eq!(status_with(&server, Some(&ops)).await.0, StatusCode::OK);

    let bad = issue(&server, &admin, json!({"name": "x", "validFor": "forever"})).await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let body: Value = bad.json().await.unwrap();
    assert_eq!(body["invalid_parameters"][0]["field"], "validFor");
}

async fn forged_expired_and_revoked_tokens_are_401(backend: Backend) {
    let server = TestServer::start_tokens_only(backend).await;
    let admin = server.admin_token().await;
    let parts: Vec<&str> = admin.split('.').collect();
    assert_eq!(parts.len(), 3);

    // Tampered signature.
    let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    sig[0] ^= 1;
    let tampered = format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(sig));
    // Tampered claims (escalation attempt) with the original signature.
    let claims = json!({"Name": "mallory", "Groups": ["mesh-system:admin"], "exp": 4_000_000_000i64,
                        "iat": 0, "nbf": 0, "jti": "x"});
    let escalated = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        parts[2]
    );
    // alg: none.
    let none_header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT","kid":"1"}"#);
    let alg_none = format!("{none_header}.{}.", parts[1]);
    // HMAC signed with the public key, the classic key-confusion forgery.
    let key_pem = server
        .store
        .get_secret(&SecretKey::parse(None, "user-token-signing-key-1").unwrap())
        .await
        .unwrap();
    let mut hs_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs_header.kid = Some("1".into());
    let hmac = jsonwebtoken::encode(
        &hs_header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(key_pem.data.expose()).unwrap(),
    )
    .unwrap();
    // Correctly signed but expired.
    let mut ed_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    ed_header.kid = Some("1".into());
    let signing = jsonwebtoken::EncodingKey::from_ed_pem(key_pem.data.expose()).unwrap();
    let now = chrono::Utc::now().timestamp();
    let expired_claims = json!({"Name": "mesh-system:admin", "Groups": ["mesh-system:admin"],
                                "exp": now - 60, "iat": now - 120, "nbf": now - 120, "jti": "old"});
    let expired = jsonwebtoken::encode(&ed_header, &expired_claims, &signing).unwrap();
    // Signed by a key id that does not exist.
    ed_header.kid = Some("99".into());
    let unknown_kid = jsonwebtoken::encode(&ed_header, &claims, &signing).unwrap();

    for (what, token) in [
        ("tampered signature", tampered.as_str()),
        ("escalated claims", escalated.as_str()),
        ("alg none", alg_none.as_str()),
        ("HMAC with the key", hmac.as_str()),
        ("expired", expired.as_str()),
        ("unknown key id", unknown_kid.as_str()),
        ("garbage", "not-a-token"),
    ] {
        let (status, body) = status_with(&server, Some(token)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}");
        assert_eq!(body, unauthenticated(), "{what}");
    }

    // Revocation: a good token stops working once its id is listed.
    let john = ops_admin_token(&server, &admin).await;
    assert_eq!(status_with(&server, Some(&john)).await.0, StatusCode::OK);
    let payload: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(john.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    let jti = payload["jti"].as_str().unwrap();
    let revoke = Client::new()
        .put(server.at("/global-secrets/user-token-revocations"))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body(
            json!({"type": "GlobalSecret", "name": "user-token-revocations",
                     "data": STANDARD.encode(format!("someone-else,{jti}"))})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(revoke.status(), StatusCode::CREATED);
    assert_eq!(
        status_with(&server, Some(&john)).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(status_with(&server, Some(&admin)).await.0, StatusCode::OK);
}

async fn tokens_never_reach_error_bodies(backend: Backend) {
    let server = TestServer::start_tokens_only(backend).await;
    let admin = server.admin_token().await;
    let (_, body) = status_with(&server, Some(&format!("{admin}x"))).await;
    assert!(!body.to_string().contains(&admin[..20]));
}

/// Zone tokens, on a global store where every caller needs a token: issued only by an admin
/// and only on a global store; a zone's token reads what zones are sent and nothing else;
/// one kind of token never passes for the other, even signed with the other kind's key; a
/// token without the `cp` scope, or revoked, is refused.
async fn zone_tokens_speak_for_a_zone_and_nothing_else(backend: Backend) {
    let config = kuma_secrets::api::ApiConfig {
        control_plane: kuma_secrets::domain::ControlPlane::Global,
        ..common::server::tokens_only()
    };
    let server = TestServer::start_with(
        backend,
        config,
        kuma_secrets::store::StoreOptions::allow_plaintext_secrets(),
    )
    .await;
    let admin = server.admin_token().await;
    let client = Client::new();
    let zone_token = |token: &str, body: Value| {
        client
            .post(server.at("/tokens/zone"))
            .bearer_auth(token.to_owned())
            .json(&body)
            .send()
    };
    let response = zone_token(&admin, json!({"zone": "east", "validFor": "1h"}))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let east = response.text().await.unwrap();
    // Bad requests: every violation named.
    let response = zone_token(
        &admin,
        json!({"zone": "East_1", "scope": ["cp", "root"], "validFor": "forever"}),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    let fields: Vec<String> = common::http::violations(&body)
        .into_iter()
        .map(|(field, _)| field)
        .collect();
    assert_eq!(fields, ["zone", "scope[1]", "validFor"], "{body}");
    // Only an admin issues one; a zone cannot mint another.
    let response = zone_token(&east, json!({"zone": "west", "validFor": "1h"}))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);

    // What a zone reads.
    let get = |path: &str, token: &str| {
        client
            .get(server.at(path))
            .bearer_auth(token.to_owned())
            .send()
    };
    assert_eq!(get("/meshes/default", &east).await.unwrap().status(), 200);
    assert_eq!(get("/_changes", &east).await.unwrap().status(), 200);
    let listed: Value = get("/global-secrets", &east)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names = common::http::item_names(&listed);
    assert_eq!(names, ["zone-token-signing-public-key-1"], "{listed}");
    assert_eq!(listed["total"], 1);
    for hidden in [
        "admin-user-token",
        "user-token-signing-key-1",
        "zone-token-signing-key-1",
    ] {
        let status = get(&format!("/global-secrets/{hidden}"), &east)
            .await
            .unwrap()
            .status();
        assert_eq!(status, StatusCode::NOT_FOUND, "{hidden}");
    }
    let changes: Value = get("/_changes?limit=1000", &east)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for event in changes["events"].as_array().unwrap() {
        let name = event["name"].as_str().unwrap();
        assert!(
            kuma_secrets::federation::sent_to_zones(event["type"].as_str().unwrap(), name),
            "a zone was told of {name}"
        );
    }
    for refused in ["/zones", "/meshes/default/secrets/x/_versions"] {
        let status = get(refused, &east).await.unwrap().status();
        assert_eq!(status, StatusCode::FORBIDDEN, "{refused}");
    }
    let written = client
        .put(server.at("/global-secrets/planted"))
        .bearer_auth(&east)
        .json(&json!({"type": "GlobalSecret", "name": "planted", "data": STANDARD.encode("x")}))
        .send()
        .await
        .unwrap();
    assert_eq!(written.status(), StatusCode::FORBIDDEN);

    // One kind never passes for the other: zone claims signed with the user key, user
    // (admin) claims signed with the zone key, each with kid 1, which both kinds have.
    let key_of = |name: &'static str| {
        let store = server.store.clone();
        async move {
            store
                .get_secret(&SecretKey::parse(None, name).unwrap())
                .await
                .unwrap()
        }
    };
    let user_key = key_of("user-token-signing-key-1").await;
    let zone_key = key_of("zone-token-signing-key-1").await;
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some("1".into());
    let now = chrono::Utc::now().timestamp();
    let zone_claims = json!({"Zone": "east", "Scope": ["cp"], "exp": now + 600, "iat": now,
                             "nbf": now, "jti": "z"});
    let admin_claims = json!({"Name": "mesh-system:admin", "Groups": ["mesh-system:admin"],
                              "exp": now + 600, "iat": now, "nbf": now, "jti": "u"});
    let sign = |claims: &Value, key: &kuma_secrets::domain::Secret| {
        jsonwebtoken::encode(
            &header,
            claims,
            &jsonwebtoken::EncodingKey::from_ed_pem(key.data.expose()).unwrap(),
        )
        .unwrap()
    };
    // The same claims with the right key pass: what is refused below is the key.
    assert_eq!(
        get("/meshes/default/secrets", &sign(&zone_claims, &zone_key))
            .await
            .unwrap()
            .status(),
        200
    );
    for (what, token) in [
        ("zone claims, user key", sign(&zone_claims, &user_key)),
        ("admin claims, zone key", sign(&admin_claims, &zone_key)),
    ] {
        let status = get("/meshes/default/secrets", &token)
            .await
            .unwrap()
            .status();
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}");
    }

    // A token without the cp scope is no zone control plane.
    let ingress = zone_token(
        &admin,
        json!({"zone": "east", "scope": ["ingress"], "validFor": "1h"}),
    )
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    let status = get("/meshes/default/secrets", &ingress)
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Revoked: refused at once, an open long poll included.
    let jti = {
        let payload = east.split('.').nth(1).unwrap();
        let claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        claims["jti"].as_str().unwrap().to_owned()
    };
    let head: Value = get("/_changes?limit=1000", &east)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let poll = tokio::spawn(
        Client::new()
            .get(server.at(&format!("/_changes?after={}&wait=60s", head["revision"])))
            .bearer_auth(east.clone())
            .send(),
    );
    common::ha::wait_for(
        std::time::Duration::from_secs(30),
        "the zone's long poll to be open",
        || async {
            let zones: Value = get("/zones", &admin).await.unwrap().json().await.unwrap();
            zones["items"][0]["polling"] == true
        },
    )
    .await;
    let response = client
        .put(server.at("/global-secrets/zone-token-revocations"))
        .bearer_auth(&admin)
        .json(
            &json!({"type": "GlobalSecret", "name": "zone-token-revocations",
                      "data": STANDARD.encode(format!("other,{jti}"))}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let polled = poll.await.unwrap().unwrap();
    assert_eq!(polled.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        get("/meshes/default", &east).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
}

/// A store that is not a global store issues no zone tokens.
async fn only_a_global_store_issues_zone_tokens(backend: Backend) {
    let server = TestServer::start(backend).await;
    let response = Client::new()
        .post(server.at("/tokens/zone"))
        .json(&json!({"zone": "east", "validFor": "1h"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["detail"].as_str().unwrap().contains("--mode global"),
        "{body}"
    );
    let exists = server
        .store
        .get_secret(&SecretKey::parse(None, "zone-token-signing-key-1").unwrap())
        .await;
    assert!(
        exists.is_err(),
        "a standalone store made a zone signing key"
    );
}

on_both_backends! {
    zone_tokens_speak_for_a_zone_and_nothing_else,
    only_a_global_store_issues_zone_tokens,
    loopback_is_admin_only_when_direct,
    tokens_decide_access_when_localhost_is_not_admin,
    forged_expired_and_revoked_tokens_are_401,
    tokens_never_reach_error_bodies,
}
