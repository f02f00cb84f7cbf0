//! What happens to one raw delivery, decided without a broker: what to publish for it,
//! how a failed publish is judged, when to retry, and how settlements reach the broker.
//!
//! # Delivery policy
//!
//! - **One message, one fate.** Every raw message ends as its canonical events or as
//!   exactly one dead letter with a reason. A failure caused by one message (its body,
//!   its properties, its size) is settled for that message alone: it never restarts the
//!   session, requeues a neighbour or spends a neighbour's delivery attempt.
//! - **Bounded before anything is published.** [`plan`] builds a message's output within
//!   [`Limits`]: events per message, bytes of JSON per message, entity id length. The
//!   broker glue then checks each publish's properties against the negotiated
//!   `frame_max`. Over any bound: one dead letter (`too_many_events`, `output_too_large`,
//!   `invalid_payload`), nothing published.
//! - **Ack only after everything is confirmed.** A raw message is acknowledged only once
//!   every message it produced has been confirmed by the broker (`basic.ack` from
//!   publisher confirms, not returned). A crash before that leaves it unacknowledged, the
//!   broker redelivers it, and its events are published again with the same stable ids.
//! - **Normalization errors are permanent and never requeued.** The same bytes fail the
//!   same way every time. The raw message goes to the dead-letter exchange with its
//!   original bytes and its properties, made safe to publish (see the broker's
//!   `dead_letter` module), plus the reason.
//! - **We publish the dead letter ourselves** instead of `basic.reject(requeue=false)`
//!   into the queue's dead-letter exchange: a broker-made dead letter cannot say why, and
//!   ops need the reason to triage and replay. Only a dead letter that itself cannot be
//!   published is handed to the broker that way, as a last resort that still loses
//!   nothing.
//! - **Permanent or transient is decided per publish** ([`fault_of`]): the broker closing
//!   the channel over a publish (access refused, precondition failed, frame error) may be
//!   that message's fault; the worker finds which message by republishing the suspects
//!   one at a time and dead-letters it as `publish_refused`. A lost connection or a
//!   missing exchange is about the broker.
//! - **A refused output is retried in place, holding no one else** ([`RetryPolicy`]): a
//!   nacked, returned or unconfirmed publish is republished with jittered exponential
//!   backoff while the other deliveries go on. Refused again while others to the same
//!   exchange are stored, the refusal is the message's own: past `retry.max_elapsed_secs`
//!   (or sooner, when held messages fill half the window) it is dead-lettered as
//!   `undeliverable`. When nothing is stored either, the broker refuses everything: past
//!   the budget the message is rejected with `requeue=true` (`basic.reject`, which
//!   RabbitMQ 4.3+ counts toward the delivery limit, unlike `basic.nack`), so the delivery
//!   limit counts real redeliveries. The steps are in the broker glue's pipeline core.
//! - **Order.** Within one worker, messages are published in the order they were
//!   consumed. They are settled as they finish: acks are batched with `multiple` while
//!   nothing earlier is held, one by one behind a held delivery ([`coalesce`]). A message
//!   held for retry comes out after those consumed behind it.
//! - **Bounded retries.** The raw queue's `x-delivery-limit` moves a message whose output
//!   fails every time to the dead-letter exchange (broker-side, at-least-once strategy,
//!   routing key `unknown.delivery_limit`), so nothing loops forever.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};

use crate::canonical::{CanonicalType, SchemaBase, Vendor, rfc3339_utc};
use crate::contract::DeadLetterKind;
use crate::contract::{MAX_DETAIL_BYTES, headers};
use crate::normalize::{EventJson, Limits, NormalizeError, normalize_json};
use crate::signatures::{Signatures, verify};
use crate::vendors::Unmapped;

