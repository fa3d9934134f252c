#![no_main]
// Placeholder until its owner fills it in.
libfuzzer_sys::fuzz_target!(|_data: &[u8]| {});
