//! `kuma-secrets get …`: kumactl's `get` for secrets, global secrets, meshes and external
//! services, with its
//! table columns, footer and "No resources found" messages, plus `-o kubernetes`.

use super::{ApiArgs, table};
use crate::client::{ApiClient, ClientError, secret_path, segment};
use crate::domain::external_service;
use crate::manifest::{self, Entry};
use crate::wire::{ExternalServiceItem, ListBody, MeshItem, SecretItem, SecretUsageList};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};

/// One resource as the API sent it.
#[derive(Serialize)]
#[serde(untagged)]
enum Item {
    Secret(SecretItem),
    Mesh(MeshItem),
    ExternalService(ExternalServiceItem),
}

impl Item {
    fn name(&self) -> &str {
        match self {
            Item::Secret(s) => &s.name,
            Item::Mesh(m) => &m.name,
            Item::ExternalService(e) => &e.name,
        }
    }

    fn modification_time(&self) -> Option<&str> {
        match self {
            Item::Secret(s) => s.meta.modification_time.as_deref(),
            Item::Mesh(m) => m.meta.modification_time.as_deref(),
            Item::ExternalService(e) => e.meta.modification_time.as_deref(),
        }
    }

    fn to_value(&self) -> Value {
        serde_json::to_value(self).expect("wire items serialize")
    }
}

/// `GET path` as one item of `kind`.
async fn fetch_item(client: &ApiClient, path: &str, kind: Kind) -> Result<Item, ClientError> {
    Ok(match kind {
        Kind::Mesh => Item::Mesh(client.get(path).await?),
        Kind::ExternalService => Item::ExternalService(client.get(path).await?),
        Kind::Secret | Kind::GlobalSecret => Item::Secret(client.get(path).await?),
    })
}

/// `GET path` as a page of `kind`.
async fn fetch_list(
    client: &ApiClient,
    path: &str,
    kind: Kind,
) -> Result<ListBody<Item>, ClientError> {
    fn wrap<T>(page: ListBody<T>, as_item: fn(T) -> Item) -> ListBody<Item> {
        ListBody {
            total: page.total,
            items: page.items.into_iter().map(as_item).collect(),
            next: page.next,
        }
    }
    Ok(match kind {
        Kind::Mesh => wrap(client.get::<ListBody<MeshItem>>(path).await?, Item::Mesh),
        Kind::ExternalService => wrap(
            client.get::<ListBody<ExternalServiceItem>>(path).await?,
            Item::ExternalService,
        ),
        Kind::Secret | Kind::GlobalSecret => wrap(
            client.get::<ListBody<SecretItem>>(path).await?,
            Item::Secret,
        ),
    })
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// kumactl's table.
    Table,
    /// The API's JSON, as YAML.
    Yaml,
    /// The API's JSON.
    Json,
    /// Kubernetes manifests, as Kuma's Kubernetes mode stores the resources.
    #[value(alias = "k8s")]
    Kubernetes,
}

/// Flags of every `get`.
#[derive(Debug, Clone, clap::Args)]
pub struct GetFlags {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    output: Output,
    #[command(flatten)]
    api: ApiArgs,
}

/// Paging of list `get`s.
#[derive(Debug, Clone, clap::Args)]
pub struct PageFlags {
    /// Largest number of resources to show (server default 100, at most 1000).
    #[arg(long)]
    size: Option<u32>,
    /// How many resources to skip (from the previous page's footer).
    #[arg(long)]
    offset: Option<u64>,
}

