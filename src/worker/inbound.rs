//! The edge: a delivery's parts, as lapin hands them over, become our
//! [`RawMessage`]. No decision is made here; `crate::delivery` makes them.

use lapin::BasicProperties;
use lapin::types::AMQPValue;

use crate::amqp::headers::header_text;
use crate::contract::headers;
use crate::delivery::{RawMessage, VendorHeader};
use crate::signatures;
use crate::trace_context::TRACEPARENT;

/// The raw message of one delivery. `property_problems` are what the frame check found
/// wrong with its properties.
pub(crate) fn raw_message(
    body: Vec<u8>,
    exchange: String,
    routing_key: String,
    properties: &BasicProperties,
    property_problems: Vec<String>,
) -> RawMessage {
    RawMessage {
        body,
        exchange,
        routing_key,
        vendor_header: vendor_header(properties),
        received_at_header: header_text(properties, headers::RECEIVED_AT),
        timestamp: *properties.timestamp(),
        property_problems,
        signature_headers: signature_headers(properties),
        traceparent: header_text(properties, TRACEPARENT),
    }
}

/// The vendors' signature headers present as text, by lowercase name; a gateway may
/// forward them in the case the vendor sent (`X-Entuitive-Signature`). The first of a
/// name wins.
fn signature_headers(properties: &BasicProperties) -> Vec<(&'static str, String)> {
    let mut found: Vec<(&'static str, String)> = Vec::new();
    let Some(table) = properties.headers().as_ref() else {
        return found;
    };
    for (key, value) in table.inner() {
        let Some(name) = signatures::HEADERS
            .iter()
            .find(|h| h.eq_ignore_ascii_case(key.as_str()))
        else {
            continue;
        };
        let text = match value {
            AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
            AMQPValue::ShortString(s) => s.as_str().to_owned(),
            AMQPValue::ByteArray(b) => String::from_utf8_lossy(b.as_slice()).into_owned(),
            _ => continue,
        };
        if !found.iter().any(|(n, _)| n == name) {
            found.push((name, text));
        }
    }
    found
}

/// `x-vendor` as text (a long or short string, or a byte array), or what else it is.
fn vendor_header(properties: &BasicProperties) -> VendorHeader {
    let Some(value) = properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(headers::VENDOR))
    else {
        return VendorHeader::Absent;
    };
    if let Some(text) = header_text(properties, headers::VENDOR) {
        return VendorHeader::Text(text);
    }
    VendorHeader::NotText(match value {
        AMQPValue::Boolean(_) => "a boolean",
        AMQPValue::ShortShortInt(_)
        | AMQPValue::ShortShortUInt(_)
        | AMQPValue::ShortInt(_)
        | AMQPValue::ShortUInt(_)
        | AMQPValue::LongInt(_)
        | AMQPValue::LongUInt(_)
        | AMQPValue::LongLongInt(_) => "an integer",
        AMQPValue::Float(_) | AMQPValue::Double(_) => "a floating-point number",
        AMQPValue::DecimalValue(_) => "a decimal",
        AMQPValue::Timestamp(_) => "a timestamp",
        AMQPValue::FieldTable(_) => "a table",
        AMQPValue::FieldArray(_) => "an array",
        AMQPValue::Void => "void",
        // Text; taken above.
        AMQPValue::ShortString(_) | AMQPValue::LongString(_) | AMQPValue::ByteArray(_) => "text",
    })
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};
    use lapin::types::{AMQPValue, FieldArray, FieldTable};

    use super::*;
    use crate::contract::DeadLetterKind;
    use crate::delivery::{Plan, plan_with_defaults};
    use crate::normalize::Limits;

    const PII_UPDATE: &[u8] =
        br#"{"id":"e-1","event":"USER_PII_UPDATE","eventDate":"2020-12-07T19:18:32.076Z","order":{"userAccessCode":"u-1"}}"#;

    fn with_vendor_header(value: AMQPValue) -> RawMessage {
        let mut headers = FieldTable::default();
        headers.insert(headers::VENDOR.into(), value);
        let properties = BasicProperties::default().with_headers(headers);
        raw_message(
            PII_UPDATE.to_vec(),
            "webhooks.raw".into(),
            "gateway-1".into(),
            &properties,
            Vec::new(),
        )
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-03-04T05:06:07Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    /// The contract: a value that is no vendor key dead-letters as `unknown_vendor`;
    /// one that is not even text is no vendor key either (it used to be ignored, and the
    /// vendor detected from the body).
    #[test]
    fn a_vendor_header_that_is_not_text_dead_letters_as_unknown_vendor() {
        let mut table = FieldTable::default();
        table.insert("key".into(), AMQPValue::LongString("deel".into()));
        let cases = [
            (AMQPValue::LongInt(5), "an integer"),
            (AMQPValue::Boolean(true), "a boolean"),
            (AMQPValue::Double(1.5), "a floating-point number"),
            (AMQPValue::Timestamp(1_700_000_000), "a timestamp"),
            (AMQPValue::FieldTable(table), "a table"),
            (
                AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongString("deel".into())])),
                "an array",
            ),
            (AMQPValue::Void, "void"),
        ];
        for (value, found) in cases {
            let raw = with_vendor_header(value.clone());
            let Plan::DeadLetter(dead_letter) = plan_with_defaults(&raw, &Limits::default(), now())
            else {
                panic!("{value:?}: published");
            };
            assert_eq!(dead_letter.kind, DeadLetterKind::UnknownVendor, "{value:?}");
            assert_eq!(dead_letter.routing_key, "unknown.unknown_vendor");
            assert_eq!(
                dead_letter.detail,
                format!(
                    "header x-vendor is {found}, not text: expected a vendor key (entuitive, authenticate or deel)"
                )
            );
        }
    }

    #[test]
    fn a_vendor_header_as_text_is_the_hint() {
        for value in [
            AMQPValue::LongString("authenticate".into()),
            AMQPValue::ShortString("Authenticate".into()),
            AMQPValue::ByteArray(b"authenticate".to_vec().into()),
        ] {
            let raw = with_vendor_header(value.clone());
            assert_eq!(
                raw.vendor_hint().map(str::to_lowercase).as_deref(),
                Some("authenticate")
            );
            assert!(
                matches!(
                    plan_with_defaults(&raw, &Limits::default(), now()),
                    Plan::Publish { .. }
                ),
                "{value:?}"
            );
        }
        let raw = with_vendor_header(AMQPValue::LongString("stripe".into()));
        let Plan::DeadLetter(dead_letter) = plan_with_defaults(&raw, &Limits::default(), now())
        else {
            panic!("published");
        };
        assert_eq!(dead_letter.routing_key, "unknown.unknown_vendor");
    }
}
