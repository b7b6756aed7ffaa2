//! A KEK in an HSM through PKCS#11 (`--encryption-keys pkcs11:…`), tested against SoftHSM2.
//!
//! The key source is named by an RFC 7512 PKCS#11 URI:
//!
//! ```text
//! pkcs11:token=kuma;object=kuma-secrets-kek?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/kuma-secrets/hsm-pin
//! ```
//!
//! - path attributes (`;`-separated): `token` (the token's label) or `slot-id`, and
//!   `object` (the AES-256 key's label; `id` is not supported);
//! - query attributes (`&`-separated): `module-path` (the vendor's PKCS#11 library),
//!   and the user PIN as `pin-source=file:PATH` (the file's first line) or `pin-value=…`
//!   (discouraged: it shows in `ps`); with neither, the PIN is taken from the environment
//!   variable `KUMA_SECRETS_PKCS11_PIN`.
//!
//! Values are percent-decoded. The KEK's stored name is `pkcs11:` with the token (or slot)
//! and the object only: the module path may differ between hosts, and the PIN is a secret.
//!
//! Wrapping is `CKM_AES_GCM` inside the token with a random 96-bit IV and the DEK's id as
//! associated data; stored as `IV || ciphertext || tag`. [`Pkcs11Kek::generate`] makes the
//! KEK as a token object that is sensitive and never extractable (`kuma-secrets generate
//! kek`).

use super::{KekError, KeyEncryptionKey};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Mutex;
use zeroize::Zeroizing;

/// The environment variable the PIN is read from when the URI names none.
pub const PIN_ENV: &str = "KUMA_SECRETS_PKCS11_PIN";

/// Bytes of the GCM IV, and of the tag.
const IV_LEN: usize = 12;
const TAG_LEN: usize = 16;
const TAG_BITS: u64 = 128;

/// Where the user PIN comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum PinSource {
    /// `pin-source=file:PATH`: the file's first line.
    File(PathBuf),
    /// `pin-value=…`.
    Value(Zeroizing<String>),
    /// Neither: the environment variable [`PIN_ENV`].
    Environment,
}

impl fmt::Debug for PinSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PinSource::File(path) => write!(f, "File({})", path.display()),
            PinSource::Value(_) => f.write_str("Value(<redacted>)"),
            PinSource::Environment => write!(f, "Environment({PIN_ENV})"),
        }
    }
}

/// Which token a URI names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSelector {
    /// `token=LABEL`.
    Label(String),
    /// `slot-id=N`.
    Slot(u64),
}

/// A parsed `pkcs11:` key source URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkcs11Uri {
    /// The PKCS#11 library to load.
    pub module: PathBuf,
    /// The token.
    pub token: TokenSelector,
    /// The key's label.
    pub object: String,
    /// The user PIN.
    pub pin: PinSource,
}

impl Pkcs11Uri {
    /// The KEK's name as stored: the token and the key, no module path, no PIN.
    pub fn name(&self) -> String {
        let token = match &self.token {
            TokenSelector::Label(label) => format!("token={}", encode(label)),
            TokenSelector::Slot(id) => format!("slot-id={id}"),
        };
        format!("pkcs11:{token};object={}", encode(&self.object))
    }

    fn pin(&self) -> Result<Zeroizing<String>, KekError> {
        let config = |reason: String| KekError::Config {
            source_name: self.name(),
            reason,
        };
        match &self.pin {
            PinSource::Value(pin) => Ok(pin.clone()),
            PinSource::File(path) => {
                let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|err| {
                    config(format!(
                        "the PIN file {} cannot be read: {err}",
                        path.display()
                    ))
                })?);
                Ok(Zeroizing::new(
                    text.lines().next().unwrap_or("").trim_end().to_owned(),
                ))
            }
            PinSource::Environment => std::env::var(PIN_ENV).map(Zeroizing::new).map_err(|_| {
                config(format!(
                    "no PIN: add pin-source=file:PATH to the URI, or set {PIN_ENV}"
                ))
            }),
        }
    }
}

/// Why a `pkcs11:` URI was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid pkcs11: URI: {0}")]
pub struct UriError(String);

impl FromStr for Pkcs11Uri {
    type Err = UriError;

