//! Encryption at rest: secret bytes are sealed with AES-256-GCM before they reach either
//! backend, and opened after they are read.
//!
//! - A fresh random 96-bit nonce per write; the stored value is `nonce || ciphertext || tag`.
//! - What a value belongs to is its associated data ([`Binding`]): a secret's identity
//!   (`type`, `mesh`, `name`) and the random [`WriteId`] of the write that made it, stored
//!   beside the value (`secrets.write_id`). A value copied into another row, or an older
//!   value of the same row written back into `data`, fails to open instead of serving the
//!   wrong secret. What sealing cannot stop: someone with write access who puts back a whole
//!   row (data, write id and every column beside it) from an older copy serves that older
//!   value; the audit trail is where that shows.
//! - Format 1 (before write ids: the identity alone, `write_id` NULL) still opens, so stores
//!   sealed by older binaries stay readable; `kuma-secrets rotate-keys` rewrites them in
//!   format 2. Once a key that sealed format 1 values has been rotated out of the keyring,
//!   no format 1 value opens any more.
//! - Each row records the id of the key that sealed it (`secrets.key_id`; NULL for a row
//!   in plaintext). With a keyring, a plaintext row is refused like a value that fails
//!   authentication (see `StoreOptions::accept_plaintext_rows` for the upgrade window).
//! - A [`Keyring`] holds named 256-bit keys, one of them active for new writes; older keys
//!   stay to open rows until `kuma-secrets rotate-keys` has re-sealed them. Key bytes and
//!   opened plaintext are zeroed when dropped.
//!
//! ring's AEAD is used (already in the build for TLS); nothing here is hand-rolled crypto.
//!
//! Keyring file (YAML or JSON), created owner-only:
//! ```yaml
//! active: key-2
//! keys:
//!   key-1: <base64 of 32 random bytes>
//!   key-2: <base64 of 32 random bytes>
//! ```

use crate::domain::{MeshSpec, SecretKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

/// Why a keyring could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    /// The file could not be read or written.
    #[error("keyring {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid keyring.
    #[error("keyring {path}: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong (never the key material).
        reason: String,
    },
}

/// Why a stored value could not be opened.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum OpenError {
    /// The row names a key the keyring does not have.
    #[error("it is sealed with key id {key_id:?}, which is not in the keyring")]
    MissingKey {
        /// The key id of the row.
        key_id: String,
    },
    /// The tag did not verify: wrong key, altered bytes, or a value moved from another row.
    #[error(
        "it does not open with key {key_id:?}: the stored value was altered, moved from another row, or the key is wrong"
    )]
    Corrupt {
        /// The key id of the row.
        key_id: String,
    },
    /// The stored value is shorter than a nonce and a tag: it cannot be a sealed value.
    #[error("the stored value is too short to be sealed")]
    Truncated,
    /// The row is stored unsealed although the store has a keyring: written behind the
    /// service's back, or left from before encryption at rest.
    #[error(
        "it is stored unsealed although the store has a keyring: it was written behind the service's back, or before encryption at rest (while upgrading, start with --accept-plaintext-rows, then run kuma-secrets seal-plaintext)"
    )]
    Plaintext,
    /// The row grants authority (a token signing key, the admin token, a revocation list,
    /// a CA) and is stored unsealed although the store has a keyring: never read, whatever
    /// `--accept-plaintext-rows` says, and never sealed.
    #[error(
        "it grants authority (a token signing key, the admin token, a revocation list or a CA key) and is stored unsealed although the store has a keyring: it was written behind the service's back, or before encryption at rest; it is never read or sealed as it is: delete it and let the service generate a new one (or apply it again through the API)"
    )]
    PlaintextAuthority,
}

/// The random id of one write of a secret. It is stored beside the sealed value and bound
/// into its associated data, so a value of an earlier write does not open in a later one's
/// place. Random rather than the version number because a blind write is one SQL statement
/// that learns its version only when it runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct WriteId([u8; 16]);

impl WriteId {
    /// A fresh random id.
    ///
    /// # Panics
    /// If the operating system has no randomness to give.
    pub fn random() -> Self {
        let mut raw = [0u8; 16];
        getrandom::fill(&mut raw).expect("system randomness");
        Self(raw)
    }

    /// The id as stored; `None` for bytes that are not one.
    pub fn from_stored(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    /// The stored form.
    pub fn to_vec(self) -> Vec<u8> {
        self.0.to_vec()
    }
}

impl fmt::Debug for WriteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WriteId({})", crate::hex(&self.0))
    }
}

