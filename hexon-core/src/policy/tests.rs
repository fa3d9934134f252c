//! Unit tests: rules, decisions, matcher priority, malformed input, compile
//! errors, explain, and a property test against a naive reference matcher.

use std::net::IpAddr;
use std::time::Duration;

use proptest::prelude::*;

use super::spec::{RouteSpec, RuleSpec, TimeWindowSpec};
use super::*;
use crate::duration::HumanDuration;
use crate::identity::{AuthMethod, Identity, IdentityKind};
use crate::time::UnixTime;

const NOW: UnixTime = UnixTime::from_secs(1_700_000_000);

fn route(name: &str, host: &str, path: &str) -> RouteSpec {
    RouteSpec {
        name: name.into(),
        host: host.into(),
        path: path.into(),
        methods: vec![],
        public: false,
        public_methods: vec![],
        allow: vec![authenticated()],
        deny: vec![],
        credentials: vec![],
    }
}

fn authenticated() -> RuleSpec {
    RuleSpec {
        authenticated: true,
        ..RuleSpec::default()
    }
}

fn groups(g: &[&str]) -> RuleSpec {
    RuleSpec {
        groups: g.iter().map(|s| s.to_string()).collect(),
        ..RuleSpec::default()
    }
}

fn engine(routes: &[RouteSpec]) -> PolicyEngine {
    match PolicyEngine::compile(routes, &CompileOptions::default()) {
        Ok(e) => e,
        Err(e) => panic!("compile failed:\n{e}"),
    }
}

fn user(name: &str, g: &[&str]) -> Identity {
    Identity::builder(format!("id-{name}"), name)
        .email(format!("{name}@Example.COM"))
        .groups(g.iter().copied())
        .auth("password", NOW.saturating_sub(Duration::from_secs(60)))
        .unwrap()
        .build()
        .unwrap()
}

fn req<'a>(host: &'a str, path: &'a str) -> HttpRequest<'a> {
    HttpRequest::new("GET", host, path)
}

fn at(id: Option<&Identity>) -> Subject<'_> {
    Subject::new(id, NOW)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// One route `r` on `*` `/*` with these rules; evaluate for a subject.
fn eval_rules<'e>(e: &'e PolicyEngine, s: &Subject<'_>) -> Decision<'e> {
    e.decide(&req("app.example.com", "/x"), s)
}

fn one(allow: Vec<RuleSpec>, deny: Vec<RuleSpec>) -> PolicyEngine {
    let mut r = route("r", "*", "/*");
    r.allow = allow;
    r.deny = deny;
    engine(&[r])
}

// ---------------------------------------------------------------- decisions

#[test]
fn deny_wins_over_allow() {
    let e = one(
        vec![groups(&["eng"])],
        vec![RuleSpec {
            name: Some("no-bob".into()),
            users: vec!["bob".into()],
            ..RuleSpec::default()
        }],
    );
    let bob = user("bob", &["eng"]);
    let d = eval_rules(&e, &at(Some(&bob)));
    assert_eq!(d.verdict, Verdict::Deny);
    assert_eq!(d.reason, Reason::DeniedByRule);
    assert_eq!(
        d.rule,
        Some(RuleRef {
            list: RuleList::Deny,
            index: 0,
            name: Some("no-bob")
        })
    );
    assert_eq!(d.route, Some("r"));
    let alice = user("alice", &["eng"]);
    let d = eval_rules(&e, &at(Some(&alice)));
    assert_eq!(
        (d.verdict, d.reason),
        (Verdict::Allow, Reason::AllowedByRule)
    );
    assert_eq!(
        d.rule.map(|r| (r.list, r.index)),
        Some((RuleList::Allow, 0))
    );
}

#[test]
fn no_route_and_no_allow_rule_deny() {
    let e = engine(&[route("api", "api.example.com", "/api/*")]);
    let alice = user("alice", &[]);
    let d = e.decide(&req("api.example.com", "/other"), &at(Some(&alice)));
    assert_eq!(
        (d.verdict, d.reason, d.route),
        (Verdict::Deny, Reason::NoRoute, None)
    );

    let e = one(vec![groups(&["eng"])], vec![]);
    let d = eval_rules(&e, &at(Some(&alice)));
    assert_eq!(
        (d.verdict, d.reason),
        (Verdict::Deny, Reason::NoAllowRuleMatched)
    );
    assert_eq!(d.rule, None);

    // A route without any allow rule denies authenticated callers.
    let e = one(vec![], vec![]);
    let d = eval_rules(&e, &at(Some(&alice)));
    assert_eq!(d.reason, Reason::NoAllowRuleMatched);
    // …and anonymous ones (no rule could apply after login).
    let d = eval_rules(&e, &at(None));
    assert_eq!(d.reason, Reason::NoAllowRuleMatched);
}

#[test]
fn public_route_and_deny_rules() {
    let mut r = route("pub", "*", "/*");
    r.public = true;
    r.allow = vec![];
    r.deny = vec![
        RuleSpec {
            source_ips: vec!["203.0.113.0/24".into()],
            ..RuleSpec::default()
        },
        groups(&["contractors"]),
    ];
    let e = engine(&[r]);
    let anon = at(None);
    let d = eval_rules(&e, &anon);
    assert_eq!((d.verdict, d.reason), (Verdict::Allow, Reason::Public));
    // A deny rule without a selector applies to anonymous callers too.
    let d = eval_rules(&e, &anon.with_source_ip(ip("203.0.113.9")));
    assert_eq!((d.verdict, d.reason), (Verdict::Deny, Reason::DeniedByRule));
    assert_eq!(d.rule.map(|r| r.index), Some(0));
    let d = eval_rules(&e, &anon.with_source_ip(ip("198.51.100.1")));
    assert!(d.is_allow());
    // Deny with a selector applies to the logged-in caller it names.
    let carol = user("carol", &["contractors"]);
    let d = eval_rules(&e, &at(Some(&carol)));
    assert_eq!(
        (d.reason, d.rule.map(|r| r.index)),
        (Reason::DeniedByRule, Some(1))
    );
}

#[test]
fn public_methods() {
    let mut r = route("api", "*", "/api/*");
    r.methods = vec!["get".into(), "POST".into(), "OPTIONS".into()];
    r.public_methods = vec!["OPTIONS".into()];
    let e = engine(&[r]);
    let anon = at(None);
    let d = e.decide(&HttpRequest::new("OPTIONS", "h", "/api/x"), &anon);
    assert_eq!(
        (d.verdict, d.reason),
        (Verdict::Allow, Reason::PublicMethod)
    );
    let d = e.decide(&HttpRequest::new("POST", "h", "/api/x"), &anon);
    assert_eq!(d.verdict, Verdict::NeedLogin);
    // GET covers HEAD; methods compare case-insensitively.
    let d = e.decide(&HttpRequest::new("HEAD", "h", "/api/x"), &anon);
    assert_eq!(d.verdict, Verdict::NeedLogin);
    let d = e.decide(&HttpRequest::new("post", "h", "/api/x"), &anon);
    assert_eq!(d.verdict, Verdict::NeedLogin);
    let d = e.decide(&HttpRequest::new("DELETE", "h", "/api/x"), &anon);
    assert_eq!(d.reason, Reason::NoRoute);
}

