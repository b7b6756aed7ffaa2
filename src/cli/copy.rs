//! `kuma-secrets copy --from URL --to URL`: move a whole store between backends (SQLite to
//! Postgres or back), in batches of one transaction each, then verify that every row of the
//! source is in the destination with identical data, labels and spec.
//!
//! Re-running after an interruption is safe: each batch is an idempotent import (created,
//! updated, or unchanged), so the second run finishes the job and the verification says so.
//! Rows only in the destination are left alone and counted.

use super::import::open_destination;
use super::keyring::{Access, EncryptionArgs, store_options};
use crate::domain::{ExternalService, Mesh, Resource, Secret};
use crate::manifest::{external_service_resource_of, mesh_resource_of, secret_resource_of};
use crate::store::{
    AnyStore, ExternalServiceWalk, ImportCounts, MeshWalk, SecretScope, SecretStore, SecretWalk,
    StoreOptions, StoreUrl, Walk,
};
use indicatif::{ProgressBar, ProgressStyle};
use std::cmp::Ordering;
use std::collections::VecDeque;
use std::io::IsTerminal;

/// `kuma-secrets copy …`
#[derive(Debug, clap::Args)]
pub struct CopyArgs {
    /// The store to read (postgres://… or sqlite://…).
    #[arg(long)]
    from: StoreUrl,
    /// The store to write; a Postgres database gets its schema migrated first.
    #[arg(long)]
    to: StoreUrl,
    /// Keys of --from: a keyring file or a `pkcs11:` key (default for SQLite: the file next
    /// to its database).
    #[arg(long = "from-encryption-keys", value_parser = super::keyring::KeySource::parse)]
    from_keys: Option<super::keyring::KeySource>,
    /// Keyring of --to, which seals what is written there.
    #[command(flatten)]
    encryption: EncryptionArgs,
    /// Resources per transaction (and per page read).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=1000))]
    batch_size: u32,
    /// Skip the verification pass.
    #[arg(long, conflicts_with = "verify_only")]
    no_verify: bool,
    /// Only verify that every resource of --from is in --to, identical; copy nothing.
    #[arg(long)]
    verify_only: bool,
    /// Also carry each secret's kept versions (version history), with their numbers, and
    /// verify them. Deleted secrets' histories are not carried.
    #[arg(long)]
    with_history: bool,
}

pub(super) async fn run(args: CopyArgs) -> anyhow::Result<()> {
    let from_encryption = EncryptionArgs {
        keys: args.from_keys.clone(),
        allow_plaintext_secrets: false,
        accept_plaintext_rows: args.encryption.accept_plaintext_rows,
    };
    let source_options = StoreOptions {
        accept_plaintext_rows: from_encryption.accept_plaintext_rows(),
        ..store_options(&args.from, &from_encryption, Access::Read).await?
    };
    let opened_source = AnyStore::open(args.from.expose(), source_options).await?;
    // The copy and its verification read one point in time of the source, as pg_dump
    // does: a writer on the source during the copy cannot make it mix times.
    let source = opened_source.snapshot();
    let (from, to) = (args.from.to_string(), args.to.to_string());
    let destination = if args.verify_only {
        let options = StoreOptions {
            accept_plaintext_rows: args.encryption.accept_plaintext_rows,
            ..store_options(&args.to, &args.encryption, Access::Read).await?
        };
        AnyStore::open(args.to.expose(), options).await?
    } else {
        open_destination(&args.to, &args.encryption).await?
    };
    if !args.verify_only {
        copy_all(&source, &destination, args.batch_size, &from, &to).await?;
        if args.with_history {
            let (secrets, versions) = copy_history(&source, &destination, args.batch_size).await?;
            println!("copied {versions} kept versions of {secrets} secrets");
        }
    }
    if !args.no_verify {
        let mut report = verify(&source, &destination, args.batch_size).await?;
        if args.with_history {
            verify_history(&source, &destination, args.batch_size, &mut report).await?;
        }
        if report.problems.is_empty() {
            println!(
                "verified {} resources: every one is in {to} with identical data and labels{}",
                report.checked,
                if report.extra > 0 {
                    format!(
                        " ({} more only in the destination, left alone)",
                        report.extra
                    )
                } else {
                    String::new()
                }
            );
        } else {
            for problem in report.problems.iter().take(20) {
                eprintln!("{problem}");
            }
            anyhow::bail!(
                "verification failed: {} of {} resources differ or are missing in {to}",
                report.problems.len(),
                report.checked
            );
        }
    }
    source.close().await;
    opened_source.close().await;
    destination.close().await;
    Ok(())
}

/// Walks over every secret: Secrets of every Mesh, then GlobalSecrets.
fn secret_walks(page_size: u32) -> anyhow::Result<[SecretWalk; 2]> {
    Ok([
        SecretWalk::new(SecretScope::AllMeshes, page_size)?,
        SecretWalk::new(SecretScope::Global, page_size)?,
    ])
}

