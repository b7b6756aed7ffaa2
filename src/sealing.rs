//! Encryption at rest: secret bytes are sealed with AES-256-GCM before they reach either
//! backend, and opened after they are read.
//!
//! - A fresh random 96-bit nonce per write; the stored value is `nonce || ciphertext || tag`.
//! - The secret's identity (`type`, `mesh`, `name`) is the associated data, so a value
//!   copied into another row fails to open instead of decrypting as the wrong secret.
//! - Each row records the id of the key that sealed it (`secrets.key_id`; NULL for a row
//!   still in plaintext, written before sealing existed or with `--allow-plaintext-secrets`).
//! - A [`Keyring`] holds named 256-bit keys, one of them active for new writes; older keys
//!   stay to open rows until `kuma-secrets rotate-keys` has re-sealed them.
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

use crate::domain::SecretKey;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
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
    /// The store holds a plaintext row but has no way to say so (not expected).
    #[error("the stored value is too short to be sealed")]
    Truncated,
}

/// Named AES-256 keys, one active. `Debug` never shows key material.
#[derive(Clone)]
pub struct Keyring {
    keys: BTreeMap<String, LessSafeKeyBox>,
    active: String,
}

/// `LessSafeKey` is not `Clone`; keep the raw bytes to rebuild it.
#[derive(Clone)]
struct LessSafeKeyBox {
    raw: [u8; 32],
}

impl LessSafeKeyBox {
    fn key(&self) -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &self.raw).expect("32-byte AES key"))
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

#[derive(serde::Deserialize, serde::Serialize)]
struct KeyringFile {
    active: String,
    keys: BTreeMap<String, String>,
}

impl Keyring {
    /// A keyring of one key, `id`, active. For tests and first starts.
    ///
    /// # Panics
    /// If `id` is not a valid key id.
    pub fn single(id: &str, raw: [u8; 32]) -> Self {
        assert!(valid_id(id), "invalid key id {id:?}");
        Self {
            keys: BTreeMap::from([(id.to_owned(), LessSafeKeyBox { raw })]),
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
        self.keys.insert(id.to_owned(), LessSafeKeyBox { raw });
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
    /// Unreadable file, bad YAML, a key that is not 32 bytes of base64, a bad id, or an
    /// active id with no key.
    pub fn load(path: &Path) -> Result<Self, KeyringError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| KeyringError::Io {
            path: shown.clone(),
            source,
        })?;
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
        let file: KeyringFile = serde_yaml_ng::from_str(&text).map_err(|e| {
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
            let raw: [u8; 32] = STANDARD
                .decode(encoded.trim())
                .ok()
                .and_then(|bytes| bytes.try_into().ok())
                .ok_or_else(|| invalid(format!("key {id:?} must be 32 bytes, base64-encoded")))?;
            keys.insert(id, LessSafeKeyBox { raw });
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

    /// Seals `plaintext` of secret `key` with the active key: `(key id, nonce || ct || tag)`.
    ///
    /// # Panics
    /// If the operating system has no randomness to give.
    pub fn seal(&self, key: &SecretKey, plaintext: &[u8]) -> (String, Vec<u8>) {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).expect("system randomness");
        let mut sealed = Vec::with_capacity(NONCE_LEN + plaintext.len() + AES_256_GCM.tag_len());
        sealed.extend_from_slice(&nonce);
        let mut body = plaintext.to_vec();
        self.keys[&self.active]
            .key()
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(associated_data(key)),
                &mut body,
            )
            .expect("AES-GCM seals any length a secret can have");
        sealed.extend_from_slice(&body);
        (self.active.clone(), sealed)
    }

    /// Opens a value of secret `key` sealed with key `key_id`.
    ///
    /// # Errors
    /// [`OpenError::MissingKey`] for a key id not in the keyring, [`OpenError::Corrupt`]
    /// when the tag does not verify.
    pub fn open(&self, key: &SecretKey, key_id: &str, sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        let Some(ring_key) = self.keys.get(key_id) else {
            return Err(OpenError::MissingKey {
                key_id: key_id.to_owned(),
            });
        };
        if sealed.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(OpenError::Truncated);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let mut body = body.to_vec();
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| OpenError::Truncated)?;
        let plaintext = ring_key
            .key()
            .open_in_place(nonce, Aad::from(associated_data(key)), &mut body)
            .map_err(|_| OpenError::Corrupt {
                key_id: key_id.to_owned(),
            })?;
        Ok(plaintext.to_vec())
    }
}

/// `type \0 mesh \0 name`: binds a sealed value to its row.
fn associated_data(key: &SecretKey) -> Vec<u8> {
    let mut aad = Vec::new();
    aad.extend_from_slice(key.secret_type().as_str().as_bytes());
    aad.push(0);
    if let Some(mesh) = key.mesh() {
        aad.extend_from_slice(mesh.as_str().as_bytes());
    }
    aad.push(0);
    aad.extend_from_slice(key.name().as_str().as_bytes());
    aad
}

fn valid_id(id: &str) -> bool {
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

    #[test]
    fn seal_then_open_round_trips_with_a_fresh_nonce_each_time() {
        let ring = Keyring::single("k1", Keyring::random_key());
        let k = key(Some("default"), "tls");
        let (id, a) = ring.seal(&k, b"secret bytes");
        let (_, b) = ring.seal(&k, b"secret bytes");
        assert_eq!(id, "k1");
        assert_ne!(a, b, "a fresh nonce per write");
        assert_eq!(ring.open(&k, "k1", &a).unwrap(), b"secret bytes");
    }

    #[test]
    fn a_value_moved_to_another_secret_or_altered_does_not_open() {
        let ring = Keyring::single("k1", Keyring::random_key());
        let (_, sealed) = ring.seal(&key(Some("default"), "a"), b"x");
        for other in [
            key(Some("default"), "b"),
            key(Some("other"), "a"),
            key(None, "a"),
        ] {
            assert_eq!(
                ring.open(&other, "k1", &sealed),
                Err(OpenError::Corrupt {
                    key_id: "k1".into()
                })
            );
        }
        let mut flipped = sealed.clone();
        flipped[NONCE_LEN] ^= 1;
        assert!(
            ring.open(&key(Some("default"), "a"), "k1", &flipped)
                .is_err()
        );
        assert_eq!(
            ring.open(&key(Some("default"), "a"), "k2", &sealed),
            Err(OpenError::MissingKey {
                key_id: "k2".into()
            })
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
        let (id, sealed) = ring.seal(&k, b"v");
        assert_eq!(loaded.open(&k, &id, &sealed).unwrap(), b"v");
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
}
