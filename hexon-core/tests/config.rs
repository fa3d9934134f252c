//! `hexon.toml`: parsing, `${VAR}` substitution, validation messages, dump.
#![cfg(feature = "config")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use hexon_core::config::{Config, IdentityMode, substitute};
use hexon_core::httpsig::Binding;
use hexon_core::signer::Algorithm;

fn env(name: &str) -> Option<String> {
    match name {
        "PORT" => Some("8443".into()),
        "EMPTY" => Some(String::new()),
        "TRICKY" => Some("\"]\n[gateway]\ndev = true #".into()),
        _ => None,
    }
}

fn errors(text: &str) -> Vec<String> {
    Config::parse(text, &env)
        .unwrap_err()
        .0
        .iter()
        .map(ToString::to_string)
        .collect()
}

const FULL: &str = r#"
[gateway]
dev = true

[signing]
key_file = "/etc/hexon/signing.pem"
key_id = "gw-2026"
algorithm = "ecdsa-p256-sha256"
lifetime = "5m"

[[listener]]
name = "public"
bind = "0.0.0.0:${PORT}"
proxy_protocol = true
[listener.tls]
cert = "/etc/hexon/tls.crt"
key = "/etc/hexon/tls.key"

[[group]]
name = "platform"
users = ["bob"]

[[group]]
name = "eng"
users = ["alice"]
groups = ["platform"]

[[route]]
name = "grafana"
host = "grafana.example.com"
path = "/*"
upstream = ["http://127.0.0.1:3000", "https://grafana-2.internal:3443"]
bind_request = true
[[route.allow]]
groups = ["eng"]
auth_methods = ["webauthn"]
max_auth_age = "12h"
[[route.deny]]
source_ips = ["203.0.113.0/24"]

[[route]]
name = "api"
host = "*.example.com"
path = "/api/*"
identity = "jwt"
public_methods = ["OPTIONS"]
[[route.allow]]
authenticated = true
"#;

#[test]
fn full_example_parses_with_defaults_filled() {
    let c = Config::parse(FULL, &env).unwrap();
    assert!(c.gateway.dev);
    assert_eq!(c.gateway.data_dir, "./hexon-data");
    assert_eq!(c.signing.algorithm, Algorithm::EcdsaP256Sha256);
    assert_eq!(c.signing.lifetime.get().as_secs(), 300);
    assert_eq!(c.listeners[0].bind, "0.0.0.0:8443");
    assert!(c.listeners[0].proxy_protocol);
    assert_eq!(c.routes.len(), 2);
    assert_eq!(c.routes[0].upstream.len(), 2);
    assert_eq!(c.routes[0].binding.to_binding(), Binding::REQUEST);
    assert_eq!(c.routes[1].identity, IdentityMode::Jwt);
    assert_eq!(c.groups[1].groups, ["platform"]);
    let engine = c.policy().unwrap();
    assert_eq!(engine.routes().len(), 2);
}

#[test]
fn an_empty_sql_or_ca_table_survives_the_dump() {
    // Found by the `config` fuzz target: `[ca]` alone turns the CA on.
    for text in ["[ca]", "[sql]", "[sql]\n[ca]"] {
        let c = Config::parse(text, &env).unwrap();
        let again = Config::parse(&c.effective_toml(), &env).unwrap();
        assert_eq!(again, c, "{text}");
    }
}

#[test]
fn sql_and_ca_tables_survive_the_dump_and_are_shown_redacted() {
    // Found by the `config` fuzz target in CI (`sql.password_hash=2`): the
    // dump dropped a non-empty `[sql]`, so it said the bastion was off.
    let text = r#"
[sql.postgres]
listen = "127.0.0.1:6432"
[[sql.databases]]
name = "app"
upstream = "db.internal:5432"
[[sql.databases.roles]]
name = "analyst"
upstream_password = "hunter2"
[ca]
[ca.acme]
url = "https://ca.example.com/acme"
[[ca.acme.eab_keys]]
kid = "team-a"
hmac_key = "c2VjcmV0"
"#;
    let c = Config::parse(text, &env).unwrap();
    assert_eq!(Config::parse(&c.effective_toml(), &env).unwrap(), c);
    let shown = c.non_default_values();
    for line in [
        "sql.postgres.listen = \"127.0.0.1:6432\"",
        "sql.databases[0].name = \"app\"",
        "sql.databases[0].roles[0].upstream_password = \"[redacted]\"",
        "ca.acme.eab_keys[0].kid = \"team-a\"",
        "ca.acme.eab_keys[0].hmac_key = \"[redacted]\"",
    ] {
        assert!(shown.contains(&line.to_owned()), "{line} in {shown:#?}");
    }
    assert!(
        !format!("{shown:?}").contains("hunter") && !format!("{shown:?}").contains("c2VjcmV0"),
        "{shown:#?}"
    );
}

