//! The login host end to end: the gateway from `hexon.toml` with `[login]`,
//! a cookie-keeping HTTP client playing the browser, a real upstream that
//! shows what reached it. Single sign-on across hosts, one-time codes,
//! CSRF, fixation, throttling, TOTP (enrolment, replay, recovery codes),
//! step-up, password change and signing out everywhere.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::net::SocketAddr;

use common::*;
use hexon_proxy::body::full;
use http::{Request, StatusCode};
use serde_json::Value;

fn config(port: u16, upstream: SocketAddr, alice_hash: &str, login_host: &str) -> String {
    format!(
        r#"
[gateway]
data_dir = "${{DATA}}"
audit = "off"
connection_threads = 0
admin_bind = "127.0.0.1:0"

[state]
durable = "memory"

[[listener]]
bind = "127.0.0.1:{port}"

[login]
url = "http://{login_host}:{port}"
[login.password]
memory_kib = 64
iterations = 1
min_length = 12
[login.brand]
name = "Example Corp"

[[user]]
name = "alice"
email = "alice@example.com"
display_name = "Alice Example"
password_hash = "{alice_hash}"
[[user]]
name = "bob"
password_hash = "{alice_hash}"

[[group]]
name = "staff"
users = ["alice", "bob"]
[[group]]
name = "admins"
users = ["alice"]

[[route]]
name = "app"
host = "app.localhost"
upstream = ["http://{upstream}"]
[[route.allow]]
groups = ["staff"]

[[route]]
name = "app2"
host = "app2.localhost"
upstream = ["http://{upstream}"]
[[route.allow]]
groups = ["staff"]

[[route]]
name = "app3"
host = "app3.localhost"
upstream = ["http://{upstream}"]
[[route.allow]]
groups = ["staff"]

[[route]]
name = "keys"
host = "keys.localhost"
upstream = ["http://{upstream}"]
[[route.allow]]
groups = ["staff"]
auth_methods = ["webauthn"]

[[route]]
name = "admin"
host = "admin.localhost"
upstream = ["http://{upstream}"]
[[route.allow]]
groups = ["staff"]
auth_methods = ["totp"]
max_auth_age = "10m"

[[route]]
name = "recent"
host = "recent.localhost"
upstream = ["http://{upstream}"]
[[route.allow]]
groups = ["staff"]
auth_methods = ["password"]
max_auth_age = "2s"
"#
    )
}

const PASSWORD: &str = "correct horse battery";

struct Env {
    gw: Gw,
    port: u16,
    login: &'static str,
}

impl Env {
    async fn start() -> Env {
        Env::start_with_login_host("auth.localhost").await
    }

    async fn start_with_login_host(login: &'static str) -> Env {
        Env::start_with(login, "").await
    }

    /// With `extra` appended to the configuration.
    async fn start_with(login: &'static str, extra: &str) -> Env {
        let upstream = start_upstream(header_echo()).await;
        let port = free_port();
        let toml = format!(
            "{}\n{extra}",
            config(port, upstream, &cheap_hash(PASSWORD), login)
        );
        let gw = Gw::start(&toml).await;
        Env { gw, port, login }
    }
    fn url(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}{path}", self.port)
    }
    fn browser(&self) -> Browser {
        Browser::new(self.gw.addr)
    }

    /// Sign in on the login page `page` (already fetched) as `user`.
    async fn sign_in(&self, b: &mut Browser, page: &Page, user: &str, password: &str) -> Page {
        b.post(
            &self.url(self.login, "/login"),
            &[
                ("csrf", &page.csrf()),
                ("username", user),
                ("password", password),
            ],
        )
        .await
    }
}

fn upstream_json(page: &Page) -> Value {
    serde_json::from_str(&page.body)
        .unwrap_or_else(|_| panic!("not the upstream: {} {}", page.status, page.body))
}

