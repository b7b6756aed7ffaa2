//! The SQL both backends run, as shared text.
//!
//! Statements use numbered `$n` parameters, which Postgres and SQLite (via sqlx) both
//! accept. Where a key may be a Secret or a GlobalSecret, the mesh comparison comes last so
//! the global variant simply has one parameter fewer (`mesh IS NULL`); `mesh = $n` and
//! `mesh IS NULL` each match an index (`secrets_mesh_name_key`, `secrets_global_name_key`),
//! which `mesh IS NOT DISTINCT FROM $n` would not. [`Keyed::bind_key`] binds a key's name
//! and mesh in that order, in one place.
//!
//! Every statement is built with [`query_as`] or [`query`] (not sqlx's own), which prepare
//! it the way the running store operation asks ([`Preparing`]): under a name, kept on the
//! connection and reused (the default), or without a name, so nothing outlives the
//! transaction on the server (behind a pooler in transaction mode: see
//! [`crate::store::PoolMode`]).

use super::dialect::Dialect;
use crate::domain::SecretKey;
use sqlx::database::HasStatementCache;
use sqlx::query::{Query, QueryAs};
use sqlx::{Database, Encode, FromRow, SqlSafeStr, Type};
use std::future::Future;

/// How a store operation's statements are prepared on the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Preparing {
    /// Under a name, once per connection, then reused: the fastest, and right whenever a
    /// connection is one server session.
    Named,
    /// Without a name, every time: right when a pooler may run the next transaction on
    /// another server session, which would not have the named statement (or would have
    /// another client's under the same name).
    Unnamed,
}

tokio::task_local! {
    /// How the statements of the store operation running on this task are prepared; set
    /// by [`Preparing::around`] where operations meet the pool (`tx.rs`).
    static PREPARING: Preparing;
}

impl Preparing {
    /// Runs `operation` with its statements prepared this way.
    pub(crate) async fn around<F: Future>(self, operation: F) -> F::Output {
        PREPARING.scope(self, operation).await
    }

    /// How statements built now are prepared: as the surrounding operation asks, named
    /// outside any.
    fn current() -> Self {
        PREPARING
            .try_with(|preparing| *preparing)
            .unwrap_or(Preparing::Named)
    }
}

/// `sqlx::query_as`, prepared as the running operation asks ([`Preparing`]).
pub(crate) fn query_as<'q, DB, O>(sql: impl SqlSafeStr) -> QueryAs<'q, DB, O, DB::Arguments>
where
    DB: Database + HasStatementCache,
    O: for<'r> FromRow<'r, DB::Row>,
{
    sqlx::query_as(sql).persistent(Preparing::current() == Preparing::Named)
}

/// `sqlx::query`, prepared as the running operation asks ([`Preparing`]).
pub(crate) fn query<'q, DB>(sql: impl SqlSafeStr) -> Query<'q, DB, DB::Arguments>
where
    DB: Database + HasStatementCache,
{
    sqlx::query(sql).persistent(Preparing::current() == Preparing::Named)
}

/// A statement in two forms: for a Secret key (mesh bound last) and a GlobalSecret key.
pub(crate) struct Keyed {
    pub mesh: &'static str,
    pub global: &'static str,
}

impl Keyed {
    /// The form for `key`.
    pub fn for_key(&self, key: &SecretKey) -> &'static str {
        match key {
            SecretKey::Mesh { .. } => self.mesh,
            SecretKey::Global { .. } => self.global,
        }
    }
}

/// Binds a secret key's name, then its mesh for a Secret (a GlobalSecret's statement has
/// `mesh IS NULL` and one parameter fewer): the last parameters of every keyed statement.
pub(crate) fn bind_key<'q, DB, O>(
    query: QueryAs<'q, DB, O, DB::Arguments>,
    key: &SecretKey,
) -> QueryAs<'q, DB, O, DB::Arguments>
where
    DB: Database,
    String: Encode<'q, DB> + Type<DB>,
{
    let query = query.bind(key.name().as_str().to_owned());
    match key.mesh() {
        Some(mesh) => query.bind(mesh.as_str().to_owned()),
        None => query,
    }
}

/// `$1` name [, `$2` mesh].
pub(crate) const GET_SECRET: Keyed = Keyed {
    mesh: concat!(
        "SELECT ",
        secret_columns!(),
        " FROM secrets WHERE name = $1 AND mesh = $2"
    ),
    global: concat!(
        "SELECT ",
        secret_columns!(),
        " FROM secrets WHERE name = $1 AND mesh IS NULL"
    ),
};