/// A raw webhook delivery as the broker glue hands it over: only what the decision needs,
/// no client-library types.
#[derive(Debug, Clone, Default)]
pub struct RawMessage {
    pub body: Vec<u8>,
    pub exchange: String,
    pub routing_key: String,
    /// The `x-vendor` header.
    pub vendor_header: VendorHeader,
    /// The `x-received-at` header, when present as text.
    pub received_at_header: Option<String>,
    /// The AMQP `timestamp` property (seconds since the epoch).
    pub timestamp: Option<u64>,
    /// What was wrong with the message's properties as they came off the wire (each
    /// naming a property, never its value); any makes it an `invalid_properties` dead
    /// letter.
    pub property_problems: Vec<String>,
    /// The vendors' signature headers ([`crate::signatures::HEADERS`]) present as text,
    /// by lowercase name.
    pub signature_headers: Vec<(&'static str, String)>,
}

impl RawMessage {
    /// The vendor hint: `x-vendor` when set, else the routing key's first word when it is a
    /// vendor key (`deel`, `deel.webhook`), else none (the body's shape decides). An
    /// `x-vendor` that is not text is no hint: [`plan`] dead-letters the message.
    pub fn vendor_hint(&self) -> Option<&str> {
        if let VendorHeader::Text(v) = &self.vendor_header {
            if !v.trim().is_empty() {
                return Some(v);
            }
        }
        let first = self.routing_key.split('.').next().unwrap_or_default();
        first.parse::<Vendor>().is_ok().then_some(first)
    }

    /// When the webhook was received: `x-received-at` if it parses, else the AMQP
    /// timestamp, else `now`. A source that RFC 3339 cannot write in UTC (a year outside
    /// 0000 to 9999, a leap second) is passed over like one that does not parse: it
    /// would become the `time` of events whose body has none.
    pub fn received_at(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        self.receipt_time().0.unwrap_or(now)
    }

    /// How long before `now` the gateway received the message (the end-to-end lag, taken
    /// when its events are confirmed): only when the message says when (its
    /// `x-received-at` or AMQP timestamp), never from the worker's own fallback, which
    /// would hide a backlog as no lag at all. A receipt time after `now` (clocks apart)
    /// is no lag.
    pub fn receipt_lag(&self, now: DateTime<Utc>) -> Option<Duration> {
        let received = self.receipt_time().0?;
        Some((now - received).to_std().unwrap_or_default())
    }

    /// The receipt time the message carries, if any source is usable, and the sources
    /// that were present but passed over on the way (for the broker glue to log).
    pub fn receipt_time(&self) -> (Option<DateTime<Utc>>, Vec<PassedOver>) {
        let mut passed_over = Vec::new();
        if let Some(header) = self.received_at_header.as_deref() {
            match DateTime::parse_from_rfc3339(header.trim()) {
                Ok(t) if rfc3339_utc::writable(&t.with_timezone(&Utc)) => {
                    return (Some(t.with_timezone(&Utc)), passed_over);
                }
                Ok(_) => passed_over.push(PassedOver {
                    source: headers::RECEIVED_AT,
                    why: "outside RFC 3339 once in UTC (years 0000 to 9999, seconds 00 to 59)",
                }),
                Err(_) => passed_over.push(PassedOver {
                    source: headers::RECEIVED_AT,
                    why: "not an RFC 3339 date-time",
                }),
            }
        }
        if let Some(secs) = self.timestamp {
            let time = i64::try_from(secs)
                .ok()
                .and_then(|secs| Utc.timestamp_opt(secs, 0).single())
                .filter(rfc3339_utc::writable);
            match time {
                Some(t) => return (Some(t), passed_over),
                // 1.7e12 seconds, say, is the year 55840: a gateway that wrote
                // milliseconds.
                None => passed_over.push(PassedOver {
                    source: "timestamp",
                    why: "after the year 9999 read as seconds (milliseconds sent?)",
                }),
            }
        }
        (None, passed_over)
    }
}

/// The `x-vendor` header as it came.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum VendorHeader {
    #[default]
    Absent,
    /// A long or short string, or a byte array (read as UTF-8, invalid sequences
    /// replaced).
    Text(String),
    /// Any other AMQP field type: which (`an integer`, `a table`, …), never the value.
    /// The raw-message contract makes it an `unknown_vendor` dead letter, like text that
    /// is no vendor key: guessing the vendor from the body instead would ignore what
    /// the gateway meant to say.
    NotText(&'static str),
}

/// A receipt-time source a message carried but [`RawMessage::received_at`] did not use.
/// Names the source, never its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassedOver {
    /// `x-received-at` or `timestamp` (the AMQP property).
    pub source: &'static str,
    pub why: &'static str,
}

