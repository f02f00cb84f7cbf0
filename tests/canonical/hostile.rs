//! Hostile input (issue 7): bodies built to break the contract's promises about times,
//! detection, duplicate keys, nesting and subjects. Each test names what it guards.

use serde_json::{Value, json};
use webhook_normalizer::{DeadLetterKind, Vendor, canonical::JSON_SCHEMA};

use crate::run;

fn validator() -> jsonschema::Validator {
    jsonschema::validator_for(&serde_json::from_str::<Value>(JSON_SCHEMA).unwrap()).unwrap()
}

/// A Deel, an Authenticate and an Entuitive body whose time field holds `time`, with the
/// JSON path of that field.
fn bodies_with_time(time: &str) -> Vec<(Value, &'static str)> {
    vec![
        (
            json!({
                "data": {"meta": {"event_type": "contract.terminated"}, "resource": {"id": "3r6j5pp"}},
                "timestamp": time
            }),
            "$.timestamp",
        ),
        (
            json!({"id": "e-1", "event": "USER_PII_UPDATE", "eventDate": time, "order": {"userAccessCode": "u-1"}}),
            "$.eventDate",
        ),
        (
            json!({"event_type": "user.updated", "data": {"email": "a@b.c", "updated_on": time}}),
            "$.data.updated_on",
        ),
        (
            json!({"event_type": "user.created", "data": {"email": "a@b.c", "created_on": time}}),
            "$.data.created_on",
        ),
    ]
}

/// Times chrono reads but RFC 3339 cannot write in UTC: years before 0000 or after 9999
/// once the offset is applied, the forms Deel's repair would let through, and leap
/// seconds (at any minute, and at the end of a day).
const UNWRITABLE_TIMES: [&str; 7] = [
    "0000-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59-14:00",
    "-0001-06-01T00:00:00Z",
    "+12345-06-01T00:00:00Z",
    "2024-09-05T08:32:60Z",
    "2024-09-05T10:32:60+02:00",
    "2016-12-31T23:59:60Z",
];

#[test]
fn body_times_rfc3339_cannot_write_are_invalid_payload_naming_the_path() {
    for time in UNWRITABLE_TIMES {
        for (body, path) in bodies_with_time(time) {
            let result = run(&serde_json::to_vec(&body).unwrap(), None);
            let e = match result {
                Ok(events) => panic!(
                    "{time:?} at {path} was emitted as {}",
                    events[0].time_rfc3339()
                ),
                Err(e) => e,
            };
            assert_eq!(
                e.kind(),
                DeadLetterKind::InvalidPayload,
                "{time:?} at {path}: {e}"
            );
            let detail = e.to_string();
            assert!(detail.starts_with(&format!("{path}: ")), "{detail}");
            assert!(!detail.contains(time), "{detail}");
        }
    }
}

#[test]
fn body_times_at_the_edges_of_rfc3339_are_kept() {
    let validator = validator();
    let cases = [
        ("0000-01-01T00:00:00Z", "0000-01-01T00:00:00Z"),
        ("0000-01-01T14:00:00+14:00", "0000-01-01T00:00:00Z"),
        (
            "9999-12-31T23:59:59.999999999Z",
            "9999-12-31T23:59:59.999999999Z",
        ),
        ("9999-12-31T09:59:59-14:00", "9999-12-31T23:59:59Z"),
        ("2024-09-05T08:32:59. 658Z", "2024-09-05T08:32:59.658Z"),
    ];
    for (time, want) in cases {
        for (body, path) in bodies_with_time(time) {
            let events = run(&serde_json::to_vec(&body).unwrap(), None)
                .unwrap_or_else(|e| panic!("{time:?} at {path}: {e}"));
            assert_eq!(events[0].time_rfc3339(), want, "{time:?} at {path}");
            let json = serde_json::to_value(&events[0]).unwrap();
            assert!(validator.is_valid(&json), "{time:?} at {path}");
        }
    }
}

#[test]
fn the_schema_refuses_times_rfc3339_cannot_write() {
    let validator = validator();
    let body = std::fs::read(crate::fixtures_dir().join("deel/contract.created.json")).unwrap();
    let good = serde_json::to_value(&run(&body, None).unwrap()[0]).unwrap();
    assert!(validator.is_valid(&good));
    for time in [
        "-0001-12-31T10:00:00Z",
        "+10000-01-01T09:59:59Z",
        "55840-06-01T00:00:00Z",
        "2024-09-05T08:32:60Z",
        "2016-12-31T23:59:60Z",
        "2024-13-05T08:32:51Z",
        "2024-09-05T24:00:00Z",
        "2024-09-05T08:60:00Z",
        "2024-09-05T08:32:51.Z",
        "2024-09-05T08:32:51.1234567890Z",
    ] {
        let mut bad = good.clone();
        bad["time"] = time.into();
        assert!(!validator.is_valid(&bad), "schema accepted time {time:?}");
    }
}

