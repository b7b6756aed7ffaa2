//! `kuma-secrets delete …`: kumactl's `delete` with its messages.

use super::ApiArgs;
use crate::client::{ClientError, secret_path, segment};

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
        purge: Purge,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// A global secret.
    #[command(alias = "globalsecret")]
    GlobalSecret {
        /// Its name.
        name: String,
        #[command(flatten)]
        purge: Purge,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// A mesh, with its secrets and external services.
    Mesh {
        /// Its name.
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// An external service.
    ExternalService {
        /// Its name.
        name: String,
        /// Its mesh.
        #[arg(short = 'm', long, default_value = "default")]
        mesh: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// `--purge` of a secret delete.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct Purge {
    /// Destroy its whole version history too, now: it cannot be restored.
    #[arg(long)]
    purge: bool,
}

pub(super) async fn run(cmd: DeleteCommand) -> anyhow::Result<()> {
    let (type_name, name, path, purge, api) = match cmd {
        DeleteCommand::Secret {
            name,
            mesh,
            purge,
            api,
        } => {
            let path = secret_path(Some(&mesh), &name);
            ("Secret", name, path, purge.purge, api)
        }
        DeleteCommand::GlobalSecret { name, purge, api } => {
            let path = secret_path(None, &name);
            ("GlobalSecret", name, path, purge.purge, api)
        }
        DeleteCommand::Mesh { name, api } => {
            let path = format!("/meshes/{}", segment(&name));
            ("Mesh", name, path, false, api)
        }
        DeleteCommand::ExternalService { name, mesh, api } => {
            let path = format!(
                "/meshes/{}/external-services/{}",
                segment(&mesh),
                segment(&name)
            );
            ("ExternalService", name, path, false, api)
        }
    };
    let path = if purge {
        format!("{path}?purge=true")
    } else {
        path
    };
    match api.client()?.delete(&path).await {
        Ok(()) if purge => {
            println!("purged {type_name} {name:?} and its history");
            Ok(())
        }
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
