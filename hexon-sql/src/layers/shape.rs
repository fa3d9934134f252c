//! Statement shapes: statements that differ only in the values of their
//! literals get the same verdict, so a second-level verdict cache keyed by
//! shape lets `… WHERE id = 17` reuse what `… WHERE id = 42` cost to decide.
//!
//! Why this is sound:
//! - The shape is the statement's token stream (sqlparser's own tokenizer,
//!   the one the parser reads) with whitespace and comments dropped and
//!   number and plain `'…'` string literals replaced by markers no SQL text
//!   can produce. The parser sees only tokens and never branches on a
//!   literal's value, so two statements with the same shape parse to trees
//!   that differ only in those values.
//! - No layer looks at those values: patterns run over the normalised text
//!   (every literal is `?` there), tables, functions and effects do not
//!   depend on them. The one exception is `LIMIT` (the limit layer lowers
//!   large literal limits), so numbers from the first `LIMIT`, `OFFSET`,
//!   `FETCH` or `TOP` keyword on stay in the shape verbatim.
//! - Only admitted queries and DML (`SELECT`, `INSERT`, `UPDATE`,
//!   `DELETE`) get shapes; session statements (`SET x = 'v'`), whose verdict
//!   can depend on a value, never do. Strings with a backslash, a NUL or two
//!   quotes in a row (sqlparser would not print them back unchanged), and
//!   every other literal form (`E'…'`, `$$…$$`, `X'…'`, `N'…'`), make the
//!   statement shapeless: it takes the full path.
//! - What is sent is still canonical text: the canonical text of the first
//!   statement of the shape, cut at its literals, with the new literals
//!   rendered by sqlparser (as the full path would render them). The
//!   template is only kept after a check: filled with synthetic values, it
//!   must equal the full path's canonical text for the input with those same
//!   values.

use std::sync::Arc;

use sqlparser::ast::escape_quoted_string;
use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::{Token, Tokenizer};

#[cfg(test)]
use crate::analysis::ParseLimits;
use crate::analysis::{Analysis, Kind};
use crate::dialect::Dialect;

/// The marker a number literal leaves in a shape.
const NUMBER: &str = "\u{1}n";
/// The marker a string literal leaves in a shape.
const STRING: &str = "\u{1}s";

/// A literal value taken out of a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Literal {
    Number(String),
    Str(String),
}

impl Literal {
    /// The literal as sqlparser renders it in canonical text.
    fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        // As `Value::Number` / `Value::SingleQuotedString` print (a token
        // prints a string's value without doubling its quotes).
        match self {
            Literal::Number(n) => out.push_str(n),
            Literal::Str(s) => {
                let _ = write!(out, "'{}'", escape_quoted_string(s, '\''));
            }
        }
    }

    /// The literal a token classified [`Class::Literal`] holds.
    fn of(t: &Token) -> Option<Self> {
        match t {
            Token::Number(n, _) => Some(Literal::Number(n.clone())),
            Token::SingleQuotedString(v) => Some(Literal::Str(v.clone())),
            _ => None,
        }
    }
}

/// A statement's shape and its literals, in order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Shape(Vec<Token>);

/// The shape of `sql`, or `None` when it has literals the shape cache does
/// not handle (or does not tokenize).
pub(crate) fn shape(sql: &str, dialect: Dialect) -> Option<(Shape, Vec<Literal>)> {
    let tokens = Tokenizer::new(dialect.parser_dialect(), sql)
        .tokenize()
        .ok()?;
    let mut out = Vec::with_capacity(tokens.len());
    let mut literals = Vec::new();
    let mut limit_seen = false;
    for t in tokens {
        match classify(&t, &mut limit_seen)? {
            Class::Skip => {}
            Class::Keep => out.push(t),
            Class::Literal => {
                let l = Literal::of(&t)?;
                out.push(Token::Placeholder(
                    match l {
                        Literal::Number(_) => NUMBER,
                        Literal::Str(_) => STRING,
                    }
                    .into(),
                ));
                literals.push(l);
            }
        }
    }
    Some((Shape(out), literals))
}

/// What a token is to a shape.
enum Class {
    /// Whitespace and comments: not part of the shape.
    Skip,
    /// Part of the shape as it is.
    Keep,
    /// A literal: a slot in the shape.
    Literal,
}

