//! The checks of layers 1 and 3–8 (the rate limit, layer 2, keeps state and
//! lives in its own module).

use std::sync::Arc;

use sqlparser::ast::{Expr, LimitClause, Statement, Value};

use super::{Check, CheckLayer, no_access, parsed};
use crate::acl::{Acl, Role};
use crate::analysis::{Analysed, Kind, SessionChange, TableOp, function_classes};
use crate::dialect::Dialect;
use crate::functions::FunctionClass;
use crate::request::{Refusal, SqlRequest, Stage};

macro_rules! check_layer {
    ($name:ident, $doc:literal) => {
        #[doc = $doc]
        #[derive(Debug, Clone)]
        pub struct $name {
            acl: Arc<Acl>,
        }

        impl $name {
            /// The check for `acl`.
            pub fn new(acl: Arc<Acl>) -> Self {
                Self { acl }
            }

            /// This check as a tower layer.
            pub fn layer(acl: Arc<Acl>) -> CheckLayer<Self> {
                CheckLayer::new(Self::new(acl))
            }
        }
    };
}

check_layer!(
    Validation,
    "Layer 1: size, encoding, nesting depth and executable comments, before any parse."
);
check_layer!(
    ReadOnly,
    "Layer 3: for read-only roles, every write and side effect anywhere in the statement; \
     for every role, changes of session identity or of how text is parsed, and functions \
     that reach outside the database."
);
check_layer!(
    DatabaseAccess,
    "Layer 4: the caller has a role on the database, and on any database the statement \
     switches to or names."
);
check_layer!(
    Pattern,
    "Layer 5: the role's allow/deny regular expressions over the normalised statement."
);
check_layer!(
    TablePermission,
    "Layer 6: statement kinds, schema-qualified tables × operations, and functions, per role."
);
check_layer!(
    Complexity,
    "Layer 7: a score over joins, subqueries, cartesian products and set operations, and \
     writes without `WHERE`."
);
check_layer!(
    Limit,
    "Layer 8: inject `LIMIT` into reads without one (and lower larger literal limits) for \
     roles with a row limit; the relay enforces the same cap on the wire."
);

fn role<'a>(acl: &'a Acl, req: &SqlRequest) -> Option<&'a Arc<Role>> {
    acl.role_for(req.identity(), req.database())
}

impl Check for Validation {
    fn check(&self, req: &mut SqlRequest) -> Result<(), Refusal> {
        let v = &self.acl.validation;
        let sql = req.sql();
        if sql.len() > v.max_bytes {
            return Err(Refusal::new(
                Stage::Validation,
                "too_long",
                format!(
                    "the statement is {} bytes; the limit is {}",
                    sql.len(),
                    v.max_bytes
                ),
            ));
        }
        if memchr::memchr(0, sql.as_bytes()).is_some() {
            return Err(Refusal::new(
                Stage::Validation,
                "nul_byte",
                "the statement contains a NUL byte",
            ));
        }
        if sql.trim().is_empty() {
            return Err(Refusal::new(Stage::Validation, "empty", "no statement"));
        }
        let scan = scan(sql, req.dialect());
        if scan.depth > v.max_depth {
            return Err(Refusal::new(
                Stage::Validation,
                "too_deep",
                format!(
                    "parentheses nest {} deep; the limit is {}",
                    scan.depth, v.max_depth
                ),
            ));
        }
        if scan.executable_comment {
            return Err(Refusal::new(
                Stage::Validation,
                "executable_comment",
                "executable comments (/*! … */, /*M! … */) are refused; write the statement without them",
            ));
        }
        if scan.statements > 1 && !v.multi_statements {
            return Err(Refusal::new(
                Stage::Validation,
                "multi_statement",
                "one statement at a time: several statements in one query are refused",
            ));
        }
        Ok(())
    }
}

/// What a lexical pass over the text finds, without parsing.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Scan {
    pub(crate) depth: usize,
    pub(crate) statements: usize,
    pub(crate) executable_comment: bool,
}

/// A conservative lexical pass: quotes, comments and dollar quotes are
/// skipped so their contents do not count. It only ever makes refusals
/// (too deep, several statements, executable comments); the authoritative
/// checks run on the parse, so a lexing difference can cost a false refusal
/// but never admit anything.
pub(crate) fn scan(sql: &str, dialect: Dialect) -> Scan {
    scan_with(sql, dialect, true)
}