#[test]
fn need_login_vs_deny_for_anonymous() {
    let e = one(vec![groups(&["eng"])], vec![]);
    let d = eval_rules(&e, &at(None));
    assert_eq!(
        (d.verdict, d.reason),
        (Verdict::NeedLogin, Reason::LoginRequired)
    );
    assert_eq!(d.rule.map(|r| r.index), Some(0));

    // Every allow rule needs an office address: from outside, a login would
    // not help, so deny instead of starting one.
    let office = RuleSpec {
        source_ips: vec!["10.0.0.0/8".into()],
        ..groups(&["eng"])
    };
    let e = one(vec![office], vec![]);
    let d = eval_rules(&e, &at(None).with_source_ip(ip("192.0.2.1")));
    assert_eq!(
        (d.verdict, d.reason),
        (Verdict::Deny, Reason::NoAllowRuleMatched)
    );
    let d = eval_rules(&e, &at(None).with_source_ip(ip("10.1.1.1")));
    assert_eq!(d.verdict, Verdict::NeedLogin);
}

#[test]
fn step_up() {
    let rule = RuleSpec {
        name: Some("admins-webauthn".into()),
        auth_methods: vec!["webauthn".into()],
        max_auth_age: Some(HumanDuration(Duration::from_secs(900))),
        ..groups(&["admins"])
    };
    let e = one(vec![rule], vec![]);
    let methods = [AuthMethod::new("webauthn").unwrap()];

    // Password only: step up to webauthn.
    let pw = user("alice", &["admins"]);
    let d = eval_rules(&e, &at(Some(&pw)));
    assert_eq!(
        d.verdict,
        Verdict::NeedStepUp {
            methods: &methods,
            max_age: Some(Duration::from_secs(900))
        }
    );
    assert_eq!(d.reason, Reason::StepUpRequired);
    assert_eq!(d.rule.and_then(|r| r.name), Some("admins-webauthn"));

    // WebAuthn an hour ago: stale, step up again.
    let old = pw
        .to_builder()
        .auth("webauthn", NOW.saturating_sub(Duration::from_secs(3600)))
        .unwrap()
        .build()
        .unwrap();
    assert_eq!(
        eval_rules(&e, &at(Some(&old))).reason,
        Reason::StepUpRequired
    );

    // Fresh (exactly at the limit counts): allow.
    let fresh = pw
        .to_builder()
        .auth("webauthn", NOW.saturating_sub(Duration::from_secs(900)))
        .unwrap()
        .build()
        .unwrap();
    assert!(eval_rules(&e, &at(Some(&fresh))).is_allow());
    let d = eval_rules(
        &e,
        &Subject::new(Some(&fresh), NOW.saturating_add(Duration::from_secs(1))),
    );
    assert_eq!(d.reason, Reason::StepUpRequired);

    // Not an admin: stepping up would not help.
    let bob = user("bob", &["eng"]);
    assert_eq!(
        eval_rules(&e, &at(Some(&bob))).reason,
        Reason::NoAllowRuleMatched
    );

    // Anonymous: login first.
    assert_eq!(eval_rules(&e, &at(None)).verdict, Verdict::NeedLogin);

    // Freshness of any method.
    let any = RuleSpec {
        max_auth_age: Some(HumanDuration(Duration::from_secs(30))),
        ..authenticated()
    };
    let e = one(vec![any], vec![]);
    let d = eval_rules(&e, &at(Some(&pw)));
    assert_eq!(
        d.verdict,
        Verdict::NeedStepUp {
            methods: &[],
            max_age: Some(Duration::from_secs(30))
        }
    );
}

#[test]
fn step_up_only_when_the_rest_of_the_rule_holds() {
    let rule = RuleSpec {
        auth_methods: vec!["webauthn".into()],
        source_ips: vec!["10.0.0.0/8".into()],
        kinds: vec![IdentityKind::User],
        ..groups(&["admins"])
    };
    let e = one(vec![rule], vec![]);
    let pw = user("alice", &["admins"]);
    let inside = at(Some(&pw)).with_source_ip(ip("10.0.0.1"));
    let outside = at(Some(&pw)).with_source_ip(ip("192.0.2.1"));
    assert_eq!(eval_rules(&e, &inside).reason, Reason::StepUpRequired);
    assert_eq!(eval_rules(&e, &outside).reason, Reason::NoAllowRuleMatched);
    let svc = pw.to_builder().kind(IdentityKind::Service).build().unwrap();
    let s = at(Some(&svc)).with_source_ip(ip("10.0.0.1"));
    assert_eq!(eval_rules(&e, &s).reason, Reason::NoAllowRuleMatched);
}

// ---------------------------------------------------------------- rule kinds

#[test]
fn credential_kinds_per_route() {
    let mut signed = route("signed", "*", "/pay/*");
    signed.credentials = vec![Credential::Hmac, Credential::HttpSignature];
    let mut feed = route("feed", "*", "/feed/*");
    feed.credentials = vec![Credential::ApiKeyQuery, Credential::ApiKey];
    let mut open = route("open", "*", "/open/*");
    open.public = true;
    open.credentials = vec![Credential::Session];
    let e = engine(&[signed, feed, route("any", "*", "/*"), open]);
    let alice = user("alice", &[]);
    let with = |c: Credential| at(Some(&alice)).with_credential(c);
    let decide = |path: &str, s: &Subject<'_>| e.decide(&req("h", path), s).reason;

    // A route that asks for signatures refuses a key, a session, an
    // authenticator outside the list, and accepts either signature kind.
    for c in [Credential::ApiKey, Credential::Session, Credential::Jwt] {
        assert_eq!(
            decide("/pay/x", &with(c)),
            Reason::CredentialNotAccepted,
            "{c}"
        );
    }
    assert_eq!(
        decide("/pay/x", &at(Some(&alice))),
        Reason::CredentialNotAccepted
    );
    assert_eq!(
        decide("/pay/x", &with(Credential::Hmac)),
        Reason::AllowedByRule
    );
    assert_eq!(
        decide("/pay/x", &with(Credential::HttpSignature)),
        Reason::AllowedByRule
    );
    // Anonymous callers are asked to log in as before.
    assert_eq!(decide("/pay/x", &at(None)), Reason::LoginRequired);

    // Keys in URLs only where a route lists them.
    assert_eq!(
        decide("/feed/x", &with(Credential::ApiKeyQuery)),
        Reason::AllowedByRule
    );
    assert_eq!(
        decide("/x", &with(Credential::ApiKeyQuery)),
        Reason::CredentialNotAccepted
    );
    // Without a list every other kind passes, embedders' own included.
    for c in Credential::ALL
        .into_iter()
        .filter(|c| *c != Credential::ApiKeyQuery)
    {
        assert_eq!(decide("/x", &with(c)), Reason::AllowedByRule, "{c}");
    }
    assert_eq!(decide("/x", &at(Some(&alice))), Reason::AllowedByRule);

    // A public route with a list refuses callers who came with another kind.
    assert_eq!(decide("/open/x", &at(None)), Reason::Public);
    assert_eq!(
        decide("/open/x", &with(Credential::Session)),
        Reason::Public
    );
    assert_eq!(
        decide("/open/x", &with(Credential::ApiKey)),
        Reason::CredentialNotAccepted
    );

    let ex = e.explain(&req("h", "/pay/x"), &with(Credential::ApiKey));
    assert_eq!(ex.credential_accepted, Some(false));
    assert!(
        ex.to_string()
            .contains("does not accept the caller's credential kind"),
        "{ex}"
    );
    let route = e.route("signed").unwrap();
    assert_eq!(
        route.credentials().collect::<Vec<_>>(),
        [Credential::Hmac, Credential::HttpSignature]
    );
}

