//! One thin layer over the two sqlx drivers, so the stores' logic is written
//! once: statements take engine-neutral [`Arg`]s, rows come back as
//! [`Row`]s with typed getters, and sqlx errors become [`StoreError`]s.
//!
//! Every statement uses `$N` placeholders, which both PostgreSQL and
//! sqlx's SQLite driver understand.

use sqlx::Row as _;
use sqlx::pool::PoolConnection;

#[cfg(feature = "postgres")]
use sqlx::postgres::{PgPool, PgRow, Postgres};
#[cfg(feature = "sqlite")]
use sqlx::sqlite::{Sqlite, SqlitePool, SqliteRow};

use crate::store::StoreError;

/// Which database a store talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Engine {
    #[cfg(feature = "sqlite")]
    Sqlite,
    #[cfg(feature = "postgres")]
    Postgres,
}

impl Engine {
    /// The backend name used in errors and `backend()`.
    pub(super) fn name(self) -> &'static str {
        match self {
            #[cfg(feature = "sqlite")]
            Engine::Sqlite => "sqlite",
            #[cfg(feature = "postgres")]
            Engine::Postgres => "postgres",
        }
    }

    /// Whether this is PostgreSQL (several writers, no in-process cache).
    pub(super) fn is_postgres(self) -> bool {
        match self {
            #[cfg(feature = "postgres")]
            Engine::Postgres => true,
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// What an operator can do when the database does not answer.
    fn remedy(self) -> &'static str {
        match self {
            #[cfg(feature = "sqlite")]
            Engine::Sqlite => {
                "check that the state file's disk is writable and not full, and that no other program holds the file"
            }
            #[cfg(feature = "postgres")]
            Engine::Postgres => {
                "check that PostgreSQL is running and reachable at the configured URL, that the pool is large enough, \
                 and that no long transaction holds locks Hexon needs (a statement waits at most lock_timeout for a lock \
                 and runs at most statement_timeout)"
            }
        }
    }
}

/// A statement argument.
#[derive(Clone, Copy, Debug)]
pub(super) enum Arg<'a> {
    Int(i64),
    OptInt(Option<i64>),
    Text(&'a str),
    OptText(Option<&'a str>),
    Bytes(&'a [u8]),
    OptBool(Option<bool>),
}

#[cfg(feature = "sqlite")]
fn sqlite_query<'q>(
    sql: &'q str,
    args: &[Arg<'q>],
) -> sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
    args.iter().fold(sqlx::query(sql), |q, arg| match *arg {
        Arg::Int(v) => q.bind(v),
        Arg::OptInt(v) => q.bind(v),
        Arg::Text(v) => q.bind(v),
        Arg::OptText(v) => q.bind(v),
        Arg::Bytes(v) => q.bind(v),
        Arg::OptBool(v) => q.bind(v),
    })
}

#[cfg(feature = "postgres")]
fn pg_query<'q>(
    sql: &'q str,
    args: &[Arg<'q>],
) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
    args.iter().fold(sqlx::query(sql), |q, arg| match *arg {
        Arg::Int(v) => q.bind(v),
        Arg::OptInt(v) => q.bind(v),
        Arg::Text(v) => q.bind(v),
        Arg::OptText(v) => q.bind(v),
        Arg::Bytes(v) => q.bind(v),
        Arg::OptBool(v) => q.bind(v),
    })
}

/// A result row.
pub(super) enum Row {
    #[cfg(feature = "sqlite")]
    Sqlite(SqliteRow),
    #[cfg(feature = "postgres")]
    Postgres(PgRow),
}

