//! The ACL the layers enforce: databases, and per database an ordered list of
//! roles chosen by the caller's groups.
//!
//! ```toml
//! [[databases]]
//! name = "app"
//! dialect = "postgres"
//!
//! [[databases.roles]]
//! name = "analyst"
//! groups = ["analysts"]
//! read_only = true
//! row_limit = 1000
//! tables = [
//!   { name = "public.*", ops = ["select"] },
//!   { name = "public.salaries", ops = [] },
//! ]
//! ```
//!
//! The first role (in file order) whose groups meet the caller's groups is the
//! one the caller acts as; a caller who matches none has no access to the
//! database. Verdicts are cached per role, so everything a decision depends
//! on is a property of the role, never of the individual caller.

use std::collections::HashMap;
use std::sync::Arc;

use regex::Regex;
use serde::Deserialize;

use hexon_core::Identity;

use crate::analysis::TableOp;
use crate::dialect::Dialect;

/// The whole ACL, as read from configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclConfig {
    /// Limits of the validation layer (all databases).
    #[serde(default)]
    pub validation: ValidationConfig,
    /// The databases callers may reach.
    #[serde(default)]
    pub databases: Vec<DatabaseConfig>,
}

/// Validation limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValidationConfig {
    /// Longest statement text in bytes.
    pub max_bytes: usize,
    /// Deepest nesting of parentheses (and the parser's recursion limit).
    pub max_depth: usize,
    /// Whether one simple query may carry several statements.
    pub multi_statements: bool,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        Self {
            max_bytes: 64 * 1024,
            max_depth: 32,
            multi_statements: false,
        }
    }
}

/// One database and who may do what on it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// The name clients connect to.
    pub name: String,
    /// Grammar of the server.
    pub dialect: Dialect,
    /// Statements per identity per second on this database (burst: one
    /// second's worth). `None`: unlimited.
    #[serde(default)]
    pub rate_per_identity: Option<u32>,
    /// Statements per second on this database across all identities.
    #[serde(default)]
    pub rate_total: Option<u32>,
    /// The real server, `host:port` (used by the wire relays).
    #[serde(default)]
    pub upstream: Option<String>,
    /// The database name on the real server (default: `name`).
    #[serde(default)]
    pub upstream_database: Option<String>,
    /// TLS to the real server.
    #[serde(default)]
    pub upstream_tls: UpstreamTls,
    /// PEM CA certificates the real server's certificate must chain to
    /// (`upstream_tls = "verify"`).
    #[serde(default)]
    pub upstream_ca: Option<std::path::PathBuf>,
    /// The name the real server's certificate must carry (default: the host
    /// part of `upstream`).
    #[serde(default)]
    pub upstream_tls_name: Option<String>,
    /// Roles in priority order.
    #[serde(default)]
    pub roles: Vec<RoleConfig>,
}

/// TLS from the bastion to the real server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum UpstreamTls {
    /// Plain TCP (loopback, or a private network you trust).
    #[default]
    Disable,
    /// Encrypted, but the certificate is not checked (like libpq's
    /// `sslmode=require`): protects against listeners, not against someone
    /// who can impersonate the server.
    Require,
    /// Encrypted, with the certificate chain checked against `upstream_ca`
    /// and the name against `upstream_tls_name` (or the upstream host).
    Verify,
}