#[test]
fn effective_dump_and_non_defaults() {
    let c = Config::parse(FULL, &env).unwrap();
    let effective = c.effective_toml();
    assert!(
        effective.contains("data_dir = \"./hexon-data\""),
        "{effective}"
    );
    // The dump is itself a valid configuration that means the same.
    let again = Config::parse(&effective, &env).unwrap();
    assert_eq!(again, c);

    let nd = c.non_default_values();
    assert!(nd.contains(&"gateway.dev = true".to_owned()), "{nd:#?}");
    assert!(
        nd.contains(&"signing.key_id = \"gw-2026\"".to_owned()),
        "{nd:#?}"
    );
    assert!(
        nd.contains(&"route[1].identity = \"jwt\"".to_owned()),
        "{nd:#?}"
    );
    assert!(
        !nd.iter().any(|l| l.starts_with("gateway.data_dir")),
        "{nd:#?}"
    );
    // Array elements are compared with their own defaults.
    assert!(
        nd.contains(&"listener[0].name = \"public\"".to_owned()),
        "{nd:#?}"
    );
    assert!(
        !nd.iter().any(|l| l.starts_with("route[0].path")),
        "{nd:#?}"
    );
    assert!(
        !nd.iter().any(|l| l.starts_with("route[1].bind_request")),
        "{nd:#?}"
    );
    assert!(
        nd.contains(&"route[0].bind_request = true".to_owned()),
        "{nd:#?}"
    );

    assert!(
        Config::parse("", &env)
            .unwrap()
            .non_default_values()
            .is_empty()
    );
}

#[test]
fn substitution_rules() {
    assert_eq!(substitute("a${PORT}b", &env).unwrap(), "a8443b");
    assert_eq!(substitute("${NOPE:-x:y}", &env).unwrap(), "x:y");
    assert_eq!(substitute("${EMPTY:-d}", &env).unwrap(), "d");
    assert_eq!(substitute("${EMPTY}", &env).unwrap(), "");
    assert_eq!(substitute("$$ ${PORT} $ $1", &env).unwrap(), "$ 8443 $ $1");
    assert_eq!(
        substitute("127.0.0.1:$PORT", &env).unwrap_err(),
        "write ${PORT} for a variable (or $$ for a literal $)"
    );
    assert!(
        substitute("${A:-${PORT}}", &env)
            .unwrap_err()
            .contains("defaults do not nest")
    );
    assert_eq!(substitute("$${PORT}", &env).unwrap(), "${PORT}");
    assert!(
        substitute("${PORT", &env)
            .unwrap_err()
            .contains("unterminated")
    );
    assert!(
        substitute("${1X}", &env)
            .unwrap_err()
            .contains("invalid variable name")
    );
    assert!(substitute("${}", &env).is_err());
}

#[test]
fn unset_variable_is_named_with_its_location() {
    let errs = errors("[[listener]]\nbind = \"0.0.0.0:${HEXON_PORT}\"\n");
    assert_eq!(
        errs,
        [
            r#"listener[0].bind: environment variable "HEXON_PORT" is not set (set it, or write ${HEXON_PORT:-default})"#
        ]
    );
}

#[test]
fn variable_values_cannot_change_the_structure() {
    let c = Config::parse("[signing]\nkey_file = \"${TRICKY}\"\n", &env).unwrap();
    assert_eq!(
        c.signing.key_file.as_deref(),
        Some("\"]\n[gateway]\ndev = true #")
    );
    assert!(!c.gateway.dev);
}

#[test]
fn every_problem_is_reported_with_its_place() {
    let errs = errors(
        r#"
[gatewy]
dev = true

[signing]
key_id = "has space"
lifetime = "2h"

[[listener]]
bind = "localhost"
[[listener]]
bind = "127.0.0.1:80"

[[group]]
name = "eng"
groups = ["ghost"]

[[route]]
name = "a"
upstream = ["ftp://x", "http://"]
identity = "none"
bind_body = true
[[route.allow]]
groups = ["eng", "ops"]

[[route]]
name = "b"
alow = []
"#,
    );
    let expected = [
        "gatewy: unknown section; expected one of gateway, state, signing, jwt, trusted_issuer, listener, user, group, route",
        "route[1].alow: unknown field `alow`, expected one of `name`, `host`, `path`, `methods`, `public`, `public_methods`, `allow`, `deny`, `credentials`, upstream, identity, bind_request, bind_body",
        r#"signing.key_id: invalid key id "has space": use 1-64 of A-Z, a-z, 0-9, '.', '_', '-'"#,
        "signing.lifetime: must be between 1s and 1h",
        r#"listener[0].bind: "localhost" is not an address:port (e.g. "0.0.0.0:8443", "[::]:443")"#,
        r#"listener[1].name: duplicate listener name "http""#,
        r#"group[0].groups[0]: unknown group "ghost""#,
        r#"route[0].upstream[0]: "ftp://x" must start with http://, https:// or h2c://"#,
        r#"route[0].upstream[1]: "http://" is not a URL"#,
        r#"route[0].identity: bind_request/bind_body need identity = "headers""#,
        r#"route[0].allow[0].groups[1]: unknown group "ops""#,
    ];
    for e in expected {
        assert!(
            errs.iter().any(|got| got.starts_with(e)),
            "missing {e:?} in\n{}",
            errs.join("\n")
        );
    }
    assert_eq!(errs.len(), expected.len(), "{}", errs.join("\n"));
}

