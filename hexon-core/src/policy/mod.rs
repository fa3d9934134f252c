//! The policy engine: which route does a request hit, and may this caller pass?
//!
//! Routes and rules are written as [`spec::RouteSpec`] / [`spec::RuleSpec`]
//! (configuration, admin API) and compiled once into a [`PolicyEngine`]:
//!
//! - an **HTTP route matcher** (host, path, method) whose lookup cost does not
//!   grow with the number of routes, with a documented priority when several
//!   routes match (see [`PolicyEngine`]);
//! - per route, a protocol-independent [`RuleSet`] evaluated over a
//!   [`Subject`] (identity or anonymous, source IP, time, client-certificate
//!   SANs). SSH targets and SQL databases compile their own `RuleSet`s from
//!   the same `RuleSpec`s.
//!
//! [`PolicyEngine::decide`] is a synchronous pure function that allocates
//! nothing for a well-formed request and returns a [`Decision`]: a
//! [`Verdict`] (allow / need login / need step-up / deny), a [`Reason`] code,
//! the route name and the deciding rule. [`PolicyEngine::explain`] returns the
//! same decision with a full trace for operators and audit.
//!
//! **Deny wins; no matching route, a malformed request and no matching allow
//! rule all deny.** The reference, with configuration examples, is
//! `docs/POLICY.md`.
//!
//! ```
//! use hexon_core::policy::{CompileOptions, HttpRequest, PolicyEngine, Subject, Verdict};
//! use hexon_core::policy::spec::{RouteSpec, RuleSpec};
//! use hexon_core::{Identity, UnixTime};
//!
//! let routes = vec![
//!     RouteSpec {
//!         name: "health".into(),
//!         host: "*".into(),
//!         path: "/healthz".into(),
//!         methods: vec!["GET".into()],
//!         public: true,
//!         public_methods: vec![],
//!         allow: vec![],
//!         deny: vec![],
//!         credentials: vec![],
//!     },
//!     RouteSpec {
//!         name: "admin".into(),
//!         host: "app.example.com".into(),
//!         path: "/admin/*".into(),
//!         methods: vec![],
//!         public: false,
//!         public_methods: vec![],
//!         allow: vec![RuleSpec {
//!             groups: vec!["admins".into()],
//!             auth_methods: vec!["webauthn".into()],
//!             ..RuleSpec::default()
//!         }],
//!         deny: vec![],
//!         credentials: vec![],
//!     },
//! ];
//! let engine = PolicyEngine::compile(&routes, &CompileOptions::default())?;
//!
//! let now = UnixTime::from_secs(1_700_000_000);
//! let alice = Identity::builder("u-1", "alice")
//!     .groups(["admins"])
//!     .auth("webauthn", now)?
//!     .build()?;
//! let req = HttpRequest::new("GET", "app.example.com", "/admin/users");
//!
//! let d = engine.decide(&req, &Subject::new(Some(&alice), now));
//! assert_eq!(d.verdict, Verdict::Allow);
//! assert_eq!(d.route, Some("admin"));
//!
//! let d = engine.decide(&req, &Subject::anonymous(now));
//! assert_eq!(d.verdict, Verdict::NeedLogin);
//!
//! // `/adminx` is not under `/admin/*`, and no other route matches.
//! let d = engine.decide(&HttpRequest::new("GET", "app.example.com", "/adminx"), &Subject::new(Some(&alice), now));
//! assert!(d.is_deny());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::HashMap;
use std::fmt;
use std::ops::ControlFlow;

use serde::Serialize;

mod decision;
mod error;
mod host;
mod matcher;
mod path;
mod rules;
pub mod spec;
mod timewin;

#[cfg(test)]
mod tests;

pub use decision::{Decision, Reason, RuleList, RuleRef, Verdict};
pub use error::{CompileError, CompileErrorKind, CompileErrors, RequestError};
pub use matcher::{HostTier, PathKind};
pub use rules::{CertSan, Condition, ConditionTrace, RuleSet, RuleTrace, RulesTrace, Subject};

use error::{Errors, trunc};
use host::{HostPattern, MAX_HOST, normalize_host};
use matcher::RouteIndex;
use path::{PathPattern, normalize_path};
pub use spec::Credential;
use spec::RouteSpec;