/// [`scan`], skipping runs of whitespace and ordinary bytes in a tight loop
/// (`skip_runs`, most of a statement) or taking every byte through the
/// `match` (tests check the two agree).
#[inline(always)]
fn scan_with(sql: &str, dialect: Dialect, skip_runs: bool) -> Scan {
    let b = sql.as_bytes();
    let mut out = Scan::default();
    let mut depth = 0usize;
    let mut i = 0;
    let mut pending = false; // tokens since the last `;`
    let backslash = dialect == Dialect::Mysql;
    loop {
        // Whitespace and ordinary token bytes only matter as "a token since
        // the last `;`": skip them in one run.
        let next = if skip_runs {
            let mut seen = SCAN_SPACE;
            let mut next = None;
            while let Some(&c) = b.get(i) {
                let class = scan_class(c);
                if class == SCAN_SPECIAL {
                    next = Some(c);
                    break;
                }
                seen |= class;
                i += 1;
            }
            if seen != SCAN_SPACE {
                pending = true;
            }
            next
        } else {
            b.get(i).copied()
        };
        let Some(c) = next else { break };
        match c {
            b'\'' | b'"' | b'`' => {
                i += 1;
                while let Some(&d) = b.get(i) {
                    if backslash && d == b'\\' {
                        i += 2;
                        continue;
                    }
                    i += 1;
                    if d == c {
                        if b.get(i) == Some(&c) {
                            i += 1;
                            continue;
                        }
                        break;
                    }
                }
                pending = true;
                continue;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while let Some(&d) = b.get(i) {
                    if d == b'\n' {
                        break;
                    }
                    i += 1;
                }
                continue;
            }
            b'#' if dialect == Dialect::Mysql => {
                while let Some(&d) = b.get(i) {
                    if d == b'\n' {
                        break;
                    }
                    i += 1;
                }
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                if matches!(b.get(i + 2), Some(b'!'))
                    || (b.get(i + 2) == Some(&b'M') && b.get(i + 3) == Some(&b'!'))
                {
                    out.executable_comment = true;
                }
                // PostgreSQL nests block comments; MySQL does not. Nesting
                // only matters for where the comment ends.
                let nests = dialect == Dialect::Postgres;
                let mut level = 1;
                i += 2;
                while level > 0 {
                    match (b.get(i), b.get(i + 1)) {
                        (None, _) => break,
                        (Some(b'*'), Some(b'/')) => {
                            level -= 1;
                            i += 2;
                        }
                        (Some(b'/'), Some(b'*')) if nests => {
                            level += 1;
                            i += 2;
                        }
                        _ => i += 1,
                    }
                }
                continue;
            }
            b'$' if dialect == Dialect::Postgres => {
                // `$tag$ … $tag$` (tag: identifier characters, possibly empty).
                let start = i;
                let mut j = i + 1;
                while b
                    .get(j)
                    .is_some_and(|d| d.is_ascii_alphanumeric() || *d == b'_')
                {
                    j += 1;
                }
                if b.get(j) == Some(&b'$') && !b.get(i + 1).is_some_and(u8::is_ascii_digit) {
                    let tag = b.get(start..=j).unwrap_or_default();
                    let body = b.get(j + 1..).unwrap_or_default();
                    let end = body.windows(tag.len()).position(|w| w == tag);
                    i = match end {
                        Some(p) => j + 1 + p + tag.len(),
                        None => b.len(),
                    };
                    pending = true;
                    continue;
                }
                pending = true;
            }
            b'(' => {
                depth += 1;
                out.depth = out.depth.max(depth);
                pending = true;
            }
            b')' => {
                depth = depth.saturating_sub(1);
                pending = true;
            }
            b';' => {
                if pending {
                    out.statements += 1;
                }
                pending = false;
            }
            c if c.is_ascii_whitespace() => {}
            // Any other byte, among them `-`, `/`, `#` or `$` that opens
            // nothing here: a token byte.
            _ => pending = true,
        }
        i += 1;
    }
    if pending {
        out.statements += 1;
    }
    out
}