fn header(v: &Value, name: &str) -> Option<String> {
    v["headers"][name][0].as_str().map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_sign_on_across_hosts_with_host_scoped_sessions() {
    let env = Env::start().await;
    let mut b = env.browser();

    // A protected host sends the browser to the login host with its URL.
    // It starts the sign-in on its own host first: a state cookie marks
    // this browser, so only it can use the code that comes back.
    let first = b.get(&env.url("app.localhost", "/private?x=1")).await;
    assert_eq!(first.status, StatusCode::FOUND);
    let start = first.location.clone().unwrap();
    assert!(start.starts_with("/.hexon/login?rd="), "{start}");
    let started = b.get(&env.url("app.localhost", &start)).await;
    assert_eq!(started.status, StatusCode::SEE_OTHER);
    assert!(b.cookie("app.localhost", "__Host-hexon-state").is_some());
    let login = started.location.clone().unwrap();
    assert!(
        login.starts_with(&env.url("auth.localhost", "/login?rd=")) && login.contains("&state="),
        "{login}"
    );

    let page = b.get(&login).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("Example Corp") && page.body.contains("<label for=\"password\">"));
    let flow_cookie = b.cookie("auth.localhost", "__Host-hexon-login").unwrap();
    assert!(page.set_cookies[0].contains("HttpOnly") && page.set_cookies[0].contains("Secure"));

    let done = env.sign_in(&mut b, &page, "alice", PASSWORD).await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    let callback = done.location.clone().unwrap();
    assert!(
        callback.starts_with(&env.url("app.localhost", "/.hexon/callback?code=")),
        "{callback}"
    );
    let sso = b.cookie("auth.localhost", "__Host-hexon-sso").unwrap();
    assert_ne!(sso, flow_cookie, "the session id is new at login");
    assert!(
        b.cookie("auth.localhost", "__Host-hexon-login").is_none(),
        "flow cookie cleared"
    );

    // The code becomes a session on the app host, and the browser returns
    // to exactly where it was.
    let back = b.get(&callback).await;
    assert_eq!(back.status, StatusCode::SEE_OTHER);
    assert_eq!(
        back.location.as_deref(),
        Some(env.url("app.localhost", "/private?x=1").as_str())
    );
    let app_cookie = b.cookie("app.localhost", "__Host-hexon-session").unwrap();
    let shown = upstream_json(&b.get(&env.url("app.localhost", "/private?x=1")).await);
    assert_eq!(header(&shown, "hexon-user").as_deref(), Some("alice"));
    assert!(
        header(&shown, "hexon-auth")
            .unwrap()
            .starts_with("password=")
    );
    let cookies_seen = header(&shown, "cookie").unwrap_or_default();
    assert!(
        !cookies_seen.contains("hexon-session"),
        "the session cookie reached the upstream: {cookies_seen}"
    );

    // The code is single use.
    let again = b.get(&callback).await;
    assert_eq!(again.status, StatusCode::BAD_REQUEST);
    assert!(again.body.contains("expired"));

    // The app host's cookie is useless on another host.
    let mut thief = env.browser();
    thief.set("app2.localhost", "__Host-hexon-session", &app_cookie);
    let stolen = thief.get(&env.url("app2.localhost", "/")).await;
    // A browser is sent round again without the cookie (to the login page).
    assert_eq!(stolen.status, StatusCode::SEE_OTHER, "{}", stolen.body);
    assert_eq!(stolen.location.as_deref(), Some("/"));
    assert!(
        thief
            .cookie("app2.localhost", "__Host-hexon-session")
            .is_none()
    );
    let api = thief
        .request(
            "GET",
            &env.url("app2.localhost", "/"),
            None,
            &[
                ("cookie", &format!("__Host-hexon-session={app_cookie}")),
                ("accept", "application/json"),
            ],
        )
        .await;
    assert_eq!(api.status, StatusCode::UNAUTHORIZED, "{}", api.body);

    // A second host signs in without a form: the login host's session
    // answers at once.
    let second = b.visit(&env.url("app2.localhost", "/two")).await;
    let shown = upstream_json(&second);
    assert_eq!(header(&shown, "hexon-user").as_deref(), Some("alice"));
    assert_eq!(shown["uri"], "/two");

    // A code made for app2 is refused at app (and is spent by trying).
    // (Asked for on the login host, the browser is first sent to start on
    // app2, which marks it, then straight back for the code.)
    let to_app2 = b
        .get(&format!(
            "{}?rd={}",
            env.url("auth.localhost", "/login"),
            enc(&env.url("app2.localhost", "/x"))
        ))
        .await;
    let start = to_app2.location.unwrap();
    assert!(
        start.starts_with(&env.url("app2.localhost", "/.hexon/login?rd=")),
        "{start}"
    );
    let login = b.get(&start).await.location.unwrap();
    let code_url = b.get(&login).await.location.unwrap();
    assert!(code_url.contains("/.hexon/callback?code="), "{code_url}");
    let code = code_url.split("code=").nth(1).unwrap();
    let mut other = env.browser();
    let wrong_host = other
        .get(&env.url("app.localhost", &format!("/.hexon/callback?code={code}")))
        .await;
    assert_eq!(wrong_host.status, StatusCode::BAD_REQUEST);
    assert_eq!(b.get(&code_url).await.status, StatusCode::BAD_REQUEST);

    // A code made before "sign out everywhere" dies with the sessions.
    let start = format!(
        "/.hexon/login?rd={}",
        enc(&env.url("app2.localhost", "/late"))
    );
    let login = b
        .get(&env.url("app2.localhost", &start))
        .await
        .location
        .unwrap();
    let late_code = b.get(&login).await.location.unwrap();
    assert!(late_code.contains("/.hexon/callback?code="), "{late_code}");

    // Signing out everywhere ends the sessions on every host.
    let account = b.get(&env.url("auth.localhost", "/account")).await;
    assert_eq!(account.status, StatusCode::OK);
    assert!(account.body.contains("Alice Example"));
    let out = b
        .post(
            &env.url("auth.localhost", "/logout"),
            &[("csrf", &account.csrf()), ("everywhere", "1")],
        )
        .await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert!(b.cookie("auth.localhost", "__Host-hexon-sso").is_none());
    assert_eq!(b.get(&late_code).await.status, StatusCode::BAD_REQUEST);
    let mut old = env.browser();
    old.set("app.localhost", "__Host-hexon-session", &app_cookie);
    assert_eq!(
        old.get(&env.url("app.localhost", "/")).await.status,
        StatusCode::SEE_OTHER
    );
    assert!(
        old.visit(&env.url("app.localhost", "/"))
            .await
            .body
            .contains("Sign in")
    );
    old.set("auth.localhost", "__Host-hexon-sso", &sso);
    assert_eq!(
        old.get(&env.url("auth.localhost", "/account"))
            .await
            .location
            .as_deref(),
        Some("/login")
    );
    env.gw.stop().await;
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forms_refuse_csrf_fixation_and_open_redirects() {
    let env = Env::start().await;
    let mut b = env.browser();
    let page = b.get(&env.url("auth.localhost", "/login")).await;

    // No token, a wrong token, a token of another browser, another origin.
    for form in [
        vec![("username", "alice"), ("password", PASSWORD)],
        vec![("csrf", "x"), ("username", "alice"), ("password", PASSWORD)],
    ] {
        let r = b.post(&env.url("auth.localhost", "/login"), &form).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{form:?}");
    }
    let mut other = env.browser();
    let their_page = other.get(&env.url("auth.localhost", "/login")).await;
    let r = b
        .post(
            &env.url("auth.localhost", "/login"),
            &[
                ("csrf", &their_page.csrf()),
                ("username", "alice"),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let csrf = page.csrf();
    let form = [
        ("csrf", csrf.as_str()),
        ("username", "alice"),
        ("password", PASSWORD),
    ];
    for headers in [
        vec![("origin", "http://evil.localhost:1")],
        vec![("sec-fetch-site", "cross-site")],
        vec![("sec-fetch-site", "same-site")],
    ] {
        let r = b
            .request(
                "POST",
                &env.url("auth.localhost", "/login"),
                Some(&form),
                &headers,
            )
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{headers:?}");
    }

    // Fixation: a session id planted before login is never the one after.
    b.set("auth.localhost", "__Host-hexon-sso", "planted-by-attacker");
    let done = b
        .request(
            "POST",
            &env.url("auth.localhost", "/login"),
            Some(&form),
            &[("origin", &env.url("auth.localhost", ""))],
        )
        .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    let sso = b.cookie("auth.localhost", "__Host-hexon-sso").unwrap();
    assert_ne!(sso, "planted-by-attacker");
    let mut attacker = env.browser();
    attacker.set("auth.localhost", "__Host-hexon-sso", "planted-by-attacker");
    assert_eq!(
        attacker
            .get(&env.url("auth.localhost", "/account"))
            .await
            .location
            .as_deref(),
        Some("/login")
    );
    // The form is spent.
    let replay = b.post(&env.url("auth.localhost", "/login"), &form).await;
    assert_ne!(replay.status, StatusCode::SEE_OTHER);

    // Login CSRF: a code someone got for their own sign-in does not work
    // in another browser (it holds no matching state on the app host).
    let mut attacker = password_session(&env).await;
    let start = format!("/.hexon/login?rd={}", enc(&env.url("app.localhost", "/")));
    let login = attacker
        .get(&env.url("app.localhost", &start))
        .await
        .location
        .unwrap();
    let code_url = attacker.get(&login).await.location.unwrap();
    assert!(code_url.contains("/.hexon/callback?code="), "{code_url}");
    let mut victim = env.browser();
    let forced = victim.get(&code_url).await;
    assert_eq!(forced.status, StatusCode::BAD_REQUEST);
    assert!(
        victim
            .cookie("app.localhost", "__Host-hexon-session")
            .is_none()
    );

    // Return URLs only to configured hosts, on this scheme and port.
    let p = env.port;
    for rd in [
        "http://evil.localhost/".to_owned(),
        format!("http://evil.localhost:{p}/"),
        format!("//evil.localhost:{p}/"),
        format!("http://app.localhost:{p}@evil.localhost:{p}/"),
        format!("http://app.localhost:{p}\\@evil.localhost/"),
        format!("http://app.localhost:{p}//evil.localhost/"),
        format!("http://app.localhost:{p}/%2F%2Fevil.localhost"),
        format!("http://app.localhost:{p}/a/../../evil"),
        format!("http://app.localhost:{p}/%2e%2e/evil"),
        format!("https://app.localhost:{p}/"),
        format!("http://app.localhost:{}/", p.wrapping_add(1)),
        "javascript:alert(1)".to_owned(),
    ] {
        for encoded in [enc(&rd), enc(&enc(&rd))] {
            let r = b
                .get(&format!(
                    "{}?rd={encoded}",
                    env.url("auth.localhost", "/login")
                ))
                .await;
            assert!(
                r.status == StatusCode::BAD_REQUEST || r.location.is_none(),
                "{rd:?} → {} {:?}",
                r.status,
                r.location
            );
            if let Some(l) = &r.location {
                panic!("{rd:?} redirected to {l}");
            }
        }
    }
    env.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_look_alike_and_are_throttled() {
    let env = Env::start().await;
    let mut b = env.browser();
    let mut bodies = Vec::new();
    for (user, password) in [
        ("alice", "wrong password"),
        ("nobody", "wrong password"),
        ("ALICE", PASSWORD),
    ] {
        let page = b.get(&env.url("auth.localhost", "/login")).await;
        let r = env.sign_in(&mut b, &page, user, password).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{user}");
        assert!(r.body.contains("Wrong username or password."));
        bodies.push(r.body.replace(user, "USER"));
    }
    // Apart from the echoed name and the CSRF token, the pages are equal.
    let strip = |s: &str| {
        let page = Page {
            status: StatusCode::OK,
            location: None,
            set_cookies: vec![],
            body: s.to_owned(),
        };
        s.replace(&page.csrf(), "TOKEN")
    };
    assert_eq!(strip(&bodies[0]), strip(&bodies[1]));

    // alice has failed once, from this address three times; one more
    // failure starts the delays, and then even the right password waits.
    let page = b.get(&env.url("auth.localhost", "/login")).await;
    let r = env.sign_in(&mut b, &page, "alice", "wrong again").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let page = b.get(&env.url("auth.localhost", "/login")).await;
    let r = env.sign_in(&mut b, &page, "alice", PASSWORD).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    assert!(r.body.contains("Too many attempts. Wait"));

    // Failures are in the audit log with their reason.
    let events = env
        .gw
        .gateway
        .state()
        .durable
        .audit_after(0, 100)
        .await
        .unwrap();
    let reasons: Vec<String> = events
        .iter()
        .filter(|e| e.event.kind == "login.failure")
        .map(|e| e.event.detail["reason"].as_str().unwrap_or("").to_owned())
        .collect();
    assert!(
        reasons.contains(&"wrong_password".to_owned()),
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&"unknown_or_disabled_user".to_owned()),
        "{reasons:?}"
    );
    assert!(events.iter().any(|e| e.event.kind == "login.throttled"));
    env.gw.stop().await;
}

fn code_now(secret_b32: &str, offset_steps: i64) -> String {
    let secret = data_encoding::BASE32_NOPAD
        .decode(secret_b32.as_bytes())
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let step = hexon_idp::totp::step_of(now)
        .checked_add_signed(offset_steps)
        .unwrap();
    format!("{:06}", hexon_idp::totp::code_at(&secret, step))
}

/// Sign in with the password only, on a fresh browser; the `__Host-hexon-sso` page.
async fn password_session(env: &Env) -> Browser {
    let mut b = env.browser();
    let page = b.get(&env.url(env.login, "/login")).await;
    let r = env.sign_in(&mut b, &page, "alice", PASSWORD).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn totp_enrolment_login_replay_recovery_and_step_up() {
    let env = Env::start().await;
    let mut b = password_session(&env).await;

    // A route that wants TOTP: password alone is not enough (the app
    // session is made, then the route asks for a step-up), and the
    // account has no TOTP yet.
    let refused = b.visit(&env.url("admin.localhost", "/ops")).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
    assert!(refused.body.contains("not set up"));

    // Enrol: the page shows the key (and its QR code); a wrong code is
    // refused; the right one turns TOTP on and shows recovery codes once.
    let enrol = b.get(&env.url("auth.localhost", "/account/totp")).await;
    assert!(enrol.body.contains("<svg"));
    let at = enrol.body.find("<code id=\"secret\">").unwrap() + 18;
    let secret = enrol.body[at..at + enrol.body[at..].find('<').unwrap()].to_owned();
    let wrong = b
        .post(
            &env.url("auth.localhost", "/account/totp"),
            &[("csrf", &enrol.csrf()), ("code", "000000")],
        )
        .await;
    assert_eq!(wrong.status, StatusCode::BAD_REQUEST);
    let sso_before = b.cookie("auth.localhost", "__Host-hexon-sso").unwrap();
    let on = b
        .post(
            &env.url("auth.localhost", "/account/totp"),
            // (The previous step's code: this step's and the next are left
            // for the step-up and the next sign-in.)
            &[("csrf", &enrol.csrf()), ("code", &code_now(&secret, -1))],
        )
        .await;
    assert_eq!(on.status, StatusCode::OK, "{}", on.body);
    assert_ne!(
        b.cookie("auth.localhost", "__Host-hexon-sso").unwrap(),
        sso_before,
        "session rotated at privilege change"
    );
    let list = &on.body[on.body.find("id=\"recovery-codes\">").unwrap()..];
    let recovery: Vec<String> = list
        .split("<li>")
        .skip(1)
        .map(|s| s[..s.find('<').unwrap()].to_owned())
        .collect();
    assert_eq!(recovery.len(), 10);

    // Setting TOTP up is not signing in with it: the route still asks for
    // a TOTP step-up, then returns to the page.
    let stepped = b.visit(&env.url("admin.localhost", "/ops")).await;
    assert_eq!(stepped.status, StatusCode::OK);
    assert!(
        stepped.body.contains("Two-step verification"),
        "{}",
        stepped.body
    );
    let ok = b
        .post(
            &env.url("auth.localhost", "/login/totp"),
            &[("csrf", &stepped.csrf()), ("code", &code_now(&secret, 0))],
        )
        .await;
    assert_eq!(ok.status, StatusCode::SEE_OTHER, "{}", ok.body);
    let ops = b.visit(ok.location.as_deref().unwrap()).await;
    assert_eq!(upstream_json(&ops)["uri"], "/ops");
    // With TOTP on, enrolling again is refused (turning it off asks for a code).
    let again = b.get(&env.url("auth.localhost", "/account/totp")).await;
    assert!(again.body.contains("already on"), "{}", again.body);

    // A new browser: password, then TOTP (the next step's code: the
    // enrolment spent this step's).
    let mut c = env.browser();
    let page = c.get(&env.url("auth.localhost", "/login")).await;
    let second = env.sign_in(&mut c, &page, "alice", PASSWORD).await;
    assert_eq!(second.status, StatusCode::OK);
    assert!(second.body.contains("Two-step verification"));
    let next = code_now(&secret, 1);
    let ok = c
        .post(
            &env.url("auth.localhost", "/login/totp"),
            &[("csrf", &second.csrf()), ("code", &next)],
        )
        .await;
    assert_eq!(ok.status, StatusCode::SEE_OTHER, "{}", ok.body);

    // Replaying that code in a third browser is refused.
    let mut d = env.browser();
    let page = d.get(&env.url("auth.localhost", "/login")).await;
    let second = env.sign_in(&mut d, &page, "alice", PASSWORD).await;
    let replay = d
        .post(
            &env.url("auth.localhost", "/login/totp"),
            &[("csrf", &second.csrf()), ("code", &next)],
        )
        .await;
    assert_eq!(replay.status, StatusCode::UNAUTHORIZED);
    assert!(replay.body.contains("already used"));

    // A recovery code works once.
    let rc = d
        .post(
            &env.url("auth.localhost", "/login/totp"),
            &[("csrf", &second.csrf()), ("code", &recovery[0])],
        )
        .await;
    assert_eq!(rc.status, StatusCode::SEE_OTHER, "{}", rc.body);
    let mut e = env.browser();
    let page = e.get(&env.url("auth.localhost", "/login")).await;
    let second = env.sign_in(&mut e, &page, "alice", PASSWORD).await;
    let again = e
        .post(
            &env.url("auth.localhost", "/login/totp"),
            &[("csrf", &second.csrf()), ("code", &recovery[0])],
        )
        .await;
    assert_eq!(again.status, StatusCode::UNAUTHORIZED);
    env.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_the_password_ends_other_sessions() {
    let env = Env::start().await;
    let mut b = password_session(&env).await;
    let mut other = password_session(&env).await;
    let account = b.get(&env.url("auth.localhost", "/account")).await;
    let short = b
        .post(
            &env.url("auth.localhost", "/account/password"),
            &[
                ("csrf", &account.csrf()),
                ("current", PASSWORD),
                ("new", "short"),
                ("confirm", "short"),
            ],
        )
        .await;
    assert!(short.body.contains("at least 12 characters"));
    let wrong = b
        .post(
            &env.url("auth.localhost", "/account/password"),
            &[
                ("csrf", &account.csrf()),
                ("current", "nope"),
                ("new", "a much better passphrase"),
                ("confirm", "a much better passphrase"),
            ],
        )
        .await;
    assert!(wrong.body.contains("current password is not right"));
    let changed = b
        .post(
            &env.url("auth.localhost", "/account/password"),
            &[
                ("csrf", &account.csrf()),
                ("current", PASSWORD),
                ("new", "a much better passphrase"),
                ("confirm", "a much better passphrase"),
            ],
        )
        .await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.body);
    assert!(changed.body.contains("Password changed"));
    // This browser stays signed in; the other one is out.
    assert_eq!(
        b.get(&env.url("auth.localhost", "/account")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        other
            .get(&env.url("auth.localhost", "/account"))
            .await
            .location
            .as_deref(),
        Some("/login")
    );
    // The old password no longer works; the new one does (bob's, set in
    // the config with the same hash, is untouched).
    let mut c = env.browser();
    let page = c.get(&env.url("auth.localhost", "/login")).await;
    assert_eq!(
        env.sign_in(&mut c, &page, "alice", PASSWORD).await.status,
        StatusCode::UNAUTHORIZED
    );
    let page = c.get(&env.url("auth.localhost", "/login")).await;
    assert_eq!(
        env.sign_in(&mut c, &page, "alice", "a much better passphrase")
            .await
            .status,
        StatusCode::SEE_OTHER
    );
    // (Signed in, the login page goes straight to the account page.)
    assert_eq!(
        c.get(&env.url("auth.localhost", "/login"))
            .await
            .location
            .as_deref(),
        Some("/account")
    );
    let mut d = env.browser();
    let page = d.get(&env.url("auth.localhost", "/login")).await;
    assert_eq!(
        env.sign_in(&mut d, &page, "bob", PASSWORD).await.status,
        StatusCode::SEE_OTHER
    );
    env.gw.stop().await;
}

/// The pages in a real browser: headless Chromium driven by playwright-core
/// (tests/browser/login.mjs), keyboard and labels as a user would use them.
/// `HEXON_SCREENSHOTS=dir` keeps screenshots (docs/screenshots/ came from it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_login_pages_in_headless_chromium() {
    let env = Env::start().await;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let browser_dir = root.join("tests/browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").exists(),
        "playwright-core is not installed in tests/browser: run scripts/install-test-deps"
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "no Chromium at {chromium}: run scripts/install-test-deps (Debian package chromium) or set CHROMIUM"
    );
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(browser_dir.join("login.mjs"))
        .current_dir(&browser_dir)
        .env("HEXON_PORT", env.port.to_string())
        .env("HEXON_PASSWORD", PASSWORD)
        .env("CHROMIUM", &chromium)
        .kill_on_drop(true);
    let out = tokio::time::timeout(std::time::Duration::from_secs(180), cmd.output())
        .await
        .expect("the browser test took over 3 minutes")
        .expect("node runs (install Node.js)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "browser test failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("browser login flow: ok"), "{stdout}");
    env.gw.stop().await;
}

/// Passkeys with a software authenticator: registration, step-up to a route
/// that wants WebAuthn, a replayed assertion, a sign count that goes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passkeys_register_step_up_and_refuse_replay_and_rollback() {
    use webauthn_authenticator_rs::WebauthnAuthenticator;
    use webauthn_authenticator_rs::prelude::{
        CreationChallengeResponse, RequestChallengeResponse, Url,
    };
    use webauthn_authenticator_rs::softpasskey::SoftPasskey;

    let env = Env::start_with_login_host("localhost").await;
    let origin = Url::parse(&env.url("localhost", "")).unwrap();
    let mut authenticator = WebauthnAuthenticator::new(SoftPasskey::new(true));
    let mut b = password_session(&env).await;

    // Register from the account page.
    let account = b.get(&env.url("localhost", "/account")).await;
    let csrf = account.data_csrf();
    let (status, ccr, _) = b
        .json(
            &env.url("localhost", "/webauthn/register/begin"),
            &csrf,
            r#"{"label":"soft key"}"#,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{ccr}");
    let ccr: CreationChallengeResponse = serde_json::from_value(ccr).unwrap();
    let reg = authenticator.do_registration(origin.clone(), ccr).unwrap();
    let reg = serde_json::to_string(&reg).unwrap();
    // A wrong CSRF token is refused before anything is read.
    let (status, _, _) = b
        .json(
            &env.url("localhost", "/webauthn/register/finish"),
            "wrong",
            &reg,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, done, _) = b
        .json(
            &env.url("localhost", "/webauthn/register/finish"),
            &csrf,
            &reg,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["redirect"], "/account");
    // The ceremony is spent: the same answer again is refused.
    let account = b.get(&env.url("localhost", "/account")).await;
    assert!(account.body.contains("soft key"));
    let (status, _, _) = b
        .json(
            &env.url("localhost", "/webauthn/register/finish"),
            &account.data_csrf(),
            &reg,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // A route that wants WebAuthn: step-up offers the passkey.
    let step_up = b.visit(&env.url("keys.localhost", "/k")).await;
    assert_eq!(step_up.status, StatusCode::OK, "{}", step_up.body);
    assert!(step_up.body.contains("Use a passkey"));
    let csrf = step_up.data_csrf();
    let (status, rcr, _) = b
        .json(&env.url("localhost", "/webauthn/login/begin"), &csrf, "{}")
        .await;
    assert_eq!(status, StatusCode::OK, "{rcr}");
    let rcr: RequestChallengeResponse = serde_json::from_value(rcr).unwrap();
    let first = serde_json::to_string(
        &authenticator
            .do_authentication(origin.clone(), rcr)
            .unwrap(),
    )
    .unwrap();
    let (status, done, _) = b
        .json(
            &env.url("localhost", "/webauthn/login/finish"),
            &csrf,
            &first,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{done}");
    let there = b.visit(done["redirect"].as_str().unwrap()).await;
    let seen = upstream_json(&there);
    assert_eq!(seen["uri"], "/k");
    let auth = header(&seen, "hexon-auth").unwrap();
    assert!(
        auth.contains("password=") && auth.contains("webauthn="),
        "{auth}"
    );

    // Another browser: password, then the passkey as second step. The
    // first assertion replayed against a new challenge is refused.
    let mut c = env.browser();
    let page = c.get(&env.url("localhost", "/login")).await;
    let second = env.sign_in(&mut c, &page, "alice", PASSWORD).await;
    assert_eq!(second.status, StatusCode::OK);
    assert!(second.body.contains("Use a passkey"));
    let csrf = second.data_csrf();
    let (status, _, _) = c
        .json(&env.url("localhost", "/webauthn/login/begin"), &csrf, "{}")
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, v, _) = c
        .json(
            &env.url("localhost", "/webauthn/login/finish"),
            &csrf,
            &first,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{v}");
    // Without a ceremony at all (it was spent by the refusal): refused too.
    let (status, _, _) = c
        .json(
            &env.url("localhost", "/webauthn/login/finish"),
            &csrf,
            &first,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // The authenticator's count goes back (as a clone's would): refused.
    let durable = env.gw.gateway.state().durable.clone();
    let cred = durable
        .credentials_of("alice")
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.kind == hexon_core::store::CredentialKind::WebAuthn)
        .unwrap();
    assert!(
        cred.counter >= 1,
        "the sign count was recorded: {}",
        cred.counter
    );
    assert!(
        durable
            .advance_counter(&cred.id, cred.counter, 1000, hexon_core::UnixTime::now())
            .await
            .unwrap()
    );
    let (status, rcr, _) = c
        .json(&env.url("localhost", "/webauthn/login/begin"), &csrf, "{}")
        .await;
    assert_eq!(status, StatusCode::OK);
    let rcr: RequestChallengeResponse = serde_json::from_value(rcr).unwrap();
    let low = serde_json::to_string(
        &authenticator
            .do_authentication(origin.clone(), rcr)
            .unwrap(),
    )
    .unwrap();
    let (status, v, _) = c
        .json(&env.url("localhost", "/webauthn/login/finish"), &csrf, &low)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{v}");
    let events = durable.audit_after(0, 200).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.event.kind == "webauthn.counter_refused")
    );
    assert!(events.iter().any(|e| e.event.kind == "webauthn.registered"));
    env.gw.stop().await;
}

/// The messages in a maildir, oldest first, bodies decoded enough to read
/// a code and a link (quoted-printable soft breaks joined).
fn mails(dir: &std::path::Path) -> Vec<String> {
    let mut files: Vec<_> = std::fs::read_dir(dir.join("new"))
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    files
        .iter()
        .map(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .replace("=\r\n", "")
                .replace("=\n", "")
                .replace("=3D", "=")
        })
        .collect()
}

async fn wait_for_mails(dir: &std::path::Path, n: usize) -> Vec<String> {
    for _ in 0..200 {
        let m = mails(dir);
        if m.len() >= n {
            return m;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!(
        "expected {n} mails in {}, found {}",
        dir.display(),
        mails(dir).len()
    );
}

fn after<'a>(text: &'a str, prefix: &str, len: usize) -> &'a str {
    let at = text
        .find(prefix)
        .unwrap_or_else(|| panic!("{prefix:?} not in {text}"))
        + prefix.len();
    &text[at..at + len]
}

/// Email codes and magic links through a real SMTP server (aiosmtpd).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_codes_and_links_through_a_real_smtp_server() {
    let smtp_port = free_port();
    let maildir =
        std::env::temp_dir().join(format!("hexon-mail-{}-{smtp_port}", std::process::id()));
    let _sink = tokio::process::Command::new("python3")
        .args([
            "-m",
            "aiosmtpd",
            "-n",
            "-l",
            &format!("127.0.0.1:{smtp_port}"),
            "-c",
            "aiosmtpd.handlers.Mailbox",
        ])
        .arg(&maildir)
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs");
    let mut up = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", smtp_port))
            .await
            .is_ok()
        {
            up = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        up,
        "the SMTP sink did not start: install aiosmtpd (scripts/install-test-deps)"
    );
    let env = Env::start_with(
        "auth.localhost",
        &format!("[login.email]\nsmtp_url = \"smtp://127.0.0.1:{smtp_port}\"\nfrom = \"Example Corp <login@example.com>\"\n"),
    )
    .await;

    // By email address, from a protected page: the code signs in and
    // returns to the page.
    let mut b = env.browser();
    let page = b.visit(&env.url("app.localhost", "/mail?x=1")).await;
    assert!(page.body.contains("Email me a code"));
    let sent = b
        .post(
            &env.url("auth.localhost", "/login/email"),
            &[("csrf", &page.csrf()), ("who", "Alice@Example.com")],
        )
        .await;
    assert_eq!(sent.status, StatusCode::OK);
    assert!(sent.body.contains("Check your email"));
    let mail = wait_for_mails(&maildir, 1).await.remove(0);
    assert!(mail.contains("To: alice@example.com"), "{mail}");
    assert!(mail.contains("Subject: Your Example Corp sign-in code"));
    let code = after(&mail, "sign-in code for Example Corp: ", 6).to_owned();
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let r = b
        .post(
            &env.url("auth.localhost", "/login/email/code"),
            &[("csrf", &sent.csrf()), ("code", wrong)],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.body.contains("That code is not right."));
    let r = b
        .post(
            &env.url("auth.localhost", "/login/email/code"),
            &[("csrf", &sent.csrf()), ("code", &code)],
        )
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let seen = upstream_json(&b.visit(r.location.as_deref().unwrap()).await);
    assert_eq!(seen["uri"], "/mail?x=1");
    assert!(header(&seen, "hexon-auth").unwrap().starts_with("email="));

    // An unknown name: the same page, and no mail.
    let mut c = env.browser();
    let page = c.get(&env.url("auth.localhost", "/login")).await;
    let sent = c
        .post(
            &env.url("auth.localhost", "/login/email"),
            &[("csrf", &page.csrf()), ("who", "nobody")],
        )
        .await;
    assert_eq!(sent.status, StatusCode::OK);
    assert!(sent.body.contains("Check your email"));

    // By username; the link works only in the browser that asked, once.
    let mut d = env.browser();
    let page = d.get(&env.url("auth.localhost", "/login")).await;
    let sent = d
        .post(
            &env.url("auth.localhost", "/login/email"),
            &[("csrf", &page.csrf()), ("who", "alice")],
        )
        .await;
    assert_eq!(sent.status, StatusCode::OK);
    let all = wait_for_mails(&maildir, 2).await;
    assert_eq!(all.len(), 2, "a mail went to an unknown name");
    let prefix = env.url("auth.localhost", "/login/email/link?t=");
    let link = format!("{prefix}{}", after(&all[1], &prefix, 43));
    let mut stranger = env.browser();
    let r = stranger.get(&link).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body.contains("only in the browser where you asked"));
    let r = d.get(&link).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(r.location.as_deref(), Some("/account"));
    // Signed in by email, a user who forgot the password sets a new one
    // without it (a reset); a password session could not.
    let account = d.get(&env.url("auth.localhost", "/account")).await;
    let reset = d
        .post(
            &env.url("auth.localhost", "/account/password"),
            &[
                ("csrf", &account.csrf()),
                ("current", ""),
                ("new", "a brand new passphrase"),
                ("confirm", "a brand new passphrase"),
            ],
        )
        .await;
    assert_eq!(reset.status, StatusCode::OK, "{}", reset.body);
    assert!(reset.body.contains("Password changed"));
    let mut e = env.browser();
    let page = e.get(&env.url("auth.localhost", "/login")).await;
    assert_eq!(
        env.sign_in(&mut e, &page, "alice", "a brand new passphrase")
            .await
            .status,
        StatusCode::SEE_OTHER
    );
    let account = e.get(&env.url("auth.localhost", "/account")).await;
    let no_reset = e
        .post(
            &env.url("auth.localhost", "/account/password"),
            &[
                ("csrf", &account.csrf()),
                ("current", ""),
                ("new", "yet another passphrase"),
                ("confirm", "yet another passphrase"),
            ],
        )
        .await;
    assert!(
        no_reset.body.contains("current password is not right"),
        "{}",
        no_reset.body
    );
    let mut again = env.browser();
    again.cookies = d.cookies.clone();
    again
        .cookies
        .get_mut("auth.localhost")
        .unwrap()
        .retain(|(n, _)| n != "__Host-hexon-sso");
    assert_eq!(again.get(&link).await.status, StatusCode::BAD_REQUEST);
    // Sending is audited once the server has taken the message.
    let mut events = Vec::new();
    for _ in 0..100 {
        events = env
            .gw
            .gateway
            .state()
            .durable
            .audit_after(0, 200)
            .await
            .unwrap();
        if events
            .iter()
            .filter(|e| e.event.kind == "login.email_sent")
            .count()
            == 2
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        events
            .iter()
            .filter(|e| e.event.kind == "login.email_sent" && e.event.outcome == "success")
            .count(),
        2
    );
    assert!(
        events
            .iter()
            .any(|e| e.event.kind == "login.email_requested" && e.event.outcome == "ignored")
    );
    env.gw.stop().await;
    std::fs::remove_dir_all(&maildir).ok();
}

