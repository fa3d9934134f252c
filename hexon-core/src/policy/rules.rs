//! Protocol-independent rule evaluation: does this caller pass these rules?
//!
//! A [`RuleSet`] is compiled from allow and deny [`RuleSpec`]s and evaluated
//! over a [`Subject`]. HTTP routes carry one; SSH targets and SQL databases
//! will carry their own, compiled from the same specifications.

use std::fmt::{self, Write as _};
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::Serialize;

use super::decision::{Decision, Reason, RuleList, RuleRef, Verdict};
use super::error::{CompileErrorKind, CompileErrors, Errors, trunc};
use super::spec::{Credential, RuleSpec};
use super::timewin::TimeWindow;
use crate::duration::HumanDuration;
use crate::identity::{AuthMethod, Identity, IdentityKind};
use crate::time::UnixTime;

/// A subject alternative name from the caller's (already verified) TLS client certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CertSan<'a> {
    /// `dNSName`.
    Dns(&'a str),
    /// `rfc822Name`.
    Email(&'a str),
    /// `uniformResourceIdentifier` (e.g. a SPIFFE ID).
    Uri(&'a str),
}

/// Who is asking, from where, and when: everything rules are evaluated over.
///
/// ```
/// use hexon_core::policy::Subject;
/// use hexon_core::UnixTime;
/// let s = Subject::anonymous(UnixTime::from_secs(1_700_000_000))
///     .with_source_ip("10.1.2.3".parse().unwrap());
/// assert!(s.identity.is_none());
/// ```
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct Subject<'a> {
    /// The authenticated caller, or `None` for an anonymous one.
    pub identity: Option<&'a Identity>,
    /// The client's address (after trusted-proxy resolution). `None` fails
    /// every `source_ips` condition.
    pub source_ip: Option<IpAddr>,
    /// The instant the request is evaluated at.
    pub now: UnixTime,
    /// SANs of the client certificate, if the TLS layer verified one.
    pub client_cert_sans: &'a [CertSan<'a>],
    /// The kind of credential the caller authenticated with (`None` for an
    /// authenticated caller counts as [`Credential::Other`]).
    pub credential: Option<Credential>,
}

impl<'a> Subject<'a> {
    /// A subject for `identity` (or anonymous) at `now`.
    pub fn new(identity: Option<&'a Identity>, now: UnixTime) -> Self {
        Subject {
            identity,
            source_ip: None,
            now,
            client_cert_sans: &[],
            credential: None,
        }
    }

    /// An anonymous subject at `now`.
    pub fn anonymous(now: UnixTime) -> Self {
        Subject::new(None, now)
    }

    /// Set the source address.
    pub fn with_source_ip(mut self, ip: IpAddr) -> Self {
        self.source_ip = Some(ip);
        self
    }

    /// Set the kind of credential the caller authenticated with.
    pub fn with_credential(mut self, credential: Credential) -> Self {
        self.credential = Some(credential);
        self
    }

    /// Set the verified client-certificate SANs.
    pub fn with_client_cert_sans(mut self, sans: &'a [CertSan<'a>]) -> Self {
        self.client_cert_sans = sans;
        self
    }
}

/// A compiled client-certificate SAN pattern.
#[derive(Clone, Debug)]
enum SanPattern {
    /// Exact DNS name (lower-case).
    Dns(Box<str>),
    /// `*.suffix`: exactly one label before `.suffix` (stored as `.suffix`).
    DnsWildcard(Box<str>),
    /// Email: local part exact, domain case-insensitive.
    Email { local: Box<str>, domain: Box<str> },
    /// Exact URI.
    Uri(Box<str>),
    /// URI prefix ending in `/` (written `…/*`); something must follow it.
    UriPrefix(Box<str>),
}

