//! The dead letter as an AMQP message: the original body byte for byte, the original
//! properties made safe to publish, the reason in headers, measured against the frame.
//!
//! A raw message's properties were fine for its own journey, not necessarily for its dead
//! letter's. Kept as they are, some would change the dead letter's fate or make it
//! unpublishable, so they move into `x-original-*` headers:
//!
//! - `expiration`: the dead letter would expire from the dead-letter queue.
//! - `user_id`: RabbitMQ refuses a publish whose `user_id` is not the publisher's own
//!   user (406 PRECONDITION_FAILED), and the gateway's user is not ours.
//! - header `CC`: sender-selected distribution would copy the dead letter to other
//!   routing keys of the dead-letter exchange.
//! - header `x-delivery-count`: the raw queue's count, not the dead letter's.
//!
//! Headers are then dropped, largest first, until the content header fits the broker's
//! `frame_max` (raw headers may nearly fill a frame before ours are added); what was
//! dropped is named in `x-normalizer-dropped-headers`. When even that cannot make it
//! fit, the dead letter is [`Unpublishable`] and the raw message is handed to the
//! broker's own dead-lettering instead.

use std::sync::Arc;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};

use super::publisher::AmqpMessage;
use crate::amqp::headers::{
    LeftOut, PERSISTENT, header_entry_size, header_payload_size, header_room, rebuilt, text_headers,
};
use crate::contract::headers;
use crate::delivery::DeadLetter;
use crate::redact::SafeName;

/// Even without any raw header, the dead letter's properties exceed the frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the dead letter's properties need {needed} bytes, over the {room} a frame holds")]
pub(crate) struct Unpublishable {
    pub(crate) needed: usize,
    pub(crate) room: usize,
}

