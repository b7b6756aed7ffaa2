//! `kuma-secrets history|rollback|restore secret|global-secret NAME`: a secret's version
//! history through the API (`GET …/_versions`, `POST …/_rollback`, `POST …/_restore`).
//! Reading one version is `get secret NAME --version V`; destroying a secret with its
//! history is `delete secret NAME --purge`.

use super::{ApiArgs, table};
use crate::client::{ClientError, secret_path};
use crate::wire::{ListBody, SecretItem, VersionItem, VersionRequest};
use chrono::{DateTime, Utc};

/// The secret a history verb acts on.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Target {
    /// A secret of a mesh.
    Secret {
        /// Its name.
        name: String,
        /// Its mesh.
        #[arg(short = 'm', long, default_value = "default")]
        mesh: String,
    },
    /// A global secret.
    #[command(alias = "globalsecret")]
    GlobalSecret {
        /// Its name.
        name: String,
    },
}

impl Target {
    /// `Secret` or `GlobalSecret`, its name, and its API path.
    fn resolve(&self) -> (&'static str, &str, String) {
        match self {
            Target::Secret { name, mesh } => ("Secret", name, secret_path(Some(mesh), name)),
            Target::GlobalSecret { name } => ("GlobalSecret", name, secret_path(None, name)),
        }
    }
}

/// `kuma-secrets history …`
#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    #[command(subcommand)]
    target: Target,
    /// Output format: `table` or `json` (the API's `_versions` body).
    #[arg(short = 'o', long = "output", default_value = "table", global = true, value_parser = ["table", "json"])]
    output: String,
    #[command(flatten)]
    api: ApiArgs,
}

/// `kuma-secrets rollback …`
#[derive(Debug, clap::Args)]
pub struct RollbackArgs {
    #[command(subcommand)]
    target: Target,
    /// The version to write again as the newest (`history` lists them).
    #[arg(long, global = true)]
    to: Option<i64>,
    #[command(flatten)]
    api: ApiArgs,
}

/// `kuma-secrets restore …`
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    #[command(subcommand)]
    target: Target,
    /// The version to restore (default: the newest kept).
    #[arg(long, global = true)]
    version: Option<i64>,
    #[command(flatten)]
    api: ApiArgs,
}

pub(super) async fn history(args: HistoryArgs) -> anyhow::Result<()> {
    let (type_name, name, path) = args.target.resolve();
    let listed: ListBody<VersionItem> = args
        .api
        .client()?
        .get(&format!("{path}/_versions"))
        .await
        .map_err(|e| explain(e, type_name, name))?;
    if args.output == "json" {
        println!("{}", serde_json::to_string_pretty(&listed)?);
        return Ok(());
    }
    print!("{}", versions_table(&listed.items, Utc::now()));
    Ok(())
}

pub(super) async fn rollback(args: RollbackArgs) -> anyhow::Result<()> {
    let Some(to) = args.to else {
        anyhow::bail!(
            "--to is required: the version to roll back to (`kuma-secrets history` lists them)"
        );
    };
    let (type_name, name, version) =
        post_version(&args.api, &args.target, "_rollback", Some(to)).await?;
    println!("rolled back {type_name} {name:?} to version {to}: it is now version {version}");
    Ok(())
}

pub(super) async fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let (type_name, name, version) =
        post_version(&args.api, &args.target, "_restore", args.version).await?;
    println!("restored {type_name} {name:?} as version {version}");
    Ok(())
}

/// `POST {target}/{route}` with `{"version": …}`: the target's type and name, and the new
/// version the answer's `ETag` names.
async fn post_version<'t>(
    api: &ApiArgs,
    target: &'t Target,
    route: &str,
    version: Option<i64>,
) -> anyhow::Result<(&'static str, &'t str, String)> {
    let (type_name, name, path) = target.resolve();
    let (_, new_version): (SecretItem, _) = api
        .client()?
        .post(&format!("{path}/{route}"), &VersionRequest { version })
        .await
        .map_err(|e| explain(e, type_name, name))?;
    Ok((type_name, name, new_version.unwrap_or_default()))
}

/// `VERSION   CURRENT   AGE   ACTOR   DELETED`, newest first.
fn versions_table(items: &[VersionItem], now: DateTime<Utc>) -> String {
    let age = |time: &str| {
        DateTime::parse_from_rfc3339(time)
            .map(|t| table::age(&t.with_timezone(&Utc), &now))
            .unwrap_or_else(|_| time.to_owned())
    };
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|item| {
            vec![
                item.version.to_string(),
                if item.current { "yes" } else { "no" }.to_owned(),
                age(&item.modification_time),
                item.actor
                    .as_ref()
                    .map_or("-".to_owned(), |a| a.name.clone()),
                item.deletion_time.as_deref().map_or("-".to_owned(), age),
            ]
        })
        .collect();
    table::render(&["VERSION", "CURRENT", "AGE", "ACTOR", "DELETED"], &rows)
}

/// The API's error, naming the secret.
fn explain(err: ClientError, type_name: &str, name: &str) -> anyhow::Error {
    anyhow::anyhow!("{type_name} {name:?}: {err}")
}
