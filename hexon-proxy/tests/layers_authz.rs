#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
//! AuthorizeLayer: policy outcomes, login redirects, step-up, hot swap.

mod layers_support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hexon_core::duration::HumanDuration;
use hexon_core::policy::spec::{RouteSpec, RuleSpec};
use hexon_core::policy::{CompileOptions, PolicyEngine, Reason};
use hexon_core::{AuthMethod, Identity};
use hexon_proxy::authz::{AuthorizeLayer, AuthzOutcome, AuthzVerdict, PolicyHandle};
use hexon_proxy::ext::{MatchedRoute, RequestId};
use http::{Request, StatusCode};
use http_body_util::Empty;
use layers_support::*;
use rcgen::ExtendedKeyUsagePurpose as Eku;
use tower::ServiceBuilder;

fn route(
    name: &str,
    path: &str,
    allow: Vec<RuleSpec>,
    deny: Vec<RuleSpec>,
    public: bool,
) -> RouteSpec {
    RouteSpec {
        name: name.into(),
        host: "app.example.com".into(),
        path: path.into(),
        methods: vec![],
        public,
        public_methods: vec![],
        allow,
        deny,
        credentials: vec![],
    }
}

fn routes(app_public: bool) -> Vec<RouteSpec> {
    let authenticated = RuleSpec {
        authenticated: true,
        ..RuleSpec::default()
    };
    vec![
        route("public", "/public/*", vec![], vec![], true),
        route(
            "app",
            "/app/*",
            vec![authenticated.clone()],
            vec![RuleSpec {
                name: Some("block-mallory".into()),
                users: vec!["mallory".into()],
                ..RuleSpec::default()
            }],
            app_public,
        ),
        route(
            "admin",
            "/admin/*",
            vec![RuleSpec {
                name: Some("admins-webauthn".into()),
                groups: vec!["admins".into()],
                auth_methods: vec!["webauthn".into()],
                max_auth_age: Some(HumanDuration(Duration::from_secs(300))),
                ..RuleSpec::default()
            }],
            vec![],
            false,
        ),
        route(
            "internal",
            "/internal/*",
            vec![RuleSpec {
                source_ips: vec!["10.0.0.0/8".into()],
                ..authenticated.clone()
            }],
            vec![],
            false,
        ),
        route(
            "mtls",
            "/svc/*",
            vec![RuleSpec {
                client_cert_sans: vec!["spiffe://example.org/*".into()],
                ..authenticated
            }],
            vec![],
            false,
        ),
    ]
}

fn engine(app_public: bool) -> PolicyEngine {
    PolicyEngine::compile(&routes(app_public), &CompileOptions::default()).unwrap()
}

fn user(name: &str, groups: &[&str], method: &str) -> Identity {
    Identity::builder(format!("u-{name}"), name)
        .groups(groups.iter().copied())
        .auth(method, NOW)
        .unwrap()
        .build()
        .unwrap()
}

struct Call {
    path: &'static str,
    identity: Option<Identity>,
    html: bool,
    conn: Option<hexon_proxy::ext::ConnectionInfo>,
}

impl Call {
    fn new(path: &'static str) -> Self {
        Call {
            path,
            identity: None,
            html: false,
            conn: None,
        }
    }
    fn who(mut self, id: Identity) -> Self {
        self.identity = Some(id);
        self
    }
    fn html(mut self) -> Self {
        self.html = true;
        self
    }
    fn from(mut self, c: hexon_proxy::ext::ConnectionInfo) -> Self {
        self.conn = Some(c);
        self
    }
    fn request(&self) -> Request<Empty<Bytes>> {
        let mut b = Request::get(format!("http://app.example.com{}", self.path));
        b = b.header(
            "accept",
            if self.html {
                "text/html,*/*;q=0.8"
            } else {
                "application/json"
            },
        );
        let mut r = b.body(Empty::new()).unwrap();
        r.extensions_mut().insert(RequestId(Arc::from("rid-7")));
        if let Some(id) = &self.identity {
            r.extensions_mut().insert(id.clone());
        }
        if let Some(c) = &self.conn {
            r.extensions_mut().insert(c.clone());
        }
        r
    }
}

