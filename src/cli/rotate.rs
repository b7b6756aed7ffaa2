//! `kuma-secrets rotate-keys`: re-seal every secret still sealed with an older key with the
//! keyring's active key, online, in batches of one transaction. Safe to interrupt and run
//! again; `--status` shows rows per key id, so the operator knows when an old key can
//! leave the keyring. Values stored in clear are never sealed here (whoever can write to
//! the database could have planted them): `kuma-secrets seal-plaintext` lists them and
//! seals them when the operator says so.

use super::StoreArgs;
use super::keyring::{Access, EncryptionArgs, store_options};
use crate::store::{AnyStore, KeyUsage, SealedRows, Unreadable};

/// `kuma-secrets rotate-keys …`
#[derive(Debug, clap::Args)]
pub struct RotateArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    encryption: EncryptionArgs,
    /// Only show how many secret values (current and kept versions) each key id seals.
    #[arg(long)]
    status: bool,
    /// Secrets per transaction.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    batch_size: u32,
}

pub(super) async fn run(args: RotateArgs) -> anyhow::Result<()> {
    let options = store_options(&args.store.url, &args.encryption, Access::Read).await?;
    let active = options.keyring.as_ref().map(|k| k.active_id().to_owned());
    let store = AnyStore::open(args.store.url.expose(), options).await?;
    if args.status {
        print!(
            "{}",
            render_status(&store.rows_per_key().await?, active.as_deref())
        );
        if active.is_some() {
            print!("{}", render_unreadable(&store.unreadable().await?));
        }
        store.close().await;
        return Ok(());
    }
    let Some(active) = active else {
        anyhow::bail!("rotate-keys needs the keyring: pass --encryption-keys FILE");
    };
    let (mut resealed, mut skipped) = (0u64, 0u64);
    // Two passes: rows skipped in the first because a concurrent write changed them are
    // normally sealed with the active key by that write; the second pass catches the rest
    // (say, a write from a replica still on the old keyring).
    for _pass in 0..2 {
        // Current versions, then the versions kept in history.
        for rows in SealedRows::ALL {
            let mut after = 0;
            loop {
                let batch = store.reseal_batch(rows, after, args.batch_size).await?;
                resealed += batch.resealed;
                skipped += batch.skipped;
                after = batch.last_id;
                if batch.resealed + batch.skipped > 0 {
                    eprintln!("re-sealed {resealed} secret values ({skipped} changed meanwhile)");
                }
                if batch.finished {
                    break;
                }
            }
        }
        if remaining(&store, &active).await? == 0 {
            break;
        }
    }
    let meshes = store.reseal_meshes().await?;
    let services = store.reseal_external_services().await?;
    let remaining = remaining(&store, &active).await?;
    let plaintext = store.plaintext_values().await?.len();
    println!(
        "re-sealed {resealed} secret values (current and kept versions), the inline CA keys of {meshes} Meshes and the inline client keys of {services} ExternalServices of {} with key {active:?}; {skipped} secrets changed meanwhile and were sealed by that write",
        args.store.url
    );
    store.close().await;
    if remaining > 0 {
        anyhow::bail!(
            "{remaining} secret values are still sealed with another key or the old format: a writer may still use an older keyring or binary; update every server, then run rotate-keys again"
        );
    }
    if plaintext > 0 {
        anyhow::bail!(
            "{plaintext} values are stored in clear and were not sealed: rotation never seals plaintext (it may have been written behind the service's back); kuma-secrets seal-plaintext lists them, and seals them if you say so"
        );
    }
    Ok(())
}

/// Sealed rows not yet sealed with the active key in the current format (plaintext rows
/// are not rotation's).
async fn remaining(store: &AnyStore, active: &str) -> anyhow::Result<u64> {
    Ok(store
        .rows_per_key()
        .await?
        .into_iter()
        .map(|usage| match usage.key_id.as_deref() {
            None => 0,
            Some(id) if id == active => usage.format_1,
            Some(_) => usage.rows,
        })
        .sum())
}

fn render_status(rows: &[KeyUsage], active: Option<&str>) -> String {
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|usage| {
            let name = usage.key_id.clone().unwrap_or_else(|| "(plaintext)".into());
            let state = match (usage.key_id.as_deref(), active) {
                (None, _) => "in clear: see kuma-secrets seal-plaintext".to_owned(),
                (Some(id), Some(active)) if id == active && usage.format_1 == 0 => {
                    "active".to_owned()
                }
                (Some(id), Some(active)) if id == active => format!(
                    "active; {} in the old seal format: run rotate-keys",
                    usage.format_1
                ),
                _ => "old: run rotate-keys".to_owned(),
            };
            vec![name, usage.rows.to_string(), state]
        })
        .collect();
    if table.is_empty() {
        return "no secrets stored\n".into();
    }
    super::table::render(&["KEY ID", "VALUES", "STATE"], &table)
}

/// The resources that do not open, named, so an operator can delete or re-import them.
fn render_unreadable(unreadable: &[Unreadable]) -> String {
    if unreadable.is_empty() {
        return "every stored value opens with this keyring\n".into();
    }
    let mut out = format!(
        "{} stored values do not open with this keyring (delete them, or re-import them from a backup):\n",
        unreadable.len()
    );
    for item in unreadable {
        match item.version {
            Some(version) => out.push_str(&format!(
                "  {} version {version}: {}\n",
                item.key, item.reason
            )),
            None => out.push_str(&format!("  {}: {}\n", item.key, item.reason)),
        }
    }
    out
}
