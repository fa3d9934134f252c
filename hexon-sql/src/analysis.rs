//! Parse once, walk the whole tree, and record everything the layers decide
//! on: statement kind, tables × operations (with CTE scoping), functions,
//! writes and side effects wherever they hide, session changes, and
//! complexity figures.
//!
//! The walk uses sqlparser's derived [`Visitor`], so every node of the tree is
//! visited, including ones added by future parser versions. Where the visitor
//! cannot tell the pipeline what a node means (a table factor kind it does not
//! know, a `TABLE name` set expression), the analysis either handles it
//! explicitly or marks the statement unclassifiable, and it is refused.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::ops::ControlFlow;

use sqlparser::ast::{
    Expr, FromTable, ObjectName, ObjectNamePart, OnInsert, Query, Select, SetExpr, Statement,
    TableFactor, TableObject, Value, ValueWithSpan, Visit, VisitMut, Visitor, VisitorMut,
};
use sqlparser::parser::Parser;

use crate::dialect::Dialect;
use crate::functions::{self, FunctionClass};
use crate::request::{Refusal, Stage};

/// Bounds on the parse itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseLimits {
    /// Recursion limit handed to the parser (nesting of expressions and
    /// subqueries).
    pub max_depth: usize,
}

impl Default for ParseLimits {
    fn default() -> Self {
        Self { max_depth: 64 }
    }
}

/// An operation on a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum TableOp {
    /// Read rows.
    Select,
    /// Add rows.
    Insert,
    /// Change rows.
    Update,
    /// Remove rows (`DELETE`, `TRUNCATE`).
    Delete,
}

impl TableOp {
    /// Lower-case SQL keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            TableOp::Select => "select",
            TableOp::Insert => "insert",
            TableOp::Update => "update",
            TableOp::Delete => "delete",
        }
    }
}

/// A table named by a statement, with what the statement does to it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableUse {
    /// Database (MySQL `db.t`, PostgreSQL `db.schema.t`), if named.
    pub database: Option<String>,
    /// Schema, if named (`None`: the dialect's default schema).
    pub schema: Option<String>,
    /// Table (or view) name, lower-cased unless it was quoted.
    pub name: String,
    /// What is done to it.
    pub op: TableOp,
}

/// What kind of statement the top level is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Kind {
    /// `SELECT`, `VALUES`, `WITH … SELECT`, `TABLE t`.
    Query,
    /// `INSERT` / `REPLACE`.
    Insert,
    /// `UPDATE`.
    Update,
    /// `DELETE`.
    Delete,
    /// `MERGE`.
    Merge,
    /// `EXPLAIN` (with `analyze`: it runs the statement).
    Explain {
        /// `EXPLAIN ANALYZE` executes the statement.
        analyze: bool,
    },
    /// `SHOW …`, `DESCRIBE`.
    Show,
    /// `BEGIN`, `COMMIT`, `ROLLBACK`, savepoints.
    Transaction,
    /// `SET`, `RESET`, `DISCARD`.
    Session,
    /// `USE db`.
    Use,
    /// SQL-level `PREPARE`, `EXECUTE`, `DEALLOCATE`.
    Prepared,
    /// `DECLARE … CURSOR`, `FETCH`, `CLOSE`.
    Cursor,
    /// `COPY … TO STDOUT` / `FROM STDIN`.
    Copy,
    /// Schema changes (`CREATE`, `ALTER`, `DROP`, `TRUNCATE`, `COMMENT`, …).
    Ddl,
    /// Privilege and role administration (`GRANT`, `REVOKE`, `CREATE ROLE`, …).
    Admin,
    /// `CALL procedure(…)`.
    Call,
}

impl Kind {
    /// Lower-case name, for refusals and the query log.
    pub fn as_str(&self) -> &'static str {
        match self {
            Kind::Query => "query",
            Kind::Insert => "insert",
            Kind::Update => "update",
            Kind::Delete => "delete",
            Kind::Merge => "merge",
            Kind::Explain { .. } => "explain",
            Kind::Show => "show",
            Kind::Transaction => "transaction",
            Kind::Session => "session",
            Kind::Use => "use",
            Kind::Prepared => "prepared",
            Kind::Cursor => "cursor",
            Kind::Copy => "copy",
            Kind::Ddl => "ddl",
            Kind::Admin => "admin",
            Kind::Call => "call",
        }
    }
}

/// A change to the session a statement asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionChange {
    /// `SET name = …` / `RESET name` (lower-case name; `@x` for MySQL user
    /// variables).
    Variable(String),
    /// `SET GLOBAL …`: changes the server for everyone.
    Global(String),
    /// `SET ROLE`, `SET SESSION AUTHORIZATION`, `RESET ROLE`: changes who
    /// the session is.
    Identity,
    /// `SET NAMES` / `SET CHARACTER SET`: changes how strings are read.
    Charset,
}

