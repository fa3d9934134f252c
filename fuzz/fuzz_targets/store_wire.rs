//! What the state layer reads back from servers other processes can write
//! to: events from the bus, sealed secrets and sessions from a store.
//! Nothing may panic; whatever decodes must re-encode to the same record.
#![no_main]

use hexon_core::store::{EventRecord, SecretKeys};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = EventRecord::decode(1, data) {
        let again = EventRecord::encode(&record.node, record.published_at, &record.event)
            .expect("a decoded event encodes");
        let back = EventRecord::decode(1, &again).expect("an encoded event decodes");
        assert_eq!(back, record);
    }
    let keys = SecretKeys::new([7; 32]);
    // Accepting bytes nobody sealed would be a forgery.
    assert!(keys.open(data, b"ctx").is_err());
    let _ = keys.needs_rewrap(data);
});