    fn from_str(uri: &str) -> Result<Self, UriError> {
        let rest = uri
            .strip_prefix("pkcs11:")
            .ok_or_else(|| UriError("it must start with pkcs11:".into()))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (mut token, mut object) = (None, None);
        for attribute in path.split(';').filter(|a| !a.is_empty()) {
            let (name, value) = attribute
                .split_once('=')
                .ok_or_else(|| UriError(format!("{attribute:?} is not NAME=VALUE")))?;
            let value = decode(value)?;
            match name {
                "token" => token = Some(TokenSelector::Label(value)),
                "slot-id" => {
                    let id = value
                        .parse()
                        .map_err(|_| UriError(format!("slot-id {value:?} is not a number")))?;
                    token = Some(TokenSelector::Slot(id));
                }
                "object" => object = Some(value),
                "id"
                | "type"
                | "manufacturer"
                | "model"
                | "serial"
                | "library-description"
                | "library-manufacturer"
                | "library-version"
                | "slot-description"
                | "slot-manufacturer" => {
                    return Err(UriError(format!(
                        "the path attribute {name:?} is not supported: name the key by token (or slot-id) and object"
                    )));
                }
                other => return Err(UriError(format!("unknown path attribute {other:?}"))),
            }
        }
        let (mut module, mut pin) = (None, PinSource::Environment);
        for attribute in query.split('&').filter(|a| !a.is_empty()) {
            let (name, value) = attribute
                .split_once('=')
                .ok_or_else(|| UriError(format!("{attribute:?} is not NAME=VALUE")))?;
            match name {
                "module-path" => module = Some(PathBuf::from(decode(value)?)),
                "pin-source" => {
                    let value = decode(value)?;
                    let path = value.strip_prefix("file:").unwrap_or(&value);
                    pin = PinSource::File(PathBuf::from(path));
                }
                "pin-value" => pin = PinSource::Value(Zeroizing::new(decode(value)?)),
                other => return Err(UriError(format!("unknown query attribute {other:?}"))),
            }
        }
        Ok(Self {
            module: module.ok_or_else(|| {
                UriError("module-path is missing (the HSM vendor's PKCS#11 library, e.g. ?module-path=/usr/lib/softhsm/libsofthsm2.so)".into())
            })?,
            token: token.ok_or_else(|| UriError("token=LABEL (or slot-id=N) is missing".into()))?,
            object: object.ok_or_else(|| UriError("object=LABEL (the key's label) is missing".into()))?,
            pin,
        })
    }
}

/// `value` percent-decoded.
fn decode(value: &str) -> Result<String, UriError> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = value
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| UriError(format!("bad percent-encoding in {value:?}")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| UriError(format!("{value:?} is not UTF-8")))
}

/// `value` with the characters RFC 7512 reserves percent-encoded.
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~:[]@!$'()*+,=&".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A module loaded in this process, and how many [`Pkcs11Kek`]s use it.
struct Loaded {
    module: PathBuf,
    context: Pkcs11,
    users: usize,
}

/// The modules this process has loaded and initialized: each once, since a module is one
/// library with global state, which a second context's finalization would end under the
/// first.
static LOADED: Mutex<Vec<Loaded>> = Mutex::new(Vec::new());

/// The process's context of the module at `module`, loaded and initialized on first use,
/// counted as used until [`release`].
fn context_of(module: &std::path::Path, name: &str) -> Result<Pkcs11, KekError> {
    let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(entry) = loaded.iter_mut().find(|entry| entry.module == module) {
        entry.users += 1;
        return Ok(entry.context.clone());
    }
    let context = Pkcs11::new(module).map_err(|err| KekError::Config {
        source_name: name.to_owned(),
        reason: format!("the module {} does not load: {err}", module.display()),
    })?;
    match context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(err) => return Err(unavailable(name, &err)),
    }
    loaded.push(Loaded {
        module: module.to_owned(),
        context: context.clone(),
        users: 1,
    });
    Ok(context)
}

/// One user of `module` less; with `reload` and none left, the module is finalized and
/// unloaded, so the next use initializes it afresh (a module may list its tokens only when
/// initialized: SoftHSM2 does).
fn release(module: &std::path::Path, reload: bool) {
    let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    let Some(index) = loaded.iter().position(|entry| entry.module == module) else {
        return;
    };
    loaded[index].users = loaded[index].users.saturating_sub(1);
    if reload && loaded[index].users == 0 {
        let entry = loaded.remove(index);
        if let Err(err) = entry.context.finalize() {
            tracing::debug!(error = %err, "finalizing a PKCS#11 module failed");
        }
    }
}

