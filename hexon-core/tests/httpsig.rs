//! Signed identity headers: RFC 9421 vector, round trips, and every way a
//! request can be tampered with.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hexon_core::httpsig::{
    self, Binding, HttpSigError, HttpSigner, Verifier, VerifyError, decode_value, encode_value,
    parse_signature_fields, signature_base,
};
use hexon_core::keys::SignatureError;
use hexon_core::{Ed25519Signer, Identity, IdentityKind, KeySet, P256Signer, Signer, UnixTime};
use http::request::Parts;
use http::{HeaderValue, Request};
use proptest::prelude::*;

const NOW: UnixTime = UnixTime::from_secs(1_700_000_000);

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

fn parts(method: &str, uri: &str, host: &str) -> Parts {
    let (p, ()) = Request::builder()
        .method(method)
        .uri(uri)
        .header("host", host)
        .body(())
        .unwrap()
        .into_parts();
    p
}

fn key(kid: &str) -> Arc<Ed25519Signer> {
    Arc::new(Ed25519Signer::from_seed(kid, &[7u8; 32]).unwrap())
}

fn setup() -> (HttpSigner, Verifier) {
    let k = key("gw-1");
    let mut keys = KeySet::new();
    keys.insert("gw-1", k.public_key(), None).unwrap();
    (
        HttpSigner::new(k),
        Verifier::new(keys, ["app.example.com", "h.example", "h"]),
    )
}

fn alice() -> Identity {
    Identity::builder("u-1", "alice")
        .email("alice@example.com")
        .display_name("Alice Example")
        .groups(["eng", "admins"])
        .auth("password", UnixTime::from_secs(1_699_999_000))
        .unwrap()
        .auth("webauthn", UnixTime::from_secs(1_699_999_900))
        .unwrap()
        .session("s-1")
        .build()
        .unwrap()
}

fn signed(signer: &HttpSigner, id: &Identity, binding: Binding) -> Parts {
    let mut p = parts("GET", "/reports?year=2026", "app.example.com");
    block_on(signer.sign(id, "reports", binding, &mut p, NOW)).unwrap();
    p
}

#[test]
fn rfc9421_b26_ed25519_vector() {
    // RFC 9421 Appendix B.1.4 key and B.2.6 request.
    let pem = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF\n-----END PRIVATE KEY-----\n";
    let key = Ed25519Signer::from_pkcs8_pem("test-key-ed25519", pem).unwrap();
    let (mut p, ()) = Request::post("/foo?param=Value&Pet=dog")
        .header("host", "example.com")
        .header("date", "Tue, 20 Apr 2021 02:07:55 GMT")
        .header("content-type", "application/json")
        .header("content-digest", "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:")
        .header("content-length", "18")
        .body(())
        .unwrap()
        .into_parts();
    p.headers.insert(
        "signature-input",
        HeaderValue::from_static(
            r#"sig-b26=("date" "@method" "@path" "@authority" "content-type" "content-length");created=1618884473;keyid="test-key-ed25519""#,
        ),
    );
    let (params, _) = parse_signature_fields(
        &{
            let mut h = p.headers.clone();
            h.insert("signature", HeaderValue::from_static("sig-b26=:AA==:"));
            h
        },
        "sig-b26",
    )
    .unwrap();
    let base = signature_base(&p, &httpsig::authority(&p).unwrap(), &params).unwrap();
    assert_eq!(
        base,
        "\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n\"@method\": POST\n\"@path\": /foo\n\"@authority\": example.com\n\"content-type\": application/json\n\"content-length\": 18\n\"@signature-params\": (\"date\" \"@method\" \"@path\" \"@authority\" \"content-type\" \"content-length\");created=1618884473;keyid=\"test-key-ed25519\""
    );
    let expected = STANDARD
        .decode("wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==")
        .unwrap();
    assert_eq!(key.sign_sync(base.as_bytes()).to_vec(), expected);
    key.public_key()
        .verify(key.algorithm(), base.as_bytes(), &expected)
        .unwrap();
}