#[test]
fn type_errors_and_bad_toml() {
    let e = errors("[signing]\nalgorithm = \"rsa\"\n");
    assert_eq!(
        e,
        ["signing.algorithm: unknown variant `rsa`, expected `ed25519` or `ecdsa-p256-sha256`"]
    );
    let e =
        errors("[[route]]\nname = \"a\"\nbind_request = \"yes\"\n[[route.allow]]\nusers = [1]\n");
    assert_eq!(
        e,
        [
            "route[0].bind_request: invalid type: string \"yes\", expected a boolean",
            "route[0].allow[0].users[0]: invalid type: integer `1`, expected a string",
        ]
    );
    let e = errors("[[route]]\nname = \"a\"\nupstream = [\"http://u:s3cret@10.0.0.1\"]\n");
    assert!(
        e[0].starts_with("route[0].upstream[0]: credentials in upstream URLs"),
        "{e:?}"
    );
    assert!(!e[0].contains("s3cret"), "{e:?}");
    let e = errors("[[route]]\nname = \"a\"\nidentity = \"jwt\"\nbind_body = true\n");
    assert_eq!(
        e,
        ["route[0].identity: bind_request/bind_body need identity = \"headers\""]
    );
    let e = errors(
        "[[group]]\nname = \"a\"\ngroups = [\"b\"]\n[[group]]\nname = \"b\"\ngroups = [\"a\"]\n",
    );
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("group: ") && e[0].contains("\"a\""),
        "{e:?}"
    );
    let e = errors(
        "[gateway]\ndev = true\n[[listener]]\nbind = \"127.0.0.1:1\"\n[listener.tls]\nclient_auth = \"maybe\"\n",
    );
    assert!(
        e[0].starts_with("listener[0].tls.client_auth: unknown variant `maybe`"),
        "{e:?}"
    );
    let e = errors(
        "[gateway]\ndev = true\n[[listener]]\nbind = \"127.0.0.1:1\"\n[listener.tls]\nmin_version = \"1.1\"\n",
    );
    assert!(
        e[0].starts_with("listener[0].tls.min_version: unknown variant `1.1`"),
        "{e:?}"
    );
    let e = errors("[signing]\nlifetime = \"5x\"\n");
    assert!(e[0].contains("invalid duration \"5x\""), "{e:?}");
    let e = errors("[gateway]\ndev = true\n[[route]\nname = 1\n");
    assert!(e[0].starts_with("line 3: not valid TOML"), "{e:?}");
    let e = errors("route = 5\n");
    assert_eq!(e, ["route: must be an array of tables: write [[route]]"]);
    let e = errors("[[route]]\nname = \"a\"\npath = \"/a/../b\"\n");
    assert!(e[0].starts_with("route[0].path:"), "{e:?}");
    let e = errors(&"x".repeat(5 * 1024 * 1024));
    assert!(e[0].contains("larger than"), "{e:?}");
}

#[test]
fn load_reports_unreadable_files() {
    let e = Config::load(std::path::Path::new("/nonexistent/hexon.toml")).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("cannot read /nonexistent/hexon.toml"),
        "{e}"
    );
}