/// The account page lists where the user is signed in; ending another
/// browser's sign-in ends its sessions on every host; signing out ends
/// this browser's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_see_and_end_their_sessions() {
    let env = Env::start().await;
    let mut one = env.browser();
    let mut two = env.browser();
    for (b, agent) in [(&mut one, "Browser One"), (&mut two, "Browser Two")] {
        let first = b
            .request(
                "GET",
                &env.url("app.localhost", "/"),
                None,
                &[("user-agent", agent)],
            )
            .await;
        let started = b
            .request(
                "GET",
                &env.url("app.localhost", first.location.as_deref().unwrap()),
                None,
                &[("user-agent", agent)],
            )
            .await;
        let login = b
            .request(
                "GET",
                started.location.as_deref().unwrap(),
                None,
                &[("user-agent", agent)],
            )
            .await;
        let done = b
            .request(
                "POST",
                &env.url("auth.localhost", "/login"),
                Some(&[
                    ("csrf", &login.csrf()),
                    ("username", "alice"),
                    ("password", PASSWORD),
                ]),
                &[("user-agent", agent)],
            )
            .await;
        assert_eq!(done.status, StatusCode::SEE_OTHER);
        let back = b.visit(done.location.as_deref().unwrap()).await;
        assert_eq!(upstream_json(&back)["headers"]["hexon-user"][0], "alice");
    }
    let _ = one.visit(&env.url("app2.localhost", "/")).await;

    let account = one.get(&env.url("auth.localhost", "/account")).await;
    let body = &account.body;
    assert!(body.contains("Where you are signed in"));
    assert!(
        body.contains("Browser One") && body.contains("Browser Two"),
        "{body}"
    );
    assert!(
        body.contains("app.localhost, app2.localhost, auth.localhost"),
        "{body}"
    );
    assert!(body.contains("this browser"));
    // End browser two's sign-in from browser one.
    let at = body.find("name=\"family\" value=\"").unwrap() + 21;
    let family = &body[at..at + body[at..].find('"').unwrap()];
    let ended = one
        .post(
            &env.url("auth.localhost", "/account/sessions/end"),
            &[("csrf", &account.csrf()), ("family", family)],
        )
        .await;
    assert_eq!(ended.status, StatusCode::OK, "{}", ended.body);
    assert!(ended.body.contains("Session ended."));
    assert!(!ended.body.contains("Browser Two"));
    let gone = two.get(&env.url("app.localhost", "/")).await;
    assert_eq!(
        gone.status,
        StatusCode::SEE_OTHER,
        "browser two's app session ended"
    );
    assert_eq!(
        two.get(&env.url("auth.localhost", "/account"))
            .await
            .location
            .as_deref(),
        Some("/login")
    );
    assert_eq!(
        one.get(&env.url("app.localhost", "/")).await.status,
        StatusCode::OK
    );

    // Signing out (this browser) ends its sessions on the other hosts too.
    let account = one.get(&env.url("auth.localhost", "/account")).await;
    let out = one
        .post(
            &env.url("auth.localhost", "/logout"),
            &[("csrf", &account.csrf())],
        )
        .await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert_eq!(
        one.get(&env.url("app2.localhost", "/")).await.status,
        StatusCode::SEE_OTHER
    );
    env.gw.stop().await;
}