/// What a sealed value belongs to: its associated data. A value opens only under the
/// binding it was sealed with.
#[derive(Debug, Clone, Copy)]
pub enum Binding<'a> {
    /// A secret's value, as one write made it (format 2).
    Secret {
        /// The secret.
        key: &'a SecretKey,
        /// The write.
        write: WriteId,
    },
    /// A secret's value sealed before write ids existed (format 1): opened, never sealed.
    LegacySecret(&'a SecretKey),
    /// The inline private key of a Mesh's provided CA backend, as one write of the Mesh
    /// made it (see `seal_mesh_spec`).
    MeshCaKey {
        /// The Mesh.
        mesh: &'a str,
        /// The backend's name.
        backend: &'a str,
        /// The write of the Mesh that sealed it.
        write: WriteId,
        /// The rest of the backend (its certificate above all), as canonical JSON.
        rest: &'a [u8],
    },
    /// The inline client key of an ExternalService, as one write of it made it (see
    /// `seal_external_service_spec`).
    ExternalServiceKey {
        /// Its Mesh.
        mesh: &'a str,
        /// Its name.
        name: &'a str,
        /// The write that sealed it.
        write: WriteId,
        /// The rest of the spec (its client certificate above all), as canonical JSON.
        rest: &'a [u8],
    },
    /// A Mesh CA key sealed before write ids (format 1): opened, never sealed.
    LegacyMeshCaKey {
        /// The Mesh.
        mesh: &'a str,
        /// The backend's name.
        backend: &'a str,
    },
}

impl Binding<'_> {
    fn associated_data(&self) -> Vec<u8> {
        let mut aad = Vec::new();
        match self {
            Binding::Secret { key, write } => {
                aad.extend_from_slice(b"kuma-secrets/2\0");
                push_key(&mut aad, key);
                aad.push(0);
                aad.extend_from_slice(&write.0);
            }
            Binding::LegacySecret(key) => push_key(&mut aad, key),
            Binding::MeshCaKey {
                mesh,
                backend,
                write,
                rest,
            } => {
                aad.extend_from_slice(b"kuma-secrets/mesh-ca-key/2\0");
                aad.extend_from_slice(mesh.as_bytes());
                aad.push(0);
                aad.extend_from_slice(backend.as_bytes());
                aad.push(0);
                aad.extend_from_slice(&write.0);
                aad.extend_from_slice(rest);
            }
            Binding::ExternalServiceKey {
                mesh,
                name,
                write,
                rest,
            } => {
                aad.extend_from_slice(b"kuma-secrets/external-service-key/1\0");
                aad.extend_from_slice(mesh.as_bytes());
                aad.push(0);
                aad.extend_from_slice(name.as_bytes());
                aad.push(0);
                aad.extend_from_slice(&write.0);
                aad.extend_from_slice(rest);
            }
            Binding::LegacyMeshCaKey { mesh, backend } => {
                aad.extend_from_slice(b"kuma-secrets/mesh-ca-key\0");
                aad.extend_from_slice(mesh.as_bytes());
                aad.push(0);
                aad.extend_from_slice(backend.as_bytes());
            }
        }
        aad
    }
}

/// `type \0 mesh \0 name`: a secret's identity.
fn push_key(aad: &mut Vec<u8>, key: &SecretKey) {
    aad.extend_from_slice(key.secret_type().as_str().as_bytes());
    aad.push(0);
    if let Some(mesh) = key.mesh() {
        aad.extend_from_slice(mesh.as_str().as_bytes());
    }
    aad.push(0);
    aad.extend_from_slice(key.name().as_str().as_bytes());
}

/// Named AES-256 keys, one active. `Debug` never shows key material.
#[derive(Clone)]
pub struct Keyring {
    keys: BTreeMap<String, LessSafeKeyBox>,
    active: String,
}

/// The keyring a running store seals and opens with, shared by its clones, which a refresh
/// of the data keys replaces while the store serves (`crate::envelope::keep_data_keys`):
/// each seal or open takes the keyring current when it starts.
#[derive(Clone, Debug)]
pub struct SharedKeyring(std::sync::Arc<std::sync::RwLock<std::sync::Arc<Keyring>>>);

impl SharedKeyring {
    /// A shared keyring holding `keyring`.
    pub fn new(keyring: std::sync::Arc<Keyring>) -> Self {
        Self(std::sync::Arc::new(std::sync::RwLock::new(keyring)))
    }

    /// The keyring now.
    pub fn current(&self) -> std::sync::Arc<Keyring> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Makes `keyring` the one every clone seals and opens with from now on.
    pub fn replace(&self, keyring: std::sync::Arc<Keyring>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = keyring;
    }
}

impl From<std::sync::Arc<Keyring>> for SharedKeyring {
    fn from(keyring: std::sync::Arc<Keyring>) -> Self {
        Self::new(keyring)
    }
}

/// One key of the ring: its bytes (zeroed on drop; a clone is built from them, as
/// `LessSafeKey` is not `Clone`) and the AES-256-GCM key made from them once. Making it on
/// every call (the AES key schedule and the GHASH table) cost more than opening a cached
/// 1 KiB secret. (ring does not zero the schedule it holds when dropped; the bytes it is made
/// from are in the same process for as long.)
struct LessSafeKeyBox {
    raw: [u8; 32],
    key: LessSafeKey,
}