/// What to publish for one raw message.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Its canonical events (at least one), in order, all of one vendor.
    Publish {
        vendor: Vendor,
        events: Vec<OutgoingEvent>,
    },
    /// The original message, to the dead-letter exchange.
    DeadLetter(DeadLetter),
}

/// One canonical event, ready for the wire. The broker glue maps each field to the AMQP
/// property of the same name.
#[derive(Debug, Clone, PartialEq)]
pub struct OutgoingEvent {
    /// The canonical type: the routing key and AMQP `type`.
    pub event_type: CanonicalType,
    pub body: Vec<u8>,
    /// The stable id: AMQP `message_id`.
    pub message_id: String,
    /// The event's `time`, seconds since the epoch: AMQP `timestamp`. The event's own
    /// time (not the publish time) so that a redelivered event is the same message.
    pub timestamp: u64,
    /// Headers: `cloudEvents_subject` only (see [`OutgoingEvent::new`]).
    pub headers: Vec<(&'static str, String)>,
}

impl OutgoingEvent {
    /// The event as an AMQP message. Every attribute is in the body (structured mode);
    /// the properties repeat what consumers route and deduplicate on without parsing: the
    /// id (`message_id`), the type (routing key and `type`), the time (`timestamp`), and
    /// the subject as the one header (`cloudEvents_subject`, the CloudEvents AMQP
    /// binding's name), for header-based routing and hashing. Headers that only repeated
    /// those (id, type, source, time, spec version) cost the broker about 7% of its work
    /// per event and were dropped (`docs/performance.md`).
    fn new(event: EventJson) -> OutgoingEvent {
        OutgoingEvent {
            event_type: event.event_type,
            message_id: event.id.to_string(),
            timestamp: u64::try_from(event.time.timestamp()).unwrap_or(0),
            headers: vec![("cloudEvents_subject", event.subject)],
            body: event.json,
        }
    }
}

impl OutgoingEvent {
    /// The routing key on the canonical exchange: the type.
    pub fn routing_key(&self) -> &str {
        self.event_type.as_str()
    }
}

/// A raw message that cannot be normalized or published, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// `{vendor or unknown}.{kind}`.
    pub routing_key: String,
    pub kind: DeadLetterKind,
    pub vendor: Option<Vendor>,
    /// The reason: field paths and sizes, never values from the body; at most
    /// [`MAX_DETAIL_BYTES`].
    pub detail: String,
    /// Headers to add to the original ones.
    pub headers: Vec<(&'static str, String)>,
}

impl DeadLetter {
    /// The dead letter of `raw` for this reason. `detail` must not hold body values.
    pub fn new(
        raw: &RawMessage,
        kind: DeadLetterKind,
        vendor: Option<Vendor>,
        detail: &str,
        now: DateTime<Utc>,
    ) -> DeadLetter {
        let detail = truncate(detail, MAX_DETAIL_BYTES).to_owned();
        DeadLetter {
            routing_key: format!("{}.{}", vendor.map_or("unknown", Vendor::key), kind),
            kind,
            vendor,
            headers: vec![
                (headers::ERROR_KIND, kind.as_str().to_owned()),
                (headers::ERROR, detail.clone()),
                (headers::FAILED_AT, rfc3339_utc::format(&now)),
                (headers::VERSION, env!("CARGO_PKG_VERSION").to_owned()),
                (headers::ORIGINAL_EXCHANGE, raw.exchange.clone()),
                (headers::ORIGINAL_ROUTING_KEY, raw.routing_key.clone()),
            ],
            detail,
        }
    }

