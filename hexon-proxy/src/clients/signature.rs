//! RFC 9421 HTTP message signatures by API clients: the stronger mode next
//! to the API Gatekeeper HMAC format ([`super::hmac`]).
//!
//! A client signs with one of its credentials — an HMAC secret
//! (`alg="hmac-sha256"`) or an Ed25519 key whose public half it registered
//! (`alg="ed25519"`) — and names it by credential id in `keyid`:
//!
//! ```text
//! Content-Digest: sha-256=:<base64 SHA-256 of the body>:
//! Signature-Input: sig=("@method" "@authority" "@path" "@query" "content-digest");created=1700000000;nonce="r4nd0m";keyid="cred_…"
//! Signature: sig=:<base64 signature>:
//! ```
//!
//! The gateway requires, beyond a valid signature:
//!
//! - exactly one signature on the request (any label);
//! - `@method`, `@authority` and `@path` covered, `@query` too when the
//!   request has a query — unlike the API Gatekeeper format, the query is
//!   its own component, so it cannot be moved into the path or dropped;
//! - `content-digest` covered whenever the request has a body (or carries
//!   the field), with a `sha-256` or `sha-512` member (RFC 9530), every
//!   one given matching the body;
//! - `created` within ±300 s of the gateway's clock, `expires` (if given)
//!   not passed;
//! - a `nonce`, remembered (put-if-absent in the shared KV store for twice
//!   the window) only after the signature verified, as for HMAC; a nonce
//!   seen before is a replay.
//!
//! Behind nginx `auth_request` (`/authz`) the body never reaches the
//! gateway: a covered `Content-Digest` is still signed, but comparing it
//! with the body is left to the upstream, and whether a body was there to
//! cover cannot be known.

use std::sync::Arc;

use hexon_core::UnixTime;
use hexon_core::httpsig::{
    SignatureParams, authority, content_digests, parse_signature_fields, signature_base,
    signature_labels,
};
use hexon_core::policy::Credential;
use hexon_core::store::KvStore;
use http::request::Parts;
use sha2::{Digest as _, Sha256};

use super::{ClientRegistry, SIGNATURE_METHOD, SignedBody, hmac};
use crate::authn::{Authenticator, AuthnFuture, AuthnResult};
use crate::ext::ClientSignature;
use crate::forward_auth::ForwardAuth;

/// Longest accepted `nonce`.
const MAX_NONCE: usize = 128;

/// Checks API clients' RFC 9421 signatures (see the [module docs](self)).
/// Needs [`crate::strip::StripIdentityLayer`] (which moves the fields to a
/// [`ClientSignature`] extension) and [`super::SignedBodyLayer`] outside the
/// authenticate layer.
#[derive(Clone, Debug)]
pub struct HttpSignatureAuth {
    registry: ClientRegistry,
    nonces: Arc<dyn KvStore>,
}

impl HttpSignatureAuth {
    /// Verify against `registry`; remember nonces in `nonces` (a KV bucket
    /// whose entries live at least [`hmac::WINDOW_SECS`] × 2).
    pub fn new(registry: ClientRegistry, nonces: Arc<dyn KvStore>) -> Self {
        HttpSignatureAuth { registry, nonces }
    }
}

/// A signature whose form is acceptable, ready to be verified.
#[derive(Debug)]
pub(crate) struct Checked {
    pub(crate) key_id: String,
    pub(crate) alg: Option<String>,
    pub(crate) base: String,
    pub(crate) signature: Vec<u8>,
    pub(crate) nonce: String,
}

/// Everything about a client signature but the cryptography: its form, the
/// covered components, its age, and the body digest. Public input only, so
/// the order of checks leaks nothing.
pub(crate) fn check(
    parts: &Parts,
    fields: &http::HeaderMap,
    now: UnixTime,
) -> Result<Checked, &'static str> {
    let labels = signature_labels(fields).map_err(|_| "malformed Signature-Input")?;
    let [label] = labels.as_slice() else {
        return Err("exactly one signature is accepted on a request");
    };
    let (params, signature) =
        parse_signature_fields(fields, label).map_err(|_| "malformed signature fields")?;
    let created = params.created.ok_or("the signature has no created time")?;
    if created.as_secs().abs_diff(now.as_secs()) > hmac::WINDOW_SECS.unsigned_abs() {
        return Err("signature created outside the accepted window (±300 s)");
    }
    if params.expires.is_some_and(|e| e <= now) {
        return Err("signature expired");
    }
    let key_id = params.key_id.clone().ok_or("the signature has no keyid")?;
    let nonce = match &params.nonce {
        Some(n) if !n.is_empty() && n.len() <= MAX_NONCE => n.clone(),
        Some(_) => return Err("nonce is empty or too long"),
        None => return Err("the signature has no nonce"),
    };
    covers(&params, parts)?;
    check_digest(&params, parts)?;
    let authority = authority(parts).ok_or("no single authority on the request")?;
    let base = signature_base(parts, &authority, &params)
        .map_err(|_| "a covered component is missing or not ASCII")?;
    Ok(Checked {
        key_id,
        alg: params.alg_name.clone(),
        base,
        signature,
        nonce,
    })
}