fn dns_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl SanPattern {
    fn parse(s: &str) -> Result<Self, &'static str> {
        if s.bytes().any(|b| b <= 0x20 || b == 0x7f) {
            return Err("whitespace or control character");
        }
        if let Some((scheme, _)) = s.split_once("://") {
            if scheme.is_empty()
                || !scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-' || b == b'.')
            {
                return Err("invalid URI scheme");
            }
            return match s.strip_suffix('*') {
                Some(p) if p.ends_with('/') && !p.contains('*') => {
                    Ok(SanPattern::UriPrefix(p.into()))
                }
                Some(_) => Err("a URI pattern may only end in \"/*\" (prefix)"),
                None if s.contains('*') => Err("a URI pattern may only end in \"/*\" (prefix)"),
                None => Ok(SanPattern::Uri(s.into())),
            };
        }
        if let Some((local, domain)) = s.rsplit_once('@') {
            let domain = domain.to_ascii_lowercase();
            if local.is_empty() || s.contains('*') || !dns_ok(&domain) {
                return Err("an email SAN is local@domain, without wildcards");
            }
            return Ok(SanPattern::Email {
                local: local.into(),
                domain: domain.into(),
            });
        }
        let lower = s.to_ascii_lowercase();
        if let Some(suffix) = lower.strip_prefix("*.") {
            let suffix = suffix.strip_suffix('.').unwrap_or(suffix);
            if !dns_ok(suffix) {
                return Err("after \"*.\" a DNS name must follow");
            }
            return Ok(SanPattern::DnsWildcard(format!(".{suffix}").into()));
        }
        let lower = lower.strip_suffix('.').unwrap_or(&lower);
        if !dns_ok(lower) {
            return Err("not a DNS name, email or URI (DNS wildcards are \"*.example.com\")");
        }
        Ok(SanPattern::Dns(lower.into()))
    }

    fn matches(&self, san: &CertSan<'_>) -> bool {
        match (self, *san) {
            (SanPattern::Dns(p), CertSan::Dns(d)) => {
                let d = d.strip_suffix('.').unwrap_or(d);
                p.eq_ignore_ascii_case(d)
            }
            (SanPattern::DnsWildcard(suffix), CertSan::Dns(d)) => {
                let d = d.strip_suffix('.').unwrap_or(d);
                let Some(split) = d.len().checked_sub(suffix.len()) else {
                    return false;
                };
                match (d.get(..split), d.get(split..)) {
                    (Some(label), Some(tail)) => {
                        tail.eq_ignore_ascii_case(suffix)
                            && !label.is_empty()
                            && label
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                    }
                    _ => false,
                }
            }
            (SanPattern::Email { local, domain }, CertSan::Email(e)) => e
                .rsplit_once('@')
                .is_some_and(|(l, d)| **local == *l && d.eq_ignore_ascii_case(domain)),
            (SanPattern::Uri(p), CertSan::Uri(u)) => **p == *u,
            (SanPattern::UriPrefix(p), CertSan::Uri(u)) => u.len() > p.len() && u.starts_with(&**p),
            _ => false,
        }
    }
}

impl fmt::Display for SanPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SanPattern::Dns(d) | SanPattern::Uri(d) => f.write_str(d),
            SanPattern::DnsWildcard(s) => write!(f, "*{s}"),
            SanPattern::Email { local, domain } => write!(f, "{local}@{domain}"),
            SanPattern::UriPrefix(p) => write!(f, "{p}*"),
        }
    }
}

/// The authentication part of a rule, checked against the caller's AMR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AuthCheck {
    Ok,
    /// None of the required methods was used.
    Missing,
    /// A required method was used, but not recently enough.
    Stale,
}

/// One compiled rule.
#[derive(Clone, Debug)]
struct Rule {
    name: Option<Box<str>>,
    users: Box<[Box<str>]>,
    groups: Box<[Box<str>]>,
    email_domains: Box<[Box<str>]>,
    authenticated: bool,
    kinds: Box<[IdentityKind]>,
    auth_methods: Box<[AuthMethod]>,
    max_auth_age: Option<Duration>,
    source_ips: Box<[IpNet]>,
    time: Option<TimeWindow>,
    sans: Box<[SanPattern]>,
}

