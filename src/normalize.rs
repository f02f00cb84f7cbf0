//! `normalize`: raw webhook bytes (and an optional vendor hint) in, canonical events or
//! one precise error out. Pure: the receipt time is an argument, nothing is read or sent.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::body;
use std::borrow::Cow;

use crate::canonical::{CanonicalEvent, CanonicalType, SchemaBase, Vendor, rfc3339_utc};
use crate::contract::DeadLetterKind;
use crate::redact::SafeName;
use crate::vendors::{self, MapError, Mapped, PayloadError, Unmapped};

/// Bounds on what one body may be and make. Each is checked before anything is built
/// that could exceed it, so memory follows the limits, not the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bodies larger than this are refused before parsing.
    pub max_body_bytes: usize,
    /// Most events one body may fan out into (Deel's array resources), checked before
    /// any event is built.
    pub max_events_per_message: usize,
    /// Most bytes of canonical event JSON one body may make, all its events together;
    /// checked as they are built, stopping at the first event over.
    pub max_output_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 1024 * 1024,
            max_events_per_message: 1000,
            max_output_bytes: 8 * 1024 * 1024,
        }
    }
}

/// Why a body cannot be normalized. Every variant is permanent: the same bytes fail the
/// same way every time, so retrying is pointless. Messages name fields by JSON path and
/// never include a value from the body (beyond a vendor type name, shown only when it
/// looks like one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NormalizeError {
    #[error("body is {size} bytes, over the limit of {limit}")]
    BodyTooLarge {
        vendor: Option<Vendor>,
        size: usize,
        limit: usize,
    },
    #[error("{detail}")]
    InvalidJson {
        vendor: Option<Vendor>,
        detail: String,
    },
    #[error("vendor hint {} is not a vendor key (expected entuitive, authenticate or deel)", SafeName(.hint))]
    UnknownVendorHint { hint: String },
    #[error(
        "the body fits no vendor's envelope (Deel data.meta beside data.resource, Authenticate event and order, Entuitive event_type and data or compliance_status_items)"
    )]
    UnknownShape,
    /// The body fits the envelopes of several vendors; which is not guessed.
    #[error(
        "the body fits the envelopes of more than one vendor ({}): name the vendor with a hint",
        .vendors.iter().map(|v| v.key()).collect::<Vec<_>>().join(", ")
    )]
    AmbiguousShape { vendors: Vec<Vendor> },
    #[error("{vendor} event type {} is not in the canonical type table", SafeName(.event_type))]
    UnknownEventType { vendor: Vendor, event_type: String },
    #[error("{error}")]
    InvalidPayload { vendor: Vendor, error: PayloadError },
    /// The hinted vendor's mapping failed on a body that fits another vendor's envelope
    /// and not the hinted one's: the hint, not the body, is likely what is wrong.
    #[error(
        "{error} (the vendor hint says {vendor}, but the body fits the envelope of {}: the hint may be wrong)",
        .fits.iter().map(|v| v.key()).collect::<Vec<_>>().join(", ")
    )]
    HintedVendorMismatch {
        vendor: Vendor,
        fits: Vec<Vendor>,
        error: PayloadError,
    },
    #[error("{path} has {count} elements, over the limit of {limit} events per message")]
    TooManyEvents {
        vendor: Vendor,
        path: String,
        count: usize,
        limit: usize,
    },
    #[error(
        "the canonical events would exceed the output limit of {limit} bytes at event {at} of {events}"
    )]
    OutputTooLarge {
        vendor: Vendor,
        limit: usize,
        at: usize,
        events: usize,
    },
    /// The receipt time handed in cannot be written in RFC 3339 (see
    /// [`rfc3339_utc::writable`]), so it cannot be any event's `time`. The worker and the
    /// `normalize` command only hand in writable ones; a variant rather than a `time`
    /// that breaks the schema, and checked whether or not the body has a time of its own,
    /// so that the same arguments always fail the same way.
    #[error(
        "the receipt time is outside RFC 3339 once in UTC (years 0000 to 9999, seconds 00 to 59)"
    )]
    UnwritableReceivedAt { vendor: Option<Vendor> },
    /// A mapped event could not be written as JSON. Not expected to happen; a variant
    /// rather than a panic so that even a bug dead-letters instead of losing the message.
    #[error("the canonical event could not be serialized")]
    Unserializable { vendor: Option<Vendor> },
}

