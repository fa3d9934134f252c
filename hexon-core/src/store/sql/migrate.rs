//! Schema migrations, embedded in the binary.
//!
//! Each engine has its own numbered SQL files under `hexon-core/migrations/`,
//! compiled in with `include_str!` and applied by sqlx's migrator, which
//! records every applied version with a checksum of its SQL. At open:
//!
//! - a database with a version this binary does not know (written by a newer
//!   Hexon) is refused: upgrade Hexon;
//! - a database where an applied migration's SQL differs from this binary's
//!   is refused: migrations are never edited once released, only added;
//! - pending migrations are applied in order, each in a transaction.
//!
//! Migrations only add (tables, columns, indexes, triggers). A test scans
//! every file and fails on destructive statements, so removing data needs a
//! deliberate change of that test.

use std::borrow::Cow;
use std::collections::HashSet;

use sqlx::migrate::{Migrate, MigrateError, Migration, MigrationType, Migrator};

use super::db::Engine;
use crate::store::StoreError;

/// What [`migrate`](super::SqliteStore::migrate) did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrationReport {
    /// The schema version before (0 for an empty database).
    pub from: i64,
    /// The schema version after.
    pub to: i64,
    /// The migrations applied now, in order: `(version, description)`.
    /// Empty when the database was already up to date.
    pub applied: Vec<(i64, String)>,
}

/// One embedded migration: version, description, SQL.
type Embedded = (i64, &'static str, &'static str);

#[cfg(feature = "sqlite")]
const SQLITE: &[Embedded] = &[
    (
        1,
        "durable objects",
        include_str!("../../../migrations/sqlite/0001_durable_objects.sql"),
    ),
    (
        2,
        "kv and append only audit",
        include_str!("../../../migrations/sqlite/0002_kv_and_append_only_audit.sql"),
    ),
    (
        3,
        "acme accounts",
        include_str!("../../../migrations/sqlite/0003_acme_accounts.sql"),
    ),
    (
        4,
        "routes",
        include_str!("../../../migrations/sqlite/0004_routes.sql"),
    ),
];

#[cfg(feature = "postgres")]
const POSTGRES: &[Embedded] = &[
    (
        1,
        "durable objects",
        include_str!("../../../migrations/postgres/0001_durable_objects.sql"),
    ),
    (
        2,
        "kv and append only audit",
        include_str!("../../../migrations/postgres/0002_kv_and_append_only_audit.sql"),
    ),
    (
        3,
        "acme accounts",
        include_str!("../../../migrations/postgres/0003_acme_accounts.sql"),
    ),
    (
        4,
        "routes",
        include_str!("../../../migrations/postgres/0004_routes.sql"),
    ),
];

fn embedded(engine: Engine) -> &'static [Embedded] {
    match engine {
        #[cfg(feature = "sqlite")]
        Engine::Sqlite => SQLITE,
        #[cfg(feature = "postgres")]
        Engine::Postgres => POSTGRES,
    }
}

/// The migrator for `engine`: every embedded migration, in order. Locking
/// is done by [`run`] around the whole check-and-apply.
pub(super) fn migrator(engine: Engine) -> Migrator {
    let migrations: Vec<Migration> = embedded(engine)
        .iter()
        .map(|&(version, description, sql)| {
            Migration::new(
                version,
                Cow::Borrowed(description),
                MigrationType::Simple,
                Cow::Borrowed(sql),
                false,
            )
        })
        .collect();
    Migrator {
        migrations: Cow::Owned(migrations),
        ..Migrator::DEFAULT
    }
}

/// The newest version this binary knows.
pub(super) fn latest(engine: Engine) -> i64 {
    embedded(engine).iter().map(|m| m.0).max().unwrap_or(0)
}

fn migration_error(engine: Engine, error: MigrateError) -> StoreError {
    match error {
        MigrateError::Execute(e) => super::db::map_err(engine, e),
        MigrateError::ExecuteMigration(e, version) => StoreError::Migration(format!(
            "{}: migration {version} failed: {}",
            engine.name(),
            super::db::map_err(engine, e)
        )),
        MigrateError::VersionMismatch(version) => changed(engine, version),
        MigrateError::Dirty(version) => StoreError::Migration(format!(
            "{}: migration {version} was left partially applied; restore the database from a backup taken before it",
            engine.name()
        )),
        other => StoreError::Migration(format!("{}: {other}", engine.name())),
    }
}

fn changed(engine: Engine, version: i64) -> StoreError {
    StoreError::Migration(format!(
        "{}: migration {version} applied to this database differs from the one built into this Hexon (its checksum changed); \
         released migrations must never change. Run the Hexon version that created the database, or restore a backup",
        engine.name()
    ))
}