/// Figures the complexity layer scores.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Complexity {
    /// Joins (explicit `JOIN`s and comma-separated `FROM` items beyond the first).
    pub joins: u32,
    /// Subqueries (in expressions, derived tables, CTE bodies).
    pub subqueries: u32,
    /// Joins without a condition (`CROSS JOIN`, comma joins, `JOIN` without `ON`).
    pub cartesian: u32,
    /// `UNION` / `INTERSECT` / `EXCEPT` operations.
    pub set_operations: u32,
    /// `UPDATE` or `DELETE` without `WHERE`.
    pub unbounded_writes: u32,
}

/// One statement, analysed.
#[derive(Debug, Clone)]
pub struct Analysed {
    /// The syntax tree.
    pub statement: Statement,
    /// Top-level kind.
    pub kind: Kind,
    /// Tables × operations, CTE names resolved away.
    pub tables: Vec<TableUse>,
    /// Function names called (lower-case, qualified as written).
    pub functions: Vec<String>,
    /// Writes and side effects found anywhere in the tree (for read-only roles).
    pub effects: Vec<String>,
    /// Session changes asked for.
    pub session: Vec<SessionChange>,
    /// `USE db` target.
    pub switches_database: Option<String>,
    /// Complexity figures.
    pub complexity: Complexity,
    /// A top-level query with no `LIMIT`/`FETCH` (where a limit can be injected).
    pub limitable: bool,
}

/// A parsed, analysed statement string (one or more statements).
#[derive(Debug)]
pub struct Analysis {
    /// The statements, in order.
    pub statements: Vec<Analysed>,
    /// The canonical text: the statements re-serialised from the tree.
    pub canonical: String,
    /// The canonical text with every literal replaced by `?`.
    pub normalized: String,
}

impl Analysis {
    /// Parse `sql` in `dialect` and analyse every statement.
    ///
    /// # Errors
    /// Refused at [`Stage::Parse`] when the text does not parse, contains no
    /// statement, contains something the analysis cannot classify, or does
    /// not survive the canonical round trip (re-serialised and parsed again,
    /// it must give the same tree; otherwise what the server would run could
    /// differ from what was checked).
    pub fn parse(sql: &str, dialect: Dialect, limits: &ParseLimits) -> Result<Self, Refusal> {
        let parse = |text: &str| {
            Parser::new(dialect.parser_dialect())
                .with_recursion_limit(limits.max_depth)
                .try_with_sql(text)
                .and_then(|mut p| p.parse_statements())
        };
        let statements = parse(sql).map_err(|e| {
            Refusal::new(
                Stage::Parse,
                "unparseable",
                format!("the statement does not parse: {e}"),
            )
        })?;
        if statements.is_empty() {
            return Err(Refusal::new(Stage::Parse, "empty", "no statement"));
        }
        let mut canonical = String::with_capacity(sql.len());
        for (i, s) in statements.iter().enumerate() {
            if i > 0 {
                canonical.push_str("; ");
            }
            let _ = write!(canonical, "{s}");
        }
        // The parse is a function of the text, and the parser skips leading
        // whitespace and trailing whitespace and semicolons: when the client
        // already wrote the canonical text, the round trip would parse the
        // same text again, so it is known to give the same tree.
        let written_canonically = sql
            .trim_start()
            .trim_end_matches(|c: char| c == ';' || c.is_whitespace())
            == canonical;
        if !written_canonically && parse(&canonical).map_or(true, |again| again != statements) {
            return Err(Refusal::new(
                Stage::Parse,
                "round_trip",
                "the statement does not survive re-serialisation unchanged; write it more plainly",
            ));
        }
        let mut normalized = String::with_capacity(canonical.len());
        let mut analysed = Vec::with_capacity(statements.len());
        for (i, statement) in statements.into_iter().enumerate() {
            let mut masked = statement.clone();
            let _ = VisitMut::visit(&mut masked, &mut MaskLiterals);
            if i > 0 {
                normalized.push_str("; ");
            }
            let _ = write!(normalized, "{masked}");
            analysed.push(analyse(statement, dialect)?);
        }
        Ok(Self {
            statements: analysed,
            canonical,
            normalized,
        })
    }
}

struct MaskLiterals;

impl VisitorMut for MaskLiterals {
    type Break = ();
    fn pre_visit_value(&mut self, value: &mut ValueWithSpan) -> ControlFlow<()> {
        if !matches!(value.value, Value::Placeholder(_)) {
            value.value = Value::Placeholder("?".into());
        }
        ControlFlow::Continue(())
    }
}