#[test]
fn round_trip_exact_with_hostile_values() {
    let (signer, verifier) = setup();
    let id = Identity::builder("sub,ject;\"1\"", "Zoë \"the\" admin, jr.")
        .email("zoë+x@example.com")
        .display_name("Zoë O'Brien; 100% \\ real")
        .groups([
            "a,b",
            "c d",
            "naïve",
            "%41",
            "emoji 🚀",
            "semi;colon",
            "quote\"d",
        ])
        .auth("password", UnixTime::from_secs(-5))
        .unwrap()
        .kind(IdentityKind::Service)
        .session("s=1,2")
        .build()
        .unwrap();
    let p = signed(&signer, &id, Binding::NONE);
    for (name, value) in &p.headers {
        assert!(
            value.as_bytes().iter().all(|b| (0x20..0x7f).contains(b)),
            "{name} must be visible ASCII"
        );
    }
    let v = verifier.verify_parts(&p, NOW).unwrap();
    assert_eq!(v.identity, id);
    assert_eq!(&*v.route, "reports");
    assert_eq!(&*v.key_id, "gw-1");
    assert!(!v.request_bound);
    assert_eq!(v.nonce, None);
    assert_eq!(v.expires, NOW.saturating_add(signer.lifetime()));
}

#[test]
fn headers_look_as_documented() {
    let (signer, _) = setup();
    let p = signed(&signer, &alice(), Binding::NONE);
    let h = |n: &str| p.headers.get(n).unwrap().to_str().unwrap().to_owned();
    assert_eq!(h("hexon-user"), "alice");
    assert_eq!(h("hexon-subject"), "u-1");
    assert_eq!(h("hexon-kind"), "user");
    assert_eq!(h("hexon-email"), "alice@example.com");
    assert_eq!(h("hexon-name"), "Alice%20Example");
    assert_eq!(h("hexon-groups"), "admins, eng");
    assert_eq!(h("hexon-auth"), "password=1699999000, webauthn=1699999900");
    assert_eq!(h("hexon-session"), "s-1");
    assert_eq!(h("hexon-route"), "reports");
    assert_eq!(
        h("signature-input"),
        "hexon=(\"hexon-user\" \"hexon-subject\" \"hexon-kind\" \"hexon-email\" \"hexon-name\" \"hexon-groups\" \"hexon-auth\" \"hexon-session\" \"hexon-route\" \"@authority\");created=1700000000;expires=1700000120;keyid=\"gw-1\";alg=\"ed25519\";tag=\"hexon\""
    );
    assert!(h("signature").starts_with("hexon=:") && h("signature").ends_with(':'));
}

#[test]
fn minimal_identity_round_trips_without_optional_headers() {
    let (signer, verifier) = setup();
    let id = Identity::builder("svc-9", "ci-bot")
        .kind(IdentityKind::Service)
        .build()
        .unwrap();
    let p = signed(&signer, &id, Binding::NONE);
    for absent in [
        "hexon-email",
        "hexon-name",
        "hexon-groups",
        "hexon-auth",
        "hexon-session",
    ] {
        assert!(p.headers.get(absent).is_none(), "{absent}");
    }
    assert_eq!(verifier.verify_parts(&p, NOW).unwrap().identity, id);
}

