//! What to publish for one raw message, decided without a broker: its canonical events,
//! bounded, or one dead letter that says why.

use chrono::{DateTime, Utc};

use super::{RawMessage, VendorHeader};
use crate::canonical::{SchemaBase, Vendor, rfc3339_utc};
use crate::contract::{DeadLetterKind, MAX_DETAIL_BYTES, headers};
use crate::normalize::{Limits, NormalizeError, OutgoingEvent, normalize_json};
use crate::signatures::{Signatures, verify};
use crate::vendors::Unmapped;

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

/// Normalizes a raw message and says what to publish for it, within `limits`, checking
/// the vendor's signature against `signatures` (before mapping when the gateway names
/// the vendor, after detecting it otherwise) and passing unmapped types through as
/// `unmapped` says, each event's `dataschema` made from `schemas`. Pure: `now` is passed
/// in.
pub fn plan(
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
                events,
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::canonical::CanonicalEvent;
    use crate::delivery::raw::tests::{now, raw};
    // Hex HMAC-SHA256 of a prefix and the body: the vendors' schemes.
    use crate::signatures::tests::sign;

    /// [`plan`] with no signature secrets configured, every unmapped type a dead letter
    /// and the default schema base.
    pub(crate) fn plan_with_defaults(
        raw: &RawMessage,
        limits: &Limits,
        now: DateTime<Utc>,
    ) -> Plan {
        plan(
            raw,
            limits,
            &Signatures::default(),
            &Unmapped::default(),
            SchemaBase::default(),
            now,
        )
    }

    const PII_UPDATE: &[u8] =
        br#"{"id":"e-1","event":"USER_PII_UPDATE","eventDate":"2020-12-07T19:18:32.076Z","order":{"userAccessCode":"u-1"}}"#;

    const ENTUITIVE_CREATED: &[u8] =
        br#"{"event_type":"user.created","data":{"id":7,"email":"a@example.com","first_name":"A","last_name":"B","status":"active"}}"#;

    /// The configured schema base is in every event's `dataschema`, and nothing else
    /// changes; the default base gives what `plan_with_defaults` gives.
    #[test]
    fn events_name_their_data_schema_under_the_configured_base() {
        let bodies = |schemas: SchemaBase| {
            let planned = plan(
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
        let Plan::Publish { events, .. } =
            plan_with_defaults(&raw(ENTUITIVE_CREATED), &Limits::default(), now())
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
        let kind = |m: &RawMessage| match plan(
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
        // Nothing configured: nothing checked.
        assert!(matches!(
            plan_with_defaults(&raw(ENTUITIVE_CREATED), &Limits::default(), now()),
            Plan::Publish { .. }
        ));
    }

    #[test]
    fn a_mapped_body_is_published_with_the_output_contract() {
        let Plan::Publish {
            vendor: Vendor::Authenticate,
            events: out,
        } = plan_with_defaults(&raw(PII_UPDATE), &Limits::default(), now())
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
        let Plan::Publish { events: out, .. } = plan_with_defaults(&m, &Limits::default(), now())
        else {
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
            let Plan::DeadLetter(dl) = plan_with_defaults(&message, &limits, now()) else {
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
        let Plan::Publish { events, .. } = plan_with_defaults(&raw(&body(3)), &limits, now())
        else {
            panic!("three elements fit");
        };
        assert_eq!(events.len(), 3);
        let Plan::DeadLetter(dl) = plan_with_defaults(&raw(&body(4)), &limits, now()) else {
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
        let Plan::DeadLetter(dl) = plan_with_defaults(&raw(&body(3)), &tight, now()) else {
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
}