/// `kuma-secrets get …`
#[derive(Debug, clap::Subcommand)]
pub enum GetCommand {
    /// Secrets of a mesh.
    Secrets {
        /// The mesh.
        #[arg(short = 'm', long, default_value = "default")]
        mesh: String,
        /// Only the secrets holding a PEM certificate that expires within this (e.g. 30d),
        /// or has expired, soonest first, from every page.
        #[arg(long, value_parser = crate::duration::parse, conflicts_with_all = ["size", "offset"])]
        expiring: Option<std::time::Duration>,
        #[command(flatten)]
        page: PageFlags,
        #[command(flatten)]
        flags: GetFlags,
    },
    /// One secret.
    Secret {
        /// Its name.
        name: String,
        /// Its mesh.
        #[arg(short = 'm', long, default_value = "default")]
        mesh: String,
        /// Also list the mTLS backends that use it, under the table (a kuma-secrets
        /// extension; the table itself stays kumactl's).
        #[arg(long)]
        show_usage: bool,
        /// An earlier version kept in its history (`kuma-secrets history` lists them).
        #[arg(long)]
        version: Option<i64>,
        #[command(flatten)]
        flags: GetFlags,
    },
    /// Global secrets.
    #[command(alias = "globalsecrets")]
    GlobalSecrets {
        /// Only the global secrets holding a PEM certificate that expires within this (e.g.
        /// 30d), or has expired, soonest first, from every page.
        #[arg(long, value_parser = crate::duration::parse, conflicts_with_all = ["size", "offset"])]
        expiring: Option<std::time::Duration>,
        #[command(flatten)]
        page: PageFlags,
        #[command(flatten)]
        flags: GetFlags,
    },
    /// One global secret.
    #[command(alias = "globalsecret")]
    GlobalSecret {
        /// Its name.
        name: String,
        /// An earlier version kept in its history (`kuma-secrets history` lists them).
        #[arg(long)]
        version: Option<i64>,
        #[command(flatten)]
        flags: GetFlags,
    },
    /// Meshes.
    Meshes {
        #[command(flatten)]
        page: PageFlags,
        #[command(flatten)]
        flags: GetFlags,
    },
    /// One mesh.
    Mesh {
        /// Its name.
        name: String,
        #[command(flatten)]
        flags: GetFlags,
    },
    /// External services of a mesh.
    ExternalServices {
        /// The mesh.
        #[arg(short = 'm', long, default_value = "default")]
        mesh: String,
        #[command(flatten)]
        page: PageFlags,
        #[command(flatten)]
        flags: GetFlags,
    },
    /// The zones that follow a global store: connected or not, the revision each has
    /// applied and how far behind that is, and when each was last seen.
    Zones {
        #[command(flatten)]
        flags: GetFlags,
    },
    /// One external service.
    ExternalService {
        /// Its name.
        name: String,
        /// Its mesh.
        #[arg(short = 'm', long, default_value = "default")]
        mesh: String,
        #[command(flatten)]
        flags: GetFlags,
    },
}

/// Which table a list gets.
#[derive(Clone, Copy)]
enum Kind {
    Secret,
    GlobalSecret,
    Mesh,
    ExternalService,
}

pub(super) async fn run(cmd: GetCommand) -> anyhow::Result<()> {
    let now = Utc::now();
    let out = match cmd {
        GetCommand::Secrets {
            mesh,
            expiring,
            page,
            flags,
        } => {
            let path = format!("/meshes/{}/secrets", segment(&mesh));
            match expiring {
                Some(within) => expiring_within(&flags, &path, within, now).await?,
                None => list(&flags, &path, &page, Kind::Secret, now).await?,
            }
        }
        GetCommand::GlobalSecrets {
            expiring,
            page,
            flags,
        } => match expiring {
            Some(within) => expiring_within(&flags, "/global-secrets", within, now).await?,
            None => list(&flags, "/global-secrets", &page, Kind::GlobalSecret, now).await?,
        },
        GetCommand::Meshes { page, flags } => {
            list(&flags, "/meshes", &page, Kind::Mesh, now).await?
        }
        GetCommand::Secret {
            name,
            mesh,
            show_usage,
            version,
            flags,
        } => {
            let path = secret_path(Some(&mesh), &name);
            let missing = format!("No resources found in {mesh} mesh");
            let mut out = item(
                &flags,
                &at_version(&path, version),
                Kind::Secret,
                &missing,
                now,
            )
            .await?;
            if show_usage && flags.output == Output::Table {
                out.push_str(&usage_of(&flags.api.client()?, &path).await);
            }
            out
        }
        GetCommand::GlobalSecret {
            name,
            version,
            flags,
        } => {
            let path = secret_path(None, &name);
            let path = at_version(&path, version);
            item(&flags, &path, Kind::GlobalSecret, "No resources found", now).await?
        }
        GetCommand::Mesh { name, flags } => {
            let path = format!("/meshes/{}", segment(&name));
            item(&flags, &path, Kind::Mesh, "No resources found", now).await?
        }
        GetCommand::ExternalServices { mesh, page, flags } => {
            let path = format!("/meshes/{}/external-services", segment(&mesh));
            list(&flags, &path, &page, Kind::ExternalService, now).await?
        }
        GetCommand::Zones { flags } => zones(&flags, now).await?,
        GetCommand::ExternalService { name, mesh, flags } => {
            let path = format!(
                "/meshes/{}/external-services/{}",
                segment(&mesh),
                segment(&name)
            );
            let missing = format!("No resources found in {mesh} mesh");
            item(&flags, &path, Kind::ExternalService, &missing, now).await?
        }
    };
    print!("{out}");
    Ok(())
}

