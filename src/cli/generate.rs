//! `kuma-secrets generate user-token`: mint a user token through the API (admin only), as
//! `kumactl generate user-token`.

use super::ApiArgs;
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
    }
    Ok(())
}