/// `$1` name [, `$2` mesh].
pub(crate) const GET_SECRET_VERSION: Keyed = Keyed {
    mesh: "SELECT version FROM secrets WHERE name = $1 AND mesh = $2",
    global: "SELECT version FROM secrets WHERE name = $1 AND mesh IS NULL",
};

/// `$1` name, `$2` mesh (NULL for global), `$3` time, `$4` labels, `$5` data (sealed or
/// plain), `$6` key id and `$7` write id (both NULL for plain), `$8` actor, `$9` request id.
pub(crate) const INSERT_SECRET: &str = concat!(
    "INSERT INTO secrets (name, mesh, version, creation_time, modification_time, labels, data, ",
    "key_id, write_id, actor, request_id) VALUES ($1, $2, 1, $3, $3, $4, $5, $6, $7, $8, $9) RETURNING ",
    secret_columns!()
);

/// [`INSERT_SECRET`] without its `RETURNING`, for the upsert.
const INSERT_SECRET_HEAD: &str = "INSERT INTO secrets (name, mesh, version, creation_time, \
     modification_time, labels, data, key_id, write_id, actor, request_id) \
     VALUES ($1, $2, 1, $3, $3, $4, $5, $6, $7, $8, $9)";

/// `$1` data, `$2` key id, `$3` write id, `$4` labels, `$5` time, `$6` expected version,
/// `$7` actor, `$8` request id, `$9` name [, `$10` mesh].
pub(crate) const UPDATE_SECRET: Keyed = Keyed {
    mesh: concat!(
        "UPDATE secrets SET data = $1, key_id = $2, write_id = $3, labels = $4, ",
        "modification_time = $5, version = version + 1, actor = $7, request_id = $8 ",
        "WHERE version = $6 AND name = $9 AND mesh = $10 RETURNING ",
        secret_columns!()
    ),
    global: concat!(
        "UPDATE secrets SET data = $1, key_id = $2, write_id = $3, labels = $4, ",
        "modification_time = $5, version = version + 1, actor = $7, request_id = $8 ",
        "WHERE version = $6 AND name = $9 AND mesh IS NULL RETURNING ",
        secret_columns!()
    ),
};

/// `$1` actor, `$2` request id, `$3` name [, `$4` mesh]: who is about to delete the secret,
/// for its delete event (the version does not change, so this is no event itself).
/// The writer's actor moves to `written_by`, for the deleted version's history row.
pub(crate) const STAMP_SECRET: Keyed = Keyed {
    mesh: "UPDATE secrets SET written_by = actor, actor = $1, request_id = $2 \
           WHERE name = $3 AND mesh = $4",
    global: "UPDATE secrets SET written_by = actor, actor = $1, request_id = $2 \
             WHERE name = $3 AND mesh IS NULL",
};

/// `$1` actor, `$2` request id, `$3` mesh: who is about to delete a Mesh, on it and on the
/// secrets its delete cascades to.
pub(crate) const STAMP_MESH_SECRETS: &str =
    "UPDATE secrets SET actor = $1, request_id = $2 WHERE mesh = $3";
/// As [`STAMP_MESH_SECRETS`], on the Mesh row.
pub(crate) const STAMP_MESH: &str = "UPDATE meshes SET actor = $1, request_id = $2 WHERE name = $3";

/// `$1` expected version or NULL for any, `$2` name [, `$3` mesh].
pub(crate) const DELETE_SECRET: Keyed = Keyed {
    mesh: "DELETE FROM secrets WHERE version = coalesce($1, version) AND name = $2 AND mesh = $3 \
           RETURNING version",
    global: "DELETE FROM secrets WHERE version = coalesce($1, version) AND name = $2 \
             AND mesh IS NULL RETURNING version",
};

/// `$1` name.
pub(crate) const GET_MESH: &str =
    concat!("SELECT ", mesh_columns!(), " FROM meshes WHERE name = $1");
