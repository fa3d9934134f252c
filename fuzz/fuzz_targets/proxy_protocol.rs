//! Fuzz the PROXY protocol v1/v2 parser: arbitrary input must never panic,
//! a complete header never claims more bytes than it was given or than the
//! limit allows, and parsing is a pure function of the header's own bytes
//! (what follows it does not change the result).
#![no_main]

use hexon_proxy::proxy_protocol::{Parsed, V1_MAX_LEN, V2_MAX_LEN, Version, parse};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&limit, rest)) = data.split_first() else {
        return;
    };
    // Limits from tiny to the spec's maximum.
    let max = match limit {
        0 => V2_MAX_LEN,
        n => usize::from(n) * 16,
    };
    let Ok(Parsed::Complete { header, len }) = parse(rest, max) else {
        return;
    };
    assert!(len <= rest.len() && len <= max);
    if header.version == Version::V1 {
        assert!(len <= V1_MAX_LEN);
    }
    // The header alone parses to the same result.
    match parse(&rest[..len], max) {
        Ok(Parsed::Complete { header: again, len: l2 }) => {
            assert_eq!(l2, len);
            assert_eq!(again, header);
        }
        other => panic!("header bytes alone parse differently: {other:?}"),
    }
});