/// Builds the dead letter of a raw message whose properties were `original`.
pub(crate) fn dead_letter_message(
    dead_letter: &DeadLetter,
    body: Arc<Vec<u8>>,
    original: &BasicProperties,
    exchange: &ShortString,
    frame_max: u32,
) -> Result<AmqpMessage, Unpublishable> {
    let room = header_room(frame_max);
    let mut raw_headers = original.headers().clone().unwrap_or_default();
    let mut moved: Vec<(&'static str, AMQPValue)> = Vec::new();
    for (from, to) in [
        ("CC", headers::ORIGINAL_CC),
        ("x-delivery-count", headers::ORIGINAL_DELIVERY_COUNT),
    ] {
        if let Some(value) = raw_headers.inner().get(from).cloned() {
            moved.push((to, value));
            raw_headers = without(raw_headers, from);
        }
    }
    if let Some(expiration) = original.expiration() {
        moved.push((
            headers::ORIGINAL_EXPIRATION,
            AMQPValue::LongString(expiration.as_str().into()),
        ));
    }
    if let Some(user_id) = original.user_id() {
        moved.push((
            headers::ORIGINAL_USER_ID,
            AMQPValue::LongString(user_id.as_str().into()),
        ));
    }
    let base = kept_properties(original);

    let ours = |detail_headers: &[(&'static str, String)]| {
        let mut table = FieldTable::default();
        for (name, value) in &moved {
            table.insert((*name).into(), value.clone());
        }
        text_headers(table, detail_headers)
    };
    let build = |raw: &FieldTable, extra: &[(&'static str, String)]| {
        let mut table = raw.clone();
        for (name, value) in ours(&dead_letter.headers).inner() {
            table.insert(name.clone(), value.clone());
        }
        let table = text_headers(table, extra);
        base.clone().with_headers(table)
    };

    let mut properties = build(&raw_headers, &[]);
    if header_payload_size(&properties) > room {
        // Drop raw headers, largest first, until ours fit.
        let mut by_size: Vec<(ShortString, usize)> = raw_headers
            .inner()
            .iter()
            .filter(|(name, _)| !dead_letter.headers.iter().any(|(n, _)| *n == name.as_str()))
            .map(|(name, value)| (name.clone(), header_entry_size(name, value)))
            .collect();
        by_size.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let mut kept = raw_headers.clone();
        let mut dropped = Vec::new();
        for (name, size) in by_size {
            kept = without(kept, name.as_str());
            dropped.push((name, size));
            let note = dropped_note(&dropped, frame_max);
            properties = build(&kept, &[(headers::DROPPED_HEADERS, note)]);
            if header_payload_size(&properties) <= room {
                break;
            }
        }
    }
    let needed = header_payload_size(&properties);
    if needed > room {
        return Err(Unpublishable { needed, room });
    }
    Ok(AmqpMessage::new(
        exchange.clone(),
        dead_letter.routing_key.as_str().into(),
        body,
        properties,
    ))
}

/// The original properties but `expiration` and `user_id` (moved to headers) and the
/// headers (rebuilt), persistent whatever the original said.
fn kept_properties(original: &BasicProperties) -> BasicProperties {
    let left_out = LeftOut {
        expiration: true,
        user_id: true,
    };
    rebuilt(original, None, left_out).with_delivery_mode(PERSISTENT)
}

/// `table` without `name`.
fn without(table: FieldTable, name: &str) -> FieldTable {
    let mut out = FieldTable::default();
    for (k, v) in table.inner() {
        if k.as_str() != name {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

/// "x-padding (130905 bytes), ... dropped to fit frame_max 131072": names only when
/// they look like names, at most 20 of them.
fn dropped_note(dropped: &[(ShortString, usize)], frame_max: u32) -> String {
    let listed: Vec<String> = dropped
        .iter()
        .take(20)
        .map(|(name, size)| format!("{} ({size} bytes)", SafeName(name.as_str()).bare()))
        .collect();
    let more = dropped.len().saturating_sub(listed.len());
    let more = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    format!(
        "{}{more} dropped to fit the broker's frame_max of {frame_max} bytes",
        listed.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};

    use super::*;
    use crate::contract::DeadLetterKind;
    use crate::delivery::RawMessage;

    fn dead_letter(detail: &str) -> DeadLetter {
        let raw = RawMessage {
            exchange: "webhooks.raw".into(),
            routing_key: "gateway".into(),
            ..RawMessage::default()
        };
        let now = DateTime::parse_from_rfc3339("2026-03-04T05:06:07Z")
            .unwrap()
            .with_timezone(&Utc);
        DeadLetter::new(&raw, DeadLetterKind::InvalidJson, None, detail, now)
    }

    fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in entries {
            t.insert((*k).into(), v.clone());
        }
        t
    }

    fn text(p: &BasicProperties, name: &str) -> Option<String> {
        crate::amqp::headers::header_text(p, name)
    }

    #[test]
    fn properties_that_would_change_its_fate_move_into_headers() {
        let original = BasicProperties::default()
            .with_message_id("gw-1".into())
            .with_content_type("application/json".into())
            .with_expiration("4000".into())
            .with_user_id("gateway".into())
            .with_delivery_mode(1)
            .with_headers(table(&[
                ("x-gateway", AMQPValue::LongString("gw".into())),
                (
                    "CC",
                    AMQPValue::FieldArray(vec![AMQPValue::LongString("elsewhere".into())].into()),
                ),
                ("x-delivery-count", AMQPValue::LongLongInt(3)),
            ]));
        let m = dead_letter_message(
            &dead_letter("trailing comma"),
            Arc::new(b"{,}".to_vec()),
            &original,
            &"webhooks.dead-letter".into(),
            131_072,
        )
        .unwrap();
        let p = &m.properties;
        assert_eq!(m.routing_key.as_str(), "unknown.invalid_json");
        assert_eq!(m.body.as_slice(), b"{,}");
        assert_eq!(p.expiration(), &None);
        assert_eq!(p.user_id(), &None);
        assert_eq!(*p.delivery_mode(), Some(2));
        assert_eq!(p.message_id().as_ref().unwrap().as_str(), "gw-1");
        assert_eq!(text(p, "x-original-expiration").as_deref(), Some("4000"));
        assert_eq!(text(p, "x-original-user-id").as_deref(), Some("gateway"));
        assert_eq!(text(p, "x-gateway").as_deref(), Some("gw"));
        assert_eq!(
            text(p, "x-normalizer-error").as_deref(),
            Some("trailing comma")
        );
        let h = p.headers().as_ref().unwrap().inner();
        assert!(!h.contains_key("CC") && !h.contains_key("x-delivery-count"));
        assert!(matches!(
            h.get("x-original-cc"),
            Some(AMQPValue::FieldArray(_))
        ));
        assert_eq!(
            h.get("x-original-delivery-count"),
            Some(&AMQPValue::LongLongInt(3))
        );
        assert!(!h.contains_key("x-normalizer-dropped-headers"));
    }

    #[test]
    fn raw_headers_are_dropped_largest_first_until_it_fits_the_frame() {
        let frame_max = 131_072;
        let original = BasicProperties::default().with_headers(table(&[
            (
                "x-padding",
                AMQPValue::LongString("p".repeat(130_900).into()),
            ),
            ("x-small", AMQPValue::LongString("s".repeat(10).into())),
            (
                "jane@example.com",
                AMQPValue::LongString("q".repeat(50).into()),
            ),
        ]));
        assert!(header_payload_size(&original) <= header_room(frame_max));
        let m = dead_letter_message(
            &dead_letter("x"),
            Arc::new(Vec::new()),
            &original,
            &"dlx".into(),
            frame_max,
        )
        .unwrap();
        let p = &m.properties;
        assert!(header_payload_size(p) <= header_room(frame_max));
        let h = p.headers().as_ref().unwrap().inner();
        assert!(!h.contains_key("x-padding"));
        assert!(h.contains_key("x-small") && h.contains_key("jane@example.com"));
        assert_eq!(
            text(p, "x-normalizer-dropped-headers").unwrap(),
            "x-padding (130915 bytes) dropped to fit the broker's frame_max of 131072 bytes"
        );

        // A name that is no plain name is not echoed.
        let original = BasicProperties::default().with_headers(table(&[(
            "jane@example.com",
            AMQPValue::LongString("q".repeat(5000).into()),
        )]));
        let m = dead_letter_message(
            &dead_letter("x"),
            Arc::new(Vec::new()),
            &original,
            &"dlx".into(),
            4096,
        )
        .unwrap();
        let note = text(&m.properties, "x-normalizer-dropped-headers").unwrap();
        assert!(!note.contains("jane"), "{note}");
        assert!(
            note.starts_with("(not shown: 16 bytes) (5022 bytes)"),
            "{note}"
        );
    }

    #[test]
    fn a_dead_letter_that_cannot_fit_at_all_is_unpublishable() {
        let long = "r".repeat(255);
        let original = BasicProperties::default()
            .with_message_id(long.as_str().into())
            .with_correlation_id(long.as_str().into())
            .with_reply_to(long.as_str().into())
            .with_app_id(long.as_str().into());
        let err = dead_letter_message(
            &dead_letter(&"d".repeat(1024)),
            Arc::new(Vec::new()),
            &original,
            &"dlx".into(),
            1024,
        )
        .unwrap_err();
        assert!(err.needed > err.room, "{err}");
    }
}
