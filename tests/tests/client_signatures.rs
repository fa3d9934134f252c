//! API clients' RFC 9421 signatures, made by an independent implementation
//! (the `http-message-signatures` Python package) with an HMAC secret and
//! with an Ed25519 key; routes that accept only some credential kinds; API
//! keys in the query string only where a route lists them.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs,
    unreachable_pub
)]

use std::net::SocketAddr;

use hexon_core::UnixTime;
use hexon_core::store::{ApiClientRecord, ClientStatus, DurableStore, PermissionRecord};
use hexon_proxy::body::{BoxBody, empty};
use hexon_proxy::clients;
use http::{Request, StatusCode};
use serde_json::{Value, json};

mod common;
use common::*;

/// The Ed25519 private key the Python client signs with (a test key).
const SEED: [u8; 32] = [7; 32];

fn config(up: SocketAddr) -> String {
    format!(
        r#"
[gateway]
data_dir = "${{DATA}}"
audit = "off"
forward_auth_path = "/authz"
trusted_proxies = ["127.0.0.1"]
api_key_query_param = "api_key"

[[listener]]
bind = "127.0.0.1:0"

[[user]]
name = "alice"
[[group]]
name = "staff"
users = ["alice"]

[[route]]
name = "orders"
host = "api.example.com"
path = "/orders/*"
upstream = ["http://{up}"]
[[route.allow]]
groups = ["staff"]

[[route]]
name = "payments"
host = "api.example.com"
path = "/payments/*"
credentials = ["hmac", "http_signature"]
upstream = ["http://{up}"]
[[route.allow]]
groups = ["staff"]

[[route]]
name = "feed"
host = "api.example.com"
path = "/feed/*"
credentials = ["api_key_query", "api_key"]
upstream = ["http://{up}"]
[[route.allow]]
groups = ["staff"]
"#
    )
}

struct Creds {
    api_key: String,
    hmac_id: String,
    hmac_secret: String,
    ed25519_id: String,
    paused_ed25519_id: String,
}

async fn provision(store: &dyn DurableStore) -> Creds {
    let now = UnixTime::now();
    for (id, status) in [
        ("billing", ClientStatus::Active),
        ("paused", ClientStatus::Suspended),
    ] {
        let record = ApiClientRecord {
            id: id.into(),
            name: format!("{id}-service"),
            status,
            groups: vec!["staff".into()],
            description: String::new(),
            rate_limit_per_minute: None,
            created_at: now,
            updated_at: now,
            version: 0,
        };
        store.insert_api_client(&record).await.unwrap();
        let grant = |route: &str, method: &str| PermissionRecord {
            route: route.into(),
            methods: vec![method.into()],
        };
        // Payments: reads only. The route's allow rule (group staff) would
        // admit the client; only its grant may decide.
        let grants = [
            grant("orders", "*"),
            grant("payments", "GET"),
            grant("feed", "*"),
        ];
        store.set_permissions(id, &grants).await.unwrap();
    }
    let public = ed25519_dalek::SigningKey::from_bytes(&SEED)
        .verifying_key()
        .to_bytes();
    let key = clients::new_api_key("billing", "test", now, None);
    let (hmac, secret) = clients::new_hmac_secret("billing", "test", now, None);
    let ed = clients::new_ed25519_key("billing", "test", &public, now, None).unwrap();
    let paused = clients::new_ed25519_key("paused", "test", &public, now, None).unwrap();
    for r in [&key.record, &hmac, &ed, &paused] {
        store.insert_credential(r).await.unwrap();
    }
    Creds {
        api_key: key.key.to_string(),
        hmac_id: hmac.id,
        hmac_secret: secret.to_string(),
        ed25519_id: ed.id,
        paused_ed25519_id: paused.id,
    }
}

/// Signs and sends requests with `http-message-signatures`; prints one JSON
/// object: case → [status, echoed upstream view or null].
const CLIENT: &str = r#"
import sys, json, datetime, secrets, requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from http_message_signatures import HTTPMessageSigner, HTTPSignatureKeyResolver, algorithms

base, hmac_id, hmac_secret, ed_id, seed_hex, paused_id = sys.argv[1:7]
ed_key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(seed_hex))
other_key = Ed25519PrivateKey.generate()