/// Check the applied versions against the embedded ones and apply what is
/// missing, under the migration lock (PostgreSQL: an advisory lock, so
/// several nodes starting at once migrate once).
pub(super) async fn run<C>(conn: &mut C, engine: Engine) -> Result<MigrationReport, StoreError>
where
    C: Migrate + Send,
{
    conn.lock().await.map_err(|e| migration_error(engine, e))?;
    let outcome = run_locked(conn, engine).await;
    let unlocked = conn.unlock().await.map_err(|e| migration_error(engine, e));
    let report = outcome?;
    unlocked?;
    Ok(report)
}

async fn run_locked<C>(conn: &mut C, engine: Engine) -> Result<MigrationReport, StoreError>
where
    C: Migrate + Send,
{
    let mut migrator = migrator(engine);
    migrator.set_locking(false);
    conn.ensure_migrations_table()
        .await
        .map_err(|e| migration_error(engine, e))?;
    let applied = conn
        .list_applied_migrations()
        .await
        .map_err(|e| migration_error(engine, e))?;
    refuse_unknown(engine, applied.iter().map(|m| m.version))?;
    for done in &applied {
        if migrator
            .iter()
            .any(|m| m.version == done.version && m.checksum != done.checksum)
        {
            return Err(changed(engine, done.version));
        }
    }
    let before: HashSet<i64> = applied.iter().map(|m| m.version).collect();
    let from = before.iter().copied().max().unwrap_or(0);
    let pending: Vec<(i64, String)> = migrator
        .iter()
        .filter(|m| !before.contains(&m.version))
        .map(|m| (m.version, m.description.to_string()))
        .collect();
    migrator
        .run_direct(conn)
        .await
        .map_err(|e| migration_error(engine, e))?;
    for (version, description) in &pending {
        tracing::info!(
            backend = engine.name(),
            version,
            description = description.as_str(),
            "applied schema migration"
        );
    }
    let to = pending.iter().map(|m| m.0).max().unwrap_or(from).max(from);
    Ok(MigrationReport {
        from,
        to,
        applied: pending,
    })
}

/// Refuse a database with an applied version this binary does not know.
fn refuse_unknown(engine: Engine, applied: impl Iterator<Item = i64>) -> Result<(), StoreError> {
    let known = embedded(engine);
    match applied.filter(|v| !known.iter().any(|m| m.0 == *v)).max() {
        None => Ok(()),
        Some(newer) => Err(StoreError::Migration(format!(
            "{}: the database is at schema version {newer}, which this Hexon does not know (it knows up to {}); \
             it was written by a newer Hexon: upgrade Hexon",
            engine.name(),
            latest(engine)
        ))),
    }
}

/// The embedded migrations not recorded as applied in `applied`; refuses a
/// database written by a newer Hexon, as [`run`] does.
pub(super) fn pending(
    engine: Engine,
    applied: &HashSet<i64>,
) -> Result<Vec<(i64, String)>, StoreError> {
    refuse_unknown(engine, applied.iter().copied())?;
    Ok(embedded(engine)
        .iter()
        .filter(|m| !applied.contains(&m.0))
        .map(|&(version, description, _)| (version, description.to_owned()))
        .collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    /// Every file under `migrations/<engine>/` is embedded, under the
    /// version and description its name gives, in order, without gaps.
    fn files_match(engine: Engine, dir: &str) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("migrations")
            .join(dir);
        let mut files: Vec<(i64, String, String)> = std::fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "sql"))
            .map(|p| {
                let stem = p.file_stem().unwrap().to_str().unwrap().to_owned();
                let (version, description) = stem.split_once('_').unwrap();
                (
                    version.parse().unwrap(),
                    description.replace('_', " "),
                    std::fs::read_to_string(&p).unwrap(),
                )
            })
            .collect();
        files.sort();
        let embedded: Vec<(i64, String, String)> = embedded(engine)
            .iter()
            .map(|&(v, d, s)| (v, d.to_owned(), s.to_owned()))
            .collect();
        assert_eq!(
            files, embedded,
            "{dir}: every migration file must be embedded, named <version>_<description>.sql"
        );
        for (i, (version, _, _)) in embedded.iter().enumerate() {
            assert_eq!(*version, i as i64 + 1, "{dir}: versions are 1, 2, 3, …");
        }
    }

    #[cfg(feature = "sqlite")]
    #[test]
    fn sqlite_migration_files_are_all_embedded() {
        files_match(Engine::Sqlite, "sqlite");
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn postgres_migration_files_are_all_embedded() {
        files_match(Engine::Postgres, "postgres");
    }

    #[cfg(all(feature = "sqlite", feature = "postgres"))]
    #[test]
    fn both_engines_have_the_same_versions() {
        let versions = |e| -> Vec<(i64, &str)> { embedded(e).iter().map(|m| (m.0, m.1)).collect() };
        assert_eq!(versions(Engine::Sqlite), versions(Engine::Postgres));
    }
}