/// Options for [`PolicyEngine::compile`].
#[derive(Clone, Copy, Default)]
#[non_exhaustive]
pub struct CompileOptions<'a> {
    /// If set, every group named in a rule must satisfy this predicate
    /// ("does the directory know this group?"); others are refused.
    pub group_exists: Option<&'a dyn Fn(&str) -> bool>,
    /// If set, routes from this index on are a second tier: matched only
    /// when no route before it matches the request (the gateway's routes
    /// from the durable store, behind the configuration file's).
    pub second_tier_from: Option<usize>,
}

impl<'a> CompileOptions<'a> {
    /// Default options: groups are not checked.
    pub fn new() -> Self {
        Self::default()
    }

    /// Refuse groups for which `f` returns false.
    pub fn group_exists(mut self, f: &'a dyn Fn(&str) -> bool) -> Self {
        self.group_exists = Some(f);
        self
    }

    /// Routes from index `n` on are matched only when no earlier route
    /// matches (whatever their specificity): a second tier that can never
    /// take a request the first tier's routes match.
    pub fn second_tier_from(mut self, n: usize) -> Self {
        self.second_tier_from = Some(n);
        self
    }
}

impl fmt::Debug for CompileOptions<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompileOptions")
            .field("group_exists", &self.group_exists.map(|_| "<fn>"))
            .field("second_tier_from", &self.second_tier_from)
            .finish()
    }
}

/// The parts of an HTTP request the route matcher looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HttpRequest<'a> {
    /// Method, e.g. `GET` (compared case-insensitively).
    pub method: &'a str,
    /// Host, from the URI authority or the `Host` header; a port is ignored.
    pub host: &'a str,
    /// Path as received (percent-encoded); a query string is ignored.
    pub path: &'a str,
    /// `host`, already normalized ([`HttpRequest::with_normal_host`]).
    normal: Option<&'a NormalHost>,
}

/// A request host as the route matcher reads it: port removed, one
/// trailing dot removed, ASCII lower case. Made once by [`NormalHost::new`]
/// and kept, it saves reading the host again for each request that sends
/// the same one (a kept connection's requests do): decide those with
/// [`HttpRequest::with_normal_host`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NormalHost(Box<str>);

impl NormalHost {
    /// Normalize a request host (`Host` header or URI authority host);
    /// fails on an empty, over-long or malformed host, as
    /// [`PolicyEngine::decide`] does.
    pub fn new(host: &str) -> Result<Self, RequestError> {
        let mut buf = [0u8; MAX_HOST + 3];
        normalize_host(host, &mut buf).map(|h| NormalHost(h.into()))
    }

    /// The normalized host.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'a> HttpRequest<'a> {
    /// A request from its parts.
    pub fn new(method: &'a str, host: &'a str, path: &'a str) -> Self {
        HttpRequest {
            method,
            host,
            path,
            normal: None,
        }
    }

    /// A request whose host was normalized before ([`NormalHost`]); it is
    /// decided as [`new`](Self::new) with the host it was made from.
    pub fn with_normal_host(method: &'a str, host: &'a NormalHost, path: &'a str) -> Self {
        HttpRequest {
            method,
            host: host.as_str(),
            path,
            normal: Some(host),
        }
    }

    /// The host as the matcher reads it, normalized into `buf` unless it
    /// was before.
    fn normal_host<'b>(&'b self, buf: &'b mut [u8; MAX_HOST + 3]) -> Result<&'b str, RequestError> {
        match self.normal {
            Some(n) => Ok(n.as_str()),
            None => normalize_host(self.host, buf),
        }
    }

    /// The parts of an [`http::Request`]: the host from the URI authority
    /// (HTTP/2 `:authority`, absolute-form) or else the `Host` header (an
    /// unreadable header gives an empty host, which is refused).
    pub fn from_http<B>(req: &'a http::Request<B>) -> Self {
        let host = req
            .uri()
            .authority()
            .map(|a| a.host())
            .or_else(|| {
                req.headers()
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
            })
            .unwrap_or("");
        HttpRequest {
            method: req.method().as_str(),
            host,
            path: req.uri().path(),
            normal: None,
        }
    }
}

/// A method list: upper-case names. `GET` also covers `HEAD`.
#[derive(Clone, Debug, Default)]
struct Methods(Box<[Box<str>]>);

