//! `kuma-secrets rotate-keys`: re-seal every secret still sealed with an older key with the
//! keyring's active key, online, in batches of one transaction. Safe to interrupt and run
//! again; `--status` shows rows per key id, so the operator knows when an old key can
//! leave the keyring. Values stored in clear are never sealed here (whoever can write to
//! the database could have planted them): `kuma-secrets seal-plaintext` lists them and
//! seals them when the operator says so.
//!
//! With a key in an HSM or a KMS (`--encryption-keys pkcs11:…` or `awskms:…`, see
//! `crate::envelope`) the keys are data keys wrapped by that key: `--new-data-key` makes a
//! new one and re-seals onto it as above; `--new-kek SOURCE` changes what wraps them and
//! touches no secret row: another HSM or KMS key (the data keys are re-wrapped), or, from a
//! keyring file, an HSM or KMS key (the file's keys become data keys under the same ids),
//! or, from an HSM or KMS key, a new keyring file (the data keys written to it, for the way
//! back).

use super::StoreArgs;
use super::keyring::{Access, EncryptionArgs, KeySource, store_options};
use crate::envelope;
use crate::sealing::Keyring;
use crate::store::{AnyStore, KeyUsage, SealedRows, StoreOptions, StoredDataKey, Unreadable};

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
    /// Move the keys under another key source, re-sealing no secret: a `pkcs11:` or
    /// `awskms:` key (from a keyring file or another such key), or a new keyring file (from
    /// such a key).
    #[arg(long, value_parser = KeySource::parse, conflicts_with_all = ["status", "new_data_key"])]
    new_kek: Option<KeySource>,
    /// With an HSM or KMS key source: make a new data key, active for new writes once
    /// running servers have loaded it (--seals-after), then re-seal every secret onto it.
    #[arg(long, conflicts_with = "status")]
    new_data_key: bool,
    /// With --new-data-key: how long after it is stored the new key starts sealing. Every
    /// running server must have loaded it by then: three of their
    /// --key-source-probe-interval. `now` where no server runs.
    #[arg(long, default_value = "30s", value_parser = parse_seals_after, requires = "new_data_key")]
    seals_after: std::time::Duration,
}

