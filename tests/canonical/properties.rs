//! Properties over many generated inputs: nothing panics, ids survive reformatting and
//! key reordering, and different events get different ids.

use proptest::prelude::*;
use serde::Serialize;
use serde_json::{Map, Value};
use webhook_normalizer::{
    EventType,
    canonical::{canonical_json, id_from_content},
};

use crate::{all_fixtures, run};

/// Bodies of the fixtures that normalize, with their hint.
fn mapping_fixtures() -> Vec<(Vec<u8>, Option<&'static str>)> {
    all_fixtures()
        .into_iter()
        .map(|(p, h)| (std::fs::read(p).unwrap(), h))
        .filter(|(b, h)| run(b, *h).is_ok())
        .collect()
}

/// A small deterministic generator, so a failing case shrinks to a seed.
struct Shuffler(u64);

impl Shuffler {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// The same value with every object's keys in a new order.
    fn reorder(&mut self, value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let mut entries: Vec<_> = map.iter().collect();
                for i in (1..entries.len()).rev() {
                    let j = (self.next() % (i as u64 + 1)) as usize;
                    entries.swap(i, j);
                }
                Value::Object(
                    entries
                        .into_iter()
                        .map(|(k, v)| (k.clone(), self.reorder(v)))
                        .collect::<Map<_, _>>(),
                )
            }
            Value::Array(items) => Value::Array(items.iter().map(|v| self.reorder(v)).collect()),
            other => other.clone(),
        }
    }
}

/// Serializes with the given whitespace as indentation (empty: compact).
fn with_whitespace(value: &Value, indent: &[u8]) -> Vec<u8> {
    if indent.is_empty() {
        return serde_json::to_vec(value).unwrap();
    }
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(indent);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
    value.serialize(&mut ser).unwrap();
    out
}

/// Every string of a descriptive field (names, emails, statuses), anywhere in `value`,
/// replaced by `text`.
fn with_text(value: &mut Value, text: &str) {
    const FIELDS: [&str; 11] = [
        "first_name",
        "last_name",
        "full_name",
        "name",
        "email",
        "fname",
        "lname",
        "status",
        "company_name",
        "organization_name",
        "search_status",
    ];
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if v.is_string() && FIELDS.contains(&key.as_str()) {
                    *v = Value::String(text.to_owned());
                } else {
                    with_text(v, text);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| with_text(v, text)),
        _ => {}
    }
}