#[test]
fn tampering_is_refused() {
    let (signer, verifier) = setup();
    let good = signed(&signer, &alice(), Binding::NONE);
    assert!(verifier.verify_parts(&good, NOW).is_ok());

    let mut p = good.clone();
    p.headers
        .insert("hexon-user", HeaderValue::from_static("mallory"));
    assert_eq!(
        verifier.verify_parts(&p, NOW),
        Err(VerifyError::Signature(SignatureError::Invalid))
    );

    let mut p = good.clone();
    p.headers.insert(
        "hexon-groups",
        HeaderValue::from_static("admins, eng, root"),
    );
    assert!(verifier.verify_parts(&p, NOW).is_err());

    let mut p = good.clone();
    p.headers
        .append("hexon-groups", HeaderValue::from_static("root"));
    assert!(verifier.verify_parts(&p, NOW).is_err());

    let mut p = good.clone();
    p.headers
        .insert("hexon-impersonate", HeaderValue::from_static("root"));
    assert_eq!(
        verifier.verify_parts(&p, NOW),
        Err(VerifyError::UncoveredIdentityHeader(
            "hexon-impersonate".into()
        ))
    );

    let mut p = good.clone();
    p.headers.remove("hexon-email");
    assert!(matches!(
        verifier.verify_parts(&p, NOW),
        Err(VerifyError::Base(_))
    ));

    // Another authority this backend also serves: the signature does not cover it.
    let mut p = good.clone();
    p.headers
        .insert("host", HeaderValue::from_static("h.example"));
    assert_eq!(
        verifier.verify_parts(&p, NOW),
        Err(VerifyError::Signature(SignatureError::Invalid))
    );
    let mut p = good.clone();
    p.headers
        .insert("host", HeaderValue::from_static("other.example.com"));
    assert_eq!(
        verifier.verify_parts(&p, NOW),
        Err(VerifyError::WrongAuthority("other.example.com".into()))
    );

    // Unbound signatures do not cover the path: that is what binding is for.
    let mut p = good.clone();
    p.uri = "/elsewhere".parse().unwrap();
    assert!(verifier.verify_parts(&p, NOW).is_ok());

    let mut p = good.clone();
    let sig = p.headers.get("signature").unwrap().to_str().unwrap();
    let b64 = sig.trim_start_matches("hexon=:").trim_end_matches(':');
    let mut raw = STANDARD.decode(b64).unwrap();
    raw[10] ^= 1;
    let flipped = format!("hexon=:{}:", STANDARD.encode(raw));
    p.headers
        .insert("signature", HeaderValue::from_str(&flipped).unwrap());
    assert_eq!(
        verifier.verify_parts(&p, NOW),
        Err(VerifyError::Signature(SignatureError::Invalid))
    );

    let mut p = good.clone();
    p.headers.remove("signature");
    assert_eq!(verifier.verify_parts(&p, NOW), Err(VerifyError::Missing));
}

#[test]
fn time_and_key_checks() {
    let (signer, verifier) = setup();
    let p = signed(&signer, &alice(), Binding::NONE);
    let skew = 30;
    assert!(
        verifier
            .verify_parts(&p, UnixTime::from_secs(NOW.as_secs() + 120 + skew))
            .is_ok()
    );
    assert_eq!(
        verifier.verify_parts(&p, UnixTime::from_secs(NOW.as_secs() + 121 + skew)),
        Err(VerifyError::Expired)
    );
    assert_eq!(
        verifier.verify_parts(&p, UnixTime::from_secs(NOW.as_secs() - skew - 1)),
        Err(VerifyError::NotYetValid)
    );
    let strict = Verifier::new(verifier.keys().as_ref().clone(), ["app.example.com"])
        .with_max_lifetime(Duration::from_secs(60));
    assert_eq!(
        strict.verify_parts(&p, NOW),
        Err(VerifyError::LifetimeTooLong)
    );

    // A key that retired before now no longer verifies.
    let mut keys = KeySet::new();
    keys.insert(
        "gw-1",
        key("gw-1").public_key(),
        Some(UnixTime::from_secs(NOW.as_secs() - 1)),
    )
    .unwrap();
    verifier.set_keys(keys);
    assert_eq!(
        verifier.verify_parts(&p, NOW),
        Err(VerifyError::UnknownKey("gw-1".into()))
    );

    // Foreign key with the same kid: refused even though the cache saw this signature.
    let other = Ed25519Signer::from_seed("gw-1", &[9u8; 32]).unwrap();
    let mut keys = KeySet::new();
    keys.insert("gw-1", other.public_key(), None).unwrap();
    verifier.set_keys(keys);
    assert_eq!(
        verifier.verify_parts(&p, NOW),
        Err(VerifyError::Signature(SignatureError::Invalid))
    );
}

#[test]
fn algorithm_confusion_is_refused() {
    let ec = Arc::new(P256Signer::generate("ec-1").unwrap());
    let mut keys = KeySet::new();
    keys.insert("ec-1", ec.public_key(), None).unwrap();
    let verifier = Verifier::new(keys, ["app.example.com"]);
    let signer = HttpSigner::new(ec);
    let mut p = signed(&signer, &alice(), Binding::NONE);
    assert!(verifier.verify_parts(&p, NOW).is_ok(), "P-256 works too");
    let input = p.headers.get("signature-input").unwrap().to_str().unwrap();
    let lied = input.replace("alg=\"ecdsa-p256-sha256\"", "alg=\"ed25519\"");
    p.headers
        .insert("signature-input", HeaderValue::from_str(&lied).unwrap());
    assert!(matches!(
        verifier.verify_parts(&p, NOW),
        Err(VerifyError::Signature(
            SignatureError::AlgorithmMismatch { .. }
        ))
    ));
}

