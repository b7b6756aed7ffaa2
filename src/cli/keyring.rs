//! Which keyring a command seals and opens secrets with (`--encryption-keys SOURCE`, env
//! `KUMA_SECRETS_ENCRYPTION_KEYS`), and the one way to store plaintext on purpose
//! (`--allow-plaintext-secrets`).
//!
//! A source is a keyring file (`file:PATH`, or a bare path), or a key-encryption key in an
//! HSM (`pkcs11:…`, see `crate::envelope::pkcs11`) or in AWS KMS (`awskms:…`, feature
//! `awskms`): then the keyring is the store's data keys, unwrapped by that key
//! (`crate::envelope`).
//!
//! Without a keyring, the embedded SQLite default uses the file next to its database
//! (`kuma-secrets.db` → `kuma-secrets.db.keys`), generating it owner-only on first start.
//! A Postgres store has no such place: commands that write to one need a keyring or the
//! explicit plaintext flag.

use crate::envelope::{self, KeyEncryptionKey};
use crate::sealing::Keyring;
use crate::store::{AnyStore, StoreOptions};
use crate::store::{Backend, StoreUrl};
use anyhow::Context;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Encryption flags of a command that opens a store.
#[derive(Debug, Clone, clap::Args)]
pub struct EncryptionArgs {
    /// Where the keys are: a keyring file (`file:PATH` or PATH: `active: ID` and `keys:
    /// {ID: BASE64 of 32 bytes}`), or a key that wraps the store's data keys, in an HSM
    /// (`pkcs11:token=…;object=…?module-path=…&pin-source=file:…`) or in AWS KMS
    /// (`awskms:alias/NAME?region=…`, when built with the awskms feature). Default for
    /// SQLite: the file next to the database (`<db>.keys`), created on first start.
    #[arg(long = "encryption-keys", env = "KUMA_SECRETS_ENCRYPTION_KEYS", value_parser = KeySource::parse)]
    pub keys: Option<KeySource>,
    /// Store secret data unencrypted when no keyring is given (needed for Postgres without
    /// --encryption-keys). Anyone with a dump or a replica can then read every secret.
    #[arg(long, env = "KUMA_SECRETS_ALLOW_PLAINTEXT_SECRETS")]
    pub allow_plaintext_secrets: bool,
    /// With a keyring, still read secrets stored in plaintext. Only while upgrading a store
    /// from before encryption at rest, between `migrate up` and `rotate-keys`: otherwise a
    /// plaintext row is refused, since anyone who can write to the database could plant one.
    #[arg(long, env = "KUMA_SECRETS_ACCEPT_PLAINTEXT_ROWS")]
    pub accept_plaintext_rows: bool,
}

impl EncryptionArgs {
    /// `--accept-plaintext-rows`, logged loudly when set.
    pub fn accept_plaintext_rows(&self) -> bool {
        if self.accept_plaintext_rows {
            tracing::warn!(
                "--accept-plaintext-rows: secrets stored unsealed are served as they are. Use it only while upgrading, then run kuma-secrets rotate-keys and restart without it: until then, anyone who can write to the database can plant a secret"
            );
        }
        self.accept_plaintext_rows
    }
}

/// Where a command's keys are (`--encryption-keys`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A keyring file: `file:PATH`, or a path.
    File(PathBuf),
    /// A key-encryption key in an HSM or a KMS, wrapping the store's data keys.
    Kek(KekUri),
}

impl KeySource {
    /// `file:PATH`, `pkcs11:…`, `awskms:…`, or a path.
    ///
    /// # Errors
    /// An invalid key source URI, or a scheme this build has no source for.
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(kek) = KekUri::parse(text)? {
            return Ok(KeySource::Kek(kek));
        }
        if let Some(path) = text.strip_prefix("file:") {
            return Ok(KeySource::File(PathBuf::from(path)));
        }
        if let Some((scheme, _)) = text.split_once(':')
            && scheme.len() > 1
            && scheme
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        {
            return Err(if scheme == "awskms" {
                "this build has no AWS KMS key source: build with --features awskms".to_owned()
            } else {
                format!(
                    "no key source {scheme:?}: use file:PATH, pkcs11:… or (built with --features awskms) awskms:…"
                )
            });
        }
        Ok(KeySource::File(PathBuf::from(text)))
    }
}

/// A key-encryption key's URI: which HSM or KMS key wraps the store's data keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KekUri {
    /// A key in an HSM, through PKCS#11 (`pkcs11:…`, RFC 7512).
    Pkcs11(envelope::pkcs11::Pkcs11Uri),
    /// A key in AWS KMS (`awskms:…`).
    #[cfg(feature = "awskms")]
    AwsKms(envelope::awskms::AwsKmsUri),
}