fn covers(params: &SignatureParams, parts: &Parts) -> Result<(), &'static str> {
    let has = |c: &str| params.components.iter().any(|x| x == c);
    if !(has("@method") && has("@authority") && has("@path")) {
        return Err("the signature must cover @method, @authority and @path");
    }
    if parts.uri.query().is_some() && !has("@query") {
        return Err("the request has a query: the signature must cover @query");
    }
    Ok(())
}

fn check_digest(params: &SignatureParams, parts: &Parts) -> Result<(), &'static str> {
    let covered = params.components.iter().any(|c| c == "content-digest");
    let forward_auth = parts.extensions.get::<ForwardAuth>().is_some();
    let body = parts.extensions.get::<SignedBody>();
    if body.is_none() && !forward_auth {
        // Without the held body nothing says whether there was one to
        // cover: fail closed (the body layer is missing from the stack).
        return Err("signed request without its body");
    }
    let has_body = body.is_some_and(|b| !b.0.is_empty());
    if (has_body || parts.headers.contains_key("content-digest")) && !covered {
        return Err("the request has a body: the signature must cover content-digest");
    }
    if !covered {
        return Ok(());
    }
    let digests = content_digests(&parts.headers)
        .filter(|d| d.sha256.is_some() || d.sha512.is_some())
        .ok_or("Content-Digest has no valid sha-256 or sha-512 member")?;
    if forward_auth {
        // The proxy asking does not send the body; the upstream checks it.
        return Ok(());
    }
    let body = body.ok_or("signed request without its body")?;
    // Every member given must match: a right sha-256 cannot vouch for a
    // wrong sha-512 the upstream might check instead.
    let sha256_ok = digests
        .sha256
        .is_none_or(|d| Sha256::digest(&body.0)[..] == d);
    let sha512_ok = digests
        .sha512
        .is_none_or(|d| sha2::Sha512::digest(&body.0)[..] == d);
    if !(sha256_ok && sha512_ok) {
        return Err("Content-Digest does not match the body");
    }
    Ok(())
}

impl Authenticator for HttpSignatureAuth {
    fn authenticate<'a>(&'a self, parts: &'a Parts, now: UnixTime) -> AuthnFuture<'a> {
        let Some(ClientSignature(fields)) = parts.extensions.get::<ClientSignature>() else {
            return AuthnFuture::ready(AuthnResult::NoCredential);
        };
        AuthnFuture::new(async move {
            let c = match check(parts, fields, now) {
                Ok(c) => c,
                Err(why) => return AuthnResult::invalid(why),
            };
            let table = self.registry.load();
            let entry = match table.check_signature(
                &c.key_id,
                c.alg.as_deref(),
                c.base.as_bytes(),
                &c.signature,
                now,
            ) {
                Ok(e) => e.clone(),
                Err(r) => return AuthnResult::invalid(r.as_str()),
            };
            drop(table);
            // Only now, with a valid signature, is the nonce spent.
            let scope = format!("rfc9421\0{}\0{}", c.key_id, c.nonce);
            super::authn::spend_nonce(&*self.nonces, &scope, &entry, SIGNATURE_METHOD, now).await
        })
    }

    fn name(&self) -> &str {
        "http_signature"
    }

    fn credential(&self, _: &Parts) -> Credential {
        Credential::HttpSignature
    }
}