#[test]
fn gateway_users_and_issuers() {
    let c = Config::parse(
        r#"
[gateway]
login_url = "https://auth.example.com/login"
admin_bind = "127.0.0.1:9090"
trusted_proxies = ["10.0.0.0/8", "::1"]

[jwt]
issuer = "https://gw.example.com"
lifetime = "15m"

[[trusted_issuer]]
issuer = "https://idp.example.com"
jwks_url = "https://idp.example.com/jwks.json"
audience = "gw"

[[user]]
name = "alice"
email = "alice@example.com"
display_name = "Alice"

[[user]]
name = "bob"
disabled = true

[[group]]
name = "eng"
users = ["alice", "bob"]
"#,
        &env,
    )
    .unwrap();
    assert_eq!(c.jwt.audience, "hexon");
    assert_eq!(c.jwt.lifetime.get().as_secs(), 900);
    let dir = c.directory().unwrap();
    let alice = dir.identity("alice").unwrap();
    assert_eq!(alice.email(), Some("alice@example.com"));
    assert!(alice.in_group("eng"));
    assert!(
        dir.identity("bob").is_err(),
        "disabled users get no identity"
    );

    let e = errors(
        r#"
[gateway]
login_url = "ftp://x"
admin_bind = "nope"
trusted_proxies = ["10.0.0.0/33"]
forward_auth_path = "authz?x"
api_key_header = "X API Key"
[jwt]
issuer = ""
[[trusted_issuer]]
issuer = "https://idp.example.com"
jwks_url = "http://idp.example.com/jwks.json"
audience = "gw"
[[trusted_issuer]]
issuer = "local"
jwks_url = "https://127.0.0.1:8080/jwks.json"
audience = "gw"
[[user]]
name = "alice"
[[user]]
name = "alice"
[[group]]
name = "eng"
users = ["carol"]
"#,
    );
    let expected = [
        "gateway.login_url: must be an http(s) URL or an absolute path",
        "gateway.admin_bind: \"nope\" is not an address:port",
        "gateway.forward_auth_path: \"authz?x\" must be a plain absolute path",
        "gateway.api_key_header: \"X API Key\" is not a header name",
        "gateway.trusted_proxies[0]: \"10.0.0.0/33\" is not a CIDR",
        "jwt.issuer: must not be empty",
        "trusted_issuer[0].jwks_url: \"http://idp.example.com/jwks.json\": keys must be fetched over https",
        "user[1].name: duplicate user \"alice\"",
        "group[0].users[0]: unknown user \"carol\" (define it with [[user]])",
    ];
    for x in expected {
        assert!(
            e.iter().any(|g| g.starts_with(x)),
            "missing {x:?} in\n{}",
            e.join("\n")
        );
    }
    assert_eq!(e.len(), expected.len(), "{}", e.join("\n"));
}

#[test]
fn api_keys_in_urls_need_a_parameter_name_and_a_route_that_lists_them() {
    let route = r#"
[[route]]
name = "feed"
path = "/feed/*"
credentials = ["api_key_query"]
upstream = ["http://127.0.0.1:9"]
[[route.allow]]
authenticated = true
"#;
    let e = errors(route);
    assert_eq!(
        e,
        [
            r#"route[0].credentials: lists "api_key_query" but gateway.api_key_query_param is not set: name the query parameter (e.g. "api_key")"#
        ],
    );
    let e = errors(&format!(
        "[gateway]\napi_key_query_param = \"api key\"\n{route}"
    ));
    assert_eq!(
        e,
        [
            r#"gateway.api_key_query_param: "api key" must be a plain parameter name such as "api_key" (letters, digits, - _ .)"#
        ],
    );
    let c = Config::parse(
        &format!("[gateway]\napi_key_query_param = \"api_key\"\n{route}"),
        &env,
    )
    .unwrap();
    assert_eq!(c.gateway.api_key_query_param.as_deref(), Some("api_key"));
    let e = errors(
        "[[route]]\nname = \"r\"\ncredentials = [\"api-key\"]\nupstream = [\"http://127.0.0.1:9\"]\n",
    );
    assert!(
        e.iter().any(|m| m.starts_with("route[0].credentials")
            && m.contains("api-key")
            && m.contains("api_key_query")),
        "{e:?}"
    );
}

#[test]
fn connection_threads_are_bounded_and_per_listener() {
    assert_eq!(
        errors("[gateway]\nconnection_threads = 300\n"),
        [
            "gateway.connection_threads: at most 256; one thread serves many connections (leave it unset for one per CPU)"
        ],
    );
    let c = Config::parse(
        "[gateway]\nconnection_threads = 0\n[[listener]]\nbind = \"127.0.0.1:0\"\nconnection_threads = false\n",
        &env,
    )
    .unwrap();
    assert_eq!(c.gateway.connection_threads, Some(0));
    assert_eq!(c.listeners[0].connection_threads, Some(false));
    assert_eq!(c.gateway.pin_connection_threads, None);
}

#[test]
fn pinned_connection_threads_need_connection_threads() {
    assert_eq!(
        errors("[gateway]\nconnection_threads = 0\npin_connection_threads = true\n"),
        [
            "gateway.pin_connection_threads: needs connection threads, and connection_threads = 0 turns them off (remove one of the two)"
        ],
    );
    for (text, pin) in [
        (
            "connection_threads = 0\npin_connection_threads = false",
            Some(false),
        ),
        (
            "connection_threads = 2\npin_connection_threads = true",
            Some(true),
        ),
    ] {
        let c = Config::parse(&format!("[gateway]\n{text}\n"), &env).unwrap();
        assert_eq!(c.gateway.pin_connection_threads, pin, "{text}");
        assert!(
            c.non_default_values()
                .iter()
                .any(|v| v.starts_with("gateway.pin_connection_threads")),
            "{:?}",
            c.non_default_values()
        );
    }
}

