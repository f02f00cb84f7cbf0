//! What became of one raw message, counted and logged in one place. Called inside the
//! delivery's span (which carries its tag and gateway message id), so the fields are
//! not repeated here.

use std::time::Duration;

use tracing::{debug, error, warn};

use super::Health;
use crate::delivery::{DeadLetter, PublishOutcome};

/// How one raw message was settled.
#[derive(Debug)]
pub enum Outcome<'a> {
    /// Its events are confirmed; it is acknowledged.
    Published { events: usize },
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
}

impl Outcome<'_> {
    /// Counts and logs the outcome.
    pub fn record(&self, health: &Health) {
        match self {
            Outcome::Published { events } => {
                health.add_events_published(*events as u64);
                debug!(events, "published");
            }
            Outcome::DeadLettered(dead_letter) => {
                health.add_dead_lettered();
                warn!(
                    kind = %dead_letter.kind,
                    vendor = dead_letter.vendor.map(|v| v.key()),
                    detail = %dead_letter.detail,
                    "dead-lettered"
                );
            }
            Outcome::Requeued { failing_for, last } => {
                health.add_requeued();
                warn!(
                    failing_for_ms = failing_for.as_millis() as u64,
                    last = %describe(last),
                    "publishes kept failing; rejected for redelivery"
                );
            }
            Outcome::HandedToBroker { why } => {
                health.add_handed_to_broker();
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
