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
//!
//! Zone tokens (`POST /tokens/zone`, issued by a global store) are the same machinery with
//! keys of their own ([`ZONE_TOKENS`]: `zone-token-signing-key-N`, revoked in
//! `zone-token-revocations`) and Kuma's claims (`Zone`, `Scope`). The public half of each
//! zone signing key is kept as `zone-token-signing-public-key-N`, which zones receive
//! instead of the key itself, as in Kuma.

use super::{AUTHENTICATED, User};
use crate::api::error::ApiError;
use crate::domain::{Labels, NewSecret, ResourceName, SecretData, SecretKey};
use crate::store::{MAX_PAGE_SIZE, PageRequest, SecretQuery, SecretScope, SecretStore, StoreError};
use axum::http::StatusCode;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::time::Duration;

pub use crate::domain::{
    ADMIN_TOKEN_SECRET, REVOCATIONS_SECRET, SIGNING_KEY_PREFIX, ZONE_PUBLIC_KEY_PREFIX,
    ZONE_REVOCATIONS_SECRET, ZONE_SIGNING_KEY_PREFIX,
};
/// Validity of the bootstrapped admin token (Kuma: 10 years).
pub const ADMIN_TOKEN_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A kind of token: the GlobalSecrets its signing keys and its revocations live in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenKind {
    /// Prefix of the signing-key GlobalSecrets; the suffix is the key serial (`kid`).
    pub signing_key_prefix: &'static str,
    /// The GlobalSecret listing revoked token ids, comma-separated.
    pub revocations: &'static str,
}

/// User tokens (`POST /tokens/user`).
pub const USER_TOKENS: TokenKind = TokenKind {
    signing_key_prefix: SIGNING_KEY_PREFIX,
    revocations: REVOCATIONS_SECRET,
};

/// Zone tokens (`POST /tokens/zone`), which zones present to their global store.
pub const ZONE_TOKENS: TokenKind = TokenKind {
    signing_key_prefix: ZONE_SIGNING_KEY_PREFIX,
    revocations: ZONE_REVOCATIONS_SECRET,
};

/// What a zone token may be used for, as Kuma's `--scope`: the zone's control plane
/// (`cp`, what a zone's sync needs), its ingress and its egress.
pub const ZONE_SCOPES: [&str; 3] = ["cp", "ingress", "egress"];

/// A zone token's claims, named as Kuma names them.
#[derive(Debug, Serialize, Deserialize)]
struct ZoneClaims {
    #[serde(rename = "Zone")]
    zone: String,
    #[serde(rename = "Scope", default)]
    scope: Vec<String>,
    exp: i64,
    iat: i64,
    nbf: i64,
    jti: String,
}

/// The zone a verified zone token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneIdentity {
    /// The zone's name.
    pub zone: String,
    /// The token's id, as revocations list it.
    pub jti: String,
}

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
    ApiError::unauthenticated()
}

fn internal(what: &str) -> ApiError {
    tracing::error!("{what}");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Could not process the token",
        "Internal Server Error",
    )
}

/// Creates the first signing key of `kind` (`user-token-signing-key-1`,
/// `zone-token-signing-key-1`) if it has none. Safe to race: a replica that loses the
/// create uses the winner's key.
///
/// # Errors
/// Store failures.
pub async fn ensure_signing_key<S: SecretStore>(
    store: &S,
    kind: TokenKind,
) -> Result<(), StoreError> {
    if latest_signing_key(store, kind).await?.is_some() {
        return Ok(());
    }
    let prefix = kind.signing_key_prefix;
    let pem = tokio::task::spawn_blocking(generate_signing_key_pem)
        .await
        .expect("key generation does not panic");
    let created = store
        .create_secret(NewSecret {
            key: global(&format!("{prefix}1")),
            data: SecretData::new(pem.into_bytes()).expect("a PEM is not empty"),
            labels: Labels::default(),
        })
        .await;
    match created {
        Ok(_) => {
            tracing::info!("created the token signing key GlobalSecret {prefix}1");
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

/// The newest signing key of `kind`: (serial, PKCS#8 PEM).
async fn latest_signing_key<S: SecretStore>(
    store: &S,
    kind: TokenKind,
) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
    Ok(signing_keys(store, kind)
        .await?
        .into_iter()
        .max_by_key(|(serial, _)| *serial))
}

/// Every signing key of `kind`: (serial, private key PEM).
async fn signing_keys<S: SecretStore>(
    store: &S,
    kind: TokenKind,
) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
    let page = store
        .list_secrets(
            &SecretQuery::new(SecretScope::Global)
                .name_contains(kind.signing_key_prefix)
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
                .strip_prefix(kind.signing_key_prefix)?
                .parse()
                .ok()?;
            Some((serial, s.data.expose().to_vec()))
        })
        .collect())
}