/// For the fuzz targets only (not a stable API): `data` as header lines
/// (`name: value`) of a signed request to `api.example.com`, checked as a
/// client signature against a table with one Ed25519 and one HMAC key.
/// Nothing random may verify.
#[doc(hidden)]
pub fn fuzz_client_signature(data: &[u8]) {
    let mut b = http::Request::post("/orders/1?x=1").header("host", "api.example.com");
    let mut fields = http::HeaderMap::new();
    for line in data.split(|c| *c == b'\n') {
        let Some(at) = line.iter().position(|c| *c == b':') else {
            continue;
        };
        let (name, value) = line.split_at(at);
        let value = value.get(1..).unwrap_or_default();
        let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name),
            http::HeaderValue::from_bytes(value),
        ) else {
            continue;
        };
        if n == "signature" || n == "signature-input" {
            fields.append(n, v);
        } else {
            b = b.header(n, v);
        }
    }
    let Ok(req) = b.body(()) else { return };
    let (mut parts, ()) = req.into_parts();
    parts
        .extensions
        .insert(SignedBody(bytes::Bytes::from_static(b"{}")));
    let now = UnixTime::from_secs(1_700_000_000);
    if let Ok(c) = check(&parts, &fields, now) {
        let table = super::ClientTable::fuzz_table();
        let verdict = table.check_signature(
            &c.key_id,
            c.alg.as_deref(),
            c.base.as_bytes(),
            &c.signature,
            now,
        );
        assert!(verdict.is_err(), "a fuzzed signature verified");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: UnixTime = UnixTime::from_secs(1_700_000_000);

    fn parts(uri: &str, body: &[u8], extra: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::post(uri).header("host", "api.example.com");
        for (k, v) in extra {
            b = b.header(*k, *v);
        }
        let (mut p, ()) = b.body(()).unwrap().into_parts();
        p.extensions
            .insert(SignedBody(bytes::Bytes::copy_from_slice(body)));
        p
    }

    fn fields(input: &str, sig: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert("signature-input", input.parse().unwrap());
        h.insert("signature", sig.parse().unwrap());
        h
    }

    const SIG: &str = "sig=:AAAA:";
    const ALL: &str = r#"("@method" "@authority" "@path" "@query")"#;

    fn input(components: &str, params: &str) -> String {
        format!("sig={components}{params}")
    }

    #[test]
    fn well_formed_signatures_pass_the_checks() {
        let p = parts("/a?b=1", b"", &[]);
        let f = fields(
            &input(
                ALL,
                r#";created=1700000000;nonce="n";keyid="cred_1";alg="hmac-sha256""#,
            ),
            SIG,
        );
        let c = check(&p, &f, NOW).unwrap();
        assert_eq!(c.key_id, "cred_1");
        assert_eq!(c.alg.as_deref(), Some("hmac-sha256"));
        assert_eq!(c.nonce, "n");
        assert!(c.base.starts_with("\"@method\": POST\n\"@authority\": api.example.com\n\"@path\": /a\n\"@query\": ?b=1\n"), "{}", c.base);
        assert!(c.base.ends_with(r#""@signature-params": ("@method" "@authority" "@path" "@query");created=1700000000;nonce="n";keyid="cred_1";alg="hmac-sha256""#), "{}", c.base);
    }

    #[test]
    fn malformed_and_hostile_signatures_are_refused_with_a_reason() {
        let ok = r#";created=1700000000;nonce="n";keyid="k""#;
        let cases: Vec<(String, &str, &str)> = vec![
            (
                input(ALL, ";created=1700000000;keyid=\"k\""),
                SIG,
                "no nonce",
            ),
            (input(ALL, ";nonce=\"n\";keyid=\"k\""), SIG, "no created"),
            (
                input(ALL, ";created=1700000000;nonce=\"n\""),
                SIG,
                "no keyid",
            ),
            (
                input(ALL, ";created=1699999000;nonce=\"n\";keyid=\"k\""),
                SIG,
                "outside the accepted window",
            ),
            (
                input(ALL, ";created=1700001000;nonce=\"n\";keyid=\"k\""),
                SIG,
                "outside the accepted window",
            ),
            (
                input(
                    ALL,
                    ";created=1700000000;expires=1700000000;nonce=\"n\";keyid=\"k\"",
                ),
                SIG,
                "expired",
            ),
            (
                input(
                    ALL,
                    &format!(
                        ";created=1700000000;nonce=\"{}\";keyid=\"k\"",
                        "n".repeat(129)
                    ),
                ),
                SIG,
                "too long",
            ),
            (
                input(r#"("@method" "@path" "@query")"#, ok),
                SIG,
                "must cover @method, @authority and @path",
            ),
            (
                input(r#"("@method" "@authority" "@path")"#, ok),
                SIG,
                "must cover @query",
            ),
            (
                format!("{},b={ALL}{ok}", input(ALL, ok)),
                "sig=:AAAA:, b=:AAAA:",
                "exactly one signature",
            ),
            (
                input(ALL, &format!("{ok};evil=1")),
                SIG,
                "malformed signature fields",
            ),
            (
                input(r#"("@method" "@authority" "@path" "@query" "@status")"#, ok),
                SIG,
                "malformed signature fields",
            ),
            (
                input(
                    r#"("@method" "@authority" "@path" "@query" "x-missing")"#,
                    ok,
                ),
                SIG,
                "missing or not ASCII",
            ),
            ("sig=(".into(), SIG, "malformed Signature-Input"),
            (
                input(ALL, ok),
                "sig=\"not bytes\"",
                "malformed signature fields",
            ),
            (input(ALL, ok), "other=:AAAA:", "malformed signature fields"),
            (
                format!("sig={ALL}{ok}{}", ";x=1".repeat(3000)),
                SIG,
                "malformed Signature-Input",
            ),
        ];
        let p = parts("/a?b=1", b"", &[]);
        for (input, sig, want) in cases {
            let err = check(&p, &fields(&input, sig), NOW).unwrap_err();
            assert!(
                err.contains(want),
                "{input:.80}: got {err:?}, want {want:?}"
            );
        }
    }

    #[test]
    fn bodies_need_a_matching_covered_digest() {
        let covered = r#"("@method" "@authority" "@path" "content-digest");created=1700000000;nonce="n";keyid="k""#;
        let bare = r#"("@method" "@authority" "@path");created=1700000000;nonce="n";keyid="k""#;
        // sha-256 of "{}".
        let digest = "sha-256=:RBNvo1WzZ4oRRq0W9+hknpT7T8If536DEMBg9hyq/4o=:";
        let f = |i: &str| fields(&format!("sig={i}"), SIG);
        let with_digest = parts("/a", b"{}", &[("content-digest", digest)]);
        assert!(check(&with_digest, &f(covered), NOW).is_ok());
        let other_body = parts("/a", b"[]", &[("content-digest", digest)]);
        assert_eq!(
            check(&other_body, &f(covered), NOW).unwrap_err(),
            "Content-Digest does not match the body"
        );
        let no_digest_field = parts("/a", b"{}", &[]);
        assert!(
            check(&no_digest_field, &f(covered), NOW)
                .unwrap_err()
                .contains("no valid sha-256 or sha-512")
        );
        assert!(
            check(&no_digest_field, &f(bare), NOW)
                .unwrap_err()
                .contains("must cover content-digest")
        );
        // A digest field on the request must be covered even without a body.
        let field_only = parts("/a", b"", &[("content-digest", digest)]);
        assert!(
            check(&field_only, &f(bare), NOW)
                .unwrap_err()
                .contains("must cover content-digest")
        );
        // sha-512 (RFC 9530) works too; every member given must match.
        let sha512 = "sha-512=:J8dGcK23UHX60FjVzq97IMTneGyDuuijL2Jvl4KvNMmjPCBG72D9Knh403jin+yFGAa72aZ4ePOp8c2kgwdj/Q==:";
        let sha512_only = parts("/a", b"{}", &[("content-digest", sha512)]);
        assert!(check(&sha512_only, &f(covered), NOW).is_ok());
        let both = parts(
            "/a",
            b"{}",
            &[("content-digest", digest), ("content-digest", sha512)],
        );
        assert!(check(&both, &f(covered), NOW).is_ok());
        let one_wrong = format!("{digest}, sha-512=:{}:", "A".repeat(86) + "==");
        let one_wrong = parts("/a", b"{}", &[("content-digest", &one_wrong)]);
        assert_eq!(
            check(&one_wrong, &f(covered), NOW).unwrap_err(),
            "Content-Digest does not match the body"
        );
        let short = parts("/a", b"{}", &[("content-digest", "sha-512=:AAAA:")]);
        assert!(
            check(&short, &f(covered), NOW)
                .unwrap_err()
                .contains("no valid sha-256 or sha-512")
        );
        let other_alg = parts("/a", b"{}", &[("content-digest", "md5=:AAAA:")]);
        assert!(
            check(&other_alg, &f(covered), NOW)
                .unwrap_err()
                .contains("no valid sha-256 or sha-512")
        );
        // Without the held body the check cannot be made: refused.
        let (mut lost, ()) = http::Request::post("/a")
            .header("host", "api.example.com")
            .header("content-digest", digest)
            .body(())
            .unwrap()
            .into_parts();
        assert_eq!(
            check(&lost, &f(covered), NOW).unwrap_err(),
            "signed request without its body"
        );
        // Nor without a digest: whether there was a body is unknown.
        assert_eq!(
            check(&lost, &f(bare), NOW).unwrap_err(),
            "signed request without its body"
        );
        // At /authz the proxy sends no body: the digest is signed, the
        // upstream compares it.
        lost.extensions.insert(ForwardAuth);
        assert!(check(&lost, &f(covered), NOW).is_ok());
    }

    #[test]
    fn fuzz_hook_refuses_random_and_plausible_input() {
        fuzz_client_signature(b"");
        fuzz_client_signature(b"signature-input: sig=(\"@method\" \"@authority\" \"@path\" \"@query\");created=1700000000;nonce=\"n\";keyid=\"cred_ed\"\nsignature: sig=:AAAA:");
        fuzz_client_signature(b"signature-input: sig=(\"@method\" \"@authority\" \"@path\" \"@query\");created=1700000000;nonce=\"n\";keyid=\"cred_hmac\";alg=\"hmac-sha256\"\nsignature: sig=:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:");
    }
}