impl Methods {
    fn contains(&self, m: &str) -> bool {
        self.0.iter().any(|x| x.eq_ignore_ascii_case(m))
            || (m.eq_ignore_ascii_case("HEAD") && self.0.iter().any(|x| &**x == "GET"))
    }
}

fn compile_methods(v: &[String], at: &str, field: &str, errs: &mut Errors) -> Methods {
    let mut out: Vec<Box<str>> = Vec::with_capacity(v.len());
    for (i, m) in v.iter().enumerate() {
        let ok = !m.is_empty()
            && m.len() <= 32
            && m.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        let up = m.to_ascii_uppercase();
        if !ok {
            errs.push(
                format_args!("{at}.{field}[{i}]"),
                CompileErrorKind::InvalidMethod(trunc(m)),
            );
        } else if out.iter().any(|x| **x == *up) {
            errs.push(
                format_args!("{at}.{field}[{i}]"),
                CompileErrorKind::DuplicateMethod(trunc(m)),
            );
        } else {
            out.push(up.into());
        }
    }
    Methods(out.into())
}

/// One compiled route.
#[derive(Debug)]
pub struct Route {
    name: Box<str>,
    host: Box<str>,
    path: Box<str>,
    methods: Methods,
    public: bool,
    public_methods: Methods,
    /// Accepted [`Credential`]s, one bit each.
    credentials: u16,
    rules: RuleSet,
}

/// What a route accepts without a `credentials` list: everything but keys
/// in URLs.
fn default_credentials() -> u16 {
    Credential::ALL
        .iter()
        .filter(|c| **c != Credential::ApiKeyQuery)
        .fold(0, |m, c| m | c.bit())
}

impl Route {
    /// The route's unique name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The host pattern as written.
    pub fn host(&self) -> &str {
        &self.host
    }
    /// The path pattern as written.
    pub fn path(&self) -> &str {
        &self.path
    }
    /// The methods covered (upper-case); empty means all.
    pub fn methods(&self) -> impl ExactSizeIterator<Item = &str> {
        self.methods.0.iter().map(|m| &**m)
    }
    /// Whether the route covers `method` (`GET` covers `HEAD`; case-insensitive).
    pub fn covers_method(&self, method: &str) -> bool {
        self.methods.0.is_empty() || self.methods.contains(method)
    }
    /// Whether `method` needs no authentication on this route.
    pub fn is_public_for(&self, method: &str) -> bool {
        self.public || self.public_methods.contains(method)
    }
    /// Whether the whole route is public.
    pub fn is_public(&self) -> bool {
        self.public
    }
    /// Whether a caller authenticated with `credential` may use this route.
    pub fn accepts(&self, credential: Credential) -> bool {
        self.credentials & credential.bit() != 0
    }
    /// The accepted credentials.
    pub fn credentials(&self) -> impl Iterator<Item = Credential> + '_ {
        Credential::ALL.into_iter().filter(|c| self.accepts(*c))
    }
    /// The route's rules.
    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }
    /// Whether the subject's credential is one this route accepts
    /// (anonymous callers have none to check).
    fn credential_ok(&self, subject: &Subject<'_>) -> bool {
        subject.identity.is_none() || self.accepts(subject.credential.unwrap_or(Credential::Other))
    }
    /// The route's verdict for `subject` (route already matched).
    fn eval(&self, subject: &Subject<'_>, method: &str) -> Decision<'_> {
        if !self.credential_ok(subject) {
            return Decision::deny(Reason::CredentialNotAccepted);
        }
        self.rules.eval(subject, self.public_reason(method))
    }
    fn public_reason(&self, method: &str) -> Option<Reason> {
        if self.public {
            Some(Reason::Public)
        } else if self.public_methods.contains(method) {
            Some(Reason::PublicMethod)
        } else {
            None
        }
    }
}