impl Rule {
    fn has_selector(&self) -> bool {
        self.authenticated
            || !self.users.is_empty()
            || !self.groups.is_empty()
            || !self.email_domains.is_empty()
    }

    fn selected(&self, id: Option<&Identity>) -> bool {
        if !self.has_selector() {
            return true;
        }
        let Some(id) = id else { return false };
        self.authenticated
            || self.users.iter().any(|u| **u == *id.username())
            || self.groups.iter().any(|g| id.in_group(g))
            || id
                .email_domain()
                .is_some_and(|d| self.email_domains.iter().any(|e| e.eq_ignore_ascii_case(d)))
    }

    fn kind_ok(&self, id: Option<&Identity>) -> bool {
        self.kinds.is_empty() || id.is_some_and(|id| self.kinds.contains(&id.kind()))
    }

    fn auth(&self, id: Option<&Identity>, now: UnixTime) -> AuthCheck {
        if self.auth_methods.is_empty() && self.max_auth_age.is_none() {
            return AuthCheck::Ok;
        }
        let Some(id) = id else {
            return AuthCheck::Missing;
        };
        let mut used = false;
        for e in id.auth() {
            if self.auth_methods.is_empty() || self.auth_methods.contains(&e.method) {
                used = true;
                match self.max_auth_age {
                    None => return AuthCheck::Ok,
                    Some(max) if now.since(e.at) <= max => return AuthCheck::Ok,
                    Some(_) => {}
                }
            }
        }
        if used {
            AuthCheck::Stale
        } else {
            AuthCheck::Missing
        }
    }

    fn ip_ok(&self, ip: Option<IpAddr>) -> bool {
        self.source_ips.is_empty()
            || ip.is_some_and(|ip| {
                let ip = ip.to_canonical();
                self.source_ips.iter().any(|n| n.contains(&ip))
            })
    }

    fn time_ok(&self, now: UnixTime) -> bool {
        self.time.as_ref().is_none_or(|w| w.contains(now))
    }

    fn san_ok(&self, sans: &[CertSan<'_>]) -> bool {
        self.sans.is_empty() || sans.iter().any(|s| self.sans.iter().any(|p| p.matches(s)))
    }

    /// Conditions that do not depend on who the caller is.
    fn context_ok(&self, s: &Subject<'_>) -> bool {
        self.ip_ok(s.source_ip) && self.time_ok(s.now) && self.san_ok(s.client_cert_sans)
    }

    fn matches(&self, s: &Subject<'_>) -> bool {
        self.selected(s.identity)
            && self.kind_ok(s.identity)
            && self.context_ok(s)
            && self.auth(s.identity, s.now) == AuthCheck::Ok
    }

    fn rule_ref(&self, list: RuleList, index: usize) -> RuleRef<'_> {
        RuleRef {
            list,
            index,
            name: self.name.as_deref(),
        }
    }
}

/// Compiled allow and deny rules, evaluated over a [`Subject`].
///
/// Semantics (the same for every protocol):
///
/// 1. a matching **deny** rule denies (deny wins, even on public resources);
/// 2. a public resource is then allowed;
/// 3. the first matching **allow** rule allows;
/// 4. otherwise an anonymous caller for whom some allow rule's
///    caller-independent conditions (source IP, time, client certificate)
///    hold gets [`Verdict::NeedLogin`];
/// 5. an authenticated caller who passes every part of some allow rule except
///    the authentication method or its freshness gets [`Verdict::NeedStepUp`];
/// 6. everything else is denied.
#[derive(Clone, Debug)]
pub struct RuleSet {
    allow: Box<[Rule]>,
    deny: Box<[Rule]>,
}

fn loc(prefix: &str, rest: fmt::Arguments<'_>) -> String {
    if prefix.is_empty() {
        rest.to_string()
    } else {
        format!("{prefix}.{rest}")
    }
}