/// The KEK `uri` names, opened ([`Pkcs11Kek::open`]) on tokio's blocking threads and
/// counted in the key source's calls.
///
/// # Errors
/// As [`Pkcs11Kek::open`].
pub async fn open(
    uri: &Pkcs11Uri,
) -> Result<std::sync::Arc<dyn KeyEncryptionKey>, super::EnvelopeError> {
    let uri = uri.clone();
    let kek = super::blocking(move || super::counted(Pkcs11Kek::open(&uri))).await?;
    Ok(std::sync::Arc::new(kek))
}

/// A KEK held in a PKCS#11 token.
pub struct Pkcs11Kek {
    uri: Pkcs11Uri,
    name: String,
    context: Pkcs11,
    slot: Slot,
    /// One session, logged in, reused (PKCS#11 sessions are not to be used from two
    /// threads at once).
    session: Mutex<Option<Session>>,
}

impl Drop for Pkcs11Kek {
    fn drop(&mut self) {
        // The session closes first, while the module is still initialized.
        drop(
            self.session
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
        release(&self.uri.module, false);
    }
}

impl fmt::Debug for Pkcs11Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Kek")
            .field("name", &self.name)
            .finish()
    }
}

impl Pkcs11Kek {
    /// Loads the module and finds the token `uri` names. Blocking.
    ///
    /// # Errors
    /// The module does not load ([`KekError::Config`]), or no token matches
    /// ([`KekError::Unavailable`]: an HSM that is down shows none).
    pub fn open(uri: &Pkcs11Uri) -> Result<Self, KekError> {
        let name = uri.name();
        let context = context_of(&uri.module, &name)?;
        let slots = match context.get_slots_with_initialized_token() {
            Ok(slots) => slots,
            Err(err) => {
                release(&uri.module, true);
                return Err(unavailable(&name, &err));
            }
        };
        let found = slots.into_iter().find(|slot| match &uri.token {
            TokenSelector::Slot(id) => slot.id() == *id,
            TokenSelector::Label(label) => context
                .get_token_info(*slot)
                .is_ok_and(|info| info.label().trim_end() == label),
        });
        // An HSM that is down or unreachable typically shows no token: try again later,
        // with the module initialized afresh.
        let Some(slot) = found else {
            release(&uri.module, true);
            return Err(KekError::Unavailable {
                source_name: name,
                reason:
                    "no initialized token matches (is the HSM reachable, the token initialized?)"
                        .into(),
            });
        };
        Ok(Self {
            uri: uri.clone(),
            name,
            context,
            slot,
            session: Mutex::new(None),
        })
    }

    /// Makes the KEK in the token: an AES-256 key labelled as the URI's `object`, a token
    /// object, sensitive and never extractable, for encryption and decryption only.
    /// Blocking.
    ///
    /// # Errors
    /// A key with that label exists, or the token refused.
    pub fn generate(uri: &Pkcs11Uri) -> Result<Self, KekError> {
        let kek = Self::open(uri)?;
        // Making a token object takes a read-write session of its own.
        let session = kek
            .context
            .open_rw_session(kek.slot)
            .map_err(|err| unavailable(&kek.name, &err))?;
        kek.log_in(&session)?;
        let made = (|| {
            if find_key(&session, &kek.uri.object)?.is_some() {
                return Err(Failure::Config(format!(
                    "a key labelled {:?} exists in the token already",
                    kek.uri.object
                )));
            }
            session.generate_key(
                &Mechanism::AesKeyGen,
                &[
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(KeyType::AES),
                    Attribute::ValueLen(32.into()),
                    Attribute::Label(kek.uri.object.as_bytes().to_vec()),
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                    Attribute::Encrypt(true),
                    Attribute::Decrypt(true),
                    Attribute::Wrap(false),
                    Attribute::Unwrap(false),
                    Attribute::Sign(false),
                    Attribute::Verify(false),
                ],
            )?;
            Ok(())
        })();
        kek.outcome(made, &mut None)?;
        Ok(kek)
    }

