//! What happens to one raw delivery, decided without a broker: which messages to publish
//! for it, and whether to acknowledge or requeue it once those publishes are settled.
//!
//! # Delivery policy
//!
//! - **Ack only after everything is confirmed.** A raw message is acknowledged only once
//!   every message it produced (its canonical events, or its dead letter) has been
//!   confirmed by the broker (`basic.ack` from publisher confirms, not returned). A crash
//!   at any point before that leaves the raw message unacknowledged, so the broker
//!   redelivers it; its events are then published again with the same stable ids, which
//!   makes the duplicate harmless.
//! - **Normalization errors are permanent and never requeued.** The same bytes fail the
//!   same way every time; requeueing would only loop. The raw message goes to the
//!   dead-letter exchange with its original bytes, properties and headers plus the reason.
//! - **We publish the dead letter ourselves** instead of `basic.reject(requeue=false)`
//!   into the queue's dead-letter exchange: a broker-made dead letter cannot say why (no
//!   error kind, no field path), and ops need the reason to triage and replay.
//! - **Transient failures requeue.** A publish that is nacked, returned as unroutable or
//!   not confirmed in time means the output may not be stored: the raw message is
//!   rejected with `requeue=true` and redelivered. `basic.reject` (not `basic.nack`)
//!   because RabbitMQ 4.3+ counts only rejects toward the delivery limit.
//! - **A lost publishing channel ends the session instead.** When a publish fails because
//!   the channel or connection is gone, every other delivery would fail the same way, and
//!   requeueing them would burn their delivery attempts in a tight loop. The delivery is
//!   left unacknowledged, the session is torn down and reopened, and closing it hands the
//!   delivery back to the queue.
//! - **Bounded retries.** The raw queue's `x-delivery-limit` moves a message that fails
//!   transiently every time to the dead-letter exchange (broker-side, at-least-once
//!   strategy, routing key `unknown.delivery_limit`), so nothing loops forever.

use chrono::{DateTime, TimeZone, Utc};

use crate::canonical::{CanonicalEvent, Vendor};
use crate::normalize::{ErrorKind, Limits, NormalizeError, normalize};

/// The `content_type` of canonical events (CloudEvents AMQP binding, structured mode).
pub const EVENT_CONTENT_TYPE: &str = "application/cloudevents+json; charset=utf-8";
/// The `app_id` of everything the worker publishes.
pub const APP_ID: &str = "webhook-normalizer";
/// The routing key the raw queue dead-letters with when a message hits its delivery limit.
pub const DELIVERY_LIMIT_ROUTING_KEY: &str = "unknown.delivery_limit";

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
}

/// A raw webhook delivery as the broker glue hands it over: only what the decision needs,
/// no client-library types.
#[derive(Debug, Clone, Default)]
pub struct RawMessage {
    pub body: Vec<u8>,
    pub exchange: String,
    pub routing_key: String,
    /// The `x-vendor` header, when present as text.
    pub vendor_header: Option<String>,
    /// The `x-received-at` header, when present as text.
    pub received_at_header: Option<String>,
    /// The AMQP `timestamp` property (seconds since the epoch).
    pub timestamp: Option<u64>,
}

impl RawMessage {
    /// The vendor hint: `x-vendor` when set, else the routing key's first word when it is a
    /// vendor key (`deel`, `deel.webhook`), else none (the body's shape decides).
    pub fn vendor_hint(&self) -> Option<&str> {
        if let Some(v) = self
            .vendor_header
            .as_deref()
            .filter(|v| !v.trim().is_empty())
        {
            return Some(v);
        }
        let first = self.routing_key.split('.').next().unwrap_or_default();
        first.parse::<Vendor>().is_ok().then_some(first)
    }

    /// When the webhook was received: `x-received-at` if it parses, else the AMQP
    /// timestamp, else `now`.
    pub fn received_at(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        self.received_at_header
            .as_deref()
            .and_then(|s| DateTime::parse_from_rfc3339(s.trim()).ok())
            .map(|t| t.with_timezone(&Utc))
            .or_else(|| {
                let secs = i64::try_from(self.timestamp?).ok()?;
                Utc.timestamp_opt(secs, 0).single()
            })
            .unwrap_or(now)
    }
}

