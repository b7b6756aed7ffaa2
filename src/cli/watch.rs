//! `kuma-secrets watch`: print changes as they happen, from the API's change feed (a long
//! poll on `/_changes`), one line each; `audit`: who changed what, and when.

use super::ApiArgs;
use crate::client::ApiClient;
use crate::store::feed::{Changes, Event};
use chrono::{DateTime, Utc};

/// `kuma-secrets watch …`
#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// Only this Mesh's changes (its secrets and itself).
    #[arg(short = 'm', long)]
    mesh: Option<String>,
    /// Start after this revision (default: from now on).
    #[arg(long)]
    after: Option<i64>,
    /// Stop after this many changes (default: never).
    #[arg(long)]
    count: Option<u64>,
    #[command(flatten)]
    api: ApiArgs,
}

/// `kuma-secrets audit …`
#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// Only changes newer than this (e.g. 1h, 7d); default: every change the feed keeps.
    #[arg(long, value_parser = crate::duration::parse)]
    since: Option<std::time::Duration>,
    /// Only changes made by this actor (a user name, `localhost`, or `cli:import`).
    #[arg(long)]
    actor: Option<String>,
    /// Only this Mesh's changes.
    #[arg(short = 'm', long)]
    mesh: Option<String>,
    /// Only changes of resources of this name.
    #[arg(long)]
    name: Option<String>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    output: AuditOutput,
    #[command(flatten)]
    api: ApiArgs,
}

/// Output formats of `audit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuditOutput {
    /// A table.
    Table,
    /// The events as a JSON array.
    Json,
}

async fn page(
    client: &ApiClient,
    after: i64,
    mesh: Option<&str>,
    wait: &str,
) -> anyhow::Result<Changes> {
    let mut query = format!("/_changes?after={after}&limit=1000&wait={wait}");
    if let Some(mesh) = mesh {
        query.push_str("&mesh=");
        query.push_str(&crate::client::segment(mesh));
    }
    Ok(client.get(&query).await?)
}

/// One line per event: `REVISION TIME OPERATION TYPE MESH/NAME vVERSION by ACTOR`, with
/// any control character escaped (an actor is a token's name, chosen by its minter).
fn line(event: &Event) -> String {
    crate::printable::escaped(&raw_line(event)).into_owned()
}

fn raw_line(event: &Event) -> String {
    let place = match &event.mesh {
        Some(mesh) => format!("{mesh}/{}", event.name),
        None => event.name.clone(),
    };
    format!(
        "{} {} {} {} {place} v{} by {}",
        event.revision,
        event
            .time
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        format!("{:?}", event.operation).to_lowercase(),
        event.resource_type,
        event.version,
        actor_name(event)
    )
}

fn actor_name(event: &Event) -> &str {
    event.actor.as_ref().map_or("-", |a| a.name.as_str())
}

pub(super) async fn watch(args: WatchArgs) -> anyhow::Result<()> {
    let client = args.api.client()?;
    // From now on unless told otherwise: the current revision is where the feed stands.
    let mut after = match args.after {
        Some(after) => after,
        None => current_revision(&client).await?,
    };
    let mut printed = 0u64;
    loop {
        let changes = page(&client, after, args.mesh.as_deref(), "30s").await?;
        after = changes.revision;
        for event in &changes.events {
            println!("{}", line(event));
            printed += 1;
            if args.count.is_some_and(|count| printed >= count) {
                return Ok(());
            }
        }
    }
}

/// The feed's current revision: where a page of nothing new stops.
async fn current_revision(client: &ApiClient) -> anyhow::Result<i64> {
    let mut after = 0;
    loop {
        let changes = page(client, after, None, "0").await?;
        if changes.revision == after {
            return Ok(after);
        }
        after = changes.revision;
    }
}

pub(super) async fn audit(args: AuditArgs) -> anyhow::Result<()> {
    let client = args.api.client()?;
    let since: Option<DateTime<Utc>> = args
        .since
        .and_then(|d| chrono::Duration::from_std(d).ok())
        .and_then(|d| Utc::now().checked_sub_signed(d));
    let mut found = Vec::new();
    let mut after = 0;
    loop {
        let changes = page(&client, after, args.mesh.as_deref(), "0").await?;
        found.extend(changes.events.into_iter().filter(|e| {
            since.is_none_or(|since| e.time >= since)
                && args.actor.as_deref().is_none_or(|a| actor_name(e) == a)
                && args.name.as_deref().is_none_or(|n| e.name == n)
        }));
        if changes.revision == after {
            break;
        }
        after = changes.revision;
    }
    match args.output {
        AuditOutput::Json => {
            println!("{}", serde_json::to_string_pretty(&found)?);
        }
        AuditOutput::Table => {
            if found.is_empty() {
                println!("No changes found");
                return Ok(());
            }
            let rows: Vec<Vec<String>> = found
                .iter()
                .map(|e| {
                    vec![
                        e.revision.to_string(),
                        e.time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                        format!("{:?}", e.operation).to_lowercase(),
                        e.resource_type.clone(),
                        e.mesh.clone().unwrap_or_else(|| "-".into()),
                        e.name.clone(),
                        e.version.to_string(),
                        actor_name(e).to_owned(),
                        e.request_id.clone().unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            print!(
                "{}",
                super::table::render(
                    &[
                        "REVISION",
                        "TIME",
                        "OPERATION",
                        "TYPE",
                        "MESH",
                        "NAME",
                        "VERSION",
                        "ACTOR",
                        "REQUEST"
                    ],
                    &rows
                )
            );
        }
    }
    Ok(())
}