/// The one rule [`shape`], the template cutter and the probe writer share;
/// `None` for a token that makes the statement shapeless.
fn classify(t: &Token, limit_seen: &mut bool) -> Option<Class> {
    Some(match t {
        Token::Whitespace(_) => Class::Skip,
        Token::Word(w)
            if matches!(
                w.keyword,
                Keyword::LIMIT | Keyword::OFFSET | Keyword::FETCH | Keyword::TOP
            ) =>
        {
            *limit_seen = true;
            Class::Keep
        }
        Token::Number(_, false) if !*limit_seen => Class::Literal,
        // sqlparser prints a value's quote doubled, except where it takes
        // the value for already escaped (two quotes in a row, or a quote
        // after a backslash): such values would not print back to
        // themselves, so they take the full path (which refuses them by its
        // round trip).
        Token::SingleQuotedString(v) if v.contains(['\\', '\0']) || v.contains("''") => {
            return None;
        }
        Token::SingleQuotedString(_) => Class::Literal,
        Token::Number(..) | Token::Word(_) | Token::Placeholder(_) | Token::EOF => Class::Keep,
        Token::Char(_)
        | Token::DoubleQuotedString(_)
        | Token::TripleSingleQuotedString(_)
        | Token::TripleDoubleQuotedString(_)
        | Token::DollarQuotedString(_)
        | Token::SingleQuotedByteStringLiteral(_)
        | Token::DoubleQuotedByteStringLiteral(_)
        | Token::TripleSingleQuotedByteStringLiteral(_)
        | Token::TripleDoubleQuotedByteStringLiteral(_)
        | Token::SingleQuotedRawStringLiteral(_)
        | Token::DoubleQuotedRawStringLiteral(_)
        | Token::TripleSingleQuotedRawStringLiteral(_)
        | Token::TripleDoubleQuotedRawStringLiteral(_)
        | Token::NationalStringLiteral(_)
        | Token::QuoteDelimitedStringLiteral(_)
        | Token::NationalQuoteDelimitedStringLiteral(_)
        | Token::EscapedStringLiteral(_)
        | Token::UnicodeStringLiteral(_)
        | Token::HexStringLiteral(_) => return None,
        _ => Class::Keep,
    })
}

/// Canonical text cut at its literals: `parts.len() == literals + 1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template {
    parts: Vec<Box<str>>,
}

impl Template {
    /// The canonical text with `literals` in the slots.
    pub(crate) fn fill(&self, literals: &[Literal]) -> Option<String> {
        if literals.len() + 1 != self.parts.len() {
            return None;
        }
        let mut out = String::with_capacity(self.parts.iter().map(|p| p.len()).sum::<usize>() + 16);
        for (i, part) in self.parts.iter().enumerate() {
            out.push_str(part);
            if let Some(l) = literals.get(i) {
                l.render(&mut out);
            }
        }
        Some(out)
    }
}

/// A template to be checked before it is cached: the input rewritten with
/// synthetic literal values must get, from the full pipeline, exactly the
/// text the template gives for those values.
#[derive(Debug)]
pub(crate) struct Candidate {
    pub(crate) template: Template,
    /// The input with the synthetic values.
    pub(crate) probe: String,
    /// What the template must produce for the probe.
    pub(crate) expected: String,
}

/// The candidate template for a statement the full path admitted and will
/// send as `sent`, or `None` if it is not eligible.
///
/// `input` is the client's text, `literals` its literals (from [`shape`]).
pub(crate) fn candidate(
    input: &str,
    literals: &[Literal],
    sent: &str,
    analysis: &Analysis,
    dialect: Dialect,
) -> Option<Candidate> {
    let [statement] = analysis.statements.as_slice() else {
        return None;
    };
    if !matches!(
        statement.kind,
        Kind::Query | Kind::Insert | Kind::Update | Kind::Delete
    ) || statement.switches_database.is_some()
    {
        return None;
    }
    let (template, sent_literals) = cut(sent, dialect)?;
    if sent_literals != literals {
        return None;
    }
    // Synthetic values, all distinct, so a slot filled from the wrong
    // literal shows.
    let synthetic: Vec<Literal> = literals
        .iter()
        .enumerate()
        .map(|(i, l)| match l {
            Literal::Number(_) => Literal::Number(format!("{}", 7_000_001 + i)),
            Literal::Str(_) => Literal::Str(format!("hexon shape {i}")),
        })
        .collect();
    let expected = template.fill(&synthetic)?;
    let probe = substitute(input, dialect, &synthetic)?;
    Some(Candidate {
        template,
        probe,
        expected,
    })
}

/// Cut canonical text at its literals (re-tokenised; filled with its own
/// literals, the template must give back exactly the text).
fn cut(canonical: &str, dialect: Dialect) -> Option<(Template, Vec<Literal>)> {
    use std::fmt::Write as _;
    let tokens = Tokenizer::new(dialect.parser_dialect(), canonical)
        .tokenize()
        .ok()?;
    let mut parts = Vec::new();
    let mut literals = Vec::new();
    let mut current = String::new();
    let mut limit_seen = false;
    for t in &tokens {
        match classify(t, &mut limit_seen)? {
            Class::Literal => {
                literals.push(Literal::of(t)?);
                parts.push(std::mem::take(&mut current).into_boxed_str());
            }
            Class::Skip | Class::Keep => {
                let _ = write!(current, "{t}");
            }
        }
    }
    parts.push(current.into_boxed_str());
    let template = Template { parts };
    (template.fill(&literals)? == canonical).then_some((template, literals))
}