fn unclassified(what: impl std::fmt::Display) -> Refusal {
    Refusal::new(
        Stage::Parse,
        "unclassified",
        format!("the bastion cannot classify {what}, so it is refused"),
    )
}

/// The lower-case (unless quoted) parts of a name.
fn name_parts(name: &ObjectName) -> Result<Vec<String>, Refusal> {
    name.0
        .iter()
        .map(|part| match part {
            ObjectNamePart::Identifier(id) if id.quote_style.is_some() => Ok(id.value.clone()),
            ObjectNamePart::Identifier(id) => Ok(id.value.to_lowercase()),
            ObjectNamePart::Function(_) => Err(unclassified("a name computed by a function")),
        })
        .collect()
}

fn analyse(statement: Statement, dialect: Dialect) -> Result<Analysed, Refusal> {
    let kind = kind_of(&statement)?;
    let mut w = Walker {
        dialect,
        scopes: Vec::new(),
        write_targets: Vec::new(),
        function_tables: HashSet::new(),
        tables: Vec::new(),
        functions: Vec::new(),
        effects: Vec::new(),
        session: Vec::new(),
        switches_database: None,
        complexity: Complexity::default(),
        error: None,
    };
    let _ = statement.visit(&mut w);
    if let Some(e) = w.error {
        return Err(e);
    }
    let limitable = match &statement {
        Statement::Query(q) => {
            q.limit_clause.is_none()
                && q.fetch.is_none()
                && matches!(
                    *q.body,
                    SetExpr::Select(_) | SetExpr::SetOperation { .. } | SetExpr::Query(_)
                )
        }
        _ => false,
    };
    let mut tables = w.tables;
    tables.sort_by(|a, b| (&a.schema, &a.name, a.op).cmp(&(&b.schema, &b.name, b.op)));
    tables.dedup();
    let mut functions = w.functions;
    functions.sort();
    functions.dedup();
    Ok(Analysed {
        statement,
        kind,
        tables,
        functions,
        effects: w.effects,
        session: w.session,
        switches_database: w.switches_database,
        complexity: w.complexity,
        limitable,
    })
}

fn kind_of(s: &Statement) -> Result<Kind, Refusal> {
    Ok(match s {
        Statement::Query(_) => Kind::Query,
        Statement::Insert(_) => Kind::Insert,
        Statement::Update(_) => Kind::Update,
        Statement::Delete(_) => Kind::Delete,
        Statement::Merge(_) => Kind::Merge,
        Statement::Explain { analyze, .. } => Kind::Explain { analyze: *analyze },
        Statement::ExplainTable { .. }
        | Statement::ShowFunctions { .. }
        | Statement::ShowVariable { .. }
        | Statement::ShowStatus { .. }
        | Statement::ShowVariables { .. }
        | Statement::ShowCreate { .. }
        | Statement::ShowColumns { .. }
        | Statement::ShowDatabases { .. }
        | Statement::ShowSchemas { .. }
        | Statement::ShowCharset(_)
        | Statement::ShowTables { .. }
        | Statement::ShowViews { .. }
        | Statement::ShowCollation { .. } => Kind::Show,
        Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Savepoint { .. }
        | Statement::ReleaseSavepoint { .. } => Kind::Transaction,
        Statement::Set(_) | Statement::Reset(_) | Statement::Discard { .. } => Kind::Session,
        Statement::Use(_) => Kind::Use,
        Statement::Prepare { .. } | Statement::Execute { .. } | Statement::Deallocate { .. } => {
            Kind::Prepared
        }
        Statement::Declare { .. } | Statement::Fetch { .. } | Statement::Close { .. } => {
            Kind::Cursor
        }
        Statement::Copy { .. } => Kind::Copy,
        Statement::Call(_) => Kind::Call,
        Statement::CreateView(_)
        | Statement::CreateTable(_)
        | Statement::CreateIndex(_)
        | Statement::CreateSchema { .. }
        | Statement::CreateSequence { .. }
        | Statement::CreateType { .. }
        | Statement::CreateDomain(_)
        | Statement::CreateFunction(_)
        | Statement::CreateTrigger(_)
        | Statement::CreateProcedure { .. }
        | Statement::CreateExtension(_)
        | Statement::AlterTable(_)
        | Statement::AlterIndex { .. }
        | Statement::AlterView(_)
        | Statement::AlterSchema(_)
        | Statement::AlterType(_)
        | Statement::AlterFunction(_)
        | Statement::Drop { .. }
        | Statement::DropFunction(_)
        | Statement::DropProcedure { .. }
        | Statement::DropTrigger(_)
        | Statement::DropExtension(_)
        | Statement::DropDomain(_)
        | Statement::Truncate(_)
        | Statement::Comment { .. }
        | Statement::RenameTable(_)
        | Statement::RefreshMaterializedView(_)
        | Statement::Analyze(_)
        | Statement::Vacuum(_) => Kind::Ddl,
        Statement::Grant(_)
        | Statement::Revoke(_)
        | Statement::GrantRole(_)
        | Statement::RevokeRole(_)
        | Statement::CreateRole(_)
        | Statement::AlterRole { .. }
        | Statement::CreateUser(_)
        | Statement::AlterUser(_)
        | Statement::AlterDefaultPrivileges(_)
        | Statement::CreateDatabase { .. }
        | Statement::CreatePolicy(_)
        | Statement::AlterPolicy(_)
        | Statement::DropPolicy(_) => Kind::Admin,
        other => {
            let first = other.to_string();
            let word = first
                .split_whitespace()
                .next()
                .unwrap_or("this statement")
                .to_uppercase();
            return Err(unclassified(format_args!("a {word} statement")));
        }
    })
}

