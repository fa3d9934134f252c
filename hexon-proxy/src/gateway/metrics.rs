//! Prometheus metrics for the admin listener's `/metrics`.

use std::sync::{Arc, Mutex, PoisonError, Weak};

use hexon_core::rt::ConnectionThreads;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric as _, LabelValueEncoder,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A route name as a label value: shared, so looking a series up costs no
/// copy of the name.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct RouteName(Arc<str>);

impl EncodeLabelValue for RouteName {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&&*self.0, encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: RouteName,
    decision: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: RouteName,
}

/// Request counters, decision counters and latency histograms.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    upstream_errors: Family<RouteLabels, Counter>,
    express: Counter,
    /// The route label of requests no route matched.
    no_route: Arc<str>,
    /// The connection threads, read at each scrape.
    threads: ThreadsCollector,
}

/// Open connections per connection thread, read at each scrape: a thread
/// keeps the connections placed on it, so an uneven spread (one thread
/// busy, another idle) shows here, and in the latency.
#[derive(Clone, Debug, Default)]
struct ThreadsCollector(Arc<Mutex<Weak<ConnectionThreads>>>);

impl Collector for ThreadsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let threads = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .upgrade();
        let live = threads.map(|t| t.live()).unwrap_or_default();
        if live.is_empty() {
            return Ok(());
        }
        let mut family = encoder.encode_descriptor(
            "connection_thread_connections",
            "Open HTTP connections served by each connection thread",
            None,
            MetricType::Gauge,
        )?;
        for (thread, n) in live.into_iter().enumerate() {
            let gauge = ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX));
            gauge.encode(family.encode_family(&[("thread", thread)])?)?;
        }
        Ok(())
    }
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
        let express = Counter::default();
        registry.register(
            "express_requests",
            "Requests served on the express lane (also counted in hexon_requests)",
            express.clone(),
        );
        let threads = ThreadsCollector::default();
        registry.register_collector(Box::new(threads.clone()));
        Metrics {
            registry,
            requests,
            latency,
            upstream_errors,
            express,
            no_route: Arc::from("-"),
            threads,
        }
    }

    /// Report the open connections of each of `threads` (the gauge
    /// `hexon_connection_thread_connections{thread="i"}`) for as long as
    /// they run; a later call replaces them.
    pub fn watch_threads(&self, threads: &Arc<ConnectionThreads>) {
        *self
            .threads
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Arc::downgrade(threads);
    }

    /// Count a request the express lane served (recorded with
    /// [`observe`](Self::observe) too).
    pub fn observe_express(&self) {
        self.express.inc();
    }

    /// Record one finished request.
    pub fn observe(
        &self,
        route: Option<&Arc<str>>,
        decision: &'static str,
        status: u16,
        seconds: f64,
    ) {
        let route = RouteName(match route {
            Some(r) if !r.is_empty() => r.clone(),
            _ => self.no_route.clone(),
        });
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
