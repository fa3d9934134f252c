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

use std::borrow::Cow;
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
///
/// The quick lexer borrows it from the statement (no allocation on the hot
/// path); the tokenizer's literals are owned.
pub(crate) enum Literal<'a> {
    Number(Cow<'a, str>),
    Str(Cow<'a, str>),
}

impl Literal<'_> {
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
    fn of(t: &Token) -> Option<Literal<'static>> {
        match t {
            Token::Number(n, _) => Some(Literal::Number(Cow::Owned(n.clone()))),
            Token::SingleQuotedString(v) => Some(Literal::Str(Cow::Owned(v.clone()))),
            _ => None,
        }
    }
}

/// A statement's shape and its literals, in order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Shape(Vec<Token>);

/// The shape of `sql`, or `None` when it has literals the shape cache does
/// not handle (or does not tokenize).
pub(crate) fn shape(sql: &str, dialect: Dialect) -> Option<(Shape, Vec<Literal<'static>>)> {
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

/// The quick key of a statement: its text with each literal replaced by a
/// marker, computed in one pass over the bytes without sqlparser, for the
/// plain statements applications repeat with new values (`… WHERE id = 42`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct QuickKey(String);

impl QuickKey {
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// Give back spare capacity (a reused buffer may have held a longer
    /// statement) before the key is stored.
    pub(crate) fn shrink(&mut self) {
        self.0.shrink_to_fit();
    }

    /// The key's buffer, for [`quick_shape_in`].
    pub(crate) fn into_buffer(self) -> String {
        self.0
    }
}

/// [`quick_shape_in`] with a new buffer.
#[cfg(test)]
pub(crate) fn quick_shape(sql: &str) -> Option<(QuickKey, Vec<Literal<'_>>)> {
    quick_shape_in(sql, String::new())
}

/// The quick key of `sql` and its literals, or `None` when the statement
/// is not plain enough for the quick lexer to be sure how sqlparser
/// tokenizes it (it then takes [`shape`]).
///
/// Why two statements with the same quick key have the same [`shape`], and
/// why the literals are the ones [`shape`] would take:
/// - Outside string literals only ASCII letters, digits, `_`, whitespace
///   and `( ) , . = < > + - * / :` are accepted, a `;` only at the end,
///   and neither `--` nor `/*` (no comments). So there are no quoted
///   identifiers, dollar quotes, placeholders, escape-string prefixes or
///   anything dialect-specific: only words, single-character punctuation,
///   operators, whitespace and literals.
/// - A number literal is a run of ASCII digits, and a string literal is
///   `'…'` with no quote, backslash or NUL inside. Either must stand between
///   delimiters: before it whitespace, `( , = < > + - * /` or the start of
///   the text; after it whitespace, `) , ; = < > + - * / :` or the end. So
///   the digit or quote starts a new token for sqlparser (nothing before it
///   is a word, a number, a `.`, a `$` or a prefix such as `E`), and the
///   token ends exactly where the literal does (no `.`, exponent, `_`,
///   letter, or doubled quote after it): sqlparser reads it as
///   `Number(digits)` or `SingleQuotedString(content)`, whatever the value.
///   Its decisions about later tokens look at the previous token's kind,
///   never its value.
/// - Everything else is kept in the key byte for byte, so the text around
///   the literals is identical; the markers cannot occur in accepted text.
/// - Numbers from the first `LIMIT`, `OFFSET`, `FETCH` or `TOP` word on stay
///   in the key verbatim, as [`classify`] keeps them.
///
/// The cache only ever maps a quick key to a verdict learned through
/// [`shape`] for a statement whose quick literals equalled its shape
/// literals; tests compare the two lexers on generated statements.
///
/// The key is built in `key` (its text replaced): a buffer handed back
/// with [`QuickKey::into_buffer`] saves an allocation.
pub(crate) fn quick_shape_in(sql: &str, mut key: String) -> Option<(QuickKey, Vec<Literal<'_>>)> {
    let b = sql.as_bytes();
    key.clear();
    key.reserve(sql.len() + 8);
    let mut literals = Vec::with_capacity(4);
    let mut limit_seen = false;
    // `sql[..copied]` is in `key` already: text between literals is copied
    // in runs.
    let mut copied = 0;
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        match quick_class(c) {
            Q_PUNCT => i += 1,
            Q_WORD => {
                let start = i;
                i += b
                    .get(i..)?
                    .iter()
                    .position(|&c| quick_class(c) & Q_WORD_PART == 0)
                    .unwrap_or(b.len() - i);
                if !limit_seen && (3..=6).contains(&(i - start)) {
                    let word = b.get(start..i)?;
                    limit_seen = [&b"LIMIT"[..], b"OFFSET", b"FETCH", b"TOP"]
                        .iter()
                        .any(|k| k.eq_ignore_ascii_case(word));
                }
            }
            Q_DIGIT => {
                let start = i;
                i += b
                    .get(i..)?
                    .iter()
                    .position(|c| !c.is_ascii_digit())
                    .unwrap_or(b.len() - i);
                if !before_literal(b, start) || !after_literal(b, i) {
                    return None;
                }
                if !limit_seen {
                    key.push_str(sql.get(copied..start)?);
                    key.push_str(NUMBER);
                    literals.push(Literal::Number(Cow::Borrowed(sql.get(start..i)?)));
                    copied = i;
                }
            }
            Q_QUOTE => {
                if !before_literal(b, i) {
                    return None;
                }
                let start = i + 1;
                let len = b.get(start..)?.iter().position(|&c| c == b'\'')?;
                let value = sql.get(start..start + len)?;
                let end = start + len + 1;
                if value.contains(['\\', '\0']) || !after_literal(b, end) {
                    return None;
                }
                key.push_str(sql.get(copied..i)?);
                key.push_str(STRING);
                literals.push(Literal::Str(Cow::Borrowed(value)));
                i = end;
                copied = end;
            }
            // `-` and `/`: not a comment opener.
            Q_SLASH_DASH => {
                if matches!((c, b.get(i + 1)), (b'-', Some(b'-')) | (b'/', Some(b'*'))) {
                    return None;
                }
                i += 1;
            }
            Q_SEMICOLON => {
                if !b
                    .get(i + 1..)?
                    .iter()
                    .all(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r'))
                {
                    return None;
                }
                break;
            }
            _ => return None,
        }
    }
    key.push_str(sql.get(copied..)?);
    Some((QuickKey(key), literals))
}

/// Byte classes of the quick lexer (0: refused).
const Q_PUNCT: u8 = 1;
const Q_WORD: u8 = 2 | Q_WORD_PART;
const Q_DIGIT: u8 = 4 | Q_WORD_PART;
const Q_QUOTE: u8 = 8;
const Q_SLASH_DASH: u8 = 16;
const Q_SEMICOLON: u8 = 32;
/// Bit of the classes that continue a word.
const Q_WORD_PART: u8 = 64;

/// The quick lexer's class of a byte, from [`QUICK`].
#[inline(always)]
fn quick_class(b: u8) -> u8 {
    QUICK.get(usize::from(b)).copied().unwrap_or(0)
}

/// The class of every byte.
static QUICK: [u8; 256] = quick_classes();

// The index is below 256 by the loop's bound.
#[allow(clippy::indexing_slicing, clippy::cast_possible_truncation)]
const fn quick_classes() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = class_of(i as u8);
        i += 1;
    }
    t
}