    fn from_error(raw: &RawMessage, error: &NormalizeError, now: DateTime<Utc>) -> DeadLetter {
        DeadLetter::new(raw, error.kind(), error.vendor(), &error.to_string(), now)
    }
}

/// `s` cut to at most `max` bytes, at a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// [`plan_checked`] with no signature secrets configured and every unmapped type a
/// dead letter.
pub fn plan(raw: &RawMessage, limits: &Limits, now: DateTime<Utc>) -> Plan {
    plan_checked(
        raw,
        limits,
        &Signatures::default(),
        &Unmapped::default(),
        SchemaBase::default(),
        now,
    )
}

/// Normalizes a raw message and says what to publish for it, within `limits`, checking
/// the vendor's signature against `signatures` (before mapping when the gateway names
/// the vendor, after detecting it otherwise) and passing unmapped types through as
/// `unmapped` says, each event's `dataschema` made from `schemas`. Pure: `now` is passed
/// in.
pub fn plan_checked(
    raw: &RawMessage,
    limits: &Limits,
    signatures: &Signatures,
    unmapped: &Unmapped,
    schemas: SchemaBase,
    now: DateTime<Utc>,
) -> Plan {
    let signed = |vendor: Vendor| {
        verify(
            signatures,
            vendor,
            |name| {
                raw.signature_headers
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| v.as_str())
            },
            &raw.body,
        )
        .map_err(|e| {
            Plan::DeadLetter(DeadLetter::new(
                raw,
                DeadLetterKind::InvalidSignature,
                Some(vendor),
                &e.to_string(),
                now,
            ))
        })
    };
    let hinted = raw.vendor_hint().and_then(|v| v.parse::<Vendor>().ok());
    if let Some(vendor) = hinted
        && let Err(refused) = signed(vendor)
    {
        return refused;
    }
    match plan_unchecked(raw, limits, unmapped, schemas, now) {
        // Detected from the body: checked now.
        Plan::Publish { vendor, events } if hinted != Some(vendor) => match signed(vendor) {
            Ok(()) => Plan::Publish { vendor, events },
            Err(refused) => refused,
        },
        planned => planned,
    }
}

fn plan_unchecked(
    raw: &RawMessage,
    limits: &Limits,
    unmapped: &Unmapped,
    schemas: SchemaBase,
    now: DateTime<Utc>,
) -> Plan {
    if !raw.property_problems.is_empty() {
        let detail = raw.property_problems.join("; ");
        return Plan::DeadLetter(DeadLetter::new(
            raw,
            DeadLetterKind::InvalidProperties,
            None,
            &detail,
            now,
        ));
    }
    if let VendorHeader::NotText(found) = raw.vendor_header {
        let detail = format!(
            "header {} is {found}, not text: expected a vendor key (entuitive, authenticate or deel)",
            headers::VENDOR
        );
        return Plan::DeadLetter(DeadLetter::new(
            raw,
            DeadLetterKind::UnknownVendor,
            None,
            &detail,
            now,
        ));
    }
    let received_at = raw.received_at(now);
    match normalize_json(
        &raw.body,
        raw.vendor_hint(),
        received_at,
        limits,
        unmapped,
        schemas,
    ) {
        Ok(events) => match events.first() {
            Some(first) => Plan::Publish {
                vendor: first.event_type.vendor(),
                events: events.into_iter().map(OutgoingEvent::new).collect(),
            },
            // `normalize_json` never succeeds with no event; kept a dead letter, not a
            // panic.
            None => Plan::DeadLetter(DeadLetter::from_error(
                raw,
                &NormalizeError::Unserializable { vendor: None },
                now,
            )),
        },
        Err(e) => Plan::DeadLetter(DeadLetter::from_error(raw, &e, now)),
    }
}

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

/// Exponential backoff with "equal jitter": step `min(initial * 2^attempt, max)`, delay
/// `step/2 + jitter * step/2` with `jitter` in `[0, 1)`.
pub fn backoff_delay(initial: Duration, max: Duration, attempt: u32, jitter: f64) -> Duration {
    let step = initial
        .checked_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
        .unwrap_or(max)
        .min(max);
    let half = step / 2;
    half + half.mul_f64(jitter.clamp(0.0, 1.0))
}

/// How one raw message is settled with the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Everything it produced is stored. `multiple`: every earlier delivery is settled
    /// already (here or before), so an ack up to this tag acks nothing else.
    Ack { tag: u64, multiple: bool },
    /// Give it back: `requeue` for a redelivery, else the raw queue's dead-letter
    /// exchange takes it (the last resort for an unpublishable dead letter).
    Reject { tag: u64, requeue: bool },
}

/// What goes on the wire for a run of settlements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettleFrame {
    /// `basic.ack` with `multiple`: every unsettled delivery up to `tag`; `deliveries`
    /// of them were settled by this batch.
    AckUpTo { tag: u64, deliveries: u64 },
    /// `basic.ack` of one delivery, with earlier ones still held.
    Ack { tag: u64 },
    /// `basic.reject` of one delivery.
    Reject { tag: u64, requeue: bool },
}

