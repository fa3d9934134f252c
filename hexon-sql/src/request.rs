//! What goes through the pipeline and what comes out of it.

use std::fmt;
use std::sync::{Arc, OnceLock};

use hexon_core::Identity;

use crate::analysis::{self, Analysis};
use crate::dialect::Dialect;

/// Where a statement came from on the wire; the pipeline treats both alike,
/// but the decision record says which it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Origin {
    /// A simple query (`Query` in PostgreSQL, `COM_QUERY` in MySQL).
    Simple,
    /// A statement prepared for later execution (`Parse`, `COM_STMT_PREPARE`).
    Prepare,
}

/// One statement (or one simple-query string) to decide on.
///
/// The parse is done at most once, by the first layer that needs it, and
/// shared with the layers after it.
pub struct SqlRequest {
    identity: Identity,
    database: Arc<str>,
    sql: Arc<str>,
    dialect: Dialect,
    origin: Origin,
    /// The parse, shared by clones. The shared cell is made on the first
    /// parse or clone: a statement the verdict cache answers needs neither.
    parsed: OnceLock<Arc<ParseCell>>,
    limit: Option<crate::layers::LimitAnnotation>,
}

type ParseCell = OnceLock<Result<Arc<Analysis>, Refusal>>;

impl Clone for SqlRequest {
    fn clone(&self) -> Self {
        Self {
            identity: self.identity.clone(),
            database: self.database.clone(),
            sql: self.sql.clone(),
            dialect: self.dialect,
            origin: self.origin,
            parsed: OnceLock::from(self.parse_cell().clone()),
            limit: self.limit.clone(),
        }
    }
}

impl SqlRequest {
    /// A request from `identity` to run `sql` on `database`.
    pub fn new(
        identity: Identity,
        database: impl Into<Arc<str>>,
        sql: impl Into<Arc<str>>,
        dialect: Dialect,
    ) -> Self {
        Self {
            identity,
            database: database.into(),
            sql: sql.into(),
            dialect,
            origin: Origin::Simple,
            parsed: OnceLock::new(),
            limit: None,
        }
    }

    /// Mark where the statement came from.
    pub fn with_origin(mut self, origin: Origin) -> Self {
        self.origin = origin;
        self
    }

    /// Who asks.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The database the connection is on.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// The statement text as the client sent it.
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// The SQL dialect (which parser and which lexical rules).
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// The statement text, shared.
    pub fn shared_sql(&self) -> Arc<str> {
        self.sql.clone()
    }

    /// The database name, shared (no copy).
    pub fn shared_database(&self) -> Arc<str> {
        self.database.clone()
    }

    /// Simple query or prepared statement.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    fn parse_cell(&self) -> &Arc<ParseCell> {
        self.parsed.get_or_init(Arc::default)
    }

    /// The parsed and analysed statement; parsed on first use.
    ///
    /// # Errors
    /// A statement that does not parse is refused at [`Stage::Parse`].
    pub fn analysis(&self, limits: &analysis::ParseLimits) -> Result<&Arc<Analysis>, Refusal> {
        self.parse_cell()
            .get_or_init(|| Analysis::parse(&self.sql, self.dialect, limits).map(Arc::new))
            .as_ref()
            .map_err(Clone::clone)
    }
}

impl SqlRequest {
    /// What the limit layer decided (rewrite and row cap), if it ran.
    pub fn limit_annotation(&self) -> Option<&crate::layers::LimitAnnotation> {
        self.limit.as_ref()
    }

    pub(crate) fn set_limit_annotation(&mut self, a: crate::layers::LimitAnnotation) {
        self.limit = Some(a);
    }
}

impl fmt::Debug for SqlRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlRequest")
            .field("user", &self.identity.username())
            .field("database", &self.database)
            .field("dialect", &self.dialect)
            .field("origin", &self.origin)
            .field("sql_len", &self.sql.len())
            .finish()
    }
}

/// The eight layers of the pipeline (and the parse between them), in the
/// order a statement meets them. A decision names the stage that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Stage {
    /// 1. Size, encoding, nesting, statement count, comments.
    Validation,
    /// 2. Statements per identity and per database.
    RateLimit,
    /// Not a layer: the parse the later layers share. Anything that does
    /// not parse, or parses into something the analysis cannot classify, is
    /// refused here.
    Parse,
    /// 3. Writes and side effects refused for read-only roles.
    ReadOnly,
    /// 4. Which databases the identity may use (including switching).
    DatabaseAccess,
    /// 5. Allow/deny patterns over the normalised statement.
    Pattern,
    /// 6. Schema-qualified tables × operations per role.
    TablePermission,
    /// 7. Joins, subqueries, cartesian products, unbounded writes.
    Complexity,
    /// 8. `LIMIT` injection and the row cap.
    Limit,
}

impl Stage {
    /// Stable lower-case name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Validation => "validation",
            Stage::RateLimit => "rate_limit",
            Stage::Parse => "parse",
            Stage::ReadOnly => "read_only",
            Stage::DatabaseAccess => "database_access",
            Stage::Pattern => "pattern",
            Stage::TablePermission => "table_permission",
            Stage::Complexity => "complexity",
            Stage::Limit => "limit",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A statement the pipeline let through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// The text to send to the database: the canonical form of what was
    /// analysed (re-serialised from the syntax tree, with any injected
    /// `LIMIT`), never the client's raw bytes. What the server runs is
    /// exactly what the layers looked at.
    pub sql: Arc<str>,
    /// The most result rows the relay lets through for this statement, if
    /// capped.
    pub row_cap: Option<u64>,
    /// The normalised statement (literals replaced by `?`), for the query log.
    pub normalized: Arc<str>,
    /// The role the identity acted as on this database.
    pub role: Arc<str>,
    /// The database the statement switches to (`USE db`), if it does.
    pub switches_database: Option<Arc<str>>,
}

/// Why a statement was refused, and by which stage.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refused by {stage}: {reason}")]
pub struct Refusal {
    /// The stage that refused.
    pub stage: Stage,
    /// A stable machine-readable code (e.g. `write_in_read_only`).
    pub code: &'static str,
    /// A message for the client: what was refused and what to do. It never
    /// contains the statement text beyond the names it refers to.
    pub reason: String,
}

impl Refusal {
    /// A refusal by `stage`.
    pub fn new(stage: Stage, code: &'static str, reason: impl Into<String>) -> Self {
        Self {
            stage,
            code,
            reason: reason.into(),
        }
    }

    /// The SQLSTATE a PostgreSQL or MySQL client should see.
    pub fn sqlstate(&self) -> &'static str {
        match (self.stage, self.code) {
            (Stage::RateLimit, _) => "53400", // configuration_limit_exceeded
            (Stage::Validation, "too_long" | "too_deep") => "54000", // program_limit_exceeded
            (Stage::Parse | Stage::Validation, _) => "42601", // syntax_error
            (Stage::ReadOnly, _) => "25006",  // read_only_sql_transaction
            (Stage::Complexity, _) => "54001", // statement_too_complex
            _ => "42501",                     // insufficient_privilege
        }
    }
}