class Keys(HTTPSignatureKeyResolver):
    def resolve_private_key(self, key_id):
        if key_id == hmac_id:
            return hmac_secret.encode()
        if key_id == "other":
            return other_key
        return ed_key
    def resolve_public_key(self, key_id):
        raise NotImplementedError

class Fixed(HTTPSignatureKeyResolver):
    """Signs with one key whatever the keyid says (an attacker's view)."""
    def __init__(self, key):
        self.key = key
    def resolve_private_key(self, key_id):
        return self.key
    def resolve_public_key(self, key_id):
        raise NotImplementedError

HMAC = HTTPMessageSigner(signature_algorithm=algorithms.HMAC_SHA256, key_resolver=Keys())
ED = HTTPMessageSigner(signature_algorithm=algorithms.ED25519, key_resolver=Keys())
ATTACKER = HTTPMessageSigner(signature_algorithm=algorithms.ED25519, key_resolver=Fixed(other_key))
# Algorithm confusion: an HMAC keyed with the client's (public) Ed25519 key.
CONFUSED = HTTPMessageSigner(signature_algorithm=algorithms.HMAC_SHA256,
                             key_resolver=Fixed(ed_key.public_key().public_bytes_raw()))
FULL = ("@method", "@authority", "@path", "@query")
session = requests.Session()

def prepared(method, path, body=None):
    # Signed for the name clients use; sent to the gateway's test address.
    return requests.Request(method, "http://api.example.com" + path, data=body).prepare()

def sign(req, signer, key_id, components=FULL, body=None, **kw):
    kw.setdefault("nonce", secrets.token_hex(12))
    signer.sign(req, key_id=key_id, covered_component_ids=components, body=body, **kw)
    return req

def send(req, method=None, path=None, body=None):
    path = path or req.path_url
    req.url = base + path
    req.headers["Host"] = "api.example.com"
    if method:
        req.method = method
    if body is not None:
        req.body = body
        req.headers["Content-Length"] = str(len(body))
    r = session.send(req)
    try:
        seen = r.json()
    except ValueError:
        seen = None
    return [r.status_code, seen]

out = {}
hm = sign(prepared("GET", "/orders/1?x=1&y=%2F"), HMAC, hmac_id)
out["hmac_get"] = send(hm)
out["replayed"] = send(hm)
body = b'{"amount": 3}'
out["ed25519_post"] = send(sign(prepared("POST", "/orders/2?z=1", body), ED, ed_id, FULL, body=body))
out["query_changed"] = send(sign(prepared("GET", "/orders/1?x=1"), ED, ed_id), path="/orders/1?x=2")
out["query_added"] = send(sign(prepared("GET", "/orders/1"), ED, ed_id, ("@method", "@authority", "@path")), path="/orders/1?admin=1")
out["path_changed"] = send(sign(prepared("GET", "/orders/1?x=1"), ED, ed_id), path="/orders/2?x=1")
out["method_changed"] = send(sign(prepared("GET", "/orders/1?x=1"), ED, ed_id), method="DELETE")
out["body_changed"] = send(sign(prepared("POST", "/orders/2?z=1", body), ED, ed_id, FULL, body=body), body=b'{"amount": 9}')
out["body_not_covered"] = send(sign(prepared("POST", "/orders/2?z=1", body), ED, ed_id))
out["query_not_covered"] = send(sign(prepared("GET", "/orders/1?x=1"), ED, ed_id, ("@method", "@authority", "@path")))
out["unknown_keyid"] = send(sign(prepared("GET", "/orders/1?x=1"), ED, "other"))
out["forged_for_our_keyid"] = send(sign(prepared("GET", "/orders/1?x=1"), ATTACKER, ed_id))
old = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=900)
out["stale"] = send(sign(prepared("GET", "/orders/1?x=1"), ED, ed_id, created=old))
out["no_nonce"] = send(sign(prepared("GET", "/orders/1?x=1"), ED, ed_id, nonce=None))
out["alg_confusion"] = send(sign(prepared("GET", "/orders/1?x=1"), CONFUSED, ed_id))
out["alg_confusion_no_alg"] = send(sign(prepared("GET", "/orders/1?x=1"), CONFUSED, ed_id, include_alg=False))
twice = sign(prepared("GET", "/orders/1?x=1"), ED, ed_id)
ED.sign(twice, key_id=ed_id, covered_component_ids=FULL, nonce=secrets.token_hex(8), label="second", append_if_signature_exists=True)
out["two_signatures"] = send(twice)
out["suspended_client"] = send(sign(prepared("GET", "/orders/1?x=1"), ED, paused_id))
out["payments_signed"] = send(sign(prepared("GET", "/payments/1"), ED, ed_id, ("@method", "@authority", "@path")))
out["payments_post_not_granted"] = send(sign(prepared("POST", "/payments/1", body), ED, ed_id, FULL, body=body))
print(json.dumps(out))
"#;

