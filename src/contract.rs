//! The names the contract fixes, for every part to import: the properties the worker
//! sets, the routing key of the broker's own dead letters, the bound on a dead letter's
//! reason, the header names of raw messages, dead letters and kept copies, and the kinds
//! of dead letter. Imports nothing from the roles (`worker`, `tools`, `gateway`):
//! transport and tools take their names from here, not from each other.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// The `content_type` of canonical events (CloudEvents AMQP binding, structured mode).
pub const EVENT_CONTENT_TYPE: &str = "application/cloudevents+json; charset=utf-8";
/// The `app_id` of everything the worker publishes.
pub const APP_ID: &str = "webhook-normalizer";
/// The routing key the raw queue dead-letters with when a message hits its delivery limit.
pub const DELIVERY_LIMIT_ROUTING_KEY: &str = "unknown.delivery_limit";
/// The longest error detail a dead letter carries; longer ones are cut at a character
/// boundary, so the reason always fits the dead letter's headers.
pub const MAX_DETAIL_BYTES: usize = 1024;

/// Header names of the raw-message contract.
pub mod headers {
    /// Vendor hint set by the gateway.
    pub const VENDOR: &str = "x-vendor";
    /// When the gateway received the webhook (RFC 3339).
    pub const RECEIVED_AT: &str = "x-received-at";
    /// Dead-letter headers.
    pub const ERROR_KIND: &str = "x-normalizer-error-kind";
    pub const ERROR: &str = "x-normalizer-error";
    pub const FAILED_AT: &str = "x-normalizer-failed-at";
    pub const VERSION: &str = "x-normalizer-version";
    pub const ORIGINAL_EXCHANGE: &str = "x-original-exchange";
    pub const ORIGINAL_ROUTING_KEY: &str = "x-original-routing-key";
    /// Raw properties a dead letter must not carry as they are (they would change its
    /// fate or make it unpublishable), kept as headers instead.
    pub const ORIGINAL_EXPIRATION: &str = "x-original-expiration";
    pub const ORIGINAL_USER_ID: &str = "x-original-user-id";
    /// Raw headers the broker acts on, kept under another name.
    pub const ORIGINAL_CC: &str = "x-original-cc";
    pub const ORIGINAL_DELIVERY_COUNT: &str = "x-original-delivery-count";
    /// Which raw headers were dropped to fit the broker's frame, and why.
    pub const DROPPED_HEADERS: &str = "x-normalizer-dropped-headers";
    /// Header entries whose name repeated an earlier one in the same table, as sent:
    /// an array of `{name, value}` tables (`name` is the entry's path).
    pub const DUPLICATE_HEADERS: &str = "x-normalizer-duplicate-headers";
    /// On a kept copy (an event nobody is bound for, on the unrouted queue; a tap copy):
    /// when it was first kept (RFC 3339, UTC). A walk's copy keeps it, and the time left
    /// to live with it.
    pub const KEPT_AT: &str = "x-normalizer-kept-at";
    /// On a message that came back to the raw queue through one of the worker's own
    /// exchanges and was put in the dead-letter queue as it was: that exchange.
    pub const LOOPED_THROUGH: &str = "x-normalizer-looped-through";
    /// On an event kept on the unrouted queue: its routing key (the canonical type). The
    /// `unrouted` walk reads it on the copies it put back (they go through the default
    /// exchange, so that no other queue bound to the unrouted exchange gets one), and
    /// strips it when the event is replayed.
    pub const UNROUTED_ROUTING_KEY: &str = "x-normalizer-unrouted-routing-key";
    /// On a dead letter put in the dead-letter queue through the default exchange (a copy
    /// the `dlq` walk put back; a message that came back to the raw queue through one of
    /// the worker's own exchanges): its own routing key. Through the default exchange, no
    /// other queue bound to the dead-letter exchange gets a copy.
    pub const DEAD_LETTER_ROUTING_KEY: &str = "x-normalizer-dead-letter-routing-key";
    /// How many times a message was replayed from the dead-letter queue.
    pub const REPLAY_COUNT: &str = "x-replay-count";
}