fn compile_rule(
    spec: &RuleSpec,
    at: &str,
    list: RuleList,
    group_exists: Option<&dyn Fn(&str) -> bool>,
    errs: &mut Errors,
) -> Option<Rule> {
    let before = errs.0.len();
    let nonempty = |field: &str, v: &[String], errs: &mut Errors| {
        for (i, s) in v.iter().enumerate() {
            if s.is_empty() {
                errs.push(format_args!("{at}.{field}[{i}]"), CompileErrorKind::Empty);
            }
        }
    };
    nonempty("users", &spec.users, errs);
    nonempty("groups", &spec.groups, errs);
    if let Some(exists) = group_exists {
        for (i, g) in spec.groups.iter().enumerate() {
            if !g.is_empty() && !exists(g) {
                errs.push(
                    format_args!("{at}.groups[{i}]"),
                    CompileErrorKind::UnknownGroup(trunc(g)),
                );
            }
        }
    }
    let mut email_domains = Vec::with_capacity(spec.email_domains.len());
    for (i, d) in spec.email_domains.iter().enumerate() {
        let lower = d.to_ascii_lowercase();
        let why = if d.contains('@') {
            Some("write the domain only, without '@'")
        } else if !dns_ok(&lower) {
            Some("use letters, digits, '-' and '.'")
        } else {
            None
        };
        match why {
            Some(why) => errs.push(
                format_args!("{at}.email_domains[{i}]"),
                CompileErrorKind::InvalidEmailDomain {
                    input: trunc(d),
                    why,
                },
            ),
            None => email_domains.push(Box::<str>::from(lower)),
        }
    }
    let mut auth_methods = Vec::with_capacity(spec.auth_methods.len());
    for (i, m) in spec.auth_methods.iter().enumerate() {
        match AuthMethod::new(m) {
            Ok(m) => auth_methods.push(m),
            Err(e) => errs.push(format_args!("{at}.auth_methods[{i}]"), e.into()),
        }
    }
    let max_auth_age = spec.max_auth_age.map(HumanDuration::get);
    if max_auth_age == Some(Duration::ZERO) {
        errs.push(
            format_args!("{at}.max_auth_age"),
            CompileErrorKind::ZeroMaxAuthAge,
        );
    }
    let mut source_ips = Vec::with_capacity(spec.source_ips.len());
    for (i, s) in spec.source_ips.iter().enumerate() {
        let net = s
            .parse::<IpNet>()
            .or_else(|_| s.parse::<IpAddr>().map(IpNet::from));
        match net {
            Ok(n) => source_ips.push(n.trunc()),
            Err(_) => errs.push(
                format_args!("{at}.source_ips[{i}]"),
                CompileErrorKind::InvalidCidr { input: trunc(s) },
            ),
        }
    }
    let time = spec
        .time
        .as_ref()
        .and_then(|t| TimeWindow::compile(t, &format!("{at}.time"), errs));
    let mut sans = Vec::with_capacity(spec.client_cert_sans.len());
    for (i, s) in spec.client_cert_sans.iter().enumerate() {
        match SanPattern::parse(s) {
            Ok(p) => sans.push(p),
            Err(why) => errs.push(
                format_args!("{at}.client_cert_sans[{i}]"),
                CompileErrorKind::InvalidSan {
                    input: trunc(s),
                    why,
                },
            ),
        }
    }
    let rule = Rule {
        name: spec.name.as_deref().map(Box::from),
        users: spec.users.iter().map(|s| Box::from(s.as_str())).collect(),
        groups: spec.groups.iter().map(|s| Box::from(s.as_str())).collect(),
        email_domains: email_domains.into(),
        authenticated: spec.authenticated,
        kinds: spec.kinds.clone().into(),
        auth_methods: auth_methods.into(),
        max_auth_age,
        source_ips: source_ips.into(),
        time,
        sans: sans.into(),
    };
    if list == RuleList::Allow && !rule.has_selector() {
        errs.push(at, CompileErrorKind::AllowRuleWithoutSelector);
    }
    (errs.0.len() == before).then_some(rule)
}

