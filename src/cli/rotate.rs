//! `kuma-secrets rotate-keys`: re-seal every secret still sealed with an older key (or
//! still plaintext) with the keyring's active key, online, in batches of one transaction.
//! Safe to interrupt and run again; `--status` shows rows per key id, so the operator
//! knows when an old key can leave the keyring.

use super::StoreArgs;
use super::keys::{Access, EncryptionArgs, resolve};
use crate::store::{AnyStore, StoreOptions, redact_url};

/// `kuma-secrets rotate-keys …`
#[derive(Debug, clap::Args)]
pub struct RotateArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    encryption: EncryptionArgs,
    /// Only show how many secrets each key id seals.
    #[arg(long)]
    status: bool,
    /// Secrets per transaction.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    batch_size: u32,
}

pub(super) async fn run(args: RotateArgs) -> anyhow::Result<()> {
    let keyring = resolve(&args.store.url, &args.encryption, Access::Read)?;
    let active = keyring.as_ref().map(|k| k.active_id().to_owned());
    let options = StoreOptions {
        keyring,
        ..StoreOptions::default()
    };
    let store = AnyStore::open(&args.store.url, options).await?;
    if args.status {
        print!(
            "{}",
            render_status(&store.rows_per_key().await?, active.as_deref())
        );
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
        let mut after = 0;
        loop {
            let batch = store.reseal_batch(after, args.batch_size).await?;
            resealed += batch.resealed;
            skipped += batch.skipped;
            after = batch.last_id;
            if batch.resealed + batch.skipped > 0 {
                eprintln!("re-sealed {resealed} secrets ({skipped} changed meanwhile)");
            }
            if batch.finished {
                break;
            }
        }
        let remaining = remaining(&store, &active).await?;
        if remaining == 0 {
            break;
        }
    }
    let remaining = remaining(&store, &active).await?;
    println!(
        "re-sealed {resealed} secrets of {} with key {active:?}; {skipped} changed meanwhile and were sealed by that write",
        redact_url(&args.store.url)
    );
    store.close().await;
    if remaining > 0 {
        anyhow::bail!(
            "{remaining} secrets are still sealed with another key: a writer may still use an older keyring; update every server's keyring, then run rotate-keys again"
        );
    }
    Ok(())
}

async fn remaining(store: &AnyStore, active: &str) -> anyhow::Result<u64> {
    Ok(store
        .rows_per_key()
        .await?
        .into_iter()
        .filter(|(id, _)| id.as_deref() != Some(active))
        .map(|(_, n)| n)
        .sum())
}

fn render_status(rows: &[(Option<String>, u64)], active: Option<&str>) -> String {
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|(id, n)| {
            let name = id.clone().unwrap_or_else(|| "(plaintext)".into());
            let state = match (id.as_deref(), active) {
                (Some(id), Some(active)) if id == active => "active",
                (None, _) => "not sealed",
                _ => "old: run rotate-keys",
            };
            vec![name, n.to_string(), state.into()]
        })
        .collect();
    if table.is_empty() {
        return "no secrets stored\n".into();
    }
    super::table::render(&["KEY ID", "SECRETS", "STATE"], &table)
}