/// `$1` name.
pub(crate) const GET_MESH_VERSION: &str = "SELECT version FROM meshes WHERE name = $1";
/// `$1` name, `$2` time, `$3` labels, `$4` spec, `$5` actor, `$6` request id.
pub(crate) const INSERT_MESH: &str = concat!(
    "INSERT INTO meshes (name, version, creation_time, modification_time, labels, spec, actor, ",
    "request_id) VALUES ($1, 1, $2, $2, $3, $4, $5, $6) RETURNING ",
    mesh_columns!()
);
/// `$1` spec, `$2` labels, `$3` time, `$4` expected version, `$5` name, `$6` actor,
/// `$7` request id.
pub(crate) const UPDATE_MESH: &str = concat!(
    "UPDATE meshes SET spec = $1, labels = $2, modification_time = $3, version = version + 1, ",
    "actor = $6, request_id = $7 WHERE version = $4 AND name = $5 RETURNING ",
    mesh_columns!()
);
/// `$1` expected version or NULL, `$2` name. Secrets go with it (`ON DELETE CASCADE`).
pub(crate) const DELETE_MESH: &str =
    "DELETE FROM meshes WHERE version = coalesce($1, version) AND name = $2 RETURNING version";

/// The rows that hold sealed secret values: the current versions (`secrets`) and the
/// versions kept in history (`secret_versions`). Key rotation walks both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealedRows {
    /// `secrets`.
    Current,
    /// `secret_versions`.
    History,
}

impl SealedRows {
    /// Both, in the order key rotation walks them.
    pub const ALL: [SealedRows; 2] = [SealedRows::Current, SealedRows::History];

    fn table(self) -> &'static str {
        match self {
            SealedRows::Current => "secrets",
            SealedRows::History => "secret_versions",
        }
    }

    /// `$1` after id, `$2` active key id, `$3` limit: sealed rows not sealed with the
    /// active key, or still in seal format 1, in id order. Never a plaintext row: rotation
    /// re-seals what a keyring sealed, and never makes trusted what was written in clear
    /// (see `seal-plaintext`).
    pub(crate) fn to_reseal(self) -> String {
        format!(
            "SELECT id, mesh, name, version, data, key_id, write_id FROM {} \
             WHERE id > $1 AND key_id IS NOT NULL AND (key_id <> $2 OR write_id IS NULL) \
             ORDER BY id LIMIT $3",
            self.table()
        )
    }

    /// `$1` after id, `$2` limit: plaintext rows, in id order, with their times.
    pub(crate) fn plaintext_after(self) -> String {
        format!(
            "SELECT id, mesh, name, version, creation_time, modification_time FROM {} \
             WHERE id > $1 AND key_id IS NULL ORDER BY id LIMIT $2",
            self.table()
        )
    }

    /// `$1` id, `$2` version listed: that plaintext row, if it is still as listed.
    pub(crate) fn plaintext_as_listed(self) -> String {
        format!(
            "SELECT id, mesh, name, version, data, key_id, write_id FROM {} \
             WHERE id = $1 AND version = $2 AND key_id IS NULL",
            self.table()
        )
    }

    /// `$1` after id, `$2` limit: every row, in id order (to find those that do not open).
    pub(crate) fn after(self) -> String {
        format!(
            "SELECT id, mesh, name, version, data, key_id, write_id FROM {} \
             WHERE id > $1 ORDER BY id LIMIT $2",
            self.table()
        )
    }

    /// `$1` data, `$2` key id, `$3` write id, `$4` id, `$5` version read: re-seals a row
    /// unless it changed since (then a concurrent write has sealed it already). Content,
    /// version and times stay.
    pub(crate) fn reseal(self) -> String {
        format!(
            "UPDATE {} SET data = $1, key_id = $2, write_id = $3 \
             WHERE id = $4 AND version = $5 RETURNING id",
            self.table()
        )
    }
}

/// When the store was first found fully sealed (see the `sealing_state` migration).
pub(crate) const FULLY_SEALED_AT: &str = "SELECT fully_sealed_at FROM sealing_state WHERE id = 1";
/// `$1` now: records that the store is fully sealed, unless it was already.
pub(crate) const MARK_FULLY_SEALED: &str =
    "UPDATE sealing_state SET fully_sealed_at = $1 WHERE id = 1 AND fully_sealed_at IS NULL";

/// `$1` spec, `$2` name, `$3` version read: re-seals a Mesh's inline CA keys unless it
/// changed since. Version and times stay.
pub(crate) const RESEAL_MESH: &str =
    "UPDATE meshes SET spec = $1 WHERE name = $2 AND version = $3 RETURNING version";
/// Rows per key id (`''` for plaintext), and how many of them are still in seal format 1:
/// current versions and those kept in history.
pub(crate) const ROWS_PER_KEY: &str = "SELECT coalesce(key_id, '') AS key_id, count(*) AS n, \
     CAST(sum(CASE WHEN key_id IS NOT NULL AND write_id IS NULL THEN 1 ELSE 0 END) AS BIGINT) \
     AS format_1 FROM (SELECT key_id, write_id FROM secrets \
     UNION ALL SELECT key_id, write_id FROM secret_versions) AS sealed \
     GROUP BY coalesce(key_id, '') ORDER BY 1";

