//! User tokens: JWTs signed with a key kept in the GlobalSecret `user-token-signing-key-N`,
//! as Kuma does (reference §7), and the `admin-user-token` bootstrapped next to it.
//!
//! Kuma signs with RSA-2048; we sign with Ed25519 (`alg: EdDSA`): the same public/private
//! split (a verifier never needs the private key), keys generated in microseconds instead
//! of seconds. The key id (`kid`) is the serial N, so keys rotate by adding N+1; tokens
//! signed by a removed key stop verifying. Only `EdDSA` is accepted: `alg: none` and HMAC
//! tokens forged with the public key are rejected by the header check before any
//! signature work.

use super::{AUTHENTICATED, User};
use crate::api::error::ApiError;
use crate::domain::{Labels, NewSecret, ResourceName, SecretData, SecretKey};
use crate::store::{MAX_PAGE_SIZE, PageRequest, SecretQuery, SecretScope, SecretStore, StoreError};
use axum::http::StatusCode;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Prefix of the signing-key GlobalSecrets; the suffix is the key serial.
pub const SIGNING_KEY_PREFIX: &str = "user-token-signing-key-";
/// GlobalSecret holding the bootstrapped admin token.
pub const ADMIN_TOKEN_SECRET: &str = "admin-user-token";
/// GlobalSecret listing revoked token ids, comma-separated.
pub const REVOCATIONS_SECRET: &str = "user-token-revocations";
/// Validity of the bootstrapped admin token (Kuma: 10 years).
pub const ADMIN_TOKEN_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "Groups", default)]
    groups: Vec<String>,
    exp: i64,
    iat: i64,
    nbf: i64,
    jti: String,
}

fn global(name: &str) -> SecretKey {
    SecretKey::global(ResourceName::parse(name).expect("constant names are valid"))
}

fn unauthenticated() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "Invalid authentication data",
        "Unauthenticated",
    )
}

fn internal(what: &str) -> ApiError {
    tracing::error!("{what}");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Could not process the token",
        "Internal Server Error",
    )
}

/// Creates `user-token-signing-key-1` if no signing key exists. Safe to race: a replica
/// that loses the create uses the winner's key.
///
/// # Errors
/// Store failures.
pub async fn ensure_signing_key<S: SecretStore>(store: &S) -> Result<(), StoreError> {
    if latest_signing_key(store).await?.is_some() {
        return Ok(());
    }
    let pem = tokio::task::spawn_blocking(generate_signing_key_pem)
        .await
        .expect("key generation does not panic");
    let created = store
        .create_secret(NewSecret {
            key: global(&format!("{SIGNING_KEY_PREFIX}1")),
            data: SecretData::new(pem.into_bytes()).expect("a PEM is not empty"),
            labels: Labels::default(),
        })
        .await;
    match created {
        Ok(_) => {
            tracing::info!("created user token signing key GlobalSecret {SIGNING_KEY_PREFIX}1");
            Ok(())
        }
        Err(StoreError::AlreadyExists(_)) => Ok(()),
        Err(other) => Err(other),
    }
}

/// Stores an admin token in `admin-user-token` unless it exists.
///
/// # Errors
/// Store failures, or no signing key.
pub async fn ensure_admin_token<S: SecretStore>(store: &S) -> Result<(), StoreError> {
    match store.get_secret(&global(ADMIN_TOKEN_SECRET)).await {
        Ok(_) => return Ok(()),
        Err(StoreError::NotFound(_)) => {}
        Err(other) => return Err(other),
    }
    let token = match issue(store, &User::admin(), ADMIN_TOKEN_VALIDITY).await {
        Ok(token) => token,
        Err(err) => {
            tracing::error!(detail = %err.detail, "cannot issue the admin token");
            return Ok(());
        }
    };
    let created = store
        .create_secret(NewSecret {
            key: global(ADMIN_TOKEN_SECRET),
            data: SecretData::new(token.into_bytes()).expect("a token is not empty"),
            labels: Labels::default(),
        })
        .await;
    match created {
        Ok(_) => {
            tracing::info!(
                "stored an admin user token in GlobalSecret {ADMIN_TOKEN_SECRET}; read it on this machine with: curl http://localhost:5681/global-secrets/{ADMIN_TOKEN_SECRET} | jq -r .data | base64 -d"
            );
            Ok(())
        }
        Err(StoreError::AlreadyExists(_)) => Ok(()),
        Err(other) => Err(other),
    }
}

fn generate_signing_key_pem() -> String {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).expect("the OS random number generator works");
    let key = SigningKey::from_bytes(&seed);
    key.to_pkcs8_pem(LineEnding::LF)
        .expect("an Ed25519 key encodes as PKCS#8")
        .to_string()
}