#[test]
fn credential_lists_are_validated() {
    let mut r = route("r", "*", "/*");
    r.credentials = vec![Credential::Hmac, Credential::Hmac];
    let err = PolicyEngine::compile(&[r], &CompileOptions::default()).unwrap_err();
    assert!(
        err.to_string()
            .contains("route[0].credentials[1]: credential \"hmac\" is listed twice"),
        "{err}"
    );
    let bad: Result<RouteSpec, _> =
        serde_json::from_str(r#"{"name": "r", "credentials": ["api-key"]}"#);
    let msg = bad.unwrap_err().to_string();
    assert!(
        msg.contains("unknown variant `api-key`") && msg.contains("`api_key_query`"),
        "{msg}"
    );
}

#[test]
fn users_and_email_domains() {
    let e = one(
        vec![
            RuleSpec {
                users: vec!["alice".into()],
                ..RuleSpec::default()
            },
            RuleSpec {
                email_domains: vec!["partner.ORG".into()],
                ..RuleSpec::default()
            },
        ],
        vec![],
    );
    let alice = user("alice", &[]);
    let d = eval_rules(&e, &at(Some(&alice)));
    assert_eq!(d.rule.map(|r| r.index), Some(0));
    let p = Identity::builder("s", "pat")
        .email("pat@Partner.Org")
        .build()
        .unwrap();
    let d = eval_rules(&e, &at(Some(&p)));
    assert_eq!(
        (d.reason, d.rule.map(|r| r.index)),
        (Reason::AllowedByRule, Some(1))
    );
    // Exact domain: not a subdomain, not a suffix.
    for email in [
        "x@sub.partner.org",
        "x@evilpartner.org",
        "partner.org@evil.com",
    ] {
        let i = Identity::builder("s", "x").email(email).build().unwrap();
        assert!(eval_rules(&e, &at(Some(&i))).is_deny(), "{email}");
    }
    let noemail = Identity::builder("s", "x").build().unwrap();
    assert!(eval_rules(&e, &at(Some(&noemail))).is_deny());
    // Usernames are exact.
    let i = Identity::builder("s", "Alice").build().unwrap();
    assert!(eval_rules(&e, &at(Some(&i))).is_deny());
}

#[test]
fn groups_resolved_membership() {
    let e = one(vec![groups(&["eng", "ops"])], vec![]);
    let nested = user("n", &["all", "ops", "zz"]);
    assert!(eval_rules(&e, &at(Some(&nested))).is_allow());
    let other = user("o", &["engineering", "en"]);
    assert!(eval_rules(&e, &at(Some(&other))).is_deny());
}

#[test]
fn kinds() {
    let rule = RuleSpec {
        kinds: vec![IdentityKind::Service],
        ..authenticated()
    };
    let e = one(vec![rule], vec![]);
    let u = user("u", &[]);
    let s = u.to_builder().kind(IdentityKind::Service).build().unwrap();
    assert!(eval_rules(&e, &at(Some(&s))).is_allow());
    assert!(eval_rules(&e, &at(Some(&u))).is_deny());
}

#[test]
fn auth_methods_any_of() {
    let rule = RuleSpec {
        auth_methods: vec!["webauthn".into(), "totp".into()],
        ..authenticated()
    };
    let e = one(vec![rule], vec![]);
    let t = Identity::builder("s", "t")
        .auth("totp", UnixTime::EPOCH)
        .unwrap()
        .build()
        .unwrap();
    assert!(eval_rules(&e, &at(Some(&t))).is_allow());
    let p = user("p", &[]);
    let d = eval_rules(&e, &at(Some(&p)));
    assert!(
        matches!(d.verdict, Verdict::NeedStepUp { methods, max_age: None } if methods.len() == 2)
    );
}

#[test]
fn source_ip_cidrs() {
    let rule = RuleSpec {
        source_ips: vec![
            "10.0.0.0/8".into(),
            "2001:db8::/32".into(),
            "192.0.2.7".into(),
            "172.16.5.9/12".into(),
        ],
        ..authenticated()
    };
    let e = one(vec![rule], vec![]);
    let u = user("u", &[]);
    let check = |addr: Option<&str>| {
        let mut s = at(Some(&u));
        if let Some(a) = addr {
            s = s.with_source_ip(ip(a));
        }
        eval_rules(&e, &s).is_allow()
    };
    assert!(check(Some("10.255.0.1")));
    assert!(check(Some("2001:db8:1::5")));
    assert!(check(Some("192.0.2.7")));
    assert!(check(Some("172.31.0.1")), "host bits of a CIDR are ignored");
    assert!(check(Some("::ffff:10.1.2.3")), "IPv4-mapped IPv6");
    assert!(!check(Some("11.0.0.1")));
    assert!(!check(Some("192.0.2.8")));
    assert!(!check(Some("2001:db9::1")));
    assert!(!check(Some("::1")));
    assert!(!check(None), "unknown source fails closed");
}

fn ts(s: &str) -> UnixTime {
    UnixTime::from_secs(s.parse::<jiff::Timestamp>().unwrap().as_second())
}

#[test]
fn time_window_across_midnight_in_berlin_with_dst() {
    let rule = RuleSpec {
        time: Some(TimeWindowSpec {
            days: vec!["sat".into()],
            from: "22:00".into(),
            to: "06:00".into(),
            tz: "Europe/Berlin".into(),
        }),
        ..authenticated()
    };
    let e = one(vec![rule], vec![]);
    let u = user("u", &[]);
    let ok = |t: &str| eval_rules(&e, &Subject::new(Some(&u), ts(t))).is_allow();
    // 2024-03-31 (Sunday) is the DST start in Berlin: 02:00 CET -> 03:00 CEST.
    assert!(!ok("2024-03-30T20:59:00Z"), "Sat 21:59 CET");
    assert!(ok("2024-03-30T21:00:00Z"), "Sat 22:00 CET");
    assert!(ok("2024-03-30T23:30:00Z"), "Sun 00:30 CET");
    assert!(ok("2024-03-31T03:59:00Z"), "Sun 05:59 CEST");
    assert!(
        !ok("2024-03-31T04:00:00Z"),
        "Sun 06:00 CEST (05:00 if DST were ignored)"
    );
    assert!(
        !ok("2024-03-31T20:30:00Z"),
        "Sun 22:30: the window starts on Saturdays only"
    );
    assert!(!ok("2024-03-29T22:00:00Z"), "Fri 23:00");
    // Winter week: same window, CET all along.
    assert!(ok("2024-01-06T21:00:00Z"), "Sat 22:00 CET");
    assert!(!ok("2024-01-07T05:00:00Z"), "Sun 06:00 CET");
}

#[test]
fn time_window_days_and_ranges() {
    let w = |days: &[&str], from: &str, to: &str| RuleSpec {
        time: Some(TimeWindowSpec {
            days: days.iter().map(|s| s.to_string()).collect(),
            from: from.into(),
            to: to.into(),
            tz: "Europe/Berlin".into(),
        }),
        ..authenticated()
    };
    let u = user("u", &[]);
    let e = one(vec![w(&["mon-fri"], "09:00", "17:00")], vec![]);
    let ok = |e: &PolicyEngine, t: &str| eval_rules(e, &Subject::new(Some(&u), ts(t))).is_allow();
    // Summer (CEST, UTC+2): Wed 2024-07-03.
    assert!(ok(&e, "2024-07-03T07:00:00Z"), "Wed 09:00");
    assert!(!ok(&e, "2024-07-03T06:59:00Z"), "Wed 08:59");
    assert!(!ok(&e, "2024-07-03T15:00:00Z"), "Wed 17:00 (end exclusive)");
    assert!(!ok(&e, "2024-07-06T08:00:00Z"), "Sat 10:00");
    let e = one(vec![w(&["fri-mon"], "00:00", "24:00")], vec![]);
    assert!(ok(&e, "2024-07-06T12:00:00Z"), "Sat");
    assert!(ok(&e, "2024-07-08T12:00:00Z"), "Mon");
    assert!(!ok(&e, "2024-07-09T12:00:00Z"), "Tue");
    assert!(ok(&e, "2024-07-07T21:59:00Z"), "Sun 23:59 local");
    assert!(!ok(&e, "2024-07-09T00:30:00Z"), "Tue 02:30 local");
}

#[test]
fn client_cert_sans() {
    let rule = RuleSpec {
        client_cert_sans: vec![
            "*.svc.example.com".into(),
            "db.example.com".into(),
            "ops@Example.com".into(),
            "spiffe://example.org/ns/prod/*".into(),
            "spiffe://example.org/ns/dev/sa/one".into(),
        ],
        ..RuleSpec::default()
    };
    // A deny rule keyed only on the certificate (no selector) and an allow
    // rule for any authenticated caller with one of these SANs.
    let allow = RuleSpec {
        authenticated: true,
        ..rule
    };
    let e = one(vec![allow], vec![]);
    let u = user("u", &[]);
    let ok =
        |sans: &[CertSan<'_>]| eval_rules(&e, &at(Some(&u)).with_client_cert_sans(sans)).is_allow();
    assert!(ok(&[CertSan::Dns("web.svc.example.com")]));
    assert!(ok(&[CertSan::Dns("WEB.Svc.Example.com.")]));
    assert!(
        !ok(&[CertSan::Dns("a.web.svc.example.com")]),
        "one label only"
    );
    assert!(!ok(&[CertSan::Dns("svc.example.com")]), "not the apex");
    assert!(
        !ok(&[CertSan::Dns("*.svc.example.com")]),
        "a wildcard SAN is not a label"
    );
    assert!(!ok(&[CertSan::Dns("websvc.example.com")]));
    assert!(ok(&[CertSan::Dns("db.example.com")]));
    assert!(!ok(&[CertSan::Dns("x.db.example.com")]));
    assert!(ok(&[CertSan::Email("ops@example.COM")]));
    assert!(
        !ok(&[CertSan::Email("OPS@example.com")]),
        "local part is exact"
    );
    assert!(ok(&[CertSan::Uri("spiffe://example.org/ns/prod/sa/web")]));
    assert!(
        !ok(&[CertSan::Uri("spiffe://example.org/ns/prod/")]),
        "something must follow the prefix"
    );
    assert!(!ok(&[CertSan::Uri(
        "spiffe://example.org/ns/production/sa/web"
    )]));
    assert!(ok(&[CertSan::Uri("spiffe://example.org/ns/dev/sa/one")]));
    assert!(!ok(&[CertSan::Uri("spiffe://example.org/ns/dev/sa/one/x")]));
    assert!(
        !ok(&[CertSan::Uri("db.example.com")]),
        "SAN types do not mix"
    );
    assert!(ok(&[
        CertSan::Dns("nope.org"),
        CertSan::Dns("db.example.com")
    ]));
    assert!(!ok(&[]));
}

// ---------------------------------------------------------------- matcher

fn matched<'e>(e: &'e PolicyEngine, method: &str, host: &str, path: &str) -> Option<&'e str> {
    e.match_route(&HttpRequest::new(method, host, path))
        .unwrap()
        .map(Route::name)
}

