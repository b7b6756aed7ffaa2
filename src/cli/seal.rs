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
use crate::store::{AnyStore, PlaintextValue, SealRefusal, StoreOptions};

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
    let options = StoreOptions::sealed_with(keyring);
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
    let refused =
        |refusal: SealRefusal| anyhow::anyhow!(escaped(&refusal.to_string()).into_owned());
    // Tampering and authority are the store's to decide, with or without --yes.
    store.check_sealable(&listed).await.map_err(refused)?;
    if !args.yes {
        anyhow::bail!(
            "nothing was sealed: check that you expect every value listed above (written before encryption at rest), then run again with --yes"
        );
    }
    let sealed = store
        .seal_plaintext(&listed, args.batch_size as usize, |sealed| {
            eprintln!("sealed {sealed} of {} values", listed.len());
        })
        .await
        .map_err(refused)?;
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