#[test]
fn state_defaults_to_embedded_sqlite_and_memory() {
    use hexon_core::config::{DurableBackend, SharedBackend};
    let c = Config::parse("", &env).unwrap();
    assert_eq!(c.state.durable, DurableBackend::Sqlite);
    assert_eq!(c.state.shared, SharedBackend::Memory);
    assert_eq!(
        c.state.sqlite_file(&c.gateway.data_dir),
        std::path::Path::new("./hexon-data/hexon.db")
    );
}

#[test]
fn state_backends_need_their_settings() {
    let e = errors("[state]\ndurable = \"postgres\"\n");
    assert!(
        e.iter()
            .any(|m| m.starts_with("state.postgres_url: required")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|m| m.starts_with("state.encryption_keys: required with PostgreSQL")),
        "{e:?}"
    );
    let e = errors("[state]\nshared = \"nats\"\n");
    assert!(
        e.iter().any(|m| m.starts_with("state.nats_url: required")),
        "{e:?}"
    );
    let e = errors(
        "[state]\nshared = \"nats\"\nnats_url = \"http://x:4222, nats://ok:4222\"\nnats_token = \"t\"\nencryption_keys = [\"q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=\"]\n",
    );
    assert_eq!(
        e,
        ["state.nats_url: server #0 \"http://x:4222\" is not a nats:// or tls:// URL"]
    );
    let e = errors("[state]\ndurable = \"memory\"\nshared = \"durable\"\n");
    assert!(e.iter().any(|m| m.starts_with("state.shared:")), "{e:?}");
    let e = errors("[state]\npostgres_url = \"postgres://db/x\"\n");
    assert_eq!(
        e,
        ["state.postgres_url: set, but state.durable is not \"postgres\""]
    );
    let e = errors("[state]\ndurable = \"mysql\"\n");
    assert!(
        e.iter()
            .any(|m| m.contains("state.durable") && m.contains("sqlite")),
        "{e:?}"
    );
    let e = errors("[state]\npostgres_schema = \"Robert'); DROP\"\n");
    assert!(
        e.iter().any(|m| m.starts_with("state.postgres_schema:")),
        "{e:?}"
    );
    let e = errors("[state]\nencryption_keys = [\"short\"]\n");
    assert!(
        e.iter().any(|m| m.starts_with("state.encryption_keys:")),
        "{e:?}"
    );
    let e = errors("[state]\nwhat = 1\n");
    assert!(e.iter().any(|m| m.contains("what")), "{e:?}");
}

#[test]
fn state_secrets_never_show_in_dumps_or_debug() {
    let key = "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=";
    let text = format!(
        "[state]\ndurable = \"postgres\"\npostgres_url = \"postgres://hexon:pa55word@db:5432/hexon\"\nencryption_keys = [\"{key}\"]\n"
    );
    let c = Config::parse(&text, &env).unwrap();
    let shown = c.non_default_values().join("\n");
    assert!(
        !shown.contains("pa55word") && !shown.contains(key),
        "{shown}"
    );
    assert!(
        shown.contains("postgres://[redacted]@db:5432/hexon"),
        "{shown}"
    );
    assert!(
        shown.contains("state.encryption_keys = \"[redacted]\""),
        "{shown}"
    );
    let debug = format!("{c:?}");
    assert!(
        !debug.contains("pa55word") && !debug.contains(key),
        "{debug}"
    );
}

#[test]
fn nats_needs_credentials_outside_the_url() {
    let base = "[state]\nshared = \"nats\"\nnats_url = \"nats://10.0.0.5:4222\"\nencryption_keys = [\"q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=\"]\n";
    let e = errors(base);
    assert!(
        e.iter()
            .any(|m| m.starts_with("state.nats_credentials_file: NATS needs credentials")),
        "{e:?}"
    );
    assert!(Config::parse(&format!("{base}nats_allow_unauthenticated = true\n"), &env).is_ok());
    assert!(Config::parse(&format!("{base}nats_token = \"t0k\"\n"), &env).is_ok());
    let e = errors(&format!(
        "{base}nats_token = \"t\"\nnats_credentials_file = \"/x.creds\"\n"
    ));
    assert!(
        e.iter()
            .any(|m| m.starts_with("state.nats_token: choose one")),
        "{e:?}"
    );
    let e = errors(&format!("{base}nats_user = \"hexon\"\n"));
    assert!(
        e.iter()
            .any(|m| m.starts_with("state.nats_user: nats_user and nats_password go together")),
        "{e:?}"
    );
    let e = errors(
        "[state]\nshared = \"nats\"\nnats_url = \"nats://hexon:s3cret@10.0.0.5:4222\"\nnats_token = \"t\"\nencryption_keys = [\"q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=\"]\n",
    );
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].contains("credentials in the URL") && !e[0].contains("s3cret"),
        "{e:?}"
    );
    // Sessions are sealed with the keys: every node needs the same ones.
    let e = errors(
        "[state]\nshared = \"nats\"\nnats_url = \"nats://10.0.0.5:4222\"\nnats_token = \"t\"\n",
    );
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("state.encryption_keys: required with shared = \"nats\""),
        "{e:?}"
    );
    // Secrets never show in dumps.
    let c = Config::parse(
        &format!("{base}nats_user = \"hexon\"\nnats_password = \"pw-123\"\n"),
        &env,
    )
    .unwrap();
    let shown = format!("{}\n{c:?}", c.non_default_values().join("\n"));
    assert!(!shown.contains("pw-123"), "{shown}");
}