impl RuleSet {
    /// Compile allow and deny rules. Error locations are
    /// `{prefix}.allow[i].field[j]` (or `allow[i]…` with an empty prefix).
    ///
    /// `group_exists`, if given, refuses groups the directory does not know.
    pub fn compile(
        allow: &[RuleSpec],
        deny: &[RuleSpec],
        prefix: &str,
        group_exists: Option<&dyn Fn(&str) -> bool>,
    ) -> Result<RuleSet, CompileErrors> {
        let mut errs = Errors::default();
        let set = RuleSet::compile_into(allow, deny, prefix, group_exists, &mut errs);
        match set {
            Some(s) if errs.0.is_empty() => Ok(s),
            _ => Err(CompileErrors::from_vec(errs.0)),
        }
    }

    pub(crate) fn compile_into(
        allow: &[RuleSpec],
        deny: &[RuleSpec],
        prefix: &str,
        group_exists: Option<&dyn Fn(&str) -> bool>,
        errs: &mut Errors,
    ) -> Option<RuleSet> {
        let out = |list: RuleList, specs: &[RuleSpec], errs: &mut Errors| -> Option<Box<[Rule]>> {
            let mut v = Vec::with_capacity(specs.len());
            let mut ok = true;
            for (i, r) in specs.iter().enumerate() {
                let at = loc(prefix, format_args!("{}[{i}]", list.as_str()));
                match compile_rule(r, &at, list, group_exists, errs) {
                    Some(r) => v.push(r),
                    None => ok = false,
                }
            }
            ok.then(|| v.into())
        };
        let allow = out(RuleList::Allow, allow, errs);
        let deny = out(RuleList::Deny, deny, errs);
        Some(RuleSet {
            allow: allow?,
            deny: deny?,
        })
    }

    /// Number of allow rules.
    pub fn allow_len(&self) -> usize {
        self.allow.len()
    }

    /// Number of deny rules.
    pub fn deny_len(&self) -> usize {
        self.deny.len()
    }

    /// Evaluate for a non-public resource. Allocates nothing.
    pub fn evaluate<'s>(&'s self, subject: &Subject<'_>) -> Decision<'s> {
        self.eval(subject, None)
    }

    /// Evaluate for a public resource: only deny rules can refuse. Allocates nothing.
    pub fn evaluate_public<'s>(&'s self, subject: &Subject<'_>) -> Decision<'s> {
        self.eval(subject, Some(Reason::Public))
    }

    pub(crate) fn eval<'s>(&'s self, s: &Subject<'_>, public: Option<Reason>) -> Decision<'s> {
        for (i, r) in self.deny.iter().enumerate() {
            if r.matches(s) {
                return Decision::new(
                    Verdict::Deny,
                    Reason::DeniedByRule,
                    Some(r.rule_ref(RuleList::Deny, i)),
                );
            }
        }
        if let Some(reason) = public {
            return Decision::new(Verdict::Allow, reason, None);
        }
        // One pass: the first full match allows; otherwise remember the first
        // rule that a step-up would satisfy. Anonymous callers never match an
        // allow rule (every allow rule has a selector), so the first rule whose
        // caller-independent conditions hold means "log in".
        let mut step_up: Option<(usize, &Rule)> = None;
        for (i, r) in self.allow.iter().enumerate() {
            match s.identity {
                None => {
                    if r.context_ok(s) {
                        return Decision::new(
                            Verdict::NeedLogin,
                            Reason::LoginRequired,
                            Some(r.rule_ref(RuleList::Allow, i)),
                        );
                    }
                }
                Some(id) => {
                    if !(r.selected(Some(id)) && r.kind_ok(Some(id)) && r.context_ok(s)) {
                        continue;
                    }
                    if r.auth(Some(id), s.now) == AuthCheck::Ok {
                        return Decision::new(
                            Verdict::Allow,
                            Reason::AllowedByRule,
                            Some(r.rule_ref(RuleList::Allow, i)),
                        );
                    }
                    if step_up.is_none() {
                        step_up = Some((i, r));
                    }
                }
            }
        }
        if let Some((i, r)) = step_up {
            return Decision::new(
                Verdict::NeedStepUp {
                    methods: &r.auth_methods,
                    max_age: r.max_auth_age,
                },
                Reason::StepUpRequired,
                Some(r.rule_ref(RuleList::Allow, i)),
            );
        }
        Decision::deny(Reason::NoAllowRuleMatched)
    }