impl KekUri {
    /// The URI in `text`, or `None` when it names no key-encryption key.
    ///
    /// # Errors
    /// A `pkcs11:` or `awskms:` URI that is not valid.
    pub fn parse(text: &str) -> Result<Option<Self>, String> {
        if text.starts_with("pkcs11:") {
            return text
                .parse()
                .map(|uri| Some(KekUri::Pkcs11(uri)))
                .map_err(|e: envelope::pkcs11::UriError| e.to_string());
        }
        #[cfg(feature = "awskms")]
        if text.starts_with("awskms:") {
            return text
                .parse()
                .map(|uri| Some(KekUri::AwsKms(uri)))
                .map_err(|e: envelope::awskms::UriError| e.to_string());
        }
        Ok(None)
    }

    /// The key's name before it is opened: no module path, no PIN, no endpoint.
    pub fn name(&self) -> String {
        match self {
            KekUri::Pkcs11(uri) => uri.name(),
            #[cfg(feature = "awskms")]
            KekUri::AwsKms(uri) => uri.name(),
        }
    }

    /// The key, opened.
    ///
    /// # Errors
    /// As `envelope::pkcs11::open` and `envelope::awskms::open`; [`is_retryable`] tells
    /// which may pass.
    pub async fn open(&self) -> Result<Arc<dyn KeyEncryptionKey>, envelope::EnvelopeError> {
        match self {
            KekUri::Pkcs11(uri) => envelope::pkcs11::open(uri).await,
            #[cfg(feature = "awskms")]
            KekUri::AwsKms(uri) => envelope::awskms::open(uri).await,
        }
    }

    /// Makes the key (`kuma-secrets generate kek`); returns its name as stored.
    ///
    /// # Errors
    /// The key exists, or the source refused.
    pub async fn generate(&self) -> anyhow::Result<String> {
        Ok(match self {
            KekUri::Pkcs11(uri) => {
                let uri = uri.clone();
                tokio::task::spawn_blocking(move || {
                    envelope::pkcs11::Pkcs11Kek::generate(&uri).map(|kek| kek.name().to_owned())
                })
                .await??
            }
            #[cfg(feature = "awskms")]
            KekUri::AwsKms(uri) => envelope::awskms::AwsKmsKek::generate(uri)
                .await?
                .name()
                .to_owned(),
        })
    }
}

/// The keyring of `store_url`'s data keys, unwrapped by `kek`; a store that has none gets
/// its first where the command writes (`None` where it only reads).
async fn data_keys_keyring(
    store_url: &StoreUrl,
    kek: Arc<dyn KeyEncryptionKey>,
    access: Access,
) -> anyhow::Result<Option<Arc<Keyring>>> {
    let name = kek.name().to_owned();
    let store = AnyStore::open(store_url.expose(), StoreOptions::for_data_keys())
        .await
        .with_context(|| format!("cannot open the store {store_url} to read its data keys"))?;
    let keyring = envelope::open_keyring(&store, kek, access == Access::Write).await;
    store.close().await;
    let Some(keyring) = keyring? else {
        return Ok(None);
    };
    tracing::info!(kek = %name, active = keyring.active_id(), "secret data is sealed with AES-256-GCM data keys wrapped by the key-encryption key");
    Ok(Some(Arc::new(keyring)))
}

/// The keyring of `store_url`'s data keys unwrapped by the key `uri` (in an HSM or a KMS),
/// its first data key made if it has none, and the key-encryption key (what `serve` opens).
///
/// # Errors
/// As [`KekUri::open`] and `envelope::open_keyring`; [`is_retryable`] tells which may pass.
pub async fn kek_keyring(
    store_url: &StoreUrl,
    uri: &KekUri,
) -> anyhow::Result<(Arc<Keyring>, Arc<dyn KeyEncryptionKey>)> {
    let kek = uri.open().await?;
    let keyring = data_keys_keyring(store_url, kek.clone(), Access::Write).await?;
    Ok((keyring.expect("a first data key is made for writing"), kek))
}

/// Whether a failure to get the keys may pass by itself: the key source or the database
/// did not answer.
pub fn is_retryable(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<envelope::EnvelopeError>()
            .is_some_and(envelope::is_retryable)
            || cause
                .downcast_ref::<crate::store::StoreError>()
                .is_some_and(crate::store::StoreError::is_retryable)
    })
}