#[test]
fn request_binding() {
    let (signer, verifier) = setup();
    let strict = Verifier::new(verifier.keys().as_ref().clone(), ["app.example.com"])
        .require_request_binding(true);
    let unbound = signed(&signer, &alice(), Binding::NONE);
    assert_eq!(
        strict.verify_parts(&unbound, NOW),
        Err(VerifyError::NotCovered("@method, @path and @query"))
    );

    let a = signed(&signer, &alice(), Binding::REQUEST);
    let b = signed(&signer, &alice(), Binding::REQUEST);
    let va = strict.verify_parts(&a, NOW).unwrap();
    let vb = strict.verify_parts(&b, NOW).unwrap();
    assert!(va.request_bound);
    assert_ne!(va.nonce, vb.nonce, "a fresh nonce per request");
    assert_eq!(va.nonce.as_deref().map(str::len), Some(22));

    for (method, uri) in [
        ("POST", "/reports?year=2026"),
        ("GET", "/reports/x?year=2026"),
        ("GET", "/reports?year=2027"),
        ("GET", "/reports"),
    ] {
        let mut p = a.clone();
        p.method = method.parse().unwrap();
        p.uri = uri.parse().unwrap();
        assert_eq!(
            strict.verify_parts(&p, NOW),
            Err(VerifyError::Signature(SignatureError::Invalid)),
            "{method} {uri}"
        );
    }
}

#[test]
fn body_binding_needs_and_exposes_the_digest() {
    let (signer, verifier) = setup();
    let mut p = parts("POST", "/upload", "app.example.com");
    let err = block_on(signer.sign(&alice(), "r", Binding::REQUEST_AND_BODY, &mut p, NOW));
    assert!(matches!(err, Err(HttpSigError::MissingContentDigest)));

    p.headers
        .insert("content-digest", httpsig::content_digest(b"hello"));
    block_on(signer.sign(&alice(), "r", Binding::REQUEST_AND_BODY, &mut p, NOW)).unwrap();
    let v = verifier.verify_parts(&p, NOW).unwrap();
    let expected: [u8; 32] = {
        use sha2::Digest as _;
        sha2::Sha256::digest(b"hello").into()
    };
    assert_eq!(v.content_digest_sha256(), Some(expected));

    p.headers
        .insert("content-digest", httpsig::content_digest(b"evil"));
    assert!(verifier.verify_parts(&p, NOW).is_err());
}

#[test]
fn unbound_signatures_are_cached_per_session_route_and_identity() {
    let (signer, _) = setup();
    let sign = |id: &Identity, route: &str, now: UnixTime| {
        let mut p = parts("GET", "/", "app.example.com");
        let s = block_on(signer.sign(id, route, Binding::NONE, &mut p, now)).unwrap();
        (s.cached, p.headers.get("signature").unwrap().clone())
    };
    let (c1, s1) = sign(&alice(), "r", NOW);
    let (c2, s2) = sign(&alice(), "r", UnixTime::from_secs(NOW.as_secs() + 59));
    assert!(!c1 && c2);
    assert_eq!(s1, s2);
    // Half the lifetime has passed: sign anew.
    let (c3, _) = sign(&alice(), "r", UnixTime::from_secs(NOW.as_secs() + 60));
    assert!(!c3);
    // Another route, or the same session after a step-up, is a new signature.
    assert!(!sign(&alice(), "other", NOW).0);
    let stepped = alice()
        .to_builder()
        .auth("totp", NOW)
        .unwrap()
        .build()
        .unwrap();
    let (c4, s4) = sign(&stepped, "r", UnixTime::from_secs(NOW.as_secs() + 61));
    assert!(!c4);
    assert_ne!(s4, s1);
    // Bound signatures are never cached.
    let mut p = parts("GET", "/", "app.example.com");
    assert!(
        !block_on(signer.sign(&alice(), "r", Binding::REQUEST, &mut p, NOW))
            .unwrap()
            .cached
    );
    // Rotation drops cached signatures.
    signer.set_signer(key("gw-2"));
    let (c5, _) = sign(&alice(), "r", UnixTime::from_secs(NOW.as_secs() + 62));
    assert!(!c5);
}