/// The versions `store` keeps of `secret` (not the current one), opened, with who wrote
/// each.
async fn kept_versions(
    store: &AnyStore,
    secret: &Secret,
) -> anyhow::Result<Vec<(Secret, Option<crate::store::feed::Actor>)>> {
    let mut kept = Vec::new();
    for info in store.secret_versions(&secret.key).await? {
        if info.current || info.deletion_time.is_some() {
            continue;
        }
        let version = store.get_secret_version(&secret.key, info.version).await?;
        kept.push((version, info.actor));
    }
    Ok(kept)
}

/// Carries every secret's kept versions, with their numbers, into `destination` (the
/// current values are there already); returns (secrets, versions).
async fn copy_history(
    source: &AnyStore,
    destination: &AnyStore,
    page_size: u32,
) -> anyhow::Result<(u64, u64)> {
    let (mut secrets, mut versions) = (0u64, 0u64);
    for mut walk in secret_walks(page_size)? {
        while let Some(page) = walk.next_page(source).await? {
            for secret in page.items {
                let kept = kept_versions(source, &secret).await?;
                if !kept.is_empty() {
                    versions += destination
                        .replace_history(&secret.key, secret.meta.version, kept)
                        .await?;
                    secrets += 1;
                }
            }
        }
    }
    Ok((secrets, versions))
}