/// What a group of callers may do on one database.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleConfig {
    /// Role name (shown in logs and the query log).
    pub name: String,
    /// Callers in any of these groups act as this role (`*`: everyone
    /// authenticated).
    pub groups: Vec<String>,
    /// Refuse every write and side effect.
    #[serde(default)]
    pub read_only: bool,
    /// Tables × operations. The most specific matching rule wins (exact
    /// name over `schema.*` over `*`); no matching rule: no access.
    #[serde(default)]
    pub tables: Vec<TableRule>,
    /// Let the role read the system catalogs (`pg_catalog`,
    /// `information_schema`), as `psql`'s `\d` and drivers do.
    #[serde(default = "yes")]
    pub catalog: bool,
    /// Statement kinds beyond queries and DML: `ddl`, `admin`, `call`,
    /// `copy`, `cursor`, `prepared`.
    #[serde(default)]
    pub statements: Vec<String>,
    /// Functions the role may call beyond the built-in pure ones (`*`: any
    /// function that is not dangerous).
    #[serde(default)]
    pub functions: Vec<String>,
    /// Session variables the role may `SET` beyond the safe defaults.
    #[serde(default)]
    pub session_variables: Vec<String>,
    /// Regular expressions over the normalised statement: a statement
    /// matching any is refused.
    #[serde(default)]
    pub deny_patterns: Vec<String>,
    /// Regular expressions over the normalised statement: when non-empty, a
    /// statement must match one.
    #[serde(default)]
    pub allow_patterns: Vec<String>,
    /// Highest complexity score admitted.
    #[serde(default = "default_complexity")]
    pub max_complexity: u32,
    /// Admit `UPDATE`/`DELETE` without `WHERE` (and `TRUNCATE`).
    #[serde(default)]
    pub allow_unbounded_writes: bool,
    /// Rows a read may return: injected as `LIMIT` where there is none,
    /// and enforced on the wire.
    #[serde(default)]
    pub row_limit: Option<u64>,
    /// The database user the relay logs in as for this role.
    #[serde(default)]
    pub upstream_user: Option<String>,
    /// That user's password (use `${VAR}`; never logged).
    #[serde(default)]
    pub upstream_password: Option<Secret>,
}

/// A secret string: `Debug` prints `[redacted]`, and it is zeroed on drop.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// A secret holding `s`.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret text (for the one place that sends it).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

fn yes() -> bool {
    true
}

fn default_complexity() -> u32 {
    50
}

/// A table rule: `schema.table`, `schema.*` or `*`, and the operations.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableRule {
    /// `schema.table`, `schema.*`, or `*` (PostgreSQL: an unqualified name
    /// means `public.name`; MySQL: the schema is the database).
    pub name: String,
    /// Operations allowed (empty: an explicit deny).
    pub ops: Vec<TableOp>,
}

/// Session variables any role may set: they change neither identity, nor
/// how text is parsed, nor how names resolve.
pub const SAFE_SESSION_VARIABLES: &[&str] = &[
    "application_name",
    "autocommit",
    "client_min_messages",
    "datestyle",
    "extra_float_digits",
    "idle_in_transaction_session_timeout",
    "intervalstyle",
    "lock_timeout",
    "statement_timeout",
    "time_zone",
    "timezone",
    "transaction_isolation",
    "default_transaction_isolation",
];

/// A compiled, validated ACL.
#[derive(Debug)]
pub struct Acl {
    pub(crate) validation: ValidationConfig,
    /// By name; looked up for every statement (the rate limit), so hashed
    /// with a fast, per-process seeded hasher rather than SipHash.
    databases: HashMap<String, Arc<DatabaseAcl>, foldhash::fast::RandomState>,
}

/// One database's compiled rules.
#[derive(Debug)]
pub struct DatabaseAcl {
    /// Name.
    pub name: Arc<str>,
    /// Grammar.
    pub dialect: Dialect,
    pub(crate) rate_per_identity: Option<u32>,
    pub(crate) rate_total: Option<u32>,
    /// The real server, `host:port`.
    pub upstream: Option<String>,
    /// The database name on the real server.
    pub upstream_database: String,
    /// TLS to the real server.
    pub upstream_tls: UpstreamTls,
    /// CA certificates for `UpstreamTls::Verify`.
    pub upstream_ca: Option<std::path::PathBuf>,
    /// The name the server's certificate must carry.
    pub upstream_tls_name: Option<String>,
    roles: Vec<Arc<Role>>,
}

/// One compiled role.
#[derive(Debug)]
pub struct Role {
    /// Name.
    pub name: Arc<str>,
    /// The role as configured (function and variable names lower-cased).
    pub(crate) config: RoleConfig,
    tables: Vec<(TablePattern, Vec<TableOp>)>,
    pub(crate) deny_patterns: Vec<Regex>,
    pub(crate) allow_patterns: Vec<Regex>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TablePattern {
    Any,
    Schema(String),
    Exact(String, String),
}

impl TablePattern {
    fn specificity(&self) -> u8 {
        match self {
            TablePattern::Any => 0,
            TablePattern::Schema(_) => 1,
            TablePattern::Exact(..) => 2,
        }
    }