/// Detection needs each vendor's own envelope: an Entuitive user with an empty `meta`
/// object is not a Deel body.
#[test]
fn an_entuitive_body_with_a_meta_object_is_detected_as_entuitive() {
    let body = br#"{"event_type":"user.updated","data":{"email":"a@b.c","meta":{}}}"#;
    let hinted = run(body, Some("entuitive")).unwrap();
    let detected = run(body, None).unwrap_or_else(|e| panic!("{}: {e}", e.kind()));
    assert_eq!(detected, hinted);
    assert_eq!(detected[0].vendor, Vendor::Entuitive);
}

/// A body that fits two vendors' envelopes is refused rather than guessed at, and says
/// which, so that the gateway can name the vendor.
#[test]
fn a_body_that_fits_two_envelopes_is_unknown_vendor_naming_both() {
    let body =
        br#"{"event_type":"user.updated","data":{"email":"a@b.c","meta":{},"resource":{"id":1}}}"#;
    let e = run(body, None).unwrap_err();
    assert_eq!(e.kind(), DeadLetterKind::UnknownVendor);
    assert_eq!(e.vendor(), None);
    let detail = e.to_string();
    assert!(
        detail.contains("entuitive") && detail.contains("deel"),
        "{detail}"
    );
    assert_eq!(
        run(body, Some("entuitive")).unwrap()[0].vendor,
        Vendor::Entuitive
    );
}

/// A value planted in bodies that must never reach an error detail.
const MARKER: &str = "Jane Marker <jane@marker.example>";

/// A repeated key anywhere would make `payload` something other than the body as sent
/// (the last value would win): the body is refused, naming the repeated key's path.
#[test]
fn duplicate_keys_anywhere_are_invalid_json_naming_the_path() {
    let deel = |resource: &str| {
        format!(
            r#"{{"data":{{"meta":{{"event_type":"timesheet.reviewed"}},"resource":{resource}}},"timestamp":"2023-05-11T15:12:41.663Z"}}"#
        )
    };
    let cases = [
        (
            format!(
                r#"{{"id":"1","event":"USER_PII_UPDATE","event":"{MARKER}","order":{{"userAccessCode":"u"}}}}"#
            ),
            "$.event",
        ),
        (
            format!(
                r#"{{"id":"{MARKER}","event":"USER_PII_UPDATE","order":{{"userAccessCode":"u"}},"id":"2"}}"#
            ),
            "$.id",
        ),
        (
            deel(&format!(
                r#"[{{"id":1}},{{"id":2,"note":"{MARKER}","id":3}}]"#
            )),
            "$.data.resource[1].id",
        ),
        (
            deel(&format!(
                r#"[{{"id":1,"third party_name":"{MARKER}","third party_name":"{MARKER}"}}]"#
            )),
            // Not a plain field name (a space): only its length is shown.
            "$.data.resource[0][(key not shown: 16 bytes)]",
        ),
        // The same key, once escaped: equal once read.
        (
            format!(
                r#"{{"event_type":"user.created","data":{{"email":"{MARKER}","\u0065mail":"b@c.d"}}}}"#
            ),
            "$.data.email",
        ),
        (
            format!(
                r#"{{"event_type":"user.created","data":{{"email":"a@b.c","x":[[{{"k":{{}},"k":"{MARKER}"}}]]}}}}"#
            ),
            "$.data.x[0][0].k",
        ),
    ];
    for (body, path) in cases {
        for hint in [None, Some("deel")] {
            let e = match run(body.as_bytes(), hint) {
                Ok(events) => panic!("{path}: emitted {:?}", events[0].data.payload),
                Err(e) => e,
            };
            assert_eq!(e.kind(), DeadLetterKind::InvalidJson, "{path}: {e}");
            assert_eq!(e.vendor(), hint.map(|_| Vendor::Deel));
            let detail = e.to_string();
            assert!(detail.starts_with(&format!("{path}: ")), "{detail}");
            assert!(!detail.contains("Marker"), "{detail}");
        }
    }
}

/// A Deel body nested `depth` arrays and objects deep (its top level is the first).
fn deel_nested(depth: usize) -> String {
    // The top object, `data` and `resource` are three levels; `deep` adds the rest.
    let arrays = depth - 3;
    format!(
        r#"{{"data":{{"meta":{{"event_type":"contract.created"}},"resource":{{"id":"c-1","deep":{}1.5{}}}}}}}"#,
        "[".repeat(arrays),
        "]".repeat(arrays)
    )
}

