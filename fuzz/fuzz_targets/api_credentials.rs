//! What API clients and forward-auth proxies send: `Authorization: HMAC …`
//! values, API keys, RFC 9421 client signatures, and forward-auth question
//! headers must be parsed or refused, never panic, and nothing random may
//! verify.
#![no_main]

use hexon_core::UnixTime;
use hexon_proxy::clients::{ClientTable, hmac};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    hexon_proxy::forward_auth::fuzz_question(data);
    hexon_proxy::clients::signature::fuzz_client_signature(data);
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(p) = hmac::parse(text) {
        assert_eq!(p.signature.len(), 32);
        let _ = p.check_time(1_700_000_000);
        let m = p.message("GET", "/x", b"body");
        assert!(m.ends_with(b"\nbody"));
    }
    let table = ClientTable::default();
    assert!(table.check_api_key(text, UnixTime::from_secs(0)).is_err());
});
