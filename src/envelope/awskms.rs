//! A KEK in AWS KMS (`--encryption-keys awskms:…`), through the official AWS SDK, tested
//! against moto's KMS in server mode.
//!
//! The key source is named by a URI:
//!
//! ```text
//! awskms:alias/kuma-secrets?region=eu-west-1
//! awskms:arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab
//! awskms:alias/kuma-secrets?region=us-east-1&endpoint=http://127.0.0.1:5000
//! ```
//!
//! - the key: a key id, a key ARN, an alias (`alias/NAME`) or an alias ARN; it must be a
//!   symmetric encryption key (`SYMMETRIC_DEFAULT`, `ENCRYPT_DECRYPT`);
//! - `region`: the key's region; by default the region in its ARN, else the SDK's (the
//!   `AWS_REGION` environment variable, or the profile's);
//! - `endpoint`: another KMS endpoint (a VPC endpoint, a FIPS endpoint, a local emulator);
//!   by default the SDK's (`AWS_ENDPOINT_URL_KMS`, `AWS_ENDPOINT_URL`, else AWS's own).
//!
//! Credentials come from the SDK's default chain: the environment (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), the shared profile files, web identity
//! (EKS service accounts), ECS and EC2 instance metadata. None is ever in the URI.
//!
//! The KEK's stored name is `awskms:` and the key's ARN as KMS gives it when the key is
//! opened: an alias moved to another key does not silently change what the data keys are
//! wrapped by (they fail to open, naming the ARN that wraps them).
//!
//! Wrapping is KMS `Encrypt` with the DEK's id as encryption context
//! (`kuma-secrets-data-key`), so a wrapped key moved to another id does not unwrap (KMS
//! refuses with `InvalidCiphertextException`); the ciphertext blob KMS returns is stored as
//! it is. Each call is bounded (3 s to connect, 5 s an attempt, 3 attempts, 15 s in all),
//! so a frozen network fails a call instead of hanging it.
//!
//! The KMS key never leaves KMS. The SDK keeps the DEK it wraps or unwraps in buffers of
//! its own for the length of the call, which this crate cannot zero.

use super::{EnvelopeError, KekError, KeyEncryptionKey};
use aws_sdk_kms::Client;
use aws_sdk_kms::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{KeySpec, KeyState, KeyUsageType};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use zeroize::Zeroizing;

/// The encryption context's key: its value is the DEK's id.
const CONTEXT_KEY: &str = "kuma-secrets-data-key";

/// A parsed `awskms:` key source URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsKmsUri {
    /// The key as given: id, ARN, alias or alias ARN.
    pub key: String,
    /// The region, when the URI names one.
    pub region: Option<String>,
    /// Another endpoint than the SDK's.
    pub endpoint: Option<String>,
}

/// Why an `awskms:` URI was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid awskms: URI: {0}")]
pub struct UriError(String);

impl AwsKmsUri {
    /// The key as given, before it is opened: `awskms:` and the key, no endpoint.
    pub fn name(&self) -> String {
        format!("awskms:{}", self.key)
    }

    /// The region: the URI's, else the one in the key's ARN.
    fn region(&self) -> Option<String> {
        self.region.clone().or_else(|| {
            let arn = self.key.strip_prefix("arn:")?;
            // arn:PARTITION:kms:REGION:ACCOUNT:key/ID
            let mut parts = arn.split(':');
            let (_partition, service, region) = (parts.next()?, parts.next()?, parts.next()?);
            (service == "kms" && !region.is_empty()).then(|| region.to_owned())
        })
    }

    /// Whether the key is named by an alias (which [`AwsKmsKek::generate`] can create).
    fn alias(&self) -> Option<&str> {
        if self.key.starts_with("alias/") {
            return Some(&self.key);
        }
        let arn = self.key.strip_prefix("arn:")?;
        let resource = arn.splitn(5, ':').nth(4)?;
        resource.starts_with("alias/").then_some(resource)
    }
}

impl FromStr for AwsKmsUri {
    type Err = UriError;