/// The deepest body accepted makes events that serde_json, with its default recursion
/// limit (127 levels read), can read: an event holds the body two levels down
/// (`data.payload`).
#[test]
fn events_of_the_deepest_body_accepted_are_readable_by_serde_json_defaults() {
    let depth = webhook_normalizer::body::MAX_DEPTH;
    let events =
        run(deel_nested(depth).as_bytes(), None).unwrap_or_else(|e| panic!("{depth}: {e}"));
    let json = serde_json::to_vec(&events[0]).unwrap();
    serde_json::from_slice::<Value>(&json).unwrap_or_else(|e| panic!("body {depth} deep: {e}"));
    serde_json::from_slice::<webhook_normalizer::CanonicalEvent>(&json).unwrap();
}

/// `docs/events.md`: nesting "deeper than 125" is `invalid_json`: a body 125 deep maps, 126 does
/// not.
#[test]
fn a_body_nested_125_deep_maps_and_126_is_invalid_json() {
    let events = run(deel_nested(125).as_bytes(), None).unwrap_or_else(|e| panic!("125: {e}"));
    assert_eq!(events[0].subject, "contract/c-1");
    let e = run(deel_nested(126).as_bytes(), None).unwrap_err();
    assert_eq!(e.kind(), DeadLetterKind::InvalidJson);
    assert!(e.to_string().starts_with("nested deeper than 125"), "{e}");
}

/// An entity id becomes `subject` (and a header): one with a control character (or a
/// line separator) would fail the schema's `subject` pattern and could break a line in
/// a consumer's log. The body is refused naming the field, never showing the id.
#[test]
fn entity_ids_with_control_characters_are_invalid_payload_naming_the_path() {
    let validator = validator();
    for bad in [
        "a\nb",
        "a\rb",
        "a\tb",
        "a\u{0}b",
        "a\u{7f}b",
        "a\u{85}b",
        "a\u{2028}b",
        "a\u{2029}b",
    ] {
        let id = format!("{bad}-{MARKER}");
        let cases = [
            (
                json!({"data": {"meta": {"event_type": "contract.created"}, "resource": {"id": id}}}),
                "$.data.resource.id",
            ),
            (
                json!({"data": {"meta": {"event_type": "timesheet.reviewed"}, "resource": [{"id": 1}, {"id": id}]}}),
                "$.data.resource[1].id",
            ),
            (
                json!({"id": "e-1", "event": "USER_PII_UPDATE", "order": {"userAccessCode": id}}),
                "$.order.userAccessCode",
            ),
            (
                json!({"id": "e-1", "event": "CRIMINAL_REQUEST_STATUS_UPDATE", "order": {"orderDetails": {"unique_identifier": id}}}),
                "$.order.orderDetails.unique_identifier",
            ),
        ];
        for (body, path) in cases {
            let e = match run(&serde_json::to_vec(&body).unwrap(), None) {
                Ok(events) => {
                    let json = serde_json::to_value(events.last().unwrap()).unwrap();
                    panic!(
                        "{bad:?} at {path}: emitted subject {:?} (schema valid: {})",
                        json["subject"],
                        validator.is_valid(&json)
                    );
                }
                Err(e) => e,
            };
            assert_eq!(
                e.kind(),
                DeadLetterKind::InvalidPayload,
                "{bad:?} at {path}: {e}"
            );
            let detail = e.to_string();
            assert!(detail.starts_with(&format!("{path}: ")), "{detail}");
            assert!(!detail.contains("Marker"), "{detail}");
        }
    }
}

/// The schema says the same: no control character or line separator in `subject` or
/// `data.entity.id`.
#[test]
fn the_schema_refuses_control_characters_in_subject_and_entity_id() {
    let validator = validator();
    let body = std::fs::read(crate::fixtures_dir().join("deel/contract.created.json")).unwrap();
    let good = serde_json::to_value(&run(&body, None).unwrap()[0]).unwrap();
    for bad in [
        "a\nb",
        "a\tb",
        "a\u{0}b",
        "a\u{7f}b",
        "a\u{85}b",
        "a\u{2028}b",
    ] {
        let mut subject = good.clone();
        subject["subject"] = format!("contract/{bad}").into();
        assert!(!validator.is_valid(&subject), "subject {bad:?}");
        let mut id = good.clone();
        id["data"]["entity"]["id"] = bad.into();
        assert!(!validator.is_valid(&id), "entity id {bad:?}");
    }
    let mut unicode = good;
    unicode["subject"] = "contract/é-€-😀 x".into();
    unicode["data"]["entity"]["id"] = "é-€-😀 x".into();
    assert!(validator.is_valid(&unicode));
}
