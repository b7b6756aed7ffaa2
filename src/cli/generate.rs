//! `kuma-secrets generate user-token`: mint a user token through the API (admin only), as
//! `kumactl generate user-token`; `generate encryption-key`: add a key to a keyring file.

use super::ApiArgs;
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
        GenerateCommand::EncryptionKey { keyring, activate } => {
            if !keyring.exists() {
                Keyring::single("key-1", Keyring::random_key()).save_new(&keyring)?;
                println!("created {} with key \"key-1\" (active)", keyring.display());
                return Ok(());
            }
            let current = Keyring::load(&keyring)?;
            let next = (1..)
                .map(|n| format!("key-{n}"))
                .find(|id| !current.contains(id))
                .expect("a free key id");
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
    }
    Ok(())
}