/// `path`, or its `?version=V`.
fn at_version(path: &str, version: Option<i64>) -> String {
    match version {
        Some(version) => format!("{path}?version={version}"),
        None => path.to_owned(),
    }
}

async fn list(
    flags: &GetFlags,
    path: &str,
    page: &PageFlags,
    kind: Kind,
    now: DateTime<Utc>,
) -> anyhow::Result<String> {
    let client = flags.api.client()?;
    let mut query = Vec::new();
    if let Some(size) = page.size {
        query.push(format!("size={size}"));
    }
    if let Some(offset) = page.offset {
        query.push(format!("offset={offset}"));
    }
    let url = if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", query.join("&"))
    };
    let listed = fetch_list(&client, &url, kind).await?;
    let body = serde_json::to_value(&listed).expect("wire items serialize");
    let has_next = listed.next.is_some();
    let items = listed.items;
    Ok(match flags.output {
        Output::Json => pretty_json(&body),
        Output::Yaml => kumactl_yaml(&sorted_keys(&body)),
        Output::Kubernetes => {
            let manifests = items
                .iter()
                .map(kubernetes_of)
                .collect::<anyhow::Result<Vec<_>>>()?;
            manifest::to_yaml_stream([
                &json!({"apiVersion": "v1", "kind": "List", "items": manifests}),
            ])
        }
        Output::Table => {
            let mut out = table_of(kind, &items, now);
            if has_next {
                let next = page.offset.unwrap_or(0) + items.len() as u64;
                out.push_str(&format!(
                    "\nRerun command with --offset={next} argument to retrieve more resources\n"
                ));
            }
            out
        }
    })
}

async fn item(
    flags: &GetFlags,
    path: &str,
    kind: Kind,
    missing: &str,
    now: DateTime<Utc>,
) -> anyhow::Result<String> {
    let client: ApiClient = flags.api.client()?;
    let item = match fetch_item(&client, path, kind).await {
        Ok(item) => item,
        Err(e @ ClientError::Api(_)) if e.status() == Some(404) => anyhow::bail!("{missing}"),
        Err(other) => return Err(other.into()),
    };
    let body = item.to_value();
    Ok(match flags.output {
        Output::Json => pretty_json(&body),
        Output::Yaml => kumactl_yaml(&item_keys_in_kumactls_order(&body)),
        Output::Kubernetes => manifest::to_yaml_stream([&kubernetes_of(&item)?]),
        Output::Table => table_of(kind, std::slice::from_ref(&item), now),
    })
}

/// What references a secret (`…/_usage`), as lines under its table (`--show-usage`).
/// Servers without the route (Kuma itself) get no lines rather than an error.
async fn usage_of(client: &ApiClient, path: &str) -> String {
    let Ok(usage) = client
        .get::<SecretUsageList>(&format!("{path}/_usage"))
        .await
    else {
        return String::new();
    };
    if usage.items.is_empty() {
        return "\nNot used by any mTLS backend or ExternalService of its mesh.\n".into();
    }
    let mut out = String::from("\nUsed by:\n");
    for item in usage.items {
        match (&item.backend, &item.name) {
            (Some(backend), _) => out.push_str(&format!(
                "  Mesh {:?} mTLS backend {:?} ({}{})\n",
                item.mesh,
                backend,
                item.backend_type.as_deref().unwrap_or(""),
                if item.enabled == Some(true) {
                    ", enabled"
                } else {
                    ""
                }
            )),
            (None, name) => out.push_str(&format!(
                "  {} {:?} in Mesh {:?}, field {}\n",
                item.referrer_type,
                name.as_deref().unwrap_or(""),
                item.mesh,
                item.field.as_deref().unwrap_or("")
            )),
        }
    }
    out
}

/// kumactl's list YAML: the JSON with every object's keys sorted (`sigs.k8s.io/yaml`).
fn sorted_keys(value: &Value) -> Value {
    match value {
        Value::Object(object) => {
            let mut keys: Vec<&String> = object.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), sorted_keys(&object[k])))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted_keys).collect()),
        other => other.clone(),
    }
}

