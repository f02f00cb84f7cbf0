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
}

impl MatchedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            MatchedBy::EventId => "event id",
            MatchedBy::RawMessageId => "raw message id",
            MatchedBy::VendorEventId => "vendor event id",
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

/// A dead letter that belongs to `id`: its raw message's `message_id`. (A dead letter's
/// body is what could not be read: no vendor event id is looked for in it.)
pub fn dead_letter_matches(id: &str, dead_letter: &StoredDeadLetter) -> Option<MatchedBy> {
    (dead_letter.message_id.as_deref() == Some(id)).then_some(MatchedBy::RawMessageId)
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
}
