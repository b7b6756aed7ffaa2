//! The SQL both backends run, and the rows it returns.
//!
//! Statements use numbered `$n` parameters, which Postgres and SQLite (via sqlx) both
//! accept. Where a key may be a Secret or a GlobalSecret, the mesh comparison comes last so
//! the global variant simply has one parameter fewer (`mesh IS NULL`); `mesh = $n` and
//! `mesh IS NULL` each match an index (`secrets_mesh_name_key`, `secrets_global_name_key`),
//! which `mesh IS NOT DISTINCT FROM $n` would not.

use super::StoreError;
use super::page::{Cursor, MeshQuery, PageStart, SecretQuery, SecretScope};
use super::sql_store::Dialect;
use crate::domain::{
    Labels, Mesh, MeshName, MeshSpec, Meta, ResourceName, Secret, SecretData, SecretKey,
};
use crate::sealing::{Binding, Keyring, OpenError, WriteId};
use chrono::{DateTime, Utc};
use sqlx::types::Json;
use std::collections::BTreeMap;
use std::fmt::Write;

macro_rules! secret_columns {
    () => {
        "mesh, name, version, creation_time, modification_time, labels, data, key_id, write_id"
    };
}
macro_rules! mesh_columns {
    () => {
        "name, version, creation_time, modification_time, labels, spec"
    };
}

/// A statement in two forms: for a Secret key (mesh bound last) and a GlobalSecret key.
pub(crate) struct Keyed {
    pub mesh: &'static str,
    pub global: &'static str,
}

impl Keyed {
    pub fn for_key(&self, key: &SecretKey) -> &'static str {
        match key {
            SecretKey::Mesh { .. } => self.mesh,
            SecretKey::Global { .. } => self.global,
        }
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
/// plain), `$6` key id and `$7` write id (both NULL for plain).
pub(crate) const INSERT_SECRET: &str = concat!(
    "INSERT INTO secrets (name, mesh, version, creation_time, modification_time, labels, data, key_id, write_id) ",
    "VALUES ($1, $2, 1, $3, $3, $4, $5, $6, $7) RETURNING ",
    secret_columns!()
);

/// `$1` data, `$2` key id, `$3` write id, `$4` labels, `$5` time, `$6` expected version,
/// `$7` name [, `$8` mesh].
pub(crate) const UPDATE_SECRET: Keyed = Keyed {
    mesh: concat!(
        "UPDATE secrets SET data = $1, key_id = $2, write_id = $3, labels = $4, ",
        "modification_time = $5, version = version + 1 ",
        "WHERE version = $6 AND name = $7 AND mesh = $8 RETURNING ",
        secret_columns!()
    ),
    global: concat!(
        "UPDATE secrets SET data = $1, key_id = $2, write_id = $3, labels = $4, ",
        "modification_time = $5, version = version + 1 ",
        "WHERE version = $6 AND name = $7 AND mesh IS NULL RETURNING ",
        secret_columns!()
    ),
};

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
/// `$1` name, `$2` time, `$3` labels, `$4` spec.
pub(crate) const INSERT_MESH: &str = concat!(
    "INSERT INTO meshes (name, version, creation_time, modification_time, labels, spec) ",
    "VALUES ($1, 1, $2, $2, $3, $4) RETURNING ",
    mesh_columns!()
);
/// `$1` spec, `$2` labels, `$3` time, `$4` expected version, `$5` name.
pub(crate) const UPDATE_MESH: &str = concat!(
    "UPDATE meshes SET spec = $1, labels = $2, modification_time = $3, version = version + 1 ",
    "WHERE version = $4 AND name = $5 RETURNING ",
    mesh_columns!()
);
/// `$1` expected version or NULL, `$2` name. Secrets go with it (`ON DELETE CASCADE`).
pub(crate) const DELETE_MESH: &str =
    "DELETE FROM meshes WHERE version = coalesce($1, version) AND name = $2 RETURNING version";

/// A `secrets` row (an implementation detail of [`super::SqlStore`]).
#[derive(sqlx::FromRow)]
pub struct SecretRow {
    mesh: Option<String>,
    name: String,
    version: i64,
    creation_time: DateTime<Utc>,
    modification_time: DateTime<Utc>,
    labels: Json<BTreeMap<String, String>>,
    data: Vec<u8>,
    key_id: Option<String>,
    write_id: Option<Vec<u8>>,
}

impl SecretRow {
    /// The stored secret, its data opened with `keyring` if the row is sealed.
    ///
    /// # Errors
    /// [`StoreError::Sealed`] naming the secret when the row does not open (a key id not in
    /// the keyring, or a value that fails authentication under its key and write id), is
    /// sealed and the store has no keyring, or is plaintext while the store has a keyring
    /// (unless `accept_plaintext`, for the upgrade window before `rotate-keys`).
    pub fn open(
        mut self,
        keyring: Option<&Keyring>,
        accept_plaintext: bool,
    ) -> Result<Secret, StoreError> {
        let key = self.key();
        let data = open_value(
            &key,
            &self.data,
            self.key_id.as_deref(),
            self.write_id.as_deref(),
            keyring,
            accept_plaintext,
        )
        .map_err(|reason| StoreError::Sealed {
            key: key.resource_key(),
            reason,
        })?;
        zeroize::Zeroize::zeroize(&mut self.data);
        Ok(self.with_data(SecretData::from_stored(data)))
    }