    fn from_str(uri: &str) -> Result<Self, UriError> {
        let rest = uri
            .strip_prefix("awskms:")
            .ok_or_else(|| UriError("it must start with awskms:".into()))?;
        let (key, query) = rest.split_once('?').unwrap_or((rest, ""));
        if key.is_empty() {
            return Err(UriError(
                "the key is missing: awskms:alias/NAME, awskms:KEY-ID or awskms:ARN".into(),
            ));
        }
        if let Some(bad) = key
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "-_/:.".contains(*c)))
        {
            return Err(UriError(format!(
                "{bad:?} cannot be in a KMS key id, ARN or alias ({key:?})"
            )));
        }
        let (mut region, mut endpoint) = (None, None);
        for attribute in query.split('&').filter(|a| !a.is_empty()) {
            let (name, value) = attribute
                .split_once('=')
                .ok_or_else(|| UriError(format!("{attribute:?} is not NAME=VALUE")))?;
            if value.is_empty() {
                return Err(UriError(format!("{name} is empty")));
            }
            match name {
                "region" => {
                    if !value
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    {
                        return Err(UriError(format!("{value:?} is not a region")));
                    }
                    region = Some(value.to_owned());
                }
                "endpoint" => {
                    if !(value.starts_with("https://") || value.starts_with("http://")) {
                        return Err(UriError(format!(
                            "endpoint {value:?} must be an http:// or https:// URL"
                        )));
                    }
                    endpoint = Some(value.to_owned());
                }
                other => {
                    return Err(UriError(format!(
                        "unknown query attribute {other:?} (region and endpoint are known; credentials come from the AWS environment, never the URI)"
                    )));
                }
            }
        }
        Ok(Self {
            key: key.to_owned(),
            region,
            endpoint,
        })
    }
}

/// A KEK held in AWS KMS.
pub struct AwsKmsKek {
    /// `awskms:` and the key's ARN.
    name: String,
    /// The key's ARN.
    arn: String,
    client: Client,
    /// The runtime the SDK's calls run on (the trait's calls block a thread of its own).
    runtime: tokio::runtime::Handle,
}

impl fmt::Debug for AwsKmsKek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsKmsKek")
            .field("name", &self.name)
            .finish()
    }
}

/// The KEK `uri` names, opened ([`AwsKmsKek::open`]) and counted in the key source's calls.
///
/// # Errors
/// As [`AwsKmsKek::open`].
pub async fn open(uri: &AwsKmsUri) -> Result<Arc<dyn KeyEncryptionKey>, EnvelopeError> {
    let kek = super::counted(AwsKmsKek::open(uri).await)?;
    Ok(Arc::new(kek))
}