/// Signs a user token for `user`, valid for `valid_for`.
///
/// # Errors
/// 503 if the store is down, 500 if there is no usable signing key.
pub async fn issue<S: SecretStore>(
    store: &S,
    user: &User,
    valid_for: Duration,
) -> Result<String, ApiError> {
    let (iat, exp) = validity(valid_for);
    let claims = Claims {
        name: user.name.clone(),
        groups: user.groups.clone(),
        exp,
        iat,
        nbf: iat,
        jti: uuid::Uuid::new_v4().to_string(),
    };
    sign(store, USER_TOKENS, &claims).await
}

/// Signs a zone token for `zone` with `scope` (of [`ZONE_SCOPES`]), valid for `valid_for`,
/// making the first zone signing key if there is none; makes sure the public half of
/// every zone signing key is there for zones to receive.
///
/// # Errors
/// 503 if the store is down, 500 if there is no usable signing key.
pub async fn issue_zone_token<S: SecretStore>(
    store: &S,
    zone: &str,
    scope: Vec<String>,
    valid_for: Duration,
) -> Result<String, ApiError> {
    ensure_signing_key(store, ZONE_TOKENS)
        .await
        .map_err(|e| ApiError::store("Could not issue a token", e))?;
    ensure_zone_public_keys(store)
        .await
        .map_err(|e| ApiError::store("Could not issue a token", e))?;
    let (iat, exp) = validity(valid_for);
    let claims = ZoneClaims {
        zone: zone.to_owned(),
        scope,
        exp,
        iat,
        nbf: iat,
        jti: uuid::Uuid::new_v4().to_string(),
    };
    sign(store, ZONE_TOKENS, &claims).await
}

/// `iat` and `exp` of a token valid for `valid_for` from now.
fn validity(valid_for: Duration) -> (i64, i64) {
    let now = chrono::Utc::now().timestamp();
    (
        now,
        now.saturating_add(i64::try_from(valid_for.as_secs()).unwrap_or(i64::MAX)),
    )
}

/// Signs `claims` with the newest signing key of `kind`, its serial as `kid`.
async fn sign<S: SecretStore>(
    store: &S,
    kind: TokenKind,
    claims: &impl Serialize,
) -> Result<String, ApiError> {
    let (serial, pem) = latest_signing_key(store, kind)
        .await
        .map_err(|e| ApiError::store("Could not issue a token", e))?
        .ok_or_else(|| internal("no token signing key"))?;
    let (algorithm, encoding) = match SigningKind::of(&pem) {
        Some(SigningKind::Ed25519) => (Algorithm::EdDSA, EncodingKey::from_ed_pem(&pem)),
        Some(SigningKind::Rsa { .. }) => (Algorithm::RS256, EncodingKey::from_rsa_pem(&pem)),
        None => return Err(internal("unusable signing key")),
    };
    let encoding = encoding.map_err(|_| internal("unusable signing key"))?;
    let mut header = Header::new(algorithm);
    header.kid = Some(serial.to_string());
    jsonwebtoken::encode(&header, claims, &encoding).map_err(|_| internal("cannot sign a token"))
}

/// Stores `zone-token-signing-public-key-N`, the public half of `zone-token-signing-key-N`,
/// for each zone signing key that lacks it. Our Ed25519 keys only: an RSA key imported from
/// Kuma keeps verifying the tokens Kuma issued with it, but its public half is not
/// published (logged once per call).
///
/// # Errors
/// Store failures.
pub async fn ensure_zone_public_keys<S: SecretStore>(store: &S) -> Result<(), StoreError> {
    for (serial, private_pem) in signing_keys(store, ZONE_TOKENS).await? {
        let name = format!("{ZONE_PUBLIC_KEY_PREFIX}{serial}");
        match store.get_secret(&global(&name)).await {
            Ok(_) => continue,
            Err(StoreError::NotFound(_)) => {}
            Err(other) => return Err(other),
        }
        let Some(public) = ed25519_public_pem(&private_pem) else {
            tracing::warn!(
                "zone token signing key {ZONE_SIGNING_KEY_PREFIX}{serial} is not an Ed25519 key: its public half is not published to zones"
            );
            continue;
        };
        let created = store
            .create_secret(NewSecret {
                key: global(&name),
                data: SecretData::new(public.into_bytes()).expect("a PEM is not empty"),
                labels: Labels::default(),
            })
            .await;
        match created {
            Ok(_) => tracing::info!("published the zone token public key GlobalSecret {name}"),
            Err(StoreError::AlreadyExists(_)) => {}
            Err(other) => return Err(other),
        }
    }
    Ok(())
}