    /// The row's version.
    pub fn version(&self) -> i64 {
        self.version
    }

    /// The secret's key.
    pub fn key(&self) -> SecretKey {
        stored_key(self.mesh.as_deref(), &self.name)
    }

    /// The row as a Secret with `data`: after a write, which knows the plaintext it sealed.
    pub fn with_data(self, data: SecretData) -> Secret {
        let key = self.key();
        Secret {
            key,
            data,
            labels: Labels::from_stored(self.labels.0),
            meta: Meta {
                version: self.version,
                creation_time: self.creation_time,
                modification_time: self.modification_time,
            },
        }
    }
}

/// Opens the stored `data` of secret `key` as its columns say: plaintext (`key_id` NULL),
/// format 1 (`write_id` NULL) or format 2.
///
/// # Errors
/// Why the value does not open; plaintext with a keyring unless `accept_plaintext`.
pub(crate) fn open_value(
    key: &SecretKey,
    data: &[u8],
    key_id: Option<&str>,
    write_id: Option<&[u8]>,
    keyring: Option<&Keyring>,
    accept_plaintext: bool,
) -> Result<Vec<u8>, OpenError> {
    match (key_id, keyring) {
        (None, Some(_)) if !accept_plaintext => Err(OpenError::Plaintext),
        (None, _) => Ok(data.to_vec()),
        (Some(key_id), None) => Err(OpenError::MissingKey {
            key_id: key_id.to_owned(),
        }),
        (Some(key_id), Some(keyring)) => match write_id {
            None => keyring.open(&Binding::LegacySecret(key), key_id, data),
            Some(bytes) => {
                let write = WriteId::from_stored(bytes).ok_or(OpenError::Corrupt {
                    key_id: key_id.to_owned(),
                })?;
                keyring.open(&Binding::Secret { key, write }, key_id, data)
            }
        },
    }
}

/// The key of a stored row (its names were validated when written).
fn stored_key(mesh: Option<&str>, name: &str) -> SecretKey {
    let name = ResourceName::from_stored(name.to_owned());
    match mesh {
        Some(mesh) => SecretKey::secret(MeshName::from_stored(mesh.to_owned()), name),
        None => SecretKey::global(name),
    }
}

/// A `secrets` row as key rotation reads it.
#[derive(sqlx::FromRow)]
pub struct SealedRow {
    pub id: i64,
    pub mesh: Option<String>,
    pub name: String,
    pub version: i64,
    pub data: Vec<u8>,
    pub key_id: Option<String>,
    pub write_id: Option<Vec<u8>>,
}

impl SealedRow {
    /// The secret's key.
    pub fn key(&self) -> SecretKey {
        stored_key(self.mesh.as_deref(), &self.name)
    }
}

/// `$1` after id, `$2` active key id, `$3` limit: the next rows not sealed with the active
/// key in format 2 (plaintext and format 1 rows included), in id order.
pub(crate) const ROWS_TO_RESEAL: &str = "SELECT id, mesh, name, version, data, key_id, write_id \
     FROM secrets WHERE id > $1 AND (key_id IS NULL OR key_id <> $2 OR write_id IS NULL) \
     ORDER BY id LIMIT $3";
/// `$1` after id, `$2` limit: every row, in id order (to find those that do not open).
pub(crate) const ROWS_AFTER: &str = "SELECT id, mesh, name, version, data, key_id, write_id \
     FROM secrets WHERE id > $1 ORDER BY id LIMIT $2";
/// `$1` data, `$2` key id, `$3` write id, `$4` id, `$5` version read: re-seals a row unless
/// it changed since (then a concurrent write has sealed it already). Content, version and
/// times stay.
pub(crate) const RESEAL_ROW: &str = "UPDATE secrets SET data = $1, key_id = $2, write_id = $3 \
     WHERE id = $4 AND version = $5 RETURNING id";
/// `$1` spec, `$2` name, `$3` version read: re-seals a Mesh's inline CA keys unless it
/// changed since. Version and times stay.
pub(crate) const RESEAL_MESH: &str =
    "UPDATE meshes SET spec = $1 WHERE name = $2 AND version = $3 RETURNING version";
/// Rows per key id (`''` for plaintext), and how many of them are still in seal format 1.
pub(crate) const ROWS_PER_KEY: &str = "SELECT coalesce(key_id, '') AS key_id, count(*) AS n, \
     CAST(sum(CASE WHEN key_id IS NOT NULL AND write_id IS NULL THEN 1 ELSE 0 END) AS BIGINT) \
     AS format_1 FROM secrets GROUP BY key_id ORDER BY 1";

/// A `secrets` row of a list page, with the count of all matches.
#[derive(sqlx::FromRow)]
pub struct ListedSecretRow {
    #[sqlx(flatten)]
    pub row: SecretRow,
    pub total: i64,
}

/// A `meshes` row.
#[derive(sqlx::FromRow)]
pub struct MeshRow {
    name: String,
    version: i64,
    creation_time: DateTime<Utc>,
    modification_time: DateTime<Utc>,
    labels: Json<BTreeMap<String, String>>,
    spec: Json<MeshSpec>,
}

impl MeshRow {
    /// The row's version.
    pub fn version(&self) -> i64 {
        self.version
    }

