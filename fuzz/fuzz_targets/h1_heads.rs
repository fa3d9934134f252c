//! Fuzz the listener's own HTTP/1.1 head reader: arbitrary bytes (a
//! connection's first reads, several pipelined heads) must never panic; a
//! head handed to hyper or still incomplete leaves the bytes exactly as they
//! were (hyper reads them next), and a head taken is exactly what httparse
//! reads there: method, target, every header field.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    hexon_proxy::listener::fuzz_h1_heads(data);
});
