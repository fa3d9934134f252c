//! Fuzz the JWT verifier: arbitrary input must never panic, and nothing but a
//! token correctly signed by a trusted key may verify.
//!
//! Two modes, chosen by the first byte:
//! - raw: the rest (as UTF-8, lossily) is the token;
//! - signed: the rest is split at the first 0xFF into header and payload JSON,
//!   signed with the trusted Ed25519 key, so the fuzzer reaches header and
//!   claim parsing behind a valid signature.
#![no_main]

use std::future::Future;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll, Waker};

use hexon_core::jwt::{JwtVerifier, sign_compact, verify_compact};
use hexon_core::{Ed25519Signer, KeySet, Signer, UnixTime};

/// RFC 8037 Appendix A.1 private key (a published test key).
const SEED: [u8; 32] = [
    0x9d, 0x61, 0xb1, 0x9d, 0xef, 0xfd, 0x5a, 0x60, 0xba, 0x84, 0x4a, 0xf4, 0x92, 0xec, 0x2c, 0xc4,
    0x44, 0x49, 0xc5, 0x69, 0x7b, 0x32, 0x69, 0x19, 0x70, 0x3b, 0xac, 0x03, 0x1c, 0xae, 0x7f, 0x60,
];

/// The trusted keys: the Ed25519 key above ("ed") and the RFC 7515 A.3 P-256 key ("ec").
const JWKS: &str = r#"{"keys":[
  {"kty":"OKP","crv":"Ed25519","kid":"ed","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
  {"kty":"EC","crv":"P-256","kid":"ec","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}
]}"#;

const NOW: UnixTime = UnixTime::from_secs(1_700_000_000);

struct Fixture {
    signer: Arc<Ed25519Signer>,
    verifier: JwtVerifier,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let signer = Arc::new(Ed25519Signer::from_seed("ed", &SEED).unwrap());
    let keys = KeySet::from_jwks_json(JWKS).unwrap();
    assert_eq!(keys.get("ed", NOW), Some(&signer.public_key()));
    Fixture {
        signer,
        verifier: JwtVerifier::new(keys, "https://hexon.example", "fuzz"),
    }
});

/// The local signer's future is always ready.
fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => unreachable!("local signer is synchronous"),
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let fx = &*FIXTURE;
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        let token = String::from_utf8_lossy(rest);
        // No way to forge a signature by the trusted keys without the seed.
        assert!(fx.verifier.verify(&token, NOW).is_err());
        let _ = fx.verifier.verify_jws(&token, NOW);
        let _ = verify_compact(&token, &fx.signer.public_key(), 1 << 16);
    } else {
        let (header, payload) = match rest.iter().position(|&b| b == 0xff) {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (&br#"{"alg":"EdDSA","kid":"ed"}"#[..], rest),
        };
        let Ok(token) = block_on(sign_compact(&*fx.signer, header, payload)) else {
            return;
        };
        // A correctly signed token: header and claim checks decide.
        let _ = fx.verifier.verify(&token, NOW);
        let jws = verify_compact(&token, &fx.signer.public_key(), usize::MAX);
        if let Ok(jws) = jws {
            assert_eq!(jws.payload, payload);
        }
    }
});