impl AwsKmsKek {
    /// A KMS client for `uri`: its region and endpoint, the SDK's credential chain, calls
    /// bounded in time, HTTPS through rustls on ring.
    async fn client(uri: &AwsKmsUri) -> Result<Client, KekError> {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(http)
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .operation_attempt_timeout(Duration::from_secs(5))
                    .operation_timeout(Duration::from_secs(15))
                    .build(),
            )
            .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(3));
        if let Some(region) = uri.region() {
            loader = loader.region(aws_config::Region::new(region));
        }
        if let Some(endpoint) = &uri.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        let config = loader.load().await;
        if config.region().is_none() {
            return Err(KekError::Config {
                source_name: uri.name(),
                reason: "no region: add ?region=… to the URI, name the key by its ARN, or set AWS_REGION".into(),
            });
        }
        Ok(Client::new(&config))
    }

    /// Finds the key `uri` names and checks it is an enabled symmetric encryption key.
    ///
    /// # Errors
    /// No such key, the wrong kind of key, a disabled key, no access
    /// ([`KekError::Config`]); KMS unreachable or failing ([`KekError::Unavailable`]).
    pub async fn open(uri: &AwsKmsUri) -> Result<Self, KekError> {
        let client = Self::client(uri).await?;
        let described = client
            .describe_key()
            .key_id(&uri.key)
            .send()
            .await
            .map_err(|err| classify(&uri.name(), err, None))?;
        let Some(key) = described.key_metadata() else {
            return Err(KekError::Unavailable {
                source_name: uri.name(),
                reason: "DescribeKey answered without the key's metadata".into(),
            });
        };
        let config = |reason: String| KekError::Config {
            source_name: uri.name(),
            reason,
        };
        if key.key_usage() != Some(&KeyUsageType::EncryptDecrypt)
            || key.key_spec() != Some(&KeySpec::SymmetricDefault)
        {
            return Err(config(format!(
                "the key is not a symmetric encryption key (usage {:?}, spec {:?}); make one with kuma-secrets generate kek",
                key.key_usage(),
                key.key_spec()
            )));
        }
        if key.key_state() != Some(&KeyState::Enabled) {
            return Err(config(format!(
                "the key is {:?}, not enabled",
                key.key_state()
            )));
        }
        let arn = key.arn().unwrap_or(key.key_id()).to_owned();
        Ok(Self {
            name: format!("awskms:{arn}"),
            arn,
            client,
            runtime: tokio::runtime::Handle::current(),
        })
    }

    /// Makes the KEK: a symmetric encryption key in KMS, and the alias the URI names
    /// pointing at it. Returns it opened.
    ///
    /// # Errors
    /// The URI names no alias (KMS chooses a new key's id), the alias exists, or KMS
    /// refused.
    pub async fn generate(uri: &AwsKmsUri) -> Result<Self, KekError> {
        let Some(alias) = uri.alias() else {
            return Err(KekError::Config {
                source_name: uri.name(),
                reason: "name the key to make by an alias (awskms:alias/NAME): KMS chooses a new key's id".into(),
            });
        };
        let client = Self::client(uri).await?;
        match client.describe_key().key_id(&uri.key).send().await {
            Ok(_) => {
                return Err(KekError::Config {
                    source_name: uri.name(),
                    reason: format!("the alias {alias} exists in KMS already"),
                });
            }
            Err(err) if err.code() == Some("NotFoundException") => {}
            Err(err) => return Err(classify(&uri.name(), err, None)),
        }
        let made = client
            .create_key()
            .key_spec(KeySpec::SymmetricDefault)
            .key_usage(KeyUsageType::EncryptDecrypt)
            .description("kuma-secrets key-encryption key (wraps the store's data keys)")
            .send()
            .await
            .map_err(|err| classify(&uri.name(), err, None))?;
        let key_id = made
            .key_metadata()
            .map(|key| key.key_id().to_owned())
            .ok_or_else(|| KekError::Unavailable {
                source_name: uri.name(),
                reason: "CreateKey answered without the key's id".into(),
            })?;
        client
            .create_alias()
            .alias_name(alias)
            .target_key_id(&key_id)
            .send()
            .await
            .map_err(|err| classify(&uri.name(), err, None))?;
        Self::open(uri).await
    }

    /// Runs an SDK call to its end on the runtime the key was opened on.
    fn block_on<T>(&self, call: impl std::future::Future<Output = T>) -> T {
        self.runtime.block_on(call)
    }
}

/// A KMS call's failure as the key source's: KMS refusing a ciphertext is
/// [`KekError::Refused`] (for `id`), KMS unreachable, throttling or failing inside is
/// [`KekError::Unavailable`], anything else (no access, no such key, a disabled key) is
/// [`KekError::Config`].
fn classify<E, R>(name: &str, err: SdkError<E, R>, id: Option<&str>) -> KekError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: fmt::Debug + Send + Sync + 'static,
{
    let unavailable = |reason: String| KekError::Unavailable {
        source_name: name.to_owned(),
        reason,
    };
    match &err {
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or("");
            match (code, id) {
                ("InvalidCiphertextException" | "IncorrectKeyException", Some(id)) => {
                    KekError::Refused {
                        source_name: name.to_owned(),
                        id: id.to_owned(),
                    }
                }
                (
                    "DependencyTimeoutException"
                    | "KMSInternalException"
                    | "KeyUnavailableException"
                    | "ThrottlingException"
                    | "LimitExceededException"
                    | "ServiceUnavailableException",
                    _,
                ) => unavailable(format!("{code}: {}", service.err().message().unwrap_or(""))),
                _ => KekError::Config {
                    source_name: name.to_owned(),
                    reason: format!(
                        "KMS refused: {code}: {}",
                        service.err().message().unwrap_or("")
                    ),
                },
            }
        }
        _ => unavailable(DisplayErrorContext(&err).to_string()),
    }
}

