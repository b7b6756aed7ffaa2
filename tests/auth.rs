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

on_both_backends! {
    loopback_is_admin_only_when_direct,
    tokens_decide_access_when_localhost_is_not_admin,
    forged_expired_and_revoked_tokens_are_401,
    tokens_never_reach_error_bodies,
}