#[test]
fn spoofed_headers_are_replaced_when_signing() {
    let (signer, verifier) = setup();
    let mut p = parts("GET", "/", "app.example.com");
    p.headers
        .insert("hexon-user", HeaderValue::from_static("root"));
    p.headers
        .insert("hexon-admin", HeaderValue::from_static("yes"));
    p.headers
        .insert("signature", HeaderValue::from_static("forged=:AA==:"));
    block_on(signer.sign(&alice(), "r", Binding::NONE, &mut p, NOW)).unwrap();
    assert!(p.headers.get("hexon-admin").is_none());
    assert_eq!(p.headers.get_all("hexon-user").iter().count(), 1);
    assert_eq!(
        verifier.verify_parts(&p, NOW).unwrap().identity.username(),
        "alice"
    );
}

#[test]
fn oversized_group_lists_are_refused_clearly() {
    let (signer, verifier) = setup();
    let groups: Vec<String> = (0..3000).map(|i| format!("group-number-{i:05}")).collect();
    let big = Identity::builder("u", "u")
        .groups(groups.iter().map(String::as_str))
        .build()
        .unwrap();
    let mut p = parts("GET", "/", "h");
    let err = block_on(signer.sign(&big, "r", Binding::NONE, &mut p, NOW)).unwrap_err();
    assert!(matches!(
        err,
        HttpSigError::HeaderTooLarge {
            header: "Hexon-Groups",
            max: 16384,
            ..
        }
    ));
    assert!(err.to_string().contains("raise the limit"));

    let roomy = HttpSigner::new(key("gw-1")).with_max_header_bytes(128 * 1024);
    let mut p = parts("GET", "/", "h");
    block_on(roomy.sign(&big, "r", Binding::NONE, &mut p, NOW)).unwrap();
    assert_eq!(verifier.verify_parts(&p, NOW).unwrap().identity, big);
}

#[test]
fn malformed_signature_fields() {
    let (signer, verifier) = setup();
    let good = signed(&signer, &alice(), Binding::NONE);
    let input = good
        .headers
        .get("signature-input")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let cases: Vec<(String, &str)> = vec![
        ("hexon=".into(), "empty"),
        ("hexon=(".into(), "unterminated"),
        ("hexon=abc".into(), "item"),
        (input.replace("tag=\"hexon\"", "tag=\"other\""), "tag"),
        (input.replace(";tag=\"hexon\"", ""), "no tag"),
        (input.replace(";keyid=\"gw-1\"", ""), "no keyid"),
        (input.replace("created=", "created=\"1\";x="), "type"),
        (input.replace(";expires=1700000120", ""), "no expires"),
        (
            input.replace("\"@authority\"", "\"@authority\";req"),
            "component param",
        ),
        (
            input.replace("\"@authority\"", "\"@authority\" \"@authority\""),
            "duplicate",
        ),
        (
            input.replace("\"@authority\"", "\"@status\""),
            "unknown derived",
        ),
        (
            input.replace("\"@authority\"", "\"Host\""),
            "upper-case field",
        ),
        (
            input.replace(";alg=\"ed25519\"", ";alg=\"hmac-sha256\""),
            "alg",
        ),
        (input.replace(";tag", ";foo=1;tag"), "unknown param"),
        (input.replace("\"hexon-route\" ", ""), "route not covered"),
        (input.replace("\"@authority\"", ""), "authority not covered"),
        (format!("{input}, {}", "x".repeat(9000)), "too large"),
        ("hexon=(\"a\"".into(), "bad list"),
    ];
    for (value, what) in cases {
        let mut p = good.clone();
        p.headers
            .insert("signature-input", HeaderValue::from_str(&value).unwrap());
        let r = verifier.verify_parts(&p, NOW);
        assert!(r.is_err(), "{what}: {r:?}");
    }
    for sig in [
        "hexon=AAAA",
        "hexon=:!!:",
        "hexon=:AA==:;x=1",
        "other=:AA==:",
        "",
    ] {
        let mut p = good.clone();
        p.headers
            .insert("signature", HeaderValue::from_str(sig).unwrap());
        assert!(verifier.verify_parts(&p, NOW).is_err(), "{sig}");
    }
    let mut p = good.clone();
    p.headers.insert(
        "hexon-user",
        HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
    );
    assert!(verifier.verify_parts(&p, NOW).is_err());
}

