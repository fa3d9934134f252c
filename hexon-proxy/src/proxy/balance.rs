//! Load balancing: which upstream of a group gets the next request.
//!
//! [`Balance`] is the seam. Today the only implementation is
//! [`RoundRobin`]; least-request (power of two choices), health checks
//! (ejecting upstreams that fail) and circuit breakers plug in here later,
//! following the shapes of tower's `Discover` (a changing set of endpoints)
//! and `Balance` (pick by load). A balancer that tracks load or failures
//! would also want to hear how each request ended: that hook is added with
//! the first balancer that needs it.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::upstream::Upstream;

/// Chooses an upstream per request.
pub trait Balance: Send + Sync + 'static {
    /// The upstream for the next request; `None` when none is available
    /// (the proxy answers 503).
    fn pick(&self) -> Option<&Upstream>;

    /// Every upstream of the group (for logs and diagnostics).
    fn upstreams(&self) -> &[Upstream];
}

/// Round-robin over a fixed list, lock-free.
#[derive(Debug)]
pub struct RoundRobin {
    upstreams: Vec<Upstream>,
    next: AtomicUsize,
}

impl RoundRobin {
    /// Round-robin over `upstreams`, starting with the first.
    pub fn new(upstreams: Vec<Upstream>) -> Self {
        RoundRobin {
            upstreams,
            next: AtomicUsize::new(0),
        }
    }
}

impl Balance for RoundRobin {
    fn pick(&self) -> Option<&Upstream> {
        let n = self.upstreams.len();
        if n == 0 {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % n;
        self.upstreams.get(i)
    }

    fn upstreams(&self) -> &[Upstream] {
        &self.upstreams
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::GroupConfig;

    #[tokio::test]
    async fn round_robin_cycles() {
        let c = GroupConfig::default();
        let rr = RoundRobin::new(vec![
            Upstream::new("http://127.0.0.1:1", &c).unwrap(),
            Upstream::new("http://127.0.0.1:2", &c).unwrap(),
        ]);
        let picks: Vec<_> = (0..4)
            .map(|_| rr.pick().unwrap().url().to_owned())
            .collect();
        assert_eq!(
            picks,
            [
                "http://127.0.0.1:1",
                "http://127.0.0.1:2",
                "http://127.0.0.1:1",
                "http://127.0.0.1:2"
            ]
        );
        assert!(RoundRobin::new(Vec::new()).pick().is_none());
    }
}
