//! Fuzzing of the pure entry point `normalize`, bounded so that it runs with the suite:
//! fixture bodies, with a marker planted in their string values, mutated (a flipped byte,
//! a truncation, a splice of two fixtures, a repeated key, deep nesting, odd numbers, odd
//! times, a control character), under any vendor hint (none, right, wrong, not a vendor)
//! and any receipt time chrono can hold.
//!
//! What must hold for every input: no panic; every event validates against the
//! published schema and has an RFC 3339 `time` in the years 0000 to 9999; every error
//! has a kind `normalize` produces and a one-line detail that never shows the marker (a
//! value of the body). A repeated key, or nesting deeper than 128, is always
//! `invalid_json`.
//!
//! Deterministic: a fixed seed and 2048 cases by default (about a second in a debug
//! build). `PROPTEST_CASES=100000` runs longer, `PROPTEST_RNG_SEED=n` explores other
//! inputs (see `docs/testing.md`, "Fuzzing").

use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::RngSeed;
use serde_json::{Map, Value};
use webhook_normalizer::canonical::{
    DATA_JSON_SCHEMA, DATA_SCHEMA_DOCUMENT, JSON_SCHEMA, rfc3339_utc,
};
use webhook_normalizer::{CanonicalEvent, DeadLetterKind, Limits, Unmapped, Vendor, normalize};

use crate::{all_fixtures, received_at};

/// Planted in string values of the bodies; never a plain name (spaces, `<`, `@`), so not
/// even a vendor type name made of it may be shown.
const MARKER: &str = "Zoë Marker <zoe@marker.example>";
/// What an error detail must not contain: a part of the marker that a single mutation
/// leaves whole in most bodies.
const MARKER_TELL: &str = "Marker <zoe@";

const DEFAULT_CASES: u32 = 2048;
const DEFAULT_SEED: u64 = 0x7e57_ab1e_f022;

/// The fixed seed and case count, unless `PROPTEST_RNG_SEED` or `PROPTEST_CASES` say
/// otherwise (proptest's own default config reads them).
fn config() -> ProptestConfig {
    let from_env = ProptestConfig::default();
    let set = |name: &str| std::env::var_os(name).is_some();
    ProptestConfig {
        cases: if set("PROPTEST_CASES") {
            from_env.cases
        } else {
            DEFAULT_CASES
        },
        rng_seed: if set("PROPTEST_RNG_SEED") {
            from_env.rng_seed
        } else {
            RngSeed::Fixed(DEFAULT_SEED)
        },
        max_shrink_time: 60_000,
        ..from_env
    }
}

/// A fixture: its bytes, its value when it is JSON, and the hint its folder implies.
#[derive(Debug, Clone)]
struct Seed {
    name: String,
    body: Vec<u8>,
    value: Option<Value>,
    hint: Option<&'static str>,
}

fn seeds() -> &'static [Seed] {
    static SEEDS: OnceLock<Vec<Seed>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        all_fixtures()
            .into_iter()
            .map(|(path, hint)| {
                let body = std::fs::read(&path).unwrap();
                Seed {
                    name: path.file_name().unwrap().to_string_lossy().into_owned(),
                    value: serde_json::from_slice(&body).ok(),
                    body,
                    hint,
                }
            })
            .collect()
    })
}

#[derive(Debug, Clone)]
enum Mutation {
    None,
    FlipByte {
        at: Index,
        xor: u8,
    },
    Truncate {
        at: Index,
    },
    Splice {
        other: Index,
        at: Index,
        from: Index,
    },
    RepeatKey {
        object: Index,
        entry: Index,
        same_value: bool,
    },
    Nest {
        at: Index,
        depth: usize,
        objects: bool,
    },
    OddNumber {
        at: Index,
        text: &'static str,
    },
    OddTime {
        text: String,
    },
    ControlCharacter {
        at: Index,
        c: char,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        Just(Mutation::None),
        (any::<Index>(), 1u8..).prop_map(|(at, xor)| Mutation::FlipByte { at, xor }),
        any::<Index>().prop_map(|at| Mutation::Truncate { at }),
        (any::<Index>(), any::<Index>(), any::<Index>())
            .prop_map(|(other, at, from)| Mutation::Splice { other, at, from }),
        (any::<Index>(), any::<Index>(), any::<bool>()).prop_map(|(object, entry, same_value)| {
            Mutation::RepeatKey {
                object,
                entry,
                same_value,
            }
        }),
        (any::<Index>(), 100usize..140, any::<bool>())
            .prop_map(|(at, depth, objects)| Mutation::Nest { at, depth, objects }),
        (
            any::<Index>(),
            prop::sample::select(vec![
                "1e400",
                "-1e400",
                "1E-400",
                "-0",
                "0.10",
                "1e99999999999",
                "123456789012345678901234567890",
                "-9223372036854775809",
                "18446744073709551616",
                "9007199254740993",
                "1.7976931348623157e309",
                "5e-324",
                "100000000000000000000e-20",
            ])
        )
            .prop_map(|(at, text)| Mutation::OddNumber { at, text }),
        odd_time().prop_map(|text| Mutation::OddTime { text }),
        (
            any::<Index>(),
            prop::sample::select(vec![
                '\n', '\r', '\t', '\0', '\u{7f}', '\u{85}', '\u{2028}', '\u{2029}'
            ])
        )
            .prop_map(|(at, c)| Mutation::ControlCharacter { at, c }),
    ]
}