impl KeyEncryptionKey for AwsKmsKek {
    fn name(&self) -> &str {
        &self.name
    }

    fn wrap(&self, id: &str, dek: &[u8; 32]) -> Result<Vec<u8>, KekError> {
        let encrypted = self
            .block_on(
                self.client
                    .encrypt()
                    .key_id(&self.arn)
                    .plaintext(Blob::new(dek.to_vec()))
                    .encryption_context(CONTEXT_KEY, id)
                    .send(),
            )
            .map_err(|err| classify(&self.name, err, None))?;
        encrypted
            .ciphertext_blob()
            .map(|blob| blob.as_ref().to_vec())
            .ok_or_else(|| KekError::Unavailable {
                source_name: self.name.clone(),
                reason: "Encrypt answered without a ciphertext".into(),
            })
    }

    fn unwrap(&self, id: &str, wrapped: &[u8]) -> Result<Zeroizing<[u8; 32]>, KekError> {
        let decrypted = self
            .block_on(
                self.client
                    .decrypt()
                    .key_id(&self.arn)
                    .ciphertext_blob(Blob::new(wrapped.to_vec()))
                    .encryption_context(CONTEXT_KEY, id)
                    .send(),
            )
            .map_err(|err| classify(&self.name, err, Some(id)))?;
        let plain = decrypted.plaintext().map(Blob::as_ref).unwrap_or_default();
        let dek: [u8; 32] = plain.try_into().map_err(|_| KekError::Refused {
            source_name: self.name.clone(),
            id: id.to_owned(),
        })?;
        Ok(Zeroizing::new(dek))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uri_names_the_key_region_and_endpoint() {
        let uri: AwsKmsUri = "awskms:alias/kuma?region=eu-west-1&endpoint=http://127.0.0.1:5000"
            .parse()
            .unwrap();
        assert_eq!(uri.key, "alias/kuma");
        assert_eq!(uri.region(), Some("eu-west-1".to_owned()));
        assert_eq!(uri.endpoint.as_deref(), Some("http://127.0.0.1:5000"));
        assert_eq!(uri.alias(), Some("alias/kuma"));
        assert_eq!(uri.name(), "awskms:alias/kuma");
    }

    #[test]
    fn the_region_comes_from_an_arn() {
        let uri: AwsKmsUri =
            "awskms:arn:aws:kms:ap-south-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
                .parse()
                .unwrap();
        assert_eq!(uri.region(), Some("ap-south-1".to_owned()));
        assert_eq!(uri.alias(), None);
        let alias: AwsKmsUri = "awskms:arn:aws:kms:us-east-1:111122223333:alias/kuma"
            .parse()
            .unwrap();
        assert_eq!(alias.alias(), Some("alias/kuma"));
    }

    #[test]
    fn bad_uris_are_refused_with_a_reason() {
        for (text, says) in [
            ("awskms:", "the key is missing"),
            ("awskms:?region=us-east-1", "the key is missing"),
            ("awskms:alias/k?secret=x", "unknown query attribute"),
            ("awskms:alias/k?region=US East", "not a region"),
            ("awskms:alias/k?endpoint=ftp://x", "http:// or https://"),
            ("awskms:alias/k?region", "is not NAME=VALUE"),
            ("awskms:alias/k?region=", "region is empty"),
            ("awskms:alias/a b", "cannot be in a KMS key"),
        ] {
            let err = text.parse::<AwsKmsUri>().unwrap_err().to_string();
            assert!(err.contains(says), "{text}: {err}");
        }
    }
}