impl NormalizeError {
    pub fn kind(&self) -> DeadLetterKind {
        match self {
            NormalizeError::BodyTooLarge { .. } => DeadLetterKind::BodyTooLarge,
            NormalizeError::InvalidJson { .. } => DeadLetterKind::InvalidJson,
            NormalizeError::UnknownVendorHint { .. }
            | NormalizeError::UnknownShape
            | NormalizeError::AmbiguousShape { .. } => DeadLetterKind::UnknownVendor,
            NormalizeError::UnknownEventType { .. } => DeadLetterKind::UnknownEventType,
            NormalizeError::InvalidPayload { .. }
            | NormalizeError::HintedVendorMismatch { .. }
            | NormalizeError::UnwritableReceivedAt { .. }
            | NormalizeError::Unserializable { .. } => DeadLetterKind::InvalidPayload,
            NormalizeError::TooManyEvents { .. } => DeadLetterKind::TooManyEvents,
            NormalizeError::OutputTooLarge { .. } => DeadLetterKind::OutputTooLarge,
        }
    }

    /// The vendor, when known (from the hint or the envelope).
    pub fn vendor(&self) -> Option<Vendor> {
        match self {
            NormalizeError::BodyTooLarge { vendor, .. }
            | NormalizeError::InvalidJson { vendor, .. }
            | NormalizeError::UnwritableReceivedAt { vendor }
            | NormalizeError::Unserializable { vendor } => *vendor,
            NormalizeError::UnknownVendorHint { .. }
            | NormalizeError::UnknownShape
            | NormalizeError::AmbiguousShape { .. } => None,
            NormalizeError::UnknownEventType { vendor, .. }
            | NormalizeError::InvalidPayload { vendor, .. }
            | NormalizeError::HintedVendorMismatch { vendor, .. }
            | NormalizeError::TooManyEvents { vendor, .. }
            | NormalizeError::OutputTooLarge { vendor, .. } => Some(*vendor),
        }
    }
}

/// Normalizes one webhook body into its canonical events.
///
/// `vendor_hint` is the vendor key from the gateway (`x-vendor` header or routing key);
/// blank counts as absent, and without one the vendor is detected from the envelope's
/// shape. `received_at` is used as `time` for events whose body carries none; it must be
/// one RFC 3339 can write in UTC (years 0000 to 9999, no leap second), or the body is
/// refused whatever it holds.
///
/// On success there is at least one event (Deel array resources give one per element),
/// and all of them together serialize to at most `limits.max_output_bytes`. A vendor
/// type not in the table is [`NormalizeError::UnknownEventType`], or one generic event
/// for a vendor that `unmapped` passes through. Each event's `dataschema` is made from
/// `schemas`, the schema base (`SchemaBase::default()` unless the deployment sets one).
pub fn normalize(
    body: &[u8],
    vendor_hint: Option<&str>,
    received_at: DateTime<Utc>,
    limits: &Limits,
    unmapped: &Unmapped,
    schemas: SchemaBase,
) -> Result<Vec<CanonicalEvent>, NormalizeError> {
    let events = events(body, vendor_hint, received_at, limits, unmapped, schemas)?;
    let mut budget = OutputBudget::new(&events, limits);
    let unserializable = events.unserializable();
    let mut out = Vec::with_capacity(events.len());
    for event in events {
        let mut size = ByteCount(0);
        serde_json::to_writer(&mut size, &event).map_err(|_| unserializable.clone())?;
        budget.spend(size.0)?;
        out.push(event);
    }
    Ok(out)
}

/// One canonical event serialized for the wire: the form the worker publishes and the
/// `normalize` command prints. The body is the CloudEvent in JSON structured mode, made
/// once; the other fields are what the broker glue sets as the AMQP properties of the same
/// name, so that nothing parses the body again.
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
    fn new(event: CanonicalEvent, body: Vec<u8>) -> OutgoingEvent {
        OutgoingEvent {
            event_type: event.event_type,
            message_id: event
                .id
                .hyphenated()
                .encode_lower(&mut uuid::Uuid::encode_buffer())
                .to_owned(),
            timestamp: u64::try_from(event.time.timestamp()).unwrap_or(0),
            headers: vec![("cloudEvents_subject", event.subject)],
            body,
        }
    }
}