impl LessSafeKeyBox {
    fn new(raw: [u8; 32]) -> Self {
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &raw).expect("32-byte AES key"));
        Self { raw, key }
    }

    fn key(&self) -> &LessSafeKey {
        &self.key
    }
}

impl Clone for LessSafeKeyBox {
    fn clone(&self) -> Self {
        Self::new(self.raw)
    }
}

impl Drop for LessSafeKeyBox {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.raw);
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("key_ids", &self.keys.keys().collect::<Vec<_>>())
            .field("active", &self.active)
            .finish()
    }
}

#[derive(serde::Serialize)]
struct KeyringFile {
    active: String,
    keys: BTreeMap<String, String>,
}

/// A keyring file as read: `keys` in file order, so an id listed twice is caught (a map
/// would silently keep the last).
#[derive(serde::Deserialize)]
struct KeyringFileIn {
    active: String,
    #[serde(deserialize_with = "entries_in_order")]
    keys: Vec<(String, zeroize::Zeroizing<String>)>,
}

fn entries_in_order<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<(String, zeroize::Zeroizing<String>)>, D::Error> {
    struct Entries;
    impl<'de> serde::de::Visitor<'de> for Entries {
        type Value = Vec<(String, zeroize::Zeroizing<String>)>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a mapping of key ids to base64 keys")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some((id, key)) = map.next_entry::<String, String>()? {
                out.push((id, zeroize::Zeroizing::new(key)));
            }
            Ok(out)
        }
    }
    deserializer.deserialize_map(Entries)
}

impl Keyring {
    /// A keyring of one key, `id`, active. For tests and first starts.
    ///
    /// # Panics
    /// If `id` is not a valid key id.
    pub fn single(id: &str, raw: [u8; 32]) -> Self {
        assert!(valid_id(id), "invalid key id {id:?}");
        Self {
            keys: BTreeMap::from([(id.to_owned(), LessSafeKeyBox::new(raw))]),
            active: id.to_owned(),
        }
    }

