//! Schema migrations: the SQL in `migrations/postgres/` and `migrations/sqlite/`, embedded
//! in the binary with `sqlx::migrate!`, and the gate a store passes before it serves.
//!
//! sqlx records applied migrations in `_sqlx_migrations`. A Postgres store refuses to open
//! when that table is behind the binary (run `kuma-secrets migrate up`), when a migration
//! failed half-way (dirty), when an applied migration differs from the embedded one, or
//! when the database is ahead of the binary (unless told to tolerate it, for rolling
//! upgrades where a newer replica migrated first). The embedded SQLite store migrates
//! itself on open, since nobody else shares its file.

use super::db_error::{Op, map_db_error};
use super::sql::{SqlStore, query_as};
use crate::store::contract::{DatabaseError, SchemaError};
use crate::store::contract::{Result, StoreError};
use sqlx::migrate::{Migrate, Migrator};
use sqlx::{Connection, Database, Executor, FromRow};

/// Migrations for Postgres, embedded at build time.
#[cfg(feature = "postgres")]
pub(crate) static POSTGRES_MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres");
/// Migrations for SQLite, embedded at build time.
#[cfg(feature = "sqlite")]
pub(crate) static SQLITE_MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");

/// A migration as recorded in `_sqlx_migrations`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AppliedRow {
    pub version: i64,
    pub description: String,
    pub installed_on: String,
    pub success: bool,
    pub checksum: Vec<u8>,
}

/// Where one migration stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrationState {
    /// Applied successfully, at this time (as the database printed it).
    Applied {
        /// When it was applied.
        installed_on: String,
    },
    /// Embedded in the binary, not applied yet.
    Pending,
    /// Applied but failed part-way.
    Failed,
    /// Applied by a newer binary: this one does not know it.
    Unknown,
}

/// One row of `kuma-secrets migrate status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationStatus {
    /// Migration version (timestamp).
    pub version: i64,
    /// What it does.
    pub description: String,
    /// Its state.
    pub state: MigrationState,
}

/// What `kuma-secrets migrate up` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// Migrations applied by this run, oldest first (empty if already up to date).
    pub applied: Vec<MigrationStatus>,
    /// The schema version afterwards.
    pub version: i64,
}

pub(crate) fn latest(migrator: &Migrator) -> i64 {
    migrator.iter().map(|m| m.version).max().unwrap_or(0)
}

/// Every embedded migration plus every applied one the binary does not know, by version.
pub(crate) fn status(migrator: &Migrator, applied: &[AppliedRow]) -> Vec<MigrationStatus> {
    let mut rows: Vec<MigrationStatus> = migrator
        .iter()
        .map(|m| {
            let state = match applied.iter().find(|a| a.version == m.version) {
                Some(a) if !a.success => MigrationState::Failed,
                Some(a) => MigrationState::Applied {
                    installed_on: a.installed_on.clone(),
                },
                None => MigrationState::Pending,
            };
            MigrationStatus {
                version: m.version,
                description: m.description.to_string(),
                state,
            }
        })
        .collect();
    for a in applied {
        if !migrator.version_exists(a.version) {
            rows.push(MigrationStatus {
                version: a.version,
                description: a.description.clone(),
                state: if a.success {
                    MigrationState::Unknown
                } else {
                    MigrationState::Failed
                },
            });
        }
    }
    rows.sort_by_key(|r| r.version);
    rows
}