fn layer(handle: &PolicyHandle) -> AuthorizeLayer {
    AuthorizeLayer::new(handle.clone())
        .with_login_url("https://login.example.com/login")
        .unwrap()
        .with_clock(|| NOW)
}

async fn run(layer: &AuthorizeLayer, c: Call) -> http::Response<hexon_proxy::body::BoxBody> {
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(echo::<Empty<Bytes>>());
    call(svc, c.request()).await
}

fn outcome(res: &http::Response<hexon_proxy::body::BoxBody>) -> &AuthzOutcome {
    res.extensions().get::<AuthzOutcome>().unwrap()
}

#[tokio::test]
async fn allow_inserts_matched_route_and_outcome() {
    let h = PolicyHandle::new(engine(false));
    let l = layer(&h);
    let res = run(&l, Call::new("/app/x").who(alice())).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        seen(&res)
            .parts
            .extensions
            .get::<MatchedRoute>()
            .unwrap()
            .name(),
        "app"
    );
    let o = outcome(&res);
    assert_eq!(o.verdict, AuthzVerdict::Allow);
    assert_eq!(o.reason, Reason::AllowedByRule);
    assert_eq!(o.route.as_deref(), Some("app"));
    assert_eq!(o.rule.as_deref(), Some("allow[0]"));

    let res = run(&l, Call::new("/public/logo.png")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(outcome(&res).reason, Reason::Public);
}

