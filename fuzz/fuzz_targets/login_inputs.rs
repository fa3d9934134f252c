//! What browsers send the login host: form bodies, cookies, host names,
//! return URLs and one-time codes must be parsed or refused, never panic,
//! and no return URL outside the allowed hosts may pass.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    hexon_idp::fuzz_login_inputs(data);
});