/// Compiled routes: the HTTP route matcher and each route's [`RuleSet`].
///
/// # Matching priority
///
/// A route matches when its host pattern, path pattern and methods all
/// match. When several match, the first in this order wins:
///
/// 1. **Host tier**: exact host, then `*.suffix` wildcards (longest suffix
///    first), then `*`. A lower tier is only tried when no route of a higher
///    tier matches the path and method.
/// 2. Within a tier, **exact path**.
/// 3. Then prefix and glob patterns by **literal depth**, deepest first: the
///    number of leading literal segments (`/api/v1/*` → 2, `/files/**/*.pdf` → 1,
///    `/*` → 0). At equal depth a glob comes before a prefix (it says more).
/// 4. Then **declaration order**.
///
/// A route whose methods exclude the request's method does not match: the
/// next candidate is tried. Hosts are compared case-insensitively with the
/// port and a trailing dot removed; paths case-sensitively, on the normalised
/// path (see `docs/POLICY.md`).
#[derive(Debug)]
pub struct PolicyEngine {
    routes: Box<[Route]>,
    index: RouteIndex,
    /// Routes consulted only when `index` has no match
    /// ([`CompileOptions::second_tier_from`]).
    second: RouteIndex,
    by_name: HashMap<Box<str>, usize>,
}

impl PolicyEngine {
    /// Validate and compile routes. Every problem is reported with its
    /// location (`route[3].allow[0].groups[1]: unknown group "eng"`).
    pub fn compile(routes: &[RouteSpec], opts: &CompileOptions<'_>) -> Result<Self, CompileErrors> {
        let mut errs = Errors::default();
        let mut by_name: HashMap<Box<str>, usize> = HashMap::with_capacity(routes.len());
        let mut compiled = Vec::with_capacity(routes.len());
        let mut index = RouteIndex::default();
        let mut second = RouteIndex::default();
        for (i, spec) in routes.iter().enumerate() {
            let at = format!("route[{i}]");
            let name_ok = !spec.name.is_empty()
                && spec.name.len() <= 128
                && spec.name.bytes().all(|b| b.is_ascii_graphic());
            if !name_ok {
                errs.push(
                    format_args!("{at}.name"),
                    CompileErrorKind::InvalidRouteName(trunc(&spec.name)),
                );
            } else if let Some(&first) = by_name.get(spec.name.as_str()) {
                errs.push(
                    format_args!("{at}.name"),
                    CompileErrorKind::DuplicateRouteName {
                        name: trunc(&spec.name),
                        first,
                    },
                );
            } else {
                by_name.insert(spec.name.as_str().into(), i);
            }
            let host = HostPattern::parse(&spec.host)
                .map_err(|why| {
                    errs.push(
                        format_args!("{at}.host"),
                        CompileErrorKind::InvalidHost {
                            input: trunc(&spec.host),
                            why,
                        },
                    )
                })
                .ok();
            let path = PathPattern::parse(&spec.path)
                .map_err(|why| {
                    errs.push(
                        format_args!("{at}.path"),
                        CompileErrorKind::InvalidPath {
                            input: trunc(&spec.path),
                            why,
                        },
                    )
                })
                .ok();
            let methods = compile_methods(&spec.methods, &at, "methods", &mut errs);
            let public_methods =
                compile_methods(&spec.public_methods, &at, "public_methods", &mut errs);
            if !methods.0.is_empty() {
                for (j, m) in spec.public_methods.iter().enumerate() {
                    if !methods.contains(m) {
                        errs.push(
                            format_args!("{at}.public_methods[{j}]"),
                            CompileErrorKind::PublicMethodNotCovered(trunc(m)),
                        );
                    }
                }
            }
            let mut credentials = 0u16;
            for (j, c) in spec.credentials.iter().enumerate() {
                if credentials & c.bit() != 0 {
                    errs.push(
                        format_args!("{at}.credentials[{j}]"),
                        CompileErrorKind::DuplicateCredential(c.as_str()),
                    );
                }
                credentials |= c.bit();
            }
            if credentials == 0 {
                credentials = default_credentials();
            }
            let rules =
                RuleSet::compile_into(&spec.allow, &spec.deny, &at, opts.group_exists, &mut errs);
            if let (Some(host), Some(path), Some(rules)) = (host, path, rules) {
                let tier = if opts.second_tier_from.is_some_and(|n| i >= n) {
                    &mut second
                } else {
                    &mut index
                };
                tier.insert(&host, &path, compiled.len());
                compiled.push(Route {
                    name: spec.name.as_str().into(),
                    host: spec.host.as_str().into(),
                    path: spec.path.as_str().into(),
                    methods,
                    public: spec.public,
                    public_methods,
                    credentials,
                    rules,
                });
            }
        }
        if !errs.0.is_empty() {
            return Err(CompileErrors::from_vec(errs.0));
        }
        // Without errors every route compiled, so indices are declaration indices.
        Ok(PolicyEngine {
            routes: compiled.into(),
            index,
            second,
            by_name,
        })
    }

