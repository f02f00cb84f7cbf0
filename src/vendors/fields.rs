//! Lenient, path-aware reads from a parsed vendor body: numbers-or-strings, repaired
//! timestamps, and errors that name the field (a JSON path) but never echo its value.

use std::fmt;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::canonical::rfc3339_utc;

/// A field that could not be read, located by its JSON path (`$.data.resource.id`).
///
/// The message says what was expected and what JSON type was found, never the value:
/// vendor bodies carry names and emails, and this text lands in dead-letter headers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct PayloadError {
    pub path: String,
    pub problem: Problem,
}

/// What was wrong with a field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    Missing,
    WrongType {
        expected: &'static str,
        found: &'static str,
    },
    Empty,
    NotATimestamp,
    /// A date-time RFC 3339 cannot write once in UTC (see [`rfc3339_utc::writable`]).
    NotWritableTime,
    EmptyArray,
    NotOneOf(&'static str),
    Uncanonicalizable,
    /// An id longer than [`MAX_ENTITY_ID_BYTES`]; holds its length in bytes.
    TooLong(usize),
    /// An entity id holding a control character or a line separator (see
    /// [`Obj::entity_id`]).
    ControlCharacter,
}

/// The longest entity id accepted, in bytes. The id becomes the event's `subject` and its
/// `cloudEvents_subject` header, which must fit an AMQP frame; real vendor ids are a few
/// dozen bytes.
pub const MAX_ENTITY_ID_BYTES: usize = 256;

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Missing => f.write_str("missing"),
            Problem::WrongType { expected, found } => {
                write!(f, "expected {expected}, found {found}")
            }
            Problem::Empty => f.write_str("is empty"),
            Problem::NotATimestamp => f.write_str("not an RFC 3339 date-time with a UTC offset"),
            Problem::NotWritableTime => f.write_str(
                "a date-time outside RFC 3339 once in UTC (years 0000 to 9999, seconds 00 to 59)",
            ),
            Problem::EmptyArray => f.write_str("empty array: no event to emit"),
            Problem::NotOneOf(allowed) => write!(f, "expected one of {allowed}"),
            Problem::Uncanonicalizable => {
                f.write_str("holds a number JSON canonicalization (RFC 8785) cannot represent")
            }
            Problem::TooLong(len) => write!(
                f,
                "{len} bytes, over the {MAX_ENTITY_ID_BYTES} allowed for an entity id"
            ),
            Problem::ControlCharacter => f.write_str(
                "holds a control character or line separator, not allowed in an entity id",
            ),
        }
    }
}

/// The JSON type name of a value, for error messages.
pub fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Appends `key` to a JSON path: `.key` when it is an identifier, `['key']` otherwise,
/// with `\`, `'` and control characters escaped (`\u{a}`), so that a key from the body
/// cannot break the line or header the path ends up in.
pub fn child_path(parent: &str, key: &str) -> String {
    let plain = key
        .bytes()
        .enumerate()
        .all(|(i, b)| b == b'_' || b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit()))
        && !key.is_empty();
    if plain {
        let mut path = String::with_capacity(parent.len() + 1 + key.len());
        path.push_str(parent);
        path.push('.');
        path.push_str(key);
        path
    } else {
        let mut path = String::with_capacity(parent.len() + key.len() + 4);
        path.push_str(parent);
        path.push_str("['");
        for c in key.chars() {
            match c {
                '\\' | '\'' => {
                    path.push('\\');
                    path.push(c);
                }
                c if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') => {
                    path.extend(c.escape_unicode());
                }
                c => path.push(c),
            }
        }
        path.push_str("']");
        path
    }
}

/// Objects of at most this many members are searched by comparing keys, not by hash.
const SCANNED: usize = 16;

/// A JSON object and where it sits in the body.
#[derive(Clone)]
pub struct Obj<'a> {
    pub map: &'a Map<String, Value>,
    pub path: String,
}