/// Times at and beyond what RFC 3339 writes: years 0 to 10000 and beyond, offsets to
/// ±14:00, seconds to 60, and the forms vendors send.
fn odd_time() -> impl Strategy<Value = String> {
    let known = prop::sample::select(vec![
        "0000-01-01T00:00:00+14:00",
        "0000-01-01T14:00:00+14:00",
        "9999-12-31T23:59:59-14:00",
        "9999-12-31T23:59:59.999999999Z",
        "-0001-12-31T10:00:00+0000",
        "+12345-01-01T00:00:00. 5+0000",
        "2016-12-31T23:59:60Z",
        "2024-09-05T08:32:60+02:00",
        "2024-09-05T08:32:51. 658Z",
        "2024-09-05 08:32:51.658+0000",
        "2024-02-30T00:00:00Z",
        "2024-09-05T08:32:51",
        "",
    ])
    .prop_map(str::to_owned);
    let offsets = prop::sample::select(vec![
        "Z", "+14:00", "-14:00", "+0000", "-23:59", "+00:00", " Z",
    ]);
    let fractions = prop::sample::select(vec!["", ".5", ". 658", ".123456789", ".1234567891"]);
    let generated = (
        prop_oneof![0i32..=3, 9997i32..=10001, 0i32..=12000],
        1u32..=12,
        1u32..=31,
        0u32..=24,
        0u32..=60,
        0u32..=60,
        fractions,
        offsets,
    )
        .prop_map(|(y, mo, d, h, mi, s, frac, off)| {
            let year = if y > 9999 {
                format!("+{y}")
            } else {
                format!("{y:04}")
            };
            format!("{year}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{frac}{off}")
        });
    prop_oneof![known, generated]
}

/// Any receipt time chrono holds, mostly the fixtures' own, with the edges of RFC 3339,
/// a millisecond timestamp read as seconds, and leap seconds.
fn receipt_time() -> impl Strategy<Value = DateTime<Utc>> {
    let min = DateTime::<Utc>::MIN_UTC.timestamp();
    let max = DateTime::<Utc>::MAX_UTC.timestamp();
    // 0000-01-01T00:00:00Z and 9999-12-31T23:59:59Z.
    let (first, last) = (-62_167_219_200i64, 253_402_300_799i64);
    prop_oneof![
        8 => Just(received_at()),
        3 => (first..=last, 0u32..1_000_000_000)
            .prop_filter_map("in range", |(s, n)| DateTime::from_timestamp(s, n)),
        1 => (min..=max, 0u32..1_000_000_000)
            .prop_filter_map("in range", |(s, n)| DateTime::from_timestamp(s, n)),
        1 => (prop::sample::select(vec![first, last, 1_700_000_000_000]), -2i64..=2, 0u32..1_000_000_000)
            .prop_filter_map("in range", |(s, d, n)| DateTime::from_timestamp(s + d, n)),
        1 => (0i64..1_000_000, 1_000_000_000u32..2_000_000_000)
            .prop_filter_map("a leap second", |(m, n)| DateTime::from_timestamp(m * 60 + 59, n)),
    ]
}

