//! The gateway's Prometheus metrics, served at `GET /metrics` on `ingest.listen`. Labels
//! from closed sets only (vendor keys, outcomes): never a path, a header or a body.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::http::ConnectionCounts;

/// What became of one request.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Outcome {
    /// 200: confirmed by the broker.
    accepted,
    /// 401: a bad or missing signature or credential.
    unauthorized,
    /// 400: a forwarded header too long or not text.
    bad_request,
    /// 413: a body over `limits.max_body_bytes`.
    too_large,
    /// 503: waited its whole request timeout for a turn (`ingest.max_concurrent_requests`).
    busy,
    /// 503: the broker blocks publishing (a resource alarm): not sent.
    broker_blocked,
    /// 503: the broker unreachable, a nack, a return, or no confirm in time.
    unavailable,
}

impl Outcome {
    const ALL: [Outcome; 7] = [
        Outcome::accepted,
        Outcome::unauthorized,
        Outcome::bad_request,
        Outcome::too_large,
        Outcome::busy,
        Outcome::broker_blocked,
        Outcome::unavailable,
    ];
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    vendor: &'static str,
    outcome: Outcome,
}

/// Every metric the gateway exports.
pub struct IngestMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Family<RequestLabels, Histogram, fn() -> Histogram>,
    in_progress: Gauge,
    connections_open: Gauge,
    connections_evicted: Counter,
    connections_refused: Counter,
    connections: Arc<ConnectionCounts>,
}

impl IngestMetrics {
    /// `memory_bound` is what the settings bound the process's memory to (stated, and
    /// checked by a test).
    pub fn new(memory_bound: u64, connections: Arc<ConnectionCounts>) -> IngestMetrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let durations: Family<RequestLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(request_duration_histogram);
        let in_progress = Gauge::default();
        let connections_open = Gauge::default();
        let connections_evicted = Counter::default();
        let connections_refused = Counter::default();
        // Every series from the start, at 0: an alert on `increase` sees the first 401.
        for vendor in crate::canonical::Vendor::ALL {
            for outcome in Outcome::ALL {
                let labels = RequestLabels {
                    vendor: vendor.key(),
                    outcome,
                };
                requests.get_or_create(&labels).get();
                drop(durations.get_or_create(&labels));
            }
        }
        let bound = Gauge::<i64>::default();
        bound.set(i64::try_from(memory_bound).unwrap_or(i64::MAX));
        registry.register(
            "normalizer_ingest_requests",
            "Webhook requests answered, by vendor and outcome (accepted, unauthorized, bad_request, too_large, busy, broker_blocked, unavailable)",
            requests.clone(),
        );
        registry.register(
            "normalizer_ingest_request_duration_seconds",
            "From a request's headers read to its answer, by vendor and outcome (for accepted: until the broker confirmed)",
            durations.clone(),
        );
        registry.register(
            "normalizer_ingest_requests_in_progress",
            "Requests holding a turn (their bodies in memory), at most ingest.max_concurrent_requests",
            in_progress.clone(),
        );
        registry.register(
            "normalizer_ingest_connections_open",
            "Client connections open, at most ingest.max_connections",
            connections_open.clone(),
        );
        registry.register(
            "normalizer_ingest_connections_evicted",
            "Idle client connections closed to make room for a new one (ingest.max_connections)",
            connections_evicted.clone(),
        );
        registry.register(
            "normalizer_ingest_connections_refused",
            "New client connections closed at once because every open one was busy",
            connections_refused.clone(),
        );
        registry.register(
            "normalizer_ingest_memory_bound_bytes",
            "The most memory the settings let the gateway use (see docs/gateways.md)",
            bound,
        );
        IngestMetrics {
            registry,
            requests,
            durations,
            in_progress,
            connections_open,
            connections_evicted,
            connections_refused,
            connections,
        }
    }

    pub fn answered(&self, vendor: &'static str, outcome: Outcome, took: std::time::Duration) {
        let labels = RequestLabels { vendor, outcome };
        self.requests.get_or_create(&labels).inc();
        self.durations
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    pub fn in_progress(&self) -> &Gauge {
        &self.in_progress
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let c = &self.connections;
        self.connections_open
            .set(i64::try_from(c.open.load(Ordering::Relaxed)).unwrap_or(i64::MAX));
        let catch_up = |counter: &Counter, now: u64| {
            let seen = counter.get();
            if now > seen {
                counter.inc_by(now - seen);
            }
        };
        catch_up(&self.connections_evicted, c.evicted.load(Ordering::Relaxed));
        catch_up(&self.connections_refused, c.refused.load(Ordering::Relaxed));
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Buckets from 5 ms (a confirm on an idle broker) to the longest request timeout worth
/// having (30 s).
fn request_duration_histogram() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_series_exists_from_the_start() {
        let metrics = IngestMetrics::new(1, Arc::default());
        let text = metrics.encode();
        assert!(
            text.contains(
                r#"normalizer_ingest_requests_total{vendor="authenticate",outcome="unauthorized"} 0"#
            ),
            "{text}"
        );
        metrics.answered(
            "deel",
            Outcome::accepted,
            std::time::Duration::from_millis(30),
        );
        let text = metrics.encode();
        for line in [
            r#"normalizer_ingest_requests_total{vendor="deel",outcome="accepted"} 1"#,
            r#"normalizer_ingest_request_duration_seconds_bucket{le="0.025",vendor="deel",outcome="accepted"} 0"#,
            r#"normalizer_ingest_request_duration_seconds_bucket{le="0.05",vendor="deel",outcome="accepted"} 1"#,
            r#"normalizer_ingest_request_duration_seconds_count{vendor="deel",outcome="busy"} 0"#,
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }
}
