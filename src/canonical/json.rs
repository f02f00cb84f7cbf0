//! JSON written by hand where serde's generic path costs more than the bytes: strings
//! escaped as serde_json (and RFC 8785) escape them, parsed values, and a
//! [`CanonicalEvent`] in one pass. Byte for byte what `serde_json` writes of the same values; tests hold the two
//! equal.

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::{CanonicalEvent, Person, Tenant, rfc3339_utc};

/// A JSON string as serde_json writes it, which is also RFC 8785's escaping: `"` and `\`
/// escaped, `\b \f \n \r \t` by name, other control characters as `\u00xx` (lowercase),
/// everything else as is.
#[inline]
pub(crate) fn string(s: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(s.len() + 2);
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut plain = 0;
    while let Some(i) = next_to_escape(bytes, plain) {
        let b = bytes[i];
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            0x0c => b"\\f",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            _ => &[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ],
        };
        out.extend_from_slice(&bytes[plain..i]);
        out.extend_from_slice(escape);
        plain = i + 1;
    }
    out.extend_from_slice(&bytes[plain..]);
    out.push(b'"');
}

/// Whether eight bytes may hold one a JSON string must escape (a control character,
/// `"` or `\`): never false when one does; rarely true when none does.
fn may_need_escape(chunk: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut word = [0; 8];
    word.copy_from_slice(chunk);
    let x = u64::from_le_bytes(word);
    let quote = x ^ (ONES * u64::from(b'"'));
    let backslash = x ^ (ONES * u64::from(b'\\'));
    // A byte below 0x20, or one that is zero after the XOR, sets its high bit here.
    let found = (x.wrapping_sub(ONES * 0x20) & !x)
        | (quote.wrapping_sub(ONES) & !quote)
        | (backslash.wrapping_sub(ONES) & !backslash);
    found & HIGH != 0
}

/// The bytes a JSON string must escape (control characters, `"` and `\\`), for the
/// bytes checked one at a time: one load instead of three comparisons.
const ESCAPED: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// The first byte from `from` on that a JSON string must escape: a control character,
/// `"` or `\`. Eight bytes at a time (most strings have none).
pub(crate) fn next_to_escape(bytes: &[u8], from: usize) -> Option<usize> {
    let escaped = |b: u8| ESCAPED[usize::from(b)];
    let mut at = from;
    while let Some(chunk) = bytes.get(at..at + 8) {
        if may_need_escape(chunk) {
            if let Some(i) = chunk.iter().position(|&b| escaped(b)) {
                return Some(at + i);
            }
        }
        at += 8;
    }
    // The last few bytes: the final eight again where there are eight (bytes before
    // `at` were checked already), else one at a time.
    let start = bytes.len().checked_sub(8).filter(|&start| start < at);
    let word = start.and_then(|start| bytes.get(start..));
    if let Some(chunk) = word {
        if !may_need_escape(chunk) {
            return None;
        }
    }
    bytes
        .get(at..)?
        .iter()
        .position(|&b| escaped(b))
        .map(|i| at + i)
}

/// A JSON value as serde_json writes it (compact, `preserve_order`): members in their
/// order, numbers as `arbitrary_precision` keeps them (their text).
pub(super) fn value(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => out.extend_from_slice(n.as_str().as_bytes()),
        Value::String(s) => string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                value(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            out.push(b'{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                string(k, out);
                out.push(b':');
                value(item, out);
            }
            out.push(b'}');
        }
    }
}

