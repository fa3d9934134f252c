//! `Hexon-*` identity header values. The fuzzer chooses the raw header values;
//! the target signs them correctly so the verifier gets past the signature and
//! must decode them: every outcome is a typed result, never a panic, and a
//! value that decodes must re-encode to exactly the bytes that were signed.
#![no_main]

use hexon_core::httpsig::{SignatureParams, Verifier, decode_value, encode_value, signature_base};
use hexon_core::{Ed25519Signer, KeySet, Signer, UnixTime};
use http::HeaderValue;

const NAMES: [&str; 9] = [
    "hexon-user",
    "hexon-subject",
    "hexon-kind",
    "hexon-email",
    "hexon-name",
    "hexon-groups",
    "hexon-auth",
    "hexon-session",
    "hexon-route",
];

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(v) = decode_value(s) {
            assert_eq!(encode_value(&v), s);
        }
    }
    let (mut parts, ()) = http::Request::get("/").header("host", "h").body(()).unwrap().into_parts();
    let mut components = Vec::new();
    for (name, value) in NAMES.iter().zip(data.split(|&b| b == b'\n')) {
        let Ok(v) = HeaderValue::from_bytes(value) else { return };
        parts.headers.append(*name, v);
        components.push((*name).to_owned());
    }
    components.push("@authority".to_owned());
    let now = UnixTime::from_secs(1_700_000_000);
    let key = Ed25519Signer::from_seed("k", &[1; 32]).unwrap();
    let mut params = SignatureParams::default();
    params.components = components;
    params.created = Some(now);
    params.expires = Some(now);
    params.key_id = Some("k".into());
    params.tag = Some("hexon".into());
    let Ok(base) = signature_base(&parts, "h", &params) else { return };
    let sig = key.sign_sync(base.as_bytes());
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(sig);
    parts.headers.insert("signature-input", HeaderValue::from_str(&format!("hexon={}", params.serialize())).unwrap());
    parts.headers.insert("signature", HeaderValue::from_str(&format!("hexon=:{b64}:")).unwrap());
    let mut keys = KeySet::new();
    keys.insert("k", key.public_key(), None).unwrap();
    let _ = Verifier::new(keys, ["h"]).verify_parts(&parts, now);
});