struct Scope {
    query: *const Query,
    /// CTE names visible anywhere inside this query (from enclosing queries).
    inherited: Vec<String>,
    /// This query's own CTEs: name and definition.
    ctes: Vec<(String, *const Query)>,
    recursive: bool,
}

struct Walker {
    dialect: Dialect,
    scopes: Vec<Scope>,
    /// Relation names (by address in the tree) that a DML statement writes,
    /// with the operations.
    write_targets: Vec<(*const ObjectName, &'static [TableOp])>,
    /// `FROM f(args)` names: functions, not tables.
    function_tables: HashSet<*const ObjectName>,
    tables: Vec<TableUse>,
    functions: Vec<String>,
    effects: Vec<String>,
    session: Vec<SessionChange>,
    switches_database: Option<String>,
    complexity: Complexity,
    error: Option<Refusal>,
}

impl Walker {
    fn fail(&mut self, e: Refusal) -> ControlFlow<()> {
        self.error.get_or_insert(e);
        ControlFlow::Break(())
    }

    fn cte_visible(&self, name: &str) -> bool {
        self.scopes.last().is_some_and(|s| {
            s.inherited.iter().any(|c| c == name) || s.ctes.iter().any(|(c, _)| c == name)
        })
    }

    fn table(&mut self, parts: Vec<String>, op: TableOp) -> Result<(), Refusal> {
        let mut it = parts.into_iter().rev();
        let name = it
            .next()
            .ok_or_else(|| unclassified("an empty table name"))?;
        let schema = it.next();
        let database = it.next();
        if it.next().is_some() {
            return Err(unclassified("a table name with more than three parts"));
        }
        // MySQL has no schemas: `db.t` names a database.
        let (database, schema) = match self.dialect {
            Dialect::Mysql => {
                if database.is_some() {
                    return Err(unclassified("a three-part table name in MySQL"));
                }
                (schema.clone(), schema)
            }
            Dialect::Postgres => (database, schema),
        };
        self.tables.push(TableUse {
            database,
            schema,
            name,
            op,
        });
        Ok(())
    }

    fn function(&mut self, name: &ObjectName) -> Result<(), Refusal> {
        let parts = name_parts(name)?;
        self.functions.push(parts.join("."));
        Ok(())
    }