#[test]
fn identity_value_encoding_is_canonical() {
    for (plain, encoded) in [
        ("alice", "alice"),
        ("a b", "a%20b"),
        ("a,b;c\"d%e\\f", "a%2Cb%3Bc%22d%25e%5Cf"),
        ("é", "%C3%A9"),
        ("line\nbreak", "line%0Abreak"),
    ] {
        assert_eq!(encode_value(plain), encoded);
        assert_eq!(decode_value(encoded).unwrap(), plain);
    }
    for bad in [
        "%41", "%c3%a9", "a b", "%C3", "%C3%28", "%", "%G0", "a,b", "é",
    ] {
        assert!(decode_value(bad).is_err(), "{bad}");
    }
}

#[test]
fn missing_authority_is_an_error() {
    let (signer, _) = setup();
    let (mut p, ()) = Request::get("/").body(()).unwrap().into_parts();
    assert!(matches!(
        block_on(signer.sign(&alice(), "r", Binding::NONE, &mut p, NOW)),
        Err(HttpSigError::MissingAuthority)
    ));
    p.headers.append("host", HeaderValue::from_static("a"));
    p.headers.append("host", HeaderValue::from_static("b"));
    assert!(matches!(
        block_on(signer.sign(&alice(), "r", Binding::NONE, &mut p, NOW)),
        Err(HttpSigError::MissingAuthority)
    ));
}

#[test]
fn authority_normalisation() {
    let a = |uri: &str, host: Option<&str>| {
        let mut b = Request::get(uri);
        if let Some(h) = host {
            b = b.header("host", h);
        }
        httpsig::authority(&b.body(()).unwrap().into_parts().0)
    };
    assert_eq!(
        a("http://Example.COM:80/x", None).as_deref(),
        Some("example.com")
    );
    assert_eq!(
        a("https://example.com:443/x", None).as_deref(),
        Some("example.com")
    );
    assert_eq!(
        a("https://example.com:8443/x", None).as_deref(),
        Some("example.com:8443")
    );
    assert_eq!(
        a("/x", Some("App.example.com:8080")).as_deref(),
        Some("app.example.com:8080")
    );
    // Origin form behind a TLS terminator: the scheme is unknown, both defaults go.
    assert_eq!(
        a("/x", Some("app.example.com:443")).as_deref(),
        Some("app.example.com")
    );
    assert_eq!(
        a("/x", Some("app.example.com:80")).as_deref(),
        Some("app.example.com")
    );
    assert_eq!(
        a("https://app.example.com/x", Some("APP.example.com:443")).as_deref(),
        Some("app.example.com")
    );
    assert_eq!(a("https://a.example/x", Some("b.example")), None);
    assert_eq!(a("/x", None), None);
}

#[test]
fn signatures_are_pinned_to_authorities_and_routes() {
    let (signer, verifier) = setup();
    let keys = verifier.keys().as_ref().clone();
    let p = signed(&signer, &alice(), Binding::NONE);

    // Captured at app.example.com, replayed at another backend.
    let other = Verifier::new(keys.clone(), ["b.example.com"]);
    assert_eq!(
        other.verify_parts(&p, NOW),
        Err(VerifyError::WrongAuthority("app.example.com".into()))
    );
    // Configured names are compared normalised (case, default ports).
    assert!(
        Verifier::new(keys.clone(), ["APP.example.com:443"])
            .verify_parts(&p, NOW)
            .is_ok()
    );
    assert!(
        Verifier::dangerous_accept_any_authority(keys.clone())
            .verify_parts(&p, NOW)
            .is_ok()
    );
    let pinned = Verifier::new(keys.clone(), ["app.example.com"]).with_routes(["billing"]);
    assert_eq!(
        pinned.verify_parts(&p, NOW),
        Err(VerifyError::WrongRoute("reports".into()))
    );
    let pinned = Verifier::new(keys, ["app.example.com"]).with_routes(["billing", "reports"]);
    assert!(pinned.verify_parts(&p, NOW).is_ok());

    // The URI says one host, Host another: refused, whatever was signed.
    let mut confused = p.clone();
    confused.uri = "http://app.example.com/reports?year=2026".parse().unwrap();
    assert!(verifier.verify_parts(&confused, NOW).is_ok());
    confused
        .headers
        .insert("host", HeaderValue::from_static("evil.example.com"));
    assert_eq!(
        verifier.verify_parts(&confused, NOW),
        Err(VerifyError::NoAuthority)
    );
}

