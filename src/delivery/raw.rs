//! The raw message: one webhook delivery as the broker glue hands it over, in our own
//! types (no AMQP client's), and what is read from it without deciding anything: the
//! vendor hint and the receipt time.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};

use crate::canonical::{Vendor, rfc3339_utc};
use crate::contract::headers;

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
    /// The `traceparent` header, when present as text: the trace the gateway started.
    pub traceparent: Option<String>,
}

impl RawMessage {
    /// The vendor hint: `x-vendor` when set, else the routing key's first word when it is a
    /// vendor key (`deel`, `deel.webhook`), else none (the body's shape decides). An
    /// `x-vendor` that is not text is no hint: [`plan`](fn@super::plan) dead-letters the message.
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-03-04T05:06:07Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    pub(crate) fn raw(body: &[u8]) -> RawMessage {
        RawMessage {
            body: body.to_vec(),
            exchange: "webhooks.raw".into(),
            routing_key: "gateway-1".into(),
            ..RawMessage::default()
        }
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
}