#[test]
fn host_priority() {
    let e = engine(&[
        route("any", "*", "/*"),
        route("wild", "*.example.com", "/*"),
        route("deep-wild", "*.a.example.com", "/*"),
        route("exact", "app.example.com", "/*"),
    ]);
    assert_eq!(matched(&e, "GET", "app.example.com", "/"), Some("exact"));
    assert_eq!(
        matched(&e, "GET", "APP.Example.com.:8443", "/x"),
        Some("exact")
    );
    assert_eq!(matched(&e, "GET", "b.example.com", "/x"), Some("wild"));
    assert_eq!(matched(&e, "GET", "x.y.example.com", "/x"), Some("wild"));
    assert_eq!(
        matched(&e, "GET", "x.a.example.com", "/x"),
        Some("deep-wild")
    );
    assert_eq!(matched(&e, "GET", "a.example.com", "/x"), Some("wild"));
    assert_eq!(
        matched(&e, "GET", "example.com", "/x"),
        Some("any"),
        "wildcard is not the apex"
    );
    assert_eq!(matched(&e, "GET", "other.org", "/x"), Some("any"));
}

#[test]
fn lower_host_tier_when_higher_has_no_path() {
    let e = engine(&[
        route("any-admin", "*", "/admin/*"),
        route("app-api", "app.example.com", "/api/*"),
    ]);
    assert_eq!(
        matched(&e, "GET", "app.example.com", "/api/x"),
        Some("app-api")
    );
    assert_eq!(
        matched(&e, "GET", "app.example.com", "/admin/x"),
        Some("any-admin")
    );
    assert_eq!(matched(&e, "GET", "app.example.com", "/other"), None);
}

#[test]
fn prefix_on_segment_boundaries() {
    let e = engine(&[route("api", "*", "/api/*")]);
    assert_eq!(matched(&e, "GET", "h", "/api"), Some("api"));
    assert_eq!(matched(&e, "GET", "h", "/api/"), Some("api"));
    assert_eq!(matched(&e, "GET", "h", "/api/x/y"), Some("api"));
    assert_eq!(matched(&e, "GET", "h", "/apiary"), None);
    assert_eq!(matched(&e, "GET", "h", "/ap"), None);
    assert_eq!(matched(&e, "GET", "h", "/"), None);
    // Matching is on the decoded path.
    assert_eq!(matched(&e, "GET", "h", "/%61pi/x"), Some("api"));
    assert_eq!(matched(&e, "GET", "h", "//api//x"), Some("api"));
}