#[test]
fn underscore_spellings_are_identity_headers_too() {
    let (signer, verifier) = setup();
    let mut p = parts("GET", "/", "app.example.com");
    for (n, v) in [
        ("hexon_groups", "root"),
        ("signature_input", "x"),
        ("hexon_user", "root"),
    ] {
        p.headers.insert(n, HeaderValue::from_static(v));
    }
    block_on(signer.sign(&alice(), "r", Binding::NONE, &mut p, NOW)).unwrap();
    for n in ["hexon_groups", "signature_input", "hexon_user"] {
        assert!(p.headers.get(n).is_none(), "{n} must be stripped");
    }
    assert!(verifier.verify_parts(&p, NOW).is_ok());
    // Added after signing (straight to the backend): refused, not ignored.
    p.headers
        .insert("hexon_groups", HeaderValue::from_static("root"));
    assert_eq!(
        verifier.verify_parts(&p, NOW),
        Err(VerifyError::UncoveredIdentityHeader("hexon_groups".into()))
    );
    // Look-alikes are not identity headers.
    let mut q = parts("GET", "/", "app.example.com");
    q.headers.insert("hexonuser", HeaderValue::from_static("x"));
    q.headers
        .insert("signatures", HeaderValue::from_static("x"));
    block_on(signer.sign(&alice(), "r", Binding::NONE, &mut q, NOW)).unwrap();
    assert!(q.headers.get("hexonuser").is_some() && q.headers.get("signatures").is_some());
    assert!(verifier.verify_parts(&q, NOW).is_ok());
}

#[test]
fn ecdsa_signatures_are_not_cached_and_malleated_forms_still_verify_fully() {
    let ec = Arc::new(P256Signer::generate("ec-1").unwrap());
    let mut keys = KeySet::new();
    keys.insert("ec-1", ec.public_key(), None).unwrap();
    let verifier = Verifier::new(keys.clone(), ["app.example.com"]);
    let p = signed(&HttpSigner::new(ec), &alice(), Binding::NONE);
    assert!(verifier.verify_parts(&p, NOW).is_ok());
    assert!(verifier.verify_parts(&p, NOW).is_ok());
    // Swapping in another key under the same id: refused.
    let mut swapped = KeySet::new();
    swapped
        .insert(
            "ec-1",
            P256Signer::generate("ec-1").unwrap().public_key(),
            None,
        )
        .unwrap();
    verifier.set_keys(swapped);
    assert_eq!(
        verifier.verify_parts(&p, NOW),
        Err(VerifyError::Signature(SignatureError::Invalid))
    );
}

#[test]
fn malformed_times_and_authorities() {
    let (signer, verifier) = setup();
    let p = signed(&signer, &alice(), Binding::NONE);
    let input = p.headers.get("signature-input").unwrap().to_str().unwrap();
    let mut q = p.clone();
    q.headers.insert(
        "signature-input",
        HeaderValue::from_str(&input.replace("expires=1700000120", "expires=1699999999")).unwrap(),
    );
    assert_eq!(
        verifier.verify_parts(&q, NOW),
        Err(VerifyError::Malformed("expires is before created"))
    );
    let mut q = p.clone();
    q.headers.remove("host");
    assert_eq!(
        verifier.verify_parts(&q, NOW),
        Err(VerifyError::NoAuthority)
    );
    let mut q = p;
    q.headers
        .append("host", HeaderValue::from_static("app.example.com"));
    assert_eq!(
        verifier.verify_parts(&q, NOW),
        Err(VerifyError::NoAuthority)
    );
}