    /// The stored Mesh, the inline CA keys of its spec opened with `keyring`.
    ///
    /// # Errors
    /// [`StoreError::Sealed`] naming the Mesh when an inline key does not open (or is
    /// stored unsealed while the store has a keyring, unless `accept_plaintext`).
    pub fn open(
        self,
        keyring: Option<&Keyring>,
        accept_plaintext: bool,
    ) -> Result<Mesh, StoreError> {
        let mut spec = self.spec.0.clone();
        crate::sealing::open_mesh_spec(keyring, accept_plaintext, &self.name, &mut spec).map_err(
            |reason| StoreError::Sealed {
                key: crate::domain::ResourceKey::mesh(&MeshName::from_stored(self.name.clone())),
                reason,
            },
        )?;
        Ok(self.with_spec(spec))
    }

    /// The row as a Mesh with `spec`: after a write, which knows the spec it sealed.
    pub fn with_spec(self, spec: MeshSpec) -> Mesh {
        Mesh {
            name: MeshName::from_stored(self.name),
            spec,
            labels: Labels::from_stored(self.labels.0),
            meta: Meta {
                version: self.version,
                creation_time: self.creation_time,
                modification_time: self.modification_time,
            },
        }
    }
}

/// A `meshes` row of a list page, with the count of all matches.
#[derive(sqlx::FromRow)]
pub struct ListedMeshRow {
    #[sqlx(flatten)]
    pub row: MeshRow,
    pub total: i64,
}

/// A value bound to a list statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Bind {
    Text(String),
    Int(i64),
}

/// A list statement built at runtime from fixed fragments; every value is a bound
/// parameter, never spliced into the text.
#[derive(Debug, Default)]
pub(crate) struct Statement {
    pub text: String,
    pub binds: Vec<Bind>,
}

impl Statement {
    fn param(&mut self, bind: Bind) -> String {
        self.binds.push(bind);
        format!("${}", self.binds.len())
    }
}

/// The page statement (items plus `total` on every row) and the count-only statement used
/// when the page is empty.
pub(crate) struct ListStatements {
    pub page: Statement,
    pub count: Statement,
}

