//! Group commit under a mixed load, on both backends: 64 concurrent writers, released
//! together on a barrier through the read cache `serve` runs, mix successes, 412s, 400s
//! (an immutable label), 404s (a missing Mesh), guarded and plain deletes, new names and
//! one name written by eight writers at once, so those land in the same batches. Each
//! caller must get its own answer, and afterwards the table, the change feed, the kept
//! versions and the cache must agree with one another and with those answers.

#[macro_use]
mod common;

use kuma_secrets::domain::{
    ExternalServiceSpec, Labels, MeshName, MeshSpec, NewExternalService, NewMesh, NewSecret,
    ResourceName, SecretData, SecretKey,
};
use kuma_secrets::store::feed::{EventFilter, Operation};
use kuma_secrets::store::{Expect, SealedReads, SecretStore, StoreError};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Writers with a key of their own (seven kinds of write, eight writers each), then eight
/// writers on one shared key: 64 in all.
const WRITERS: usize = 64;

/// What writer `i` does, by `i % 7`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// A blind put of its key: an update to version 2.
    Blind,
    /// A put `If-Match: 1`: an update to version 2.
    IfMatch,
    /// A put `If-Match: 7`: 412, nothing written.
    Stale,
    /// A blind put changing the immutable `kuma.io/display-name`: 400, nothing written.
    Immutable,
    /// A delete of its key.
    Delete,
    /// A delete of a Secret an ExternalService uses: refused, nothing deleted.
    Guarded,
    /// A put into a Mesh that does not exist: 404, nothing written.
    NoMesh,
}

const KINDS: [Kind; 7] = [
    Kind::Blind,
    Kind::IfMatch,
    Kind::Stale,
    Kind::Immutable,
    Kind::Delete,
    Kind::Guarded,
    Kind::NoMesh,
];

fn key(mesh: &str, name: &str) -> SecretKey {
    SecretKey::parse(Some(mesh), name).unwrap()
}

fn secret(mesh: &str, name: &str, data: &str, display_name: &str) -> NewSecret {
    let labels = BTreeMap::from([("kuma.io/display-name".to_owned(), display_name.to_owned())]);
    NewSecret {
        key: key(mesh, name),
        data: SecretData::new(data.as_bytes().to_vec()).unwrap(),
        labels: Labels::parse(labels).unwrap(),
    }
}

/// The secret each successful put of an own key returned, by (Mesh, name): what a read
/// must give back, to the microsecond and the label.
static RETURNED: std::sync::Mutex<BTreeMap<(String, String), kuma_secrets::domain::Secret>> =
    std::sync::Mutex::new(BTreeMap::new());

/// What one writer was answered: the version written, or the error's kind.
#[derive(Debug, Clone, PartialEq)]
enum Answer {
    Written { created: bool, version: i64 },
    Deleted,
    Conflict { expected: i64, actual: i64 },
    ImmutableLabels,
    ReferencedBy,
    MeshNotFound,
    Other(String),
}

fn answer<T>(result: Result<T, StoreError>, ok: impl FnOnce(T) -> Answer) -> Answer {
    match result {
        Ok(value) => ok(value),
        Err(StoreError::Conflict {
            expected, actual, ..
        }) => Answer::Conflict { expected, actual },
        Err(StoreError::ImmutableLabels(_)) => Answer::ImmutableLabels,
        Err(StoreError::ReferencedBy { .. }) => Answer::ReferencedBy,
        Err(StoreError::MeshNotFound { .. }) => Answer::MeshNotFound,
        Err(other) => Answer::Other(other.to_string()),
    }
}