impl OutgoingEvent {
    /// The routing key on the canonical exchange: the type.
    pub fn routing_key(&self) -> &str {
        self.event_type.as_str()
    }
}

/// As [`normalize`], serializing each event as it is built (the worker's path): the
/// events of a fan-out are never all in memory as values, only as bounded JSON.
pub fn normalize_json(
    body: &[u8],
    vendor_hint: Option<&str>,
    received_at: DateTime<Utc>,
    limits: &Limits,
    unmapped: &Unmapped,
    schemas: SchemaBase,
) -> Result<Vec<OutgoingEvent>, NormalizeError> {
    let events = events(body, vendor_hint, received_at, limits, unmapped, schemas)?;
    let mut budget = OutputBudget::new(&events, limits);
    let mut out = Vec::with_capacity(events.len());
    // One buffer for the events of the body, sized once for the first (its payload is
    // at most the body, written compactly).
    let mut json = Vec::with_capacity(body.len() + 1024);
    let single = events.len() == 1;
    for event in events {
        json.clear();
        event.write_json(&mut json);
        budget.spend(json.len())?;
        // One event keeps the buffer (its payload is the body: the buffer fits it
        // closely); those of a fan-out are copied out at their size.
        let body = if single {
            std::mem::take(&mut json)
        } else {
            json.as_slice().to_vec()
        };
        out.push(OutgoingEvent::new(event, body));
    }
    Ok(out)
}

/// The events of one body, built one at a time as they are taken. Everything that can
/// fail has been checked, except the output size, which [`normalize`] and
/// [`normalize_json`] check as they go.
pub struct Events {
    vendor: Vendor,
    mapped: Mapped,
    /// Where each event's `dataschema` points: the mapping names the definition, the
    /// deployment the base.
    schemas: SchemaBase,
}

impl Events {
    fn unserializable(&self) -> NormalizeError {
        NormalizeError::Unserializable {
            vendor: Some(self.vendor),
        }
    }
}

impl Iterator for Events {
    type Item = CanonicalEvent;

    fn next(&mut self) -> Option<CanonicalEvent> {
        let mut event = self.mapped.next()?;
        // Borrowed, made once per base and definition: no allocation per event.
        event.dataschema = Some(Cow::Borrowed(
            self.schemas.data_schema_uri(&event.event_type),
        ));
        Some(event)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.mapped.size_hint()
    }
}

impl ExactSizeIterator for Events {}

/// Checks a body and maps it, without building its events yet: size limit, JSON,
/// vendor, event type, every field the mapping needs, the fan-out limit.
pub fn events(
    body: &[u8],
    vendor_hint: Option<&str>,
    received_at: DateTime<Utc>,
    limits: &Limits,
    unmapped: &Unmapped,
    schemas: SchemaBase,
) -> Result<Events, NormalizeError> {
    let hinted = match vendor_hint.map(str::trim).filter(|h| !h.is_empty()) {
        None => None,
        Some(hint) => {
            Some(
                hint.parse::<Vendor>()
                    .map_err(|_| NormalizeError::UnknownVendorHint {
                        hint: hint.to_owned(),
                    })?,
            )
        }
    };
    if !rfc3339_utc::writable(&received_at) {
        return Err(NormalizeError::UnwritableReceivedAt { vendor: hinted });
    }
    if body.len() > limits.max_body_bytes {
        return Err(NormalizeError::BodyTooLarge {
            vendor: hinted,
            size: body.len(),
            limit: limits.max_body_bytes,
        });
    }
    let value = parse_json(body).map_err(|detail| NormalizeError::InvalidJson {
        vendor: hinted,
        detail,
    })?;
    // With a hint, the envelopes the body fits, to say so when the hinted mapping fails.
    let mut shapes_if_hinted = None;
    let vendor = match hinted {
        Some(vendor) => {
            shapes_if_hinted = Some(vendors::shapes(&value));
            vendor
        }
        None => {
            let shapes = vendors::shapes(&value);
            match shapes.only() {
                Some(vendor) => vendor,
                None if shapes.vendors().next().is_none() => {
                    return Err(NormalizeError::UnknownShape);
                }
                None => {
                    return Err(NormalizeError::AmbiguousShape {
                        vendors: shapes.vendors().collect(),
                    });
                }
            }
        }
    };
    let policy = unmapped.of(vendor);
    let mapped = vendors::map(
        vendor,
        value,
        received_at,
        limits.max_events_per_message,
        policy,
    )
    .map_err(|e| match e {
        MapError::UnknownEventType(event_type) => {
            NormalizeError::UnknownEventType { vendor, event_type }
        }
        MapError::InvalidPayload(error) => match shapes_if_hinted {
            Some(shapes) if !shapes.fits(vendor) && shapes.vendors().next().is_some() => {
                NormalizeError::HintedVendorMismatch {
                    vendor,
                    fits: shapes.vendors().collect(),
                    error,
                }
            }
            _ => NormalizeError::InvalidPayload { vendor, error },
        },
        MapError::TooManyEvents { path, count, limit } => NormalizeError::TooManyEvents {
            vendor,
            path,
            count,
            limit,
        },
    })?;
    Ok(Events {
        vendor,
        mapped,
        schemas,
    })
}