#[test]
fn path_priority() {
    let e = engine(&[
        route("root", "*", "/*"),
        route("files-pdf", "*", "/files/**/*.pdf"),
        route("api", "*", "/api/*"),
        route("any-png", "*", "/**/*.png"),
        route("v1", "*", "/api/v1/*"),
        route("api-star-admin", "*", "/api/*/admin"),
        route("health", "*", "/api/health"),
        route("avatar", "*", "/users/*/avatar"),
    ]);
    let m = |p| matched(&e, "GET", "h", p);
    assert_eq!(m("/api/health"), Some("health"), "exact first");
    assert_eq!(m("/api/v1/health"), Some("v1"), "deeper prefix");
    assert_eq!(
        m("/api/x/admin"),
        Some("api-star-admin"),
        "glob before prefix at equal depth"
    );
    assert_eq!(
        m("/api/v1/admin"),
        Some("v1"),
        "deeper prefix before shallower glob"
    );
    assert_eq!(
        m("/api/x.png"),
        Some("api"),
        "depth-1 prefix before depth-0 glob"
    );
    assert_eq!(
        m("/img/x.png"),
        Some("any-png"),
        "depth-0 glob before depth-0 prefix"
    );
    assert_eq!(m("/files/a/b/c.pdf"), Some("files-pdf"));
    assert_eq!(
        m("/files/c.pdf"),
        Some("files-pdf"),
        "** matches zero segments"
    );
    assert_eq!(m("/files/c.txt"), Some("root"));
    assert_eq!(m("/users/u1/avatar"), Some("avatar"));
    assert_eq!(m("/users/u1/x/avatar"), Some("root"));
    assert_eq!(m("/"), Some("root"));
}

#[test]
fn declaration_order_and_method_fall_through() {
    let mut get = route("api-get", "*", "/api/*");
    get.methods = vec!["GET".into()];
    let mut post = route("api-post", "*", "/api/*");
    post.methods = vec!["POST".into()];
    let dup = route("api-all", "*", "/api/*");
    let mut exact_post = route("exact-post", "app.example.com", "/api/x");
    exact_post.methods = vec!["POST".into()];
    let e = engine(&[get, post, dup, exact_post]);
    assert_eq!(matched(&e, "GET", "h", "/api/x"), Some("api-get"));
    assert_eq!(matched(&e, "POST", "h", "/api/x"), Some("api-post"));
    assert_eq!(matched(&e, "DELETE", "h", "/api/x"), Some("api-all"));
    assert_eq!(
        matched(&e, "POST", "app.example.com", "/api/x"),
        Some("exact-post")
    );
    assert_eq!(
        matched(&e, "GET", "app.example.com", "/api/x"),
        Some("api-get"),
        "method falls through tiers"
    );
}

#[test]
fn malformed_requests_are_denied_with_a_reason() {
    let mut r = route("pub", "*", "/*");
    r.public = true;
    let e = engine(&[r]);
    let anon = at(None);
    for p in [
        "/a/../b",
        "/a/%2e%2e/b",
        "/a%2fb",
        "/a%5Cb",
        "/a%00",
        "a",
        "/%zz",
        "/%ff",
        "/a\\b",
    ] {
        let d = e.decide(&req("h", p), &anon);
        assert_eq!(
            (d.verdict, d.reason, d.route),
            (Verdict::Deny, Reason::MalformedPath, None),
            "{p:?}"
        );
        assert!(e.match_route(&req("h", p)).is_err());
    }
    for h in ["", "a b", "h:x", "[::1", "a..b"] {
        let d = e.decide(&req(h, "/"), &anon);
        assert_eq!(d.reason, Reason::MalformedHost, "{h:?}");
    }
    assert!(e.decide(&req("h", "/a?x=../.."), &anon).is_allow());
}

#[test]
fn hostile_input() {
    let mut routes: Vec<RouteSpec> = (0..50)
        .map(|i| route(&format!("r{i}"), "*", &format!("/a/**/x{i}/*.pdf")))
        .collect();
    routes.push(route("deep", "*", "/a/a/a/a/a/a/a/a/*"));
    let e = engine(&routes);
    let anon = at(None);
    let long = format!("/{}", "a".repeat(2_000_000));
    assert_eq!(e.decide(&req("h", &long), &anon).reason, Reason::NoRoute);
    let many = "/a".repeat(200_000);
    assert_eq!(e.decide(&req("h", &many), &anon).route, Some("deep"));
    let many_b = format!("{}/b", "/a".repeat(100_000));
    assert_eq!(e.decide(&req("h", &many_b), &anon).route, Some("deep"));
    let pct = "/%C3%28%E2%82%28%F0%28%8C%BC".to_owned() + &"%ff".repeat(10_000);
    assert_eq!(
        e.decide(&req("h", &pct), &anon).reason,
        Reason::MalformedPath
    );
    let slashes = "/".repeat(100_000);
    assert_eq!(e.decide(&req("h", &slashes), &anon).reason, Reason::NoRoute);
    let host = "a.".repeat(100_000);
    assert_eq!(
        e.decide(&req(&host, "/"), &anon).reason,
        Reason::MalformedHost
    );
    let host = "a".repeat(300);
    assert_eq!(
        e.decide(&req(&host, "/"), &anon).reason,
        Reason::MalformedHost
    );
    let ex = e.explain(&req("h", &long), &anon);
    assert!(ex.path.chars().count() <= 1025);
    assert!(!ex.to_string().is_empty());
}

// ---------------------------------------------------------------- compile errors