/// Numbers as vendors might write them: trailing zeros, exponents, negative zero, big.
fn arb_number_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        (-1e300f64..1e300).prop_map(|f| format!("{f:e}")),
        (any::<i32>(), 0u8..4)
            .prop_map(|(n, zeros)| format!("{n}.5{}", "0".repeat(zeros as usize))),
        Just("-0".to_owned()),
        Just("1E3".to_owned()),
        Just("123456789012345678901234567890".to_owned()),
    ]
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-1e9f64..1e9).prop_map(Value::from),
        "\\PC{0,12}|[\\x00-\\x1f\"\\\\/\\u{7f}-\\u{a0}\\u{2028}\\u{1f600}]{0,6}"
            .prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                "[a-z_ \\u{e9}\\u{20ac}\\u{1f600}\\u{fb33}]{0,8}",
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(
        body in prop::collection::vec(any::<u8>(), 0..512),
        hint in prop::option::of(prop::sample::select(vec!["deel", "authenticate", "entuitive", "other"])),
    ) {
        let _ = run(&body, hint);
    }

    #[test]
    fn arbitrary_json_in_vendor_envelopes_never_panics(
        value in arb_json(),
        wrap in 0usize..5,
        hint in prop::option::of(prop::sample::select(vec!["deel", "authenticate", "entuitive"])),
    ) {
        // Put the noise where each vendor's reader looks, so the readers (not only
        // detection) see wrong types everywhere.
        let body = match wrap {
            0 => value,
            1 => serde_json::json!({"data": {"meta": {"event_type": "timesheet.reviewed"}, "resource": value}}),
            2 => serde_json::json!({"data": {"meta": value, "resource": {"id": 1}}}),
            3 => serde_json::json!({"id": "1", "event": "CRIMINAL_REQUEST_STATUS_UPDATE", "order": value}),
            _ => serde_json::json!({"event_type": "user.created", "data": value}),
        };
        let _ = run(&serde_json::to_vec(&body).unwrap(), hint);
    }

    #[test]
    fn ids_survive_key_reordering_and_whitespace(
        fixture in prop::sample::select(mapping_fixtures()),
        seed in 1u64..,
        indent in prop::sample::select(vec![&b""[..], b" ", b"\t", b"\n", b"  \r\n"]),
    ) {
        let (body, hint) = fixture;
        let original = run(&body, hint).unwrap();
        let value: Value = serde_json::from_slice(&body).unwrap();
        let reformatted = with_whitespace(&Shuffler(seed).reorder(&value), indent);
        let again = run(&reformatted, hint).unwrap();
        let ids = |events: &[webhook_normalizer::CanonicalEvent]| {
            events.iter().map(|e| e.id).collect::<Vec<_>>()
        };
        prop_assert_eq!(ids(&original), ids(&again));
    }

    /// The worker's path writes what serde_json writes of the events, whatever text the
    /// fields it copies into the envelope (names, emails, statuses) hold.
    #[test]
    fn normalize_json_writes_what_serde_json_writes_of_the_events(
        fixture in prop::sample::select(mapping_fixtures()),
        text in "\\PC{0,12}|[\\x00-\\x1f\"\\\\/\\u{7f}-\\u{a0}\\u{2028}\\u{1f600}]{0,6}",
        extra in arb_json(),
    ) {
        let (body, hint) = fixture;
        let mut value: Value = serde_json::from_slice(&body).unwrap();
        with_text(&mut value, &text);
        if let Value::Object(top) = &mut value {
            top.insert("x-extra".into(), extra);
        }
        let body = serde_json::to_vec(&value).unwrap();
        crate::fixtures::assert_same_output(&body, hint, &webhook_normalizer::Unmapped::default(), "generated");
    }

    /// Our canonical form is byte-for-byte what an independent RFC 8785 implementation
    /// produces, for arbitrary JSON (numbers of every shape, unicode keys, escapes).
    #[test]
    fn canonical_form_agrees_with_an_independent_jcs(value in arb_json(), text in arb_number_text()) {
        let Value::Object(object) = serde_json::json!({"v": value, "n": serde_json::from_str::<Value>(&text).unwrap()}) else { unreachable!() };
        let ours = canonical_json(&object).unwrap();
        let theirs = serde_json_canonicalizer::to_vec(&object).unwrap();
        prop_assert_eq!(String::from_utf8(ours).unwrap(), String::from_utf8(theirs).unwrap());
    }

    #[test]
    fn different_content_gives_different_ids(a in arb_json(), b in arb_json()) {
        let (Value::Object(a), Value::Object(b)) = (
            serde_json::json!({"k": a}),
            serde_json::json!({"k": b}),
        ) else { unreachable!() };
        let same_content = serde_json_canonicalizer::to_vec(&a).ok()
            == serde_json_canonicalizer::to_vec(&b).ok();
        let ida = id_from_content(EventType::DeelContractCreated, &a).unwrap();
        let idb = id_from_content(EventType::DeelContractCreated, &b).unwrap();
        prop_assert_eq!(ida == idb, same_content);
    }

    #[test]
    fn changing_one_identity_field_changes_the_id(
        fixture in prop::sample::select(vec![
            ("deel/contract.status.updated.json", "/data/resource/status"),
            ("deel/timesheet.reviewed__two_items.json", "/data/resource/1/status"),
            ("deel/time-off.created.json", "/data/resource/updated_at"),
            ("entuitive/user.updated.json", "/data/fname"),
            ("entuitive/user.compliance_status.updated.json", "/compliance_status_items/2/status"),
            ("authenticate/USER_PII_UPDATE__numeric_id.json", "/id"),
        ]),
        suffix in "[a-z0-9]{1,4}",
    ) {
        let (file, pointer) = fixture;
        let body = std::fs::read(crate::fixtures_dir().join(file)).unwrap();
        let before = run(&body, None).unwrap();
        let mut value: Value = serde_json::from_slice(&body).unwrap();
        let field = value.pointer_mut(pointer).unwrap();
        *field = Value::String(format!("{}{suffix}", field.as_str().map(str::to_owned).unwrap_or_else(|| field.to_string())));
        let after = run(&serde_json::to_vec(&value).unwrap(), None).unwrap();
        for (x, y) in before.iter().zip(&after) {
            if x.subject == y.subject && pointer.contains("/1/") && x.subject.ends_with("10446275") {
                // The untouched sibling element keeps its id.
                prop_assert_eq!(x.id, y.id);
            } else {
                prop_assert_ne!(x.id, y.id);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// A fanned-out event carries the body with `resource` narrowed to its own element,
    /// in its place: put the whole array back and it is the body as sent.
    #[test]
    fn fan_out_payloads_narrow_resource_to_their_element_and_keep_the_rest(
        ids in prop::collection::vec(any::<u32>(), 1..12),
        extra in arb_json(),
        top_level in any::<bool>(),
    ) {
        let items: Vec<Value> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| serde_json::json!({"id": id, "n": i, "status": "approved"}))
            .collect();
        let meta = serde_json::json!({"event_type": "timesheet.reviewed", "organization_id": 7});
        let body = if top_level {
            serde_json::json!({"meta": meta, "resource": items, "extra": extra})
        } else {
            serde_json::json!({"data": {"meta": meta, "resource": items, "extra": extra}, "timestamp": "2024-01-01T00:00:00Z"})
        };
        let events = run(&serde_json::to_vec(&body).unwrap(), Some("deel")).unwrap();
        prop_assert_eq!(events.len(), items.len());
        let pointer = if top_level { "/resource" } else { "/data/resource" };
        for (event, item) in events.iter().zip(&items) {
            let mut payload = (*event.data.payload).clone();
            prop_assert_eq!(payload.pointer(pointer), Some(&Value::Array(vec![item.clone()])));
            *payload.pointer_mut(pointer).unwrap() = Value::Array(items.clone());
            // Equal as values and in key order.
            prop_assert_eq!(serde_json::to_string(&payload).unwrap(), serde_json::to_string(&body).unwrap());
        }
    }
}

/// Duplicate deliveries of one event, as vendors retry them, keep one id; the ids of all
/// distinct events among the fixtures differ.
#[test]
fn distinct_fixture_events_have_distinct_ids() {
    let mut by_id = std::collections::HashMap::new();
    for (path, hint) in all_fixtures() {
        let Ok(events) = run(&std::fs::read(&path).unwrap(), hint) else {
            continue;
        };
        for e in events {
            by_id
                .entry(e.id)
                .or_insert_with(Vec::new)
                .push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    // The groups below are the same event by construction of the fixtures: the two
    // shapes of one Entuitive compliance update, and variants (retried, reshaped, fanned
    // out) of one Deel resource. A simulation of a resource is not the resource's event
    // (`contract.created__simulation.json` has `contract.created.json`'s resource).
    // Authenticate's documentation samples all use the placeholder id "string" but differ
    // in type, so their ids differ.
    let mut shared: Vec<Vec<String>> = by_id.into_values().filter(|v| v.len() > 1).collect();
    for v in &mut shared {
        v.sort();
    }
    shared.sort();
    let expected: Vec<Vec<&str>> = vec![
        vec![
            "contract.terminated.json",
            "contract.terminated__legacy_top_level_shape.json",
            "contract.terminated__no_timestamp.json",
        ],
        vec![
            "time-off.reviewed.json",
            "time-off.reviewed__resource_array.json",
        ],
        vec![
            "timesheet.reviewed.json",
            "timesheet.reviewed__two_items.json",
        ],
        vec![
            "user.compliance_status.updated.json",
            "user.compliance_status.updated__wrapped.json",
        ],
    ];
    assert_eq!(shared, expected);
}
