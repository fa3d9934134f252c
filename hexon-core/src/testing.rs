//! Helpers for tests that start real servers (feature `test-util`).
//!
//! They panic with a message saying what is missing: they run in tests only.
#![allow(clippy::panic)]

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// The first port [`free_port`] hands out below the kernel's ephemeral range.
const FLOOR: u16 = 20_000;

/// A TCP port on 127.0.0.1 that was free when asked, for a configuration
/// that must name its port before the program under test binds it.
///
/// `bind("127.0.0.1:0")`-then-close is racy: the port it returns lies in
/// the kernel's ephemeral range, so any outgoing connection or other
/// `bind(0)` on the machine may take it before the server binds it (seen
/// in CI as "Address already in use"). This picks ports *below* that range
/// (`/proc/sys/net/ipv4/ip_local_port_range`), which the kernel never hands
/// out by itself. Ports are spread by process id and handed out once per
/// process, so concurrent tests of one binary never get the same one.
///
/// # Panics
///
/// When no port between 20000 and the ephemeral range is free.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ceiling = ephemeral_floor().max(FLOOR + 1_000);
    let span = u32::from(ceiling - FLOOR);
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // `span` is below 65536, so the remainder always fits in a u16.
        let Ok(offset) = u16::try_from((start + n) % span) else {
            continue;
        };
        let port = FLOOR + offset;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {FLOOR} and {ceiling} on 127.0.0.1");
}

/// The lowest port the kernel picks for `bind(0)` and outgoing connections.
fn ephemeral_floor() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_outside_the_ephemeral_range_and_bindable() {
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        let mut sorted = ports.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), ports.len(), "{ports:?}");
        for p in ports {
            assert!((FLOOR..ephemeral_floor()).contains(&p), "{p}");
        }
        let p = free_port();
        TcpListener::bind(("127.0.0.1", p)).expect("the port is free");
    }
}
