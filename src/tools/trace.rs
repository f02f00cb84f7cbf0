//! "What happened to this webhook?" (`webhook-normalizer trace ID`): the events a raw
//! message became, from the event history, and the dead letter it ended as, from the
//! dead-letter queue, found by any of its ids. Pure matching here; the reads are the
//! history's and the dead-letter walk's, which leave both as they were.

use serde::Deserialize;

use crate::tools::dlq::stored::StoredDeadLetter;
use crate::tools::history::HistoryEvent;

/// Which of its ids a message was found by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchedBy {
    /// The canonical event's id (`message_id` of the event).
    EventId,
    /// The raw message's `message_id` (an event's `correlation_id`).
    RawMessageId,
    /// The vendor's own event id (an event's `vendoreventid`).
    VendorEventId,
    /// A string in a dead letter's body (the vendor's event id, most likely).
    StringInBody,
}

impl MatchedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            MatchedBy::EventId => "event id",
            MatchedBy::RawMessageId => "raw message id",
            MatchedBy::VendorEventId => "vendor event id",
            MatchedBy::StringInBody => "a string in its body",
        }
    }
}

/// An event in the history that belongs to `id`, and how: its own id, its raw message's,
/// or its vendor event id (read from the body only when the body holds `id` at all).
pub fn event_matches(id: &str, event: &HistoryEvent, body: &[u8]) -> Option<MatchedBy> {
    if event.id.as_deref() == Some(id) {
        return Some(MatchedBy::EventId);
    }
    if event.correlation_id.as_deref() == Some(id) {
        return Some(MatchedBy::RawMessageId);
    }
    if id.is_empty() || !contains(body, id.as_bytes()) {
        return None;
    }
    #[derive(Deserialize)]
    struct Attributes<'a> {
        #[serde(borrow)]
        vendoreventid: Option<std::borrow::Cow<'a, str>>,
    }
    let attributes: Attributes<'_> = serde_json::from_slice(body).ok()?;
    (attributes.vendoreventid.as_deref() == Some(id)).then_some(MatchedBy::VendorEventId)
}

/// The fewest characters an id must have to be looked for in a dead letter's body: a
/// shorter one ("1", "ok") would be found among values that are not ids.
pub const MIN_BODY_ID_CHARS: usize = 8;

/// A dead letter that belongs to `id`: its raw message's `message_id`; or, for an id of
/// at least [`MIN_BODY_ID_CHARS`] characters, a JSON string equal to `id` anywhere in its
/// body. A dead letter's body could not be normalized, so no field of it can be relied
/// on: the vendor's event id is found as a value, wherever the body holds it, and the
/// body is not parsed (it may not be JSON at all).
pub fn dead_letter_matches(
    id: &str,
    dead_letter: &StoredDeadLetter,
    body: &[u8],
) -> Option<MatchedBy> {
    if dead_letter.message_id.as_deref() == Some(id) {
        return Some(MatchedBy::RawMessageId);
    }
    if id.chars().count() < MIN_BODY_ID_CHARS {
        return None;
    }
    // The id as JSON writes it, quotes included: a whole string value, not a part.
    let quoted = serde_json::to_string(id).ok()?;
    contains(body, quoted.as_bytes()).then_some(MatchedBy::StringInBody)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::history::Stored;

    fn event(id: &str, raw: &str) -> HistoryEvent {
        HistoryEvent {
            event_type: "deel.contract.created".into(),
            stored: Stored::Delivered,
            id: Some(id.into()),
            correlation_id: Some(raw.into()),
            kept_at: None,
            offset: None,
            size: 0,
        }
    }

    #[test]
    fn an_event_is_found_by_each_of_its_ids() {
        let e = event("ev-1", "raw-1");
        let body = br#"{"id":"ev-1","vendoreventid":"vendor-9","data":{"note":"vendor-99"}}"#;
        assert_eq!(event_matches("ev-1", &e, body), Some(MatchedBy::EventId));
        assert_eq!(
            event_matches("raw-1", &e, body),
            Some(MatchedBy::RawMessageId)
        );
        assert_eq!(
            event_matches("vendor-9", &e, body),
            Some(MatchedBy::VendorEventId)
        );
        // In the body, but not as its vendor event id.
        assert_eq!(event_matches("vendor-99", &e, body), None);
        assert_eq!(event_matches("other", &e, body), None);
        assert_eq!(event_matches("", &e, body), None);
        // A body that is not an event's JSON is not read further.
        assert_eq!(event_matches("vendor-9", &e, b"vendor-9 {"), None);
    }

    fn dead_letter(message_id: Option<&str>) -> StoredDeadLetter {
        StoredDeadLetter {
            shape: crate::tools::dlq::stored::Shape::Worker,
            vendor: "deel".into(),
            kind: "invalid_payload".into(),
            detail: String::new(),
            failed_at: None,
            original_exchange: "webhooks.raw".into(),
            original_routing_key: "deel".into(),
            message_id: message_id.map(str::to_owned),
            body_len: 0,
            replays: 0,
        }
    }

    #[test]
    fn a_dead_letter_is_found_by_its_raw_message_id_or_a_whole_string_in_its_body() {
        let d = dead_letter(Some("raw-1"));
        let body = br#"{"data":{"meta":{"tracking_id":"FmbhqH_T-LUJ","note":"FmbhqH_T-LUJ-2"}}, "n": "short"}"#;
        assert_eq!(
            dead_letter_matches("raw-1", &d, body),
            Some(MatchedBy::RawMessageId)
        );
        assert_eq!(
            dead_letter_matches("FmbhqH_T-LUJ", &d, body),
            Some(MatchedBy::StringInBody)
        );
        // Part of a string is not the string.
        assert_eq!(dead_letter_matches("FmbhqH_T", &d, body), None);
        // Too short to be told from any other value.
        assert_eq!(dead_letter_matches("short", &d, body), None);
        // Not JSON at all: the bytes are searched all the same.
        assert_eq!(
            dead_letter_matches("FmbhqH_T-LUJ", &d, br#"{ "FmbhqH_T-LUJ" <"#),
            Some(MatchedBy::StringInBody)
        );
        assert_eq!(
            dead_letter_matches("raw-1", &dead_letter(None), b"{}"),
            None
        );
    }
}