#[test]
fn urls_are_redacted_whole() {
    use hexon_core::config::redact_url;
    let cases = [
        ("postgres://u:p@db/x", "postgres://[redacted]@db/x"),
        ("nats://TOKEN@h:4222", "nats://[redacted]@h:4222"),
        (
            "nats://a:pw@h1,nats://b:pw2@h2",
            "nats://[redacted]@h1,nats://[redacted]@h2",
        ),
        ("postgres://u:p/a?b@db/x", "postgres://[redacted]@db/x"),
        (
            "postgres://db/x?sslmode=require&password=pw",
            "postgres://db/x?sslmode=[redacted]&password=[redacted]",
        ),
        ("nats://10.0.0.5:4222", "nats://10.0.0.5:4222"),
        ("not a url", "not a url"),
        ("", ""),
    ];
    for (url, want) in cases {
        assert_eq!(redact_url(url), want, "{url}");
    }
}

#[test]
fn listener_limits_are_validated() {
    let ok = "[[listener]]\nbind = \"0.0.0.0:80\"\nheader_read_timeout = \"5s\"\nmax_header_bytes = 16384\nmax_headers = 50\nkeep_alive = false\nhttp2_keep_alive_interval = \"0s\"\nhttp2_max_concurrent_streams = 100\nh2c = false\nmax_connections = 10000\ntls_handshake_timeout = \"3s\"\n";
    let c = Config::parse(ok, &env).unwrap();
    assert_eq!(c.listeners[0].max_headers, Some(50));
    let e = errors(
        "[[listener]]\nbind = \"0.0.0.0:80\"\ntls_handshake_timeout = \"11m\"\nheader_read_timeout = \"0s\"\nmax_header_bytes = 100\nmax_headers = 0\nhttp2_max_concurrent_streams = 0\nmax_connections = 0\nhttp2_keep_alive_interval = \"1h\"\n",
    );
    for key in [
        "listener[0].tls_handshake_timeout: must be between 1s and 10m",
        "listener[0].header_read_timeout: must be between 1s and 10m",
        "listener[0].max_header_bytes: must be between 8192 and 1048576",
        "listener[0].max_headers: must be between 1 and 1000",
        "listener[0].http2_max_concurrent_streams: must be between 1 and 10000",
        "listener[0].max_connections: must be between 1 and 10000000",
        "listener[0].http2_keep_alive_interval: must be \"0s\" (off) or between 1s and 10m",
    ] {
        assert!(
            e.iter().any(|m| m.starts_with(key)),
            "missing {key:?} in {e:?}"
        );
    }
}

#[test]
fn a_route_cannot_share_the_gateways_own_audience() {
    let e =
        errors("[[route]]\nname = \"hexon\"\nupstream = [\"http://127.0.0.1:9\"]\npublic = true\n");
    assert!(
        e.iter()
            .any(|m| m.starts_with("route[0].name: \"hexon\" is jwt.audience")),
        "{e:?}"
    );
}

