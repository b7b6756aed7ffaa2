//! User tokens: JWTs signed with a key kept in the GlobalSecret `user-token-signing-key-N`,
//! as Kuma does (reference §7), and the `admin-user-token` bootstrapped next to it.
//!
//! Kuma signs with RSA-2048; we sign with Ed25519 (`alg: EdDSA`): the same public/private
//! split (a verifier never needs the private key), keys generated in microseconds instead
//! of seconds. The key id (`kid`) is the serial N, so keys rotate by adding N+1; tokens
//! signed by a removed key stop verifying. A signing key imported from Kuma
//! (`import --from-kuma`) is an RSA key: tokens Kuma issued with it (`RS256`) keep
//! verifying, and while it is the newest key new tokens are signed with it too. Only
//! `EdDSA` and `RS256` are accepted, each only with a key of its own kind: `alg: none`,
//! HMAC tokens forged with a public key, and an algorithm that does not match the key are
//! rejected before any signature work.

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

pub use crate::domain::{ADMIN_TOKEN_SECRET, REVOCATIONS_SECRET, SIGNING_KEY_PREFIX};
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
    let (algorithm, encoding) = match SigningKind::of(&pem) {
        Some(SigningKind::Ed25519) => (Algorithm::EdDSA, EncodingKey::from_ed_pem(&pem)),
        Some(SigningKind::Rsa { .. }) => (Algorithm::RS256, EncodingKey::from_rsa_pem(&pem)),
        None => return Err(internal("unusable signing key")),
    };
    let encoding = encoding.map_err(|_| internal("unusable signing key"))?;
    let now = chrono::Utc::now().timestamp();
    let claims = Claims {
        name: user.name.clone(),
        groups: user.groups.clone(),
        exp: now.saturating_add(i64::try_from(valid_for.as_secs()).unwrap_or(i64::MAX)),
        iat: now,
        nbf: now,
        jti: uuid::Uuid::new_v4().to_string(),
    };
    let mut header = Header::new(algorithm);
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
    if !matches!(header.alg, Algorithm::EdDSA | Algorithm::RS256) {
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
        // A signing key that does not open (planted in clear, altered, sealed with a key
        // this server lacks) verifies nothing: the caller learns only that the token is
        // bad; the operator learns which row and why, from the log.
        Err(sealed @ StoreError::Sealed { .. }) => {
            tracing::error!(error = %sealed, "a token names a signing key that cannot be read");
            return Err(unauthenticated());
        }
        Err(other) => return Err(ApiError::store("Could not verify the token", other)),
    };
    let decoding = decoding_key(key.data.expose(), header.alg).ok_or_else(unauthenticated)?;
    let mut validation = Validation::new(header.alg);
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
    // Minting refuses these now; a token issued before (or by a Kuma key) is not a user.
    if crate::printable::has_controls(&claims.name)
        || claims
            .groups
            .iter()
            .any(|g| crate::printable::has_controls(g))
    {
        tracing::warn!("rejected a user token whose name or groups hold control characters");
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

/// The public half of a signing key, if the key is of the kind `algorithm` signs with.
fn decoding_key(private_pem: &[u8], algorithm: Algorithm) -> Option<DecodingKey> {
    match (SigningKind::of(private_pem)?, algorithm) {
        (SigningKind::Ed25519, Algorithm::EdDSA) => {
            let pem = std::str::from_utf8(private_pem).ok()?;
            let key = SigningKey::from_pkcs8_pem(pem).ok()?;
            let public = key.verifying_key().to_public_key_pem(LineEnding::LF).ok()?;
            DecodingKey::from_ed_pem(public.as_bytes()).ok()
        }
        (SigningKind::Rsa { modulus, exponent }, Algorithm::RS256) => {
            Some(DecodingKey::from_rsa_raw_components(&modulus, &exponent))
        }
        _ => None,
    }
}

/// What a signing key GlobalSecret holds.
enum SigningKind {
    /// Ours: an Ed25519 key (PKCS#8 PEM).
    Ed25519,
    /// Kuma's: an RSA private key (PKCS#1 `RSA PRIVATE KEY` or PKCS#8 `PRIVATE KEY`), with
    /// its public modulus and exponent (big-endian).
    Rsa { modulus: Vec<u8>, exponent: Vec<u8> },
}

impl SigningKind {
    fn of(private_pem: &[u8]) -> Option<Self> {
        let pem = std::str::from_utf8(private_pem).ok()?;
        if SigningKey::from_pkcs8_pem(pem).is_ok() {
            return Some(SigningKind::Ed25519);
        }
        let (label, body) = pem_body(pem)?;
        let rsa_key = match label {
            "RSA PRIVATE KEY" => body,
            // PrivateKeyInfo: SEQUENCE { version, AlgorithmIdentifier, OCTET STRING key }.
            "PRIVATE KEY" => {
                let mut info = der::Reader::new(der::sequence(&body)?);
                info.next(der::INTEGER)?;
                info.next(der::SEQUENCE)?;
                info.next(der::OCTET_STRING)?.to_vec()
            }
            _ => return None,
        };
        // RSAPrivateKey: SEQUENCE { version, modulus, publicExponent, … }.
        let mut fields = der::Reader::new(der::sequence(&rsa_key)?);
        fields.next(der::INTEGER)?;
        let modulus = der::unsigned(fields.next(der::INTEGER)?);
        let exponent = der::unsigned(fields.next(der::INTEGER)?);
        Some(SigningKind::Rsa { modulus, exponent })
    }
}

/// The label and DER bytes of a PEM block.
fn pem_body(pem: &str) -> Option<(&str, Vec<u8>)> {
    use base64::Engine;
    let begin = pem.find("-----BEGIN ")? + "-----BEGIN ".len();
    let label_end = begin + pem[begin..].find("-----")?;
    let label = &pem[begin..label_end];
    let body_start = label_end + "-----".len();
    let end = body_start + pem[body_start..].find("-----END ")?;
    let body: String = pem[body_start..end].split_whitespace().collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .ok()?;
    Some((label, der))
}

/// Just enough DER to read an RSA private key's public half.
mod der {
    pub const INTEGER: u8 = 0x02;
    pub const OCTET_STRING: u8 = 0x04;
    pub const SEQUENCE: u8 = 0x30;

    /// Reads one element: its tag, and its content and the rest of the input.
    fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, mut rest) = rest.split_first()?;
        let length = if first < 0x80 {
            usize::from(first)
        } else {
            let count = usize::from(first & 0x7f);
            if count == 0 || count > 4 || rest.len() < count {
                return None;
            }
            let (bytes, after) = rest.split_at(count);
            rest = after;
            bytes.iter().fold(0usize, |n, &b| (n << 8) | usize::from(b))
        };
        if rest.len() < length {
            return None;
        }
        let (content, rest) = rest.split_at(length);
        Some((tag, content, rest))
    }

    /// The content of the SEQUENCE `input` is.
    pub fn sequence(input: &[u8]) -> Option<&[u8]> {
        match element(input)? {
            (SEQUENCE, content, _) => Some(content),
            _ => None,
        }
    }

    /// An INTEGER's bytes without the sign byte DER adds to a positive number.
    pub fn unsigned(integer: &[u8]) -> Vec<u8> {
        match integer {
            [0, rest @ ..] if !rest.is_empty() => rest.to_vec(),
            other => other.to_vec(),
        }
    }

    /// The elements of a SEQUENCE's content, one by one.
    pub struct Reader<'a>(&'a [u8]);

    impl<'a> Reader<'a> {
        pub fn new(content: &'a [u8]) -> Self {
            Self(content)
        }

        /// The next element's content, if it has tag `tag`.
        pub fn next(&mut self, tag: u8) -> Option<&'a [u8]> {
            let (found, content, rest) = element(self.0)?;
            self.0 = rest;
            (found == tag).then_some(content)
        }
    }
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

    /// Kuma's signing keys: RSA-2048, PKCS#1 as Kuma writes it, and the same as PKCS#8.
    const KUMA_KEYS: [&str; 2] = [
        include_str!("../../../tests/fixtures/kuma-user-token-signing-key.pem"),
        include_str!("../../../tests/fixtures/kuma-user-token-signing-key-pkcs8.pem"),
    ];

    #[test]
    fn kuma_rsa_keys_verify_rs256_and_nothing_else() {
        let claims = Claims {
            name: "jane".into(),
            groups: vec!["mesh-system:admin".into()],
            exp: chrono::Utc::now().timestamp() + 60,
            iat: 0,
            nbf: 0,
            jti: "j".into(),
        };
        for pem in KUMA_KEYS {
            assert!(matches!(
                SigningKind::of(pem.as_bytes()),
                Some(SigningKind::Rsa { .. })
            ));
            let token = jsonwebtoken::encode(
                &Header::new(Algorithm::RS256),
                &claims,
                &EncodingKey::from_rsa_pem(KUMA_KEYS[0].as_bytes()).unwrap(),
            )
            .unwrap();
            let decoding = decoding_key(pem.as_bytes(), Algorithm::RS256).unwrap();
            let decoded = jsonwebtoken::decode::<Claims>(
                &token,
                &decoding,
                &Validation::new(Algorithm::RS256),
            )
            .unwrap();
            assert_eq!(decoded.claims.name, "jane");
            // The wrong algorithm for the key: no key at all.
            assert!(decoding_key(pem.as_bytes(), Algorithm::EdDSA).is_none());
            assert!(decoding_key(pem.as_bytes(), Algorithm::HS256).is_none());
        }
        let ours = generate_signing_key_pem();
        assert!(decoding_key(ours.as_bytes(), Algorithm::RS256).is_none());
        assert!(
            SigningKind::of(
                b"-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n"
            )
            .is_none()
        );
    }

    #[test]
    fn generated_keys_sign_and_verify() {
        let pem = generate_signing_key_pem();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let encoding = EncodingKey::from_ed_pem(pem.as_bytes()).unwrap();
        let decoding = decoding_key(pem.as_bytes(), Algorithm::EdDSA).unwrap();
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