/// What to publish for one raw message.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Its canonical events (at least one).
    Publish(Vec<OutgoingEvent>),
    /// The original message, to the dead-letter exchange.
    DeadLetter(DeadLetter),
}

/// One canonical event, ready for the wire. The broker glue maps each field to the AMQP
/// property of the same name.
#[derive(Debug, Clone, PartialEq)]
pub struct OutgoingEvent {
    pub routing_key: &'static str,
    pub body: Vec<u8>,
    /// The stable id: AMQP `message_id`.
    pub message_id: String,
    /// The canonical type: AMQP `type`.
    pub kind: &'static str,
    /// The event's `time`, seconds since the epoch: AMQP `timestamp`. The event's own
    /// time (not the publish time) so that a redelivered event is the same message.
    pub timestamp: u64,
    /// CloudEvents AMQP binding headers (`cloudEvents_` prefix).
    pub headers: Vec<(&'static str, String)>,
}

impl OutgoingEvent {
    fn new(event: &CanonicalEvent) -> Result<OutgoingEvent, serde_json::Error> {
        let time = event.time_rfc3339();
        Ok(OutgoingEvent {
            routing_key: event.routing_key(),
            body: serde_json::to_vec(event)?,
            message_id: event.id.to_string(),
            kind: event.event_type.as_str(),
            timestamp: u64::try_from(event.time.timestamp()).unwrap_or(0),
            headers: vec![
                ("cloudEvents_specversion", "1.0".to_owned()),
                ("cloudEvents_id", event.id.to_string()),
                ("cloudEvents_source", event.source.clone()),
                ("cloudEvents_type", event.event_type.as_str().to_owned()),
                ("cloudEvents_subject", event.subject.clone()),
                ("cloudEvents_time", time),
            ],
        })
    }
}

/// A raw message that cannot be normalized, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// `{vendor or unknown}.{kind}`.
    pub routing_key: String,
    pub kind: ErrorKind,
    pub vendor: Option<Vendor>,
    /// The error's detail: field paths, never values from the body.
    pub detail: String,
    /// Headers to add to the original ones.
    pub headers: Vec<(&'static str, String)>,
}

impl DeadLetter {
    fn new(raw: &RawMessage, error: &NormalizeError, now: DateTime<Utc>) -> DeadLetter {
        let kind = error.kind();
        let vendor = error.vendor();
        let detail = error.to_string();
        DeadLetter {
            routing_key: format!("{}.{}", vendor.map_or("unknown", Vendor::key), kind),
            kind,
            vendor,
            headers: vec![
                (headers::ERROR_KIND, kind.as_str().to_owned()),
                (headers::ERROR, detail.clone()),
                (
                    headers::FAILED_AT,
                    crate::canonical::rfc3339_utc::format(&now),
                ),
                (headers::VERSION, env!("CARGO_PKG_VERSION").to_owned()),
                (headers::ORIGINAL_EXCHANGE, raw.exchange.clone()),
                (headers::ORIGINAL_ROUTING_KEY, raw.routing_key.clone()),
            ],
            detail,
        }
    }
}

/// Normalizes a raw message and says what to publish for it. Pure: `now` is passed in.
pub fn plan(raw: &RawMessage, limits: &Limits, now: DateTime<Utc>) -> Plan {
    let result = normalize(&raw.body, raw.vendor_hint(), raw.received_at(now), limits);
    let error = match result {
        Ok(events) => match events.iter().map(OutgoingEvent::new).collect() {
            Ok(outgoing) => return Plan::Publish(outgoing),
            // Not reachable for events `normalize` built; kept as a dead letter, not a
            // panic, so that even a bug loses nothing.
            Err(_) => NormalizeError::Unserializable {
                vendor: events.first().map(|e| e.vendor),
            },
        },
        Err(e) => e,
    };
    Plan::DeadLetter(DeadLetter::new(raw, &error, now))
}

/// How one publish ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishOutcome {
    /// Confirmed by the broker and routed.
    Confirmed,
    /// Confirmed, but returned as unroutable (`mandatory`).
    Returned,
    /// Negatively confirmed: the broker could not store it.
    Nacked,
    /// No confirm within the timeout.
    TimedOut,
    /// The channel or connection failed before a confirm arrived.
    Failed,
}

