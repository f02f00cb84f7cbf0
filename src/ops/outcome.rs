//! What became of one raw message, counted (as an [`Occurrence`]) and logged in one
//! place, inside a span of the delivery that carries its tag and the gateway's message id
//! (shown only when it looks like an id).

use std::time::Duration;

use tracing::{Level, Span, debug, error, info_span, warn};

use super::{Health, Occurrence};
use crate::canonical::Vendor;
use crate::delivery::{DeadLetter, PublishOutcome};
use crate::redact::SafeName;

/// Which raw message an outcome is about: its delivery tag, and the gateway's id when
/// there is one (what its log lines carry).
#[derive(Debug, Clone, Copy)]
pub struct DeliveryId<'a> {
    /// The delivery tag on the consuming channel.
    pub tag: u64,
    /// The gateway's `message_id`, when it set one.
    pub message_id: Option<&'a str>,
}

impl DeliveryId<'_> {
    fn span(&self) -> Span {
        info_span!(
            "delivery",
            tag = self.tag,
            message_id = %SafeName(self.message_id.unwrap_or_default()).bare(),
        )
    }
}

/// How one raw message was settled.
#[derive(Debug)]
pub enum Outcome<'a> {
    /// Its events are stored; it is acknowledged. The canonical type of each event
    /// `delivered` to a team's queue, and of each `kept` on the unrouted queue; `lag`, the
    /// time since the gateway received it, when the message said when that was.
    Published {
        vendor: Vendor,
        delivered: &'a [&'static str],
        kept: &'a [&'static str],
        lag: Option<Duration>,
    },
    /// Its dead letter is confirmed; it is acknowledged.
    DeadLettered(&'a DeadLetter),
    /// Its publishes kept failing for `failing_for`: rejected for redelivery.
    Requeued {
        failing_for: Duration,
        last: &'a PublishOutcome,
    },
    /// Its dead letter cannot be published: rejected without requeue, so the raw queue's
    /// dead-letter exchange takes it (as `unknown.delivery_limit`, reason `rejected`).
    HandedToBroker { why: &'a str },
    /// Rejected without requeue so that the raw queue's own dead-lettering keeps it (its
    /// body was too large to read): counted as a dead letter of this kind.
    LeftToBroker(&'a DeadLetter),
    /// It came back to the raw queue `through` one of the worker's own exchanges, and was
    /// put in the dead-letter `queue` as it was.
    Looped { through: &'a str, queue: &'a str },
}

impl Outcome<'_> {
    /// Counts and logs the outcome. The span is made only when the log is written: the
    /// common outcome, published, logs at debug.
    pub fn record(&self, health: &Health, delivery: DeliveryId<'_>) {
        if let Outcome::Published {
            vendor,
            delivered,
            kept,
            lag,
        } = self
        {
            health.record(Occurrence::Published {
                vendor: *vendor,
                delivered,
                kept,
                lag: *lag,
            });
            if tracing::enabled!(Level::DEBUG) {
                let (events, unrouted) = (delivered.len(), kept.len());
                delivery
                    .span()
                    .in_scope(|| debug!(events, unrouted, "published"));
            }
            return;
        }
        let _entered = delivery.span().entered();
        match self {
            Outcome::Published { .. } => {}
            Outcome::DeadLettered(dead_letter) => {
                health.record(Occurrence::DeadLettered {
                    vendor: dead_letter.vendor,
                    kind: dead_letter.kind,
                });
                warn!(
                    kind = %dead_letter.kind,
                    vendor = dead_letter.vendor.map(|v| v.key()),
                    detail = %dead_letter.detail,
                    "dead-lettered"
                );
            }
            Outcome::Requeued { failing_for, last } => {
                health.record(Occurrence::Requeued);
                warn!(
                    failing_for_ms = failing_for.as_millis() as u64,
                    last = %describe(last),
                    "publishes kept failing; rejected for redelivery"
                );
            }
            Outcome::LeftToBroker(dead_letter) => {
                health.record(Occurrence::DeadLettered {
                    vendor: dead_letter.vendor,
                    kind: dead_letter.kind,
                });
                warn!(
                    kind = %dead_letter.kind,
                    detail = %dead_letter.detail,
                    "left to the raw queue's dead-lettering"
                );
            }
            Outcome::Looped { through, queue } => {
                health.record(Occurrence::LoopStopped);
                error!(
                    through,
                    queue,
                    "a message came back to the raw queue through the worker's own exchange (a binding made by hand?); put in the dead-letter queue as it was, not published again"
                );
            }
            Outcome::HandedToBroker { why } => {
                health.record(Occurrence::HandedToBroker);
                error!(
                    why,
                    "the dead letter cannot be published; handed to the raw queue's dead-lettering"
                );
            }
        }
    }
}

/// A failed publish in a few words, for logs and `/readyz`.
pub(crate) fn describe(outcome: &PublishOutcome) -> String {
    match outcome {
        PublishOutcome::Confirmed => "confirmed".into(),
        PublishOutcome::Returned => "returned as unroutable".into(),
        PublishOutcome::Nacked => "nacked by the broker".into(),
        PublishOutcome::TimedOut => "not confirmed in time".into(),
        PublishOutcome::Closed { reason, .. } => format!("channel closed: {reason}"),
    }
}