    fn statement(&mut self, s: &Statement) -> Result<(), Refusal> {
        const INS: &[TableOp] = &[TableOp::Insert];
        const UPSERT: &[TableOp] = &[TableOp::Insert, TableOp::Update];
        const UPD: &[TableOp] = &[TableOp::Update];
        const DEL: &[TableOp] = &[TableOp::Delete];
        const MERGE: &[TableOp] = &[TableOp::Insert, TableOp::Update, TableOp::Delete];
        match s {
            Statement::Query(_) => {}
            Statement::Insert(ins) => {
                self.effects.push("INSERT".into());
                match &ins.table {
                    TableObject::TableName(n) => {
                        let ops = if ins.on.is_some() || ins.replace_into {
                            UPSERT
                        } else {
                            INS
                        };
                        self.write_targets.push((n as *const _, ops));
                    }
                    _ => return Err(unclassified("INSERT into a table function")),
                }
                if let Some(OnInsert::OnConflict(_) | OnInsert::DuplicateKeyUpdate(_)) = &ins.on {
                    self.effects.push("upsert".into());
                }
            }
            Statement::Update(u) => {
                self.effects.push("UPDATE".into());
                if u.selection.is_none() {
                    self.complexity.unbounded_writes += 1;
                }
                // Every table named in the UPDATE's own table list (MySQL
                // multi-table updates included) counts as written.
                collect_factor_names(&u.table.relation, UPD, &mut self.write_targets);
                for j in &u.table.joins {
                    collect_factor_names(&j.relation, UPD, &mut self.write_targets);
                }
            }
            Statement::Delete(d) => {
                self.effects.push("DELETE".into());
                if d.selection.is_none() {
                    self.complexity.unbounded_writes += 1;
                }
                let from = match &d.from {
                    FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) => t,
                };
                for twj in from {
                    collect_factor_names(&twj.relation, DEL, &mut self.write_targets);
                    for j in &twj.joins {
                        collect_factor_names(&j.relation, DEL, &mut self.write_targets);
                    }
                }
                // `DELETE t1, t2 FROM …` names its targets (often aliases)
                // before FROM: every table in FROM is already counted as
                // deleted from, which covers them.
            }
            Statement::Merge(m) => {
                self.effects.push("MERGE".into());
                collect_factor_names(&m.table, MERGE, &mut self.write_targets);
            }
            Statement::Explain { analyze, .. } => {
                if *analyze {
                    self.effects
                        .push("EXPLAIN ANALYZE (runs the statement)".into());
                }
            }
            Statement::Copy {
                source, to, target, ..
            } => {
                use sqlparser::ast::{CopySource, CopyTarget};
                match target {
                    CopyTarget::Stdin | CopyTarget::Stdout => {}
                    _ => {
                        return Err(Refusal::new(
                            Stage::ReadOnly,
                            "copy_server_side",
                            "COPY to or from a server file or program is refused; use COPY … TO STDOUT / FROM STDIN",
                        ));
                    }
                }
                match source {
                    CopySource::Table { table_name, .. } => {
                        let parts = name_parts(table_name)?;
                        if *to {
                            self.table(parts, TableOp::Select)?;
                        } else {
                            self.effects.push("COPY FROM".into());
                            self.table(parts, TableOp::Insert)?;
                        }
                    }
                    CopySource::Query(_) if *to => {}
                    CopySource::Query(_) => return Err(unclassified("COPY from a query")),
                }
            }
            Statement::Call(f) => {
                self.effects.push("CALL".into());
                self.function(&f.name)?;
            }
            Statement::Truncate(t) => {
                self.effects.push("TRUNCATE".into());
                self.complexity.unbounded_writes += 1;
                for target in &t.table_names {
                    let parts = name_parts(&target.name)?;
                    self.table(parts, TableOp::Delete)?;
                }
            }
            Statement::Set(set) => self.set(set)?,
            Statement::Reset(r) => {
                use sqlparser::ast::Reset;
                match &r.reset {
                    Reset::ALL => self.session.push(SessionChange::Variable("all".into())),
                    Reset::SessionAuthorization => self.session.push(SessionChange::Identity),
                    Reset::ConfigurationParameter(n) => {
                        let name = name_parts(n)?.join(".");
                        if name == "role" || name == "session_authorization" {
                            self.session.push(SessionChange::Identity);
                        } else {
                            self.session.push(SessionChange::Variable(name));
                        }
                    }
                }
            }
            Statement::Discard { .. } => {
                self.session.push(SessionChange::Variable("discard".into()))
            }
            Statement::Use(u) => {
                use sqlparser::ast::Use;
                match u {
                    Use::Object(n) | Use::Database(n) | Use::Schema(n) => {
                        self.switches_database = Some(name_parts(n)?.join("."));
                    }
                    _ => return Err(unclassified("this USE statement")),
                }
            }
            Statement::Prepare { .. }
            | Statement::Execute { .. }
            | Statement::Deallocate { .. }
            | Statement::Declare { .. }
            | Statement::Fetch { .. }
            | Statement::Close { .. } => {}
            other => {
                // DDL and privilege changes are writes as a whole; the
                // table-permission layer refuses them by kind.
                let kind = kind_of(other)?;
                if !matches!(kind, Kind::Show | Kind::Transaction | Kind::Query) {
                    self.effects.push(kind.as_str().to_uppercase());
                }
            }
        }
        Ok(())
    }