/// The input with its literals replaced by `values`, in order.
fn substitute(input: &str, dialect: Dialect, values: &[Literal]) -> Option<String> {
    use std::fmt::Write as _;
    let tokens = Tokenizer::new(dialect.parser_dialect(), input)
        .tokenize()
        .ok()?;
    let mut out = String::with_capacity(input.len() + 32);
    let mut next = values.iter();
    let mut limit_seen = false;
    for t in &tokens {
        match classify(t, &mut limit_seen)? {
            Class::Literal => next.next()?.render(&mut out),
            Class::Skip | Class::Keep => {
                let _ = write!(out, "{t}");
            }
        }
    }
    next.next().is_none().then_some(out)
}

/// A cached shape verdict: the template and what the admitted verdict
/// carries besides its text.
#[derive(Debug, Clone)]
pub(crate) struct ShapeVerdict {
    pub(crate) template: Arc<Template>,
    pub(crate) row_cap: Option<u64>,
    pub(crate) normalized: Arc<str>,
    pub(crate) role: Arc<str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ParseLimits {
        ParseLimits { max_depth: 64 }
    }

    #[test]
    fn literals_do_not_change_the_shape() {
        let (a, la) = shape(
            "SELECT * FROM t WHERE id = 1 AND n = 'x'",
            Dialect::Postgres,
        )
        .unwrap();
        let (b, lb) = shape(
            "SELECT *  FROM t WHERE id = 42 AND n = 'it''s' -- c",
            Dialect::Postgres,
        )
        .unwrap();
        assert_eq!(a, b);
        assert_eq!(
            lb,
            vec![Literal::Number("42".into()), Literal::Str("it's".into())]
        );
        assert_ne!(la, lb);
        // Everything else does.
        for other in [
            "SELECT * FROM u WHERE id = 1 AND n = 'x'",
            "SELECT * FROM t WHERE id = 'x' AND n = 'x'",
            "SELECT * FROM t WHERE id = $1 AND n = 'x'",
            "SELECT * FROM \"T\" WHERE id = 1 AND n = 'x'",
        ] {
            assert_ne!(shape(other, Dialect::Postgres).unwrap().0, a, "{other}");
        }
        // LIMIT numbers stay in the shape.
        let (l5, _) = shape("SELECT * FROM t LIMIT 5", Dialect::Postgres).unwrap();
        let (l9, _) = shape("SELECT * FROM t LIMIT 9", Dialect::Postgres).unwrap();
        assert_ne!(l5, l9);
        let (m1, _) = shape("SELECT * FROM t LIMIT 1, 5", Dialect::Mysql).unwrap();
        let (m2, _) = shape("SELECT * FROM t LIMIT 1, 500", Dialect::Mysql).unwrap();
        assert_ne!(m1, m2);
    }

    #[test]
    fn unusual_literals_make_a_statement_shapeless() {
        for (sql, d) in [
            ("SELECT E'a\\\\b'", Dialect::Postgres),
            ("SELECT $$x$$", Dialect::Postgres),
            ("SELECT X'41'", Dialect::Mysql),
            ("SELECT 'a\\\\b'", Dialect::Mysql),
            ("SELECT N'x'", Dialect::Mysql),
            ("SELECT \"x\"", Dialect::Mysql),
        ] {
            assert!(shape(sql, d).is_none(), "{sql}");
        }
    }

    #[test]
    fn templates_fill_like_the_full_path() {
        let d = Dialect::Postgres;
        let input = "select name from t where id = 3 and kind in ('a', 'b') limit 10";
        let (_, lits) = shape(input, d).unwrap();
        let a = Analysis::parse(input, d, &limits()).unwrap();
        let c = candidate(input, &lits, &a.canonical, &a, d).unwrap();
        // The probe, parsed in full, gives what the template gives.
        let probe = Analysis::parse(&c.probe, d, &limits()).unwrap();
        assert_eq!(probe.canonical, c.expected);
        let other = "SELECT name FROM t WHERE id = 99 AND kind IN ('x''y', 'z') LIMIT 10";
        let (_, lits2) = shape(other, d).unwrap();
        let full = Analysis::parse(other, d, &limits()).unwrap();
        assert_eq!(c.template.fill(&lits2).unwrap(), full.canonical);
        // Session statements never get a template.
        let s = "SET search_path = 'x'";
        let (_, l) = shape(s, d).unwrap();
        let a = Analysis::parse(s, d, &limits()).unwrap();
        assert!(candidate(s, &l, &a.canonical, &a, d).is_none());
        // A wrong number of literals fills nothing.
        assert!(c.template.fill(&lits2[..1]).is_none());
    }
}
