//! The result of a policy decision.

use std::fmt;
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::duration::HumanDuration;
use crate::identity::AuthMethod;

/// What the gateway should do with the request.
///
/// Deliberately exhaustive: a new verdict must be a compile error in every
/// enforcement point, never a silent fall-through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict<'a> {
    /// Let the request through.
    Allow,
    /// The caller is anonymous and an allow rule could apply once logged in:
    /// start a login (redirect or `401`).
    NeedLogin,
    /// The caller is authenticated and would be allowed after re-authenticating.
    NeedStepUp {
        /// Use one of these methods; empty means any method.
        methods: &'a [AuthMethod],
        /// …within this long before the request (`None`: at any time in the session).
        #[serde(serialize_with = "ser_opt_duration")]
        max_age: Option<Duration>,
    },
    /// Refuse (`403`, or `404` to hide the route).
    Deny,
}

fn ser_opt_duration<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.collect_str(&HumanDuration(*d)),
        None => s.serialize_none(),
    }
}

/// Why the decision is what it is. Stable snake_case codes (see [`Reason::as_str`])
/// for logs, metrics and audit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Reason {
    /// No route matches the host, path and method. Deny.
    NoRoute,
    /// The request path is malformed or ambiguous (dot-segments, encoded
    /// separators, NUL, bad percent-encoding, not absolute). Deny.
    MalformedPath,
    /// The request host is empty or malformed. Deny.
    MalformedHost,
    /// A deny rule matched. Deny.
    DeniedByRule,
    /// No allow rule matched and none could after a login or step-up. Deny.
    NoAllowRuleMatched,
    /// The route is public. Allow.
    Public,
    /// The request method is one of the route's `public_methods`. Allow.
    PublicMethod,
    /// An allow rule matched. Allow.
    AllowedByRule,
    /// Anonymous caller; an allow rule could apply after login. Need login.
    LoginRequired,
    /// An allow rule matches except for the authentication method or its age. Need step-up.
    StepUpRequired,
    /// An API client with a permission for the route and method. Allow.
    ClientPermission,
    /// An API client without a permission for the route. Deny.
    NoPermission,
    /// An API client whose permission for the route does not cover the method. Deny.
    MethodNotPermitted,
    /// The caller authenticated with a kind of credential the route does not
    /// accept (see `credentials` on the route). Deny.
    CredentialNotAccepted,
}

impl Reason {
    /// The stable code, e.g. `no_route`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NoRoute => "no_route",
            Reason::MalformedPath => "malformed_path",
            Reason::MalformedHost => "malformed_host",
            Reason::DeniedByRule => "denied_by_rule",
            Reason::NoAllowRuleMatched => "no_allow_rule_matched",
            Reason::Public => "public",
            Reason::PublicMethod => "public_method",
            Reason::AllowedByRule => "allowed_by_rule",
            Reason::LoginRequired => "login_required",
            Reason::StepUpRequired => "step_up_required",
            Reason::ClientPermission => "client_permission",
            Reason::NoPermission => "no_permission",
            Reason::MethodNotPermitted => "method_not_permitted",
            Reason::CredentialNotAccepted => "credential_not_accepted",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which list a rule is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleList {
    /// `allow`.
    Allow,
    /// `deny`.
    Deny,
}

impl RuleList {
    /// `allow` or `deny`.
    pub fn as_str(self) -> &'static str {
        match self {
            RuleList::Allow => "allow",
            RuleList::Deny => "deny",
        }
    }
}

/// The rule that decided: list, index in the list, and optional name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct RuleRef<'a> {
    /// Allow or deny list.
    pub list: RuleList,
    /// Index in that list (as in the specification).
    pub index: usize,
    /// The rule's name, if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
}

impl fmt::Display for RuleRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.list.as_str(), self.index)?;
        if let Some(n) = self.name {
            write!(f, " {n:?}")?;
        }
        Ok(())
    }
}

/// A policy decision: the verdict, why, and which route and rule decided.
///
/// Borrows names and step-up methods from the engine: building one allocates nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Decision<'a> {
    /// What to do.
    #[serde(flatten)]
    pub verdict: Verdict<'a>,
    /// Why.
    pub reason: Reason,
    /// The matched route's name (for `Hexon-Route` and audit), if a route matched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<&'a str>,
    /// The rule that decided, if a rule did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<RuleRef<'a>>,
}

impl<'a> Decision<'a> {
    pub(crate) fn new(verdict: Verdict<'a>, reason: Reason, rule: Option<RuleRef<'a>>) -> Self {
        Decision {
            verdict,
            reason,
            route: None,
            rule,
        }
    }

    pub(crate) fn deny(reason: Reason) -> Self {
        Decision::new(Verdict::Deny, reason, None)
    }

    /// Whether the verdict is [`Verdict::Allow`].
    pub fn is_allow(&self) -> bool {
        matches!(self.verdict, Verdict::Allow)
    }

    /// Whether the verdict is [`Verdict::Deny`].
    pub fn is_deny(&self) -> bool {
        matches!(self.verdict, Verdict::Deny)
    }
}

impl fmt::Display for Decision<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.verdict {
            Verdict::Allow => f.write_str("allow")?,
            Verdict::NeedLogin => f.write_str("need login")?,
            Verdict::Deny => f.write_str("deny")?,
            Verdict::NeedStepUp { methods, max_age } => {
                f.write_str("need step-up (")?;
                if methods.is_empty() {
                    f.write_str("any method")?;
                } else {
                    for (i, m) in methods.iter().enumerate() {
                        if i > 0 {
                            f.write_str(" or ")?;
                        }
                        f.write_str(m.as_str())?;
                    }
                }
                if let Some(a) = max_age {
                    write!(f, " within {}", HumanDuration(a))?;
                }
                f.write_str(")")?;
            }
        }
        write!(f, " [{}]", self.reason)?;
        if let Some(r) = self.route {
            write!(f, " route {r:?}")?;
        }
        if let Some(r) = &self.rule {
            write!(f, " by {r}")?;
        }
        Ok(())
    }
}