/// An administrator ends a user's sessions through the admin API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_end_a_users_sessions() {
    let env = Env::start().await;
    let mut alice = password_session(&env).await;
    let mut bob = env.browser();
    let page = bob.get(&env.url("auth.localhost", "/login")).await;
    assert_eq!(
        env.sign_in(&mut bob, &page, "bob", PASSWORD).await.status,
        StatusCode::SEE_OTHER
    );
    let admin = env.gw.running.as_ref().unwrap().admin.unwrap();
    let token = env.gw.token("alice").await;
    let call = |who: &str, auth: Option<&str>| {
        let mut r =
            Request::delete(format!("/api/v1/users/{who}/sessions")).header("host", "admin");
        if let Some(t) = auth {
            r = r.header("authorization", format!("Bearer {t}"));
        }
        r.body(full("")).unwrap()
    };
    assert_eq!(
        send(admin, call("bob", None)).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let res = send(admin, call("bob", Some(&token))).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(json_body(res).await["ended"], "bob");
    assert_eq!(
        bob.get(&env.url("auth.localhost", "/account"))
            .await
            .location
            .as_deref(),
        Some("/login")
    );
    assert_eq!(
        alice
            .get(&env.url("auth.localhost", "/account"))
            .await
            .status,
        StatusCode::OK
    );
    let events = env
        .gw
        .gateway
        .state()
        .durable
        .audit_after(0, 100)
        .await
        .unwrap();
    assert!(events.iter().any(|e| e.event.kind == "sessions.ended"
        && e.event.subject.as_deref() == Some("bob")
        && e.event.actor.as_deref() == Some("alice")));
    env.gw.stop().await;
}
