//! `kuma-secrets generate user-token`: mint a user token through the API (admin only), as
//! `kumactl generate user-token`; `generate zone-token`: a zone's token, from a global
//! store; `generate encryption-key`: add a key to a keyring file;
//! `generate kek`: make a key-encryption key in an HSM.

use super::ApiArgs;
use super::keyring::KekUri;
use crate::sealing::Keyring;
use serde_json::json;

/// `kuma-secrets generate …`
#[derive(Debug, clap::Subcommand)]
pub enum GenerateCommand {
    /// A user token for the API (`Authorization: Bearer …`), printed on stdout.
    UserToken {
        /// The user's name.
        #[arg(long)]
        name: String,
        /// A group of the user (repeatable), e.g. mesh-system:admin.
        #[arg(long = "group")]
        groups: Vec<String>,
        /// How long the token is valid, e.g. 24h, 30m, 7d.
        #[arg(long, default_value = "24h")]
        valid_for: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// A zone token, issued by a global store, for a zone to present
    /// (`serve --mode zone --global-token-file`), printed on stdout. Revoke one by adding
    /// its `jti` to the GlobalSecret zone-token-revocations (comma-separated).
    ZoneToken {
        /// The zone's name, as its `serve --zone`.
        #[arg(long)]
        zone: String,
        /// What the token may be used for (repeatable): cp (a zone's sync), ingress,
        /// egress. All three by default, as kumactl.
        #[arg(long)]
        scope: Vec<String>,
        /// How long the token is valid, e.g. 24h, 30d.
        #[arg(long, default_value = "24h")]
        valid_for: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// A new 256-bit encryption key in a keyring file: creates the file (key `key-1`,
    /// active) or adds the next key (`key-2`, …). Then `--activate` it and run rotate-keys.
    EncryptionKey {
        /// The keyring file.
        #[arg(long)]
        keyring: std::path::PathBuf,
        /// Make the new key the active one (new writes are sealed with it).
        #[arg(long)]
        activate: bool,
    },
    /// A key-encryption key for `--encryption-keys`: in an HSM (`pkcs11:…`), an AES-256
    /// key made inside the token, sensitive and never extractable, labelled as the URI's
    /// `object`; in AWS KMS (`awskms:alias/NAME…`), a symmetric encryption key and that
    /// alias for it.
    Kek {
        /// `pkcs11:token=…;object=…?module-path=…&pin-source=file:…` or
        /// `awskms:alias/NAME?region=…`
        #[arg(value_parser = parse_kek_uri)]
        uri: KekUri,
    },
}

pub(super) async fn run(cmd: GenerateCommand) -> anyhow::Result<()> {
    match cmd {
        GenerateCommand::UserToken {
            name,
            groups,
            valid_for,
            api,
        } => {
            let token = api
                .client()?
                .post_for_text(
                    "/tokens/user",
                    &json!({ "name": name, "groups": groups, "validFor": valid_for }),
                )
                .await
                .map_err(|e| anyhow::anyhow!("failed to generate a user token: {e}"))?;
            println!("{}", token.trim());
        }
        GenerateCommand::ZoneToken {
            zone,
            scope,
            valid_for,
            api,
        } => {
            let mut request = json!({ "zone": zone, "validFor": valid_for });
            if !scope.is_empty() {
                request["scope"] = json!(scope);
            }
            let token = api
                .client()?
                .post_for_text("/tokens/zone", &request)
                .await
                .map_err(|e| anyhow::anyhow!("failed to generate a zone token: {e}"))?;
            println!("{}", token.trim());
        }
        GenerateCommand::EncryptionKey { keyring, activate } => {
            if !keyring.exists() {
                Keyring::single("key-1", Keyring::random_key()).save_new(&keyring)?;
                println!("created {} with key \"key-1\" (active)", keyring.display());
                return Ok(());
            }
            let current = Keyring::load(&keyring)?;
            let next = next_key_id(current.key_ids());
            let mut updated = current.with_key(&next, Keyring::random_key());
            if activate {
                updated = updated.with_active(&next);
            }
            updated.save_replacing(&keyring)?;
            println!(
                "added key {next:?} to {}; active: {:?}{}",
                keyring.display(),
                updated.active_id(),
                if activate {
                    ". Restart every server with this file, then run kuma-secrets rotate-keys"
                } else {
                    ""
                }
            );
        }
        GenerateCommand::Kek { uri } => {
            let name = uri.generate().await?;
            println!(
                "made the key-encryption key {name}; start with --encryption-keys and this URI"
            );
        }
    }
    Ok(())
}

/// A `pkcs11:` or `awskms:` URI.
fn parse_kek_uri(text: &str) -> Result<KekUri, String> {
    KekUri::parse(text)?.ok_or_else(|| {
        "a key-encryption key is made in an HSM (pkcs11:…) or in AWS KMS (awskms:…); a keyring file's key with kuma-secrets generate encryption-key".to_owned()
    })
}

/// The id after the highest `key-N` in the keyring: never a lower free number, which may be
/// a retired key's id (a keyring left holding only `key-2` gets `key-3`, not `key-1`), so
/// rows sealed by a retired key never meet a new key of the same id.
fn next_key_id<'a>(ids: impl Iterator<Item = &'a str>) -> String {
    let highest = ids
        .filter_map(|id| id.strip_prefix("key-"))
        .filter_map(|n| n.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    format!("key-{}", highest + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_key_ids_follow_the_highest_and_never_reuse_a_retired_one() {
        assert_eq!(next_key_id(["key-2"].into_iter()), "key-3");
        assert_eq!(next_key_id(["key-1", "key-9", "old"].into_iter()), "key-10");
        assert_eq!(next_key_id(["custom"].into_iter()), "key-1");
    }
}