#[derive(Debug, Clone)]
enum Hint {
    None,
    /// The hint of the fixture's folder.
    Own,
    Given(&'static str),
}

fn hint() -> impl Strategy<Value = Hint> {
    prop_oneof![
        Just(Hint::None),
        Just(Hint::Own),
        prop::sample::select(vec![
            "deel",
            "authenticate",
            "entuitive",
            "DEEL",
            " Entuitive ",
            "",
            "stripe",
            "deel.prod",
            "jane doe <jane@example.com>",
        ])
        .prop_map(Hint::Given),
    ]
}

/// One input, as built from its recipe.
#[derive(Debug)]
struct Input {
    body: Vec<u8>,
    hint: Option<&'static str>,
    /// What must come of it, when the mutation decides it.
    must_be_invalid_json: bool,
    /// Normalized with every vendor's unmapped types passed through.
    passthrough: bool,
}

fn build(seed: &Seed, marks: u64, pretty: bool, mutation: &Mutation, hint: &Hint) -> Input {
    let hint = match hint {
        Hint::None => None,
        Hint::Own => seed.hint,
        Hint::Given(h) => Some(*h),
    };
    let mut must_be_invalid_json = false;
    let mut body = match &seed.value {
        None => seed.body.clone(),
        Some(value) => {
            let mut value = value.clone();
            plant(&mut value, marks, &mut 0, None);
            let mut repeat = None;
            match mutation {
                Mutation::RepeatKey {
                    object,
                    entry,
                    same_value,
                } => {
                    let objects = count_objects(&value);
                    if objects > 0 {
                        repeat = Some(Repeat {
                            object: object.index(objects),
                            entry: *entry,
                            same_value: *same_value,
                        });
                        must_be_invalid_json = true;
                    }
                }
                Mutation::Nest { at, depth, objects } => {
                    let n = count_values(&value);
                    let target = at.index(n);
                    if let Some(slot) = nth_value(&mut value, &mut { target }) {
                        let mut wrapped = std::mem::take(slot);
                        for _ in 0..*depth {
                            wrapped = if *objects {
                                Value::Object(Map::from_iter([("n".to_owned(), wrapped)]))
                            } else {
                                Value::Array(vec![wrapped])
                            };
                        }
                        *slot = wrapped;
                    }
                    must_be_invalid_json = max_depth(&value) > 128;
                }
                Mutation::OddNumber { at, text } => {
                    let n = count_values(&value);
                    if let Some(slot) = nth_value(&mut value, &mut { at.index(n) }) {
                        *slot = serde_json::from_str(text).unwrap();
                    }
                }
                Mutation::OddTime { text } => {
                    let found = set_times(&mut value, text);
                    if let (false, Value::Object(top)) = (found, &mut value) {
                        top.insert("timestamp".into(), Value::String(text.clone()));
                    }
                }
                Mutation::ControlCharacter { at, c } => {
                    let n = count_strings(&value);
                    if n > 0 {
                        if let Some(s) = nth_string(&mut value, &mut { at.index(n) }) {
                            let cut = s.char_indices().nth(s.chars().count() / 2);
                            s.insert(cut.map_or(s.len(), |(i, _)| i), *c);
                        }
                    }
                }
                _ => {}
            }
            let mut out = String::new();
            write_json(&value, pretty, 0, &mut out, &mut repeat, &mut 0);
            out.into_bytes()
        }
    };
    match mutation {
        Mutation::FlipByte { at, xor } if !body.is_empty() => {
            let i = at.index(body.len());
            body[i] ^= xor;
        }
        Mutation::Truncate { at } => body.truncate(at.index(body.len() + 1)),
        Mutation::Splice { other, at, from } => {
            let other = &seeds()[other.index(seeds().len())].body;
            let head = at.index(body.len() + 1);
            let tail = from.index(other.len() + 1);
            body.truncate(head);
            body.extend_from_slice(&other[tail..]);
        }
        _ => {}
    }
    Input {
        body,
        hint,
        must_be_invalid_json,
        passthrough: false,
    }
}

/// Fields left without a marker.
const UNMARKED: [&str; 7] = [
    "event",
    "event_type",
    "status",
    "timestamp",
    "eventDate",
    "updated_on",
    "created_on",
];

/// Marks the string values chosen by the bits of `marks` (keys are left alone, and so
/// are the vendor type, status and time fields, so that many bodies still map: times
/// are mutated by `OddTime`).
fn plant(value: &mut Value, marks: u64, n: &mut u32, key: Option<&str>) {
    match value {
        Value::String(s) if !key.is_some_and(|k| UNMARKED.contains(&k)) => {
            if marks >> (*n % 64) & 1 == 1 {
                s.push_str(MARKER);
            }
            *n += 1;
        }
        Value::Array(items) => {
            for item in items {
                plant(item, marks, n, None);
            }
        }
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                plant(v, marks, n, Some(k));
            }
        }
        _ => {}
    }
}

