//! Puts: create-or-replace under an [`Expect`]ation, the write behind the API's PUT. A
//! secret's is one statement whatever the precondition (an upsert, a conditional replace,
//! or an insert), so a blind writer never loses to a concurrent one; a Mesh's is one write
//! transaction, because its mTLS checks must run beside it.

use super::mtls::{MTLS_ATTEMPTS, MeshRefusal};
use super::rows::SecretRow;
use super::statements::query_as;
use super::statements::{
    GET_SECRET_VERSION_LABELS, bind_key, immutable_label_values, replace_secret, upsert_secret,
};
use super::tx::{TxError, TxResult, to_the_end};
use super::{
    SqlStore, check_mesh_spec, labels_json, missed, now, open_spec_with, seal, seal_spec, writer,
};
use crate::domain::mtls::Mtls;
use crate::domain::{
    Labels, Mesh, MeshSpec, NewMesh, NewSecret, ResourceKey, Secret, SecretKey,
    check_immutable_labels,
};
use crate::sealing::Keyring;
use crate::store::backend::db_error::Op;
use crate::store::contract::{DatabaseError, Expect, Put, Result, StoreError};
use sqlx::AssertSqlSafe;
use sqlx::types::Json;
use std::collections::BTreeMap;

impl_for_sql_databases! {
impl [SqlStore<DB>] {
    /// The body of [`SecretStore::put_secret`] for a write committed alone: the put's
    /// statement commits on its own ([`SqlStore::put_secret_on`]).
    pub(super) async fn put_secret_with(&self, secret: NewSecret, expect: Expect) -> Result<Put<Secret>> {
        secret.data.check_size(self.options.max_secret_size)?;
        let resource = secret.key.resource_key();
        let keyring = self.options.keyring();
        self.on_one_connection(put_op(expect, &resource), move |conn| {
            Box::pin(async move { Self::put_secret_on(conn, keyring.as_deref(), secret, expect).await })
        })
        .await
    }

    /// A put's statements on `conn`, alone or in a batch's transaction (`group_commit.rs`):
    /// one statement whatever the precondition (an upsert, a conditional replace, or an
    /// insert), and a read of why when it wrote nothing. Database errors come back
    /// unmapped, for the caller to map with [`put_op`].
    pub(super) async fn put_secret_on(
        conn: &mut DB::Connection,
        keyring: Option<&Keyring>,
        secret: NewSecret,
        expect: Expect,
    ) -> TxResult<Put<Secret>, StoreError> {
        let key = secret.key.clone();
        if expect == Expect::Absent {
            let stored = seal(keyring, &key, secret.data.expose());
            let row = to_the_end(Self::insert_secret_query(&key, now(), &secret.labels, stored).fetch(&mut *conn))
                .await?
                .ok_or(sqlx::Error::RowNotFound)?;
            return Ok(Put { created: true, value: row.with_data(secret.data) });
        }
        // A statement that wrote nothing because of a concurrent change that has since
        // gone away (see `why_not_put`) is simply run again.
        for _attempt in 0..3 {
            let stored = seal(keyring, &key, secret.data.expose());
            let time = now();
            let query = match expect {
                Expect::Any => query_as::<DB, SecretRow>(AssertSqlSafe(upsert_secret::<DB>(&key)))
                    .bind(key.name().as_str().to_owned())
                    .bind(key.mesh().map(|m| m.as_str().to_owned()))
                    .bind(time)
                    .bind(labels_json(&secret.labels))
                    .bind(stored.bytes)
                    .bind(stored.key_id)
                    .bind(stored.write_id)
                    .bind(writer().0)
                    .bind(writer().1),
                Expect::Exists | Expect::Version(_) | Expect::Absent => {
                    let version = match expect {
                        Expect::Version(version) => Some(version),
                        _ => None,
                    };
                    let [origin, zone, display_name] = immutable_label_values(&secret.labels);
                    let query = query_as::<DB, SecretRow>(AssertSqlSafe(replace_secret::<DB>(&key)))
                        .bind(stored.bytes)
                        .bind(stored.key_id)
                        .bind(stored.write_id)
                        .bind(labels_json(&secret.labels))
                        .bind(time)
                        .bind(version)
                        .bind(origin)
                        .bind(zone)
                        .bind(display_name)
                        .bind(writer().0)
                        .bind(writer().1);
                    bind_key(query, &key)
                }
            };
            match to_the_end(query.fetch(&mut *conn)).await? {
                Some(row) => {
                    return Ok(Put {
                        // Only an upsert inserts, and an inserted row starts at version 1.
                        created: expect == Expect::Any && row.version() == 1,
                        value: row.with_data(secret.data),
                    });
                }
                None => {
                    if let Some(refusal) = Self::why_not_put(conn, &key, &secret.labels, expect).await? {
                        return Err(TxError::Refused(refusal));
                    }
                }
            }
        }
        Err(TxError::Refused(StoreError::Unavailable(DatabaseError::new(
            "the secret kept changing under a put; retry",
        ))))
    }

    /// Why a put statement wrote nothing: the secret is gone, at another version, or the
    /// put would change an immutable label. `None`: none of these holds any more (it
    /// changed between the statement and this read), so the put may run again.
    async fn why_not_put(
        conn: &mut DB::Connection,
        key: &SecretKey,
        labels: &Labels,
        expect: Expect,
    ) -> std::result::Result<Option<StoreError>, sqlx::Error> {
        let current = to_the_end(
            bind_key(
                query_as::<DB, (i64, Json<BTreeMap<String, String>>)>(GET_SECRET_VERSION_LABELS.for_key(key)),
                key,
            )
            .fetch(&mut *conn),
        )
        .await?;
        let Some((version, Json(stored))) = current else {
            return Ok(Some(StoreError::NotFound(key.resource_key())));
        };
        if let Expect::Version(expected) = expect
            && expected != version
        {
            return Ok(Some(missed(key.resource_key(), Some(expected), Some(version))));
        }
        Ok(check_immutable_labels(&Labels::from_stored(stored), labels)
            .err()
            .map(StoreError::ImmutableLabels))
    }

    /// The body of [`SecretStore::put_mesh`].
    pub(super) async fn put_mesh_with(&self, mesh: NewMesh, expect: Expect) -> Result<Put<Mesh>> {
        let key = ResourceKey::mesh(&mesh.name);
        let mtls = check_mesh_spec(&mesh.name, &mesh.spec)?;
        for attempt in 1.. {
            let plan = self.prepare_mtls(&mesh.name, mtls.as_ref()).await?;
            let time = now();
            let keyring = self.options.keyring();
            let (mesh, mtls) = (mesh.clone(), mtls.clone());
            let outcome = self
                .in_write_transaction::<_, MeshRefusal, _>(Op::Create(&key), move |tx| {
                    Box::pin(async move {
                        // Not FOR UPDATE: the name stays, so a concurrent insert of a Secret
                        // of this Mesh (its foreign key's FOR KEY SHARE) need not wait, nor be
                        // waited for while it holds other secrets' rows (a deadlock).
                        let lock = format!("SELECT version, spec, labels FROM meshes WHERE name = $1{}", DB::FOR_NO_KEY_UPDATE);
                        let current = query_as::<DB, (i64, Json<MeshSpec>, Json<BTreeMap<String, String>>)>(AssertSqlSafe(lock))
                            .bind(mesh.name.as_str().to_owned())
                            .fetch_optional(&mut *tx)
                            .await?;
                        let refuse = |e: StoreError| Err(TxError::Refused(MeshRefusal::Store(e)));
                        let stored = seal_spec(keyring.as_deref(), &mesh.name, &mesh.spec);
                        let (created, row) = match (current, expect) {
                            (None, Expect::Exists | Expect::Version(_)) => {
                                return refuse(StoreError::NotFound(ResourceKey::mesh(&mesh.name)));
                            }
                            (None, Expect::Any | Expect::Absent) => {
                                let row = Self::insert_mesh_query(&mesh.name, time, &mesh.labels, stored)
                                    .fetch_one(&mut *tx)
                                    .await?;
                                (true, row)
                            }
                            (Some(_), Expect::Absent) => {
                                return refuse(StoreError::AlreadyExists(ResourceKey::mesh(&mesh.name)));
                            }
                            (Some((version, _, _)), Expect::Version(expected)) if version != expected => {
                                return refuse(missed(ResourceKey::mesh(&mesh.name), Some(expected), Some(version)));
                            }
                            (Some((version, Json(current_spec), Json(labels))), _) => {
                                if let Err(e) = check_immutable_labels(&Labels::from_stored(labels), &mesh.labels) {
                                    return refuse(StoreError::ImmutableLabels(e));
                                }
                                // A stored spec that no longer parses (or opens) cannot block fixing it.
                                let current_mtls = open_spec_with(keyring.as_deref(), &mesh.name, current_spec)
                                    .ok()
                                    .and_then(|spec| Mtls::of(&spec, &mesh.name).ok().flatten());
                                if let Err(e) = Mtls::check_change(current_mtls.as_ref(), mtls.as_ref()) {
                                    return Err(TxError::Refused(MeshRefusal::Invalid(e)));
                                }
                                let row = Self::update_mesh_query(&mesh.name, stored, &mesh.labels, time, version)
                                    .fetch_one(&mut *tx)
                                    .await?;
                                (false, row)
                            }
                        };
                        Self::apply_mtls_plan(tx, keyring.as_deref(), &mesh.name, plan, time).await?;
                        Ok(Put { created, value: row.with_spec(mesh.spec) })
                    })
                })
                .await;
            match outcome {
                Err(MeshRefusal::CaVanished(_)) if attempt < MTLS_ATTEMPTS => continue,
                // Two blind creates raced: the loser finds the Mesh the next time round.
                Err(MeshRefusal::Store(StoreError::AlreadyExists(_)))
                    if expect == Expect::Any && attempt < MTLS_ATTEMPTS =>
                {
                    continue;
                }
                other => return other.map_err(StoreError::from),
            }
        }
        unreachable!("the loop returns")
    }
}
}

/// What a put's statement does, for naming a constraint it violates: a create or an upsert
/// inserts `resource`.
pub(super) fn put_op(expect: Expect, resource: &ResourceKey) -> Op<'_> {
    match expect {
        Expect::Any | Expect::Absent => Op::Create(resource),
        Expect::Exists | Expect::Version(_) => Op::Other,
    }
}
