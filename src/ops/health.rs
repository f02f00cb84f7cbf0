//! What the worker is doing and what it has counted: the state `/readyz` reports, and
//! [`Health::record`], the one way an occurrence is counted. The counts live only in the
//! Prometheus [`Metrics`]; the `/readyz` snapshot reads them from there. Serving them over
//! HTTP is `server.rs`'s job.

use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::Occurrence;
use super::metrics::{Counts, Metrics};

/// Shared state the worker updates and the HTTP endpoints read. Cheap to clone.
#[derive(Clone, Default)]
pub struct Health(Arc<Shared>);

/// What the worker is doing, as `/readyz` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// Opening a broker session (at start, or after a lost connection).
    #[default]
    Connecting,
    /// Taking deliveries.
    Consuming,
    /// Connected, but the broker blocks the publishing connection (a memory or disk
    /// alarm): deliveries in flight are held until it clears.
    Blocked,
    /// Publishes are failing transiently: deliveries are held and retried, no new ones
    /// taken.
    Retrying,
    /// The broker closed the publishing channel over a publish: republishing the
    /// suspects one at a time to find which message it refuses.
    Isolating,
    /// Shutting down: finishing what is in flight.
    Draining,
}

#[derive(Default)]
struct Shared {
    state: Mutex<(WorkerState, Option<String>)>,
    /// The broker's reason while it blocks the publishing connection.
    blocked: Mutex<Option<String>>,
    /// Every count, `/readyz`'s included: one store, so `/readyz` and `/metrics` agree.
    metrics: Metrics,
}

/// A point-in-time copy of the state, and the counts read from the Prometheus series.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct HealthSnapshot {
    /// Consuming from the raw queue and free to publish (`state` is `consuming`).
    pub ready: bool,
    pub state: WorkerState,
    /// Why, when not consuming: the failure being retried, what is being isolated.
    pub reason: Option<String>,
    /// The broker blocks the publishing connection (memory or disk alarm).
    pub blocked: bool,
    /// The counters, each the value of the Prometheus series its field names.
    #[serde(flatten)]
    pub counts: Counts,
}