    /// A fresh random 256-bit key.
    ///
    /// # Panics
    /// If the operating system has no randomness to give.
    pub fn random_key() -> [u8; 32] {
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw).expect("system randomness");
        raw
    }

    /// Adds (or replaces) key `id`.
    #[must_use]
    pub fn with_key(mut self, id: &str, raw: [u8; 32]) -> Self {
        self.keys.insert(id.to_owned(), LessSafeKeyBox::new(raw));
        self
    }

    /// Makes `id` the active key.
    ///
    /// # Panics
    /// If there is no key `id`.
    #[must_use]
    pub fn with_active(mut self, id: &str) -> Self {
        assert!(self.keys.contains_key(id), "no key {id:?}");
        self.active = id.to_owned();
        self
    }

    /// The id of the key new writes are sealed with.
    pub fn active_id(&self) -> &str {
        &self.active
    }

    /// Whether the keyring has key `id`.
    pub fn contains(&self, id: &str) -> bool {
        self.keys.contains_key(id)
    }

    /// Reads a keyring file.
    ///
    /// # Errors
    /// Unreadable file, one that others may read or write or that another user owns (as
    /// ssh refuses a private key), bad YAML, a key that is not 32 bytes of base64, a bad
    /// id, or an active id with no key.
    pub fn load(path: &Path) -> Result<Self, KeyringError> {
        let shown = path.display().to_string();
        check_private(path).map_err(|reason| KeyringError::Invalid {
            path: shown.clone(),
            reason,
        })?;
        let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|source| {
            KeyringError::Io {
                path: shown.clone(),
                source,
            }
        })?);
        #[cfg(unix)]
        if let Ok(meta) = std::fs::metadata(path) {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    keyring = %shown,
                    mode = format!("{mode:o}"),
                    "the keyring is readable by other users: anyone who can read it and the database can read every secret; chmod 600 it"
                );
            }
        }
        let invalid = |reason: String| KeyringError::Invalid {
            path: shown.clone(),
            reason,
        };
        let file: KeyringFileIn = serde_yaml_ng::from_str(&text).map_err(|e| {
            invalid(format!(
                "expected `active: ID` and `keys: {{ID: BASE64}}`: {e}"
            ))
        })?;
        let mut keys = BTreeMap::new();
        for (id, encoded) in file.keys {
            if !valid_id(&id) {
                return Err(invalid(format!(
                    "key id {id:?} must be 1 to 64 characters of a-z, 0-9, '-', '_' or '.'"
                )));
            }
            if keys.contains_key(&id) {
                return Err(invalid(format!(
                    "key id {id:?} is listed twice: every key needs its own id"
                )));
            }
            let decoded =
                zeroize::Zeroizing::new(STANDARD.decode(encoded.trim()).unwrap_or_default());
            let raw: [u8; 32] = decoded
                .as_slice()
                .try_into()
                .map_err(|_| invalid(format!("key {id:?} must be 32 bytes, base64-encoded")))?;
            keys.insert(id, LessSafeKeyBox::new(raw));
        }
        if !keys.contains_key(&file.active) {
            return Err(invalid(format!(
                "the active key {:?} is not among the keys",
                file.active
            )));
        }
        Ok(Self {
            keys,
            active: file.active,
        })
    }

    /// The ids of its keys, sorted.
    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// The bytes of key `id`, to wrap it as a data key (`crate::envelope::import_keyring`).
    pub(crate) fn key_bytes(&self, id: &str) -> Option<[u8; 32]> {
        self.keys.get(id).map(|key| key.raw)
    }

    /// Replaces the file at `path` with this keyring, owner-only, atomically (a new file
    /// renamed over the old one), so a crash never leaves half a keyring.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn save_replacing(&self, path: &Path) -> Result<(), KeyringError> {
        let mut temporary = path.as_os_str().to_owned();
        temporary.push(".new");
        let temporary = std::path::PathBuf::from(temporary);
        let _ = std::fs::remove_file(&temporary);
        self.save_new(&temporary)?;
        std::fs::rename(&temporary, path).map_err(|source| KeyringError::Io {
            path: path.display().to_string(),
            source,
        })
    }

    /// Writes the keyring to `path`, readable and writable by its owner only; refuses to
    /// overwrite an existing file.
    ///
    /// # Errors
    /// The file exists or cannot be written.
    pub fn save_new(&self, path: &Path) -> Result<(), KeyringError> {
        let file = KeyringFile {
            active: self.active.clone(),
            keys: self
                .keys
                .iter()
                .map(|(id, key)| (id.clone(), STANDARD.encode(key.raw)))
                .collect(),
        };
        let text = format!(
            "# kuma-secrets encryption keys. Losing this file loses every sealed secret: back it up\n# apart from the database. Add a key, make it active, then run `kuma-secrets rotate-keys`.\n{}",
            serde_yaml_ng::to_string(&file).expect("keyring serializes")
        );
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let io = |source| KeyringError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut out = options.open(path).map_err(io)?;
        std::io::Write::write_all(&mut out, text.as_bytes()).map_err(io)?;
        Ok(())
    }

    /// Seals `plaintext` bound to `binding` with the active key: `(key id, nonce || ct ||
    /// tag)`.
    ///
    /// # Panics
    /// If the operating system has no randomness to give, or for a
    /// [`Binding::LegacySecret`] (format 1 is never written).
    pub fn seal(&self, binding: &Binding<'_>, plaintext: &[u8]) -> (String, Vec<u8>) {
        assert!(
            !matches!(
                binding,
                Binding::LegacySecret(_) | Binding::LegacyMeshCaKey { .. }
            ),
            "format 1 is read only"
        );
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).expect("system randomness");
        let mut sealed = Vec::with_capacity(NONCE_LEN + plaintext.len() + AES_256_GCM.tag_len());
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(plaintext);
        let tag = self.keys[&self.active]
            .key()
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(binding.associated_data()),
                &mut sealed[NONCE_LEN..],
            )
            .expect("AES-GCM seals any length a secret can have");
        sealed.extend_from_slice(tag.as_ref());
        (self.active.clone(), sealed)
    }

    /// Opens a value bound to `binding`, sealed with key `key_id`. The plaintext buffer is
    /// the caller's; wrap it in something that zeroes it (as `SecretData` does).
    ///
    /// # Errors
    /// [`OpenError::MissingKey`] for a key id not in the keyring, [`OpenError::Corrupt`]
    /// when the tag does not verify under this binding.
    pub fn open(
        &self,
        binding: &Binding<'_>,
        key_id: &str,
        sealed: &[u8],
    ) -> Result<Vec<u8>, OpenError> {
        let Some(ring_key) = self.keys.get(key_id) else {
            return Err(OpenError::MissingKey {
                key_id: key_id.to_owned(),
            });
        };
        if sealed.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(OpenError::Truncated);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| OpenError::Truncated)?;
        let mut body = body.to_vec();
        let opened = ring_key
            .key()
            .open_in_place(nonce, Aad::from(binding.associated_data()), &mut body)
            .map(|plaintext| plaintext.len());
        match opened {
            Ok(len) => {
                // The tag's bytes after the plaintext are not secret; drop them in place.
                body.truncate(len);
                Ok(body)
            }
            Err(_) => {
                zeroize::Zeroize::zeroize(&mut body);
                Err(OpenError::Corrupt {
                    key_id: key_id.to_owned(),
                })
            }
        }
    }
}

