//! The worker's counters: the Prometheus metrics served as text at `GET /metrics`, and
//! the only store of counts; the `/readyz` snapshot reads its numbers from them
//! ([`Metrics::counts`]).
//!
//! Labels are from closed sets only (vendor keys, canonical types, error kinds): never an
//! id, a body or an error text, so a metric cannot carry personal data and the number of
//! series is bounded by the type table.

use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use serde::Serialize;

use super::Occurrence;
use crate::canonical::Vendor;
use crate::contract::DeadLetterKind;

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
    acked: Counter,
    ack_frames: Counter,
    events_published: Summed<EventLabels>,
    events_unrouted: Summed<EventLabels>,
    dead_lettered: Summed<DeadLetterLabels>,
    requeued: Counter,
    settle_failed: Counter,
    handed_to_broker: Counter,
    redeliveries: Counter,
    unroutable: Counter,
    taps_given_up: Counter,
    loops_stopped: Counter,
    publish_retries: Counter,
    processing: Histogram,
    end_to_end_lag: Histogram,
    in_flight: Gauge,
    broker_connected: Gauge,
    sessions: Counter,
    reconnects: Counter,
}

/// The counts `/readyz` shows, each read from the Prometheus series named on it (a
/// labelled family's is the sum of its series), so the two cannot disagree.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Counts {
    /// Raw messages received (`normalizer_messages_consumed_total`).
    pub consumed: u64,
    /// Raw messages received with the redelivered flag set
    /// (`normalizer_redeliveries_total`).
    pub redeliveries: u64,
    /// Raw messages acknowledged, their events or dead letter confirmed
    /// (`normalizer_messages_acked_total`).
    pub acked: u64,
    /// Canonical events stored in a team's queue
    /// (`normalizer_events_published_total{vendor,type}`, summed).
    pub events_published: u64,
    /// Canonical events nobody is bound for, kept on the unrouted queue
    /// (`normalizer_events_unrouted_total{vendor,type}`, summed).
    pub events_unrouted: u64,
    /// Raw messages dead-lettered (`normalizer_dead_lettered_total{vendor,kind}`, summed).
    pub dead_lettered: u64,
    /// Raw messages rejected for redelivery after a transient failure
    /// (`normalizer_requeued_total`).
    pub requeued: u64,
    /// Acks or rejects that did not reach the broker (the channel was gone); those
    /// messages are redelivered (`normalizer_settle_failed_total`).
    pub settle_failed: u64,
    /// Broker sessions opened, 1 + reconnects (`normalizer_sessions_total`).
    pub sessions: u64,
    /// Broker sessions lost and reopened (`normalizer_reconnects_total`).
    pub reconnects: u64,
    /// Publishes sent again after a transient failure (`normalizer_publish_retries_total`).
    pub publish_retries: u64,
    /// Publishes returned as unroutable with nowhere to keep them
    /// (`normalizer_unroutable_total`).
    pub unroutable: u64,
    /// Copies for observers given up on past the retry budget
    /// (`normalizer_tap_given_up_total`).
    pub taps_given_up: u64,
    /// Messages that came back through the worker's own exchanges, put in the
    /// dead-letter queue as they were (`normalizer_loops_stopped_total`).
    pub loops_stopped: u64,
    /// `basic.ack` frames sent; each acknowledges every settled raw message before it
    /// (`multiple`), so `acked / ack_frames` is the mean batch
    /// (`normalizer_ack_frames_total`).
    pub ack_frames: u64,
    /// Raw messages whose dead letter could not be published, handed to the raw queue's
    /// own dead-lettering (`basic.reject` without requeue) instead
    /// (`normalizer_handed_to_broker_total`).
    pub handed_to_broker: u64,
    /// Raw messages held now: consumed, not yet settled (`normalizer_in_flight`).
    pub in_flight: u64,
}

/// A labelled counter family whose total can be read: its constructor keeps a handle on
/// each series' counter as the family creates it, so the total is summed from the very
/// counters `/metrics` encodes.
struct Summed<L> {
    family: Family<L, Counter, SeriesList>,
    series: SeriesList,
}

/// The counters of a family's series, shared with the family as its constructor (which
/// runs once per new label set, under the family's write lock).
#[derive(Clone, Default, Debug)]
struct SeriesList(Arc<Mutex<Vec<Counter>>>);