    fn matches(&self, schema: &str, table: &str) -> bool {
        match self {
            TablePattern::Any => true,
            TablePattern::Schema(s) => s == schema,
            TablePattern::Exact(s, t) => s == schema && t == table,
        }
    }
}

/// A configuration the ACL cannot be built from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {message}")]
pub struct AclError {
    /// Where, like `databases[0].roles[1].deny_patterns[0]`.
    pub location: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl Acl {
    /// Compile and validate `config`.
    ///
    /// # Errors
    /// Every problem found, each with its location.
    pub fn new(config: &AclConfig) -> Result<Self, Vec<AclError>> {
        let mut errs = Vec::new();
        let mut databases = HashMap::default();
        let v = &config.validation;
        if v.max_bytes == 0 {
            errs.push(err("validation.max_bytes", "must be at least 1"));
        }
        if v.max_depth == 0 || v.max_depth > 256 {
            errs.push(err("validation.max_depth", "must be between 1 and 256"));
        }
        for (di, db) in config.databases.iter().enumerate() {
            let at = format!("databases[{di}]");
            if db.name.is_empty() {
                errs.push(err(&format!("{at}.name"), "must not be empty"));
            }
            if databases.contains_key(&db.name) {
                errs.push(err(
                    &format!("{at}.name"),
                    &format!("database {:?} is listed twice", db.name),
                ));
            }
            if db.rate_per_identity == Some(0) || db.rate_total == Some(0) {
                errs.push(err(
                    &at,
                    "a rate of 0 would refuse everything; leave it out for no limit",
                ));
            }
            match (db.upstream_tls, &db.upstream_ca) {
                (UpstreamTls::Verify, None) => errs.push(err(
                    &format!("{at}.upstream_ca"),
                    "upstream_tls = \"verify\" needs the CA that signed the server's certificate (a PEM file)",
                )),
                (UpstreamTls::Disable | UpstreamTls::Require, Some(_)) => errs.push(err(
                    &format!("{at}.upstream_ca"),
                    "only used with upstream_tls = \"verify\"",
                )),
                _ => {}
            }
            let mut roles = Vec::new();
            for (ri, r) in db.roles.iter().enumerate() {
                let at = format!("{at}.roles[{ri}]");
                match compile_role(r, db.dialect, &at) {
                    Ok(role) => roles.push(Arc::new(role)),
                    Err(mut e) => errs.append(&mut e),
                }
            }
            databases.insert(
                db.name.clone(),
                Arc::new(DatabaseAcl {
                    name: db.name.as_str().into(),
                    dialect: db.dialect,
                    rate_per_identity: db.rate_per_identity,
                    rate_total: db.rate_total,
                    upstream: db.upstream.clone(),
                    upstream_database: db
                        .upstream_database
                        .clone()
                        .unwrap_or_else(|| db.name.clone()),
                    upstream_tls: db.upstream_tls,
                    upstream_ca: db.upstream_ca.clone(),
                    upstream_tls_name: db.upstream_tls_name.clone(),
                    roles,
                }),
            );
        }
        if errs.is_empty() {
            Ok(Self {
                validation: v.clone(),
                databases,
            })
        } else {
            Err(errs)
        }
    }

    /// Parse TOML and compile it (for tests, examples and embedding).
    ///
    /// # Errors
    /// Parse errors and validation errors, with locations.
    pub fn from_toml(text: &str) -> Result<Self, Vec<AclError>> {
        let config: AclConfig = toml_from_str(text)?;
        Self::new(&config)
    }

    /// Every configured database.
    pub fn databases(&self) -> impl Iterator<Item = &Arc<DatabaseAcl>> {
        self.databases.values()
    }

    /// The database named `name`, if configured.
    pub fn database(&self, name: &str) -> Option<&Arc<DatabaseAcl>> {
        self.databases.get(name)
    }

    /// The role `identity` acts as on `database`.
    pub fn role_for(&self, identity: &Identity, database: &str) -> Option<&Arc<Role>> {
        self.databases.get(database)?.role_for(identity)
    }

    /// Validation limits.
    pub fn validation(&self) -> &ValidationConfig {
        &self.validation
    }
}

fn toml_from_str(text: &str) -> Result<AclConfig, Vec<AclError>> {
    let de = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(de).map_err(|e| vec![located("", e)])
}

/// A deserialisation error at its path, under `prefix` (empty: none).
pub(crate) fn located(prefix: &str, e: serde_path_to_error::Error<toml::de::Error>) -> AclError {
    let path = e.path().to_string();
    let location = match (prefix, path.as_str()) {
        ("", q) => q.to_owned(),
        (p, ".") => p.to_owned(),
        (p, q) => format!("{p}.{q}"),
    };
    err(&location, e.into_inner().message())
}

impl DatabaseAcl {
    /// The role `identity` acts as here.
    pub fn role_for(&self, identity: &Identity) -> Option<&Arc<Role>> {
        self.roles.iter().find(|r| {
            r.config
                .groups
                .iter()
                .any(|g| g == "*" || identity.in_group(g))
        })
    }
}

impl Role {
    /// The role as configured.
    pub fn config(&self) -> &RoleConfig {
        &self.config
    }