/// The inline private keys of a Mesh's provided CA backends: `mtls.backends[i].conf.key`
/// given as `inline` (base64) or `inlineString` (text). Sealed at rest like secret data,
/// stored as `{"sealed": BASE64, "keyId": ID, "source": "inline"|"inlineString",
/// "writeId": BASE64}`: bound to the Mesh, the backend's name, the write of the Mesh that
/// sealed it, and the rest of the backend as that write gave it (its certificate above all),
/// so an older sealed key written back beside a newer certificate does not open. Keys sealed
/// before write ids (no `writeId`: format 1) are bound to the Mesh and backend name only;
/// they still open, and `rotate-keys` rewrites them.
///
/// Each backend with a `conf.key` object: its name, the canonical JSON of the backend
/// without `conf.key`, and the key object.
fn inline_keys_mut(spec: &mut MeshSpec) -> Vec<(String, Vec<u8>, &mut Map<String, Value>)> {
    let Some(Value::Array(backends)) = spec
        .get_mut("mtls")
        .and_then(Value::as_object_mut)
        .and_then(|mtls| mtls.get_mut("backends"))
    else {
        return Vec::new();
    };
    backends
        .iter_mut()
        .filter_map(Value::as_object_mut)
        .filter_map(|backend| {
            let name = backend
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            let mut rest = Value::Object(backend.clone());
            if let Some(conf) = rest.get_mut("conf").and_then(Value::as_object_mut) {
                conf.remove("key");
            }
            let mut canonical = Vec::new();
            write_canonical(&rest, &mut canonical);
            let key = backend
                .get_mut("conf")
                .and_then(Value::as_object_mut)?
                .get_mut("key")?
                .as_object_mut()?;
            Some((name, canonical, key))
        })
        .collect()
}

/// `value` as JSON with every object's keys sorted: the same bytes whatever order (and
/// number spelling) a database (Postgres `jsonb`) or a client gave.
fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(Value::String(key.clone()).to_string().as_bytes());
                out.push(b':');
                write_canonical(&map[key], out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        // `1e2` from a client comes back from Postgres' `jsonb` as `100`: numbers are
        // written as the f64 they denote.
        Value::Number(n) => out.extend_from_slice(n.as_f64().unwrap_or(0.0).to_string().as_bytes()),
        scalar => out.extend_from_slice(scalar.to_string().as_bytes()),
    }
}

const INLINE_SOURCES: [&str; 2] = ["inline", "inlineString"];

/// Seals every inline CA private key in `spec` (a Mesh `mesh`'s, as the user gave it),
/// bound to one fresh write id for this write of the Mesh. A key object holds one source
/// (the domain refuses two, as Kuma's `oneof` does); should it hold both, both are sealed
/// away rather than one left in clear: the first is kept, sealed.
pub fn seal_mesh_spec(keyring: &Keyring, mesh: &str, spec: &mut MeshSpec) {
    let write = WriteId::random();
    for (backend, rest, key) in inline_keys_mut(spec) {
        let binding = Binding::MeshCaKey {
            mesh,
            backend: &backend,
            write,
            rest: &rest,
        };
        seal_key_object(keyring, key, write, &binding);
    }
}

/// Seals an inline key object (`{inline|inlineString: ...}`) in place, bound to `binding`
/// (made with `write`): `{"sealed", "keyId", "source", "writeId"}`. A key object that is a
/// secret reference is left as it is.
fn seal_key_object(
    keyring: &Keyring,
    key: &mut Map<String, Value>,
    write: WriteId,
    binding: &Binding<'_>,
) {
    let Some(source) = INLINE_SOURCES.into_iter().find(|s| key.contains_key(*s)) else {
        return;
    };
    let Some(Value::String(text)) = key.remove(source) else {
        return;
    };
    for other in INLINE_SOURCES {
        key.remove(other);
    }
    let text = zeroize::Zeroizing::new(text);
    let (key_id, sealed) = keyring.seal(binding, text.as_bytes());
    key.insert("sealed".into(), Value::String(STANDARD.encode(sealed)));
    key.insert("keyId".into(), Value::String(key_id));
    key.insert("source".into(), Value::String(source.into()));
    key.insert("writeId".into(), Value::String(STANDARD.encode(write.0)));
}