pub(super) async fn run(args: RotateArgs) -> anyhow::Result<()> {
    if let Some(target) = &args.new_kek {
        return move_keys(&args, target).await;
    }
    if args.new_data_key {
        let Some(KeySource::Kek(uri)) = &args.encryption.keys else {
            anyhow::bail!(
                "--new-data-key is for a pkcs11: or awskms: key source; with a keyring file, add a key with kuma-secrets generate encryption-key --activate"
            );
        };
        let kek = uri.open().await?;
        let store = AnyStore::open(args.store.url.expose(), StoreOptions::for_data_keys()).await?;
        let made = envelope::new_data_key(&store, kek, args.seals_after).await;
        store.close().await;
        let made = made?;
        // Running servers load it within a probe interval; until it seals, they go on with
        // the key before, and so would the re-seal below.
        let wait = (made.seals_from - chrono::Utc::now())
            .to_std()
            .unwrap_or_default();
        if !wait.is_zero() {
            eprintln!(
                "made data key {:?}; it seals new writes from {} (once every running server has loaded it): waiting {}s to re-seal onto it",
                made.id,
                made.seals_from.format("%Y-%m-%dT%H:%M:%SZ"),
                wait.as_secs() + 1
            );
            tokio::time::sleep(wait).await;
        }
        eprintln!(
            "data key {:?} seals new writes; re-sealing onto it",
            made.id
        );
    }
    let options = store_options(&args.store.url, &args.encryption, Access::Read).await?;
    let active = options.keyring().map(|k| k.active_id().to_owned());
    let store = AnyStore::open(args.store.url.expose(), options).await?;
    if args.status {
        let usage = store.rows_per_key().await?;
        print!("{}", render_status(&usage, active.as_deref()));
        print!("{}", render_data_keys(&store.data_keys().await?, &usage));
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

/// `--seals-after`: a duration, or `now`.
fn parse_seals_after(text: &str) -> Result<std::time::Duration, String> {
    if text == "now" {
        return Ok(std::time::Duration::ZERO);
    }
    crate::duration::parse(text).map_err(|err| format!("{err}, or now"))
}

/// `rotate-keys --new-kek`: puts the store's keys under `target`, touching no secret row.
async fn move_keys(args: &RotateArgs, target: &KeySource) -> anyhow::Result<()> {
    let url = &args.store.url;
    let store = AnyStore::open(url.expose(), StoreOptions::for_data_keys()).await?;
    let outcome = async {
        match (&args.encryption.keys, target) {
            (Some(KeySource::Kek(from)), KeySource::Kek(to)) => {
                let (from, to) = (from.open().await?, to.open().await?);
                if from.name() == to.name() {
                    anyhow::bail!(
                        "--new-kek names the key that wraps the data keys already ({})",
                        from.name()
                    );
                }
                let (from_name, to_name) = (from.name().to_owned(), to.name().to_owned());
                let count = envelope::rewrap(&store, from, to).await?;
                println!(
                    "re-wrapped {count} data keys of {url} from {from_name} to {to_name}; no secret was re-sealed. Start every server with --encryption-keys set to the new key"
                );
            }
            (Some(KeySource::File(path)), KeySource::Kek(to)) => {
                let keyring = Keyring::load(path)?;
                let to = to.open().await?;
                let to_name = to.name().to_owned();
                let count = envelope::import_keyring(&store, &keyring, to).await?;
                println!(
                    "stored the {count} keys of {} in {url} as data keys wrapped by {to_name}, active {:?}; no secret was re-sealed. Start every server with --encryption-keys set to that key, then destroy the file and its backups",
                    path.display(),
                    keyring.active_id()
                );
            }
            (Some(KeySource::Kek(from)), KeySource::File(path)) => {
                let from = from.open().await?;
                let Some(keyring) = envelope::export_keyring(&store, from).await? else {
                    anyhow::bail!("{url} has no data keys to write to a keyring file");
                };
                keyring.save_new(path)?;
                println!(
                    "wrote the {} data keys of {url} to the keyring file {} (owner-only), active {:?}; no secret was re-sealed. Start every server with --encryption-keys {}",
                    keyring.key_ids().count(),
                    path.display(),
                    keyring.active_id(),
                    path.display()
                );
            }
            (Some(KeySource::File(_)), KeySource::File(_)) => anyhow::bail!(
                "--new-kek moves keys between a keyring file and an HSM or KMS key; to change a keyring file's key, use kuma-secrets generate encryption-key --activate and rotate-keys"
            ),
            (None, _) => anyhow::bail!(
                "rotate-keys --new-kek needs the current keys: pass --encryption-keys"
            ),
        }
        Ok(())
    }
    .await;
    store.close().await;
    outcome
}

/// The data keys of an HSM key source, with what wraps each and how many values it seals.
fn render_data_keys(keys: &[StoredDataKey], usage: &[KeyUsage]) -> String {
    if keys.is_empty() {
        return String::new();
    }
    let now = chrono::Utc::now();
    let sealing = envelope::sealing_key(keys, now).map(|key| key.id.as_str());
    let time = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let table: Vec<Vec<String>> = keys
        .iter()
        .map(|key| {
            let values = usage
                .iter()
                .find(|u| u.key_id.as_deref() == Some(key.id.as_str()))
                .map_or(0, |u| u.rows);
            let state = if Some(key.id.as_str()) == sealing {
                "active"
            } else if key.seals_from > now {
                "pending"
            } else {
                ""
            };
            vec![
                key.id.clone(),
                key.kek.clone(),
                time(key.created),
                time(key.seals_from),
                values.to_string(),
                state.to_owned(),
            ]
        })
        .collect();
    format!(
        "\ndata keys (wrapped by a key-encryption key; a new one seals from SEALS FROM, once every server holds it):\n{}",
        super::table::render(
            &[
                "DATA KEY",
                "WRAPPED BY",
                "CREATED",
                "SEALS FROM",
                "VALUES",
                "STATE"
            ],
            &table
        )
    )
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