fn count_values(value: &Value) -> usize {
    1 + match value {
        Value::Array(items) => items.iter().map(count_values).sum(),
        Value::Object(map) => map.values().map(count_values).sum(),
        _ => 0,
    }
}

fn count_objects(value: &Value) -> usize {
    match value {
        Value::Array(items) => items.iter().map(count_objects).sum(),
        Value::Object(map) => {
            usize::from(!map.is_empty()) + map.values().map(count_objects).sum::<usize>()
        }
        _ => 0,
    }
}

fn count_strings(value: &Value) -> usize {
    match value {
        Value::String(_) => 1,
        Value::Array(items) => items.iter().map(count_strings).sum(),
        Value::Object(map) => map.values().map(count_strings).sum(),
        _ => 0,
    }
}

/// The `n`th value in document order (the value itself is the 0th).
fn nth_value<'v>(value: &'v mut Value, n: &mut usize) -> Option<&'v mut Value> {
    if *n == 0 {
        return Some(value);
    }
    *n -= 1;
    match value {
        Value::Array(items) => items.iter_mut().find_map(|v| nth_value(v, n)),
        Value::Object(map) => map.values_mut().find_map(|v| nth_value(v, n)),
        _ => None,
    }
}

fn nth_string<'v>(value: &'v mut Value, n: &mut usize) -> Option<&'v mut String> {
    match value {
        Value::String(s) if *n == 0 => Some(s),
        Value::String(_) => {
            *n -= 1;
            None
        }
        Value::Array(items) => items.iter_mut().find_map(|v| nth_string(v, n)),
        Value::Object(map) => map.values_mut().find_map(|v| nth_string(v, n)),
        _ => None,
    }
}

fn max_depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(max_depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(max_depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Sets every time field the mappings read; whether there was one.
fn set_times(value: &mut Value, text: &str) -> bool {
    let mut found = false;
    match value {
        Value::Array(items) => {
            for item in items {
                found |= set_times(item, text);
            }
        }
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if matches!(
                    k.as_str(),
                    "timestamp" | "eventDate" | "updated_on" | "created_on"
                ) {
                    *v = Value::String(text.to_owned());
                    found = true;
                } else {
                    found |= set_times(v, text);
                }
            }
        }
        _ => {}
    }
    found
}

/// Which object (in document order, non-empty ones counted) gets one of its entries
/// written twice.
struct Repeat {
    object: usize,
    entry: Index,
    same_value: bool,
}

/// Writes JSON as serde_json would (compact or indented), except that the object chosen
/// by `repeat` gets one of its entries again at its end.
fn write_json(
    value: &Value,
    pretty: bool,
    indent: usize,
    out: &mut String,
    repeat: &mut Option<Repeat>,
    objects: &mut usize,
) {
    let newline = |out: &mut String, level: usize| {
        if pretty {
            out.push('\n');
            out.push_str(&"  ".repeat(level));
        }
    };
    match value {
        Value::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline(out, indent + 1);
                write_json(item, pretty, indent + 1, out, repeat, objects);
            }
            newline(out, indent);
            out.push(']');
        }
        Value::Object(map) if !map.is_empty() => {
            let this = *objects;
            *objects += 1;
            let mut entries: Vec<(&String, Option<&Value>)> =
                map.iter().map(|(k, v)| (k, Some(v))).collect();
            if let Some(r) = repeat.as_ref().filter(|r| r.object == this) {
                let (k, v) = entries[r.entry.index(entries.len())];
                entries.push((k, if r.same_value { v } else { None }));
            }
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline(out, indent + 1);
                out.push_str(&serde_json::to_string(k).unwrap());
                out.push(':');
                if pretty {
                    out.push(' ');
                }
                match v {
                    Some(v) => write_json(v, pretty, indent + 1, out, repeat, objects),
                    None => out.push_str("null"),
                }
            }
            newline(out, indent);
            out.push('}');
        }
        other => out.push_str(&serde_json::to_string(other).unwrap()),
    }
}

fn validator() -> &'static jsonschema::Validator {
    static VALIDATOR: OnceLock<jsonschema::Validator> = OnceLock::new();
    VALIDATOR.get_or_init(|| {
        jsonschema::validator_for(&serde_json::from_str::<Value>(JSON_SCHEMA).unwrap()).unwrap()
    })
}

/// The kinds `normalize` can produce (the other two only the worker observes).
fn normalize_kind(kind: DeadLetterKind) -> bool {
    !matches!(
        kind,
        DeadLetterKind::PublishRefused | DeadLetterKind::InvalidProperties
    )
}