    /// Logs the user in on `session` (or finds them logged in already).
    fn log_in(&self, session: &Session) -> Result<(), KekError> {
        let pin = self.uri.pin()?;
        match session.login(UserType::User, Some(&AuthPin::from(pin.as_str()))) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
            Err(CkError::Pkcs11(
                rv @ (RvError::PinIncorrect
                | RvError::PinLocked
                | RvError::PinExpired
                | RvError::PinInvalid
                | RvError::PinLenRange),
                _,
            )) => Err(KekError::Config {
                source_name: self.name.clone(),
                reason: format!("the token refused the PIN ({rv:?})"),
            }),
            Err(err) => Err(unavailable(&self.name, &err)),
        }
    }

    /// A call's outcome as the key source's; a device failure also drops `session`, so the
    /// next call opens a fresh one (the token was removed, the HSM restarted).
    fn outcome<T>(
        &self,
        result: Result<T, Failure>,
        session: &mut Option<Session>,
    ) -> Result<T, KekError> {
        match result {
            Ok(value) => Ok(value),
            Err(Failure::Config(reason)) => Err(KekError::Config {
                source_name: self.name.clone(),
                reason,
            }),
            Err(Failure::Refused(id)) => Err(KekError::Refused {
                source_name: self.name.clone(),
                id,
            }),
            Err(Failure::Device(err)) => {
                *session = None;
                Err(unavailable(&self.name, &err))
            }
        }
    }

    /// Runs `call` on the logged-in session, opening it (and logging in) when there is
    /// none.
    fn with_session<T>(
        &self,
        call: impl FnOnce(&Session) -> Result<T, Failure>,
    ) -> Result<T, KekError> {
        let mut session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        if session.is_none() {
            let opened = self
                .context
                .open_ro_session(self.slot)
                .map_err(|err| unavailable(&self.name, &err))?;
            self.log_in(&opened)?;
            *session = Some(opened);
        }
        let result = call(session.as_ref().expect("a session"));
        self.outcome(result, &mut session)
    }

    /// The KEK's handle in `session`.
    fn key(&self, session: &Session) -> Result<ObjectHandle, Failure> {
        find_key(session, &self.uri.object)?.ok_or_else(|| {
            Failure::Config(format!(
                "no AES key labelled {:?} in the token (make one with kuma-secrets generate kek)",
                self.uri.object
            ))
        })
    }
}

impl Pkcs11Kek {
    /// Whether `key` still encrypts on `session`: tells a wrapped key that does not
    /// authenticate from a token that failed.
    fn still_works(&self, session: &Session, key: ObjectHandle) -> bool {
        let mut iv = [0u8; IV_LEN];
        getrandom::fill(&mut iv).expect("system randomness");
        GcmParams::new(&mut iv, b"probe", TAG_BITS.into()).is_ok_and(|params| {
            session
                .encrypt(&Mechanism::AesGcm(params), key, b"probe")
                .is_ok()
        })
    }
}

/// How one call on a session failed.
enum Failure {
    /// Wrongly configured: the token answered, and will answer the same again.
    Config(String),
    /// A wrapped key did not authenticate.
    Refused(String),
    /// The device or the library failed.
    Device(CkError),
}

impl From<CkError> for Failure {
    fn from(err: CkError) -> Self {
        Failure::Device(err)
    }
}

fn find_key(session: &Session, label: &str) -> Result<Option<ObjectHandle>, Failure> {
    let found = session.find_objects(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::Label(label.as_bytes().to_vec()),
    ])?;
    match found.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(*one)),
        _ => Err(Failure::Config(format!(
            "{} keys are labelled {label:?} in the token: give the KEK a label of its own",
            found.len()
        ))),
    }
}

/// A PKCS#11 error, as a key source that may answer later.
fn unavailable(name: &str, err: &CkError) -> KekError {
    let reason = match err {
        // The return value's name, not its paragraph of text from the standard.
        CkError::Pkcs11(rv, function) => format!("{function:?} returned {rv:?}"),
        other => other.to_string(),
    };
    KekError::Unavailable {
        source_name: name.to_owned(),
        reason,
    }
}

impl KeyEncryptionKey for Pkcs11Kek {
    fn name(&self) -> &str {
        &self.name
    }