/// Why a raw message is a dead letter: the machine-readable kind. Its string is part of
/// the public contract: dead-letter routing keys (`{vendor}.{kind}`), the
/// `x-normalizer-error-kind` header and the `normalizer_dead_lettered_total` series carry
/// it. Who makes each: `normalize` the mapping's kinds (from
/// [`DeadLetterKind::InvalidJson`] to [`DeadLetterKind::OutputTooLarge`]); the worker
/// those that depend on the message's properties, its headers or the broker
/// ([`DeadLetterKind::PublishRefused`], [`DeadLetterKind::Undeliverable`],
/// [`DeadLetterKind::InvalidProperties`], [`DeadLetterKind::InvalidSignature`]); the
/// broker alone [`DeadLetterKind::DeliveryLimit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterKind {
    InvalidJson,
    BodyTooLarge,
    UnknownVendor,
    UnknownEventType,
    InvalidPayload,
    /// The body would fan out into more events than `limits.max_events_per_message`.
    TooManyEvents,
    /// The events would exceed `limits.max_output_bytes`, or one of them would not fit
    /// the broker's frame as an AMQP message.
    OutputTooLarge,
    /// The broker refused a publish of this message for good (it closed the channel:
    /// access refused, precondition failed, frame error).
    PublishRefused,
    /// An event of this message was not stored for `retry.max_elapsed_secs` while others
    /// to the same exchange were: nacked (a queue bound for its type refuses it, full with
    /// `reject-publish` or unavailable), returned with `events.unrouted` missing, or not
    /// confirmed in time.
    Undeliverable,
    /// The message's AMQP properties could not be taken as sent: a short string that is
    /// not UTF-8, headers nested too deep or not parseable, a repeated `x-vendor`.
    InvalidProperties,
    /// The vendor's signature header is missing (when required), malformed, or made by
    /// none of the configured secrets (`signatures.*`).
    InvalidSignature,
    /// The broker's own dead letter of a raw message over the raw queue's
    /// `x-delivery-limit` (or rejected without requeue), routed with
    /// [`DELIVERY_LIMIT_ROUTING_KEY`] and carrying only `x-death`. The worker never makes
    /// one; the `dlq` commands read it.
    DeliveryLimit,
}

impl DeadLetterKind {
    /// Every kind, the broker's last.
    pub const ALL: [DeadLetterKind; 12] = [
        DeadLetterKind::InvalidJson,
        DeadLetterKind::BodyTooLarge,
        DeadLetterKind::UnknownVendor,
        DeadLetterKind::UnknownEventType,
        DeadLetterKind::InvalidPayload,
        DeadLetterKind::TooManyEvents,
        DeadLetterKind::OutputTooLarge,
        DeadLetterKind::PublishRefused,
        DeadLetterKind::Undeliverable,
        DeadLetterKind::InvalidProperties,
        DeadLetterKind::InvalidSignature,
        DeadLetterKind::DeliveryLimit,
    ];

    /// The kinds the worker itself gives its dead letters: all but
    /// [`DeadLetterKind::DeliveryLimit`]. The closed set of the worker's
    /// `x-normalizer-error-kind` and of its dead-letter series.
    pub const WORKER_MADE: &[DeadLetterKind] = match DeadLetterKind::ALL.split_last() {
        Some((DeadLetterKind::DeliveryLimit, worker_made)) => worker_made,
        _ => panic!("the broker's kind is listed last"),
    };

    pub const fn as_str(self) -> &'static str {
        match self {
            DeadLetterKind::InvalidJson => "invalid_json",
            DeadLetterKind::BodyTooLarge => "body_too_large",
            DeadLetterKind::UnknownVendor => "unknown_vendor",
            DeadLetterKind::UnknownEventType => "unknown_event_type",
            DeadLetterKind::InvalidPayload => "invalid_payload",
            DeadLetterKind::TooManyEvents => "too_many_events",
            DeadLetterKind::OutputTooLarge => "output_too_large",
            DeadLetterKind::PublishRefused => "publish_refused",
            DeadLetterKind::Undeliverable => "undeliverable",
            DeadLetterKind::InvalidProperties => "invalid_properties",
            DeadLetterKind::InvalidSignature => "invalid_signature",
            DeadLetterKind::DeliveryLimit => "delivery_limit",
        }
    }
}

impl fmt::Display for DeadLetterKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is no [`DeadLetterKind`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a dead-letter kind")]
pub struct UnknownKind;

impl FromStr for DeadLetterKind {
    type Err = UnknownKind;

    /// The kind whose [`DeadLetterKind::as_str`] is `s`, exactly.
    fn from_str(s: &str) -> Result<DeadLetterKind, UnknownKind> {
        DeadLetterKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == s)
            .ok_or(UnknownKind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_strings_are_the_contract() {
        let strings: Vec<_> = DeadLetterKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            strings,
            [
                "invalid_json",
                "body_too_large",
                "unknown_vendor",
                "unknown_event_type",
                "invalid_payload",
                "too_many_events",
                "output_too_large",
                "publish_refused",
                "undeliverable",
                "invalid_properties",
                "invalid_signature",
                "delivery_limit"
            ]
        );
        for k in DeadLetterKind::ALL {
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
            assert_eq!(k.to_string(), k.as_str());
        }
    }

    #[test]
    fn every_kind_round_trips_through_its_string() {
        for k in DeadLetterKind::ALL {
            assert_eq!(k.as_str().parse::<DeadLetterKind>(), Ok(k));
        }
        assert_eq!("Invalid_Json".parse::<DeadLetterKind>(), Err(UnknownKind));
        assert_eq!("".parse::<DeadLetterKind>(), Err(UnknownKind));
    }

    /// The worker makes every kind but the broker's own.
    #[test]
    fn the_worker_makes_every_kind_but_delivery_limit() {
        let all_but_broker: Vec<_> = DeadLetterKind::ALL
            .into_iter()
            .filter(|k| *k != DeadLetterKind::DeliveryLimit)
            .collect();
        assert_eq!(DeadLetterKind::WORKER_MADE.to_vec(), all_but_broker);
    }
}
