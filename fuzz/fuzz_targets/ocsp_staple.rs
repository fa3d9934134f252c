//! Fuzz the OCSP response check of the listeners' stapling: arbitrary
//! responder output never panics, and anything accepted is stapled as
//! received and not stale (a signature from the fixed issuer is out of
//! reach, so in practice everything must be refused).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    hexon_proxy::tls::fuzz_ocsp_response(data);
});
