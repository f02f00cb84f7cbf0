//! What the worker counts: one value per occurrence, recorded once
//! ([`Health::record`](super::Health::record)) into the counters that `/readyz` and
//! `/metrics` both read, so the two cannot disagree. Logging stays with the caller
//! ([`Outcome::record`](super::Outcome::record) for what became of a raw message).

use std::time::Duration;

use crate::canonical::Vendor;
use crate::contract::DeadLetterKind;

/// Something that happened once and is counted. Each variant names the counters it moves
/// (`/readyz` field, then Prometheus series).
#[derive(Debug, Clone, Copy)]
pub enum Occurrence<'a> {
    /// A raw message received from the raw queue: `consumed`
    /// (`normalizer_messages_consumed_total`), and `redeliveries`
    /// (`normalizer_redeliveries_total`) when the broker set its redelivered flag.
    Consumed { redelivered: bool },
    /// A raw message's events are confirmed: each canonical type `delivered` to a team's
    /// queue (`events_published`, `normalizer_events_published_total{vendor,type}`) and
    /// each `kept` on the unrouted queue (`events_unrouted`,
    /// `normalizer_events_unrouted_total{vendor,type}`); `lag`, the time since the
    /// gateway received it, when the message said when that was
    /// (`normalizer_end_to_end_lag_seconds`).
    Published {
        vendor: Vendor,
        delivered: &'a [&'static str],
        kept: &'a [&'static str],
        lag: Option<Duration>,
    },
    /// A raw message dead-lettered, by us (confirmed) or left to the raw queue's own
    /// dead-lettering as this kind: `dead_lettered`,
    /// `normalizer_dead_lettered_total{vendor,kind}` (`unknown` when no vendor was found).
    DeadLettered {
        vendor: Option<Vendor>,
        kind: DeadLetterKind,
    },
    /// A raw message rejected for redelivery after its publishes kept failing: `requeued`,
    /// `normalizer_requeued_total`.
    Requeued,
    /// A raw message whose dead letter could not be published, rejected without requeue
    /// to the raw queue's dead-lettering: `handed_to_broker`,
    /// `normalizer_handed_to_broker_total`.
    HandedToBroker,
    /// A message that came back to the raw queue through the worker's own exchange,
    /// stopped: `loops_stopped`, `normalizer_loops_stopped_total`.
    LoopStopped,
    /// A raw message settled (ack or reject decided) `after` its delivery:
    /// `normalizer_processing_seconds`.
    Settled { after: Duration },
    /// One `basic.ack` frame written, acknowledging `messages` raw messages (`multiple`):
    /// `acked` and `ack_frames`, `normalizer_messages_acked_total` and
    /// `normalizer_ack_frames_total`.
    AckFrame { messages: u64 },
    /// An ack or reject that did not reach the broker (the channel was gone); those
    /// messages are redelivered: `settle_failed`, `normalizer_settle_failed_total`.
    SettleFailed,
    /// Publishes sent again after a transient failure: `publish_retries`,
    /// `normalizer_publish_retries_total`.
    PublishesRetried { publishes: u64 },
    /// Publishes the broker returned as unroutable with nowhere to keep them:
    /// `unroutable`, `normalizer_unroutable_total`.
    Unroutable { publishes: u64 },
    /// Copies for observers (the tap exchange) given up on after failing past the retry
    /// budget: `taps_given_up`, `normalizer_tap_given_up_total`.
    TapsGivenUp { copies: u64 },
    /// A broker session opened: `sessions` (`normalizer_sessions_total`); every one after
    /// the first is also a reconnect (`reconnects`, `normalizer_reconnects_total`); the
    /// broker is connected (`normalizer_broker_connected` 1).
    SessionOpened,
    /// A broker session ended: `normalizer_broker_connected` 0.
    SessionEnded,
}