fn any_text() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[a-zA-Z0-9 ,;\"%\\\\=@.é🚀\\t-]{1,24}").unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn sign_verify_round_trip(
        subject in any_text(),
        user in any_text(),
        email in proptest::option::of(any_text()),
        groups in proptest::collection::vec(any_text(), 0..12),
        session in proptest::option::of(any_text()),
        route in any_text(),
        bound in any::<bool>(),
    ) {
        let (signer, verifier) = setup();
        let mut b = Identity::builder(subject, user).groups(groups);
        if let Some(e) = email { b = b.email(e); }
        if let Some(s) = session { b = b.session(s); }
        let id = b.build().unwrap();
        let mut p = parts("PUT", "/a/b?c=d", "h.example");
        let binding = if bound { Binding::REQUEST } else { Binding::NONE };
        block_on(signer.sign(&id, &route, binding, &mut p, NOW)).unwrap();
        let v = verifier.verify_parts(&p, NOW).unwrap();
        prop_assert_eq!(v.identity, id);
        prop_assert_eq!(&*v.route, route.as_str());
    }

    #[test]
    fn decode_never_panics_and_is_canonical(raw in "\\PC{0,40}") {
        if let Ok(s) = decode_value(&raw) {
            prop_assert_eq!(encode_value(&s), raw);
        }
    }

    #[test]
    fn random_signature_headers_never_verify(input in "\\PC{0,200}", sig in "\\PC{0,100}") {
        let (signer, verifier) = setup();
        let mut p = signed(&signer, &alice(), Binding::NONE);
        if let (Ok(i), Ok(s)) = (HeaderValue::from_str(&input), HeaderValue::from_str(&sig)) {
            p.headers.insert("signature-input", i);
            p.headers.insert("signature", s);
            prop_assert!(verifier.verify_parts(&p, NOW).is_err());
        }
    }
}

#[test]
fn decoding_agrees_with_encoding_for_every_byte() {
    for b in 0u8..=0x7f {
        let raw = (b as char).to_string();
        let enc = encode_value(&raw);
        assert_eq!(decode_value(&enc).unwrap(), raw, "byte {b:#04x}");
        let escaped = format!("%{b:02X}");
        // Exactly one of the two spellings is canonical.
        assert_ne!(
            decode_value(&raw).is_ok(),
            decode_value(&escaped).is_ok(),
            "byte {b:#04x}"
        );
    }
}

#[test]
fn the_authority_is_lower_cased_without_the_default_port_and_must_be_unambiguous() {
    let of = |uri: &str, hosts: &[&str]| {
        let uri: http::Uri = uri.parse().unwrap();
        let mut headers = http::HeaderMap::new();
        for h in hosts {
            headers.append(http::header::HOST, HeaderValue::from_str(h).unwrap());
        }
        httpsig::authority_of(&uri, &headers)
    };
    // Host only: either default port goes, case does not matter.
    assert_eq!(of("/", &["Example.COM:80"]).as_deref(), Some("example.com"));
    assert_eq!(
        of("/", &["EXAMPLE.com:443"]).as_deref(),
        Some("example.com")
    );
    assert_eq!(
        of("/", &[" Api.Example.com:8443 "]).as_deref(),
        Some("api.example.com:8443")
    );
    // With a scheme, only that scheme's default port is removed.
    assert_eq!(
        of("https://Example.com:443/x", &[]).as_deref(),
        Some("example.com")
    );
    assert_eq!(
        of("http://example.com:443/", &[]).as_deref(),
        Some("example.com:443")
    );
    assert_eq!(
        of("http://example.com:443/", &["example.com:443"]).as_deref(),
        Some("example.com:443")
    );
    // Disagreeing, repeated or odd authorities give none.
    assert_eq!(of("https://a.example/", &["b.example"]), None);
    assert_eq!(of("/", &["a.example", "a.example"]), None);
    assert_eq!(of("/", &["user@a.example"]), None);
    assert_eq!(of("/", &["a.example/x"]), None);
    assert_eq!(of("/", &["a.example\\x"]), None);
    assert_eq!(of("/", &[""]), None);
    assert_eq!(of("/", &[]), None);
}

/// `host_authority` (the express lane's reading of a lone `Host`) agrees
/// with `authority_of`, borrowed or normalized.
#[test]
fn host_authority_agrees_with_authority_of() {
    for host in [
        "app.example.com",
        "App.Example.COM",
        "app.example.com:80",
        "app.example.com:443",
        "app.example.com:8443",
        "[2001:db8::1]:443",
        "[2001:DB8::1]",
        "127.0.0.1:9",
        " spaced.example ",
        "user@host",
        "a/b",
        "back\\slash",
        "",
    ] {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::HOST,
            http::HeaderValue::from_str(host).unwrap(),
        );
        let uri: http::Uri = "/x".parse().unwrap();
        assert_eq!(
            hexon_core::httpsig::host_authority(host.as_bytes()).map(|a| a.into_owned()),
            hexon_core::httpsig::authority_of(&uri, &headers),
            "{host:?}"
        );
    }
    assert_eq!(hexon_core::httpsig::host_authority(b"a\x01b"), None);
}