    /// The routes, in declaration order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// A route by name.
    pub fn route(&self, name: &str) -> Option<&Route> {
        self.by_name.get(name).and_then(|&i| self.routes.get(i))
    }

    /// The route a request hits, if any (no rules evaluated). Fails on a
    /// malformed host or path.
    pub fn match_route(&self, req: &HttpRequest<'_>) -> Result<Option<&Route>, RequestError> {
        let mut buf = [0u8; MAX_HOST + 3];
        let host = req.normal_host(&mut buf)?;
        let path = normalize_path(req.path)?;
        Ok(self.lookup(host, &path, req.method))
    }

    fn lookup(&self, host: &str, path: &str, method: &str) -> Option<&Route> {
        let pick = |id: usize, _: HostTier, _: PathKind, path_ok: bool| match self.routes.get(id) {
            Some(r) if path_ok && r.covers_method(method) => ControlFlow::Break(id),
            _ => ControlFlow::Continue(()),
        };
        let id = self
            .index
            .find(host, path, pick)
            .or_else(|| self.second.find(host, path, pick))?;
        self.routes.get(id)
    }

    /// Decide an HTTP request. Allocates nothing unless the path needs
    /// percent-decoding or slash-collapsing.
    pub fn decide<'e>(&'e self, req: &HttpRequest<'_>, subject: &Subject<'_>) -> Decision<'e> {
        let mut buf = [0u8; MAX_HOST + 3];
        let Ok(host) = req.normal_host(&mut buf) else {
            return Decision::deny(Reason::MalformedHost);
        };
        let Ok(path) = normalize_path(req.path) else {
            return Decision::deny(Reason::MalformedPath);
        };
        let Some(route) = self.lookup(host, &path, req.method) else {
            return Decision::deny(Reason::NoRoute);
        };
        let mut d = route.eval(subject, req.method);
        d.route = Some(&route.name);
        d
    }

    /// [`decide`](Self::decide) for an [`http::Request`] (see [`HttpRequest::from_http`]).
    pub fn decide_http<'e, B>(
        &'e self,
        req: &http::Request<B>,
        subject: &Subject<'_>,
    ) -> Decision<'e> {
        self.decide(&HttpRequest::from_http(req), subject)
    }

    /// Decide and explain: the candidates tried (and why each was skipped),
    /// every rule with each condition's outcome, and the decision — which is
    /// always the one [`decide`](Self::decide) returns.
    pub fn explain<'e>(&'e self, req: &HttpRequest<'_>, subject: &Subject<'_>) -> Explanation<'e> {
        let decision = self.decide(req, subject);
        let mut ex = Explanation {
            method: trunc_long(req.method),
            host: trunc_long(req.host),
            path: trunc_long(req.path),
            normalized_host: None,
            normalized_path: None,
            request_error: None,
            candidates: Vec::new(),
            rules: None,
            credential_accepted: None,
            decision,
        };
        let mut buf = [0u8; MAX_HOST + 3];
        let host = match req.normal_host(&mut buf) {
            Ok(h) => h,
            Err(e) => {
                ex.request_error = Some(e);
                return ex;
            }
        };
        ex.normalized_host = Some(host.to_owned());
        let path = match normalize_path(req.path) {
            Ok(p) => p,
            Err(e) => {
                ex.request_error = Some(e);
                return ex;
            }
        };
        ex.normalized_path = Some(trunc_long(&path));
        let mut candidates = Vec::new();
        let mut consider = |id: usize, tier: HostTier, kind: PathKind, path_ok: bool| {
            let Some(r) = self.routes.get(id) else {
                return ControlFlow::Continue(());
            };
            let outcome = if !path_ok {
                CandidateOutcome::PathNotMatched
            } else if !r.covers_method(req.method) {
                CandidateOutcome::MethodNotCovered
            } else {
                CandidateOutcome::Selected
            };
            candidates.push(Candidate {
                route: &r.name,
                host: &r.host,
                path: &r.path,
                tier,
                kind,
                outcome,
            });
            if outcome == CandidateOutcome::Selected {
                ControlFlow::Break(id)
            } else {
                ControlFlow::Continue(())
            }
        };
        let found = self
            .index
            .find(host, &path, &mut consider)
            .or_else(|| self.second.find(host, &path, &mut consider));
        ex.candidates = candidates;
        if let Some(route) = found.and_then(|id| self.routes.get(id)) {
            ex.rules = Some(route.rules.trace(subject, route.public_reason(req.method)));
            ex.credential_accepted = subject.identity.map(|_| route.credential_ok(subject));
        }
        ex
    }
}