    /// Evaluate and record every rule and condition (slow; for operators and audit).
    pub fn explain<'s>(&'s self, subject: &Subject<'_>) -> RulesTrace<'s> {
        self.trace(subject, None)
    }

    pub(crate) fn trace<'s>(&'s self, s: &Subject<'_>, public: Option<Reason>) -> RulesTrace<'s> {
        let deny = self
            .deny
            .iter()
            .enumerate()
            .map(|(i, r)| trace_rule(r, RuleList::Deny, i, s))
            .collect();
        let allow = self
            .allow
            .iter()
            .enumerate()
            .map(|(i, r)| trace_rule(r, RuleList::Allow, i, s))
            .collect();
        RulesTrace {
            public,
            deny,
            allow,
            decision: self.eval(s, public),
        }
    }
}

/// A rule condition, as named in [`RuleSpec`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Condition {
    /// The selectors together (`users`, `groups`, `email_domains`, `authenticated`): any one.
    Selector,
    /// `kinds`.
    Kinds,
    /// `auth_methods`.
    AuthMethods,
    /// `max_auth_age`.
    MaxAuthAge,
    /// `source_ips`.
    SourceIps,
    /// `time`.
    Time,
    /// `client_cert_sans`.
    ClientCertSans,
}

impl Condition {
    /// The field name.
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::Selector => "selector",
            Condition::Kinds => "kinds",
            Condition::AuthMethods => "auth_methods",
            Condition::MaxAuthAge => "max_auth_age",
            Condition::SourceIps => "source_ips",
            Condition::Time => "time",
            Condition::ClientCertSans => "client_cert_sans",
        }
    }
}

/// The outcome of one condition of one rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConditionTrace {
    /// Which condition.
    pub condition: Condition,
    /// Whether it held.
    pub met: bool,
    /// What was required and what was found.
    pub detail: String,
}

/// One rule as evaluated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleTrace<'a> {
    /// Which rule.
    pub rule: RuleRef<'a>,
    /// Whether every condition held.
    pub matched: bool,
    /// Each condition present in the rule, in specification order.
    pub conditions: Vec<ConditionTrace>,
}

/// Every rule of a [`RuleSet`] as evaluated, and the resulting decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RulesTrace<'a> {
    /// `Some` when the resource was public (only deny rules can refuse).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public: Option<Reason>,
    /// Deny rules, in order.
    pub deny: Vec<RuleTrace<'a>>,
    /// Allow rules, in order.
    pub allow: Vec<RuleTrace<'a>>,
    /// The decision (route not set).
    pub decision: Decision<'a>,
}

fn list<T: fmt::Display>(items: &[T]) -> String {
    let mut s = String::from("[");
    for (i, it) in items.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        let _ = write!(s, "{it}");
    }
    s.push(']');
    s
}