/// What to do with the raw message once its publishes are settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// Everything it produced is stored: acknowledge it.
    Ack,
    /// Something may not be stored: reject with requeue, so it is redelivered.
    Requeue,
    /// The publishing channel is gone: leave it unacknowledged and restart the session;
    /// the broker requeues it when the session's connections close.
    Release,
}

/// Ack only when every publish was confirmed and routed; release when the channel failed;
/// otherwise requeue.
pub fn settle(outcomes: &[PublishOutcome]) -> Settlement {
    if outcomes.contains(&PublishOutcome::Failed) {
        Settlement::Release
    } else if !outcomes.is_empty() && outcomes.iter().all(|o| *o == PublishOutcome::Confirmed) {
        Settlement::Ack
    } else {
        Settlement::Requeue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-03-04T05:06:07Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn raw(body: &[u8]) -> RawMessage {
        RawMessage {
            body: body.to_vec(),
            exchange: "webhooks.raw".into(),
            routing_key: "gateway-1".into(),
            ..RawMessage::default()
        }
    }

    const PII_UPDATE: &[u8] =
        br#"{"id":"e-1","event":"USER_PII_UPDATE","eventDate":"2020-12-07T19:18:32.076Z","order":{"userAccessCode":"u-1"}}"#;

    #[test]
    fn vendor_hint_prefers_header_then_routing_key_word() {
        let mut m = raw(b"{}");
        assert_eq!(m.vendor_hint(), None);
        m.routing_key = "deel".into();
        assert_eq!(m.vendor_hint(), Some("deel"));
        m.routing_key = "Deel.webhooks".into();
        assert_eq!(m.vendor_hint(), Some("Deel"));
        m.routing_key = "deelx".into();
        assert_eq!(m.vendor_hint(), None);
        m.vendor_header = Some("authenticate".into());
        assert_eq!(m.vendor_hint(), Some("authenticate"));
        m.vendor_header = Some("   ".into());
        assert_eq!(m.vendor_hint(), None);
    }

    #[test]
    fn received_at_prefers_header_then_amqp_timestamp_then_now() {
        let mut m = raw(b"{}");
        assert_eq!(m.received_at(now()), now());
        m.timestamp = Some(1_700_000_000);
        assert_eq!(m.received_at(now()).timestamp(), 1_700_000_000);
        m.received_at_header = Some("2025-01-01T00:00:00+01:00".into());
        assert_eq!(
            m.received_at(now()).to_rfc3339(),
            "2024-12-31T23:00:00+00:00"
        );
        m.received_at_header = Some("not a time".into());
        assert_eq!(m.received_at(now()).timestamp(), 1_700_000_000);
        m.timestamp = Some(u64::MAX);
        assert_eq!(m.received_at(now()), now());
    }

    #[test]
    fn a_mapped_body_is_published_with_the_output_contract() {
        let Plan::Publish(out) = plan(&raw(PII_UPDATE), &Limits::default(), now()) else {
            panic!("expected events");
        };
        assert_eq!(out.len(), 1);
        let e = &out[0];
        let event: CanonicalEvent = serde_json::from_slice(&e.body).unwrap();
        assert_eq!(e.routing_key, "authenticate.user.updated");
        assert_eq!(e.kind, "authenticate.user.updated");
        assert_eq!(e.message_id, event.id.to_string());
        assert_eq!(e.timestamp, 1_607_368_712);
        let h: std::collections::HashMap<_, _> = e.headers.iter().cloned().collect();
        assert_eq!(h["cloudEvents_id"], event.id.to_string());
        assert_eq!(h["cloudEvents_source"], "/vendors/authenticate");
        assert_eq!(h["cloudEvents_type"], "authenticate.user.updated");
        assert_eq!(h["cloudEvents_subject"], "user/u-1");
        assert_eq!(h["cloudEvents_time"], "2020-12-07T19:18:32.076Z");
        assert_eq!(h["cloudEvents_specversion"], "1.0");
        assert_eq!(h.len(), 6);
    }

    #[test]
    fn receipt_time_reaches_events_without_a_time() {
        let mut m = raw(br#"{"event_type":"user.deactivated","data":{"email":"a@example.com"}}"#);
        m.received_at_header = Some("2025-05-05T05:05:05Z".into());
        let Plan::Publish(out) = plan(&m, &Limits::default(), now()) else {
            panic!("expected events");
        };
        let event: CanonicalEvent = serde_json::from_slice(&out[0].body).unwrap();
        assert_eq!(event.time_rfc3339(), "2025-05-05T05:05:05Z");
    }

    #[test]
    fn each_error_kind_dead_letters_with_its_routing_key_and_headers() {
        let limits = Limits {
            max_body_bytes: 200,
        };
        let mut big = raw(&[b' '; 201]);
        big.vendor_header = Some("deel".into());
        let mut bad_hint = raw(PII_UPDATE);
        bad_hint.vendor_header = Some("stripe".into());
        let cases = [
            (
                raw(b"{nope"),
                "unknown.invalid_json",
                ErrorKind::InvalidJson,
            ),
            (big, "deel.body_too_large", ErrorKind::BodyTooLarge),
            (bad_hint, "unknown.unknown_vendor", ErrorKind::UnknownVendor),
            (
                raw(b"{\"hello\":1}"),
                "unknown.unknown_vendor",
                ErrorKind::UnknownVendor,
            ),
            (
                raw(br#"{"id":"1","event":"NEW_THING","order":{}}"#),
                "authenticate.unknown_event_type",
                ErrorKind::UnknownEventType,
            ),
            (
                raw(br#"{"id":"1","event":"USER_PII_UPDATE","order":{}}"#),
                "authenticate.invalid_payload",
                ErrorKind::InvalidPayload,
            ),
        ];
        for (message, key, kind) in cases {
            let Plan::DeadLetter(dl) = plan(&message, &limits, now()) else {
                panic!("{key}: expected a dead letter");
            };
            assert_eq!(dl.routing_key, key);
            assert_eq!(dl.kind, kind);
            let h: std::collections::HashMap<_, _> = dl.headers.iter().cloned().collect();
            assert_eq!(h[headers::ERROR_KIND], kind.as_str());
            assert_eq!(h[headers::ERROR], dl.detail);
            assert_eq!(h[headers::FAILED_AT], "2026-03-04T05:06:07Z");
            assert_eq!(h[headers::VERSION], env!("CARGO_PKG_VERSION"));
            assert_eq!(h[headers::ORIGINAL_EXCHANGE], "webhooks.raw");
            assert_eq!(h[headers::ORIGINAL_ROUTING_KEY], "gateway-1");
        }
    }

    #[test]
    fn settle_acks_only_when_every_publish_is_confirmed_and_routed_and_releases_on_a_lost_channel()
    {
        use PublishOutcome::*;
        let cases: [(&[PublishOutcome], Settlement); 9] = [
            (&[Confirmed], Settlement::Ack),
            (&[Confirmed, Confirmed, Confirmed], Settlement::Ack),
            (&[], Settlement::Requeue),
            (&[Returned], Settlement::Requeue),
            (&[Nacked], Settlement::Requeue),
            (&[TimedOut], Settlement::Requeue),
            (&[Confirmed, Returned, Confirmed], Settlement::Requeue),
            (&[Failed], Settlement::Release),
            (&[Confirmed, Nacked, Failed], Settlement::Release),
        ];
        for (outcomes, want) in cases {
            assert_eq!(settle(outcomes), want, "{outcomes:?}");
        }
    }
}