#[tokio::test]
async fn need_login_redirects_browsers_and_401s_apis() {
    let h = PolicyHandle::new(engine(false));
    let l = layer(&h);
    let res = run(&l, Call::new("/app/x?q=1&r=%2F").html()).await;
    assert_eq!(res.status(), StatusCode::FOUND);
    assert_eq!(
        res.headers()["location"],
        "https://login.example.com/login?rd=http%3A%2F%2Fapp.example.com%2Fapp%2Fx%3Fq%3D1%26r%3D%252F"
    );
    assert_eq!(res.headers()["x-request-id"], "rid-7");
    assert_eq!(outcome(&res).verdict, AuthzVerdict::NeedLogin);
    assert!(res.extensions().get::<Seen>().is_none());

    let res = run(&l, Call::new("/app/x")).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(res.headers()["www-authenticate"], r#"Bearer realm="hexon""#);

    // Without a login URL browsers get a 401 too.
    let bare = AuthorizeLayer::new(h.clone()).with_clock(|| NOW);
    let res = run(&bare, Call::new("/app/x").html()).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(body_string(res).await.contains("rid-7"));

    // A login URL with a query and a custom return parameter.
    let l2 = AuthorizeLayer::new(h)
        .with_login_url("/auth/start?tenant=a")
        .unwrap()
        .with_return_param("return_to")
        .with_clock(|| NOW);
    let res = run(&l2, Call::new("/app/").html()).await;
    assert_eq!(
        res.headers()["location"],
        "/auth/start?tenant=a&return_to=http%3A%2F%2Fapp.example.com%2Fapp%2F"
    );
}

#[tokio::test]
async fn step_up() {
    let h = PolicyHandle::new(engine(false));
    let l = layer(&h);
    let password_admin = user("ada", &["admins"], "password");

    let res = run(
        &l,
        Call::new("/admin/keys").who(password_admin.clone()).html(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::FOUND);
    assert_eq!(
        res.headers()["location"],
        "https://login.example.com/login?rd=http%3A%2F%2Fapp.example.com%2Fadmin%2Fkeys&step_up=1&acr_values=webauthn&max_age=300"
    );
    assert_eq!(
        outcome(&res).verdict,
        AuthzVerdict::NeedStepUp {
            methods: vec![AuthMethod::new("webauthn").unwrap()],
            max_age: Some(Duration::from_secs(300)),
        }
    );

    let res = run(&l, Call::new("/admin/keys").who(password_admin)).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        res.headers()["www-authenticate"],
        r#"Bearer realm="hexon", error="insufficient_user_authentication", error_description="A different authentication level is required", acr_values="webauthn", max_age="300""#
    );

    // With a fresh webauthn: allowed.
    let res = run(
        &l,
        Call::new("/admin/keys").who(user("ada", &["admins"], "webauthn")),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn deny_is_403_without_details() {
    let h = PolicyHandle::new(engine(false));
    let l = layer(&h);
    let mallory = user("mallory", &[], "password");
    for html in [false, true] {
        let mut c = Call::new("/app/x").who(mallory.clone());
        if html {
            c = c.html();
        }
        let res = run(&l, c).await;
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
        let o = outcome(&res).clone();
        assert_eq!(o.verdict, AuthzVerdict::Deny);
        assert_eq!(o.reason, Reason::DeniedByRule);
        assert_eq!(o.rule.as_deref(), Some(r#"deny[0] "block-mallory""#));
        let body = body_string(res).await;
        assert!(body.contains("rid-7"));
        assert!(
            !body.contains("mallory") && !body.contains("denied") && !body.contains("app"),
            "{body}"
        );
    }
    // No route: 403 too.
    let res = run(&l, Call::new("/nowhere").who(alice())).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(outcome(&res).reason, Reason::NoRoute);
    // Admin route, authenticated but not an admin: 403, not a login loop.
    let res = run(&l, Call::new("/admin/").who(alice()).html()).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn source_ip_and_client_certificate_conditions() {
    let h = PolicyHandle::new(engine(false));
    let l = layer(&h);
    let res = run(
        &l,
        Call::new("/internal/x").who(alice()).from(peer("10.1.2.3")),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = run(
        &l,
        Call::new("/internal/x")
            .who(alice())
            .from(peer("203.0.113.1")),
    )
    .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let res = run(&l, Call::new("/internal/x").who(alice())).await;
    assert_eq!(
        res.status(),
        StatusCode::FORBIDDEN,
        "no ConnectionInfo: no source IP"
    );

    let ca = Ca::new();
    let (good, _) = ca.issue(
        vec![uri_san("spiffe://example.org/ns/a/sa/b")],
        vec![Eku::ClientAuth],
    );
    let (other, _) = ca.issue(vec![uri_san("spiffe://other.org/x")], vec![Eku::ClientAuth]);
    let (server_only, _) = ca.issue(
        vec![uri_san("spiffe://example.org/ns/a/sa/b")],
        vec![Eku::ServerAuth],
    );
    let res = run(
        &l,
        Call::new("/svc/x")
            .who(alice())
            .from(tls_peer("10.0.0.1", vec![good])),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = run(
        &l,
        Call::new("/svc/x")
            .who(alice())
            .from(tls_peer("10.0.0.1", vec![other])),
    )
    .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let res = run(
        &l,
        Call::new("/svc/x")
            .who(alice())
            .from(tls_peer("10.0.0.1", vec![server_only])),
    )
    .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn policy_hot_swap() {
    let h = PolicyHandle::new(engine(false));
    let l = layer(&h);
    let svc = ServiceBuilder::new()
        .layer(l.clone())
        .service(echo::<Empty<Bytes>>());
    let res = call(svc.clone(), Call::new("/app/x").request()).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    h.store(engine(true));
    // The same, already built service sees the new policy.
    let res = call(svc.clone(), Call::new("/app/x").request()).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(outcome(&res).reason, Reason::Public);
    h.store(Arc::new(engine(false)));
    let res = call(svc, Call::new("/app/x").request()).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

#[test]
fn login_url_must_be_safe() {
    let h = PolicyHandle::new(engine(false));
    for bad in [
        "javascript:alert(1)",
        "//evil.example/x",
        "https://login.example.com/#x",
        "login",
        "ftp://x/",
    ] {
        assert!(
            AuthorizeLayer::new(h.clone()).with_login_url(bad).is_err(),
            "{bad}"
        );
    }
    for good in [
        "https://login.example.com/",
        "http://localhost:8080/login?x=1",
        "/login",
    ] {
        assert!(
            AuthorizeLayer::new(h.clone()).with_login_url(good).is_ok(),
            "{good}"
        );
    }
}
