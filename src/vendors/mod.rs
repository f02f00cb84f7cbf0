//! Pure vendor mappings, one module per vendor: a parsed body in, canonical events or a
//! precise error out. No I/O, no clock, no randomness: the receipt time is passed in.

mod authenticate;
mod deel;
mod entuitive;
pub(crate) mod fields;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::canonical::{CanonicalEvent, Uncanonicalizable, Vendor};

pub use fields::{MAX_ENTITY_ID_BYTES, PayloadError, Problem};

/// Why a body of a known vendor could not be mapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MapError {
    /// The vendor type is not in the canonical type table. Holds the type as sent.
    UnknownEventType(String),
    InvalidPayload(PayloadError),
    /// An array at `path` would fan out into more events than allowed.
    TooManyEvents {
        path: String,
        count: usize,
        limit: usize,
    },
}

impl From<PayloadError> for MapError {
    fn from(e: PayloadError) -> Self {
        MapError::InvalidPayload(e)
    }
}

/// Where an id was being computed when JCS refused the object.
pub(crate) fn uncanonicalizable(path: String) -> impl FnOnce(Uncanonicalizable) -> PayloadError {
    move |_| PayloadError {
        path,
        problem: Problem::Uncanonicalizable,
    }
}

/// Guesses the vendor from the envelope's shape, for messages that come with no hint.
///
/// - Deel: `data.meta` is an object, or (older shape) `meta` is an object beside `resource`.
/// - Authenticate: `event` beside `order` or `eventDate`.
/// - Entuitive: `event_type` beside `data` (wrapped), or `compliance_status_items` (bare).
pub fn detect(body: &Value) -> Option<Vendor> {
    let top = body.as_object()?;
    let is_object = |v: Option<&Value>| v.is_some_and(Value::is_object);
    let data = top.get("data");
    if is_object(data.and_then(|d| d.get("meta")))
        || (is_object(top.get("meta")) && top.contains_key("resource"))
    {
        Some(Vendor::Deel)
    } else if top.contains_key("event")
        && (top.contains_key("order") || top.contains_key("eventDate"))
    {
        Some(Vendor::Authenticate)
    } else if (top.contains_key("event_type") && data.is_some())
        || top.contains_key("compliance_status_items")
    {
        Some(Vendor::Entuitive)
    } else {
        None
    }
}

/// Maps a body of `vendor` to its canonical events (at least one on success, at most
/// `max_events`). Every check that can fail runs here; the events themselves are built
/// as they are taken from the [`Mapped`], so a fan-out holds one event at a time.
pub(crate) fn map(
    vendor: Vendor,
    body: Value,
    received_at: DateTime<Utc>,
    max_events: usize,
) -> Result<Mapped, MapError> {
    match vendor {
        Vendor::Entuitive => entuitive::map(Arc::new(body), received_at).map(Mapped::one),
        Vendor::Authenticate => authenticate::map(Arc::new(body), received_at).map(Mapped::one),
        Vendor::Deel => deel::map(body, received_at, max_events),
    }
}

/// The canonical events of one body, produced one at a time. Building them cannot fail:
/// [`map`] has checked everything before handing this over.
pub struct Mapped(Inner);

enum Inner {
    One(Option<CanonicalEvent>),
    FanOut(deel::FanOut),
}

impl Mapped {
    fn one(event: CanonicalEvent) -> Mapped {
        Mapped(Inner::One(Some(event)))
    }

    fn fan_out(events: deel::FanOut) -> Mapped {
        Mapped(Inner::FanOut(events))
    }
}

impl Iterator for Mapped {
    type Item = CanonicalEvent;

    fn next(&mut self) -> Option<CanonicalEvent> {
        match &mut self.0 {
            Inner::One(event) => event.take(),
            Inner::FanOut(events) => events.next_event(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = match &self.0 {
            Inner::One(event) => usize::from(event.is_some()),
            Inner::FanOut(events) => events.len(),
        };
        (n, Some(n))
    }
}

impl ExactSizeIterator for Mapped {}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn detects_each_envelope_shape() {
        let cases = [
            (
                json!({"data": {"meta": {}, "resource": {}}, "timestamp": "x"}),
                Some(Vendor::Deel),
            ),
            (json!({"meta": {}, "resource": []}), Some(Vendor::Deel)),
            (
                json!({"id": "1", "event": "X", "eventDate": "x"}),
                Some(Vendor::Authenticate),
            ),
            (
                json!({"event": "X", "order": {}}),
                Some(Vendor::Authenticate),
            ),
            (
                json!({"event_type": "user.created", "data": {}}),
                Some(Vendor::Entuitive),
            ),
            (
                json!({"compliance_status_items": [], "status": "X"}),
                Some(Vendor::Entuitive),
            ),
            (json!({"event_type": "user.created"}), None),
            (json!({"data": {"resource": {}}}), None),
            (json!({"meta": {}}), None),
            (json!([]), None),
            (json!("deel"), None),
            (json!({}), None),
        ];
        for (body, want) in cases {
            assert_eq!(detect(&body), want, "{body}");
        }
    }
}