const fn class_of(b: u8) -> u8 {
    match b {
        b'a'..=b'z' | b'A'..=b'Z' | b'_' => Q_WORD,
        b'0'..=b'9' => Q_DIGIT,
        b'\'' => Q_QUOTE,
        b'-' | b'/' => Q_SLASH_DASH,
        b';' => Q_SEMICOLON,
        b' ' | b'\t' | b'\n' | b'\r' | b'(' | b')' | b',' | b'.' | b'=' | b'<' | b'>' | b'+'
        | b'*' | b':' => Q_PUNCT,
        _ => 0,
    }
}

/// Whitespace and the operators and commas a literal may stand next to.
fn space_or_operator(c: u8) -> bool {
    matches!(
        c,
        b' ' | b'\t' | b'\n' | b'\r' | b',' | b'=' | b'<' | b'>' | b'+' | b'-' | b'*' | b'/'
    )
}

/// Whether the byte before position `at` lets a literal start a token there.
fn before_literal(b: &[u8], at: usize) -> bool {
    match at.checked_sub(1).and_then(|p| b.get(p)) {
        None => true,
        Some(&c) => c == b'(' || space_or_operator(c),
    }
}

/// Whether the byte at `at` ends the literal before it as a token.
fn after_literal(b: &[u8], at: usize) -> bool {
    match b.get(at) {
        None => true,
        Some(&c) => matches!(c, b')' | b';' | b':') || space_or_operator(c),
    }
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
    pub(crate) fn fill(&self, literals: &[Literal<'_>]) -> Option<String> {
        let mut out = String::with_capacity(self.parts.iter().map(|p| p.len()).sum::<usize>() + 16);
        self.fill_into(literals, &mut out).then_some(out)
    }

    /// Bytes of text the template holds.
    pub(crate) fn text_len(&self) -> usize {
        self.parts.iter().map(|p| p.len()).sum()
    }

    /// How many literals the template takes.
    pub(crate) fn slots(&self) -> usize {
        self.parts.len().saturating_sub(1)
    }

    /// [`fill`](Self::fill), appending to `out`; false (and `out` as it
    /// was, or partly written) when the literals do not fit the slots.
    pub(crate) fn fill_into(&self, literals: &[Literal<'_>], out: &mut String) -> bool {
        if literals.len() + 1 != self.parts.len() {
            return false;
        }
        for (i, part) in self.parts.iter().enumerate() {
            out.push_str(part);
            if let Some(l) = literals.get(i) {
                l.render(out);
            }
        }
        true
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
    literals: &[Literal<'_>],
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
    let synthetic: Vec<Literal<'_>> = literals
        .iter()
        .enumerate()
        .map(|(i, l)| match l {
            Literal::Number(_) => Literal::Number(Cow::Owned(format!("{}", 7_000_001 + i))),
            Literal::Str(_) => Literal::Str(Cow::Owned(format!("hexon shape {i}"))),
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
fn cut(canonical: &str, dialect: Dialect) -> Option<(Template, Vec<Literal<'static>>)> {
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
fn substitute(input: &str, dialect: Dialect, values: &[Literal<'_>]) -> Option<String> {
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
    fn quick_keys_agree_with_the_tokenizer() {
        for d in [Dialect::Postgres, Dialect::Mysql] {
            for sql in [
                "SELECT abalance FROM pgbench_accounts WHERE aid = 31337;",
                "select name from t where id=3 and kind in ('a','b') limit 10",
                "SELECT * FROM t WHERE a = -1 AND b <> 'x -- y' AND c >= 0",
                "UPDATE t SET n = 'é /* ; $$' WHERE id = 7",
                "SELECT t.a, t1.b2 FROM t, t1 WHERE t.id = t1.id OFFSET 20",
                "SELECT '2024-01-01'::date, 1::int",
                "INSERT INTO t (a, b) VALUES (1, ''), (2, 'x')\n",
            ] {
                let (_, quick) = quick_shape(sql).unwrap_or_else(|| panic!("{sql}"));
                let (_, full) = shape(sql, d).unwrap_or_else(|| panic!("{sql}"));
                assert_eq!(quick, full, "{sql}");
            }
        }
        // LIMIT values stay in the key.
        let (a, _) = quick_shape("SELECT * FROM t WHERE id = 1 LIMIT 5").unwrap();
        let (b, _) = quick_shape("SELECT * FROM t WHERE id = 2 LIMIT 5").unwrap();
        let (c, _) = quick_shape("SELECT * FROM t WHERE id = 1 LIMIT 6").unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        // Whatever the quick lexer cannot be sure of goes to the tokenizer.
        for sql in [
            "SELECT E'a'",
            "SELECT e'a' FROM t",
            "SELECT X'41'",
            "SELECT N'x'",
            "SELECT U&'x'",
            "SELECT B'01'",
            "SELECT _utf8mb4'x'",
            "SELECT 'it''s'",
            "SELECT 'a\\b'",
            "SELECT 'a\0'",
            "SELECT 'open",
            "SELECT 1.5",
            "SELECT .5",
            "SELECT 1e5",
            "SELECT 0x1F",
            "SELECT 1_000",
            "SELECT 12abc",
            "SELECT t.1",
            "SELECT 1L",
            "SELECT $1",
            "SELECT $$x$$",
            "SELECT \"x\"",
            "SELECT `x`",
            "SELECT 1 -- c",
            "SELECT 1 /* c */",
            "SELECT 1 # c",
            "SELECT 1; SELECT 2",
            "SELECT 1;DROP TABLE t",
            "SELECT a[1]",
            "SELECT @x",
            "SELECT 'x'y",
            "SELECT 1'x'",
            "SELECT :1",
            "SELECT 'é' || 'ü', ñ",
        ] {
            assert!(quick_shape(sql).is_none(), "{sql}");
        }
    }

    /// Atoms and joiners the differential test glues together, so that
    /// every adjacency the quick lexer must judge comes up (the empty
    /// joiner puts two atoms side by side).
    const ATOMS: &[&str] = &[
        "SELECT", "select", "a", "t1", "_x", "e", "E", "x", "N", "B", "U", "L", "LIMIT", "offset",
        "Fetch", "top", "1", "42", "007", "0", "'v'", "''", "'a b'", "'--'", "'/*'", "'é'",
    ];
    /// Atoms the quick lexer mostly refuses (one atom in ten).
    const ODD: &[&str] = &[
        "'", "\"", "$", "$1", "&", "#", "@", "[", "]", "\\", "!", "~", "|", "%", "^", "?", "`",
        "ü", "\0", "--", "/*", "*/", "..",
    ];
    const JOINERS: &[&str] = &[
        "", "", " ", "  ", "\t", "\n", "\r\n", "(", ")", ",", ".", "=", "<", ">", "+", "-", "*",
        "/", ":", "::", ";", "<>", ">=", "->",
    ];

    /// A statement text from (atom, joiner) indices.
    fn glue(parts: &[(usize, usize)]) -> String {
        let mut out = String::new();
        for &(a, j) in parts {
            out.push_str(if a % 10 == 0 {
                ODD[(a / 10) % ODD.len()]
            } else {
                ATOMS[a % ATOMS.len()]
            });
            out.push_str(JOINERS[j % JOINERS.len()]);
        }
        out
    }

    /// `key` with its markers replaced by `values`, in order.
    fn refill(key: &QuickKey, values: &[Literal<'_>]) -> String {
        let mut out = String::new();
        let mut rest = &*key.0;
        let mut values = values.iter();
        while let Some(at) = rest.find('\u{1}') {
            out.push_str(&rest[..at]);
            match values.next() {
                Some(Literal::Number(n)) => out.push_str(n),
                Some(Literal::Str(s)) => {
                    out.push('\'');
                    out.push_str(s);
                    out.push('\'');
                }
                None => panic!("too few values"),
            }
            rest = &rest[at + NUMBER.len()..];
        }
        out.push_str(rest);
        out
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config { cases: 10_000, .. Default::default() })]

        /// Whenever the quick lexer accepts a text: sqlparser finds the
        /// same literals, and any other values in the literals' places
        /// give the same quick key and the same shape (and tokens) —
        /// for both dialects.
        #[test]
        fn quick_keys_are_shapes(
            parts in proptest::collection::vec((0usize..1000, 0usize..1000), 1..16),
            numbers in proptest::collection::vec(0u64..10_000_000, 8),
            strings in proptest::collection::vec("[a-zA-Z0-9 ;:.,()\\-*/#$@\"`\\[\\]éü\\n\\t]{0,8}", 8),
        ) {
            let sql = glue(&parts);
            let Some((key, literals)) = quick_shape(&sql) else {
                return Ok(());
            };
            let other: Vec<Literal<'_>> = literals
                .iter()
                .enumerate()
                .map(|(i, l)| match l {
                    Literal::Number(_) => Literal::Number(numbers[i % 8].to_string().into()),
                    Literal::Str(_) => Literal::Str(strings[i % 8].clone().into()),
                })
                .collect();
            let sql2 = refill(&key, &other);
            let (key2, literals2) = quick_shape(&sql2).unwrap_or_else(|| panic!("{sql2:?}"));
            proptest::prop_assert_eq!(&key, &key2);
            proptest::prop_assert_eq!(&literals2, &other);
            for d in [Dialect::Postgres, Dialect::Mysql] {
                let one = shape(&sql, d);
                let two = shape(&sql2, d);
                match (&one, &two) {
                    (Some((s1, l1)), Some((s2, l2))) => {
                        proptest::prop_assert_eq!(s1, s2, "{:?} / {:?}", sql, sql2);
                        proptest::prop_assert_eq!(l1, &literals, "{:?}", sql);
                        proptest::prop_assert_eq!(l2, &other, "{:?}", sql2);
                    }
                    // Shapeless (the tokenizer refuses the text, say) for
                    // every value alike: never learned under a quick key.
                    (None, None) => {}
                    _ => proptest::prop_assert!(false, "{:?} / {:?}: {:?} / {:?}", sql, sql2, one, two),
                }
            }
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
