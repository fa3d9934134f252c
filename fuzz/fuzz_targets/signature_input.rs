//! `Signature-Input` / `Signature` structured fields from the network: parsing
//! and verification must never panic, and random bytes must never verify.
#![no_main]

use hexon_core::httpsig::{Verifier, parse_signature_fields};
use hexon_core::{Ed25519Signer, KeySet, Signer, UnixTime};
use http::HeaderValue;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (input, sig) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let (Ok(input), Ok(sig)) = (HeaderValue::from_bytes(input), HeaderValue::from_bytes(sig)) else {
        return;
    };
    let (mut parts, ()) = http::Request::get("/x?y=1")
        .header("host", "app.example.com")
        .header("hexon-user", "alice")
        .header("hexon-subject", "u-1")
        .header("hexon-kind", "user")
        .header("hexon-route", "r")
        .body(())
        .unwrap()
        .into_parts();
    parts.headers.insert("signature-input", input);
    parts.headers.insert("signature", sig);
    let _ = parse_signature_fields(&parts.headers, "hexon");
    let key = Ed25519Signer::from_seed("k", &[1; 32]).unwrap();
    let mut keys = KeySet::new();
    keys.insert("k", key.public_key(), None).unwrap();
    let verifier = Verifier::new(keys, ["app.example.com"]);
    assert!(verifier.verify_parts(&parts, UnixTime::from_secs(1_700_000_000)).is_err());
});