/// The SPKI PEM of an Ed25519 private key's public half.
fn ed25519_public_pem(private_pem: &[u8]) -> Option<String> {
    let key = SigningKey::from_pkcs8_pem(std::str::from_utf8(private_pem).ok()?).ok()?;
    key.verifying_key().to_public_key_pem(LineEnding::LF).ok()
}

/// Whether `token` carries zone-token claims (a `Zone`), read without verifying anything:
/// which kind of key to verify it with. A token claiming to be of the other kind fails
/// that kind's verification, never passes this one's.
pub fn is_zone_token(token: &str) -> bool {
    use base64::Engine;
    let Some(payload) = token.split('.').nth(1) else {
        return false;
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()
        .and_then(|json| serde_json::from_slice::<serde_json::Value>(&json).ok())
        .is_some_and(|claims| claims.get("Zone").is_some())
}

/// Verifies a zone token: its zone and id. A token without the `cp` scope does not speak
/// for a zone's control plane.
///
/// # Errors
/// 401 for anything that does not verify (as [`verify`]) or lacks the `cp` scope; 503 if
/// the store cannot be read.
pub async fn verify_zone_token<S: SecretStore>(
    store: &S,
    token: &str,
) -> Result<ZoneIdentity, ApiError> {
    let claims: ZoneClaims = verify_signed(store, ZONE_TOKENS, token).await?;
    if !claims.scope.iter().any(|s| s == "cp") {
        tracing::debug!("rejected a zone token without the cp scope");
        return Err(unauthenticated());
    }
    if is_revoked(store, ZONE_TOKENS, &claims.jti).await? {
        return Err(unauthenticated());
    }
    if crate::printable::has_controls(&claims.zone) || claims.zone.is_empty() {
        return Err(unauthenticated());
    }
    Ok(ZoneIdentity {
        zone: claims.zone,
        jti: claims.jti,
    })
}

/// Whether the zone token `jti` has been revoked since it verified.
///
/// # Errors
/// 503 if the store cannot be read.
pub async fn zone_token_revoked<S: SecretStore>(store: &S, jti: &str) -> Result<bool, ApiError> {
    is_revoked(store, ZONE_TOKENS, jti).await
}

/// Verifies a user token and returns its user.
///
/// # Errors
/// 401 for anything that does not verify (malformed, wrong algorithm, unknown key, bad
/// signature, expired, revoked); 503 if the store cannot be read.
pub async fn verify<S: SecretStore>(store: &S, token: &str) -> Result<User, ApiError> {
    let claims: Claims = verify_signed(store, USER_TOKENS, token).await?;
    if is_revoked(store, USER_TOKENS, &claims.jti).await? {
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
        zone: None,
    })
}

/// Checks `token`'s algorithm, key (a signing key of `kind`, by `kid`), signature and
/// times, and returns its claims.
///
/// # Errors
/// 401 for anything that does not verify; 503 if the store cannot be read.
async fn verify_signed<S: SecretStore, C: DeserializeOwned>(
    store: &S,
    kind: TokenKind,
    token: &str,
) -> Result<C, ApiError> {
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
        .get_secret(&global(&format!("{}{serial}", kind.signing_key_prefix)))
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
    Ok(jsonwebtoken::decode::<C>(token, &decoding, &validation)
        .map_err(|e| {
            tracing::debug!(reason = %e, "rejected a token");
            unauthenticated()
        })?
        .claims)
}

/// The public half of a signing key, if the key is of the kind `algorithm` signs with.
fn decoding_key(private_pem: &[u8], algorithm: Algorithm) -> Option<DecodingKey> {
    match (SigningKind::of(private_pem)?, algorithm) {
        (SigningKind::Ed25519, Algorithm::EdDSA) => {
            DecodingKey::from_ed_pem(ed25519_public_pem(private_pem)?.as_bytes()).ok()
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

async fn is_revoked<S: SecretStore>(
    store: &S,
    kind: TokenKind,
    jti: &str,
) -> Result<bool, ApiError> {
    match store.get_secret(&global(kind.revocations)).await {
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
