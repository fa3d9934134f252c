//! Hostile bytes on both SQL bastions' wires: the PostgreSQL startup-packet
//! parsers and relay (client messages, then server answers), and the MySQL
//! handshake-response parser and relay (commands, each followed by the
//! packets that answer it). Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hexon_sql::pg::fuzz_session(data);
    hexon_sql::mysql::fuzz_session(data);
});
