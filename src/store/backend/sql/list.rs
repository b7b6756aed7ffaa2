//! List statements built at runtime from fixed fragments (every value a bound parameter),
//! and running them: the page with `total` on every row, the count alone for an empty page.

use super::SqlStore;
use super::dialect::Dialect;
use super::statements::query_as;
use super::tx::RunOnStore;
use crate::store::backend::db_error::Op;
use crate::store::contract::Result;
use crate::store::contract::page::{Cursor, MeshQuery, Page, PageStart, SecretQuery, SecretScope};
use sqlx::{AssertSqlSafe, Database, Encode, FromRow, Type};
use std::collections::BTreeMap;
use std::fmt::Write;

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
    pub(crate) fn param(&mut self, bind: Bind) -> String {
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

pub(crate) struct ListSpec<'a> {
    pub(crate) table: &'static str,
    pub(crate) columns: &'static str,
    /// Sort key, also the keyset for cursor pages.
    pub(crate) order_by: &'static str,
    pub(crate) scope_filter: Option<(&'static str, Option<String>)>,
    pub(crate) name_contains: Option<&'a str>,
    pub(crate) labels: &'a BTreeMap<String, String>,
    pub(crate) start: &'a PageStart,
    /// Keyset comparison for a cursor page, in terms of the cursor's (mesh, name).
    pub(crate) keyset: fn(&mut Statement, &Cursor) -> String,
    pub(crate) size: u32,
    /// The count of matches if the caller knows it: bound as `total` instead of counted.
    pub(crate) known_total: Option<u64>,
}

pub(crate) fn build<D: Dialect>(spec: ListSpec<'_>) -> ListStatements {
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
    let total = match spec.known_total {
        Some(known) => format!(
            "CAST({} AS BIGINT)",
            page.param(Bind::Int(i64::try_from(known).unwrap_or(i64::MAX)))
        ),
        None => format!("(SELECT count(*) FROM {} WHERE {filter})", spec.table),
    };
    let mut text = format!(
        "SELECT {}, {total} AS total FROM {} WHERE {filter}",
        spec.columns, spec.table
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
        known_total: query.known_total,
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
        known_total: None,
    })
}

/// Binds list parameters in order.
fn bind_all<'q, DB, O>(
    mut query: sqlx::query::QueryAs<'q, DB, O, DB::Arguments>,
    binds: Vec<Bind>,
) -> sqlx::query::QueryAs<'q, DB, O, DB::Arguments>
where
    DB: Database,
    String: Encode<'q, DB> + Type<DB>,
    i64: Encode<'q, DB> + Type<DB>,
{
    for bind in binds {
        query = match bind {
            Bind::Text(text) => query.bind(text),
            Bind::Int(int) => query.bind(int),
        };
    }
    query
}

impl_for_sql_databases! {
impl [SqlStore<DB>] {
    /// Runs a list: the page statement, then the count statement only if the page is
    /// empty (an empty page carries no `total` column).
    pub(super) async fn run_list<Row, Item>(
        &self,
        statements: ListStatements,
        first_page: bool,
        split: impl Fn(Row) -> Result<(Item, i64)>,
        cursor_of: impl Fn(&Item) -> (Option<String>, String),
        size: u32,
        offset: u64,
    ) -> Result<Page<Item>>
    where
        for<'r> Row: FromRow<'r, DB::Row> + Send + Unpin,
    {
        let ListStatements { page, count } = statements;
        let rows = bind_all(query_as::<DB, Row>(AssertSqlSafe(page.text)), page.binds)
            .fetch_all_via(self, Op::Other)
            .await?;
        let mut total = 0;
        let mut items = Vec::with_capacity(rows.len());
        for row in rows {
            let (item, row_total) = split(row)?;
            total = row_total;
            items.push(item);
        }
        if items.is_empty() && !first_page {
            let Statement { text, binds } = count;
            let (count,) = bind_all(query_as::<DB, (i64,)>(AssertSqlSafe(text)), binds)
                .fetch_one_via(self, Op::Other)
                .await?;
            total = count;
        }
        let size = size as usize;
        let next = if items.len() > size {
            items.truncate(size);
            let (mesh, name) = cursor_of(items.last().expect("page is not empty"));
            Some(Cursor { offset: offset + size as u64, mesh, name })
        } else {
            None
        };
        Ok(Page { items, total: u64::try_from(total).unwrap_or(0), next })
    }
}
}