/// Opens a sealed key object in place, giving back `{inline|inlineString: ...}`;
/// `binding` makes the binding from the stored write id (`None`: sealed before write ids).
/// A key object in clear is left as it is, unless a keyring is given (a private key is
/// never read in clear then).
fn open_key_object<'b>(
    keyring: Option<&Keyring>,
    key: &mut Map<String, Value>,
    binding: impl FnOnce(Option<WriteId>) -> Option<Binding<'b>>,
) -> Result<(), OpenError> {
    let unsealed = INLINE_SOURCES.into_iter().any(|s| key.contains_key(s));
    if !key.contains_key("sealed") {
        if keyring.is_some() && unsealed {
            return Err(OpenError::PlaintextAuthority);
        }
        return Ok(());
    }
    if unsealed {
        // Nothing this service writes: key material in clear beside a sealed key.
        return Err(OpenError::PlaintextAuthority);
    }
    let text = |field: &str| key.get(field).and_then(Value::as_str).unwrap_or("");
    let key_id = text("keyId").to_owned();
    let Some(keyring) = keyring else {
        return Err(OpenError::MissingKey { key_id });
    };
    let source = match text("source") {
        "inlineString" => "inlineString",
        _ => "inline",
    };
    let sealed = STANDARD
        .decode(text("sealed"))
        .map_err(|_| OpenError::Truncated)?;
    let write = match key.get("writeId") {
        None => None,
        Some(write) => Some(
            write
                .as_str()
                .and_then(|w| STANDARD.decode(w).ok())
                .and_then(|w| WriteId::from_stored(&w))
                .ok_or_else(|| OpenError::Corrupt {
                    key_id: key_id.clone(),
                })?,
        ),
    };
    let binding = binding(write).ok_or_else(|| OpenError::Corrupt {
        key_id: key_id.clone(),
    })?;
    let plaintext = zeroize::Zeroizing::new(keyring.open(&binding, &key_id, &sealed)?);
    let value = String::from_utf8(plaintext.to_vec()).map_err(|_| OpenError::Corrupt {
        key_id: key_id.clone(),
    })?;
    key.clear();
    key.insert(source.into(), Value::String(value));
    Ok(())
}

/// Opens every sealed inline CA private key of a stored spec, giving back the spec as the
/// user wrote it.
///
/// # Errors
/// A key that does not open; with a keyring, an inline key stored unsealed (a CA key
/// grants authority: even while plaintext secret rows are accepted), or a sealed key with an unsealed
/// one beside it; a sealed key without a keyring.
pub fn open_mesh_spec(
    keyring: Option<&Keyring>,
    mesh: &str,
    spec: &mut MeshSpec,
) -> Result<(), OpenError> {
    for (backend, rest, key) in inline_keys_mut(spec) {
        open_key_object(keyring, key, |write| {
            Some(match write {
                None => Binding::LegacyMeshCaKey {
                    mesh,
                    backend: &backend,
                },
                Some(write) => Binding::MeshCaKey {
                    mesh,
                    backend: &backend,
                    write,
                    rest: &rest,
                },
            })
        })?;
    }
    Ok(())
}

/// An ExternalService's inline client key (`networking.tls.clientKey` given as `inline` or
/// `inlineString`): the canonical JSON of the spec without it, and the key object.
fn external_service_key_mut(
    spec: &mut Map<String, Value>,
) -> Option<(Vec<u8>, &mut Map<String, Value>)> {
    let mut rest = Value::Object(spec.clone());
    rest.get_mut("networking")?
        .get_mut("tls")?
        .as_object_mut()?
        .remove("clientKey");
    let mut canonical = Vec::new();
    write_canonical(&rest, &mut canonical);
    let key = spec
        .get_mut("networking")?
        .get_mut("tls")?
        .get_mut("clientKey")?
        .as_object_mut()?;
    Some((canonical, key))
}

/// Seals the inline client key of an ExternalService's spec (`networking.tls.clientKey`),
/// as a Mesh's inline CA keys are: bound to the Mesh, the ExternalService's name, this
/// write, and the rest of the spec (its client certificate above all).
pub fn seal_external_service_spec(
    keyring: &Keyring,
    mesh: &str,
    name: &str,
    spec: &mut Map<String, Value>,
) {
    let write = WriteId::random();
    if let Some((rest, key)) = external_service_key_mut(spec) {
        let binding = Binding::ExternalServiceKey {
            mesh,
            name,
            write,
            rest: &rest,
        };
        seal_key_object(keyring, key, write, &binding);
    }
}

/// Opens the sealed inline client key of a stored ExternalService spec.
///
/// # Errors
/// As [`open_mesh_spec`].
pub fn open_external_service_spec(
    keyring: Option<&Keyring>,
    mesh: &str,
    name: &str,
    spec: &mut Map<String, Value>,
) -> Result<(), OpenError> {
    if let Some((rest, key)) = external_service_key_mut(spec) {
        open_key_object(keyring, key, |write| {
            write.map(|write| Binding::ExternalServiceKey {
                mesh,
                name,
                write,
                rest: &rest,
            })
        })?;
    }
    Ok(())
}

/// What sealing a stored spec's inline CA keys shows, for `rotate-keys`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MeshKeySeals {
    /// Key ids sealing its inline CA keys.
    pub key_ids: Vec<String>,
    /// Whether any key field holds key material in clear (an unsealed key, or one beside a
    /// sealed key).
    pub plaintext: bool,
    /// Whether any key is sealed in format 1 (before write ids).
    pub format_1: bool,
}

/// How the inline CA keys of a stored spec are sealed.
pub fn mesh_spec_seals(spec: &MeshSpec) -> MeshKeySeals {
    let mut spec = spec.clone();
    let mut seals = MeshKeySeals::default();
    for (_, _, key) in inline_keys_mut(&mut spec) {
        seals.add(key);
    }
    seals
}