/// Kuma's immutable labels: on replace, a value may not change or go (`validateImmutableLabels`).
const IMMUTABLE_LABELS: [&str; 3] = [
    crate::domain::ORIGIN_LABEL,
    crate::domain::ZONE_LABEL,
    crate::domain::DISPLAY_NAME_LABEL,
];

/// SQL that holds when no immutable label of the stored labels `column` changes or goes in
/// `new` (a function from each immutable label's index in [`immutable_label_values`] and
/// key to its new value expression).
pub(crate) fn immutable_labels_kept_sql<D: Dialect>(
    column: &str,
    new: impl Fn(usize, &'static str) -> String,
) -> String {
    immutable_labels_kept(|key| D::label_value(column, key), new)
}

/// SQL that holds when no immutable label of the stored `old` labels changes or goes in
/// `new` (each a function from a label key to that label's value expression).
fn immutable_labels_kept(
    old: impl Fn(&'static str) -> String,
    new: impl Fn(usize, &'static str) -> String,
) -> String {
    IMMUTABLE_LABELS
        .iter()
        .enumerate()
        .map(|(i, key)| {
            let old = old(key);
            format!("({old} IS NULL OR {old} = {})", new(i, key))
        })
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// The blind upsert of a secret, one statement: insert it at version 1, or replace it and
/// bump its version (unless an immutable label would change: then no row comes back).
/// Parameters as [`INSERT_SECRET`]. A returned version of 1 means the row was created.
pub(crate) fn upsert_secret<D: Dialect>(key: &SecretKey) -> String {
    let target = match key {
        SecretKey::Mesh { .. } => "(mesh, name)",
        // The partial unique index `secrets_global_name_key`.
        SecretKey::Global { .. } => "(name) WHERE mesh IS NULL",
    };
    let kept = immutable_labels_kept(
        |k| D::label_value("secrets.labels", k),
        |_, k| D::label_value("excluded.labels", k),
    );
    format!(
        "{INSERT_SECRET_HEAD} ON CONFLICT {target} DO UPDATE SET data = excluded.data, \
         key_id = excluded.key_id, write_id = excluded.write_id, labels = excluded.labels, \
         modification_time = excluded.modification_time, version = secrets.version + 1, \
         actor = excluded.actor, request_id = excluded.request_id \
         WHERE {kept} RETURNING {}",
        secret_columns!()
    )
}

/// A replace that requires the secret to exist (at version `$6`, or any when NULL), with
/// the immutable labels kept, one statement. `$1` data, `$2` key id, `$3` write id, `$4`
/// labels, `$5` time, `$6` expected version or NULL, `$7`..`$9` the new values of the
/// immutable labels (origin, zone, display name; NULL when absent), `$10` actor, `$11`
/// request id, `$12` name [, `$13` mesh].
pub(crate) fn replace_secret<D: Dialect>(key: &SecretKey) -> String {
    let kept = immutable_labels_kept(
        |k| D::label_value("labels", k),
        |i, _| format!("${}", 7 + i),
    );
    let mesh = match key {
        SecretKey::Mesh { .. } => "mesh = $13",
        SecretKey::Global { .. } => "mesh IS NULL",
    };
    format!(
        "UPDATE secrets SET data = $1, key_id = $2, write_id = $3, labels = $4, \
         modification_time = $5, version = version + 1, actor = $10, request_id = $11 \
         WHERE version = coalesce($6, version) AND {kept} AND name = $12 AND {mesh} RETURNING {}",
        secret_columns!()
    )
}

/// The values of Kuma's immutable labels in `labels`, in the order of [`replace_secret`]'s
/// parameters.
pub(crate) fn immutable_label_values(labels: &crate::domain::Labels) -> [Option<String>; 3] {
    IMMUTABLE_LABELS.map(|key| labels.get(key).map(str::to_owned))
}

/// `$1` name [, `$2` mesh]: a secret's version and labels (never its data).
pub(crate) const GET_SECRET_VERSION_LABELS: Keyed = Keyed {
    mesh: "SELECT version, labels FROM secrets WHERE name = $1 AND mesh = $2",
    global: "SELECT version, labels FROM secrets WHERE name = $1 AND mesh IS NULL",
};