/// [`scan`]'s byte classes: whitespace, a byte of some token, or a byte
/// that may open or close something (quotes, comments, dollar quotes,
/// parentheses, `;`).
const SCAN_SPACE: u8 = 0;
const SCAN_TOKEN: u8 = 1;
const SCAN_SPECIAL: u8 = 2;

#[inline(always)]
fn scan_class(c: u8) -> u8 {
    SCAN_CLASSES
        .get(usize::from(c))
        .copied()
        .unwrap_or(SCAN_TOKEN)
}

static SCAN_CLASSES: [u8; 256] = scan_classes();

// The index is below 256 by the loop's bound.
#[allow(clippy::indexing_slicing, clippy::cast_possible_truncation)]
const fn scan_classes() -> [u8; 256] {
    let mut t = [SCAN_TOKEN; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        t[i] = match c {
            b'\'' | b'"' | b'`' | b'-' | b'#' | b'/' | b'$' | b'(' | b')' | b';' => SCAN_SPECIAL,
            _ if c.is_ascii_whitespace() => SCAN_SPACE,
            _ => SCAN_TOKEN,
        };
        i += 1;
    }
    t
}

fn read_only_kind(kind: &Kind) -> bool {
    matches!(
        kind,
        Kind::Query
            | Kind::Explain { analyze: false }
            | Kind::Show
            | Kind::Transaction
            | Kind::Session
            | Kind::Use
            | Kind::Prepared
            | Kind::Cursor
            | Kind::Copy
    )
}