/// `time` as [`rfc3339_utc::format`] writes it (chrono's `AutoSi`: no fraction, or 3,
/// 6 or 9 digits, as few as hold it), without the formatting machinery, for every time
/// RFC 3339 can write in UTC (the only ones an event holds).
fn time(t: &DateTime<Utc>, out: &mut Vec<u8>) {
    if !rfc3339_utc::writable(t) {
        string(&rfc3339_utc::format(t), out);
        return;
    }
    let digits = |out: &mut Vec<u8>, n: u32, width: u32| {
        for place in (0..width).rev() {
            out.push(b'0' + (n / 10u32.pow(place) % 10) as u8);
        }
    };
    // The naive time once: each of `DateTime`'s own getters adds the (zero) offset again.
    let t = t.naive_utc();
    let nanos = t.nanosecond();
    out.push(b'"');
    digits(out, t.year().unsigned_abs(), 4);
    out.push(b'-');
    digits(out, t.month(), 2);
    out.push(b'-');
    digits(out, t.day(), 2);
    out.push(b'T');
    digits(out, t.hour(), 2);
    out.push(b':');
    digits(out, t.minute(), 2);
    out.push(b':');
    digits(out, t.second(), 2);
    if nanos != 0 {
        out.push(b'.');
        if nanos % 1_000_000 == 0 {
            digits(out, nanos / 1_000_000, 3);
        } else if nanos % 1_000 == 0 {
            digits(out, nanos / 1_000, 6);
        } else {
            digits(out, nanos, 9);
        }
    }
    out.extend_from_slice(b"Z\"");
}

/// `null` or the string.
fn opt_string(s: Option<&str>, out: &mut Vec<u8>) {
    match s {
        None => out.extend_from_slice(b"null"),
        Some(s) => string(s, out),
    }
}

/// `,"key":` (the key is ours: no escaping needed).
fn key(name: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
}

impl CanonicalEvent {
    /// Appends the event's JSON to `out`: what `serde_json::to_writer` writes of it (the
    /// derived `Serialize`, field order and omissions included), in one pass with no
    /// serializer state per field.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"specversion\":\"1.0\",\"id\":\"");
        out.extend_from_slice(
            self.id
                .hyphenated()
                .encode_lower(&mut Uuid::encode_buffer())
                .as_bytes(),
        );
        out.push(b'"');
        key("source", out);
        string(&self.source, out);
        key("type", out);
        string(self.event_type.as_str(), out);
        key("subject", out);
        string(&self.subject, out);
        key("time", out);
        time(&self.time, out);
        out.extend_from_slice(b",\"datacontenttype\":\"application/json\"");
        if let Some(schema) = &self.dataschema {
            key("dataschema", out);
            string(schema, out);
        }
        key("vendor", out);
        string(self.vendor.key(), out);
        key("vendoreventtype", out);
        string(&self.vendoreventtype, out);
        if let Some(id) = &self.vendoreventid {
            key("vendoreventid", out);
            string(id, out);
        }
        if let Some(id) = &self.tenantid {
            key("tenantid", out);
            string(id, out);
        }
        if let Some(simulation) = self.simulation {
            key("simulation", out);
            out.extend_from_slice(if simulation { b"true" } else { b"false" });
        }
        let data = &self.data;
        out.extend_from_slice(b",\"data\":{\"entity\":{\"kind\":");
        string(&data.entity.kind, out);
        key("id", out);
        string(&data.entity.id, out);
        out.push(b'}');
        key("status", out);
        opt_string(data.status.as_deref(), out);
        key("person", out);
        match &data.person {
            None => out.extend_from_slice(b"null"),
            Some(Person {
                id,
                email,
                first_name,
                last_name,
                full_name,
            }) => {
                out.extend_from_slice(b"{\"id\":");
                opt_string(id.as_deref(), out);
                key("email", out);
                opt_string(email.as_deref(), out);
                key("first_name", out);
                opt_string(first_name.as_deref(), out);
                key("last_name", out);
                opt_string(last_name.as_deref(), out);
                key("full_name", out);
                opt_string(full_name.as_deref(), out);
                out.push(b'}');
            }
        }
        key("tenant", out);
        match &data.tenant {
            None => out.extend_from_slice(b"null"),
            Some(Tenant { id, name }) => {
                out.extend_from_slice(b"{\"id\":");
                string(id, out);
                key("name", out);
                opt_string(name.as_deref(), out);
                out.push(b'}');
            }
        }
        key("payload", out);
        value(&data.payload, out);
        out.extend_from_slice(b"}}");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::canonical::{Entity, EventData, EventFacts, EventType};