#[test]
fn the_login_host_is_validated() {
    let good = r#"
[login]
url = "https://auth.example.com"
return_hosts = ["*.apps.example.com"]
[login.email]
smtp_url = "smtps://login:secret@mail.example.com:465"
from = "Example <login@example.com>"
[[user]]
name = "alice"
password_hash = "$argon2id$v=19$m=19456,t=2,p=1$WwuEd60whWN1zMoJPS05xA$YPcnGN5MM8DgUnvXxzB1H5y/WxJVUwC1P19GIObeG6M"
"#;
    let c = Config::parse(good, &env).unwrap();
    let login = c.login.as_ref().unwrap();
    assert_eq!(login.idle_timeout.get().as_secs(), 3600);
    assert_eq!(login.password.memory_kib, 19_456);
    // The hash is taken as written (its `$` are not variables).
    assert!(
        c.users[0]
            .password_hash
            .as_deref()
            .unwrap()
            .starts_with("$argon2id$v=19$")
    );
    // Neither the hash nor the SMTP URL's password is printed...
    let shown = c.non_default_values().join("\n");
    assert!(
        !shown.contains("argon2id") && !shown.contains("secret@"),
        "{shown}"
    );
    assert!(
        shown.contains("login.email.smtp_url = \"smtps://[redacted]@mail.example.com:465\""),
        "{shown}"
    );
    // ...but the machine dump keeps both, so it means the same.
    assert_eq!(Config::parse(&c.effective_toml(), &env).unwrap(), c);

    let e = errors(
        r#"
[gateway]
login_url = "https://sso.example.com/login"
[login]
url = "http://auth.example.com/path"
[login.password]
memory_kib = 4
threads = 0
min_length = 4
[login.brand]
accent_color = "blue"
logo_url = "javascript:alert(1)"
[login.email]
smtp_url = "smtp://mail.example.com:25"
from = "nobody"
ttl = "1h"
[[user]]
name = "alice"
password_hash = "$2b$12$abcdefghijklmnopqrstuv"
[[route]]
name = "on-login-host"
host = "auth.example.com"
upstream = ["http://127.0.0.1:9"]
"#,
    );
    let joined = e.join("\n");
    for expected in [
        "user[0].password_hash: must be an argon2id PHC string",
        "gateway.login_url: set either gateway.login_url",
        "login.url: \"http://auth.example.com/path\": the login host is served at its root",
        "login.password: iterations and parallelism must be at least 1, memory_kib at least 8",
        "login.password: threads must be 1 to 64",
        "login.password.min_length: at least 8",
        "login.brand.accent_color: \"blue\" is not a #rrggbb colour",
        "login.brand.logo_url: must be an https:// URL or a path",
        "login.email.smtp_url: plain smtp:// is only for a loopback server",
        "login.email.from: \"nobody\" is not a sender address",
        "login.email.ttl: between 1 and 15 minutes",
    ] {
        assert!(
            joined.contains(expected),
            "missing {expected:?} in:\n{joined}"
        );
    }
    let e = errors(
        r#"
[login]
url = "http://auth.example.com"
[[route]]
name = "on-login-host"
host = "AUTH.example.com"
upstream = ["http://127.0.0.1:9"]
"#,
    )
    .join("\n");
    assert!(e.contains("login.url: must be https://"), "{e}");
    assert!(
        e.contains("route[0].host: \"auth.example.com\" is the login host"),
        "{e}"
    );
    // http:// is fine for localhost names (browsers keep Secure cookies).
    assert!(Config::parse("[login]\nurl = \"http://auth.localhost:8080\"\n", &env).is_ok());
}

#[test]
fn acme_listener_settings_are_checked() {
    let errs = errors(
        r#"
[[listener]]
name = "plain"
bind = "127.0.0.1:80"

[[listener]]
name = "public web"
bind = "127.0.0.1:443"
[listener.tls]
cert = "c.pem"
key = "k.pem"
ocsp_stapling = false
client_ca = "clients.pem"
[listener.tls.acme]
directory = "http://acme.example/directory"
domains = ["ok.example.com", "*.example.com", "bad_name.example.com"]
eab_kid = "kid-1"
eab_hmac_key = "not base64url!"
must_staple = true
"#,
    );
    let expected = [
        "listener[1].tls.acme.directory: must be an https:// URL (ACME is HTTPS only)",
        r#"listener[1].tls.acme.domains[1]: "*.example.com" is not a DNS name or IP address (wildcards need dns-01, which the listener cannot answer)"#,
        r#"listener[1].tls.acme.domains[2]: "bad_name.example.com" is not a DNS name or IP address (wildcards need dns-01, which the listener cannot answer)"#,
        "listener[1].tls.acme.eab_hmac_key: not base64url (paste the key exactly as the CA gave it)",
        "listener[1].tls.acme.must_staple: must-staple certificates need ocsp_stapling = true (clients refuse them unstapled)",
        r#"listener[1].tls.acme.challenge: tls-alpn-01 cannot pass on a listener that requires client certificates (the CA has none): use client_auth = "optional" or http-01"#,
        "listener[1].name: a listener with [listener.tls.acme] keeps its state in <data_dir>/acme/<name>: use letters, digits, - and _",
        "listener[1].tls: cert/key and acme exclude each other: the ACME client provides the certificate",
    ];
    for e in expected {
        assert!(errs.contains(&e.to_owned()), "missing {e:?} in {errs:#?}");
    }
    assert_eq!(errs.len(), expected.len(), "{errs:#?}");

    // http-01 needs a plain listener to answer on.
    let errs = errors(
        r#"
[[listener]]
name = "public"
bind = "127.0.0.1:443"
[listener.tls.acme]
directory = "https://acme.example/directory"
domains = ["gw.example.com"]
challenge = "http-01"
"#,
    );
    assert_eq!(
        errs,
        [
            "listener[0].tls.acme.challenge: http-01 is answered on a plain-HTTP listener: add one (port 80 for public CAs) or use tls-alpn-01"
        ]
    );

    // A good one parses; the EAB key is not shown by `hexon check`.
    let config = Config::parse(
        r#"
[[listener]]
name = "public"
bind = "127.0.0.1:443"
[listener.tls.acme]
directory = "https://acme.example/directory"
domains = ["gw.example.com", "192.0.2.7"]
eab_kid = "kid-1"
eab_hmac_key = "c2VjcmV0LW1hYy1rZXktYnl0ZXM"
"#,
        &env,
    )
    .unwrap();
    let shown = config.non_default_values().join("\n");
    assert!(!shown.contains("c2VjcmV0"), "{shown}");
    assert!(shown.contains("[redacted]"), "{shown}");
    let debug = format!("{:?}", config.listeners[0].tls);
    assert!(!debug.contains("c2VjcmV0"), "{debug}");
}

