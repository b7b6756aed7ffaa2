//! `Secret` (bound to one Mesh) and `GlobalSecret` (bound to none): their keys, data and
//! the records the store hands back.

use super::{Labels, MeshName, Meta, ResourceKey, ResourceName, ValidationError};
use std::fmt;

/// Default ceiling on decoded secret data: 1 MiB, as Kubernetes caps a Secret.
pub const DEFAULT_MAX_SECRET_SIZE: usize = 1024 * 1024;

/// Which of the two secret resource types a key or record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecretType {
    /// `Secret`: mesh-scoped.
    Secret,
    /// `GlobalSecret`: bound to no mesh.
    GlobalSecret,
}

impl SecretType {
    /// Kuma's type name: `Secret` or `GlobalSecret`.
    pub fn as_str(self) -> &'static str {
        match self {
            SecretType::Secret => "Secret",
            SecretType::GlobalSecret => "GlobalSecret",
        }
    }
}

impl fmt::Display for SecretType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The identity of a secret: `(mesh, name)` for a Secret, `name` alone for a GlobalSecret.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SecretKey {
    /// A `Secret` in one Mesh.
    Mesh {
        /// The Mesh the secret belongs to.
        mesh: MeshName,
        /// The secret's name, unique within its Mesh.
        name: ResourceName,
    },
    /// A `GlobalSecret`.
    Global {
        /// The secret's name, unique among global secrets.
        name: ResourceName,
    },
}

/// Prefix of the user-token signing-key GlobalSecrets; the suffix is the key serial.
pub const SIGNING_KEY_PREFIX: &str = "user-token-signing-key-";
/// GlobalSecret holding the bootstrapped admin token.
pub const ADMIN_TOKEN_SECRET: &str = "admin-user-token";
/// GlobalSecret listing revoked user-token ids, comma-separated.
pub const REVOCATIONS_SECRET: &str = "user-token-revocations";
/// Prefix of the zone-token signing-key GlobalSecrets (a global store's; never sent to
/// zones); the suffix is the key serial.
pub const ZONE_SIGNING_KEY_PREFIX: &str = "zone-token-signing-key-";
/// Prefix of the GlobalSecrets holding the public half of each zone-token signing key,
/// which zones receive instead of the key itself (Kuma's name).
pub const ZONE_PUBLIC_KEY_PREFIX: &str = "zone-token-signing-public-key-";
/// GlobalSecret listing revoked zone-token ids, comma-separated.
pub const ZONE_REVOCATIONS_SECRET: &str = "zone-token-revocations";

impl SecretKey {
    /// Key of the Secret `name` in `mesh`.
    pub fn secret(mesh: MeshName, name: ResourceName) -> Self {
        SecretKey::Mesh { mesh, name }
    }

    /// Key of the GlobalSecret `name`.
    pub fn global(name: ResourceName) -> Self {
        SecretKey::Global { name }
    }

    /// Parses and validates a key from strings: `mesh = None` means a GlobalSecret.
    ///
    /// # Errors
    /// Every violation of the name and mesh rules.
    pub fn parse(mesh: Option<&str>, name: &str) -> Result<Self, ValidationError> {
        let mut errors = ValidationError::default();
        let name = errors.collect(ResourceName::parse(name));
        let mesh = mesh.map(|m| errors.collect(MeshName::parse(m)));
        match (mesh, name) {
            (None, Some(name)) if errors.is_empty() => Ok(SecretKey::Global { name }),
            (Some(Some(mesh)), Some(name)) if errors.is_empty() => {
                Ok(SecretKey::Mesh { mesh, name })
            }
            _ => Err(errors),
        }
    }

    /// Whether this secret's value grants authority: whoever can plant it can mint tokens,
    /// become admin, unrevoke a token, or issue certificates proxies trust. Token signing
    /// keys (Kuma's `*-token-signing-key*`, ours `user-token-signing-key-N`), the
    /// bootstrapped `admin-user-token`, revocation lists (`*-token-revocations`) and a
    /// Mesh's builtin CA (`{mesh}.ca-builtin-cert-*`, `{mesh}.ca-builtin-key-*`). Such a
    /// value stored unsealed in a store with a keyring is never read, nor sealed: it can
    /// only have been written behind the service's back.
    pub fn grants_authority(&self) -> bool {
        let name = self.name().as_str();
        match self {
            SecretKey::Global { .. } => {
                name.contains("token-signing-key")
                    || name == ADMIN_TOKEN_SECRET
                    || name.ends_with("token-revocations")
            }
            SecretKey::Mesh { mesh, .. } => {
                name.contains("token-signing-key")
                    || name.ends_with("token-revocations")
                    || name.strip_prefix(mesh.as_str()).is_some_and(|rest| {
                        rest.starts_with(".ca-builtin-cert-")
                            || rest.starts_with(".ca-builtin-key-")
                    })
            }
        }
    }