/// Sets up round `round` in its own Mesh: each own-key writer's Secret at version 1 (with
/// `kuma.io/display-name`), and for the guarded ones a Secret an ExternalService uses.
async fn set_up<S: SecretStore>(store: &S, mesh: &str, kinds: &[Kind], own: usize) {
    let name = MeshName::parse(mesh).unwrap();
    store
        .put_mesh(
            NewMesh {
                name: name.clone(),
                spec: MeshSpec::default(),
                labels: Labels::default(),
            },
            Expect::Absent,
        )
        .await
        .unwrap();
    let (ca, _) = common::pki::ca_pair("group-commit");
    for i in 0..own {
        let k = format!("k-{i}");
        store
            .put_secret(secret(mesh, &k, "v1", &k), Expect::Absent)
            .await
            .unwrap();
        if kinds[i % kinds.len()] == Kind::Guarded {
            let r = format!("ref-{i}");
            store
                .put_secret(secret(mesh, &r, &ca, &r), Expect::Absent)
                .await
                .unwrap();
            let spec: ExternalServiceSpec = serde_json::from_value(json!({
                "networking": {"address": format!("es-{i}.example.com:443"),
                    "tls": {"enabled": true, "caCert": {"secret": r}}},
                "tags": {"kuma.io/service": format!("es-{i}")}
            }))
            .unwrap();
            let service = NewExternalService {
                mesh: name.clone(),
                name: ResourceName::parse(&format!("es-{i}")).unwrap(),
                spec,
                labels: Labels::default(),
            };
            store
                .put_external_service(service, Expect::Absent)
                .await
                .unwrap();
        }
    }
}

/// Writer `i`'s write, on the barrier.
async fn write<S: SecretStore>(
    store: &S,
    mesh: &str,
    kinds: &[Kind],
    own: usize,
    i: usize,
) -> Answer {
    if i >= own {
        let put = store
            .put_secret(
                secret(mesh, "shared", &format!("w{i}"), "shared"),
                Expect::Any,
            )
            .await;
        return answer(put, |put| Answer::Written {
            created: put.created,
            version: put.value.meta.version,
        });
    }
    let k = format!("k-{i}");
    let written = |put: kuma_secrets::store::Put<kuma_secrets::domain::Secret>| {
        let answer = Answer::Written {
            created: put.created,
            version: put.value.meta.version,
        };
        RETURNED
            .lock()
            .unwrap()
            .insert((mesh.to_owned(), k.clone()), put.value);
        answer
    };
    match kinds[i % kinds.len()] {
        Kind::Blind => answer(
            store
                .put_secret(secret(mesh, &k, "v2", &k), Expect::Any)
                .await,
            written,
        ),
        Kind::IfMatch => answer(
            store
                .put_secret(secret(mesh, &k, "v2", &k), Expect::Version(1))
                .await,
            written,
        ),
        Kind::Stale => answer(
            store
                .put_secret(secret(mesh, &k, "v2", &k), Expect::Version(7))
                .await,
            written,
        ),
        Kind::Immutable => answer(
            store
                .put_secret(secret(mesh, &k, "v2", "renamed"), Expect::Any)
                .await,
            written,
        ),
        Kind::Delete => answer(store.delete_secret(&key(mesh, &k), None).await, |()| {
            Answer::Deleted
        }),
        Kind::Guarded => answer(
            store
                .delete_secret(&key(mesh, &format!("ref-{i}")), None)
                .await,
            |()| Answer::Deleted,
        ),
        Kind::NoMesh => answer(
            store
                .put_secret(secret("nowhere", &k, "v2", &k), Expect::Any)
                .await,
            written,
        ),
    }
}

/// The answer writer `i` must get (the shared key's are checked together).
fn expected(kinds: &[Kind], i: usize) -> Answer {
    match kinds[i % kinds.len()] {
        Kind::Blind | Kind::IfMatch => Answer::Written {
            created: false,
            version: 2,
        },
        Kind::Stale => Answer::Conflict {
            expected: 7,
            actual: 1,
        },
        Kind::Immutable => Answer::ImmutableLabels,
        Kind::Delete => Answer::Deleted,
        Kind::Guarded => Answer::ReferencedBy,
        Kind::NoMesh => Answer::MeshNotFound,
    }
}