fn trace_rule<'a>(r: &'a Rule, l: RuleList, index: usize, s: &Subject<'_>) -> RuleTrace<'a> {
    let id = s.identity;
    let mut c = Vec::new();
    let mut push = |condition, met, detail: String| {
        c.push(ConditionTrace {
            condition,
            met,
            detail,
        })
    };
    if r.has_selector() {
        let mut want = Vec::new();
        if r.authenticated {
            want.push("authenticated".to_owned());
        }
        if !r.users.is_empty() {
            want.push(format!("users {}", list(&r.users)));
        }
        if !r.groups.is_empty() {
            want.push(format!("groups {}", list(&r.groups)));
        }
        if !r.email_domains.is_empty() {
            want.push(format!("email_domains {}", list(&r.email_domains)));
        }
        let who = match id {
            None => "anonymous caller".to_owned(),
            Some(id) => {
                let hit: Vec<&str> = r
                    .groups
                    .iter()
                    .filter(|g| id.in_group(g))
                    .map(|g| &**g)
                    .collect();
                format!(
                    "user {:?}, email domain {:?}, member of {}",
                    id.username(),
                    id.email_domain().unwrap_or(""),
                    if hit.is_empty() {
                        "none of the groups".to_owned()
                    } else {
                        list(&hit)
                    }
                )
            }
        };
        push(
            Condition::Selector,
            r.selected(id),
            format!("any of {}; {who}", want.join(", ")),
        );
    }
    if !r.kinds.is_empty() {
        let kinds: Vec<&str> = r.kinds.iter().map(|k| k.as_str()).collect();
        push(
            Condition::Kinds,
            r.kind_ok(id),
            format!(
                "one of {}; caller is {}",
                list(&kinds),
                id.map_or("anonymous", |i| i.kind().as_str())
            ),
        );
    }
    let auth = r.auth(id, s.now);
    let used: Vec<String> = id.map_or_else(Vec::new, |i| {
        i.auth()
            .iter()
            .map(|e| format!("{} {}s ago", e.method, s.now.since(e.at).as_secs()))
            .collect()
    });
    if !r.auth_methods.is_empty() {
        push(
            Condition::AuthMethods,
            auth != AuthCheck::Missing,
            format!(
                "one of {} used; caller used {}",
                list(&r.auth_methods),
                list(&used)
            ),
        );
    }
    if let Some(max) = r.max_auth_age {
        push(
            Condition::MaxAuthAge,
            auth == AuthCheck::Ok,
            format!(
                "{} within {}; caller used {}",
                if r.auth_methods.is_empty() {
                    "any method".to_owned()
                } else {
                    list(&r.auth_methods)
                },
                HumanDuration(max),
                list(&used)
            ),
        );
    }
    if !r.source_ips.is_empty() {
        push(
            Condition::SourceIps,
            r.ip_ok(s.source_ip),
            format!(
                "in {}; source {}",
                list(&r.source_ips),
                s.source_ip
                    .map_or_else(|| "unknown".to_owned(), |ip| ip.to_string())
            ),
        );
    }
    if let Some(w) = &r.time {
        let at = jiff::Timestamp::from_second(s.now.as_secs())
            .map(|t| t.to_string())
            .unwrap_or_else(|_| s.now.to_string());
        push(Condition::Time, r.time_ok(s.now), format!("{w}; now {at}"));
    }
    if !r.sans.is_empty() {
        let sans: Vec<String> = s
            .client_cert_sans
            .iter()
            .map(|s| match s {
                CertSan::Dns(d) => format!("dns:{d}"),
                CertSan::Email(e) => format!("email:{e}"),
                CertSan::Uri(u) => format!("uri:{u}"),
            })
            .collect();
        push(
            Condition::ClientCertSans,
            r.san_ok(s.client_cert_sans),
            format!("one of {}; certificate has {}", list(&r.sans), list(&sans)),
        );
    }
    RuleTrace {
        rule: r.rule_ref(l, index),
        matched: r.matches(s),
        conditions: c,
    }
}

impl fmt::Display for RuleTrace<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}",
            self.rule,
            if self.matched {
                "matched"
            } else {
                "not matched"
            }
        )?;
        for c in &self.conditions {
            write!(
                f,
                "\n      {} {}: {}",
                if c.met { "✓" } else { "✗" },
                c.condition.as_str(),
                c.detail
            )?;
        }
        Ok(())
    }
}

impl fmt::Display for RulesTrace<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(p) = self.public {
            writeln!(f, "  public ({p}): only deny rules apply")?;
        }
        if self.deny.is_empty() {
            f.write_str("  deny rules: none\n")?;
        }
        for r in &self.deny {
            writeln!(f, "    {r}")?;
        }
        if self.allow.is_empty() {
            f.write_str("  allow rules: none\n")?;
        }
        for r in &self.allow {
            writeln!(f, "    {r}")?;
        }
        Ok(())
    }
}
