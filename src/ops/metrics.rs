//! The worker's Prometheus metrics, served as text at `GET /metrics`.
//!
//! Labels are from closed sets only (vendor keys, canonical types, error kinds): never an
//! id, a body or an error text, so a metric cannot carry personal data and the number of
//! series is bounded by the type table.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::canonical::Vendor;
use crate::normalize::ErrorKind;

/// The `vendor` label of a dead letter whose vendor was not found.
pub(crate) const UNKNOWN_VENDOR: &str = "unknown";

/// The `Content-Type` of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    vendor: &'static str,
    r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeadLetterLabels {
    vendor: &'static str,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// Every metric the worker exports, and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    consumed: Counter,
    events_published: Family<EventLabels, Counter>,
    events_unrouted: Family<EventLabels, Counter>,
    dead_lettered: Family<DeadLetterLabels, Counter>,
    redeliveries: Counter,
    unroutable: Counter,
    taps_given_up: Counter,
    loops_stopped: Counter,
    publish_retries: Counter,
    processing: Histogram,
    end_to_end_lag: Histogram,
    in_flight: Gauge,
    broker_connected: Gauge,
    reconnects: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Delivery-to-ack time buckets, in seconds: 1 ms to about 65 s.
fn processing_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 17)
}

/// Receipt-to-confirmed buckets, in seconds: 100 ms to an hour, with 30 s (the lag
/// objective of the alert rules) a boundary.
pub const END_TO_END_LAG_BUCKETS: [f64; 15] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let metrics = Metrics {
            consumed: Counter::default(),
            events_published: Family::default(),
            events_unrouted: Family::default(),
            dead_lettered: Family::default(),
            redeliveries: Counter::default(),
            unroutable: Counter::default(),
            taps_given_up: Counter::default(),
            loops_stopped: Counter::default(),
            publish_retries: Counter::default(),
            processing: Histogram::new(processing_buckets()),
            end_to_end_lag: Histogram::new(END_TO_END_LAG_BUCKETS),
            in_flight: Gauge::default(),
            broker_connected: Gauge::default(),
            reconnects: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "normalizer_messages_consumed",
            "Raw messages received from the raw queue",
            metrics.consumed.clone(),
        );
        registry.register(
            "normalizer_events_published",
            "Canonical events stored in a team's queue (confirmed), by vendor and canonical type",
            metrics.events_published.clone(),
        );
        registry.register(
            "normalizer_events_unrouted",
            "Canonical events nobody is bound for, kept on the unrouted queue (confirmed), by vendor and canonical type",
            metrics.events_unrouted.clone(),
        );
        registry.register(
            "normalizer_loops_stopped",
            "Messages that came back to the raw queue through the worker's own exchanges (a binding made by hand), put in the dead-letter queue as they were",
            metrics.loops_stopped.clone(),
        );
        registry.register(
            "normalizer_tap_given_up",
            "Copies for observers (the tap exchange) given up on after failing past the retry budget",
            metrics.taps_given_up.clone(),
        );
        registry.register(
            "normalizer_dead_lettered",
            "Raw messages dead-lettered by the worker (confirmed), by vendor and error kind",
            metrics.dead_lettered.clone(),
        );
        registry.register(
            "normalizer_redeliveries",
            "Raw messages received with the redelivered flag set",
            metrics.redeliveries.clone(),
        );
        registry.register(
            "normalizer_unroutable",
            "Publishes the broker returned as unroutable (no queue, and no alternate exchange took them)",
            metrics.unroutable.clone(),
        );
        registry.register(
            "normalizer_publish_retries",
            "Publishes retried after a transient failure",
            metrics.publish_retries.clone(),
        );
        registry.register(
            "normalizer_processing_seconds",
            "Time from a raw message's delivery to its settlement (ack or reject)",
            metrics.processing.clone(),
        );
        registry.register(
            "normalizer_end_to_end_lag_seconds",
            "Time from a raw message's receipt by the gateway (x-received-at, else the AMQP timestamp) to its events being confirmed; messages that carry neither are not counted",
            metrics.end_to_end_lag.clone(),
        );
        registry.register(
            "normalizer_in_flight",
            "Raw messages consumed and not yet settled",
            metrics.in_flight.clone(),
        );
        registry.register(
            "normalizer_broker_connected",
            "1 while a broker session is open, else 0",
            metrics.broker_connected.clone(),
        );
        registry.register(
            "normalizer_reconnects",
            "Broker sessions lost and reopened",
            metrics.reconnects.clone(),
        );
        registry.register(
            "normalizer_build",
            "The worker's version",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        // Every vendor and kind at 0 from the start: the first dead letter is then an
        // increase to the alert rules, which take a series' first sample as its baseline.
        // Both sets are closed (the vendor keys and "unknown", the error kinds).
        let vendors = Vendor::ALL.map(Vendor::key);
        for vendor in vendors.into_iter().chain(std::iter::once(UNKNOWN_VENDOR)) {
            for kind in ErrorKind::ALL {
                metrics
                    .dead_lettered
                    .get_or_create(&DeadLetterLabels {
                        vendor,
                        kind: kind.as_str(),
                    })
                    .get();
            }
        }
        Metrics {
            registry,
            ..metrics
        }
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn add_consumed(&self, redelivered: bool) {
        self.consumed.inc();
        if redelivered {
            self.redeliveries.inc();
        }
    }

    /// One raw message's events, confirmed: one per canonical type in `types`.
    pub fn add_events(&self, vendor: &'static str, types: impl Iterator<Item = &'static str>) {
        for t in types {
            self.events_published
                .get_or_create(&EventLabels { vendor, r#type: t })
                .inc();
        }
    }

    /// One raw message's events kept on the unrouted queue: one per type in `types`.
    pub fn add_events_kept(&self, vendor: &'static str, types: impl Iterator<Item = &'static str>) {
        for t in types {
            self.events_unrouted
                .get_or_create(&EventLabels { vendor, r#type: t })
                .inc();
        }
    }

    pub fn add_loop_stopped(&self) {
        self.loops_stopped.inc();
    }

    pub fn add_taps_given_up(&self, n: u64) {
        self.taps_given_up.inc_by(n);
    }

    pub fn add_dead_lettered(&self, vendor: &'static str, kind: &'static str) {
        self.dead_lettered
            .get_or_create(&DeadLetterLabels { vendor, kind })
            .inc();
    }

    pub fn add_unroutable(&self) {
        self.unroutable.inc();
    }

    pub fn add_publish_retries(&self, n: u64) {
        self.publish_retries.inc_by(n);
    }

    pub fn observe_processing(&self, seconds: f64) {
        self.processing.observe(seconds);
    }

    /// A raw message's events confirmed `seconds` after the gateway received it.
    pub fn observe_end_to_end_lag(&self, seconds: f64) {
        self.end_to_end_lag.observe(seconds);
    }

    pub fn set_in_flight(&self, n: usize) {
        self.in_flight.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn set_broker_connected(&self, connected: bool) {
        self.broker_connected.set(i64::from(connected));
    }

    pub fn add_reconnect(&self) {
        self.reconnects.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_exported_under_its_documented_name() {
        let m = Metrics::new();
        m.add_consumed(true);
        m.add_events(
            "deel",
            ["deel.contract.created", "deel.contract.created"].into_iter(),
        );
        m.add_dead_lettered("unknown", "invalid_json");
        m.observe_processing(0.003);
        m.observe_end_to_end_lag(12.0);
        let text = m.encode();
        for line in [
            "normalizer_messages_consumed_total 1",
            "normalizer_redeliveries_total 1",
            "normalizer_events_published_total{vendor=\"deel\",type=\"deel.contract.created\"} 2",
            "normalizer_dead_lettered_total{vendor=\"unknown\",kind=\"invalid_json\"} 1",
            "normalizer_unroutable_total 0",
            "normalizer_tap_given_up_total 0",
            "normalizer_loops_stopped_total 0",
            "normalizer_publish_retries_total 0",
            "normalizer_processing_seconds_count 1",
            "normalizer_end_to_end_lag_seconds_count 1",
            "normalizer_end_to_end_lag_seconds_bucket{le=\"10.0\"} 0",
            "normalizer_end_to_end_lag_seconds_bucket{le=\"15.0\"} 1",
            "normalizer_end_to_end_lag_seconds_bucket{le=\"30.0\"} 1",
            "normalizer_in_flight 0",
            "normalizer_broker_connected 0",
            "normalizer_reconnects_total 0",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        let version = format!(
            "normalizer_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.contains(&version), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }

    /// Every vendor x kind dead-letter series exists at 0 before the first dead letter, so
    /// the first one is an increase to the alert rules (`increase()` takes a series' first
    /// sample as its baseline).
    #[test]
    fn every_dead_letter_series_exists_at_zero_from_the_start() {
        let text = Metrics::new().encode();
        let vendors = crate::canonical::Vendor::ALL
            .iter()
            .map(|v| v.key())
            .chain(std::iter::once("unknown"));
        let mut expected = 0;
        for vendor in vendors {
            for kind in crate::normalize::ErrorKind::ALL {
                let line = format!(
                    "normalizer_dead_lettered_total{{vendor=\"{vendor}\",kind=\"{}\"}} 0",
                    kind.as_str()
                );
                assert!(text.contains(&line), "{line} missing from:\n{text}");
                expected += 1;
            }
        }
        let exported = text
            .lines()
            .filter(|l| l.starts_with("normalizer_dead_lettered_total{"))
            .count();
        assert_eq!(
            exported, expected,
            "only the closed set is exported:\n{text}"
        );
    }

    /// Every `normalizer_*` series the alert rules and the dashboard in `deploy/` use is
    /// one the worker or the gateway exports (a renamed metric would leave an alert that never fires).
    #[test]
    fn the_monitoring_kit_names_only_exported_metrics() {
        let m = Metrics::new();
        m.add_events("deel", std::iter::once("deel.contract.created"));
        m.add_dead_lettered("deel", "invalid_json");
        // The gateway's metrics too: the kit alerts on ingest's answers.
        let ingest = crate::gateway::metrics::IngestMetrics::new(0, Default::default());
        let exported: std::collections::BTreeSet<String> = [m.encode(), ingest.encode()]
            .concat()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next())
            .map(str::to_owned)
            .collect();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
        let mut named = std::collections::BTreeSet::new();
        for file in [
            "prometheus/alerts.yml",
            "prometheus/alerts.test.yml",
            "grafana/dashboards/webhook-normalizer.json",
        ] {
            let text = std::fs::read_to_string(root.join(file)).unwrap();
            for (i, _) in text.match_indices("normalizer_") {
                // A metric name, not a queue (normalizer.raw) or a job label.
                let name: String = text[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if i > 0 && text.as_bytes()[i - 1].is_ascii_alphanumeric() {
                    continue;
                }
                named.insert((file, name));
            }
        }
        assert!(
            named.len() >= 10,
            "the kit names the worker's metrics: {named:?}"
        );
        for (file, name) in &named {
            assert!(
                exported.contains(name),
                "{file} names {name}, which is not exported"
            );
        }
    }
}