    fn wrap(&self, id: &str, dek: &[u8; 32]) -> Result<Vec<u8>, KekError> {
        self.with_session(|session| {
            let key = self.key(session)?;
            let mut iv = [0u8; IV_LEN];
            getrandom::fill(&mut iv).expect("system randomness");
            let mut params_iv = iv;
            let params = GcmParams::new(&mut params_iv, id.as_bytes(), TAG_BITS.into())
                .map_err(Failure::Device)?;
            let sealed = session.encrypt(&Mechanism::AesGcm(params), key, dek)?;
            Ok([iv.as_slice(), &sealed].concat())
        })
    }

    fn unwrap(&self, id: &str, wrapped: &[u8]) -> Result<Zeroizing<[u8; 32]>, KekError> {
        self.with_session(|session| {
            let key = self.key(session)?;
            if wrapped.len() != IV_LEN + 32 + TAG_LEN {
                return Err(Failure::Refused(id.to_owned()));
            }
            let mut iv: [u8; IV_LEN] = wrapped[..IV_LEN].try_into().expect("IV length");
            let params =
                GcmParams::new(&mut iv, id.as_bytes(), TAG_BITS.into()).map_err(Failure::Device)?;
            let opened = match session.decrypt(&Mechanism::AesGcm(params), key, &wrapped[IV_LEN..])
            {
                Ok(opened) => Zeroizing::new(opened),
                Err(CkError::Pkcs11(
                    RvError::EncryptedDataInvalid | RvError::EncryptedDataLenRange,
                    _,
                )) => return Err(Failure::Refused(id.to_owned())),
                Err(err) => {
                    // Tokens differ in what a tag that does not verify returns (SoftHSM2:
                    // CKR_GENERAL_ERROR). If the same key still encrypts, the token is fine
                    // and the wrapped key is what failed.
                    return Err(if self.still_works(session, key) {
                        Failure::Refused(id.to_owned())
                    } else {
                        Failure::Device(err)
                    });
                }
            };
            let dek: [u8; 32] = opened
                .as_slice()
                .try_into()
                .map_err(|_| Failure::Refused(id.to_owned()))?;
            Ok(Zeroizing::new(dek))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uri_names_module_token_key_and_pin() {
        let uri: Pkcs11Uri = "pkcs11:token=kuma%20hsm;object=kek-1?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/pin"
            .parse()
            .unwrap();
        assert_eq!(uri.module, PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"));
        assert_eq!(uri.token, TokenSelector::Label("kuma hsm".into()));
        assert_eq!(uri.object, "kek-1");
        assert_eq!(uri.pin, PinSource::File("/run/pin".into()));
        assert_eq!(uri.name(), "pkcs11:token=kuma%20hsm;object=kek-1");
    }

    #[test]
    fn a_pin_value_never_shows_in_the_name_or_debug() {
        let uri: Pkcs11Uri = "pkcs11:slot-id=3;object=k?module-path=/m.so&pin-value=s3cr%65t"
            .parse()
            .unwrap();
        assert_eq!(uri.pin, PinSource::Value(Zeroizing::new("s3cret".into())));
        assert_eq!(uri.name(), "pkcs11:slot-id=3;object=k");
        assert!(!format!("{uri:?}").contains("s3cret"));
    }

    #[test]
    fn bad_uris_say_what_is_wrong() {
        for (uri, says) in [
            ("file:/x", "must start with pkcs11:"),
            ("pkcs11:object=k?module-path=/m.so", "token=LABEL"),
            ("pkcs11:token=t?module-path=/m.so", "object=LABEL"),
            ("pkcs11:token=t;object=k", "module-path is missing"),
            (
                "pkcs11:token=t;object=k;id=%01?module-path=/m.so",
                "not supported",
            ),
            (
                "pkcs11:token=t;object=k%zz?module-path=/m.so",
                "percent-encoding",
            ),
            (
                "pkcs11:token=t;object=k?module-path=/m.so&pin=1",
                "unknown query attribute",
            ),
            (
                "pkcs11:slot-id=x;object=k?module-path=/m.so",
                "not a number",
            ),
        ] {
            let err = uri.parse::<Pkcs11Uri>().unwrap_err().to_string();
            assert!(err.contains(says), "{uri}: {err}");
        }
    }
}
