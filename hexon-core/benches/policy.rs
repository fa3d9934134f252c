//! Policy engine benchmarks: `decide` over 1,000 routes (exact hosts,
//! wildcards, prefixes, globs) for an identity whose resolved groups come from
//! a directory of 10,000 groups nested 5 deep, and `explain`.
//!
//! `cargo bench -p hexon-core --bench policy -- --warm-up-time 1 --measurement-time 5`
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::print_stderr
)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use hexon_core::duration::HumanDuration;
use hexon_core::policy::spec::{RouteSpec, RuleSpec};
use hexon_core::policy::{CompileOptions, HttpRequest, PolicyEngine, Reason, Subject, Verdict};
use hexon_core::{Identity, UnixTime};

const GROUPS: usize = 10_000;
const FANOUT: usize = 10;

fn group(n: usize) -> String {
    format!("grp-{n:05}")
}

/// Group `n`'s parent in a 5-level tree of 10,000 groups (root 0).
fn parent(n: usize) -> Option<usize> {
    (n > 0).then(|| (n - 1) / FANOUT)
}

/// Deterministic pseudo-random numbers (no extra dependency).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) as usize) % n
    }
}

fn rule(groups: &[usize]) -> RuleSpec {
    RuleSpec {
        groups: groups.iter().map(|&g| group(g)).collect(),
        ..RuleSpec::default()
    }
}

fn routes(rng: &mut Lcg) -> Vec<RouteSpec> {
    let mut out = Vec::new();
    let mut push = |name: String, host: String, path: String, rng: &mut Lcg| {
        let allow = vec![rule(&[
            rng.next(GROUPS),
            rng.next(GROUPS),
            rng.next(GROUPS),
        ])];
        let deny = vec![rule(&[rng.next(GROUPS)])];
        out.push(RouteSpec {
            name,
            host,
            path,
            methods: vec![],
            public: false,
            public_methods: vec![],
            allow,
            deny,
            credentials: vec![],
        });
    };
    for i in 0..200 {
        let h = format!("app{i}.example.com");
        push(
            format!("app{i}-api"),
            h.clone(),
            format!("/api/v{}/*", i % 3),
            rng,
        );
        push(
            format!("app{i}-js"),
            h.clone(),
            "/static/**/*.js".into(),
            rng,
        );
        push(format!("app{i}-exact"), h, format!("/exact/path{i}"), rng);
    }
    for i in 0..100 {
        let h = format!("*.tenant{i}.example.net");
        push(format!("t{i}-prefix"), h.clone(), "/t/*".into(), rng);
        push(format!("t{i}-glob"), h, "/t/*/files/**".into(), rng);
    }
    for i in 0..150 {
        push(format!("svc{i}"), "*".into(), format!("/svc{i}/*"), rng);
    }
    for i in 0..50 {
        push(format!("g{i}"), "*".into(), format!("/g{i}/**/*.pdf"), rng);
    }
    out
}

fn bench(c: &mut Criterion) {
    let mut rng = Lcg(42);
    let mut specs = routes(&mut rng);
    assert_eq!(specs.len(), 1000);

    // The user is directly in 150 leaf groups; resolved membership adds every ancestor.
    let mut resolved = std::collections::BTreeSet::new();
    for _ in 0..150 {
        let mut g = Some(GROUPS - 1 - rng.next(GROUPS - 1111));
        while let Some(n) = g {
            resolved.insert(n);
            g = parent(n);
        }
    }
    let inherited = *resolved.iter().find(|&&g| (11..111).contains(&g)).unwrap();
    // Target routes: allowed through an inherited (level-2) group; one needs step-up.
    let target = specs.iter().position(|r| r.name == "app150-api").unwrap();
    specs[target].allow.push(rule(&[inherited]));
    let wild = specs.iter().position(|r| r.name == "t42-glob").unwrap();
    specs[wild].allow.push(rule(&[inherited]));
    let step = specs.iter().position(|r| r.name == "svc99").unwrap();
    specs[step].allow = vec![RuleSpec {
        auth_methods: vec!["webauthn".into()],
        max_auth_age: Some(HumanDuration(Duration::from_secs(900))),
        ..rule(&[inherited])
    }];

    let engine = PolicyEngine::compile(&specs, &CompileOptions::default()).unwrap();
    let now = UnixTime::from_secs(1_700_000_000);
    let id = Identity::builder("u-1", "alice")
        .email("alice@example.com")
        .groups(resolved.iter().map(|&g| group(g)))
        .auth("password", now)
        .unwrap()
        .build()
        .unwrap();
    eprintln!(
        "routes: {}, directory groups: {GROUPS} (5 levels), resolved groups of the identity: {}",
        engine.routes().len(),
        id.groups().len()
    );
    let user = Subject::new(Some(&id), now).with_source_ip("10.0.0.1".parse().unwrap());
    let anon = Subject::anonymous(now);

    let cases: [(&str, HttpRequest<'_>, &Subject<'_>, Reason); 6] = [
        (
            "allow/exact-host+prefix",
            HttpRequest::new("GET", "app150.example.com", "/api/v0/users/42"),
            &user,
            Reason::AllowedByRule,
        ),
        (
            "allow/wildcard-host+glob",
            HttpRequest::new("GET", "x.tenant42.example.net", "/t/acme/files/a/b/c.txt"),
            &user,
            Reason::AllowedByRule,
        ),
        (
            "need-login/anonymous",
            HttpRequest::new("GET", "app150.example.com", "/api/v0/users/42"),
            &anon,
            Reason::LoginRequired,
        ),
        (
            "step-up/any-host-prefix",
            HttpRequest::new("POST", "other.example.org", "/svc99/do"),
            &user,
            Reason::StepUpRequired,
        ),
        (
            "deny/no-allow-rule",
            HttpRequest::new("GET", "app7.example.com", "/static/a/b/app.js"),
            &user,
            Reason::NoAllowRuleMatched,
        ),
        (
            "deny/no-route",
            HttpRequest::new("GET", "nowhere.example.org", "/nothing/here"),
            &user,
            Reason::NoRoute,
        ),
    ];
    let mut g = c.benchmark_group("policy/decide");
    for (name, req, subject, want) in &cases {
        let d = engine.decide(req, subject);
        assert_eq!(d.reason, *want, "{name}: {d}");
        if *want == Reason::StepUpRequired {
            assert!(matches!(d.verdict, Verdict::NeedStepUp { .. }));
        }
        g.bench_function(*name, |b| {
            b.iter(|| engine.decide(black_box(req), black_box(subject)))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("policy/explain");
    for (name, req, subject, _) in cases.iter().take(2) {
        g.bench_function(*name, |b| {
            b.iter(|| engine.explain(black_box(req), black_box(subject)))
        });
    }
    g.finish();

    c.bench_function("policy/compile-1000-routes", |b| {
        b.iter(|| PolicyEngine::compile(black_box(&specs), &CompileOptions::default()).unwrap())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