impl MetricConstructor<Counter> for SeriesList {
    fn new_metric(&self) -> Counter {
        let counter = Counter::default();
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(counter.clone());
        counter
    }
}

impl<L: Clone + std::hash::Hash + Eq> Summed<L> {
    fn new() -> Self {
        let series = SeriesList::default();
        Summed {
            family: Family::new_with_constructor(series.clone()),
            series,
        }
    }

    fn inc(&self, labels: &L) {
        self.family.get_or_create(labels).inc();
    }

    /// Every series at 0 from the start (a dead-letter series' first increase must show).
    fn create(&self, labels: &L) {
        drop(self.family.get_or_create(labels));
    }

    fn total(&self) -> u64 {
        let series = self.series.0.lock().unwrap_or_else(|e| e.into_inner());
        series.iter().map(Counter::get).sum()
    }
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
            acked: Counter::default(),
            ack_frames: Counter::default(),
            events_published: Summed::new(),
            events_unrouted: Summed::new(),
            dead_lettered: Summed::new(),
            requeued: Counter::default(),
            settle_failed: Counter::default(),
            handed_to_broker: Counter::default(),
            redeliveries: Counter::default(),
            unroutable: Counter::default(),
            taps_given_up: Counter::default(),
            loops_stopped: Counter::default(),
            publish_retries: Counter::default(),
            processing: Histogram::new(processing_buckets()),
            end_to_end_lag: Histogram::new(END_TO_END_LAG_BUCKETS),
            in_flight: Gauge::default(),
            broker_connected: Gauge::default(),
            sessions: Counter::default(),
            reconnects: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "normalizer_messages_consumed",
            "Raw messages received from the raw queue",
            metrics.consumed.clone(),
        );
        registry.register(
            "normalizer_messages_acked",
            "Raw messages acknowledged (their events or dead letter confirmed)",
            metrics.acked.clone(),
        );
        registry.register(
            "normalizer_ack_frames",
            "basic.ack frames sent, each acknowledging every settled raw message before it (multiple)",
            metrics.ack_frames.clone(),
        );
        registry.register(
            "normalizer_requeued",
            "Raw messages rejected for redelivery after their publishes kept failing",
            metrics.requeued.clone(),
        );
        registry.register(
            "normalizer_settle_failed",
            "Acks or rejects that did not reach the broker (the channel was gone); those messages are redelivered",
            metrics.settle_failed.clone(),
        );
        registry.register(
            "normalizer_handed_to_broker",
            "Raw messages whose dead letter could not be published, rejected without requeue to the raw queue's dead-lettering",
            metrics.handed_to_broker.clone(),
        );
        registry.register(
            "normalizer_events_published",
            "Canonical events stored in a team's queue (confirmed), by vendor and canonical type",
            metrics.events_published.family.clone(),
        );
        registry.register(
            "normalizer_events_unrouted",
            "Canonical events nobody is bound for, kept on the unrouted queue (confirmed), by vendor and canonical type",
            metrics.events_unrouted.family.clone(),
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
            metrics.dead_lettered.family.clone(),
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
            "normalizer_sessions",
            "Broker sessions opened (1 + reconnects)",
            metrics.sessions.clone(),
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
        // Both sets are closed (the vendor keys and "unknown", the kinds the worker makes).
        let vendors = Vendor::ALL.map(Vendor::key);
        for vendor in vendors.into_iter().chain(std::iter::once(UNKNOWN_VENDOR)) {
            for &kind in DeadLetterKind::WORKER_MADE {
                metrics.dead_lettered.create(&DeadLetterLabels {
                    vendor,
                    kind: kind.as_str(),
                });
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

    /// Counts one occurrence: the one place every counter moves.
    pub(super) fn record(&self, occurrence: &Occurrence<'_>) {
        match *occurrence {
            Occurrence::Consumed { redelivered } => {
                self.consumed.inc();
                if redelivered {
                    self.redeliveries.inc();
                }
            }
            Occurrence::Published {
                vendor,
                delivered,
                kept,
                lag,
            } => {
                let vendor = vendor.key();
                for &t in delivered {
                    self.events_published
                        .inc(&EventLabels { vendor, r#type: t });
                }
                for &t in kept {
                    self.events_unrouted.inc(&EventLabels { vendor, r#type: t });
                }
                if let Some(lag) = lag {
                    self.end_to_end_lag.observe(lag.as_secs_f64());
                }
            }
            Occurrence::DeadLettered { vendor, kind } => {
                self.dead_lettered.inc(&DeadLetterLabels {
                    vendor: vendor.map_or(UNKNOWN_VENDOR, Vendor::key),
                    kind: kind.as_str(),
                });
            }
            Occurrence::Requeued => {
                self.requeued.inc();
            }
            Occurrence::HandedToBroker => {
                self.handed_to_broker.inc();
            }
            Occurrence::LoopStopped => {
                self.loops_stopped.inc();
            }
            Occurrence::Settled { after } => self.processing.observe(after.as_secs_f64()),
            Occurrence::AckFrame { messages } => {
                self.acked.inc_by(messages);
                self.ack_frames.inc();
            }
            Occurrence::SettleFailed => {
                self.settle_failed.inc();
            }
            Occurrence::PublishesRetried { publishes } => {
                self.publish_retries.inc_by(publishes);
            }
            Occurrence::Unroutable { publishes } => {
                self.unroutable.inc_by(publishes);
            }
            Occurrence::TapsGivenUp { copies } => {
                self.taps_given_up.inc_by(copies);
            }
            Occurrence::SessionOpened => {
                // `inc` returns the count before: every session after the first is a
                // reconnect.
                if self.sessions.inc() > 0 {
                    self.reconnects.inc();
                }
                self.broker_connected.set(1);
            }
            Occurrence::SessionEnded => {
                self.broker_connected.set(0);
            }
        }
    }

    /// Raw messages held now: consumed, not yet settled.
    pub(super) fn set_in_flight(&self, n: usize) {
        self.in_flight.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The counts as `/readyz` shows them, read from the series `/metrics` encodes.
    pub fn counts(&self) -> Counts {
        Counts {
            consumed: self.consumed.get(),
            redeliveries: self.redeliveries.get(),
            acked: self.acked.get(),
            events_published: self.events_published.total(),
            events_unrouted: self.events_unrouted.total(),
            dead_lettered: self.dead_lettered.total(),
            requeued: self.requeued.get(),
            settle_failed: self.settle_failed.get(),
            sessions: self.sessions.get(),
            reconnects: self.reconnects.get(),
            publish_retries: self.publish_retries.get(),
            unroutable: self.unroutable.get(),
            taps_given_up: self.taps_given_up.get(),
            loops_stopped: self.loops_stopped.get(),
            ack_frames: self.ack_frames.get(),
            handed_to_broker: self.handed_to_broker.get(),
            in_flight: u64::try_from(self.in_flight.get()).unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn every_metric_is_exported_under_its_documented_name() {
        let m = Metrics::new();
        m.record(&Occurrence::Consumed { redelivered: true });
        m.record(&Occurrence::Published {
            vendor: Vendor::Deel,
            delivered: &["deel.contract.created", "deel.contract.created"],
            kept: &[],
            lag: Some(Duration::from_secs(12)),
        });
        m.record(&Occurrence::DeadLettered {
            vendor: None,
            kind: DeadLetterKind::InvalidJson,
        });
        m.record(&Occurrence::Settled {
            after: Duration::from_millis(3),
        });
        let text = m.encode();
        for line in [
            "normalizer_messages_consumed_total 1",
            "normalizer_messages_acked_total 0",
            "normalizer_ack_frames_total 0",
            "normalizer_requeued_total 0",
            "normalizer_settle_failed_total 0",
            "normalizer_handed_to_broker_total 0",
            "normalizer_sessions_total 0",
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
            for &kind in DeadLetterKind::WORKER_MADE {
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
        // Three vendors and `unknown`, by the 11 kinds the worker makes: not the broker's
        // `delivery_limit`, which the worker never counts.
        assert_eq!(exported, 44);
    }

    /// Every `normalizer_*` series the alert rules and the dashboard in `deploy/` use is
    /// one the worker or the gateway exports (a renamed metric would leave an alert that never fires).
    #[test]
    fn the_monitoring_kit_names_only_exported_metrics() {
        let m = Metrics::new();
        m.record(&Occurrence::Published {
            vendor: Vendor::Deel,
            delivered: &["deel.contract.created"],
            kept: &[],
            lag: None,
        });
        m.record(&Occurrence::DeadLettered {
            vendor: Some(Vendor::Deel),
            kind: DeadLetterKind::InvalidJson,
        });
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
