//! The SQL dialects the bastion speaks.

use serde::Deserialize;

/// Which server's grammar and lexical rules apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Dialect {
    /// PostgreSQL (with `standard_conforming_strings = on`, which the relay
    /// enforces: a backslash in `'…'` is an ordinary character).
    Postgres,
    /// MySQL and MariaDB (backslash escapes in strings, `` `…` `` identifiers,
    /// executable comments).
    #[serde(alias = "mariadb")]
    Mysql,
}

impl Dialect {
    /// The parser's dialect object.
    pub(crate) fn parser_dialect(self) -> &'static dyn sqlparser::dialect::Dialect {
        static PG: sqlparser::dialect::PostgreSqlDialect = sqlparser::dialect::PostgreSqlDialect {};
        static MY: sqlparser::dialect::MySqlDialect = sqlparser::dialect::MySqlDialect {};
        match self {
            Dialect::Postgres => &PG,
            Dialect::Mysql => &MY,
        }
    }

    /// Stable lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::Postgres => "postgres",
            Dialect::Mysql => "mysql",
        }
    }

    /// The schema an unqualified table name resolves to, given the current
    /// database (PostgreSQL: `public`, since the relay refuses changes to
    /// `search_path`; MySQL: the current database).
    pub fn default_schema(self, database: &str) -> &str {
        match self {
            Dialect::Postgres => "public",
            Dialect::Mysql => database,
        }
    }
}