/// Reads `value` as an object at `path`.
pub fn as_object(value: &Value, path: String) -> Result<Obj<'_>, PayloadError> {
    match value {
        Value::Object(map) => Ok(Obj { map, path }),
        other => Err(PayloadError {
            path,
            problem: Problem::WrongType {
                expected: "an object",
                found: type_name(other),
            },
        }),
    }
}

impl<'a> Obj<'a> {
    /// The value at `key`; JSON `null` counts as absent.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        // Vendors' objects are small: comparing a few keys costs less than hashing one.
        let found = if self.map.len() <= SCANNED {
            self.map.iter().find_map(|(k, v)| (k == key).then_some(v))
        } else {
            self.map.get(key)
        };
        found.filter(|v| !v.is_null())
    }

    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub fn error(&self, key: &str, problem: Problem) -> PayloadError {
        PayloadError {
            path: child_path(&self.path, key),
            problem,
        }
    }

    fn wrong_type(&self, key: &str, expected: &'static str, found: &Value) -> PayloadError {
        self.error(
            key,
            Problem::WrongType {
                expected,
                found: type_name(found),
            },
        )
    }

    /// A required child object.
    pub fn object(&self, key: &str) -> Result<Obj<'a>, PayloadError> {
        match self.get(key) {
            None => Err(self.error(key, Problem::Missing)),
            Some(v) => as_object(v, child_path(&self.path, key)),
        }
    }

    /// An optional child object: absent, `null` or another type all read as `None`, since
    /// the fields we take from it are descriptive and the payload keeps whatever came.
    pub fn opt_object(&self, key: &str) -> Option<Obj<'a>> {
        match self.get(key) {
            Some(Value::Object(map)) => Some(Obj {
                map,
                path: child_path(&self.path, key),
            }),
            _ => None,
        }
    }

    /// A required string (such as an event type): present, a string, not blank.
    pub fn required_str(&self, key: &str) -> Result<&'a str, PayloadError> {
        match self.get(key) {
            None => Err(self.error(key, Problem::Missing)),
            Some(Value::String(s)) if s.trim().is_empty() => Err(self.error(key, Problem::Empty)),
            Some(Value::String(s)) => Ok(s.trim()),
            Some(other) => Err(self.wrong_type(key, "a string", other)),
        }
    }

    /// A required identifier. Vendors send ids as numbers or strings, sometimes both for
    /// one field; either becomes its string form (numbers exactly as written).
    pub fn required_id(&self, key: &str) -> Result<String, PayloadError> {
        match self.get(key) {
            None => Err(self.error(key, Problem::Missing)),
            Some(v) => id_text(v)
                .ok_or_else(|| self.wrong_type(key, "a string or number", v))?
                .ok_or_else(|| self.error(key, Problem::Empty)),
        }
    }

    /// The id of the entity an event is about, which becomes its `subject`: a required id
    /// of at most [`MAX_ENTITY_ID_BYTES`], with no control character (U+0000 to U+001F,
    /// U+007F to U+009F) and no line or paragraph separator (U+2028, U+2029). The subject
    /// is a header and a log field, where a line break could forge a line; and those are
    /// the characters a JSON Schema `.` (ECMAScript) does not match, which the schema's
    /// `subject` pattern says too.
    pub fn entity_id(&self, key: &str) -> Result<String, PayloadError> {
        let id = self.required_id(key)?;
        if id.len() > MAX_ENTITY_ID_BYTES {
            return Err(self.error(key, Problem::TooLong(id.len())));
        }
        if id
            .chars()
            .any(|c| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}'))
        {
            return Err(self.error(key, Problem::ControlCharacter));
        }
        Ok(id)
    }

    /// An optional identifier: absent, null, blank or not a string/number reads as `None`.
    pub fn opt_id(&self, key: &str) -> Option<String> {
        self.get(key).and_then(id_text).flatten()
    }

    /// Optional descriptive text (status, names): strings, numbers and booleans as text,
    /// blank strings and other types as `None`.
    pub fn opt_text(&self, key: &str) -> Option<String> {
        match self.get(key)? {
            Value::Bool(b) => Some(b.to_string()),
            other => id_text(other).flatten(),
        }
    }

    /// An optional timestamp: absent or `null` is `None`; anything present must parse.
    pub fn opt_timestamp(&self, key: &str) -> Result<Option<DateTime<Utc>>, PayloadError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => parse_timestamp(s)
                .map(Some)
                .map_err(|problem| self.error(key, problem)),
            Some(other) => Err(self.wrong_type(key, "a string", other)),
        }
    }
}

