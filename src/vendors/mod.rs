//! Pure vendor mappings, one module per vendor: a parsed body in, canonical events or a
//! precise error out. No I/O, no clock, no randomness: the receipt time is passed in.

mod authenticate;
mod deel;
mod entuitive;
pub(crate) mod fields;
mod unmapped;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::canonical::{CanonicalEvent, Uncanonicalizable, Vendor};

pub use fields::{MAX_ENTITY_ID_BYTES, PayloadError, Problem};
pub use unmapped::{Unmapped, UnmappedPolicy};

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
pub(crate) fn uncanonicalizable(path: &str) -> impl FnOnce(Uncanonicalizable) -> PayloadError {
    move |_| PayloadError {
        path: path.to_owned(),
        problem: Problem::Uncanonicalizable,
    }
}

/// Guesses the vendor from the envelope's shape, for messages that come with no hint:
/// the one vendor whose envelope fits (see [`shapes`]), or `None` when none or several do.
pub fn detect(body: &Value) -> Option<Vendor> {
    shapes(body).only()
}

/// Which vendors' envelopes a body fits. Each needs the fields that tell that vendor
/// apart, not merely an object somewhere (an Entuitive user may well have a `meta`):
///
/// - Deel: `meta` (an object) beside `resource`, in `data` (the documented shape) or at
///   the top (an older shape).
/// - Authenticate: `event` beside `order` or `eventDate`.
/// - Entuitive: `event_type` beside `data` (wrapped), or `compliance_status_items`
///   (its bare compliance update), at the top.
///
/// No vendor's documented bodies fit another's envelope; a body that fits two is not
/// guessed at.
pub fn shapes(body: &Value) -> Shapes {
    let Some(top) = body.as_object() else {
        return Shapes([false; 3]);
    };
    let top = EnvelopeKeys::of(top);
    let deel = top.meta_beside_resource()
        || top
            .data
            .and_then(Value::as_object)
            .is_some_and(|data| EnvelopeKeys::of(data).meta_beside_resource());
    let authenticate = top.event && (top.order || top.event_date);
    let entuitive = (top.event_type && top.data.is_some()) || top.compliance_status_items;
    // In the order of `Vendor::ALL`.
    Shapes([entuitive, authenticate, deel])
}

/// Which of the keys that tell the vendors apart an object has, read in one pass over
/// its keys (cheaper than a hashed lookup of each).
#[derive(Default)]
struct EnvelopeKeys<'a> {
    meta_object: bool,
    resource: bool,
    data: Option<&'a Value>,
    event: bool,
    order: bool,
    event_date: bool,
    event_type: bool,
    compliance_status_items: bool,
}

impl<'a> EnvelopeKeys<'a> {
    fn of(object: &'a serde_json::Map<String, Value>) -> EnvelopeKeys<'a> {
        let mut keys = EnvelopeKeys::default();
        for (key, value) in object {
            match key.as_str() {
                "meta" => keys.meta_object = value.is_object(),
                "resource" => keys.resource = true,
                "data" => keys.data = Some(value),
                "event" => keys.event = true,
                "order" => keys.order = true,
                "eventDate" => keys.event_date = true,
                "event_type" => keys.event_type = true,
                "compliance_status_items" => keys.compliance_status_items = true,
                _ => {}
            }
        }
        keys
    }

    /// Deel's envelope: `meta` (an object) beside `resource`.
    fn meta_beside_resource(&self) -> bool {
        self.meta_object && self.resource
    }
}

/// The vendors whose envelope a body fits, in the order of [`Vendor::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shapes([bool; 3]);

impl Shapes {
    /// The vendor, when exactly one fits.
    pub fn only(self) -> Option<Vendor> {
        let mut fitting = self.vendors();
        match (fitting.next(), fitting.next()) {
            (Some(one), None) => Some(one),
            _ => None,
        }
    }

    /// Whether `vendor`'s envelope fits.
    pub fn fits(self, vendor: Vendor) -> bool {
        self.vendors().any(|v| v == vendor)
    }

    pub fn vendors(self) -> impl Iterator<Item = Vendor> {
        Vendor::ALL
            .into_iter()
            .zip(self.0)
            .filter_map(|(vendor, fits)| fits.then_some(vendor))
    }
}

/// Maps a body of `vendor` to its canonical events (at least one on success, at most
/// `max_events`). Every check that can fail runs here; the events themselves are built
/// as they are taken from the [`Mapped`], so a fan-out holds one event at a time. A
/// vendor type not in the table is an error, or one generic event when `unmapped` is
/// [`UnmappedPolicy::Passthrough`].
pub(crate) fn map(
    vendor: Vendor,
    body: Value,
    received_at: DateTime<Utc>,
    max_events: usize,
    unmapped: UnmappedPolicy,
) -> Result<Mapped, MapError> {
    match vendor {
        Vendor::Entuitive => entuitive::map(Arc::new(body), received_at, unmapped).map(Mapped::one),
        Vendor::Authenticate => {
            authenticate::map(Arc::new(body), received_at, unmapped).map(Mapped::one)
        }
        Vendor::Deel => deel::map(body, received_at, max_events, unmapped),
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
            // An Entuitive user may carry objects of any name: `data.meta` alone is not
            // Deel's envelope, which is `meta` beside `resource`.
            (
                json!({"event_type": "user.updated", "data": {"email": "a@b.c", "meta": {}}}),
                Some(Vendor::Entuitive),
            ),
            (json!({"data": {"meta": {}}}), None),
            (
                json!({"data": {"meta": {"event_type": "contract.created"}}}),
                None,
            ),
            (
                json!({"data": {"meta": {}, "resource": 1}}),
                Some(Vendor::Deel),
            ),
            (json!({"data": {"meta": "x", "resource": {}}}), None),
            // A body that fits two envelopes is not guessed at.
            (
                json!({"event_type": "user.updated", "data": {"meta": {}, "resource": {}}}),
                None,
            ),
            (
                json!({"event": "X", "order": {}, "compliance_status_items": []}),
                None,
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