struct ListSpec<'a> {
    table: &'static str,
    columns: &'static str,
    /// Sort key, also the keyset for cursor pages.
    order_by: &'static str,
    scope_filter: Option<(&'static str, Option<String>)>,
    name_contains: Option<&'a str>,
    labels: &'a BTreeMap<String, String>,
    start: &'a PageStart,
    /// Keyset comparison for a cursor page, in terms of the cursor's (mesh, name).
    keyset: fn(&mut Statement, &Cursor) -> String,
    size: u32,
}

fn build<D: Dialect>(spec: ListSpec<'_>) -> ListStatements {
    // Filters first: the same `$n` serve the count subquery and the page query.
    let mut page = Statement::default();
    let mut filters = Vec::new();
    if let Some((clause, value)) = spec.scope_filter {
        match value {
            Some(value) => {
                let p = page.param(Bind::Text(value));
                filters.push(clause.replace("{}", &p));
            }
            None => filters.push(clause.to_owned()),
        }
    }
    if let Some(part) = spec.name_contains {
        let p = page.param(Bind::Text(part.to_owned()));
        filters.push(D::contains("name", &p));
    }
    for (key, value) in spec.labels {
        let k = page.param(Bind::Text(key.clone()));
        let v = page.param(Bind::Text(value.clone()));
        filters.push(D::label_equals("labels", &k, &v));
    }
    let filter = if filters.is_empty() {
        "TRUE".to_owned()
    } else {
        filters.join(" AND ")
    };
    let count = Statement {
        text: format!("SELECT count(*) FROM {} WHERE {filter}", spec.table),
        binds: page.binds.clone(),
    };

    let (keyset, offset) = match spec.start {
        PageStart::Offset(offset) => (None, *offset),
        PageStart::After(cursor) => (Some((spec.keyset)(&mut page, cursor)), 0),
    };
    // One row more than the page tells whether a next page exists.
    let limit = page.param(Bind::Int(i64::from(spec.size) + 1));
    let offset = page.param(Bind::Int(i64::try_from(offset).unwrap_or(i64::MAX)));
    let mut text = format!(
        "SELECT {}, (SELECT count(*) FROM {} WHERE {filter}) AS total FROM {} WHERE {filter}",
        spec.columns, spec.table, spec.table
    );
    if let Some(keyset) = keyset {
        let _ = write!(text, " AND {keyset}");
    }
    let _ = write!(
        text,
        " ORDER BY {} LIMIT {limit} OFFSET {offset}",
        spec.order_by
    );
    page.text = text;
    ListStatements { page, count }
}

/// Statements for a secret list.
pub(crate) fn list_secrets<D: Dialect>(query: &SecretQuery) -> ListStatements {
    let (scope_filter, order_by, keyset): (_, _, fn(&mut Statement, &_) -> String) =
        match &query.scope {
            SecretScope::Mesh(mesh) => (
                ("mesh = {}", Some(mesh.as_str().to_owned())),
                "name",
                |s: &mut Statement, c: &Cursor| {
                    format!("name > {}", s.param(Bind::Text(c.name.clone())))
                },
            ),
            SecretScope::Global => (
                ("mesh IS NULL", None),
                "name",
                |s: &mut Statement, c: &Cursor| {
                    format!("name > {}", s.param(Bind::Text(c.name.clone())))
                },
            ),
            SecretScope::AllMeshes => (
                ("mesh IS NOT NULL", None),
                "mesh, name",
                |s: &mut Statement, c: &Cursor| {
                    let mesh = s.param(Bind::Text(c.mesh.clone().unwrap_or_default()));
                    let name = s.param(Bind::Text(c.name.clone()));
                    format!("(mesh, name) > ({mesh}, {name})")
                },
            ),
        };
    build::<D>(ListSpec {
        table: "secrets",
        columns: secret_columns!(),
        order_by,
        scope_filter: Some(scope_filter),
        name_contains: query.name_contains.as_deref(),
        labels: &query.labels,
        start: query.page.start(),
        keyset,
        size: query.page.size(),
    })
}

/// Statements for a Mesh list.
pub(crate) fn list_meshes<D: Dialect>(query: &MeshQuery) -> ListStatements {
    build::<D>(ListSpec {
        table: "meshes",
        columns: mesh_columns!(),
        order_by: "name",
        scope_filter: None,
        name_contains: query.name_contains.as_deref(),
        labels: &query.labels,
        start: query.page.start(),
        keyset: |s, c| format!("name > {}", s.param(Bind::Text(c.name.clone()))),
        size: query.page.size(),
    })
}
