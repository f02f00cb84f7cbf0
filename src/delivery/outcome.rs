//! How one publish ended, whose fault a failure is, and how a refused output is retried
//! in place.

use std::time::Duration;

use crate::backoff::backoff_delay;

/// Which of the worker's two publishing channels a publish goes on. A publish in flight
/// when its channel is closed over another one may have been stored all the same, and
/// is published again; dead letters have a channel of their own, so that a refused event
/// never makes one go out twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Events, their kept and tapped copies, and the tap copies of dead letters.
    Events = 0,
    /// Dead letters (and messages that came back to the raw queue), delivered.
    DeadLetters = 1,
}

impl Lane {
    pub const ALL: [Lane; 2] = [Lane::Events, Lane::DeadLetters];
}

/// How one publish ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishOutcome {
    /// Confirmed by the broker and routed.
    Confirmed,
    /// Confirmed, but returned as unroutable (`mandatory`).
    Returned,
    /// Negatively confirmed: the broker could not store it (e.g. a full queue with
    /// `reject-publish` overflow).
    Nacked,
    /// No confirm within the timeout.
    TimedOut,
    /// The channel or connection closed before a confirm arrived. `code` is the AMQP
    /// reply code when the broker closed it; `reason` is for logs and dead letters.
    Closed { code: Option<u16>, reason: String },
}

impl PublishOutcome {
    /// Whose fault a failed publish is; `None` when it succeeded.
    pub fn fault(&self) -> Option<Fault> {
        match self {
            PublishOutcome::Confirmed => None,
            PublishOutcome::Returned | PublishOutcome::Nacked | PublishOutcome::TimedOut => {
                Some(Fault::Broker)
            }
            PublishOutcome::Closed { code, .. } => Some(code.map_or(Fault::Broker, fault_of)),
        }
    }
}

/// Who a failure is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Possibly one publish's own: the broker refused its content, properties, size or
    /// routing key and closed the channel. Which message, if any, is found out by
    /// republishing the suspects one at a time.
    Message,
    /// An exchange is missing: re-declare the topology, then retry.
    Topology,
    /// The broker or the network: retry with backoff, holding the delivery.
    Broker,
}

/// Judges a channel or connection close by its AMQP reply code. Codes a single publish
/// can provoke are [`Fault::Message`]: 311 CONTENT_TOO_LARGE, 403 ACCESS_REFUSED (topic
/// permissions are per routing key), 406 PRECONDITION_FAILED (`user_id`, RabbitMQ 4.x
/// `max_message_size`), 501 FRAME_ERROR, 502 SYNTAX_ERROR, 503 COMMAND_INVALID and
/// 505 UNEXPECTED_FRAME (malformed content). 404 NOT_FOUND (an exchange deleted) is
/// [`Fault::Topology`]; anything else (320 CONNECTION_FORCED, 541 INTERNAL_ERROR, ...)
/// is [`Fault::Broker`].
pub fn fault_of(reply_code: u16) -> Fault {
    match reply_code {
        311 | 403 | 406 | 501 | 502 | 503 | 505 => Fault::Message,
        404 => Fault::Topology,
        _ => Fault::Broker,
    }
}

/// How transient failures are retried in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first delay.
    pub initial: Duration,
    /// The largest delay.
    pub max: Duration,
    /// How long a message may keep failing before it is rejected for redelivery.
    pub max_elapsed: Duration,
}

impl RetryPolicy {
    /// The delay before retry number `attempt` (0-based): the step doubles from `initial`
    /// up to `max`, and the delay is half the step plus a random part of the other half
    /// (`jitter` in `[0, 1)`), so it never comes sooner than half a step and a fleet of
    /// workers does not retry in lockstep.
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        backoff_delay(self.initial, self.max, attempt, jitter)
    }

    /// Whether a message failing for `failing_for` should stop being retried in place.
    pub fn gives_up(&self, failing_for: Duration) -> bool {
        failing_for >= self.max_elapsed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_judged_by_what_they_are_about() {
        let closed = |code| PublishOutcome::Closed {
            code,
            reason: String::new(),
        };
        let cases = [
            (PublishOutcome::Confirmed, None),
            (PublishOutcome::Returned, Some(Fault::Broker)),
            (PublishOutcome::Nacked, Some(Fault::Broker)),
            (PublishOutcome::TimedOut, Some(Fault::Broker)),
            (closed(None), Some(Fault::Broker)),
            (closed(Some(320)), Some(Fault::Broker)),
            (closed(Some(541)), Some(Fault::Broker)),
            (closed(Some(404)), Some(Fault::Topology)),
            (closed(Some(311)), Some(Fault::Message)),
            (closed(Some(403)), Some(Fault::Message)),
            (closed(Some(406)), Some(Fault::Message)),
            (closed(Some(501)), Some(Fault::Message)),
            (closed(Some(502)), Some(Fault::Message)),
            (closed(Some(503)), Some(Fault::Message)),
            (closed(Some(505)), Some(Fault::Message)),
        ];
        for (outcome, fault) in cases {
            assert_eq!(outcome.fault(), fault, "{outcome:?}");
        }
    }

    #[test]
    fn retries_back_off_exponentially_with_jitter_in_the_upper_half_and_give_up() {
        let policy = RetryPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(1000),
            max_elapsed: Duration::from_secs(60),
        };
        let steps = [100u64, 200, 400, 800, 1000, 1000];
        for (attempt, step) in steps.into_iter().enumerate() {
            let attempt = attempt as u32;
            assert_eq!(policy.delay(attempt, 0.0).as_millis() as u64, step / 2);
            assert_eq!(policy.delay(attempt, 1.0).as_millis() as u64, step);
            let mid = policy.delay(attempt, 0.5).as_millis() as u64;
            assert_eq!(mid, step * 3 / 4);
        }
        assert_eq!(policy.delay(u32::MAX, 1.0), Duration::from_millis(1000));
        assert!(!policy.gives_up(Duration::from_secs(59)));
        assert!(policy.gives_up(Duration::from_secs(60)));
        let never = RetryPolicy {
            max_elapsed: Duration::ZERO,
            ..policy
        };
        assert!(never.gives_up(Duration::ZERO));
    }
}