    fn set(&mut self, set: &sqlparser::ast::Set) -> Result<(), Refusal> {
        use sqlparser::ast::{ContextModifier, Set};
        let scoped = |scope: &Option<ContextModifier>, name: String| match scope {
            Some(ContextModifier::Global) => SessionChange::Global(name),
            _ => SessionChange::Variable(name),
        };
        match set {
            Set::SingleAssignment {
                scope, variable, ..
            } => {
                let name = name_parts(variable)?.join(".");
                if name == "role" || name == "session_authorization" {
                    self.session.push(SessionChange::Identity);
                } else {
                    self.session.push(scoped(scope, name));
                }
            }
            Set::ParenthesizedAssignments { variables, .. } => {
                for v in variables {
                    let name = name_parts(v)?.join(".");
                    self.session.push(SessionChange::Variable(name));
                }
            }
            Set::MultipleAssignments { assignments } => {
                for a in assignments {
                    let name = name_parts(&a.name)?.join(".");
                    if name == "role" || name == "session_authorization" {
                        self.session.push(SessionChange::Identity);
                    } else {
                        self.session.push(scoped(&a.scope, name));
                    }
                }
            }
            Set::SetSessionAuthorization(_) | Set::SetRole { .. } => {
                self.session.push(SessionChange::Identity);
            }
            Set::SetTimeZone { .. } => self
                .session
                .push(SessionChange::Variable("timezone".into())),
            Set::SetNames { .. } | Set::SetNamesDefault {} => {
                self.session.push(SessionChange::Charset)
            }
            Set::SetTransaction { modes, .. } => {
                use sqlparser::ast::{TransactionAccessMode, TransactionMode};
                for m in modes {
                    match m {
                        TransactionMode::AccessMode(TransactionAccessMode::ReadWrite) => self
                            .session
                            .push(SessionChange::Variable("transaction_read_only".into())),
                        TransactionMode::AccessMode(TransactionAccessMode::ReadOnly) => {}
                        TransactionMode::IsolationLevel(_) => self
                            .session
                            .push(SessionChange::Variable("transaction_isolation".into())),
                    }
                }
            }
            _ => return Err(unclassified("this SET statement")),
        }
        Ok(())
    }
}