/// The start-up gate: the schema must be exactly the binary's, or newer when tolerated.
pub(crate) fn check(
    migrator: &Migrator,
    applied: &[AppliedRow],
    tolerate_newer: bool,
) -> Result<(), SchemaError> {
    if let Some(dirty) = applied.iter().find(|a| !a.success) {
        return Err(SchemaError::Dirty {
            version: dirty.version,
        });
    }
    let binary = latest(migrator);
    let database = applied.iter().map(|a| a.version).max().unwrap_or(0);
    let unknown = applied.iter().any(|a| !migrator.version_exists(a.version));
    if unknown && database > binary && !tolerate_newer {
        return Err(SchemaError::Newer { database, binary });
    }
    for m in migrator.iter() {
        match applied.iter().find(|a| a.version == m.version) {
            None => return Err(SchemaError::Behind { database, binary }),
            Some(a) if *a.checksum != *m.checksum => {
                return Err(SchemaError::Modified { version: m.version });
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// A copy of `migrator` that tolerates applied migrations it does not know.
pub(crate) fn tolerant(migrator: &Migrator) -> Migrator {
    let mut copy = Migrator::with_migrations(migrator.iter().cloned().collect());
    copy.set_ignore_missing(true);
    copy
}

pub(crate) fn map_migrate_error(err: sqlx::migrate::MigrateError) -> StoreError {
    use sqlx::migrate::MigrateError;
    match err {
        MigrateError::Dirty(version) => SchemaError::Dirty { version }.into(),
        MigrateError::VersionMismatch(version) => SchemaError::Modified { version }.into(),
        MigrateError::Execute(e) if is_connection(&e) => {
            StoreError::Unavailable(DatabaseError::new(e))
        }
        other => SchemaError::Migrate(DatabaseError::new(other)).into(),
    }
}

fn is_connection(err: &sqlx::Error) -> bool {
    matches!(
        err,
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed
    )
}

/// Runs `up` after checking the gate (a newer database is refused unless tolerated) and
/// reports what it applied.
pub(crate) async fn up<F, Fut>(
    migrator: &Migrator,
    applied_before: Vec<AppliedRow>,
    tolerate_newer: bool,
    run: F,
) -> Result<MigrationReport>
where
    F: FnOnce(Migrator) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<AppliedRow>>>,
{
    match check(migrator, &applied_before, tolerate_newer) {
        Ok(()) | Err(SchemaError::Behind { .. }) => {}
        Err(other) => return Err(other.into()),
    }
    let pending: Vec<i64> = status(migrator, &applied_before)
        .into_iter()
        .filter(|s| s.state == MigrationState::Pending)
        .map(|s| s.version)
        .collect();
    let applied_after = run(tolerant(migrator)).await?;
    let after = status(migrator, &applied_after);
    let version = applied_after.iter().map(|a| a.version).max().unwrap_or(0);
    Ok(MigrationReport {
        applied: after
            .into_iter()
            .filter(|s| pending.contains(&s.version))
            .collect(),
        version,
    })
}

/// What a backend tells the shared migration steps: its migrations, how to ask whether
/// `_sqlx_migrations` exists yet, and how to open the one connection migrations run on.
pub trait MigrationTarget: Database + sqlx::database::HasStatementCache {
    /// The embedded migrations of this backend.
    const MIGRATOR: &'static Migrator;
    /// One row, one boolean column: does `_sqlx_migrations` exist.
    const MIGRATIONS_TABLE_EXISTS: &'static str;
    /// Opens the connection `migrate up` and `migrate status` run on: one database session
    /// throughout (migrations hold a session lock).
    fn connect_for_migrations(
        url: &str,
    ) -> impl std::future::Future<Output = Result<Self::Connection>> + Send;
}

/// The SQL the applied-migrations list is read with (both backends).
const APPLIED: &str = "SELECT version, description, CAST(installed_on AS TEXT) AS installed_on, \
     success, checksum FROM _sqlx_migrations ORDER BY version";

/// Rows of `_sqlx_migrations`, none if the table does not exist yet.
pub(crate) async fn applied<DB>(conn: &mut DB::Connection) -> Result<Vec<AppliedRow>>
where
    DB: MigrationTarget,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'r> (bool,): FromRow<'r, DB::Row>,
    for<'r> AppliedRow: FromRow<'r, DB::Row>,
    <DB as Database>::Arguments: sqlx::IntoArguments<DB>,
{
    let (exists,): (bool,) = query_as::<DB, (bool,)>(DB::MIGRATIONS_TABLE_EXISTS)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| map_db_error(e, Op::Other))?;
    if !exists {
        return Ok(Vec::new());
    }
    query_as::<DB, AppliedRow>(APPLIED)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| map_db_error(e, Op::Other))
}

impl<DB> SqlStore<DB>
where
    DB: MigrationTarget,
    DB::Connection: Migrate,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'r> (bool,): FromRow<'r, DB::Row>,
    for<'r> AppliedRow: FromRow<'r, DB::Row>,
    <DB as Database>::Arguments: sqlx::IntoArguments<DB>,
{
    /// Applies pending migrations to the database at `url`: the gate, the pending
    /// migrations, then what was applied. The same for both backends.
    ///
    /// # Errors
    /// A newer schema (unless `tolerate_newer`), a dirty or modified one, a failed
    /// migration, or a database that cannot be reached.
    pub async fn migrate_up(url: &str, tolerate_newer: bool) -> Result<MigrationReport> {
        let mut conn = DB::connect_for_migrations(url).await?;
        // Held from the first read to the last (Postgres: a session advisory lock, the one
        // sqlx's migrator takes too, which it may take again), so replicas starting at once
        // take turns, and each reports only what it applied itself.
        if let Err(e) = conn.lock().await {
            let _ = conn.close().await;
            return Err(map_migrate_error(e));
        }
        let report = Self::migrate_locked(&mut conn, tolerate_newer).await;
        let _ = conn.unlock().await;
        let _ = conn.close().await;
        report
    }

    /// [`SqlStore::migrate_up`] on `conn`, which holds the migration lock.
    async fn migrate_locked(
        conn: &mut DB::Connection,
        tolerate_newer: bool,
    ) -> Result<MigrationReport> {
        let before = applied::<DB>(&mut *conn).await?;
        let conn_ref = conn;
        up(DB::MIGRATOR, before, tolerate_newer, |m| async move {
            // `run_direct`, not `run`: `run` takes an `Acquire` implementation, and the
            // higher-ranked bound it needs makes the future fail to be `Send` for an embedder
            // who spawns it ("implementation of `Acquire` is not general enough").
            m.run_direct(None, &mut *conn_ref, false)
                .await
                .map_err(map_migrate_error)?;
            applied::<DB>(conn_ref).await
        })
        .await
    }

    /// Lists embedded and applied migrations of the database at `url`.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] if the database cannot be reached.
    pub async fn migration_status(url: &str) -> Result<Vec<MigrationStatus>> {
        let mut conn = DB::connect_for_migrations(url).await?;
        let applied = applied::<DB>(&mut conn).await;
        let _ = conn.close().await;
        Ok(status(DB::MIGRATOR, &applied?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(m: &sqlx::migrate::Migration) -> AppliedRow {
        AppliedRow {
            version: m.version,
            description: m.description.to_string(),
            installed_on: "now".into(),
            success: true,
            checksum: m.checksum.to_vec(),
        }
    }

    #[test]
    fn gate_distinguishes_behind_current_newer_dirty_and_modified() {
        let m = &POSTGRES_MIGRATOR;
        let current: Vec<_> = m.iter().map(row).collect();
        assert!(check(m, &current, false).is_ok());
        assert!(matches!(
            check(m, &[], false),
            Err(SchemaError::Behind { database: 0, .. })
        ));

        let mut newer = current.clone();
        newer.push(AppliedRow {
            version: 99_999_999_999_999,
            ..current[0].clone()
        });
        assert!(matches!(
            check(m, &newer, false),
            Err(SchemaError::Newer { .. })
        ));
        assert!(check(m, &newer, true).is_ok());

        let mut dirty = current.clone();
        dirty[0].success = false;
        assert!(matches!(
            check(m, &dirty, true),
            Err(SchemaError::Dirty { .. })
        ));

        let mut modified = current.clone();
        modified[0].checksum = vec![0];
        assert!(matches!(
            check(m, &modified, false),
            Err(SchemaError::Modified { .. })
        ));
    }
}