async fn run_client(gw: &Gw, c: &Creds) -> Value {
    let seed: String = SEED.iter().map(|b| format!("{b:02x}")).collect();
    let out = within(
        tokio::process::Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()))
            .arg("-c")
            .arg(CLIENT)
            .args([
                &format!("http://{}", gw.addr),
                &c.hmac_id,
                &c.hmac_secret,
                &c.ed25519_id,
                &seed,
                &c.paused_ed25519_id,
            ])
            .output(),
    )
    .await
    .expect("python3 with http-message-signatures (scripts/install-test-deps)");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn status(v: &Value) -> u64 {
    v[0].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_rfc9421_clients_sign_method_path_query_and_body() {
    let up = start_upstream(header_echo()).await;
    let gw = Gw::start(&config(up)).await;
    let c = provision(gw.gateway.state().durable.as_ref()).await;
    gw.gateway.clients().reload().await.unwrap();
    let j = run_client(&gw, &c).await;

    // HMAC-SHA256 and Ed25519 both pass; the upstream sees the client's
    // signed identity and never the client's own signature fields.
    for case in ["hmac_get", "ed25519_post"] {
        let (code, seen) = (status(&j[case]), &j[case][1]);
        assert_eq!(code, 200, "{case}: {j:#}");
        assert_eq!(
            seen["headers"]["hexon-subject"],
            json!(["billing"]),
            "{case}"
        );
        assert_eq!(seen["headers"]["hexon-kind"], json!(["service"]), "{case}");
        let input = seen["headers"]["signature-input"][0].as_str().unwrap();
        assert!(input.starts_with("hexon="), "{case}: {input}");
        assert_eq!(
            seen["headers"]["signature-input"].as_array().unwrap().len(),
            1
        );
        assert!(
            seen["headers"]["hexon-auth"][0]
                .as_str()
                .unwrap()
                .starts_with("http_signature="),
            "{case}: {seen}"
        );
    }
    assert_eq!(j["hmac_get"][1]["uri"], "/orders/1?x=1&y=%2F");
    assert_eq!(j["ed25519_post"][1]["body_len"], 13);

    // Everything signed is bound; every misuse is a bare 401.
    for case in [
        "replayed",
        "query_changed",
        "query_added",
        "path_changed",
        "method_changed",
        "body_changed",
        "body_not_covered",
        "query_not_covered",
        "unknown_keyid",
        "forged_for_our_keyid",
        "stale",
        "no_nonce",
        "alg_confusion",
        "alg_confusion_no_alg",
        "two_signatures",
        "suspended_client",
    ] {
        assert_eq!(status(&j[case]), 401, "{case}: {j:#}");
    }
    // A route that asks for signatures takes them.
    assert_eq!(status(&j["payments_signed"]), 200, "{j:#}");
    // Signed clients pass by their grants like any API client.
    assert_eq!(status(&j["payments_post_not_granted"]), 403, "{j:#}");
    gw.stop().await;
}

fn get(path: &str, headers: &[(&str, &str)]) -> Request<BoxBody> {
    let mut b = Request::get(path).header("host", "api.example.com");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(empty()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_accept_only_their_credential_kinds() {
    let up = start_upstream(header_echo()).await;
    let gw = Gw::start(&config(up)).await;
    let c = provision(gw.gateway.state().durable.as_ref()).await;
    gw.gateway.clients().reload().await.unwrap();
    let key = c.api_key.as_str();
    let bearer = format!("Bearer {key}");

    // A key works where any credential does...
    let res = send(gw.addr, get("/orders/1", &[("authorization", &bearer)])).await;
    assert_eq!(res.status(), StatusCode::OK);
    // ...not on a route that requires a signature (and no fallback: 403,
    // reason credential_not_accepted at /authz below).
    let res = send(gw.addr, get("/payments/1", &[("authorization", &bearer)])).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    // The API Gatekeeper HMAC format is a signature the route accepts.
    let ts = UnixTime::now().as_secs();
    let message = format!("GET\n/payments/1\n{ts}\nn-1\n");
    let sig = hexon_core::hex::encode(&clients::hmac::sign(
        c.hmac_secret.as_bytes(),
        message.as_bytes(),
    ));
    let billing_hmac =
        format!(r#"HMAC client_id="billing",timestamp="{ts}",nonce="n-1",signature="{sig}""#);
    let res = send(
        gw.addr,
        get("/payments/1", &[("authorization", &billing_hmac)]),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);

    // Keys in the query: only where the route lists api_key_query, and the
    // upstream never sees the key.
    let res = send(gw.addr, get(&format!("/feed/1?a=1&api_key={key}&b=2"), &[])).await;
    assert_eq!(res.status(), StatusCode::OK);
    let seen = json_body(res).await;
    assert_eq!(seen["uri"], "/feed/1?a=1&b=2", "{seen}");
    assert_eq!(seen["headers"]["hexon-subject"], json!(["billing"]));
    let res = send(gw.addr, get(&format!("/orders/1?api_key={key}"), &[])).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    // A wrong key in the query is a 401, on any route.
    let res = send(
        gw.addr,
        get("/orders/1?api_key=hxk_0000000000000000_nope", &[]),
    )
    .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    // Two keys (query and header) are ambiguous.
    let res = send(
        gw.addr,
        get(&format!("/feed/1?api_key={key}"), &[("x-api-key", key)]),
    )
    .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    // The feed route also takes a header key.
    let res = send(gw.addr, get("/feed/1", &[("x-api-key", key)])).await;
    assert_eq!(res.status(), StatusCode::OK);

    // Somebody else's RFC 9421 signature (a crawler's, a partner's) is not
    // the gateway's business: removed and ignored. One naming a Hexon
    // credential must verify.
    let foreign = [
        ("x-api-key", key),
        (
            "signature-input",
            r#"sig=("@method");created=1;keyid="bot-1""#,
        ),
        ("signature", "sig=:AAAA:"),
    ];
    let res = send(gw.addr, get("/feed/1", &foreign)).await;
    assert_eq!(res.status(), StatusCode::OK);
    let seen = json_body(res).await;
    let inputs = seen["headers"]["signature-input"].as_array().unwrap();
    assert!(
        inputs
            .iter()
            .all(|v| v.as_str().unwrap().starts_with("hexon=")),
        "{seen}"
    );
    let ours = [
        ("x-api-key", key),
        (
            "signature-input",
            r#"sig=("@method");created=1;keyid="cred_nope""#,
        ),
        ("signature", "sig=:AAAA:"),
    ];
    let res = send(gw.addr, get("/feed/1", &ours)).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    // Routes that take keys in URLs cannot be reloaded onto another
    // parameter name: the layers reading it were built at start.
    let data = gw.dir.display().to_string();
    let renamed = config(up).replace(
        "api_key_query_param = \"api_key\"",
        "api_key_query_param = \"k\"",
    );
    let renamed =
        hexon_core::config::Config::parse(&renamed, &|n| (n == "DATA").then(|| data.clone()))
            .unwrap();
    let err = gw.gateway.reload(&renamed).unwrap_err().to_string();
    assert!(err.contains("restart"), "{err}");
    let res = send(gw.addr, get(&format!("/feed/1?api_key={key}"), &[])).await;
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "the running configuration stays"
    );

    // /authz gives the reason.
    let ask = |uri: &str, auth: &str| {
        Request::get("/authz")
            .header("host", "gw.internal")
            .header("x-original-uri", uri)
            .header("x-original-method", "GET")
            .header("x-original-host", "api.example.com")
            .header("authorization", auth)
            .body(empty())
            .unwrap()
    };
    let res = send(gw.addr, ask("/payments/1", &bearer)).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert_eq!(res.headers()["x-auth-reason"], "credential_not_accepted");
    let res = send(gw.addr, ask("/orders/1", &bearer)).await;
    assert_eq!(res.status(), StatusCode::OK);
    gw.stop().await;
}