impl Check for ReadOnly {
    fn check(&self, req: &mut SqlRequest) -> Result<(), Refusal> {
        let Some(role) = role(&self.acl, req) else {
            return Ok(());
        };
        let a = parsed(&self.acl, req)?;
        for s in &a.statements {
            for change in &s.session {
                match change {
                    SessionChange::Identity => {
                        return Err(Refusal::new(
                            Stage::ReadOnly,
                            "session_identity",
                            "changing the session's role or authorization is refused: the bastion chose the role",
                        ));
                    }
                    SessionChange::Global(v) => {
                        return Err(Refusal::new(
                            Stage::ReadOnly,
                            "global_setting",
                            format!(
                                "SET GLOBAL {v} changes the server for everyone and is refused"
                            ),
                        ));
                    }
                    SessionChange::Charset => {
                        return Err(Refusal::new(
                            Stage::ReadOnly,
                            "session_charset",
                            "changing the connection character set is refused: it changes how strings are read",
                        ));
                    }
                    SessionChange::Variable(v) if !role.allows_variable(v) => {
                        return Err(Refusal::new(
                            Stage::ReadOnly,
                            "session_variable",
                            format!(
                                "setting {v:?} is refused for role {}; allowed: the safe defaults and the role's session_variables",
                                role.name
                            ),
                        ));
                    }
                    SessionChange::Variable(_) => {}
                }
            }
            for (f, class) in function_classes(s) {
                if let FunctionClass::Dangerous(why) = class {
                    if !role.config.functions.iter().any(|g| g == f) {
                        return Err(Refusal::new(
                            Stage::ReadOnly,
                            "dangerous_function",
                            format!("function {f} {why}; it is refused"),
                        ));
                    }
                }
            }
            if !role.config.read_only {
                continue;
            }
            if let Some(effect) = s.effects.first() {
                return Err(Refusal::new(
                    Stage::ReadOnly,
                    "write_in_read_only",
                    format!(
                        "role {} is read-only: the statement has a write or side effect ({effect})",
                        role.name
                    ),
                ));
            }
            if !read_only_kind(&s.kind) {
                return Err(Refusal::new(
                    Stage::ReadOnly,
                    "write_in_read_only",
                    format!(
                        "role {} is read-only: {} statements are refused",
                        role.name,
                        s.kind.as_str()
                    ),
                ));
            }
            for (f, class) in function_classes(s) {
                match class {
                    FunctionClass::Pure => {}
                    FunctionClass::SideEffect(why) => {
                        return Err(Refusal::new(
                            Stage::ReadOnly,
                            "side_effect_function",
                            format!("role {} is read-only: function {f} {why}", role.name),
                        ));
                    }
                    _ if role.allows_function(f) => {}
                    _ => {
                        return Err(Refusal::new(
                            Stage::ReadOnly,
                            "unknown_function",
                            format!(
                                "role {} is read-only and function {f} is not known to be free of side effects; \
                                 list it in the role's functions if it is",
                                role.name
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

impl Check for DatabaseAccess {
    fn check(&self, req: &mut SqlRequest) -> Result<(), Refusal> {
        let Some(db) = self.acl.database(req.database()) else {
            return Err(no_access(req.database()));
        };
        if db.role_for(req.identity()).is_none() {
            return Err(no_access(req.database()));
        }
        if db.dialect != req.dialect() {
            return Err(Refusal::new(
                Stage::DatabaseAccess,
                "wrong_dialect",
                format!(
                    "database {:?} is a {} database",
                    req.database(),
                    db.dialect.as_str()
                ),
            ));
        }
        let a = parsed(&self.acl, req)?;
        for s in &a.statements {
            if let Some(target) = &s.switches_database {
                if target != req.database() {
                    match self.acl.database(target) {
                        Some(t)
                            if t.role_for(req.identity()).is_some() && t.dialect == db.dialect => {}
                        _ => return Err(no_access(target)),
                    }
                }
            }
            for t in &s.tables {
                let other = t.database.as_deref().filter(|d| *d != req.database());
                // MySQL's `information_schema` is per server, readable by
                // everyone; the table layer decides whether the role may.
                let catalog = db.dialect == Dialect::Mysql
                    && other.is_some_and(|d| d.eq_ignore_ascii_case("information_schema"));
                if let (Some(other), false) = (other, catalog) {
                    return Err(Refusal::new(
                        Stage::DatabaseAccess,
                        "cross_database",
                        format!(
                            "the statement names database {other:?}; switch to it first (its own rules apply there)"
                        ),
                    ));
                }
                // A MySQL server reads `db.t` literally: when this database
                // has another name on the server, `name.t` would reach a
                // different database there.
                let renamed = db.dialect == Dialect::Mysql && *db.upstream_database != *db.name;
                if renamed && !catalog && t.database.is_some() {
                    return Err(Refusal::new(
                        Stage::DatabaseAccess,
                        "qualified_name",
                        format!(
                            "write table names without the database (this database is named differently on its server): {}",
                            t.name
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Check for Pattern {
    fn check(&self, req: &mut SqlRequest) -> Result<(), Refusal> {
        let Some(role) = role(&self.acl, req) else {
            return Err(no_access(req.database()));
        };
        if role.deny_patterns.is_empty() && role.allow_patterns.is_empty() {
            return Ok(());
        }
        let a = parsed(&self.acl, req)?;
        if let Some(p) = role
            .deny_patterns
            .iter()
            .find(|p| p.is_match(&a.normalized))
        {
            return Err(Refusal::new(
                Stage::Pattern,
                "denied_pattern",
                format!(
                    "the statement matches the deny pattern {:?} of role {}",
                    p.as_str(),
                    role.name
                ),
            ));
        }
        if !role.allow_patterns.is_empty()
            && !role
                .allow_patterns
                .iter()
                .any(|p| p.is_match(&a.normalized))
        {
            return Err(Refusal::new(
                Stage::Pattern,
                "not_allowed_pattern",
                format!(
                    "the statement matches none of the allow patterns of role {}",
                    role.name
                ),
            ));
        }
        Ok(())
    }
}

fn is_catalog_schema(dialect: Dialect, schema: &str) -> bool {
    match dialect {
        Dialect::Postgres => schema == "pg_catalog" || schema == "information_schema",
        Dialect::Mysql => schema.eq_ignore_ascii_case("information_schema"),
    }
}

impl Check for TablePermission {
    fn check(&self, req: &mut SqlRequest) -> Result<(), Refusal> {
        let Some(role) = role(&self.acl, req) else {
            return Err(no_access(req.database()));
        };
        let a = parsed(&self.acl, req)?;
        let dialect = req.dialect();
        for s in &a.statements {
            let kind = s.kind.as_str();
            let needs_grant = matches!(s.kind, Kind::Ddl | Kind::Admin | Kind::Call);
            if needs_grant && !role.allows_statement(kind) {
                return Err(Refusal::new(
                    Stage::TablePermission,
                    "statement_kind",
                    format!("role {} may not run {kind} statements", role.name),
                ));
            }
            check_tables(role, s, dialect, req.database())?;
            for (f, class) in function_classes(s) {
                if class == FunctionClass::Unknown && !role.allows_function(f) {
                    return Err(Refusal::new(
                        Stage::TablePermission,
                        "function_not_allowed",
                        format!(
                            "role {} may not call function {f}; list it in the role's functions",
                            role.name
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

fn check_tables(
    role: &Role,
    s: &Analysed,
    dialect: Dialect,
    database: &str,
) -> Result<(), Refusal> {
    for t in &s.tables {
        // PostgreSQL searches pg_catalog before the search path, so an
        // unqualified `pg_…` name is a catalog relation.
        let schema = match (&t.schema, dialect) {
            (Some(s), _) => s.as_str(),
            (None, Dialect::Postgres) if t.name.starts_with("pg_") => "pg_catalog",
            (None, _) => dialect.default_schema(database),
        };
        if is_catalog_schema(dialect, schema) {
            if role.config.catalog && t.op == TableOp::Select {
                continue;
            }
            return Err(Refusal::new(
                Stage::TablePermission,
                "catalog",
                format!(
                    "role {} may not {} the system catalog ({schema}.{})",
                    role.name,
                    t.op.as_str(),
                    t.name
                ),
            ));
        }
        let allowed = role
            .table_ops(schema, &t.name)
            .is_some_and(|ops| ops.contains(&t.op));
        if !allowed {
            return Err(Refusal::new(
                Stage::TablePermission,
                "table_permission",
                format!(
                    "role {} may not {} {schema}.{}",
                    role.name,
                    t.op.as_str(),
                    t.name
                ),
            ));
        }
    }
    Ok(())
}

/// Weights of the complexity score.
const JOIN: u32 = 2;
const SUBQUERY: u32 = 2;
const CARTESIAN: u32 = 10;
const SET_OPERATION: u32 = 1;

/// The complexity score of one statement.
pub(crate) fn score(c: &crate::analysis::Complexity) -> u32 {
    c.joins
        .saturating_mul(JOIN)
        .saturating_add(c.subqueries.saturating_mul(SUBQUERY))
        .saturating_add(c.cartesian.saturating_mul(CARTESIAN))
        .saturating_add(c.set_operations.saturating_mul(SET_OPERATION))
}

impl Check for Complexity {
    fn check(&self, req: &mut SqlRequest) -> Result<(), Refusal> {
        let Some(role) = role(&self.acl, req) else {
            return Err(no_access(req.database()));
        };
        let a = parsed(&self.acl, req)?;
        for s in &a.statements {
            if s.complexity.unbounded_writes > 0 && !role.config.allow_unbounded_writes {
                return Err(Refusal::new(
                    Stage::Complexity,
                    "unbounded_write",
                    format!(
                        "UPDATE or DELETE without WHERE (or TRUNCATE) is refused for role {}; add a WHERE clause",
                        role.name
                    ),
                ));
            }
            let score = score(&s.complexity);
            if score > role.config.max_complexity {
                let c = s.complexity;
                return Err(Refusal::new(
                    Stage::Complexity,
                    "too_complex",
                    format!(
                        "complexity {score} exceeds {} for role {} ({} joins, {} subqueries, {} cartesian products, {} set operations)",
                        role.config.max_complexity,
                        role.name,
                        c.joins,
                        c.subqueries,
                        c.cartesian,
                        c.set_operations
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// What the limit layer decided for a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitAnnotation {
    /// The statement with a `LIMIT` injected or lowered, when it changed.
    pub rewritten: Option<Arc<str>>,
    /// The row cap the relay enforces.
    pub row_cap: Option<u64>,
}

impl Check for Limit {
    fn check(&self, req: &mut SqlRequest) -> Result<(), Refusal> {
        let Some(role) = role(&self.acl, req) else {
            return Err(no_access(req.database()));
        };
        let Some(cap) = role.config.row_limit else {
            return Ok(());
        };
        let a = parsed(&self.acl, req)?;
        let mut changed = false;
        let mut out = String::with_capacity(a.canonical.len() + 16);
        for (i, s) in a.statements.iter().enumerate() {
            if i > 0 {
                out.push_str("; ");
            }
            match limited(s, cap) {
                Some(stmt) => {
                    changed = true;
                    out.push_str(&stmt.to_string());
                }
                None => out.push_str(&s.statement.to_string()),
            }
        }
        req.set_limit_annotation(LimitAnnotation {
            rewritten: changed.then(|| Arc::from(out)),
            row_cap: Some(cap),
        });
        Ok(())
    }
}

/// The statement with `LIMIT cap` injected (no limit) or lowered (a larger
/// literal limit); `None` when it needs no change.
fn limited(s: &Analysed, cap: u64) -> Option<Statement> {
    let Statement::Query(q) = &s.statement else {
        return None;
    };
    if !matches!(s.kind, Kind::Query) {
        return None;
    }
    let cap_expr = || Expr::value(Value::Number(cap.to_string(), false));
    if s.limitable {
        let mut q = q.clone();
        q.limit_clause = Some(LimitClause::LimitOffset {
            limit: Some(cap_expr()),
            offset: None,
            limit_by: vec![],
        });
        return Some(Statement::Query(q));
    }
    let literal = |e: &Expr| match e {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => n.parse::<u64>().ok(),
            _ => None,
        },
        _ => None,
    };
    let mut q = q.clone();
    let changed = match &mut q.limit_clause {
        Some(LimitClause::LimitOffset { limit: Some(l), .. })
        | Some(LimitClause::OffsetCommaLimit { limit: l, .. }) => match literal(l) {
            Some(n) if n > cap => {
                *l = cap_expr();
                true
            }
            _ => false,
        },
        _ => false,
    };
    changed.then_some(Statement::Query(q))
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config { cases: 20_000, .. Default::default() })]

        /// Skipping runs finds what taking every byte through the `match`
        /// finds, on text made mostly of the bytes that matter to the scan.
        #[test]
        fn the_fast_scan_agrees_with_the_byte_at_a_time_one(
            sql in "([-'\"`#/*$();!M\\\n\t \u{b}é]|[a-z0-9]{1,3}|\\$[a-z]?\\$|/\\*!?|\\*/|--){0,40}"
        ) {
            for dialect in [Dialect::Postgres, Dialect::Mysql] {
                proptest::prop_assert_eq!(scan(&sql, dialect), scan_with(&sql, dialect, false), "{:?} {:?}", dialect, sql);
            }
        }
    }

    #[test]
    fn scan_counts_outside_quotes_and_comments() {
        let pg = |s| scan(s, Dialect::Postgres);
        let my = |s| scan(s, Dialect::Mysql);
        assert_eq!(pg("SELECT 1").statements, 1);
        assert_eq!(pg("SELECT 1;").statements, 1);
        assert_eq!(pg("SELECT 1; SELECT 2").statements, 2);
        assert_eq!(pg("SELECT ';'").statements, 1);
        assert_eq!(pg("SELECT $$;$$").statements, 1);
        assert_eq!(pg("SELECT $a$ ; $ $a$").statements, 1);
        assert_eq!(pg("SELECT 1 /* ; /* ; */ ; */").statements, 1);
        assert_eq!(pg("SELECT 1 -- ;\n").statements, 1);
        assert_eq!(my("SELECT 'a\\'; DROP TABLE t; -- '").statements, 1);
        assert_eq!(pg("SELECT 'a\\'; DROP TABLE t; -- '").statements, 2);
        assert_eq!(pg("SELECT ((((1))))").depth, 4);
        assert_eq!(pg("SELECT '(((('").depth, 0);
        assert!(my("SELECT /*! 1 */").executable_comment);
        assert!(my("SELECT /*M!100000 1 */").executable_comment);
        assert!(!my("SELECT '/*!'").executable_comment);
        // Operators next to words are ordinary bytes; only their comment
        // forms are special.
        assert_eq!(pg("SELECT a-b;c/d").statements, 2);
        assert_eq!(pg("SELECT a-b--;c\n").statements, 1);
        assert_eq!(pg("SELECT a#b;c").statements, 2);
        assert_eq!(my("SELECT a#b;c").statements, 1);
        assert_eq!(pg("SELECT f(g(1))").depth, 2);
        assert_eq!(pg("SELECT 1;;").statements, 1);
        assert_eq!(pg(" ; ;").statements, 0);
        assert_eq!(pg("SELECT\u{b}1;\u{b}").statements, 2);
        assert_eq!(pg("SELECT é;x$y;").statements, 2);
    }
}
