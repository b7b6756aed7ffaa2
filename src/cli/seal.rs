//! `kuma-secrets seal-plaintext`: seal the values a store holds in clear, when the operator
//! asks for it by name (upgrading a store from before encryption at rest). Every value is
//! listed with its type and times before anything is written, and nothing is written
//! without `--yes`. Never sealed, whatever the flags: values that grant authority (token
//! signing keys, the admin token, revocation lists, CA keys: delete and regenerate them),
//! and anything in a store that has been fully sealed before (plaintext there can only
//! have been written behind the service's back).

use super::StoreArgs;
use super::keyring::{Access, EncryptionArgs, resolve};
use crate::printable::escaped;
use crate::store::{AnyStore, PlaintextValue, StoreOptions};

/// `kuma-secrets seal-plaintext …`
#[derive(Debug, clap::Args)]
pub struct SealArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    encryption: EncryptionArgs,
    /// Seal the values listed (without it, only list them).
    #[arg(long)]
    yes: bool,
    /// Values per transaction.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    batch_size: u32,
}

pub(super) async fn run(args: SealArgs) -> anyhow::Result<()> {
    let Some(keyring) = resolve(&args.store.url, &args.encryption, Access::Read).await? else {
        anyhow::bail!("seal-plaintext needs the keyring to seal with: pass --encryption-keys FILE");
    };
    let options = StoreOptions {
        keyring: Some(keyring),
        ..StoreOptions::default()
    };
    let store = AnyStore::open(args.store.url.expose(), options).await?;
    let result = seal(&store, &args).await;
    store.close().await;
    result
}

async fn seal(store: &AnyStore, args: &SealArgs) -> anyhow::Result<()> {
    let listed = store.plaintext_values().await?;
    if listed.is_empty() {
        println!("no value is stored in clear in {}", args.store.url);
        return Ok(());
    }
    print!("{}", render(&listed));
    if let Some(since) = store.fully_sealed_since().await? {
        anyhow::bail!(
            "the store has been fully sealed since {since}: values stored in clear since can only have been written behind the service's back; nothing was sealed: delete them (and look for how they got there)"
        );
    }
    if listed.iter().any(|value| value.grants_authority) {
        anyhow::bail!(
            "values marked (grants authority) are never sealed from plaintext: delete them with their kept versions (kuma-secrets delete … --purge) and let the service generate new ones (a Mesh: apply it again with its key through the API); nothing was sealed"
        );
    }
    if !args.yes {
        anyhow::bail!(
            "nothing was sealed: check that you expect every value listed above (written before encryption at rest), then run again with --yes"
        );
    }
    // The store checks each chunk again (tampering, authority, each row still as listed).
    let mut sealed = 0;
    for chunk in listed.chunks(args.batch_size as usize) {
        sealed += store
            .seal_plaintext(chunk, chunk.len())
            .await
            .map_err(|refusal| anyhow::anyhow!(escaped(&refusal.to_string()).into_owned()))?;
        eprintln!("sealed {sealed} of {} values", listed.len());
    }
    println!(
        "sealed {sealed} of the {} values listed with the active key",
        listed.len()
    );
    if sealed < listed.len() as u64 {
        anyhow::bail!(
            "{} values changed after they were listed and were left as they are: run seal-plaintext again",
            listed.len() as u64 - sealed
        );
    }
    Ok(())
}

/// One line per value: what, which version, when created and written.
fn render(listed: &[PlaintextValue]) -> String {
    let mut out = format!("{} values are stored in clear:\n", listed.len());
    for value in listed {
        out.push_str(&format!(
            "  {} (created {}, written {}){}\n",
            escaped(&value.describe()),
            value.creation_time.to_rfc3339(),
            value.modification_time.to_rfc3339(),
            if value.grants_authority {
                " (grants authority: never sealed from plaintext)"
            } else {
                ""
            }
        ));
    }
    out
}