/// What the command does with the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reads only: no keyring is fine (sealed rows then fail to open, naming their key).
    Read,
    /// Writes secrets: a keyring, the SQLite default one, or an explicit plaintext choice.
    Write,
}

/// Store options for `store_url` sealed with the keyring `args` choose, or without one
/// where the user chose plaintext (`--allow-plaintext-secrets`) or only reads.
///
/// # Errors
/// An unreadable or invalid keyring file, or a Postgres store written without a keyring
/// or `--allow-plaintext-secrets`.
pub async fn store_options(
    store_url: &StoreUrl,
    args: &EncryptionArgs,
    access: Access,
) -> anyhow::Result<StoreOptions> {
    Ok(match resolve(store_url, args, access).await? {
        Some(keyring) => StoreOptions::sealed_with(keyring),
        None => StoreOptions::allow_plaintext_secrets(),
    })
}

/// The keyring for `store_url` that `args` choose (see [`store_options`]); `None` where the
/// user chose plaintext (`--allow-plaintext-secrets`) or only reads.
///
/// # Errors
/// A keyring that does not load, or a Postgres store with neither a keyring nor the
/// explicit plaintext choice.
pub async fn resolve(
    store_url: &StoreUrl,
    args: &EncryptionArgs,
    access: Access,
) -> anyhow::Result<Option<Arc<Keyring>>> {
    match &args.keys {
        Some(KeySource::File(path)) => {
            let keyring = Keyring::load(path)?;
            tracing::info!(keyring = %path.display(), active = keyring.active_id(), "secret data is sealed with AES-256-GCM");
            return Ok(Some(Arc::new(keyring)));
        }
        Some(KeySource::Kek(uri)) => {
            return data_keys_keyring(store_url, uri.open().await?, access).await;
        }
        None => {}
    }
    match store_url.backend() {
        Backend::Sqlite => {
            let Some(path) = store_url.default_keyring_path() else {
                // An in-memory database lives as long as the process: so can its key.
                return Ok(Some(Arc::new(Keyring::single(
                    "key-1",
                    Keyring::random_key(),
                ))));
            };
            if path.exists() {
                let keyring = Keyring::load(&path)?;
                tracing::info!(keyring = %path.display(), active = keyring.active_id(), "secret data is sealed with AES-256-GCM");
                return Ok(Some(Arc::new(keyring)));
            }
            if access == Access::Read || args.allow_plaintext_secrets {
                return Ok(None);
            }
            refuse_if_sealed(store_url, &path).await?;
            let keyring = Keyring::single("key-1", Keyring::random_key());
            keyring
                .save_new(&path)
                .with_context(|| "could not create the default keyring")?;
            tracing::warn!(
                keyring = %path.display(),
                "generated an encryption keyring for the embedded store (owner-only). Back it up apart from the database: without it the secrets cannot be read"
            );
            Ok(Some(Arc::new(keyring)))
        }
        Backend::Postgres => {
            if access == Access::Read {
                return Ok(None);
            }
            if args.allow_plaintext_secrets {
                tracing::warn!(
                    store = %store_url,
                    "--allow-plaintext-secrets: secret data goes to the database UNENCRYPTED; anyone with a dump, a backup or a replica can read every secret"
                );
                return Ok(None);
            }
            anyhow::bail!(
                "a Postgres store needs an encryption keyring: pass --encryption-keys FILE (KUMA_SECRETS_ENCRYPTION_KEYS), or --allow-plaintext-secrets to store secret data unencrypted"
            )
        }
    }
}

/// Refuses to generate a keyring for a store that already holds sealed values: its keyring
/// was lost or moved, and a new key would open nothing.
async fn refuse_if_sealed(store_url: &StoreUrl, keyring: &Path) -> anyhow::Result<()> {
    if !store_url.sqlite_path().is_some_and(Path::exists) {
        return Ok(());
    }
    let store = crate::store::SqliteStore::open(
        store_url.expose(),
        StoreOptions::sealed_with(Arc::new(Keyring::single("probe", Keyring::random_key()))),
    )
    .await;
    let sealed = match store {
        Ok(store) => {
            let sealed = store.holds_sealed_values().await?;
            store.close().await;
            sealed
        }
        Err(crate::store::StoreError::MissingKeys { .. }) => true,
        Err(other) => return Err(other.into()),
    };
    if sealed {
        anyhow::bail!(
            "the store {} holds sealed secrets but its keyring {} is missing: restore that file from your backup (or pass the keyring with --encryption-keys). A new key would open none of them, so none is generated",
            store_url,
            keyring.display()
        );
    }
    Ok(())
}
