//! Network input of the CA: ACME JWS bodies (and the JWKs inside), CSRs,
//! OCSP requests, SSH public keys to certify. None may panic; what parses
//! must hold its invariants.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // ACME: a flattened JWS body. A parsed JWS has a url and an algorithm
    // from the accepted list; verifying against its own key never panics.
    if let Ok(jws) = hexon_ca::acme::jws::Jws::parse(data) {
        assert!(matches!(jws.alg.as_str(), "ES256" | "ES384" | "EdDSA" | "RS256" | "HS256"));
        if let hexon_ca::acme::jws::Signer::Jwk(key) = &jws.signer {
            let _ = jws.verify(key);
            assert_eq!(key.thumbprint().len(), 43);
        }
        let _ = jws.verify_hmac(b"0123456789abcdef0123456789abcdef");
        let _ = jws.json();
    }
    // A CSR: accepted ones carry a key of an accepted kind and DER SPKI.
    if let Ok(csr) = hexon_ca::check_csr(data) {
        assert!(!csr.spki_der.is_empty());
        assert!(csr.names.len() <= 1 + data.len());
    }
    // An OCSP request: 1 to 16 certificates.
    if let Ok(req) = hexon_ca::parse_request(data) {
        assert!((1..=hexon_ca::MAX_CERTS_PER_REQUEST).contains(&req.requests.len()));
    }
    // An SSH public key, as a line and as a wire blob: accepted ones are of
    // a certifiable kind and re-encode to a line that parses to the same key.
    let line = String::from_utf8_lossy(data);
    for key in [
        hexon_ca::SshPublicKey::parse(&line),
        hexon_ca::SshPublicKey::from_bytes(data),
    ]
    .into_iter()
    .flatten()
    {
        assert!(!matches!(key.algorithm().as_str(), "ssh-dss"));
        let again = hexon_ca::SshPublicKey::parse(&key.to_openssh()).expect("re-encoded key parses");
        assert_eq!(again.to_openssh(), key.to_openssh());
        assert!(key.fingerprint().starts_with("SHA256:"));
    }
});