/// The meta keys of an item (kumactl prints them first, sorted, then the spec).
const META_KEYS: [&str; 7] = [
    "creationTime",
    "kri",
    "labels",
    "mesh",
    "modificationTime",
    "name",
    "type",
];

/// kumactl's item YAML: the meta keys sorted, then the spec fields (`data` for a secret).
fn item_keys_in_kumactls_order(value: &Value) -> Value {
    let Value::Object(object) = value else {
        return value.clone();
    };
    let mut ordered = serde_json::Map::new();
    for key in META_KEYS {
        if let Some(v) = object.get(key) {
            ordered.insert(key.to_owned(), sorted_keys(v));
        }
    }
    let mut rest: Vec<&String> = object
        .keys()
        .filter(|k| !META_KEYS.contains(&k.as_str()))
        .collect();
    rest.sort();
    for key in rest {
        ordered.insert(key.clone(), sorted_keys(&object[key]));
    }
    Value::Object(ordered)
}

/// YAML as kumactl prints it: timestamps quoted (Go's YAML quotes strings that read as
/// timestamps).
fn kumactl_yaml(value: &Value) -> String {
    let text = manifest::to_yaml_stream([value]);
    text.lines()
        .map(|line| {
            let trimmed = line.trim_start_matches([' ', '-']);
            for key in ["creationTime: ", "modificationTime: "] {
                if let Some(stamp) = trimmed.strip_prefix(key)
                    && !stamp.starts_with(['"', '\''])
                {
                    let head = &line[..line.len() - stamp.len()];
                    return format!("{head}\"{stamp}\"\n");
                }
            }
            format!("{line}\n")
        })
        .collect()
}

fn pretty_json(value: &Value) -> String {
    let mut text = serde_json::to_string_pretty(value).expect("JSON values serialize");
    text.push('\n');
    text
}

fn table_of(kind: Kind, items: &[Item], now: DateTime<Utc>) -> String {
    let age = |item: &Item| {
        item.modification_time()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map_or_else(|| "unknown".to_owned(), |t| table::age(&t.to_utc(), &now))
    };
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|item| match (kind, item) {
            (Kind::Secret, Item::Secret(s)) => vec![
                s.mesh.clone().unwrap_or_default(),
                s.name.clone(),
                age(item),
            ],
            (Kind::Mesh, Item::Mesh(m)) => vec![m.name.clone(), mtls_of(m), age(item)],
            (Kind::ExternalService, Item::ExternalService(e)) => vec![
                e.mesh.clone(),
                e.name.clone(),
                external_service::tags_line(&e.spec),
                external_service::address(&e.spec).to_owned(),
                age(item),
            ],
            _ => vec![item.name().to_owned(), age(item)],
        })
        .collect();
    let header: &[&str] = match kind {
        Kind::Secret => &["MESH", "NAME", "AGE"],
        Kind::GlobalSecret => &["NAME", "AGE"],
        Kind::Mesh => &["NAME", "mTLS", "AGE"],
        Kind::ExternalService => &["MESH", "NAME", "TAGS", "ADDRESS", "AGE"],
    };
    table::render(header, &rows)
}

/// kumactl's mTLS column: `TYPE/BACKEND` of the enabled backend, or `off`.
fn mtls_of(mesh: &MeshItem) -> String {
    let mtls = mesh.spec.get("mtls").cloned().unwrap_or(Value::Null);
    let Some(enabled) = mtls["enabledBackend"].as_str().filter(|b| !b.is_empty()) else {
        return "off".into();
    };
    let backend_type = mtls["backends"]
        .as_array()
        .and_then(|backends| backends.iter().find(|b| b["name"] == enabled))
        .and_then(|b| b["type"].as_str())
        .unwrap_or("unknown");
    format!("{backend_type}/{enabled}")
}