    fn event(person: Option<Person>, tenant: Option<Tenant>, simulation: bool) -> CanonicalEvent {
        CanonicalEvent::new(EventFacts {
            event_type: EventType::DeelContractCreated.into(),
            id: Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef),
            time: DateTime::parse_from_rfc3339("2023-05-10T23:57:49.274Z")
                .unwrap()
                .with_timezone(&Utc),
            vendor_event_type: "contract.created \"\u{1}\u{7f}\u{2028}é".into(),
            vendor_event_id: simulation.then(|| "t\n1".into()),
            simulation,
            data: EventData {
                entity: Entity {
                    kind: "contract".into(),
                    id: "m\\eq/8".into(),
                },
                status: simulation.then(|| "\t".into()),
                person,
                tenant,
                payload: Arc::new(json!({"z": 1, "a": ["\u{0}", 1.50, null, {"k": "\u{1f}"}]})),
            },
        })
    }

    #[test]
    fn the_event_is_written_as_serde_json_writes_it() {
        let person = Person {
            id: Some("p".into()),
            email: None,
            first_name: Some("\u{8}\u{c}\r".into()),
            last_name: None,
            full_name: Some("J\"D".into()),
        };
        let tenant = Tenant {
            id: "1".into(),
            name: Some("Acme".into()),
        };
        for (person, tenant, simulation) in [
            (None, None, false),
            (Some(person.clone()), None, true),
            (None, Some(tenant.clone()), false),
            (Some(person), Some(tenant), true),
        ] {
            let mut e = event(person, tenant, simulation);
            for dataschema in [None, e.dataschema.clone()] {
                e.dataschema = dataschema;
                let mut ours = Vec::new();
                e.write_json(&mut ours);
                assert_eq!(
                    String::from_utf8(ours).unwrap(),
                    serde_json::to_string(&e).unwrap()
                );
            }
        }
    }

    #[test]
    fn times_are_written_as_rfc3339_utc_writes_them() {
        for text in [
            "2023-05-10T23:57:49Z",
            "2023-05-10T23:57:49.274Z",
            "2023-05-10T23:57:49.270Z",
            "2023-05-10T23:57:49.000100Z",
            "2023-05-10T23:57:49.123456789Z",
            "2023-05-10T23:57:49.000000001Z",
            "0000-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999999999Z",
            "2024-02-29T09:05:01.5+01:00",
        ] {
            let t = DateTime::parse_from_rfc3339(text)
                .unwrap()
                .with_timezone(&Utc);
            let mut ours = Vec::new();
            time(&t, &mut ours);
            assert_eq!(
                String::from_utf8(ours).unwrap(),
                format!("\"{}\"", rfc3339_utc::format(&t)),
                "{text}"
            );
        }
    }

    #[test]
    fn values_are_written_as_serde_json_writes_them() {
        let body = r#"{"z": [1, -0, 1E3, 1.50, -0.0, 12345678901234567890123, -9223372036854775809],
            "a\u0000": "\u00e9\/\n\"\\\t\u0001\ud83d\ude00", "e": {}, "ea": [], "n": null,
            "t": true, "f": false, "o": {"b": [{"c": "d"}]}}"#;
        for text in [body, "[]", "5", "\"x\"", "null"] {
            let parsed = crate::body::parse(text.as_bytes()).unwrap();
            let mut ours = Vec::new();
            value(&parsed, &mut ours);
            assert_eq!(
                String::from_utf8(ours).unwrap(),
                serde_json::to_string(&parsed).unwrap()
            );
        }
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let every: String = (0u32..0x3000).filter_map(char::from_u32).collect();
        for s in ["", "plain", "\"\\", &every] {
            let mut ours = Vec::new();
            string(s, &mut ours);
            assert_eq!(ours, serde_json::to_vec(s).unwrap());
        }
    }
}