macro_rules! getter {
    ($(#[$doc:meta])* $name:ident -> $ty:ty) => {
        $(#[$doc])*
        pub(super) fn $name(&self, index: usize) -> Result<$ty, StoreError> {
            let got = match self {
                #[cfg(feature = "sqlite")]
                Row::Sqlite(row) => row.try_get::<$ty, usize>(index),
                #[cfg(feature = "postgres")]
                Row::Postgres(row) => row.try_get::<$ty, usize>(index),
            };
            got.map_err(|e| StoreError::Corrupt(format!("column {index}: {e}")))
        }
    };
}

impl Row {
    getter!(
        /// A non-null integer.
        int -> i64
    );
    getter!(
        /// A nullable integer.
        opt_int -> Option<i64>
    );
    getter!(
        /// A non-null string.
        text -> String
    );
    getter!(
        /// A nullable string.
        opt_text -> Option<String>
    );
    getter!(
        /// Non-null bytes.
        bytes -> Vec<u8>
    );
    getter!(
        /// A nullable boolean.
        opt_bool -> Option<bool>
    );
}

/// The connection pools of a store. SQLite has one writer connection (the
/// database has one writer anyway; queuing in process avoids `SQLITE_BUSY`)
/// and a few readers; PostgreSQL has one pool.
#[derive(Clone, Debug)]
pub(super) enum Pools {
    #[cfg(feature = "sqlite")]
    Sqlite { read: SqlitePool, write: SqlitePool },
    #[cfg(feature = "postgres")]
    Postgres(PgPool),
}

/// A connection taken from the write side of a pool.
pub(super) enum Conn {
    #[cfg(feature = "sqlite")]
    Sqlite(PoolConnection<Sqlite>),
    #[cfg(feature = "postgres")]
    Postgres(PoolConnection<Postgres>),
}

/// A transaction: a write on the write side, or a read-only snapshot
/// ([`Pools::begin_read`]).
pub(super) enum Tx {
    #[cfg(feature = "sqlite")]
    Sqlite(sqlx::Transaction<'static, Sqlite>),
    #[cfg(feature = "postgres")]
    Postgres(sqlx::Transaction<'static, Postgres>),
}

/// `execute` / `fetch_all` / `fetch_optional` for one engine, on any of
/// its executors (a pool, a connection, a transaction's connection).
macro_rules! engine_ops {
    ($module:ident, $db:ty, $query:ident, $wrap:path) => {
        mod $module {
            use super::{Arg, Row};

            pub(super) async fn execute<'q, 'c, E>(
                executor: E,
                sql: &'q str,
                args: &[Arg<'q>],
            ) -> Result<u64, sqlx::Error>
            where
                E: sqlx::Executor<'c, Database = $db>,
                'q: 'c,
            {
                super::$query(sql, args)
                    .execute(executor)
                    .await
                    .map(|r| r.rows_affected())
            }

            pub(super) async fn fetch_all<'q, 'c, E>(
                executor: E,
                sql: &'q str,
                args: &[Arg<'q>],
            ) -> Result<Vec<Row>, sqlx::Error>
            where
                E: sqlx::Executor<'c, Database = $db>,
                'q: 'c,
            {
                super::$query(sql, args)
                    .fetch_all(executor)
                    .await
                    .map(|rows| rows.into_iter().map($wrap).collect())
            }

            pub(super) async fn fetch_optional<'q, 'c, E>(
                executor: E,
                sql: &'q str,
                args: &[Arg<'q>],
            ) -> Result<Option<Row>, sqlx::Error>
            where
                E: sqlx::Executor<'c, Database = $db>,
                'q: 'c,
            {
                super::$query(sql, args)
                    .fetch_optional(executor)
                    .await
                    .map(|row| row.map($wrap))
            }
        }
    };
}

#[cfg(feature = "sqlite")]
engine_ops!(lite, sqlx::Sqlite, sqlite_query, Row::Sqlite);
#[cfg(feature = "postgres")]
engine_ops!(pg, sqlx::Postgres, pg_query, Row::Postgres);

/// Dispatch one operation on whichever engine `$target` holds, with `$via`
/// turning the variant's payload into an executor.
macro_rules! dispatch {
    ($target:expr, $op:ident, $sql:expr, $args:expr, |$x:ident| $via:expr) => {
        match $target {
            #[cfg(feature = "sqlite")]
            Self::Sqlite($x) => lite::$op($via, $sql, $args).await,
            #[cfg(feature = "postgres")]
            Self::Postgres($x) => pg::$op($via, $sql, $args).await,
        }
    };
}

impl Conn {
    pub(super) async fn execute(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
    ) -> Result<u64, sqlx::Error> {
        dispatch!(self, execute, sql, args, |c| &mut **c)
    }

    pub(super) async fn fetch_optional(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
    ) -> Result<Option<Row>, sqlx::Error> {
        dispatch!(self, fetch_optional, sql, args, |c| &mut **c)
    }
}

impl Tx {
    pub(super) async fn execute(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
    ) -> Result<u64, sqlx::Error> {
        dispatch!(self, execute, sql, args, |t| &mut **t)
    }

    pub(super) async fn fetch_optional(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
    ) -> Result<Option<Row>, sqlx::Error> {
        dispatch!(self, fetch_optional, sql, args, |t| &mut **t)
    }

    pub(super) async fn fetch_all(
        &mut self,
        sql: &str,
        args: &[Arg<'_>],
    ) -> Result<Vec<Row>, sqlx::Error> {
        dispatch!(self, fetch_all, sql, args, |t| &mut **t)
    }

    pub(super) async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            #[cfg(feature = "sqlite")]
            Tx::Sqlite(tx) => tx.commit().await,
            #[cfg(feature = "postgres")]
            Tx::Postgres(tx) => tx.commit().await,
        }
    }
}

impl Pools {
    /// A read on the read side.
    pub(super) async fn fetch_optional(
        &self,
        sql: &str,
        args: &[Arg<'_>],
    ) -> Result<Option<Row>, sqlx::Error> {
        match self {
            #[cfg(feature = "sqlite")]
            Pools::Sqlite { read, .. } => lite::fetch_optional(read, sql, args).await,
            #[cfg(feature = "postgres")]
            Pools::Postgres(pool) => pg::fetch_optional(pool, sql, args).await,
        }
    }

    /// A read on the read side.
    pub(super) async fn fetch_all(
        &self,
        sql: &str,
        args: &[Arg<'_>],
    ) -> Result<Vec<Row>, sqlx::Error> {
        match self {
            #[cfg(feature = "sqlite")]
            Pools::Sqlite { read, .. } => lite::fetch_all(read, sql, args).await,
            #[cfg(feature = "postgres")]
            Pools::Postgres(pool) => pg::fetch_all(pool, sql, args).await,
        }
    }

    /// One statement on the write side.
    pub(super) async fn execute(&self, sql: &str, args: &[Arg<'_>]) -> Result<u64, sqlx::Error> {
        match self {
            #[cfg(feature = "sqlite")]
            Pools::Sqlite { write, .. } => lite::execute(write, sql, args).await,
            #[cfg(feature = "postgres")]
            Pools::Postgres(pool) => pg::execute(pool, sql, args).await,
        }
    }

    /// One statement returning a row, on the write side.
    pub(super) async fn write_fetch_optional(
        &self,
        sql: &str,
        args: &[Arg<'_>],
    ) -> Result<Option<Row>, sqlx::Error> {
        match self {
            #[cfg(feature = "sqlite")]
            Pools::Sqlite { write, .. } => lite::fetch_optional(write, sql, args).await,
            #[cfg(feature = "postgres")]
            Pools::Postgres(pool) => pg::fetch_optional(pool, sql, args).await,
        }
    }

    /// Hold a write connection (SQLite: the only one, so holding it
    /// orders this writer's statements and cache updates against every
    /// other writer of the process).
    pub(super) async fn writer(&self) -> Result<Conn, sqlx::Error> {
        match self {
            #[cfg(feature = "sqlite")]
            Pools::Sqlite { write, .. } => write.acquire().await.map(Conn::Sqlite),
            #[cfg(feature = "postgres")]
            Pools::Postgres(pool) => pool.acquire().await.map(Conn::Postgres),
        }
    }

    /// Begin a write transaction (SQLite: `BEGIN IMMEDIATE`, so it holds
    /// the write lock from its first statement and never fails to upgrade).
    pub(super) async fn begin(&self) -> Result<Tx, sqlx::Error> {
        match self {
            #[cfg(feature = "sqlite")]
            Pools::Sqlite { write, .. } => {
                write.begin_with("BEGIN IMMEDIATE").await.map(Tx::Sqlite)
            }
            #[cfg(feature = "postgres")]
            Pools::Postgres(pool) => pool.begin().await.map(Tx::Postgres),
        }
    }

    /// Begin a read-only transaction on the read side, whose reads all see
    /// one snapshot of the database (PostgreSQL: `REPEATABLE READ READ
    /// ONLY`; SQLite: a deferred transaction on one connection, whose first
    /// read fixes the snapshot in WAL mode).
    pub(super) async fn begin_read(&self) -> Result<Tx, sqlx::Error> {
        match self {
            #[cfg(feature = "sqlite")]
            Pools::Sqlite { read, .. } => read.begin().await.map(Tx::Sqlite),
            #[cfg(feature = "postgres")]
            Pools::Postgres(pool) => pool
                .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await
                .map(Tx::Postgres),
        }
    }

    /// Close every connection.
    pub(super) async fn close(&self) {
        match self {
            #[cfg(feature = "sqlite")]
            Pools::Sqlite { read, write } => {
                read.close().await;
                write.close().await;
            }
            #[cfg(feature = "postgres")]
            Pools::Postgres(pool) => pool.close().await,
        }
    }
}

// ------------------------------------------------------------------- errors

/// Turn a driver error into the store's error: unreachable, timed out,
/// busy or out of resources is [`StoreError::Unavailable`] (naming the
/// backend and what to check); unique violations are
/// [`StoreError::AlreadyExists`] (callers that know the record name it
/// better with [`unique_or`]); refused input is [`StoreError::Invalid`].
pub(super) fn map_err(engine: Engine, error: sqlx::Error) -> StoreError {
    let backend = engine.name();
    match error {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            let message = db.message().to_owned();
            if db.is_unique_violation() {
                return StoreError::AlreadyExists {
                    what: "record",
                    key: db.constraint().unwrap_or("unique key").to_owned(),
                };
            }
            match classify(engine, &code) {
                DbClass::Unavailable => StoreError::Unavailable {
                    backend,
                    detail: format!("{message} (code {code}); {}", engine.remedy()),
                },
                DbClass::Invalid => StoreError::Invalid {
                    what: "value",
                    reason: format!("{backend} refused it: {message}"),
                },
                DbClass::Other => StoreError::Unavailable {
                    backend,
                    detail: format!(
                        "{message} (code {code}); if the schema is missing or old, open the store with `open` so it migrates"
                    ),
                },
            }
        }
        sqlx::Error::PoolTimedOut => StoreError::Unavailable {
            backend,
            detail: format!("no connection became free in time; {}", engine.remedy()),
        },
        sqlx::Error::PoolClosed => StoreError::Unavailable {
            backend,
            detail: "the store was closed".into(),
        },
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_) => StoreError::Corrupt(format!("{backend}: {error}")),
        other => StoreError::Unavailable {
            backend,
            detail: format!("{other}; {}", engine.remedy()),
        },
    }
}

/// [`map_err`], naming a unique violation `what` / `key`.
pub(super) fn unique_or(
    engine: Engine,
    error: sqlx::Error,
    what: &'static str,
    key: &str,
) -> StoreError {
    match map_err(engine, error) {
        StoreError::AlreadyExists { .. } => StoreError::AlreadyExists {
            what,
            key: key.to_owned(),
        },
        other => other,
    }
}

enum DbClass {
    Unavailable,
    Invalid,
    Other,
}

fn classify(engine: Engine, code: &str) -> DbClass {
    match engine {
        #[cfg(feature = "sqlite")]
        Engine::Sqlite => {
            // Primary result code = extended code & 0xff.
            match code.parse::<i64>().map(|c| c & 0xff) {
                // BUSY, LOCKED, NOMEM, READONLY, IOERR, CORRUPT, FULL, CANTOPEN, NOTADB
                Ok(5 | 6 | 7 | 8 | 10 | 11 | 13 | 14 | 26) => DbClass::Unavailable,
                // TOOBIG, MISMATCH, RANGE
                Ok(18 | 20 | 25) => DbClass::Invalid,
                _ => DbClass::Other,
            }
        }
        #[cfg(feature = "postgres")]
        Engine::Postgres => {
            // lock_not_available: `lock_timeout` passed waiting for a lock.
            if code == "55P03" {
                return DbClass::Unavailable;
            }
            let class = code.get(..2).unwrap_or("");
            match class {
                // connection exception, insufficient resources, operator
                // intervention (57014: `statement_timeout` passed), system
                // error, serialization failure / deadlock
                "08" | "53" | "57" | "58" | "40" => DbClass::Unavailable,
                // data exception (NUL in text, out of range, bad encoding)
                "22" => DbClass::Invalid,
                _ => DbClass::Other,
            }
        }
    }
}
