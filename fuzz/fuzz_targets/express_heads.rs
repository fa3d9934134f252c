//! Fuzz the express lane's upstream head writer: request heads read as the
//! listener reads them, rewritten as the lane rewrites them, must come out
//! as exactly one well-formed head (no early end, no second request, no
//! second copy of a field the gateway sets) with method, target and every
//! copied field intact.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    hexon_proxy::listener::fuzz_express_head(data);
});