/// When settled deliveries go to the broker. Every ack costs the broker a write to the
/// queue's log, so acks wait to be batched: until `batch` settlements are pending, or
/// the oldest has waited `wait`. Waiting costs no latency downstream (events are
/// published before their raw message is settled); it only holds prefetch slots a little
/// longer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckPolicy {
    pub batch: usize,
    pub wait: Duration,
}

impl AckPolicy {
    /// The worker's policy: 64 deliveries or 1 ms, whichever comes first.
    pub const DEFAULT: AckPolicy = AckPolicy {
        batch: 64,
        wait: Duration::from_millis(1),
    };

    /// Whether to send the `pending` settlements now; `draining` sends at once.
    pub fn due(&self, pending: usize, oldest_waited: Duration, draining: bool) -> bool {
        pending > 0 && (draining || pending >= self.batch || oldest_waited >= self.wait)
    }
}

/// Batches settlements, kept in their order: consecutive acks that may cover every
/// earlier delivery become one `multiple` ack of the highest tag; an ack with an earlier
/// delivery still held goes alone (a `multiple` ack would settle that one too); a reject
/// ends a batch, since acking past it first would ack the rejected delivery.
pub fn coalesce(settles: &[Settle]) -> Vec<SettleFrame> {
    let mut frames: Vec<SettleFrame> = Vec::new();
    for settle in settles {
        match *settle {
            Settle::Ack {
                tag,
                multiple: true,
            } => match frames.last_mut() {
                Some(SettleFrame::AckUpTo {
                    tag: last,
                    deliveries,
                }) => {
                    *last = (*last).max(tag);
                    *deliveries += 1;
                }
                _ => frames.push(SettleFrame::AckUpTo { tag, deliveries: 1 }),
            },
            Settle::Ack {
                tag,
                multiple: false,
            } => frames.push(SettleFrame::Ack { tag }),
            Settle::Reject { tag, requeue } => frames.push(SettleFrame::Reject { tag, requeue }),
        }
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::CanonicalEvent;
    // Hex HMAC-SHA256 of a prefix and the body: the vendors' schemes.
    use crate::signatures::tests::sign;

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

    const ENTUITIVE_CREATED: &[u8] =
        br#"{"event_type":"user.created","data":{"id":7,"email":"a@example.com","first_name":"A","last_name":"B","status":"active"}}"#;

    /// The configured schema base is in every event's `dataschema`, and nothing else
    /// changes; the default base gives what `plan` gives.
    #[test]
    fn events_name_their_data_schema_under_the_configured_base() {
        let bodies = |schemas: SchemaBase| {
            let planned = plan_checked(
                &raw(ENTUITIVE_CREATED),
                &Limits::default(),
                &Signatures::default(),
                &Unmapped::default(),
                schemas,
                now(),
            );
            let Plan::Publish { events, .. } = planned else {
                panic!("{planned:?}")
            };
            events
                .into_iter()
                .map(|e| serde_json::from_slice::<serde_json::Value>(&e.body).unwrap())
                .collect::<Vec<_>>()
        };
        let default = bodies(SchemaBase::default());
        let Plan::Publish { events, .. } = plan(&raw(ENTUITIVE_CREATED), &Limits::default(), now())
        else {
            panic!()
        };
        assert_eq!(
            default,
            events
                .iter()
                .map(|e| serde_json::from_slice::<serde_json::Value>(&e.body).unwrap())
                .collect::<Vec<_>>()
        );
        assert_eq!(
            default[0]["dataschema"],
            "https://github.com/webhook-normalizer/webhook-normalizer/schema/event-data.v1.schema.json#/$defs/entuitive.user.created"
        );
        let other = bodies(SchemaBase::new("https://schemas.example.com/hr/").unwrap());
        assert_eq!(
            other[0]["dataschema"],
            "https://schemas.example.com/hr/event-data.v1.schema.json#/$defs/entuitive.user.created"
        );
        let mut same = other[0].clone();
        same["dataschema"] = default[0]["dataschema"].clone();
        assert_eq!(same, default[0]);
    }

    #[test]
    fn signatures_are_checked_before_mapping_with_a_hint_and_after_detection_without() {
        use crate::signatures::{DEEL_HEADER, ENTUITIVE_HEADER, Secret};
        let mut signatures = Signatures::default();
        signatures.entuitive.secrets = vec![Secret::new("e-key")];
        signatures.deel.secrets = vec![Secret::new("d-key")];
        let signed = |body: &[u8], header: &'static str, sig: String, hint: &str| RawMessage {
            signature_headers: vec![(header, sig)],
            routing_key: hint.into(),
            ..raw(body)
        };
        let kind = |m: &RawMessage| match plan_checked(
            m,
            &Limits::default(),
            &signatures,
            &Unmapped::default(),
            SchemaBase::default(),
            now(),
        ) {
            Plan::Publish { .. } => None,
            Plan::DeadLetter(dl) => Some((dl.kind, dl.routing_key, dl.detail)),
        };
        // Detected from the body, signed: events. Unsigned or wrongly signed: refused.
        let good = sign("e-key", b"", ENTUITIVE_CREATED);
        assert_eq!(
            kind(&signed(
                ENTUITIVE_CREATED,
                ENTUITIVE_HEADER,
                good.clone(),
                "gw"
            )),
            None
        );
        assert_eq!(
            kind(&raw(ENTUITIVE_CREATED)),
            Some((
                DeadLetterKind::InvalidSignature,
                "entuitive.invalid_signature".into(),
                "missing x-entuitive-signature (signatures.entuitive.required)".into()
            ))
        );
        let wrong = sign("other", b"", ENTUITIVE_CREATED);
        let (k, _, detail) = kind(&signed(
            ENTUITIVE_CREATED,
            ENTUITIVE_HEADER,
            wrong.clone(),
            "gw",
        ))
        .unwrap();
        assert_eq!(k, DeadLetterKind::InvalidSignature);
        assert!(!detail.contains(&wrong), "{detail}");
        // With a hint, checked first: a bad signature on a body that would not map is
        // invalid_signature; a good one on it gets the mapping's verdict.
        let junk = b"not json";
        assert_eq!(
            kind(&signed(junk, DEEL_HEADER, sign("x", b"POST", junk), "deel")).map(|k| k.0),
            Some(DeadLetterKind::InvalidSignature)
        );
        assert_eq!(
            kind(&signed(
                junk,
                DEEL_HEADER,
                sign("d-key", b"POST", junk),
                "deel"
            ))
            .map(|k| k.0),
            Some(DeadLetterKind::InvalidJson)
        );
        // Nothing configured: nothing checked (plan).
        assert!(matches!(
            plan(&raw(ENTUITIVE_CREATED), &Limits::default(), now()),
            Plan::Publish { .. }
        ));
    }

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
        m.vendor_header = VendorHeader::Text("authenticate".into());
        assert_eq!(m.vendor_hint(), Some("authenticate"));
        m.vendor_header = VendorHeader::Text("   ".into());
        assert_eq!(m.vendor_hint(), None);
        m.vendor_header = VendorHeader::NotText("an integer");
        assert_eq!(m.vendor_hint(), None);
    }

    #[test]
    fn the_receipt_lag_is_known_only_from_what_the_message_says() {
        let mut m = RawMessage::default();
        assert_eq!(m.receipt_lag(now()), None, "no receipt time: no lag");
        m.received_at_header = Some("not a time".into());
        assert_eq!(m.receipt_lag(now()), None);
        m.timestamp = Some(u64::try_from(now().timestamp()).unwrap() - 90);
        assert_eq!(
            m.receipt_lag(now()),
            Some(std::time::Duration::from_secs(90))
        );
        m.received_at_header = Some(rfc3339_utc::format(
            &(now() - chrono::Duration::seconds(12)),
        ));
        assert_eq!(
            m.receipt_lag(now()),
            Some(std::time::Duration::from_secs(12))
        );
        m.received_at_header = Some(rfc3339_utc::format(&(now() + chrono::Duration::seconds(5))));
        assert_eq!(m.receipt_lag(now()), Some(std::time::Duration::ZERO));
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
    fn receipt_times_rfc3339_cannot_write_are_passed_over() {
        let mut m = raw(b"{}");
        // A gateway's millisecond timestamp is year 55840 read as seconds.
        m.timestamp = Some(1_700_000_000_000);
        assert_eq!(m.received_at(now()), now());
        for header in [
            "0000-01-01T00:00:00+14:00",
            "9999-12-31T23:59:59-14:00",
            "2025-01-01T00:00:60Z",
            "2016-12-31T23:59:60Z",
        ] {
            m.received_at_header = Some(header.into());
            m.timestamp = Some(1_700_000_000);
            assert_eq!(m.received_at(now()).timestamp(), 1_700_000_000, "{header}");
            m.timestamp = Some(1_700_000_000_000);
            assert_eq!(m.received_at(now()), now(), "{header}");
        }
    }

    #[test]
    fn a_mapped_body_is_published_with_the_output_contract() {
        let Plan::Publish {
            vendor: Vendor::Authenticate,
            events: out,
        } = plan(&raw(PII_UPDATE), &Limits::default(), now())
        else {
            panic!("expected events");
        };
        assert_eq!(out.len(), 1);
        let e = &out[0];
        let event: CanonicalEvent = serde_json::from_slice(&e.body).unwrap();
        assert_eq!(e.routing_key(), "authenticate.user.updated");
        assert_eq!(e.event_type.as_str(), "authenticate.user.updated");
        assert_eq!(e.message_id, event.id.to_string());
        assert_eq!(e.timestamp, 1_607_368_712);
        let h: std::collections::HashMap<_, _> = e.headers.iter().cloned().collect();
        assert_eq!(h["cloudEvents_subject"], "user/u-1");
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn receipt_time_reaches_events_without_a_time() {
        let mut m = raw(br#"{"event_type":"user.deactivated","data":{"email":"a@example.com"}}"#);
        m.received_at_header = Some("2025-05-05T05:05:05Z".into());
        let Plan::Publish { events: out, .. } = plan(&m, &Limits::default(), now()) else {
            panic!("expected events");
        };
        let event: CanonicalEvent = serde_json::from_slice(&out[0].body).unwrap();
        assert_eq!(event.time_rfc3339(), "2025-05-05T05:05:05Z");
    }

    #[test]
    fn each_error_kind_dead_letters_with_its_routing_key_and_headers() {
        let limits = Limits {
            max_body_bytes: 200,
            ..Limits::default()
        };
        let mut big = raw(&[b' '; 201]);
        big.vendor_header = VendorHeader::Text("deel".into());
        let mut bad_hint = raw(PII_UPDATE);
        bad_hint.vendor_header = VendorHeader::Text("stripe".into());
        let mut not_text = raw(PII_UPDATE);
        not_text.vendor_header = VendorHeader::NotText("a table");
        let cases = [
            (
                raw(b"{nope"),
                "unknown.invalid_json",
                DeadLetterKind::InvalidJson,
            ),
            (big, "deel.body_too_large", DeadLetterKind::BodyTooLarge),
            (
                bad_hint,
                "unknown.unknown_vendor",
                DeadLetterKind::UnknownVendor,
            ),
            (
                not_text,
                "unknown.unknown_vendor",
                DeadLetterKind::UnknownVendor,
            ),
            (
                raw(b"{\"hello\":1}"),
                "unknown.unknown_vendor",
                DeadLetterKind::UnknownVendor,
            ),
            (
                raw(br#"{"id":"1","event":"NEW_THING","order":{}}"#),
                "authenticate.unknown_event_type",
                DeadLetterKind::UnknownEventType,
            ),
            (
                raw(br#"{"id":"1","event":"USER_PII_UPDATE","order":{}}"#),
                "authenticate.invalid_payload",
                DeadLetterKind::InvalidPayload,
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
    fn a_fan_out_over_the_limits_is_one_dead_letter_and_nothing_to_publish() {
        let body = |n: usize| {
            let items: Vec<_> = (0..n).map(|i| serde_json::json!({"id": i})).collect();
            serde_json::to_vec(&serde_json::json!({
                "data": {"meta": {"event_type": "timesheet.reviewed"}, "resource": items},
                "timestamp": "2023-05-11T15:12:41.663Z"
            }))
            .unwrap()
        };
        let limits = Limits {
            max_events_per_message: 3,
            max_output_bytes: 2 * 1024 * 1024,
            ..Limits::default()
        };
        let Plan::Publish { events, .. } = plan(&raw(&body(3)), &limits, now()) else {
            panic!("three elements fit");
        };
        assert_eq!(events.len(), 3);
        let Plan::DeadLetter(dl) = plan(&raw(&body(4)), &limits, now()) else {
            panic!("four do not");
        };
        assert_eq!(dl.routing_key, "deel.too_many_events");
        assert_eq!(
            dl.detail,
            "$.data.resource has 4 elements, over the limit of 3 events per message"
        );

        // Three events of ~300 bytes each: a budget of 700 stops at the third.
        let tight = Limits {
            max_output_bytes: 700,
            ..limits
        };
        let Plan::DeadLetter(dl) = plan(&raw(&body(3)), &tight, now()) else {
            panic!("over the output budget");
        };
        assert_eq!(dl.routing_key, "deel.output_too_large");
        assert!(dl.detail.ends_with("of 3"), "{}", dl.detail);
    }

    #[test]
    fn dead_letter_details_are_cut_to_the_header_budget_at_a_char_boundary() {
        let detail = "é".repeat(MAX_DETAIL_BYTES);
        let dl = DeadLetter::new(
            &raw(b"{}"),
            DeadLetterKind::PublishRefused,
            Some(Vendor::Deel),
            &detail,
            now(),
        );
        assert_eq!(dl.routing_key, "deel.publish_refused");
        assert_eq!(dl.detail.len(), MAX_DETAIL_BYTES);
        assert!(dl.detail.chars().all(|c| c == 'é'));
    }

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

    #[test]
    fn settlements_wait_for_a_batch_or_a_millisecond_unless_draining() {
        let policy = AckPolicy::DEFAULT;
        let ms = Duration::from_millis;
        let cases = [
            (0, ms(5), true, false),
            (1, ms(0), false, false),
            (63, Duration::from_micros(999), false, false),
            (64, ms(0), false, true),
            (1, ms(1), false, true),
            (1, ms(0), true, true),
        ];
        for (pending, waited, draining, due) in cases {
            assert_eq!(
                policy.due(pending, waited, draining),
                due,
                "{pending} pending, {waited:?}, draining {draining}"
            );
        }
    }

    #[test]
    fn acks_behind_a_held_delivery_go_alone_and_the_rest_batch_again_after_it() {
        let ack = |tag| Settle::Ack {
            tag,
            multiple: true,
        };
        let single = |tag| Settle::Ack {
            tag,
            multiple: false,
        };
        // 3 is held: 4 and 5 go alone; once 3 is settled, one multiple ack covers it
        // and 6.
        assert_eq!(
            coalesce(&[ack(1), ack(2), single(4), single(5), ack(3), ack(6)]),
            [
                SettleFrame::AckUpTo {
                    tag: 2,
                    deliveries: 2
                },
                SettleFrame::Ack { tag: 4 },
                SettleFrame::Ack { tag: 5 },
                SettleFrame::AckUpTo {
                    tag: 6,
                    deliveries: 2
                },
            ]
        );
    }

    #[test]
    fn consecutive_acks_become_one_multiple_ack_and_rejects_end_a_batch() {
        use Settle::Reject;
        #[allow(non_snake_case)]
        let Ack = |tag: u64| Settle::Ack {
            tag,
            multiple: true,
        };
        let ack = |tag, deliveries| SettleFrame::AckUpTo { tag, deliveries };
        let cases: [(&[Settle], Vec<SettleFrame>); 5] = [
            (&[], vec![]),
            (&[Ack(1)], vec![ack(1, 1)]),
            (&[Ack(1), Ack(2), Ack(3)], vec![ack(3, 3)]),
            (
                &[
                    Ack(4),
                    Ack(5),
                    Reject {
                        tag: 6,
                        requeue: true,
                    },
                    Ack(7),
                    Ack(8),
                ],
                vec![
                    ack(5, 2),
                    SettleFrame::Reject {
                        tag: 6,
                        requeue: true,
                    },
                    ack(8, 2),
                ],
            ),
            (
                &[
                    Reject {
                        tag: 1,
                        requeue: false,
                    },
                    Reject {
                        tag: 2,
                        requeue: true,
                    },
                ],
                vec![
                    SettleFrame::Reject {
                        tag: 1,
                        requeue: false,
                    },
                    SettleFrame::Reject {
                        tag: 2,
                        requeue: true,
                    },
                ],
            ),
        ];
        for (settles, want) in cases {
            assert_eq!(coalesce(settles), want, "{settles:?}");
        }
    }
}