async fn writers_each_get_their_own_answer_and_everything_agrees<S>(
    store: &S,
    kinds: &[Kind],
    shared_writers: usize,
) where
    S: SecretStore + SealedReads + Clone + Send + Sync + 'static,
{
    let own = WRITERS - shared_writers;
    let (cached, follower) = common::following_cache(store.clone(), 10_000).await;
    // Rounds until one of them committed writes in batches (each round is checked in
    // full whether or not it did); 64 writers on a barrier batch in the first, in practice.
    for round in 0.. {
        assert!(
            round < 5,
            "five rounds of 64 concurrent writers, and no batch of two or more"
        );
        let before = store.pool_report().unwrap();
        let (batched_before, bulk_before) = (before.batched_writes, before.bulk_writes);
        // A Mesh no other test of this process uses: `RETURNED` is shared.
        static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mesh = format!("round-{round}-run-{run}");
        set_up(&cached, &mesh, kinds, own).await;
        let start = store.current_revision().await.unwrap();

        let barrier = Arc::new(tokio::sync::Barrier::new(WRITERS));
        let writers: Vec<_> = (0..WRITERS)
            .map(|i| {
                let (store, barrier, mesh, kinds) = (
                    cached.clone(),
                    barrier.clone(),
                    mesh.clone(),
                    kinds.to_vec(),
                );
                tokio::spawn(async move {
                    barrier.wait().await;
                    write(&store, &mesh, &kinds, own, i).await
                })
            })
            .collect();
        let mut answers = Vec::new();
        for writer in writers {
            answers.push(writer.await.unwrap());
        }

        // Each caller its own answer.
        for (i, got) in answers.iter().enumerate().take(own) {
            assert_eq!(
                got,
                &expected(kinds, i),
                "writer {i} ({:?})",
                kinds[i % kinds.len()]
            );
        }
        if shared_writers > 0 {
            let mut shared: Vec<(bool, i64)> = answers[own..]
                .iter()
                .map(|a| match a {
                    Answer::Written { created, version } => (*created, *version),
                    other => panic!("a blind put of the shared key answered {other:?}"),
                })
                .collect();
            shared.sort_by_key(|&(_, version)| version);
            let versions: Vec<i64> = shared.iter().map(|&(_, v)| v).collect();
            assert_eq!(
                versions,
                (1..=shared_writers as i64).collect::<Vec<_>>(),
                "{shared:?}"
            );
            assert_eq!(shared.iter().filter(|(created, _)| *created).count(), 1);
            assert!(shared[0].0, "version 1 is the create");
        }

        // The table, read around the cache, and the cache agree with the answers.
        for i in 0..own {
            let k = key(&mesh, &format!("k-{i}"));
            let stored = store.get_secret(&k).await;
            let from_cache = cached.get_secret(&k).await;
            match kinds[i % kinds.len()] {
                Kind::Blind | Kind::IfMatch => {
                    let stored = stored.unwrap();
                    let returned =
                        RETURNED.lock().unwrap()[&(mesh.clone(), format!("k-{i}"))].clone();
                    assert_eq!(
                        (&stored.meta, &stored.labels),
                        (&returned.meta, &returned.labels),
                        "k-{i}: read back as the put returned it"
                    );
                    assert_eq!(
                        (stored.meta.version, stored.data.expose()),
                        (2, &b"v2"[..]),
                        "k-{i}"
                    );
                }
                Kind::Delete => assert!(matches!(stored, Err(StoreError::NotFound(_))), "k-{i}"),
                _ => {
                    let stored = stored.unwrap();
                    assert_eq!(
                        (stored.meta.version, stored.data.expose()),
                        (1, &b"v1"[..]),
                        "k-{i}"
                    );
                    assert_eq!(
                        stored.labels.get("kuma.io/display-name"),
                        Some(format!("k-{i}").as_str())
                    );
                }
            }
            if kinds[i % kinds.len()] == Kind::Guarded {
                store
                    .get_secret(&key(&mesh, &format!("ref-{i}")))
                    .await
                    .unwrap();
            }
            match (store.get_secret(&k).await, from_cache) {
                (Ok(stored), Ok(cached)) => {
                    assert_eq!(
                        (stored.meta.version, stored.data.expose()),
                        (cached.meta.version, cached.data.expose()),
                        "k-{i}"
                    )
                }
                (Err(StoreError::NotFound(_)), Err(StoreError::NotFound(_))) => {}
                (stored, cached) => panic!("k-{i}: the table has {stored:?}, the cache {cached:?}"),
            }
            assert!(matches!(
                store.get_secret(&key("nowhere", &format!("k-{i}"))).await,
                Err(StoreError::NotFound(_) | StoreError::MeshNotFound { .. })
            ));
        }
        if shared_writers > 0 {
            let shared_key = key(&mesh, "shared");
            let stored = store.get_secret(&shared_key).await.unwrap();
            assert_eq!(stored.meta.version, shared_writers as i64);
            let from_cache = cached.get_secret(&shared_key).await.unwrap();
            assert_eq!(
                (from_cache.meta.version, from_cache.data.expose()),
                (stored.meta.version, stored.data.expose())
            );
        }

        // The feed: one event per write that succeeded, none for a refused one, numbered
        // without a gap.
        let page = store
            .events_after(start, 10_000, &EventFilter::default())
            .await
            .unwrap();
        let revisions: Vec<i64> = page.events.iter().map(|e| e.revision).collect();
        assert_eq!(
            revisions,
            (start + 1..=start + revisions.len() as i64).collect::<Vec<_>>()
        );
        let events: BTreeSet<(String, i64, String)> = page
            .events
            .iter()
            .map(|e| {
                assert_eq!(e.mesh.as_deref(), Some(mesh.as_str()), "{e:?}");
                let op = match e.operation {
                    Operation::Create => "create",
                    Operation::Update => "update",
                    Operation::Delete => "delete",
                };
                (e.name.clone(), e.version, op.to_owned())
            })
            .collect();
        assert_eq!(
            events.len(),
            page.events.len(),
            "an event twice: {:?}",
            page.events
        );
        let mut want = BTreeSet::new();
        for i in 0..own {
            match kinds[i % kinds.len()] {
                Kind::Blind | Kind::IfMatch => {
                    want.insert((format!("k-{i}"), 2, "update".to_owned()))
                }
                Kind::Delete => want.insert((format!("k-{i}"), 1, "delete".to_owned())),
                _ => false,
            };
        }
        if shared_writers > 0 {
            want.insert(("shared".to_owned(), 1, "create".to_owned()));
        }
        for version in 2..=shared_writers as i64 {
            want.insert(("shared".to_owned(), version, "update".to_owned()));
        }
        assert_eq!(events, want);

        // Kept versions: the old value of each update is kept, a refused write kept nothing.
        for i in 0..own {
            let k = key(&mesh, &format!("k-{i}"));
            let versions: Vec<i64> = store
                .secret_versions(&k)
                .await
                .unwrap()
                .iter()
                .map(|v| v.version)
                .collect();
            let want: Vec<i64> = match kinds[i % kinds.len()] {
                Kind::Blind | Kind::IfMatch => vec![2, 1],
                _ => vec![1],
            };
            assert_eq!(versions, want, "k-{i} ({:?})", kinds[i % kinds.len()]);
            if kinds[i % kinds.len()] == Kind::IfMatch || kinds[i % kinds.len()] == Kind::Blind {
                assert_eq!(
                    store.get_secret_version(&k, 1).await.unwrap().data.expose(),
                    b"v1"
                );
            }
        }
        if shared_writers > 0 {
            let kept: Vec<i64> = store
                .secret_versions(&key(&mesh, "shared"))
                .await
                .unwrap()
                .iter()
                .map(|v| v.version)
                .collect();
            assert_eq!(kept, (1..=shared_writers as i64).rev().collect::<Vec<_>>());
        }

        let report = store.pool_report().unwrap();
        assert!(
            report.batched_writes == batched_before || report.bulk_writes > bulk_before,
            "batches, but no put written by a batch's bulk statements"
        );
        eprintln!(
            "round {round}: {} of {} writes committed in batches, {} of them by bulk statements (batches so far: {})",
            report.batched_writes - batched_before,
            WRITERS,
            report.bulk_writes - bulk_before,
            report.write_batches
        );
        if report.batched_writes > batched_before {
            break;
        }
    }
    follower.abort();
}

/// Every kind of write, and eight writers on one key: batches with deletes and a key named
/// twice, which run in one transaction.
async fn mixed_writers_each_get_their_own_answer_and_everything_agrees<S>(store: &S)
where
    S: SecretStore + SealedReads + Clone + Send + Sync + 'static,
{
    writers_each_get_their_own_answer_and_everything_agrees(store, &KINDS, 8).await;
}

/// Puts only, each of its own key: batches all of whose writes the bulk statements take,
/// which commit without a transaction around them; the refused ones then run alone.
async fn put_only_writers_each_get_their_own_answer_and_everything_agrees<S>(store: &S)
where
    S: SecretStore + SealedReads + Clone + Send + Sync + 'static,
{
    let kinds = [
        Kind::Blind,
        Kind::IfMatch,
        Kind::Stale,
        Kind::Immutable,
        Kind::NoMesh,
    ];
    writers_each_get_their_own_answer_and_everything_agrees(store, &kinds, 0).await;
}

on_both_backends! {
    stores: [
        mixed_writers_each_get_their_own_answer_and_everything_agrees,
        put_only_writers_each_get_their_own_answer_and_everything_agrees,
    ],
    shared: []
}