/// The newest signing key: (serial, PKCS#8 PEM).
async fn latest_signing_key<S: SecretStore>(
    store: &S,
) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
    let page = store
        .list_secrets(
            &SecretQuery::new(SecretScope::Global)
                .name_contains(SIGNING_KEY_PREFIX)
                .page(PageRequest::first(MAX_PAGE_SIZE).expect("valid page size")),
        )
        .await?;
    Ok(page
        .items
        .into_iter()
        .filter_map(|s| {
            let serial = s
                .key
                .name()
                .as_str()
                .strip_prefix(SIGNING_KEY_PREFIX)?
                .parse()
                .ok()?;
            Some((serial, s.data.expose().to_vec()))
        })
        .max_by_key(|(serial, _)| *serial))
}

/// Signs a token for `user`, valid for `valid_for`.
///
/// # Errors
/// 503 if the store is down, 500 if there is no usable signing key.
pub async fn issue<S: SecretStore>(
    store: &S,
    user: &User,
    valid_for: Duration,
) -> Result<String, ApiError> {
    let (serial, pem) = latest_signing_key(store)
        .await
        .map_err(|e| ApiError::store("Could not issue a token", e))?
        .ok_or_else(|| internal("no user token signing key"))?;
    let encoding = EncodingKey::from_ed_pem(&pem).map_err(|_| internal("unusable signing key"))?;
    let now = chrono::Utc::now().timestamp();
    let claims = Claims {
        name: user.name.clone(),
        groups: user.groups.clone(),
        exp: now.saturating_add(i64::try_from(valid_for.as_secs()).unwrap_or(i64::MAX)),
        iat: now,
        nbf: now,
        jti: uuid::Uuid::new_v4().to_string(),
    };
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(serial.to_string());
    jsonwebtoken::encode(&header, &claims, &encoding).map_err(|_| internal("cannot sign a token"))
}

/// Verifies a bearer token and returns its user.
///
/// # Errors
/// 401 for anything that does not verify (malformed, wrong algorithm, unknown key, bad
/// signature, expired, revoked); 503 if the store cannot be read.
pub async fn verify<S: SecretStore>(store: &S, token: &str) -> Result<User, ApiError> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| unauthenticated())?;
    if header.alg != Algorithm::EdDSA {
        return Err(unauthenticated());
    }
    let serial: u64 = header
        .kid
        .as_deref()
        .and_then(|kid| kid.parse().ok())
        .ok_or_else(unauthenticated)?;
    let key = match store
        .get_secret(&global(&format!("{SIGNING_KEY_PREFIX}{serial}")))
        .await
    {
        Ok(secret) => secret,
        Err(StoreError::NotFound(_)) => {
            tracing::debug!(serial, "token signed by an unknown or removed key");
            return Err(unauthenticated());
        }
        Err(other) => return Err(ApiError::store("Could not verify the token", other)),
    };
    let decoding = decoding_key(key.data.expose()).ok_or_else(unauthenticated)?;
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.leeway = 0;
    validation.validate_nbf = true;
    validation.set_required_spec_claims(&["exp", "iat", "jti"]);
    let claims = jsonwebtoken::decode::<Claims>(token, &decoding, &validation)
        .map_err(|e| {
            tracing::debug!(reason = %e, "rejected a user token");
            unauthenticated()
        })?
        .claims;
    if is_revoked(store, &claims.jti).await? {
        return Err(unauthenticated());
    }
    let mut groups = claims.groups;
    if !groups.iter().any(|g| g == AUTHENTICATED) {
        groups.push(AUTHENTICATED.into());
    }
    Ok(User {
        name: claims.name,
        groups,
    })
}

fn decoding_key(private_pem: &[u8]) -> Option<DecodingKey> {
    let pem = std::str::from_utf8(private_pem).ok()?;
    let key = SigningKey::from_pkcs8_pem(pem).ok()?;
    let public = key.verifying_key().to_public_key_pem(LineEnding::LF).ok()?;
    DecodingKey::from_ed_pem(public.as_bytes()).ok()
}

async fn is_revoked<S: SecretStore>(store: &S, jti: &str) -> Result<bool, ApiError> {
    match store.get_secret(&global(REVOCATIONS_SECRET)).await {
        Ok(list) => Ok(String::from_utf8_lossy(list.data.expose())
            .split(',')
            .any(|id| id.trim() == jti)),
        Err(StoreError::NotFound(_)) => Ok(false),
        Err(other) => Err(ApiError::store("Could not verify the token", other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_sign_and_verify() {
        let pem = generate_signing_key_pem();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let encoding = EncodingKey::from_ed_pem(pem.as_bytes()).unwrap();
        let decoding = decoding_key(pem.as_bytes()).unwrap();
        let claims = Claims {
            name: "u".into(),
            groups: vec![],
            exp: chrono::Utc::now().timestamp() + 60,
            iat: 0,
            nbf: 0,
            jti: "x".into(),
        };
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &encoding).unwrap();
        let decoded =
            jsonwebtoken::decode::<Claims>(&token, &decoding, &Validation::new(Algorithm::EdDSA));
        assert_eq!(decoded.unwrap().claims.name, "u");
    }
}
