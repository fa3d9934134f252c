//! Fuzz the reader of upstream HTTP/1.1 answers (response head, framing,
//! chunked body, trailers): arbitrary bytes never panic, never yield more
//! body than was sent, and the result is the same however the bytes are
//! split into reads.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    hexon_proxy::fuzzing::h1_response(data);
});