/// `get secrets --expiring D`: every page of `path`, keeping the secrets whose earliest
/// certificate (the item's `notAfter`) expires before `now + within`, soonest first.
async fn expiring_within(
    flags: &GetFlags,
    path: &str,
    within: std::time::Duration,
    now: DateTime<Utc>,
) -> anyhow::Result<String> {
    let client = flags.api.client()?;
    let until = now + chrono::Duration::from_std(within).unwrap_or(chrono::Duration::MAX);
    let mut found: Vec<(DateTime<Utc>, SecretItem)> = Vec::new();
    let mut next = Some(format!("{path}?size=1000"));
    while let Some(url) = next {
        let page: ListBody<SecretItem> = client.get(&url).await?;
        for item in page.items {
            let not_after = item
                .not_after
                .as_deref()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.to_utc());
            if let Some(not_after) = not_after.filter(|t| *t <= until) {
                found.push((not_after, item));
            }
        }
        next = page.next.as_deref().map(crate::client::path_of);
    }
    found.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.name.cmp(&b.1.name)));
    let body = || json!({"total": found.len(), "items": found.iter().map(|(_, item)| item).collect::<Vec<_>>()});
    Ok(match flags.output {
        Output::Json => pretty_json(&body()),
        Output::Yaml => kumactl_yaml(&sorted_keys(&body())),
        Output::Kubernetes => {
            anyhow::bail!("--expiring lists certificates; use -o table, yaml or json")
        }
        Output::Table if found.is_empty() => {
            let secs = within.as_secs();
            let span = match secs {
                s if s % 86_400 == 0 => format!("{}d", s / 86_400),
                s if s % 3_600 == 0 => format!("{}h", s / 3_600),
                s => format!("{s}s"),
            };
            format!("No secret holds a certificate that expires within {span}\n")
        }
        Output::Table => {
            let rows: Vec<Vec<String>> = found
                .iter()
                .map(|(not_after, item)| {
                    let days = (*not_after - now).num_days();
                    vec![
                        item.mesh.clone().unwrap_or_default(),
                        item.name.clone(),
                        not_after.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                        if *not_after <= now {
                            "expired".to_owned()
                        } else {
                            format!("{days}d")
                        },
                    ]
                })
                .collect();
            table::render(&["MESH", "NAME", "NOT AFTER", "EXPIRES IN"], &rows)
        }
    })
}

/// `get zones`: `GET /zones` as a table (`kumactl inspect zones`' STATUS), JSON or YAML.
async fn zones(flags: &GetFlags, now: DateTime<Utc>) -> anyhow::Result<String> {
    let body: Value = flags.api.client()?.get("/zones").await?;
    match flags.output {
        Output::Json => return Ok(pretty_json(&body)),
        Output::Yaml => return Ok(kumactl_yaml(&sorted_keys(&body))),
        Output::Kubernetes => anyhow::bail!("zones have no Kubernetes form; use -o yaml"),
        Output::Table => {}
    }
    let head = body["revision"].as_i64().unwrap_or(0);
    let zones = body["items"].as_array().cloned().unwrap_or_default();
    if zones.is_empty() {
        return Ok("No zones have followed this global store since it started\n".to_owned());
    }
    let rows: Vec<Vec<String>> = zones
        .iter()
        .map(|zone| {
            let applied = zone["appliedRevision"].as_i64().unwrap_or(0);
            let last_seen = zone["lastSeen"]
                .as_str()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map_or_else(|| "unknown".to_owned(), |t| table::age(&t.to_utc(), &now));
            vec![
                zone["name"].as_str().unwrap_or("").to_owned(),
                if zone["connected"] == true {
                    "Online"
                } else {
                    "Offline"
                }
                .to_owned(),
                applied.to_string(),
                (head - applied).max(0).to_string(),
                last_seen,
            ]
        })
        .collect();
    Ok(table::render(
        &["NAME", "STATUS", "APPLIED REVISION", "BEHIND", "LAST SEEN"],
        &rows,
    ))
}

/// An item of the API as a Kubernetes manifest.
fn kubernetes_of(item: &Item) -> anyhow::Result<Value> {
    let created = match item {
        Item::Secret(s) => s.meta.creation_time.as_deref(),
        Item::Mesh(m) => m.meta.creation_time.as_deref(),
        Item::ExternalService(e) => e.meta.creation_time.as_deref(),
    }
    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
    .map(|t| t.to_utc());
    let entries = manifest::parse_document(item.to_value())
        .map_err(|e| anyhow::anyhow!("the server sent a resource this client cannot read: {e}"))?;
    match entries.into_iter().next() {
        Some(Entry::Resource(resource)) => Ok(manifest::to_kubernetes(
            &resource,
            created.as_ref(),
            manifest::KUMA_NAMESPACE,
        )),
        _ => anyhow::bail!("the server sent a resource this client cannot read"),
    }
}