/// How the inline client key of a stored ExternalService spec is sealed (the same report
/// as a Mesh's).
pub fn external_service_spec_seals(spec: &Map<String, Value>) -> MeshKeySeals {
    let mut spec = spec.clone();
    let mut seals = MeshKeySeals::default();
    if let Some((_, key)) = external_service_key_mut(&mut spec) {
        seals.add(key);
    }
    seals
}

impl MeshKeySeals {
    /// Adds what one stored key object shows.
    fn add(&mut self, key: &Map<String, Value>) {
        self.plaintext |= INLINE_SOURCES.into_iter().any(|s| key.contains_key(s));
        if let Some(id) = key.get("keyId").and_then(Value::as_str)
            && key.contains_key("sealed")
        {
            self.key_ids.push(id.to_owned());
            self.format_1 |= !key.contains_key("writeId");
        }
    }
}

/// Why a keyring file cannot be trusted, as ssh judges a private key: anyone but its owner
/// may read or write it, or its owner is not the user running this. A file missing or
/// unreadable is left for the read to report.
fn check_private(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(());
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "its permissions {mode:04o} let other users at the keys: chmod 600 it (and look at who may have read it)"
        ));
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(format!(
            "it is owned by uid {}, not by the user running kuma-secrets (uid {me}): another user could have replaced the keys; chown it",
            meta.uid()
        ));
    }
    Ok(())
}