/// `Some(Some(text))` for a non-blank string or a number, `Some(None)` for a blank
/// string, `None` for any other type.
fn id_text(value: &Value) -> Option<Option<String>> {
    match value {
        Value::String(s) => {
            let s = s.trim();
            Some((!s.is_empty()).then(|| s.to_owned()))
        }
        Value::Number(n) => Some(Some(n.to_string())),
        _ => None,
    }
}

/// Parses an RFC 3339 timestamp, repairing what vendors are known to send: a space
/// inside the time (`2024-09-05T08:32:51. 658Z`, in Deel's docs and API), a space for
/// the `T`, and `+0000` offsets. A timestamp without an offset is refused rather than
/// guessed, and so is one RFC 3339 cannot write in UTC (a year outside 0000 to 9999
/// once the offset is applied, a leap second), since it would become the event's `time`.
pub fn parse_timestamp(raw: &str) -> Result<DateTime<Utc>, Problem> {
    let t = parse_offset_time(raw).ok_or(Problem::NotATimestamp)?;
    if rfc3339_utc::writable(&t) {
        Ok(t)
    } else {
        Err(Problem::NotWritableTime)
    }
}

fn parse_offset_time(raw: &str) -> Option<DateTime<Utc>> {
    let trimmed = raw.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(trimmed) {
        return Some(t.with_timezone(&Utc));
    }
    let mut repaired = String::with_capacity(trimmed.len());
    for (i, c) in trimmed.char_indices() {
        match c {
            ' ' if i == 10 => repaired.push('T'),
            c if c.is_whitespace() => {}
            c => repaired.push(c),
        }
    }
    DateTime::parse_from_rfc3339(&repaired)
        .or_else(|_| DateTime::parse_from_str(&repaired, "%Y-%m-%dT%H:%M:%S%.f%z"))
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn timestamps_vendors_send_are_repaired() {
        let cases = [
            ("2020-12-07T19:18:32.076Z", "2020-12-07T19:18:32.076Z"),
            ("2024-08-09T10:13:36.000000Z", "2024-08-09T10:13:36Z"),
            ("2024-09-05T08:32:51. 658Z", "2024-09-05T08:32:51.658Z"),
            ("  2024-09-05T08:32:51.658Z\n", "2024-09-05T08:32:51.658Z"),
            ("2024-09-05 08:32:51.658Z", "2024-09-05T08:32:51.658Z"),
            ("2024-09-05T10:32:51.658+02:00", "2024-09-05T08:32:51.658Z"),
            ("2024-09-05T10:32:51.658+0200", "2024-09-05T08:32:51.658Z"),
            ("2024-09-05t08:32:51z", "2024-09-05T08:32:51Z"),
        ];
        for (raw, want) in cases {
            assert_eq!(parse_timestamp(raw), Ok(utc(want)), "{raw:?}");
        }
    }

    #[test]
    fn timestamps_without_offset_or_garbage_are_refused() {
        for raw in [
            "",
            "2024-09-05T08:32:51",
            "2024-09-05",
            "yesterday",
            "2024-13-05T08:32:51Z",
            "1725525171",
        ] {
            assert_eq!(parse_timestamp(raw), Err(Problem::NotATimestamp), "{raw:?}");
        }
    }

    #[test]
    fn timestamps_rfc3339_cannot_write_in_utc_are_refused() {
        for raw in [
            "0000-01-01T00:00:00+14:00",
            "9999-12-31T23:59:59-14:00",
            // Signed and long years only get through the repair, with a `+0000` offset.
            "-0001-06-01T00:00:00+0000",
            "+12345-06-01T00:00:00. 5+0000",
            "2024-09-05T08:32:60Z",
            "2016-12-31T23:59:60Z",
            "2016-12-31T23:59:60.5Z",
        ] {
            assert_eq!(
                parse_timestamp(raw),
                Err(Problem::NotWritableTime),
                "{raw:?}"
            );
        }
        for raw in ["-0001-06-01T00:00:00Z", "+12345-06-01T00:00:00Z"] {
            assert!(parse_timestamp(raw).is_err(), "{raw:?}");
        }
        assert_eq!(
            parse_timestamp("0000-01-01T14:00:00+14:00"),
            Ok(utc("0000-01-01T00:00:00Z"))
        );
    }

    #[test]
    fn paths_quote_keys_that_are_not_identifiers() {
        assert_eq!(child_path("$", "data"), "$.data");
        assert_eq!(
            child_path("$.data", "third party_name"),
            "$.data['third party_name']"
        );
        assert_eq!(child_path("$", "9lives"), "$['9lives']");
        assert_eq!(child_path("$", "it's"), "$['it\\'s']");
        assert_eq!(child_path("$", ""), "$['']");
        assert_eq!(child_path("$", "a\\b"), "$['a\\\\b']");
        assert_eq!(
            child_path("$", "a\r\nb\u{2028}"),
            "$['a\\u{d}\\u{a}b\\u{2028}']"
        );
    }

    #[test]
    fn ids_accept_numbers_and_strings_and_name_the_field_otherwise() {
        let body = json!({"n": 112546, "s": " 3w4zdd9 ", "blank": "", "obj": {}, "nul": null});
        let o = Obj {
            map: body.as_object().unwrap(),
            path: "$.meta".into(),
        };
        assert_eq!(o.required_id("n").unwrap(), "112546");
        assert_eq!(o.required_id("s").unwrap(), "3w4zdd9");
        assert_eq!(
            o.required_id("blank").unwrap_err().to_string(),
            "$.meta.blank: is empty"
        );
        assert_eq!(
            o.required_id("obj").unwrap_err().to_string(),
            "$.meta.obj: expected a string or number, found an object"
        );
        assert_eq!(
            o.required_id("nul").unwrap_err().to_string(),
            "$.meta.nul: missing"
        );
        assert_eq!(o.opt_id("obj"), None);
        assert_eq!(o.opt_id("n").as_deref(), Some("112546"));
    }

    #[test]
    fn entity_ids_are_bounded_and_the_error_gives_only_the_length() {
        let at_limit = "x".repeat(MAX_ENTITY_ID_BYTES);
        let over = "é".repeat(MAX_ENTITY_ID_BYTES / 2 + 1);
        let body = json!({"ok": at_limit, "long": over});
        let o = Obj {
            map: body.as_object().unwrap(),
            path: "$.data.resource[0]".into(),
        };
        assert_eq!(o.entity_id("ok").unwrap().len(), MAX_ENTITY_ID_BYTES);
        assert_eq!(
            o.entity_id("long").unwrap_err().to_string(),
            "$.data.resource[0].long: 258 bytes, over the 256 allowed for an entity id"
        );
    }

    #[test]
    fn errors_never_contain_the_value() {
        let body = json!({"email": {"secret": "jane@example.com"}, "when": "jane@example.com"});
        let o = Obj {
            map: body.as_object().unwrap(),
            path: "$".into(),
        };
        let e1 = o.required_str("email").unwrap_err().to_string();
        let e2 = o.opt_timestamp("when").unwrap_err().to_string();
        for e in [e1, e2] {
            assert!(!e.contains("jane"), "{e}");
        }
    }

    #[test]
    fn large_and_decimal_numbers_keep_their_exact_text() {
        let body: Value =
            serde_json::from_str(r#"{"big": 123456789012345678901234567890, "dec": 1.10}"#)
                .unwrap();
        let o = Obj {
            map: body.as_object().unwrap(),
            path: "$".into(),
        };
        assert_eq!(
            o.required_id("big").unwrap(),
            "123456789012345678901234567890"
        );
        assert_eq!(o.opt_text("dec").as_deref(), Some("1.10"));
    }
}