    /// The secret's name.
    pub fn name(&self) -> &ResourceName {
        match self {
            SecretKey::Mesh { name, .. } | SecretKey::Global { name } => name,
        }
    }

    /// The secret's mesh, `None` for a GlobalSecret.
    pub fn mesh(&self) -> Option<&MeshName> {
        match self {
            SecretKey::Mesh { mesh, .. } => Some(mesh),
            SecretKey::Global { .. } => None,
        }
    }

    /// Whether this is a Secret or a GlobalSecret key.
    pub fn secret_type(&self) -> SecretType {
        match self {
            SecretKey::Mesh { .. } => SecretType::Secret,
            SecretKey::Global { .. } => SecretType::GlobalSecret,
        }
    }

    /// The key in the form used by error messages.
    pub fn resource_key(&self) -> ResourceKey {
        ResourceKey {
            resource_type: self.secret_type().as_str(),
            mesh: self.mesh().map(|m| m.as_str().to_owned()),
            name: self.name().as_str().to_owned(),
        }
    }
}

impl fmt::Display for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.resource_key().fmt(f)
    }
}

/// Secret bytes. `Debug` never shows them, so a record can be logged safely, and they are
/// overwritten with zeros when dropped, so opened plaintext does not linger in freed memory.
#[derive(Clone, PartialEq, Eq, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
pub struct SecretData(Vec<u8>);

impl SecretData {
    /// Wraps the decoded bytes of a secret.
    ///
    /// # Errors
    /// `data: cannot be empty` when `bytes` is empty, as Kuma's Kubernetes webhook says.
    pub fn new(bytes: Vec<u8>) -> Result<Self, ValidationError> {
        if bytes.is_empty() {
            return Err(ValidationError::single("data", "cannot be empty"));
        }
        Ok(Self(bytes))
    }

    /// Checks the decoded size against `max` bytes.
    ///
    /// # Errors
    /// A `data` violation naming the limit and the actual size.
    pub fn check_size(&self, max: usize) -> Result<(), ValidationError> {
        if self.0.len() > max {
            return Err(ValidationError::single(
                "data",
                format!(
                    "must be at most {max} bytes once decoded (the --max-secret-size limit), got {} bytes",
                    self.0.len()
                ),
            ));
        }
        Ok(())
    }

    /// The raw bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false for a validated value; present for API symmetry.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Unchecked construction from rows the store wrote itself.
    pub(crate) fn from_stored(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }
}

impl fmt::Debug for SecretData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretData(<redacted {} bytes>)", self.0.len())
    }
}

/// A secret to create.
#[derive(Debug, Clone)]
pub struct NewSecret {
    /// Where it goes.
    pub key: SecretKey,
    /// Its bytes.
    pub data: SecretData,
    /// Its labels.
    pub labels: Labels,
}

/// The new contents of an existing secret. Labels are replaced, as Kuma's update does.
#[derive(Debug, Clone)]
pub struct SecretUpdate {
    /// The new bytes.
    pub data: SecretData,
    /// The new label set.
    pub labels: Labels,
}

/// A stored Secret or GlobalSecret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secret {
    /// Its identity.
    pub key: SecretKey,
    /// Its bytes.
    pub data: SecretData,
    /// Its labels.
    pub labels: Labels,
    /// Version and timestamps.
    pub meta: Meta,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_secret_bytes() {
        let data = SecretData::new(b"hunter2-very-secret".to_vec()).unwrap();
        let shown = format!("{data:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("19 bytes"));
    }

    #[test]
    fn empty_data_is_rejected() {
        let err = SecretData::new(Vec::new()).unwrap_err();
        assert_eq!(err.to_string(), "data: cannot be empty");
    }

    #[test]
    fn oversized_data_names_the_limit() {
        let data = SecretData::new(vec![1; 11]).unwrap();
        let err = data.check_size(10).unwrap_err();
        assert!(err.to_string().contains("at most 10 bytes"), "{err}");
        assert!(data.check_size(11).is_ok());
    }

    #[test]
    fn key_parsing_reports_mesh_and_name_together() {
        let err = SecretKey::parse(Some("Bad Mesh"), "Bad_Name").unwrap_err();
        let fields: Vec<_> = err.violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["name", "mesh"]);
        assert!(SecretKey::parse(None, "gs-1").is_ok());
    }
}