pub(crate) fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(mesh: Option<&str>, name: &str) -> SecretKey {
        SecretKey::parse(mesh, name).unwrap()
    }

    fn bound(key: &SecretKey, write: WriteId) -> Binding<'_> {
        Binding::Secret { key, write }
    }

    #[test]
    fn seal_then_open_round_trips_with_a_fresh_nonce_each_time() {
        let ring = Keyring::single("k1", Keyring::random_key());
        let k = key(Some("default"), "tls");
        let write = WriteId::random();
        let (id, a) = ring.seal(&bound(&k, write), b"secret bytes");
        let (_, b) = ring.seal(&bound(&k, write), b"secret bytes");
        assert_eq!(id, "k1");
        assert_ne!(a, b, "a fresh nonce per write");
        assert_eq!(
            ring.open(&bound(&k, write), "k1", &a).unwrap(),
            b"secret bytes"
        );
    }

    #[test]
    fn a_value_moved_to_another_secret_or_altered_does_not_open() {
        let ring = Keyring::single("k1", Keyring::random_key());
        let write = WriteId::random();
        let (_, sealed) = ring.seal(&bound(&key(Some("default"), "a"), write), b"x");
        for other in [
            key(Some("default"), "b"),
            key(Some("other"), "a"),
            key(None, "a"),
        ] {
            assert_eq!(
                ring.open(&bound(&other, write), "k1", &sealed),
                Err(OpenError::Corrupt {
                    key_id: "k1".into()
                })
            );
        }
        let mut flipped = sealed.clone();
        flipped[NONCE_LEN] ^= 1;
        let a = key(Some("default"), "a");
        assert!(ring.open(&bound(&a, write), "k1", &flipped).is_err());
        assert_eq!(
            ring.open(&bound(&a, write), "k2", &sealed),
            Err(OpenError::MissingKey {
                key_id: "k2".into()
            })
        );
    }

    #[test]
    fn a_value_of_an_earlier_write_does_not_open_in_a_later_writes_place() {
        let ring = Keyring::single("k1", Keyring::random_key());
        let k = key(Some("default"), "tls");
        let (first, second) = (WriteId::random(), WriteId::random());
        let (_, old) = ring.seal(&bound(&k, first), b"old");
        assert!(ring.open(&bound(&k, second), "k1", &old).is_err());
        assert!(
            ring.open(&Binding::LegacySecret(&k), "k1", &old).is_err(),
            "format 2 values never open as format 1"
        );
    }

    #[test]
    fn mesh_ca_keys_are_bound_to_their_mesh_and_backend() {
        let ring = Keyring::single("k1", Keyring::random_key());
        let write = WriteId::random();
        let here = Binding::MeshCaKey {
            mesh: "default",
            backend: "ca-1",
            write,
            rest: b"{}",
        };
        let (id, sealed) = ring.seal(&here, b"PRIVATE");
        assert_eq!(ring.open(&here, &id, &sealed).unwrap(), b"PRIVATE");
        let elsewhere = Binding::MeshCaKey {
            mesh: "other",
            backend: "ca-1",
            write,
            rest: b"{}",
        };
        assert!(ring.open(&elsewhere, &id, &sealed).is_err());
    }

    fn provided_mesh(cert: &str, key: Value) -> MeshSpec {
        let spec = serde_json::json!({"mtls": {"backends": [{
            "name": "ca-1", "type": "provided",
            "conf": {"cert": {"inlineString": cert}, "key": key},
        }]}});
        spec.as_object().unwrap().clone()
    }

    #[test]
    fn an_older_sealed_mesh_key_does_not_open_beside_a_newer_certificate() {
        let ring = Keyring::single("k1", Keyring::random_key());
        let mut old = provided_mesh("CERT-1", serde_json::json!({"inlineString": "KEY-1"}));
        seal_mesh_spec(&ring, "default", &mut old);
        let mut new = provided_mesh("CERT-2", serde_json::json!({"inlineString": "KEY-2"}));
        seal_mesh_spec(&ring, "default", &mut new);
        let old_key = old["mtls"]["backends"][0]["conf"]["key"].clone();

        // The old key object written back beside the new certificate: refused.
        let mut replayed = new.clone();
        replayed["mtls"]["backends"][0]["conf"]["key"] = old_key.clone();
        assert!(open_mesh_spec(Some(&ring), "default", &mut replayed).is_err());
        // Its write id swapped for the new one: refused too.
        let mut relabelled = replayed.clone();
        relabelled["mtls"]["backends"][0]["conf"]["key"]["writeId"] =
            new["mtls"]["backends"][0]["conf"]["key"]["writeId"].clone();
        assert!(open_mesh_spec(Some(&ring), "default", &mut relabelled).is_err());
        // Each opens where it was sealed, whatever order the keys come back in.
        let mut reordered: MeshSpec = serde_json::from_str(
            &serde_json::to_string(&new)
                .unwrap()
                .replace("\"name\":\"ca-1\",", ""),
        )
        .unwrap();
        reordered["mtls"]["backends"][0]
            .as_object_mut()
            .unwrap()
            .insert("name".into(), "ca-1".into());
        open_mesh_spec(Some(&ring), "default", &mut reordered).unwrap();
        assert_eq!(
            reordered["mtls"]["backends"][0]["conf"]["key"]["inlineString"],
            "KEY-2"
        );
    }

    #[test]
    fn a_key_in_clear_beside_a_sealed_one_is_found_and_refused() {
        let ring = Keyring::single("k1", Keyring::random_key());
        let mut spec = provided_mesh("CERT", serde_json::json!({"inline": "S0VZ"}));
        seal_mesh_spec(&ring, "default", &mut spec);
        assert!(!mesh_spec_seals(&spec).plaintext);
        spec["mtls"]["backends"][0]["conf"]["key"]
            .as_object_mut()
            .unwrap()
            .insert("inlineString".into(), "PLANTED".into());
        assert!(mesh_spec_seals(&spec).plaintext);
        assert_eq!(
            open_mesh_spec(Some(&ring), "default", &mut spec.clone()),
            Err(OpenError::PlaintextAuthority)
        );
    }

    #[test]
    fn keyring_files_round_trip_owner_only_and_reject_bad_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.yaml");
        let ring = Keyring::single("key-1", Keyring::random_key());
        ring.save_new(&path).unwrap();
        assert!(ring.save_new(&path).is_err(), "never overwrites");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let loaded = Keyring::load(&path).unwrap();
        let k = key(None, "g");
        let write = WriteId::random();
        let (id, sealed) = ring.seal(&bound(&k, write), b"v");
        assert_eq!(loaded.open(&bound(&k, write), &id, &sealed).unwrap(), b"v");
        assert!(!format!("{loaded:?}").contains(&STANDARD.encode(ring.keys["key-1"].raw)));

        std::fs::write(&path, "active: a\nkeys:\n  a: c2hvcnQ=\n").unwrap();
        let err = Keyring::load(&path).unwrap_err().to_string();
        assert!(err.contains("must be 32 bytes"), "{err}");
        std::fs::write(
            &path,
            format!("active: b\nkeys:\n  a: {}\n", STANDARD.encode([0u8; 32])),
        )
        .unwrap();
        let err = Keyring::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("active key \"b\" is not among the keys"),
            "{err}"
        );
    }

    fn owner_only(path: &Path) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    #[test]
    fn a_keyring_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.yaml");
        Keyring::single("key-1", Keyring::random_key())
            .save_new(&path)
            .unwrap();
        Keyring::load(&path).unwrap();
        for mode in [0o640, 0o604, 0o620] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = Keyring::load(&path).unwrap_err().to_string();
            assert!(err.contains("chmod 600"), "{mode:o}: {err}");
        }
    }

    #[test]
    fn a_keyring_listing_one_id_twice_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.yaml");
        let (a, b) = (
            STANDARD.encode(Keyring::random_key()),
            STANDARD.encode(Keyring::random_key()),
        );
        std::fs::write(
            &path,
            format!("active: key-1\nkeys:\n  key-1: {a}\n  key-1: {b}\n"),
        )
        .unwrap();
        owner_only(&path);
        let err = Keyring::load(&path).unwrap_err().to_string();
        assert!(err.contains("\"key-1\" is listed twice"), "{err}");
    }
}