/// The running total of one body's output against `limits.max_output_bytes`.
struct OutputBudget {
    vendor: Vendor,
    limit: usize,
    events: usize,
    spent: usize,
    taken: usize,
}

impl OutputBudget {
    fn new(events: &Events, limits: &Limits) -> OutputBudget {
        OutputBudget {
            vendor: events.vendor,
            limit: limits.max_output_bytes,
            events: events.len(),
            spent: 0,
            taken: 0,
        }
    }

    fn spend(&mut self, bytes: usize) -> Result<(), NormalizeError> {
        self.taken += 1;
        self.spent = self.spent.saturating_add(bytes);
        if self.spent > self.limit {
            return Err(NormalizeError::OutputTooLarge {
                vendor: self.vendor,
                limit: self.limit,
                at: self.taken,
                events: self.events,
            });
        }
        Ok(())
    }
}

/// An `io::Write` that only counts, to size an event without keeping its JSON.
struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Parses the body strictly ([`body::parse`]: no repeated keys), tolerating a UTF-8
/// byte-order mark (some gateways add one).
fn parse_json(raw: &[u8]) -> Result<Value, String> {
    body::parse(raw.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn err(body: &[u8], hint: Option<&str>) -> NormalizeError {
        normalize(
            body,
            hint,
            at(),
            &Limits::default(),
            &Unmapped::default(),
            SchemaBase::default(),
        )
        .unwrap_err()
    }

    /// An Entuitive body hinted as Deel (a gateway that hard-codes its hint) is an
    /// invalid payload whose reason says the hint may be wrong; a Deel body missing a
    /// field is not.
    #[test]
    fn a_body_of_another_vendor_says_the_hint_may_be_wrong() {
        let entuitive = br#"{"event_type": "user.created", "data": {"id": "u-1"}}"#;
        let e = err(entuitive, Some("deel"));
        assert_eq!(e.kind(), DeadLetterKind::InvalidPayload);
        assert_eq!(e.vendor(), Some(Vendor::Deel));
        assert_eq!(
            e.to_string(),
            "$.data.meta: missing (the vendor hint says deel, but the body fits the envelope \
             of entuitive: the hint may be wrong)"
        );
        let deel_without_resource = br#"{"data": {"meta": {"event_type": "contract.created"}}}"#;
        let e = err(deel_without_resource, Some("deel"));
        assert!(!e.to_string().contains("hint"), "{e}");
    }

    #[test]
    fn hint_that_is_no_vendor_is_unknown_vendor_and_not_echoed_when_odd() {
        let e = err(b"{}", Some("stripe"));
        assert_eq!(e.kind(), DeadLetterKind::UnknownVendor);
        assert_eq!(
            e.to_string(),
            "vendor hint \"stripe\" is not a vendor key (expected entuitive, authenticate or deel)"
        );
        let e = err(b"{}", Some("jane doe <jane@example.com>"));
        assert!(!e.to_string().contains("jane"), "{e}");
    }

    #[test]
    fn blank_hint_means_detect() {
        let body = br#"{"id":"1","event":"USER_PII_UPDATE","order":{"userAccessCode":"u"}}"#;
        let events = normalize(
            body,
            Some("  "),
            at(),
            &Limits::default(),
            &Unmapped::default(),
            SchemaBase::default(),
        )
        .unwrap();
        assert_eq!(events[0].vendor, Vendor::Authenticate);
    }

    #[test]
    fn size_limit_is_checked_before_parsing_and_keeps_the_hinted_vendor() {
        let limits = Limits {
            max_body_bytes: 4,
            ..Limits::default()
        };
        let e = normalize(
            b"{   }",
            Some("deel"),
            at(),
            &limits,
            &Unmapped::default(),
            SchemaBase::default(),
        )
        .unwrap_err();
        assert_eq!(e.kind(), DeadLetterKind::BodyTooLarge);
        assert_eq!(e.vendor(), Some(Vendor::Deel));
        assert_eq!(e.to_string(), "body is 5 bytes, over the limit of 4");
        assert!(
            normalize(
                b"[]",
                None,
                at(),
                &limits,
                &Unmapped::default(),
                SchemaBase::default()
            )
            .is_err_and(|e| e.kind() == DeadLetterKind::UnknownVendor)
        );
    }

    #[test]
    fn invalid_json_reports_position_not_content() {
        let e = err(b"{\"email\": \"jane@example.com\",}", None);
        assert_eq!(e.kind(), DeadLetterKind::InvalidJson);
        assert_eq!(e.to_string(), "trailing comma at line 1 column 30");
        let e = err(b"{\"name\": \"\xff\xfe\"}", Some("deel"));
        assert_eq!(e.kind(), DeadLetterKind::InvalidJson);
        assert_eq!(e.vendor(), Some(Vendor::Deel));
    }

    #[test]
    fn byte_order_mark_is_tolerated() {
        let body = b"\xEF\xBB\xBF{\"id\":\"1\",\"event\":\"USER_PII_UPDATE\",\"order\":{\"userAccessCode\":\"u\"}}";
        assert!(
            normalize(
                body,
                None,
                at(),
                &Limits::default(),
                &Unmapped::default(),
                SchemaBase::default()
            )
            .is_ok()
        );
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let mut body = "[".repeat(100_000);
        body.push_str(&"]".repeat(100_000));
        assert_eq!(
            err(body.as_bytes(), None).kind(),
            DeadLetterKind::InvalidJson
        );
    }

    #[test]
    fn a_receipt_time_rfc3339_cannot_write_is_never_emitted() {
        // Entuitive `user.deactivated` carries no time: the receipt time is its `time`.
        let body = br#"{"event_type":"user.deactivated","data":{"email":"a@b.c"}}"#;
        let year_55840 = DateTime::from_timestamp(1_700_000_000_000, 0).unwrap();
        let year_minus_1 = DateTime::parse_from_rfc3339("0000-01-01T00:00:00+14:00")
            .unwrap()
            .with_timezone(&Utc);
        let leap = DateTime::parse_from_rfc3339("2016-12-31T23:59:60Z")
            .unwrap()
            .with_timezone(&Utc);
        for received_at in [year_55840, year_minus_1, leap] {
            let result = normalize(
                body,
                None,
                received_at,
                &Limits::default(),
                &Unmapped::default(),
                SchemaBase::default(),
            );
            let e = result.map(|events| events[0].time_rfc3339()).unwrap_err();
            assert_eq!(e.kind(), DeadLetterKind::InvalidPayload);
        }
    }

    #[test]
    fn unknown_event_type_names_vendor_and_safe_type() {
        let e = err(
            br#"{"id":"1","event":"SEX_OFFENDER_CHECK_STATUS_UPDATE","order":{}}"#,
            None,
        );
        assert_eq!(e.kind(), DeadLetterKind::UnknownEventType);
        assert_eq!(e.vendor(), Some(Vendor::Authenticate));
        assert_eq!(
            e.to_string(),
            "authenticate event type \"SEX_OFFENDER_CHECK_STATUS_UPDATE\" is not in the canonical type table"
        );
    }
}
