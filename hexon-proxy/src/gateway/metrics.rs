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

/// The series the last request on a thread counted in (see
/// [`Metrics::observe`]).
struct Last {
    /// Which `Metrics` ([`Metrics::id`]: tests run several, one after the
    /// other at the same address).
    metrics: u64,
    route: Arc<str>,
    decision: &'static str,
    status: u16,
    requests: Counter,
    latency: Histogram,
}

thread_local! {
    static LAST: std::cell::RefCell<Option<Last>> = const { std::cell::RefCell::new(None) };
}

/// Request counters, decision counters and latency histograms.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    upstream_errors: Family<RouteLabels, Counter>,
    express: Counter,
    /// Unique per instance, for the per-thread memo of [`observe`](Self::observe).
    id: u64,
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
            id: {
                static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            },
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
        let route = match route {
            Some(r) if !r.is_empty() => r,
            _ => &self.no_route,
        };
        // The series of the last request on this thread, when this one has
        // the same labels (under load, nearly every request): no lookup in
        // the families (a lock and two hashes of the labels each).
        let hit = LAST.with(|last| {
            let last = last.borrow();
            let same = last.as_ref().filter(|l| {
                l.metrics == self.id
                    && Arc::ptr_eq(&l.route, route)
                    && std::ptr::eq(l.decision, decision)
                    && l.status == status
            });
            same.map(|l| {
                l.requests.inc();
                l.latency.observe(seconds);
            })
            .is_some()
        });
        if !hit {
            let name = RouteName(route.clone());
            let requests = self
                .requests
                .get_or_create(&RequestLabels {
                    route: name.clone(),
                    decision,
                    status,
                })
                .clone();
            let latency = self
                .latency
                .get_or_create(&RouteLabels { route: name })
                .clone();
            requests.inc();
            latency.observe(seconds);
            LAST.with(|last| {
                *last.borrow_mut() = Some(Last {
                    metrics: self.id,
                    // Held, so the pointer compared above is never another
                    // route's reusing this one's memory.
                    route: route.clone(),
                    decision,
                    status,
                    requests,
                    latency,
                });
            });
        }
        if status == 502 || status == 504 {
            self.upstream_errors
                .get_or_create(&RouteLabels {
                    route: RouteName(route.clone()),
                })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn count(m: &Metrics, series: &str) -> String {
        m.encode()
            .lines()
            .find(|l| l.starts_with(series))
            .map(|l| l.rsplit(' ').next().unwrap_or_default().to_owned())
            .unwrap_or_default()
    }

    #[test]
    fn repeated_labels_count_in_their_own_series_and_instance() {
        let a = Metrics::new();
        let b = Metrics::new();
        let r: Arc<str> = Arc::from("app");
        let other: Arc<str> = Arc::from("app");
        a.observe(Some(&r), "allow", 200, 0.001);
        a.observe(Some(&r), "allow", 200, 0.001);
        b.observe(Some(&r), "allow", 200, 0.001);
        a.observe(Some(&r), "allow", 200, 0.001);
        a.observe(Some(&other), "allow", 200, 0.001);
        a.observe(Some(&r), "allow", 502, 0.001);
        a.observe(Some(&r), "deny", 502, 0.001);
        a.observe(None, "none", 404, 0.001);
        let ok = r#"hexon_requests_total{route="app",decision="allow",status="200"}"#;
        assert_eq!(count(&a, ok), "4");
        assert_eq!(count(&b, ok), "1");
        assert_eq!(
            count(
                &a,
                r#"hexon_requests_total{route="app",decision="allow",status="502"}"#
            ),
            "1"
        );
        assert_eq!(
            count(&a, r#"hexon_upstream_errors_total{route="app"}"#),
            "2"
        );
        assert_eq!(
            count(&a, r#"hexon_request_duration_seconds_count{route="app"}"#),
            "6"
        );
        assert_eq!(
            count(
                &a,
                r#"hexon_requests_total{route="-",decision="none",status="404"}"#
            ),
            "1"
        );
    }
}