impl Health {
    /// Counts one occurrence, for `/readyz` and `/metrics` at once.
    pub fn record(&self, occurrence: Occurrence<'_>) {
        self.0.metrics.record(&occurrence);
    }
    /// What the worker is doing, and why when it is not consuming.
    pub fn set_state(&self, state: WorkerState, reason: Option<String>) {
        let mut current = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
        *current = (state, reason);
    }
    pub fn state(&self) -> WorkerState {
        self.0.state.lock().unwrap_or_else(|e| e.into_inner()).0
    }
    /// The broker blocked the publishing connection (`Some(its reason)`, e.g. "low on
    /// memory") or unblocked it, or a new connection started (`None`).
    pub fn set_blocked(&self, reason: Option<String>) {
        *self.0.blocked.lock().unwrap_or_else(|e| e.into_inner()) = reason;
    }
    /// Raw messages held now: consumed, not yet settled.
    pub fn set_in_flight(&self, n: usize) {
        self.0.metrics.set_in_flight(n);
    }
    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    pub fn snapshot(&self) -> HealthSnapshot {
        let s = &self.0;
        let (mut state, mut reason) = s.state.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let blocked = s.blocked.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(alarm) = &blocked
            && state == WorkerState::Consuming
        {
            state = WorkerState::Blocked;
            reason = Some(format!(
                "blocked by a broker alarm ({alarm}): publishing waits until it clears"
            ));
        }
        HealthSnapshot {
            ready: state == WorkerState::Consuming,
            state,
            reason,
            blocked: blocked.is_some(),
            counts: s.metrics.counts(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::Counts;

    #[test]
    fn an_alarm_makes_a_consuming_worker_not_ready_and_says_why() {
        let health = Health::default();
        health.set_state(WorkerState::Consuming, None);
        health.set_blocked(Some("low on memory".into()));
        let s = health.snapshot();
        assert!(!s.ready && s.blocked);
        assert_eq!(s.state, WorkerState::Blocked);
        assert_eq!(
            s.reason.as_deref(),
            Some("blocked by a broker alarm (low on memory): publishing waits until it clears")
        );
        // Draining says draining, even while blocked.
        health.set_state(WorkerState::Draining, None);
        assert_eq!(health.snapshot().state, WorkerState::Draining);
        health.set_state(WorkerState::Consuming, None);
        health.set_blocked(None);
        let s = health.snapshot();
        assert!(s.ready && !s.blocked && s.reason.is_none());
    }

    /// Each `/readyz` count and the Prometheus series it is read from (a labelled
    /// family's series summed).
    const READYZ_SERIES: [(&str, &str); 17] = [
        ("consumed", "normalizer_messages_consumed_total"),
        ("redeliveries", "normalizer_redeliveries_total"),
        ("acked", "normalizer_messages_acked_total"),
        ("events_published", "normalizer_events_published_total"),
        ("events_unrouted", "normalizer_events_unrouted_total"),
        ("dead_lettered", "normalizer_dead_lettered_total"),
        ("requeued", "normalizer_requeued_total"),
        ("settle_failed", "normalizer_settle_failed_total"),
        ("sessions", "normalizer_sessions_total"),
        ("reconnects", "normalizer_reconnects_total"),
        ("publish_retries", "normalizer_publish_retries_total"),
        ("unroutable", "normalizer_unroutable_total"),
        ("taps_given_up", "normalizer_tap_given_up_total"),
        ("loops_stopped", "normalizer_loops_stopped_total"),
        ("ack_frames", "normalizer_ack_frames_total"),
        ("handed_to_broker", "normalizer_handed_to_broker_total"),
        ("in_flight", "normalizer_in_flight"),
    ];

    /// Prometheus only, and why: distributions (a snapshot of counts has no place for
    /// them), the connection gauge (`/readyz` says `state`), the version.
    const PROMETHEUS_ONLY: [&str; 4] = [
        "normalizer_processing_seconds",
        "normalizer_end_to_end_lag_seconds",
        "normalizer_broker_connected",
        "normalizer_build_info",
    ];

    /// `/readyz`'s fields that are states, not counts.
    const READYZ_STATE: [&str; 4] = ["ready", "state", "reason", "blocked"];

    /// The OpenMetrics text's samples summed by metric name (labels dropped).
    fn prometheus_totals(text: &str) -> std::collections::BTreeMap<&str, f64> {
        let mut totals = std::collections::BTreeMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let name = series.split('{').next().unwrap();
            *totals.entry(name).or_default() += value.parse::<f64>().unwrap();
        }
        totals
    }

    /// Every count of `/readyz` equals its Prometheus series, and every series is either
    /// a `/readyz` count or Prometheus-only on purpose.
    fn assert_views_agree(health: &Health, after: &str) {
        let json = serde_json::to_value(health.snapshot()).unwrap();
        let json = json.as_object().unwrap();
        let text = health.metrics().encode();
        let totals = prometheus_totals(&text);
        for (field, value) in json {
            if READYZ_STATE.contains(&field.as_str()) {
                continue;
            }
            let Some((_, series)) = READYZ_SERIES.iter().find(|(f, _)| f == field) else {
                panic!("/readyz `{field}` has no Prometheus series");
            };
            // A labelled family is not encoded at all before its first series: 0.
            let count = value.as_u64().unwrap() as f64;
            assert_eq!(
                totals.get(series).copied().unwrap_or(0.0),
                count,
                "after {after}: /readyz `{field}` is {count}, {series} in:\n{text}"
            );
        }
        for name in totals.keys() {
            let counted = READYZ_SERIES.iter().any(|(_, s)| s == name);
            let prometheus_only = PROMETHEUS_ONLY.iter().any(|p| name.starts_with(p));
            assert!(
                counted || prometheus_only,
                "{name} is neither a /readyz count nor Prometheus-only on purpose"
            );
        }
        assert_eq!(json.len(), READYZ_STATE.len() + READYZ_SERIES.len());
    }

    /// The one change to behaviour of issue 19: the `/readyz` counts and Prometheus were
    /// two sets of counters. `acked`, `ack_frames`, `requeued`, `settle_failed` and
    /// `handed_to_broker` had no series; `sessions` (1 + reconnects) had none either, the
    /// nearest, `normalizer_reconnects_total`, being one less; `redeliveries`,
    /// `unroutable`, `taps_given_up`, `loops_stopped` and `reconnects` were not in
    /// `/readyz`. Now every occurrence moves one counter that both read.
    #[test]
    fn every_readyz_count_equals_its_prometheus_series_after_each_occurrence() {
        use std::time::Duration;

        use crate::canonical::Vendor;
        use crate::contract::DeadLetterKind;

        let health = Health::default();
        assert_views_agree(&health, "nothing");
        let occurrences = [
            Occurrence::SessionOpened,
            Occurrence::Consumed { redelivered: false },
            Occurrence::Consumed { redelivered: true },
            Occurrence::Consumed { redelivered: false },
            Occurrence::Consumed { redelivered: false },
            Occurrence::Consumed { redelivered: false },
            Occurrence::Published {
                vendor: Vendor::Deel,
                delivered: &["deel.contract.created", "deel.contract.created"],
                kept: &["deel.contract.signed"],
                lag: Some(Duration::from_secs(2)),
            },
            Occurrence::Published {
                vendor: Vendor::Entuitive,
                delivered: &["entuitive.contractor.updated"],
                kept: &[],
                lag: None,
            },
            Occurrence::DeadLettered {
                vendor: None,
                kind: DeadLetterKind::InvalidJson,
            },
            Occurrence::DeadLettered {
                vendor: Some(Vendor::Authenticate),
                kind: DeadLetterKind::InvalidPayload,
            },
            Occurrence::Requeued,
            Occurrence::HandedToBroker,
            Occurrence::LoopStopped,
            Occurrence::Settled {
                after: Duration::from_millis(3),
            },
            Occurrence::AckFrame { messages: 3 },
            Occurrence::AckFrame { messages: 1 },
            Occurrence::SettleFailed,
            Occurrence::PublishesRetried { publishes: 3 },
            Occurrence::Unroutable { publishes: 2 },
            Occurrence::TapsGivenUp { copies: 2 },
            Occurrence::SessionEnded,
            Occurrence::SessionOpened,
        ];
        for occurrence in occurrences {
            health.record(occurrence);
            assert_views_agree(&health, &format!("{occurrence:?}"));
        }
        health.set_in_flight(1);
        assert_views_agree(&health, "in flight 1");
        let text = health.metrics().encode();
        let totals = prometheus_totals(&text);
        for (_, series) in READYZ_SERIES {
            assert!(
                totals.contains_key(series),
                "{series} missing from:\n{text}"
            );
        }

        assert_eq!(
            health.snapshot().counts,
            Counts {
                consumed: 5,
                redeliveries: 1,
                acked: 4,
                events_published: 3,
                events_unrouted: 1,
                dead_lettered: 2,
                requeued: 1,
                settle_failed: 1,
                sessions: 2,
                reconnects: 1,
                publish_retries: 3,
                unroutable: 2,
                taps_given_up: 2,
                loops_stopped: 1,
                ack_frames: 2,
                handed_to_broker: 1,
                in_flight: 1,
            }
        );
    }

    /// The JSON of `/readyz` keeps its shape: the state, then the counts flat beside it.
    #[test]
    fn the_readyz_json_is_flat() {
        let health = Health::default();
        health.record(Occurrence::SessionOpened);
        health.record(Occurrence::Consumed { redelivered: false });
        let json = serde_json::to_value(health.snapshot()).unwrap();
        assert_eq!(json["state"], "connecting");
        assert_eq!(json["ready"], false);
        assert_eq!(json["consumed"], 1);
        assert_eq!(json["sessions"], 1);
        assert_eq!(json["reconnects"], 0);
        assert!(json.get("counts").is_none(), "{json}");
    }
}