// ------------------------------------------------ routes given as JSON (store)

fn json_route_errors(v: serde_json::Value) -> Vec<String> {
    hexon_core::config::RouteConfig::from_json(v)
        .unwrap_err()
        .0
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn every_file_route_round_trips_through_json() {
    let config = Config::parse(FULL, &env).unwrap();
    for r in &config.routes {
        let json = r.to_json();
        let back = hexon_core::config::RouteConfig::from_json(json.clone())
            .unwrap_or_else(|e| panic!("{json}: {e}"));
        assert_eq!(&back, r, "{json}");
    }
    let with_timeouts = Config::parse(
        r#"
[[route]]
name = "slow"
path = "/slow/*"
upstream = ["https://10.0.0.1:8443"]
response_timeout = "2m"
max_body_bytes = 5
identity = "jwt"
credentials = ["api_key", "hmac"]
[[route.allow]]
groups = ["ops"]
"#,
        &env,
    )
    .unwrap();
    let r = &with_timeouts.routes[0];
    assert_eq!(
        &hexon_core::config::RouteConfig::from_json(r.to_json()).unwrap(),
        r
    );
}

#[test]
fn json_routes_are_checked_like_file_routes() {
    use serde_json::json;
    let e = json_route_errors(json!({"name": "x", "upstream": "http://a"}));
    assert!(e.iter().any(|m| m.starts_with("route.upstream")), "{e:?}");
    let e = json_route_errors(json!({"name": "x", "colour": "blue"}));
    assert!(
        e.iter()
            .any(|m| m.contains("unknown field") && m.contains("colour")),
        "{e:?}"
    );
    let e = json_route_errors(json!({"name": "x", "path": null}));
    assert_eq!(
        e,
        ["route.path: null is not a value here; leave the field out"]
    );
    let e = json_route_errors(json!({"name": "x", "max_body_bytes": 18446744073709551615u64}));
    assert!(e[0].contains("out of range"), "{e:?}");
    let e = json_route_errors(json!(["not", "an", "object"]));
    assert_eq!(e, ["route: must be a table"]);
    let mut deep = json!("x");
    for _ in 0..40 {
        deep = json!([deep]);
    }
    let e = json_route_errors(json!({"name": "x", "methods": deep}));
    assert!(e[0].contains("nested deeper"), "{e:?}");
}

#[test]
fn extra_routes_are_validated_with_the_file_and_named_in_errors() {
    use hexon_core::config::RouteConfig;
    use serde_json::json;
    let config = Config::parse(FULL, &env).unwrap();
    let ok = RouteConfig::from_json(json!({
        "name": "orders", "host": "orders.example.com", "path": "/",
        "upstream": ["http://10.0.0.5:8080"], "allow": [{"groups": ["eng"]}]
    }))
    .unwrap();
    let merged = config.with_routes(vec![ok.clone()]).unwrap();
    assert_eq!(merged.routes.len(), config.routes.len() + 1);
    assert_eq!(merged.routes.last(), Some(&ok));
    assert!(merged.policy().unwrap().route("orders").is_some());

    // A name the file uses, an unknown group, a bad upstream: each located
    // by the extra route's name, never by an index the operator cannot see.
    let clash = RouteConfig::from_json(json!({"name": "grafana", "path": "/g/*"})).unwrap();
    let unknown_group = RouteConfig::from_json(json!({
        "name": "reports", "path": "/r/*", "allow": [{"groups": ["nobody"]}]
    }))
    .unwrap();
    let bad_upstream = RouteConfig::from_json(json!({
        "name": "up", "path": "/u/*", "upstream": ["ftp://x"]
    }))
    .unwrap();
    let e: Vec<String> = config
        .with_routes(vec![clash, unknown_group, bad_upstream])
        .unwrap_err()
        .0
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(
        e.iter().any(|m| m.starts_with("route \"grafana\"")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|m| m.starts_with("route \"reports\".allow[0].groups")),
        "{e:?}"
    );
    assert!(
        e.iter().any(|m| m.starts_with("route \"up\".upstream[0]")),
        "{e:?}"
    );
    assert!(!e.iter().any(|m| m.starts_with("route[")), "{e:?}");
}
