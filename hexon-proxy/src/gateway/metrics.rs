//! Prometheus metrics for the admin listener's `/metrics`.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    decision: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

/// Request counters, decision counters and latency histograms.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    upstream_errors: Family<RouteLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with Hexon's metrics.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("hexon");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            // 100 µs .. ~13 s
            Histogram::new(exponential_buckets(0.0001, 2.0, 18))
        });
        let upstream_errors = Family::<RouteLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests by route, policy decision and status",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request to response head",
            latency.clone(),
        );
        registry.register(
            "upstream_errors",
            "Upstream failures answered 502/504",
            upstream_errors.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            upstream_errors,
        }
    }

    /// Record one finished request.
    pub fn observe(&self, route: &str, decision: &'static str, status: u16, seconds: f64) {
        let route = if route.is_empty() { "-" } else { route }.to_owned();
        self.requests
            .get_or_create(&RequestLabels {
                route: route.clone(),
                decision,
                status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels {
                route: route.clone(),
            })
            .observe(seconds);
        if status == 502 || status == 504 {
            self.upstream_errors
                .get_or_create(&RouteLabels { route })
                .inc();
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Shared metrics.
pub type SharedMetrics = Arc<Metrics>;
