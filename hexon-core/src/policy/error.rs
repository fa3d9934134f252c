//! Compile errors (with locations) and request errors.

use std::fmt;

/// What is wrong with one field of a route or rule specification.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CompileErrorKind {
    /// A route name is empty or contains characters unfit for a header.
    #[error("invalid route name {0:?}: use 1-128 visible ASCII characters")]
    InvalidRouteName(String),
    /// Two routes share a name.
    #[error("duplicate route name {name:?} (first used by route[{first}])")]
    DuplicateRouteName {
        /// The name.
        name: String,
        /// Index of the route that used it first.
        first: usize,
    },
    /// The host pattern is malformed.
    #[error("{input:?} is not a valid host pattern: {why}")]
    InvalidHost {
        /// The pattern, truncated.
        input: String,
        /// What is wrong.
        why: &'static str,
    },
    /// The path pattern is malformed.
    #[error("{input:?} is not a valid path pattern: {why}")]
    InvalidPath {
        /// The pattern, truncated.
        input: String,
        /// What is wrong.
        why: &'static str,
    },
    /// An HTTP method name is malformed.
    #[error("{0:?} is not a valid HTTP method")]
    InvalidMethod(String),
    /// A method is listed twice.
    #[error("method {0:?} is listed twice")]
    DuplicateMethod(String),
    /// A credential kind is listed twice.
    #[error("credential {0:?} is listed twice")]
    DuplicateCredential(&'static str),
    /// A `public_methods` entry is not covered by the route's `methods`.
    #[error("method {0:?} is not among the route's methods, so it can never be public")]
    PublicMethodNotCovered(String),
    /// An allow rule has no selector, so it would allow anyone.
    #[error(
        "an allow rule needs a selector (users, groups, email_domains or authenticated = true); \
         use `public = true` on the route for unauthenticated access"
    )]
    AllowRuleWithoutSelector,
    /// A list entry is empty.
    #[error("must not be empty")]
    Empty,
    /// A group is not known to the directory.
    #[error("unknown group {0:?}")]
    UnknownGroup(String),
    /// An email domain is malformed.
    #[error("{input:?} is not a valid email domain: {why}")]
    InvalidEmailDomain {
        /// The domain, truncated.
        input: String,
        /// What is wrong.
        why: &'static str,
    },
    /// An authentication method name is malformed.
    #[error(transparent)]
    InvalidAuthMethod(#[from] crate::identity::InvalidAuthMethod),
    /// `max_auth_age` is zero.
    #[error("must be greater than zero")]
    ZeroMaxAuthAge,
    /// A CIDR or address is malformed.
    #[error("{input:?} is not a valid CIDR or IP address")]
    InvalidCidr {
        /// The input, truncated.
        input: String,
    },
    /// An IANA time zone is unknown.
    #[error("unknown time zone {0:?} (use an IANA name such as \"Europe/Berlin\")")]
    InvalidTimeZone(String),
    /// A day name or range is malformed.
    #[error("{0:?} is not a day (mon, tue, wed, thu, fri, sat, sun) or a range like \"mon-fri\"")]
    InvalidDay(String),
    /// A time of day is malformed.
    #[error("{input:?} is not a valid time of day: {why}")]
    InvalidTimeOfDay {
        /// The input, truncated.
        input: String,
        /// What is wrong.
        why: &'static str,
    },
    /// `from` equals `to`.
    #[error("`from` and `to` are equal ({0:?}): the window would be empty")]
    EmptyTimeWindow(String),
    /// A client-certificate SAN pattern is malformed.
    #[error("{input:?} is not a valid SAN pattern: {why}")]
    InvalidSan {
        /// The input, truncated.
        input: String,
        /// What is wrong.
        why: &'static str,
    },
}

/// One problem in a route or rule specification, with where it is.
///
/// Displays as `location: message`, e.g.
/// `route[3].allow[0].groups[1]: unknown group "eng"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompileError {
    location: String,
    kind: CompileErrorKind,
}

impl CompileError {
    pub(crate) fn new(location: String, kind: CompileErrorKind) -> Self {
        CompileError { location, kind }
    }

    /// Where the problem is: `route[3].allow[0].groups[1]`, `route[0].path`, ….
    pub fn location(&self) -> &str {
        &self.location
    }

    /// What the problem is.
    pub fn kind(&self) -> &CompileErrorKind {
        &self.kind
    }
}

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.kind)
    }
}

impl std::error::Error for CompileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            CompileErrorKind::InvalidAuthMethod(e) => Some(e),
            _ => None,
        }
    }
}

/// Every problem found while compiling (never only the first). Not empty.
///
/// Displays one error per line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompileErrors(Vec<CompileError>);

impl CompileErrors {
    pub(crate) fn from_vec(v: Vec<CompileError>) -> Self {
        CompileErrors(v)
    }

    /// The errors, in specification order.
    pub fn errors(&self) -> &[CompileError] {
        &self.0
    }

    /// The errors, in specification order.
    pub fn iter(&self) -> std::slice::Iter<'_, CompileError> {
        self.0.iter()
    }

    /// Number of errors.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: a `CompileErrors` holds at least one error.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Take the errors.
    pub fn into_vec(self) -> Vec<CompileError> {
        self.0
    }
}

impl<'a> IntoIterator for &'a CompileErrors {
    type Item = &'a CompileError;
    type IntoIter = std::slice::Iter<'a, CompileError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl fmt::Display for CompileErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            fmt::Display::fmt(e, f)?;
        }
        Ok(())
    }
}

impl std::error::Error for CompileErrors {}

/// Why a request could not be matched at all (the decision is deny).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RequestError {
    /// The path does not start with `/`.
    #[error("path does not start with '/'")]
    PathNotAbsolute,
    /// The path has a `.` or `..` segment (also percent-encoded or with `;` parameters).
    #[error("path has a dot-segment ('.' or '..')")]
    DotSegment,
    /// The path has an encoded slash (`%2f`) or backslash (`%5c`).
    #[error("path has an encoded slash or backslash")]
    EncodedSeparator,
    /// The path has a NUL, a control character or a raw backslash, raw or encoded.
    #[error("path has a NUL, control character or backslash")]
    ForbiddenCharacter,
    /// A `%` is not followed by two hex digits.
    #[error("path has an invalid percent-encoding")]
    BadPercentEncoding,
    /// The percent-decoded path is not UTF-8.
    #[error("percent-decoded path is not UTF-8")]
    NotUtf8,
    /// The host is empty, too long, or has characters a host name cannot have.
    #[error("host is empty or malformed")]
    MalformedHost,
    /// A path segment carries `;` parameters (`/admin;x/users`): servlet
    /// containers strip them and would route to `/admin/users`, which the
    /// policy would not have matched.
    #[error("path has ';' parameters")]
    PathParameters,
}

/// Collects errors while compiling, building locations lazily.
#[derive(Default)]
pub(crate) struct Errors(pub(crate) Vec<CompileError>);

impl Errors {
    pub(crate) fn push(&mut self, location: impl fmt::Display, kind: CompileErrorKind) {
        self.0.push(CompileError::new(location.to_string(), kind));
    }
}

/// Truncate user input quoted in an error message.
pub(crate) fn trunc(s: &str) -> String {
    const MAX: usize = 80;
    if s.chars().count() <= MAX {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(MAX).collect();
        t.push('…');
        t
    }
}
