//! What the worker is doing and what it has counted: the state `/readyz` reports and the
//! counters behind it. Serving them over HTTP is `server.rs`'s job.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::metrics::Metrics;
use crate::canonical::Vendor;
use crate::normalize::ErrorKind;

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
    consumed: AtomicU64,
    acked: AtomicU64,
    events_published: AtomicU64,
    events_kept: AtomicU64,
    dead_lettered: AtomicU64,
    requeued: AtomicU64,
    settle_failed: AtomicU64,
    sessions: AtomicU64,
    publish_retries: AtomicU64,
    ack_frames: AtomicU64,
    handed_to_broker: AtomicU64,
    in_flight: AtomicU64,
    metrics: Metrics,
}

/// A point-in-time copy of the state.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct HealthSnapshot {
    /// Consuming from the raw queue and free to publish (`state` is `consuming`).
    pub ready: bool,
    pub state: WorkerState,
    /// Why, when not consuming: the failure being retried, what is being isolated.
    pub reason: Option<String>,
    /// The broker blocks the publishing connection (memory or disk alarm).
    pub blocked: bool,
    /// Raw messages received.
    pub consumed: u64,
    /// Raw messages acknowledged (their events or dead letter confirmed).
    pub acked: u64,
    /// Canonical events stored in a team's queue.
    pub events_published: u64,
    /// Canonical events nobody is bound for, kept on the unrouted queue.
    pub events_unrouted: u64,
    /// Raw messages dead-lettered by us (confirmed).
    pub dead_lettered: u64,
    /// Raw messages rejected for redelivery after a transient failure.
    pub requeued: u64,
    /// Acks or rejects that did not reach the broker (the channel was gone); those
    /// messages are redelivered.
    pub settle_failed: u64,
    /// Broker sessions opened (1 + reconnects).
    pub sessions: u64,
    /// Publishes sent again after a transient failure.
    pub publish_retries: u64,
    /// `basic.ack` frames sent; each acknowledges every settled raw message before it
    /// (`multiple`), so `acked / ack_frames` is the mean batch.
    pub ack_frames: u64,
    /// Raw messages whose dead letter could not be published, handed to the raw queue's
    /// own dead-lettering (`basic.reject` without requeue) instead.
    pub handed_to_broker: u64,
    /// Raw messages held now: consumed, not yet settled.
    pub in_flight: u64,
}

impl Health {
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
    pub fn add_consumed(&self, redelivered: bool) {
        self.0.consumed.fetch_add(1, Ordering::Relaxed);
        self.0.metrics.add_consumed(redelivered);
    }
    /// One `basic.ack` frame written, acknowledging `n` raw messages.
    pub fn add_acked(&self, n: u64) {
        self.0.acked.fetch_add(n, Ordering::Relaxed);
        self.0.ack_frames.fetch_add(1, Ordering::Relaxed);
    }
    /// One raw message's events, confirmed: their canonical types.
    pub fn add_events_published(&self, vendor: Vendor, types: &[&'static str]) {
        self.0
            .events_published
            .fetch_add(types.len() as u64, Ordering::Relaxed);
        self.0
            .metrics
            .add_events(vendor.key(), types.iter().copied());
    }
    pub fn add_dead_lettered(&self, vendor: Option<Vendor>, kind: ErrorKind) {
        self.0.dead_lettered.fetch_add(1, Ordering::Relaxed);
        self.0.metrics.add_dead_lettered(
            vendor.map_or(super::metrics::UNKNOWN_VENDOR, Vendor::key),
            kind.as_str(),
        );
    }
    /// One raw message's events nobody is bound for, kept on the unrouted queue: one per
    /// canonical type in `types`.
    pub fn add_events_kept(&self, vendor: Vendor, types: &[&'static str]) {
        self.0
            .events_kept
            .fetch_add(types.len() as u64, Ordering::Relaxed);
        self.0
            .metrics
            .add_events_kept(vendor.key(), types.iter().copied());
    }
    /// A message that came back through the worker's own exchange, stopped.
    pub fn add_loop_stopped(&self) {
        self.0.metrics.add_loop_stopped();
    }
    /// Tap copies (for observers) given up on after failing past the retry budget.
    pub fn add_taps_given_up(&self, n: u64) {
        self.0.metrics.add_taps_given_up(n);
    }
    /// A publish the broker returned as unroutable with nowhere to keep it.
    pub fn add_unroutable(&self) {
        self.0.metrics.add_unroutable();
    }
    /// A raw message settled `seconds` after its delivery.
    pub fn observe_processing(&self, seconds: f64) {
        self.0.metrics.observe_processing(seconds);
    }
    /// A raw message's events confirmed `seconds` after the gateway received it.
    pub fn observe_end_to_end_lag(&self, seconds: f64) {
        self.0.metrics.observe_end_to_end_lag(seconds);
    }
    /// A broker session ended; `health.add_session` counts the next one as a reconnect.
    pub fn set_disconnected(&self) {
        self.0.metrics.set_broker_connected(false);
    }
    pub fn add_requeued(&self) {
        self.0.requeued.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add_settle_failed(&self) {
        self.0.settle_failed.fetch_add(1, Ordering::Relaxed);
    }
    /// A broker session opened; every one after the first is a reconnect.
    pub fn add_session(&self) {
        if self.0.sessions.fetch_add(1, Ordering::Relaxed) > 0 {
            self.0.metrics.add_reconnect();
        }
        self.0.metrics.set_broker_connected(true);
    }
    pub fn add_publish_retries(&self, n: u64) {
        self.0.publish_retries.fetch_add(n, Ordering::Relaxed);
        self.0.metrics.add_publish_retries(n);
    }
    pub fn add_handed_to_broker(&self) {
        self.0.handed_to_broker.fetch_add(1, Ordering::Relaxed);
    }
    pub fn set_in_flight(&self, n: usize) {
        self.0.in_flight.store(n as u64, Ordering::Relaxed);
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
            consumed: s.consumed.load(Ordering::Relaxed),
            acked: s.acked.load(Ordering::Relaxed),
            events_published: s.events_published.load(Ordering::Relaxed),
            events_unrouted: s.events_kept.load(Ordering::Relaxed),
            dead_lettered: s.dead_lettered.load(Ordering::Relaxed),
            requeued: s.requeued.load(Ordering::Relaxed),
            settle_failed: s.settle_failed.load(Ordering::Relaxed),
            sessions: s.sessions.load(Ordering::Relaxed),
            publish_retries: s.publish_retries.load(Ordering::Relaxed),
            ack_frames: s.ack_frames.load(Ordering::Relaxed),
            handed_to_broker: s.handed_to_broker.load(Ordering::Relaxed),
            in_flight: s.in_flight.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