/// Record the table names directly in a table factor (through nested joins)
/// as written with `ops`.
fn collect_factor_names(
    f: &TableFactor,
    ops: &'static [TableOp],
    out: &mut Vec<(*const ObjectName, &'static [TableOp])>,
) {
    match f {
        TableFactor::Table { name, .. } => out.push((name as *const _, ops)),
        TableFactor::NestedJoin {
            table_with_joins, ..
        } => {
            collect_factor_names(&table_with_joins.relation, ops, out);
            for j in &table_with_joins.joins {
                collect_factor_names(&j.relation, ops, out);
            }
        }
        _ => {}
    }
}

fn set_expr_tables(e: &SetExpr, out: &mut Vec<(Option<String>, String)>, ops: &mut u32) {
    match e {
        SetExpr::Table(t) => {
            if let Some(name) = &t.table_name {
                let plain = |i: &sqlparser::ast::Ident| {
                    if i.quote_style.is_some() {
                        i.value.clone()
                    } else {
                        i.value.to_lowercase()
                    }
                };
                out.push((t.schema_name.as_ref().map(plain), plain(name)));
            }
        }
        SetExpr::SetOperation { left, right, .. } => {
            *ops += 1;
            set_expr_tables(left, out, ops);
            set_expr_tables(right, out, ops);
        }
        _ => {}
    }
}

impl Visitor for Walker {
    type Break = ();

    fn pre_visit_statement(&mut self, s: &Statement) -> ControlFlow<()> {
        match self.statement(s) {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => self.fail(e),
        }
    }

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        if !q.pipe_operators.is_empty() || q.settings.is_some() || q.format_clause.is_some() {
            return self.fail(unclassified("pipe operators, SETTINGS or FORMAT clauses"));
        }
        if !q.locks.is_empty() {
            self.effects
                .push("row locks (FOR UPDATE / FOR SHARE)".into());
        }
        if q.for_clause.is_some() {
            return self.fail(unclassified("a FOR XML/JSON clause"));
        }
        let me = q as *const Query;
        let inherited = match self.scopes.last() {
            None => Vec::new(),
            Some(parent) => {
                let mut v = parent.inherited.clone();
                match parent.ctes.iter().position(|(_, def)| *def == me) {
                    // A non-recursive CTE sees only the CTEs before it: in
                    // `WITH t AS (SELECT * FROM t)` the inner `t` is the
                    // real table, and must be checked as one.
                    Some(i) if !parent.recursive => {
                        v.extend(parent.ctes.iter().take(i).map(|(n, _)| n.clone()));
                    }
                    _ => v.extend(parent.ctes.iter().map(|(n, _)| n.clone())),
                }
                v
            }
        };
        if !self.scopes.is_empty() {
            self.complexity.subqueries += 1;
        }
        let (ctes, recursive) = match &q.with {
            Some(w) => (
                w.cte_tables
                    .iter()
                    .map(|c| {
                        let n = if c.alias.name.quote_style.is_some() {
                            c.alias.name.value.clone()
                        } else {
                            c.alias.name.value.to_lowercase()
                        };
                        (n, &*c.query as *const Query)
                    })
                    .collect(),
                w.recursive,
            ),
            None => (Vec::new(), false),
        };
        self.scopes.push(Scope {
            query: me,
            inherited,
            ctes,
            recursive,
        });
        // `TABLE t` is a set expression holding plain strings, not a
        // relation the visitor reports.
        let mut plain = Vec::new();
        let mut set_ops = 0;
        set_expr_tables(&q.body, &mut plain, &mut set_ops);
        self.complexity.set_operations += set_ops;
        for (schema, name) in plain {
            let parts: Vec<String> = schema.into_iter().chain(std::iter::once(name)).collect();
            let lowered = parts;
            if lowered.len() == 1 && lowered.first().is_some_and(|n| self.cte_visible(n)) {
                continue;
            }
            if let Err(e) = self.table(lowered, TableOp::Select) {
                return self.fail(e);
            }
        }
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        match self.scopes.pop() {
            Some(s) if std::ptr::eq(s.query, q) => ControlFlow::Continue(()),
            _ => self.fail(unclassified("an unbalanced query tree")),
        }
    }

    fn pre_visit_select(&mut self, s: &Select) -> ControlFlow<()> {
        if s.into.is_some() {
            self.effects.push("SELECT … INTO".into());
        }
        if !s.lateral_views.is_empty() || s.prewhere.is_some() || !s.connect_by.is_empty() {
            return self.fail(unclassified("LATERAL VIEW, PREWHERE or CONNECT BY"));
        }
        let mut items = 0u32;
        for twj in &s.from {
            items += 1;
            for j in &twj.joins {
                use sqlparser::ast::{JoinConstraint, JoinOperator as J};
                self.complexity.joins += 1;
                let constraint = match &j.join_operator {
                    J::Join(c)
                    | J::Inner(c)
                    | J::Left(c)
                    | J::LeftOuter(c)
                    | J::Right(c)
                    | J::RightOuter(c)
                    | J::FullOuter(c)
                    | J::CrossJoin(c)
                    | J::Semi(c)
                    | J::LeftSemi(c)
                    | J::RightSemi(c)
                    | J::Anti(c)
                    | J::LeftAnti(c)
                    | J::RightAnti(c)
                    | J::StraightJoin(c) => Some(c),
                    _ => None,
                };
                if matches!(constraint, Some(JoinConstraint::None) | None) {
                    self.complexity.cartesian += 1;
                }
            }
        }
        if items > 1 {
            self.complexity.joins += items - 1;
            if s.selection.is_none() {
                self.complexity.cartesian += items - 1;
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, f: &TableFactor) -> ControlFlow<()> {
        match f {
            TableFactor::Table {
                name,
                args,
                with_hints,
                ..
            } => {
                if args.is_some() {
                    self.function_tables.insert(name as *const _);
                    if let Err(e) = self.function(name) {
                        return self.fail(e);
                    }
                }
                if !with_hints.is_empty() {
                    return self.fail(unclassified("table hints"));
                }
                ControlFlow::Continue(())
            }
            TableFactor::Derived { .. }
            | TableFactor::NestedJoin { .. }
            | TableFactor::UNNEST { .. } => ControlFlow::Continue(()),
            TableFactor::Function { name, .. } => match self.function(name) {
                Ok(()) => ControlFlow::Continue(()),
                Err(e) => self.fail(e),
            },
            TableFactor::TableFunction { .. } => ControlFlow::Continue(()),
            _ => self.fail(unclassified("this kind of FROM item")),
        }
    }

    fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<()> {
        let ptr = relation as *const ObjectName;
        if self.function_tables.contains(&ptr) {
            return ControlFlow::Continue(());
        }
        let parts = match name_parts(relation) {
            Ok(p) => p,
            Err(e) => return self.fail(e),
        };
        if let [only] = parts.as_slice() {
            if self.cte_visible(only) {
                return ControlFlow::Continue(());
            }
        }
        let ops: &[TableOp] = self
            .write_targets
            .iter()
            .find(|(p, _)| *p == ptr)
            .map(|(_, ops)| *ops)
            .unwrap_or(&[TableOp::Select]);
        for op in ops {
            if let Err(e) = self.table(parts.clone(), *op) {
                return self.fail(e);
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        match e {
            Expr::Function(f) => match self.function(&f.name) {
                Ok(()) => ControlFlow::Continue(()),
                Err(e) => self.fail(e),
            },
            _ => ControlFlow::Continue(()),
        }
    }
}

/// Classify every function an analysis calls, as (name, class).
pub fn function_classes(a: &Analysed) -> impl Iterator<Item = (&str, FunctionClass)> + '_ {
    a.functions
        .iter()
        .map(|f| (f.as_str(), functions::classify(f)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pg(sql: &str) -> Result<Analysis, Refusal> {
        Analysis::parse(sql, Dialect::Postgres, &ParseLimits::default())
    }

    fn tables(sql: &str) -> Vec<(String, TableOp)> {
        let a = pg(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        a.statements
            .iter()
            .flat_map(|s| s.tables.iter())
            .map(|t| {
                let n = match &t.schema {
                    Some(s) => format!("{s}.{}", t.name),
                    None => t.name.clone(),
                };
                (n, t.op)
            })
            .collect()
    }

    #[test]
    fn cte_names_are_not_tables_but_shadowed_self_references_are() {
        assert_eq!(tables("WITH x AS (SELECT 1) SELECT * FROM x"), vec![]);
        // Non-recursive: the inner `secret` is the real table.
        assert_eq!(
            tables("WITH secret AS (SELECT * FROM secret) SELECT * FROM secret"),
            vec![("secret".into(), TableOp::Select)]
        );
        // A CTE of an inner query does not hide an outer real table.
        assert_eq!(
            tables("SELECT * FROM secret, (WITH secret AS (SELECT 1) SELECT * FROM secret) s"),
            vec![("secret".into(), TableOp::Select)]
        );
        // Recursive CTEs see themselves.
        assert_eq!(
            tables(
                "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) SELECT * FROM r"
            ),
            vec![]
        );
    }

    #[test]
    fn writes_are_found_wherever_they_hide() {
        let a = pg("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d").unwrap();
        let s = &a.statements[0];
        assert_eq!(s.kind, Kind::Query);
        assert!(s.effects.iter().any(|e| e == "DELETE"), "{:?}", s.effects);
        assert_eq!(
            s.tables,
            vec![TableUse {
                database: None,
                schema: None,
                name: "t".into(),
                op: TableOp::Delete
            }]
        );
        let a = pg("SELECT * INTO newtable FROM t").unwrap();
        assert!(a.statements[0].effects.iter().any(|e| e.contains("INTO")));
        let a = pg("SELECT * FROM t FOR UPDATE").unwrap();
        assert!(
            a.statements[0]
                .effects
                .iter()
                .any(|e| e.contains("FOR UPDATE"))
        );
        // `TABLE t` is not in the parser's PostgreSQL grammar: refused, never
        // passed through unseen.
        assert_eq!(pg("TABLE secret").unwrap_err().stage, Stage::Parse);
    }

    #[test]
    fn update_and_insert_targets() {
        assert_eq!(
            tables("UPDATE accounts SET x = 1 FROM other WHERE accounts.id = other.id"),
            vec![
                ("accounts".into(), TableOp::Update),
                ("other".into(), TableOp::Select)
            ]
        );
        assert_eq!(
            tables("INSERT INTO public.a SELECT * FROM b ON CONFLICT DO NOTHING"),
            vec![
                ("b".into(), TableOp::Select),
                ("public.a".into(), TableOp::Insert),
                ("public.a".into(), TableOp::Update)
            ]
        );
    }

    #[test]
    fn canonical_and_normalized() {
        let a = pg("select  *  from t where a = 'x' and b = 3").unwrap();
        assert_eq!(a.canonical, "SELECT * FROM t WHERE a = 'x' AND b = 3");
        assert_eq!(a.normalized, "SELECT * FROM t WHERE a = ? AND b = ?");
    }

    #[test]
    fn canonical_input_skips_only_what_the_parser_discards() {
        // Written canonically (trailing separators aside): no second parse.
        let a = pg("  SELECT * FROM t WHERE a = 1 ;\n").unwrap();
        assert_eq!(a.canonical, "SELECT * FROM t WHERE a = 1");
        // A trailing comment is not discarded text: the full round trip runs.
        let a = pg("SELECT * FROM t WHERE a = 1 -- x;").unwrap();
        assert_eq!(a.canonical, "SELECT * FROM t WHERE a = 1");
    }

    #[test]
    fn unparseable_and_unclassifiable_are_refused() {
        assert_eq!(pg("SELEC 1").unwrap_err().stage, Stage::Parse);
        assert_eq!(pg("").unwrap_err().code, "empty");
        assert_eq!(pg("LISTEN chan").unwrap_err().code, "unclassified");
    }
}