/// Checks that every kept version of every source secret is in `destination` under the
/// same number, with identical data and labels (as many as its history limit keeps).
async fn verify_history(
    source: &AnyStore,
    destination: &AnyStore,
    page_size: u32,
    report: &mut Verification,
) -> anyhow::Result<()> {
    for mut walk in secret_walks(page_size)? {
        while let Some(page) = walk.next_page(source).await? {
            for secret in page.items {
                let theirs = match destination.get_secret(&secret.key).await {
                    Ok(theirs) => theirs,
                    // Reported by the current values' verification.
                    Err(_) => continue,
                };
                if theirs.meta.version != secret.meta.version {
                    report.problems.push(format!(
                        "differs: {} is at version {} there, {} here",
                        secret.key.resource_key(),
                        theirs.meta.version,
                        secret.meta.version
                    ));
                    continue;
                }
                let kept: std::collections::BTreeSet<i64> = destination
                    .secret_versions(&secret.key)
                    .await?
                    .into_iter()
                    .filter(|v| !v.current)
                    .map(|v| v.version)
                    .collect();
                for (mine, _) in kept_versions(source, &secret).await? {
                    if !kept.contains(&mine.meta.version) {
                        // Not kept there: its history limit is smaller. Only a gap is wrong.
                        if kept.iter().any(|v| *v < mine.meta.version) {
                            report.problems.push(format!(
                                "missing: {} version {}",
                                secret.key.resource_key(),
                                mine.meta.version
                            ));
                        }
                        continue;
                    }
                    report.checked += 1;
                    let there = destination
                        .get_secret_version(&secret.key, mine.meta.version)
                        .await?;
                    if there.data.expose() != mine.data.expose() || there.labels != mine.labels {
                        report.problems.push(format!(
                            "differs: {} version {}",
                            secret.key.resource_key(),
                            mine.meta.version
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Copies meshes, then secrets, global secrets and external services, one transaction per
/// page.
async fn copy_all(
    source: &AnyStore,
    destination: &AnyStore,
    batch_size: u32,
    from: &str,
    to: &str,
) -> anyhow::Result<()> {
    let total = count_all(source).await?;
    let progress = Progress::new(total);
    let mut counts = ImportCounts::default();

    let mut meshes = MeshWalk::new(batch_size)?;
    while let Some(page) = meshes.next_page(source).await? {
        let batch: Vec<Resource> = page.items.iter().map(mesh_resource_of).collect();
        let n = batch.len() as u64;
        counts += destination.import_batch(batch).await?;
        progress.advance(n);
    }
    for mut secrets in secret_walks(batch_size)? {
        while let Some(page) = secrets.next_page(source).await? {
            let batch: Vec<Resource> = page.items.iter().map(secret_resource_of).collect();
            let n = batch.len() as u64;
            counts += destination.import_batch(batch).await?;
            progress.advance(n);
        }
    }
    let mut services = ExternalServiceWalk::new(batch_size)?;
    while let Some(page) = services.next_page(source).await? {
        let batch: Vec<Resource> = page
            .items
            .iter()
            .map(external_service_resource_of)
            .collect();
        let n = batch.len() as u64;
        counts += destination.import_batch(batch).await?;
        progress.advance(n);
    }
    progress.finish();
    println!(
        "copied {total} resources from {from} to {to}: {} created, {} updated, {} unchanged",
        counts.created, counts.updated, counts.unchanged
    );

    Ok(())
}

async fn count_all(store: &AnyStore) -> anyhow::Result<u64> {
    let mut total = MeshWalk::new(1)?
        .next_page(store)
        .await?
        .map_or(0, |p| p.total);
    for mut secrets in secret_walks(1)? {
        total += secrets.next_page(store).await?.map_or(0, |p| p.total);
    }
    total += ExternalServiceWalk::new(1)?
        .next_page(store)
        .await?
        .map_or(0, |p| p.total);
    Ok(total)
}

/// A bar on a terminal, a line per batch otherwise (logs, CI).
struct Progress {
    bar: Option<ProgressBar>,
    total: u64,
    done: std::cell::Cell<u64>,
}

impl Progress {
    fn new(total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} resources ({per_sec}, {eta} left)",
                )
                .expect("valid template"),
            );
            bar
        });
        Self {
            bar,
            total,
            done: std::cell::Cell::new(0),
        }
    }

    fn advance(&self, n: u64) {
        self.done.set(self.done.get() + n);
        match &self.bar {
            Some(bar) => bar.inc(n),
            None => eprintln!("copied {}/{} resources", self.done.get(), self.total),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

struct Verification {
    checked: u64,
    extra: u64,
    problems: Vec<String>,
}

/// Walks both stores in key order side by side (a merge join), comparing each source row
/// with the destination row of the same key. Both backends sort by bytes (Postgres
/// `COLLATE "C"`, SQLite `BINARY`), so the two walks line up.
async fn verify(
    source: &AnyStore,
    destination: &AnyStore,
    page_size: u32,
) -> anyhow::Result<Verification> {
    let mut report = Verification {
        checked: 0,
        extra: 0,
        problems: Vec::new(),
    };
    compare(
        source,
        destination,
        || MeshWalk::new(page_size),
        |m: &Mesh| (String::new(), m.name.as_str().to_owned()),
        |a, b| a.spec == b.spec && a.labels == b.labels,
        |m| format!("Mesh {:?}", m.name.as_str()),
        &mut report,
    )
    .await?;
    for scope in [SecretScope::AllMeshes, SecretScope::Global] {
        compare(
            source,
            destination,
            || SecretWalk::new(scope.clone(), page_size),
            |s: &Secret| {
                (
                    s.key
                        .mesh()
                        .map(|m| m.as_str().to_owned())
                        .unwrap_or_default(),
                    s.key.name().as_str().to_owned(),
                )
            },
            |a, b| a.data.expose() == b.data.expose() && a.labels == b.labels,
            |s| s.key.resource_key().to_string(),
            &mut report,
        )
        .await?;
    }
    compare(
        source,
        destination,
        || ExternalServiceWalk::new(page_size),
        |e: &ExternalService| (e.mesh.as_str().to_owned(), e.name.as_str().to_owned()),
        |a, b| a.spec == b.spec && a.labels == b.labels,
        |e| e.key().to_string(),
        &mut report,
    )
    .await?;
    Ok(report)
}

/// One merge join of a walk over `source` against the same walk over `destination`.
async fn compare<W: Walk>(
    source: &AnyStore,
    destination: &AnyStore,
    walk: impl Fn() -> crate::store::Result<W>,
    key: impl Fn(&W::Item) -> (String, String),
    same: impl Fn(&W::Item, &W::Item) -> bool,
    describe: impl Fn(&W::Item) -> String,
    report: &mut Verification,
) -> anyhow::Result<()> {
    let (mut left, mut right) = (walk()?, walk()?);
    let mut theirs: VecDeque<W::Item> = VecDeque::new();
    let mut right_done = false;
    while let Some(page) = left.next_items(source).await? {
        for mine in page {
            report.checked += 1;
            let found = loop {
                if theirs.is_empty() && !right_done {
                    match right.next_items(destination).await? {
                        Some(items) if !items.is_empty() => theirs.extend(items),
                        _ => right_done = true,
                    }
                }
                let Some(next) = theirs.front() else {
                    break None;
                };
                match key(next).cmp(&key(&mine)) {
                    Ordering::Less => {
                        report.extra += 1;
                        theirs.pop_front();
                    }
                    Ordering::Equal => break theirs.pop_front(),
                    Ordering::Greater => break None,
                }
            };
            match found {
                None => report
                    .problems
                    .push(format!("missing: {}", describe(&mine))),
                Some(found) if !same(&found, &mine) => {
                    report
                        .problems
                        .push(format!("differs: {}", describe(&mine)));
                }
                Some(_) => {}
            }
        }
    }
    report.extra += theirs.len() as u64;
    while let Some(items) = right.next_items(destination).await? {
        report.extra += items.len() as u64;
    }
    Ok(())
}