fn errors(routes: &[RouteSpec], opts: &CompileOptions<'_>) -> Vec<String> {
    match PolicyEngine::compile(routes, opts) {
        Ok(_) => panic!("compiled"),
        Err(e) => e.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn compile_errors_have_exact_locations() {
    let known = |g: &str| g == "admins" || g == "ops";
    let opts = CompileOptions::new().group_exists(&known);
    let mut bad = route("api", "*.example.*", "/api/../x");
    bad.methods = vec!["GET".into(), "BAD METHOD".into(), "get".into()];
    bad.public_methods = vec!["POST".into()];
    bad.allow = vec![
        groups(&["admins", "eng"]),
        RuleSpec {
            source_ips: vec!["10.0.0.0/33".into()],
            ..RuleSpec::default()
        },
        RuleSpec {
            auth_methods: vec!["Web Authn".into()],
            email_domains: vec!["@example.com".into()],
            time: Some(TimeWindowSpec {
                days: vec!["mon-fri".into(), "funday".into()],
                from: "25:00".into(),
                to: "9:00".into(),
                tz: "Mars/Olympus".into(),
            }),
            client_cert_sans: vec!["spiffe://x/*/y".into()],
            max_auth_age: Some(HumanDuration(Duration::ZERO)),
            ..authenticated()
        },
    ];
    bad.deny = vec![groups(&["", "ghosts"])];
    let ok = route("ok", "*", "/*");
    let dup = route("api", "a.example.com", "/");
    let got = errors(&[ok, bad, dup], &opts);
    let want = [
        r#"route[1].host: "*.example.*" is not a valid host pattern: '*' is only allowed as the whole first label ("*.example.com")"#,
        r#"route[1].path: "/api/../x" is not a valid path pattern: '.' and '..' segments are not allowed"#,
        r#"route[1].methods[1]: "BAD METHOD" is not a valid HTTP method"#,
        r#"route[1].methods[2]: method "get" is listed twice"#,
        r#"route[1].public_methods[0]: method "POST" is not among the route's methods, so it can never be public"#,
        r#"route[1].allow[0].groups[1]: unknown group "eng""#,
        r#"route[1].allow[1].source_ips[0]: "10.0.0.0/33" is not a valid CIDR or IP address"#,
        "route[1].allow[1]: an allow rule needs a selector (users, groups, email_domains or authenticated = true); use `public = true` on the route for unauthenticated access",
        r#"route[1].allow[2].email_domains[0]: "@example.com" is not a valid email domain: write the domain only, without '@'"#,
        r#"route[1].allow[2].auth_methods[0]: invalid authentication method name "Web Authn": use 1-32 of a-z, 0-9, '_' and '-'"#,
        "route[1].allow[2].max_auth_age: must be greater than zero",
        r#"route[1].allow[2].time.days[1]: "funday" is not a day (mon, tue, wed, thu, fri, sat, sun) or a range like "mon-fri""#,
        r#"route[1].allow[2].time.from: "25:00" is not a valid time of day: hours must be 00-23 (or 24:00 for `to`)"#,
        r#"route[1].allow[2].time.to: "9:00" is not a valid time of day: use HH:MM, e.g. "09:00""#,
        r#"route[1].allow[2].time.tz: unknown time zone "Mars/Olympus" (use an IANA name such as "Europe/Berlin")"#,
        r#"route[1].allow[2].client_cert_sans[0]: "spiffe://x/*/y" is not a valid SAN pattern: a URI pattern may only end in "/*" (prefix)"#,
        "route[1].deny[0].groups[0]: must not be empty",
        r#"route[1].deny[0].groups[1]: unknown group "ghosts""#,
        r#"route[2].name: duplicate route name "api" (first used by route[1])"#,
    ];
    assert_eq!(got, want, "\n{}", got.join("\n"));
}

#[test]
fn compile_errors_more() {
    let opts = CompileOptions::default();
    let cases: &[(RouteSpec, &str)] = &[
        (
            route("", "*", "/"),
            r#"route[0].name: invalid route name "": use 1-128 visible ASCII characters"#,
        ),
        (
            route("a b", "*", "/"),
            r#"route[0].name: invalid route name "a b": use 1-128 visible ASCII characters"#,
        ),
        (
            route("r", "a:80", "/"),
            r#"route[0].host: "a:80" is not a valid host pattern: a host pattern has no port (ports are ignored when matching)"#,
        ),
        (
            route("r", "*", "api"),
            r#"route[0].path: "api" is not a valid path pattern: must start with '/'"#,
        ),
        (
            route("r", "*", "/a/"),
            r#"route[0].path: "/a/" is not a valid path pattern: empty segment ('//' or a trailing '/'; request paths are matched without them)"#,
        ),
        (
            route("r", "*", "/a**"),
            r#"route[0].path: "/a**" is not a valid path pattern: '**' must be a whole segment"#,
        ),
        (
            route("r", "*", "/a%2f"),
            r#"route[0].path: "/a%2f" is not a valid path pattern: '%', '\', '?' and '#' are not allowed (patterns match decoded paths; write characters literally)"#,
        ),
    ];
    for (r, want) in cases {
        assert_eq!(errors(std::slice::from_ref(r), &opts), [*want]);
    }
    let mut r = route("r", "*", "/");
    r.allow = vec![RuleSpec {
        time: Some(TimeWindowSpec {
            days: vec![],
            from: "10:00".into(),
            to: "10:00".into(),
            tz: "UTC".into(),
        }),
        client_cert_sans: vec!["a b".into(), "x@*.com".into(), "*.".into()],
        ..authenticated()
    }];
    assert_eq!(
        errors(&[r], &opts),
        [
            r#"route[0].allow[0].time.to: `from` and `to` are equal ("10:00"): the window would be empty"#,
            r#"route[0].allow[0].client_cert_sans[0]: "a b" is not a valid SAN pattern: whitespace or control character"#,
            r#"route[0].allow[0].client_cert_sans[1]: "x@*.com" is not a valid SAN pattern: an email SAN is local@domain, without wildcards"#,
            r#"route[0].allow[0].client_cert_sans[2]: "*." is not a valid SAN pattern: after "*." a DNS name must follow"#,
        ]
    );
}

#[test]
fn rule_set_is_protocol_independent() {
    let allow = [groups(&["dba"])];
    let deny = [RuleSpec {
        source_ips: vec!["0.0.0.0/0".into()],
        time: Some(TimeWindowSpec {
            days: vec!["sun".into()],
            from: "00:00".into(),
            to: "24:00".into(),
            tz: "UTC".into(),
        }),
        ..RuleSpec::default()
    }];
    let rs = RuleSet::compile(&allow, &deny, "sql.database[2]", None).unwrap();
    assert_eq!((rs.allow_len(), rs.deny_len()), (1, 1));
    let dba = user("d", &["dba"]);
    let mon = ts("2024-07-08T12:00:00Z");
    let sun = ts("2024-07-07T12:00:00Z");
    let s = Subject::new(Some(&dba), mon).with_source_ip(ip("10.0.0.1"));
    let d = rs.evaluate(&s);
    assert_eq!((d.verdict, d.route), (Verdict::Allow, None));
    let s = Subject::new(Some(&dba), sun).with_source_ip(ip("10.0.0.1"));
    assert_eq!(rs.evaluate(&s).reason, Reason::DeniedByRule);
    assert_eq!(
        rs.evaluate_public(&Subject::anonymous(mon)).reason,
        Reason::Public
    );
    let err = RuleSet::compile(&[RuleSpec::default()], &[], "ssh.target[0]", None).unwrap_err();
    assert_eq!(err.len(), 1);
    assert!(
        err.to_string()
            .starts_with("ssh.target[0].allow[0]: an allow rule needs a selector")
    );
    let err = RuleSet::compile(&[groups(&[""])], &[], "", None).unwrap_err();
    assert_eq!(err.to_string(), "allow[0].groups[0]: must not be empty");
}

#[test]
fn spec_round_trips_through_toml_shaped_json() {
    let json = r#"{"name":"r","path":"/api/*","allow":[{"groups":["eng"],"max_auth_age":"15m",
        "time":{"days":["mon-fri"],"from":"08:00","tz":"Europe/Berlin"}}]}"#;
    let r: RouteSpec = serde_json::from_str(json).unwrap();
    assert_eq!(r.host, "*");
    assert_eq!(r.allow[0].time.as_ref().unwrap().to, "24:00");
    assert!(PolicyEngine::compile(&[r], &CompileOptions::default()).is_ok());
    assert!(serde_json::from_str::<RouteSpec>(r#"{"name":"r","hosts":"x"}"#).is_err());
}

// ---------------------------------------------------------------- explain

#[test]
fn explain_traces_candidates_and_conditions() {
    let mut get = route("api-get", "app.example.com", "/api/*");
    get.methods = vec!["GET".into()];
    let mut api = route("api", "app.example.com", "/api/*");
    api.allow = vec![RuleSpec {
        name: Some("admins".into()),
        auth_methods: vec!["webauthn".into()],
        ..groups(&["admins"])
    }];
    api.deny = vec![RuleSpec {
        name: Some("blocklist".into()),
        source_ips: vec!["203.0.113.0/24".into()],
        ..RuleSpec::default()
    }];
    let e = engine(&[get, api, route("glob", "app.example.com", "/api/*/x")]);
    let alice = user("alice", &["admins"]);
    let s = at(Some(&alice)).with_source_ip(ip("10.0.0.1"));
    let r = HttpRequest::new("POST", "App.Example.com:443", "/api//v1");
    let ex = e.explain(&r, &s);
    assert_eq!(ex.decision, e.decide(&r, &s));
    assert_eq!(ex.decision.reason, Reason::StepUpRequired);
    assert_eq!(ex.normalized_host.as_deref(), Some("app.example.com"));
    assert_eq!(ex.normalized_path.as_deref(), Some("/api/v1"));
    let c: Vec<_> = ex
        .candidates
        .iter()
        .map(|c| (c.route, c.kind, c.outcome))
        .collect();
    assert_eq!(
        c,
        [
            ("glob", PathKind::Glob, CandidateOutcome::PathNotMatched),
            (
                "api-get",
                PathKind::Prefix,
                CandidateOutcome::MethodNotCovered
            ),
            ("api", PathKind::Prefix, CandidateOutcome::Selected),
        ]
    );
    let rules = ex.rules.as_ref().unwrap();
    assert!(!rules.deny[0].matched);
    assert_eq!(rules.deny[0].conditions[0].condition, Condition::SourceIps);
    let allow = &rules.allow[0];
    assert!(!allow.matched);
    let conds: Vec<_> = allow
        .conditions
        .iter()
        .map(|c| (c.condition, c.met))
        .collect();
    assert_eq!(
        conds,
        [(Condition::Selector, true), (Condition::AuthMethods, false)]
    );
    let text = ex.to_string();
    for needle in [
        "request: POST \"App.Example.com:443\" \"/api//v1\"",
        "✗ \"glob\"",
        "skipped: method not covered",
        "✓ \"api\" (exact host app.example.com, prefix /api/*): selected",
        "deny[0] \"blocklist\": not matched",
        "✗ source_ips: in [203.0.113.0/24]; source 10.0.0.1",
        "✓ selector: any of groups [admins]",
        "✗ auth_methods: one of [webauthn] used; caller used [password 60s ago]",
        "decision: need step-up (webauthn) [step_up_required] route \"api\" by allow[0] \"admins\"",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    let json = serde_json::to_value(&ex).unwrap();
    assert_eq!(json["decision"]["verdict"], "need_step_up");
    assert_eq!(json["decision"]["methods"][0], "webauthn");
    assert_eq!(json["decision"]["reason"], "step_up_required");
    assert_eq!(json["decision"]["rule"]["name"], "admins");
    assert_eq!(json["candidates"][1]["outcome"], "method_not_covered");
    assert_eq!(json["rules"]["allow"][0]["conditions"][1]["met"], false);

    let bad = e.explain(&req("h", "/a/../b"), &s);
    assert_eq!(bad.request_error, Some(RequestError::DotSegment));
    assert_eq!(bad.decision.reason, Reason::MalformedPath);
    assert!(bad.to_string().contains("refused: path has a dot-segment"));
}

#[test]
fn decide_http_reads_authority_or_host_header() {
    let e = engine(&[route("app", "app.example.com", "/*")]);
    let alice = user("alice", &[]);
    let s = at(Some(&alice));
    let r = http::Request::get("/x")
        .header("host", "app.example.com:8080")
        .body(())
        .unwrap();
    assert_eq!(e.decide_http(&r, &s).route, Some("app"));
    let r = http::Request::get("https://app.example.com/x")
        .body(())
        .unwrap();
    assert_eq!(e.decide_http(&r, &s).route, Some("app"));
    let r = http::Request::get("/x").body(()).unwrap();
    assert_eq!(e.decide_http(&r, &s).reason, Reason::MalformedHost);
}

// ---------------------------------------------------------------- property test

/// The documented priority as a linear scan, on spec strings.
fn naive(routes: &[RouteSpec], host: &str, path: &str, method: &str) -> Option<usize> {
    fn seg_match(p: &[u8], s: &[u8]) -> bool {
        match p.split_first() {
            None => s.is_empty(),
            Some((b'*', rest)) => (0..=s.len()).any(|i| seg_match(rest, &s[i..])),
            Some((c, rest)) => s.first() == Some(c) && seg_match(rest, &s[1..]),
        }
    }
    fn glob(p: &[&str], s: &[&str]) -> bool {
        match p.split_first() {
            None => s.is_empty(),
            Some((&"**", rest)) => glob(rest, s) || (!s.is_empty() && glob(p, &s[1..])),
            Some((x, rest)) => {
                !s.is_empty() && seg_match(x.as_bytes(), s[0].as_bytes()) && glob(rest, &s[1..])
            }
        }
    }
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    type Key = ((u8, isize), (u8, isize, u8), usize);
    let mut best: Option<Key> = None;
    for (i, r) in routes.iter().enumerate() {
        let hk = if r.host == "*" {
            (2, 0)
        } else if let Some(sfx) = r.host.strip_prefix("*.") {
            if !host.ends_with(&format!(".{sfx}")) {
                continue;
            }
            (1, -(sfx.len() as isize))
        } else if r.host == host {
            (0, 0)
        } else {
            continue;
        };
        let pat: Vec<&str> = r.path.split('/').filter(|s| !s.is_empty()).collect();
        let stars = pat.iter().filter(|s| s.contains('*')).count();
        let pk = if stars == 0 {
            if pat != segs {
                continue;
            }
            (0, 0, 0)
        } else if stars == 1 && pat.last() == Some(&"*") {
            let lead = &pat[..pat.len() - 1];
            if !segs.starts_with(lead) {
                continue;
            }
            (1, -(lead.len() as isize), 1)
        } else {
            if !glob(&pat, &segs) {
                continue;
            }
            let depth = pat.iter().take_while(|s| !s.contains('*')).count();
            (1, -(depth as isize), 0)
        };
        let m_ok = r.methods.is_empty()
            || r.methods.iter().any(|m| m.eq_ignore_ascii_case(method))
            || (method == "HEAD" && r.methods.iter().any(|m| m == "GET"));
        if !m_ok {
            continue;
        }
        let key = (hk, pk, i);
        if best.is_none_or(|b| key < b) {
            best = Some(key);
        }
    }
    best.map(|b| b.2)
}

fn arb_route() -> impl Strategy<Value = (String, String, Vec<String>)> {
    let host = prop::sample::select(vec![
        "*",
        "*.example.com",
        "*.a.example.com",
        "a.example.com",
        "example.com",
        "b.example.com",
    ]);
    let seg = prop::sample::select(vec!["a", "b", "ab", "x.pdf", "*", "**", "a*", "*.pdf"]);
    let path = (prop::collection::vec(seg, 0..4), any::<bool>()).prop_map(|(s, prefix)| {
        let mut p = format!("/{}", s.join("/"));
        if prefix {
            p = if s.is_empty() {
                "/*".into()
            } else {
                format!("{p}/*")
            };
        }
        p
    });
    let methods = prop::sample::subsequence(vec!["GET", "POST"], 0..=2);
    (host, path, methods)
        .prop_map(|(h, p, m)| (h.to_owned(), p, m.into_iter().map(str::to_owned).collect()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn matcher_agrees_with_naive_reference(
        specs in prop::collection::vec(arb_route(), 0..40),
        reqs in prop::collection::vec((
            prop::sample::select(vec!["a.example.com", "x.a.example.com", "example.com", "b.example.com", "c.d.example.com", "other.org"]),
            prop::collection::vec(prop::sample::select(vec!["a", "b", "ab", "x.pdf", "c", "abpdf"]), 0..5),
            prop::sample::select(vec!["GET", "POST", "HEAD", "DELETE"]),
        ), 1..20),
    ) {
        let routes: Vec<RouteSpec> = specs
            .iter()
            .enumerate()
            .map(|(i, (h, p, m))| {
                let mut r = route(&format!("r{i}"), h, p);
                r.methods = m.clone();
                r
            })
            .collect();
        let e = engine(&routes);
        for (host, segs, method) in reqs {
            let path = format!("/{}", segs.join("/"));
            let got = e
                .match_route(&HttpRequest::new(method, host, &path))
                .unwrap()
                .map(|r| r.name().to_owned());
            let want = naive(&routes, host, &path, method).map(|i| format!("r{i}"));
            prop_assert_eq!(&got, &want, "{} {} {}", method, host, path);
            let ex = e.explain(&HttpRequest::new(method, host, &path), &at(None));
            prop_assert_eq!(ex.decision.route.map(str::to_owned), want.clone());
            let selected = ex.candidates.iter().filter(|c| c.outcome == CandidateOutcome::Selected).count();
            prop_assert_eq!(selected, usize::from(want.is_some()));
        }
    }

    #[test]
    fn arbitrary_requests_never_panic(method in ".{0,8}", host in ".{0,300}", path in ".{0,300}") {
        let e = engine(&[route("a", "*.example.com", "/x/**/y"), route("b", "*", "/*")]);
        let r = HttpRequest::new(&method, &host, &path);
        let d = e.decide(&r, &at(None));
        prop_assert_eq!(e.explain(&r, &at(None)).decision, d);
    }
}

#[test]
fn path_parameters_are_refused() {
    use crate::policy::path::normalize_path;
    assert_eq!(
        normalize_path("/admin;x/users"),
        Err(RequestError::PathParameters)
    );
    assert_eq!(normalize_path("/a/b;"), Err(RequestError::PathParameters));
    assert_eq!(normalize_path("/..;x/admin"), Err(RequestError::DotSegment));
    // Encoded ';' is data, not a parameter: servlet containers do not strip it.
    assert!(normalize_path("/a%3Bb").is_ok());
}

#[test]
fn second_tier_routes_only_take_what_the_first_tier_leaves() {
    // First tier: admins on all of app.example.com, and GET only on /docs.
    let mut docs = route("docs", "*", "/docs");
    docs.methods = vec!["GET".into()];
    let mut app = route("app", "app.example.com", "/*");
    app.allow = vec![groups(&["admins"])];
    // Second tier: more specific everywhere, and public.
    let mut shadow = route("shadow", "app.example.com", "/admin/*");
    shadow.public = true;
    let mut exact = route("exact", "other.example.com", "/docs");
    exact.public = true;
    let own = route("own", "svc.example.com", "/*");
    let routes = [app, docs, shadow, exact, own];
    let e = match PolicyEngine::compile(&routes, &CompileOptions::new().second_tier_from(2)) {
        Ok(e) => e,
        Err(e) => panic!("{e}"),
    };
    let bob = user("bob", &[]);
    let name = |host: &str, path: &str, method: &str| {
        let mut r = req(host, path);
        r.method = method;
        e.match_route(&r).unwrap().map(|r| r.name().to_owned())
    };
    // The file's routes win where they match, however specific the other is.
    assert_eq!(
        name("app.example.com", "/admin/x", "GET").as_deref(),
        Some("app")
    );
    assert_eq!(
        name("other.example.com", "/docs", "GET").as_deref(),
        Some("docs")
    );
    let d = e.decide(&req("app.example.com", "/admin/x"), &at(Some(&bob)));
    assert_eq!(d.route, Some("app"));
    assert!(!d.is_allow(), "{d:?}");
    // What the first tier leaves is the second's: another host, another method.
    assert_eq!(name("svc.example.com", "/x", "GET").as_deref(), Some("own"));
    assert_eq!(
        name("other.example.com", "/docs", "POST").as_deref(),
        Some("exact")
    );
    // Without tiers, specificity decides (the shadow would win).
    let flat = engine(&routes);
    let r = req("app.example.com", "/admin/x");
    assert_eq!(
        flat.match_route(&r).unwrap().map(Route::name),
        Some("shadow")
    );
    // explain agrees with decide.
    let ex = e.explain(&req("app.example.com", "/admin/x"), &at(Some(&bob)));
    assert_eq!(ex.decision.route, Some("app"));
}

/// A request decided with a host normalized before is decided as the one
/// with the raw host: same route, verdict and reason, for hosts with
/// ports, case, a trailing dot, IPv6 literals, and malformed ones (which
/// `NormalHost::new` refuses with the error `decide` denies for).
#[test]
fn a_normal_host_decides_as_the_raw_one() {
    let e = engine(&[
        route("api", "api.example.com", "/api/*"),
        route("wild", "*.example.com", "/*"),
        route("v6", "[2001:db8::1]", "/*"),
        route("any", "*", "/other/*"),
    ]);
    let alice = user("alice", &[]);
    for host in [
        "api.example.com",
        "API.Example.COM:8443",
        "api.example.com.",
        "x.example.com:80",
        "[2001:DB8::1]:443",
        "[2001:db8::1]",
        "elsewhere.test",
        "",
        "a..b",
        "bad host",
        "[::1",
        "h:99999",
    ] {
        for path in ["/api/x", "/other/y", "/"] {
            let raw = e.decide(&req(host, path), &at(Some(&alice)));
            let explained = e.explain(&req(host, path), &at(Some(&alice)));
            match NormalHost::new(host) {
                Ok(n) => {
                    let pre = HttpRequest::with_normal_host("GET", &n, path);
                    let d = e.decide(&pre, &at(Some(&alice)));
                    assert_eq!(
                        (d.verdict, d.reason, d.route),
                        (raw.verdict, raw.reason, raw.route),
                        "{host} {path}"
                    );
                    let x = e.explain(&pre, &at(Some(&alice)));
                    assert_eq!(x.normalized_host, explained.normalized_host, "{host}");
                    assert_eq!(
                        e.match_route(&pre).map(|r| r.map(|r| r.name().to_owned())),
                        e.match_route(&req(host, path))
                            .map(|r| r.map(|r| r.name().to_owned())),
                        "{host} {path}"
                    );
                }
                Err(err) => {
                    assert_eq!(raw.reason, Reason::MalformedHost, "{host}");
                    assert_eq!(e.match_route(&req(host, path)).err(), Some(err), "{host}");
                }
            }
        }
    }
}