    /// Whether every write and side effect is refused.
    pub fn read_only(&self) -> bool {
        self.config.read_only
    }

    /// The row cap for reads, if any.
    pub fn row_limit(&self) -> Option<u64> {
        self.config.row_limit
    }

    /// The operations the role may do on `schema.table` (`None`: no rule
    /// matches, no access).
    pub fn table_ops(&self, schema: &str, table: &str) -> Option<&[TableOp]> {
        self.tables
            .iter()
            .filter(|(p, _)| p.matches(schema, table))
            .max_by_key(|(p, _)| p.specificity())
            .map(|(_, ops)| ops.as_slice())
    }

    /// Whether the role may run statements of `kind` (`ddl`, `admin`, …).
    pub fn allows_statement(&self, kind: &str) -> bool {
        self.config.statements.iter().any(|k| k == kind)
    }

    /// Whether the role may call the (lower-case, possibly qualified) function.
    pub fn allows_function(&self, name: &str) -> bool {
        self.config.functions.iter().any(|f| f == "*" || f == name)
    }

    /// Whether the role may set `variable`.
    pub fn allows_variable(&self, variable: &str) -> bool {
        SAFE_SESSION_VARIABLES.contains(&variable)
            || variable.starts_with('@')
            || self.config.session_variables.iter().any(|v| v == variable)
    }
}

pub(crate) fn err(location: &str, message: &str) -> AclError {
    AclError {
        location: location.into(),
        message: message.into(),
    }
}

const STATEMENT_KINDS: &[&str] = &["ddl", "admin", "call", "copy", "cursor", "prepared"];

fn compile_role(r: &RoleConfig, dialect: Dialect, at: &str) -> Result<Role, Vec<AclError>> {
    let mut errs = Vec::new();
    if r.groups.is_empty() {
        errs.push(err(
            &format!("{at}.groups"),
            "list at least one group (or \"*\" for every caller)",
        ));
    }
    let mut tables = Vec::new();
    for (ti, t) in r.tables.iter().enumerate() {
        let name = t.name.trim();
        let pattern = match name.split('.').collect::<Vec<_>>().as_slice() {
            ["*"] => Some(TablePattern::Any),
            [s, "*"] if !s.is_empty() => Some(TablePattern::Schema(s.to_string())),
            [s, t] if !s.is_empty() && !t.is_empty() && *t != "*" => {
                Some(TablePattern::Exact(s.to_string(), t.to_string()))
            }
            [t] if !t.is_empty() && dialect == Dialect::Postgres => {
                Some(TablePattern::Exact("public".into(), t.to_string()))
            }
            _ => None,
        };
        match pattern {
            Some(p) => tables.push((p, t.ops.clone())),
            None => errs.push(err(
                &format!("{at}.tables[{ti}].name"),
                &format!(
                    "{:?} is not a table pattern: use schema.table, schema.* or *{}",
                    t.name,
                    if dialect == Dialect::Mysql {
                        " (in MySQL the schema is the database)"
                    } else {
                        ""
                    }
                ),
            )),
        }
    }
    for (i, s) in r.statements.iter().enumerate() {
        if !STATEMENT_KINDS.contains(&s.as_str()) {
            errs.push(err(
                &format!("{at}.statements[{i}]"),
                &format!(
                    "unknown statement kind {s:?}; one of {}",
                    STATEMENT_KINDS.join(", ")
                ),
            ));
        }
    }
    if r.read_only && r.allow_unbounded_writes {
        errs.push(err(
            &format!("{at}.allow_unbounded_writes"),
            "a read-only role has no writes to allow",
        ));
    }
    if r.read_only && r.functions.iter().any(|f| f == "*") {
        errs.push(err(
            &format!("{at}.functions"),
            "a read-only role cannot trust every function (a user-defined function can write); name the ones that only read",
        ));
    }
    if r.row_limit == Some(0) {
        errs.push(err(
            &format!("{at}.row_limit"),
            "must be at least 1; leave it out for no cap",
        ));
    }
    let compile = |list: &[String], field: &str, errs: &mut Vec<AclError>| {
        let mut out = Vec::new();
        for (i, p) in list.iter().enumerate() {
            match regex::RegexBuilder::new(p).size_limit(1 << 20).build() {
                Ok(re) => out.push(re),
                Err(e) => errs.push(err(
                    &format!("{at}.{field}[{i}]"),
                    &format!("not a valid regular expression: {e}"),
                )),
            }
        }
        out
    };
    let deny_patterns = compile(&r.deny_patterns, "deny_patterns", &mut errs);
    let allow_patterns = compile(&r.allow_patterns, "allow_patterns", &mut errs);
    if !errs.is_empty() {
        return Err(errs);
    }
    let mut config = r.clone();
    for f in &mut config.functions {
        *f = f.to_lowercase();
    }
    for v in &mut config.session_variables {
        *v = v.to_lowercase();
    }
    Ok(Role {
        name: r.name.as_str().into(),
        config,
        tables,
        deny_patterns,
        allow_patterns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_have_locations() {
        let e = Acl::from_toml(
            r#"
[[databases]]
name = "app"
dialect = "postgres"
[[databases.roles]]
name = "r"
groups = []
tables = [{ name = "a.b.c", ops = ["select"] }]
deny_patterns = ["("]
statements = ["dance"]
read_only = true
functions = ["*"]
"#,
        )
        .unwrap_err();
        let locs: Vec<_> = e.iter().map(|e| e.location.as_str()).collect();
        assert_eq!(
            locs,
            [
                "databases[0].roles[0].groups",
                "databases[0].roles[0].tables[0].name",
                "databases[0].roles[0].statements[0]",
                "databases[0].roles[0].functions",
                "databases[0].roles[0].deny_patterns[0]"
            ]
        );
        let e = Acl::from_toml("[[databases]]\nname = \"x\"\ndialect = \"oracle\"\n").unwrap_err();
        assert_eq!(e[0].location, "databases[0].dialect");
    }

    #[test]
    fn most_specific_table_rule_wins() {
        let acl = Acl::from_toml(
            r#"
[[databases]]
name = "app"
dialect = "postgres"
[[databases.roles]]
name = "r"
groups = ["g"]
tables = [
  { name = "*", ops = ["select"] },
  { name = "hr.*", ops = [] },
  { name = "hr.directory", ops = ["select", "update"] },
]
"#,
        )
        .unwrap();
        let id = Identity::builder("u", "u").groups(["g"]).build().unwrap();
        let role = acl.role_for(&id, "app").unwrap();
        assert_eq!(role.table_ops("public", "x"), Some(&[TableOp::Select][..]));
        assert_eq!(role.table_ops("hr", "salaries"), Some(&[][..]));
        assert_eq!(
            role.table_ops("hr", "directory"),
            Some(&[TableOp::Select, TableOp::Update][..])
        );
        let stranger = Identity::builder("v", "v").build().unwrap();
        assert!(acl.role_for(&stranger, "app").is_none());
        assert!(acl.role_for(&id, "other").is_none());
    }
}