/// Each event's `data` against the definition its `dataschema` names.
fn data_validator(uri: &str) -> Option<&'static jsonschema::Validator> {
    static VALIDATORS: OnceLock<Vec<(String, jsonschema::Validator)>> = OnceLock::new();
    let validators = VALIDATORS.get_or_init(|| {
        let document: Value = serde_json::from_str(DATA_JSON_SCHEMA).unwrap();
        document["$defs"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(name, definition)| {
                (
                    format!("{DATA_SCHEMA_DOCUMENT}#/$defs/{name}"),
                    jsonschema::validator_for(definition).unwrap(),
                )
            })
            .collect()
    });
    validators.iter().find(|(u, _)| u == uri).map(|(_, v)| v)
}

fn check(input: &Input, received_at: DateTime<Utc>) -> Result<(), TestCaseError> {
    let unmapped = if input.passthrough {
        Unmapped::PASSTHROUGH
    } else {
        Unmapped::default()
    };
    let result = normalize(
        &input.body,
        input.hint,
        received_at,
        &Limits::default(),
        &unmapped,
        webhook_normalizer::SchemaBase::default(),
    );
    match result {
        Ok(events) => {
            prop_assert!(
                !input.must_be_invalid_json,
                "mapped a body that must be invalid_json"
            );
            prop_assert!(!events.is_empty());
            for event in &events {
                let json = serde_json::to_value(event).unwrap();
                let errors: Vec<String> = validator()
                    .iter_errors(&json)
                    .map(|e| format!("{e} at {}", e.instance_path()))
                    .collect();
                prop_assert!(errors.is_empty(), "schema: {errors:?}");
                let uri = event.dataschema.as_deref().unwrap_or_default();
                let data = data_validator(uri);
                prop_assert!(data.is_some(), "dataschema {}", uri);
                let errors: Vec<String> = data
                    .into_iter()
                    .flat_map(|v| v.iter_errors(&json["data"]))
                    .map(|e| format!("{e} at {}", e.instance_path()))
                    .collect();
                prop_assert!(errors.is_empty(), "data schema {}: {errors:?}", uri);
                if event.event_type.mapped().is_none() {
                    prop_assert!(input.passthrough, "a generic type without passthrough");
                }
                prop_assert!(rfc3339_utc::writable(&event.time), "time {}", event.time);
                let time = event.time_rfc3339();
                let parsed = DateTime::parse_from_rfc3339(&time).map(|t| t.with_timezone(&Utc));
                prop_assert_eq!(parsed, Ok(event.time), "time {}", time);
                // Read back as a consumer would, from the bytes (serde_json's
                // `from_value` would turn a `-0` in the payload into `0`).
                let back: CanonicalEvent =
                    serde_json::from_slice(&serde_json::to_vec(event).unwrap()).unwrap();
                prop_assert_eq!(&back, event);
            }
        }
        Err(e) => {
            let detail = e.to_string();
            prop_assert!(normalize_kind(e.kind()), "kind {}", e.kind());
            // The arguments are checked before the body: a hint that names no vendor, an
            // unwritable receipt time.
            let arguments_fine = input
                .hint
                .is_none_or(|h| h.trim().is_empty() || h.parse::<Vendor>().is_ok())
                && rfc3339_utc::writable(&received_at);
            if input.must_be_invalid_json && arguments_fine {
                prop_assert_eq!(e.kind(), DeadLetterKind::InvalidJson, "{}", detail);
            }
            prop_assert!(!detail.is_empty());
            prop_assert!(
                !detail.contains(MARKER_TELL),
                "detail shows a body value: {}",
                detail
            );
            prop_assert!(
                !detail.chars().any(char::is_control),
                "detail with a control character: {:?}",
                detail
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn mutated_fixtures_never_break_the_contract(
        seed in any::<Index>(),
        marks in any::<u64>(),
        pretty in any::<bool>(),
        mutation in mutation(),
        hint in hint(),
        received_at in receipt_time(),
        passthrough in any::<bool>(),
    ) {
        let seed = &seeds()[seed.index(seeds().len())];
        let input = Input {
            passthrough,
            ..build(seed, marks, pretty, &mutation, &hint)
        };
        check(&input, received_at).map_err(|e| {
            TestCaseError::fail(format!("{} ({}): {e}", seed.name, String::from_utf8_lossy(&input.body)))
        })?;
    }
}
