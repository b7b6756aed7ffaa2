//! `kuma-secrets delete …`: kumactl's `delete` with its messages.

use super::ApiArgs;
use crate::client::{ClientError, segment};

/// `kuma-secrets delete …`
#[derive(Debug, clap::Subcommand)]
pub enum DeleteCommand {
    /// A secret.
    Secret {
        /// Its name.
        name: String,
        /// Its mesh.
        #[arg(short = 'm', long, default_value = "default")]
        mesh: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// A global secret.
    #[command(alias = "globalsecret")]
    GlobalSecret {
        /// Its name.
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// A mesh, with its secrets.
    Mesh {
        /// Its name.
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

pub(super) async fn run(cmd: DeleteCommand) -> anyhow::Result<()> {
    let (type_name, name, path, api) = match cmd {
        DeleteCommand::Secret { name, mesh, api } => {
            let path = format!("/meshes/{}/secrets/{}", segment(&mesh), segment(&name));
            ("Secret", name, path, api)
        }
        DeleteCommand::GlobalSecret { name, api } => {
            let path = format!("/global-secrets/{}", segment(&name));
            ("GlobalSecret", name, path, api)
        }
        DeleteCommand::Mesh { name, api } => {
            let path = format!("/meshes/{}", segment(&name));
            ("Mesh", name, path, api)
        }
    };
    match api.client()?.delete(&path).await {
        Ok(()) => {
            println!("deleted {type_name} {name:?}");
            Ok(())
        }
        Err(e @ ClientError::Api(_)) if e.status() == Some(404) => {
            anyhow::bail!("there is no {type_name} with name {name:?}")
        }
        Err(other) => {
            anyhow::bail!("failed to delete {type_name} with the name {name:?}: {other}")
        }
    }
}