fn trunc_long(s: &str) -> String {
    const MAX: usize = 1024;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", s.get(..i).unwrap_or("")),
        None => s.to_owned(),
    }
}

/// What happened to one candidate route during matching.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CandidateOutcome {
    /// The route matched and was chosen.
    Selected,
    /// Host and path matched but the route does not cover the method.
    MethodNotCovered,
    /// The literal part of the path matched but the glob did not.
    PathNotMatched,
}

/// A route considered during matching, in priority order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Candidate<'e> {
    /// Route name.
    pub route: &'e str,
    /// Host pattern as written.
    pub host: &'e str,
    /// Path pattern as written.
    pub path: &'e str,
    /// Host tier it came from.
    pub tier: HostTier,
    /// How its path pattern applies.
    pub kind: PathKind,
    /// What happened.
    pub outcome: CandidateOutcome,
}

/// A decision with its trace. `Display` is for operators; `Serialize` for audit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Explanation<'e> {
    /// Request method (truncated to 1024 characters, as host and path).
    pub method: String,
    /// Request host as received.
    pub host: String,
    /// Request path as received.
    pub path: String,
    /// Host after normalisation, if it was well-formed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub normalized_host: Option<String>,
    /// Path after normalisation, if it was well-formed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub normalized_path: Option<String>,
    /// Why the request could not be matched, if it was malformed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_error: Option<RequestError>,
    /// Candidate routes in priority order, up to the selected one.
    pub candidates: Vec<Candidate<'e>>,
    /// The selected route's rules, evaluated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rules: Option<RulesTrace<'e>>,
    /// Whether the selected route accepts the caller's credential kind
    /// (`None`: anonymous caller or no route).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential_accepted: Option<bool>,
    /// The decision (identical to [`PolicyEngine::decide`]'s).
    pub decision: Decision<'e>,
}

impl fmt::Display for Explanation<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "request: {} {:?} {:?}",
            self.method, self.host, self.path
        )?;
        if let Some(e) = self.request_error {
            writeln!(f, "  refused: {e}")?;
        }
        if let (Some(h), Some(p)) = (&self.normalized_host, &self.normalized_path) {
            writeln!(f, "  normalised: host {h:?}, path {p:?}")?;
            if self.candidates.is_empty() {
                writeln!(f, "route candidates: none")?;
            } else {
                writeln!(f, "route candidates (priority order):")?;
            }
        }
        for c in &self.candidates {
            let what = match c.outcome {
                CandidateOutcome::Selected => "selected",
                CandidateOutcome::MethodNotCovered => "skipped: method not covered",
                CandidateOutcome::PathNotMatched => "skipped: glob does not match",
            };
            let tier = match c.tier {
                HostTier::Exact => "exact host",
                HostTier::Wildcard => "wildcard host",
                HostTier::Any => "any host",
            };
            let kind = match c.kind {
                PathKind::Exact => "exact path",
                PathKind::Glob => "glob",
                PathKind::Prefix => "prefix",
            };
            writeln!(
                f,
                "  {} {:?} ({tier} {}, {kind} {}): {what}",
                if c.outcome == CandidateOutcome::Selected {
                    "✓"
                } else {
                    "✗"
                },
                c.route,
                c.host,
                c.path
            )?;
        }
        if self.credential_accepted == Some(false) {
            writeln!(
                f,
                "  the route does not accept the caller's credential kind"
            )?;
        }
        if let Some(r) = &self.rules {
            writeln!(f, "rules of route {:?}:", self.decision.route.unwrap_or(""))?;
            fmt::Display::fmt(r, f)?;
        }
        write!(f, "decision: {}", self.decision)
    }
}
