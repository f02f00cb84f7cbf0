//! Stable event ids: UUIDv5 over a vendor event's identity, so retries, redeliveries and
//! reformatted bodies of one event all get one id. The algorithm is public
//! (`docs/stable-ids.md`); changing it re-keys every event downstream.

use std::cmp::Ordering;

use serde_json::{Map, Number, Value};
use sha1::{Digest, Sha1};
use uuid::{Builder, Uuid, uuid};

use super::json::string;
use super::{CanonicalType, EventType};

/// The UUIDv5 namespace of every canonical event id. Fixed forever.
pub const EVENT_ID_NAMESPACE: Uuid = uuid!("97eb2466-1564-4be4-b98e-bcd8ea4c672c");

/// The UUIDv5 namespace of the ids of events a vendor marked simulations (Deel's
/// `is_simulation`), named as real ones are. Fixed forever.
pub const SIMULATION_ID_NAMESPACE: Uuid = uuid!("87ea4241-ebc0-4dc4-94b6-7644716c3118");

/// The UUIDv5 namespace of Entuitive user keys (see [`user_key`]). Fixed forever.
pub const USER_KEY_NAMESPACE: Uuid = uuid!("9f77a320-178a-49cb-acee-d547c23b8ba8");

/// The object could not be put in RFC 8785 canonical form: a number beyond the range
/// of an IEEE 754 double (such as `1e400`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the event holds a number that RFC 8785 canonical JSON cannot represent")]
pub struct Uncanonicalizable;

/// What an event's id is named by besides its identity: its canonical type, for a
/// generic event the vendor's own type string, and whether the vendor marked it a
/// simulation.
#[derive(Debug, Clone)]
pub struct IdName<'a> {
    event_type: CanonicalType,
    vendor_type: Option<&'a str>,
    simulation: bool,
}

impl IdName<'static> {
    /// A real event of a mapped type.
    pub fn mapped(event_type: EventType) -> IdName<'static> {
        IdName {
            event_type: event_type.into(),
            vendor_type: None,
            simulation: false,
        }
    }
}

impl<'a> IdName<'a> {
    /// A real generic event: an unmapped vendor type passed through. Several vendor types
    /// can share one generic type (its word is normalised and cut at 64 characters); the
    /// vendor's type string in the name keeps their ids apart.
    pub fn generic(event_type: CanonicalType, vendor_type: &'a str) -> IdName<'a> {
        IdName {
            event_type,
            vendor_type: Some(vendor_type),
            simulation: false,
        }
    }

    /// The same, for an event the vendor marked a simulation (Deel's `is_simulation`):
    /// named under [`SIMULATION_ID_NAMESPACE`], so that it never shares an id with the
    /// real event it imitates.
    pub fn simulated(self, simulation: bool) -> IdName<'a> {
        IdName { simulation, ..self }
    }
}

impl From<EventType> for IdName<'static> {
    fn from(event_type: EventType) -> Self {
        IdName::mapped(event_type)
    }
}

/// The stable id of an event from a vendor whose own event id is documented as the
/// event's identity (Authenticate's envelope `id`):
/// `UUIDv5(EVENT_ID_NAMESPACE, "{vendor}\n{canonical type}\n{vendor event id}")`.
///
/// The canonical type is in the name so that one vendor id reused across event types (or
/// across the stages of one report) cannot make two different events share an id.
pub fn id_from_vendor_event_id<'a>(name: impl Into<IdName<'a>>, vendor_event_id: &str) -> Uuid {
    let mut hasher = NameHasher::new(&name.into());
    hasher.0.update(vendor_event_id.as_bytes());
    hasher.finish()
}

/// The stable id of an event from a vendor with no trustworthy event id: Deel (whose
/// `tracking_id` and `timestamp` may change between retries) and Entuitive (no id):
/// `UUIDv5(EVENT_ID_NAMESPACE, "{vendor}\n{canonical type}\n{JCS(object)}")`.
///
/// `object` is the event: a Deel `resource` (or one element of it), an Entuitive event
/// object. RFC 8785 (JCS) sorts keys and fixes number and string formatting, so key order
/// and whitespace cannot change the id. JCS writes numbers as IEEE 754 doubles: integers
/// beyond 2^53 that differ only past that precision give the same id.
pub fn id_from_content<'a>(
    name: impl Into<IdName<'a>>,
    object: &Map<String, Value>,
) -> Result<Uuid, Uncanonicalizable> {
    // Buffered, then hashed in one call: the formatter writes many tiny pieces, which a
    // buffer takes faster than the hasher does.
    let canonical = canonical_json(object)?;
    let mut hasher = NameHasher::new(&name.into());
    hasher.0.update(&canonical);
    Ok(hasher.finish())
}

/// As [`id_from_content`] for a value of any JSON type: the identity of a generic event
/// (an unmapped type passed through), whose `resource` or `data` may be anything.
pub fn id_from_any_content(name: &IdName<'_>, value: &Value) -> Result<Uuid, Uncanonicalizable> {
    let mut canonical = Vec::with_capacity(1024);
    Jcs::new().value(value, &mut canonical)?;
    let mut hasher = NameHasher::new(name);
    hasher.0.update(&canonical);
    Ok(hasher.finish())
}

/// The RFC 8785 (JCS) form of a JSON object: the bytes that go into a content id.
pub fn canonical_json(object: &Map<String, Value>) -> Result<Vec<u8>, Uncanonicalizable> {
    let mut canonical = Vec::with_capacity(1024);
    Jcs::new().object(object, &mut canonical)?;
    Ok(canonical)
}

/// Writes RFC 8785 (JCS) canonical JSON straight from a parsed value, in one pass: each
/// object's members sorted by reference (by their keys' UTF-16 code units, as JCS
/// orders them), numbers as the ES6 form of their IEEE 754 double, strings escaped as
/// JCS (and serde_json) escape them. We parse with `arbitrary_precision`, so a number is
/// its text as sent; JCS wants the double it denotes (`1.50` -> `1.5`, `1e3` -> `1000`).
///
/// Byte for byte what the `canon-json` crate wrote over the same values, which ids were
/// first made with (the golden snapshots and `tests/canonical/properties.rs` hold it to
/// that and to an independent implementation), without that crate's buffering of every
/// member of every object in a map of UTF-16 keys.
struct Jcs<'a> {
    /// The members of the objects being written, innermost last: one vector for the
    /// whole value instead of one per object.
    members: Vec<(&'a String, &'a Value)>,
}

impl<'a> Jcs<'a> {
    /// Room for the members of a typical resource and the objects in it, so that the
    /// vector is allocated once rather than grown member by member.
    fn new() -> Self {
        Jcs {
            members: Vec::with_capacity(32),
        }
    }

    fn value(&mut self, value: &'a Value, out: &mut Vec<u8>) -> Result<(), Uncanonicalizable> {
        match value {
            Value::Null => out.extend_from_slice(b"null"),
            Value::Bool(true) => out.extend_from_slice(b"true"),
            Value::Bool(false) => out.extend_from_slice(b"false"),
            Value::Number(n) => number(n, out)?,
            Value::String(s) => string(s, out),
            Value::Array(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    self.value(item, out)?;
                }
                out.push(b']');
            }
            Value::Object(map) => self.object(map, out)?,
        }
        Ok(())
    }

    fn object(
        &mut self,
        map: &'a Map<String, Value>,
        out: &mut Vec<u8>,
    ) -> Result<(), Uncanonicalizable> {
        let start = self.members.len();
        self.members.extend(map.iter());
        let end = self.members.len();
        self.members[start..].sort_unstable_by(|a, b| utf16_order(a.0, b.0));
        out.push(b'{');
        for i in start..end {
            let (key, value) = self.members[i];
            if i > start {
                out.push(b',');
            }
            string(key, out);
            out.push(b':');
            self.value(value, out)?;
        }
        out.push(b'}');
        self.members.truncate(start);
        Ok(())
    }
}

/// JCS orders keys by their UTF-16 code units. Where the first differing bytes are both
/// ASCII that is their byte order (the same prefix, then the same characters in any
/// encoding); otherwise the UTF-16 units are compared.
fn utf16_order(a: &str, b: &str) -> Ordering {
    match a.bytes().zip(b.bytes()).position(|(x, y)| x != y) {
        None => a.len().cmp(&b.len()),
        Some(i) if a.as_bytes()[i].is_ascii() && b.as_bytes()[i].is_ascii() => {
            a.as_bytes()[i].cmp(&b.as_bytes()[i])
        }
        Some(_) => a.encode_utf16().cmp(b.encode_utf16()),
    }
}

/// A number as the ES6 form of its IEEE 754 double; one beyond a double's range is an
/// error. An integer of at most 15 digits is exact as a double and written as sent.
fn number(n: &Number, out: &mut Vec<u8>) -> Result<(), Uncanonicalizable> {
    let text = n.as_str();
    let digits = text.strip_prefix('-').unwrap_or(text);
    if !digits.is_empty()
        && digits.len() <= 15
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits.len() == 1 || !digits.starts_with('0'))
        && digits != "0"
    {
        out.extend_from_slice(text.as_bytes());
        return Ok(());
    }
    match n.as_f64() {
        Some(f) if f.is_finite() => {
            es6_number(f, out);
            Ok(())
        }
        _ => Err(Uncanonicalizable),
    }
}

/// The ES6 form of a finite double: `0` for either zero, fixed notation from 1e-6 to
/// 1e21 (Rust's shortest round-trip digits, as ES6 takes them), exponent notation with
/// a signed exponent outside it.
fn es6_number(f: f64, out: &mut Vec<u8>) {
    use std::io::Write as _;
    if f == 0.0 {
        out.push(b'0');
        return;
    }
    let (sign, num) = if f.is_sign_negative() {
        ("-", -f)
    } else {
        ("", f)
    };
    out.extend_from_slice(sign.as_bytes());
    if (1e-6..1e21).contains(&num) {
        let _ = write!(out, "{num}");
    } else {
        let scientific = format!("{num:e}");
        match scientific.split_once('e') {
            Some((mantissa, exponent)) if !exponent.starts_with('-') => {
                let _ = write!(out, "{mantissa}e+{exponent}");
            }
            _ => out.extend_from_slice(scientific.as_bytes()),
        }
    }
}

/// SHA-1 over the namespace and the name, as UUIDv5 defines it (RFC 9562 §5.5), fed
/// incrementally. `uuid::Uuid::new_v5` computes the same from a finished buffer; the
/// tests hold the two equal.
struct NameHasher(Sha1);

impl NameHasher {
    /// Starts the name with `{vendor}\n{canonical type}\n`, and for a generic event the
    /// vendor's type as a JSON string and `\n`. Neither of the first two can contain a
    /// newline and a JSON string ends at its closing quote, so the name splits back into
    /// its parts unambiguously. A simulation is named under its own namespace.
    fn new(name: &IdName<'_>) -> NameHasher {
        let mut sha = Sha1::new();
        let namespace = if name.simulation {
            SIMULATION_ID_NAMESPACE
        } else {
            EVENT_ID_NAMESPACE
        };
        sha.update(namespace.as_bytes());
        sha.update(name.event_type.vendor().key().as_bytes());
        sha.update(b"\n");
        sha.update(name.event_type.as_str().as_bytes());
        sha.update(b"\n");
        if let Some(vendor_type) = name.vendor_type {
            sha.update(Value::from(vendor_type).to_string().as_bytes());
            sha.update(b"\n");
        }
        NameHasher(sha)
    }

    fn finish(self) -> Uuid {
        let digest = self.0.finalize();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        Builder::from_sha1_bytes(bytes).into_uuid()
    }
}

/// A pseudonymous key for an Entuitive user, who has no id in Entuitive's webhooks:
/// `UUIDv5(USER_KEY_NAMESPACE, lowercase(trim(email)))`. It keeps email addresses out of
/// `subject` (which lands in headers and logs) while letting consumers correlate one
/// user's events, and recompute the key from an email they already hold.
pub fn user_key(email: &str) -> Uuid {
    Uuid::new_v5(&USER_KEY_NAMESPACE, email.trim().to_lowercase().as_bytes())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::json;

    use super::*;
    use crate::canonical::{EventType, Vendor};

    #[test]
    fn vendor_event_id_name_is_vendor_type_and_id() {
        let want = Uuid::new_v5(
            &EVENT_ID_NAMESPACE,
            b"authenticate\nauthenticate.report.completed\nabc-123",
        );
        let got = id_from_vendor_event_id(EventType::AuthenticateReportCompleted, "abc-123");
        assert_eq!(got, want);
        assert_eq!(got.get_version_num(), 5);
        assert_ne!(
            got,
            id_from_vendor_event_id(EventType::AuthenticateReportInitiated, "abc-123")
        );
    }

    #[test]
    fn content_name_is_vendor_type_and_jcs() {
        // Hand-written JCS of the object: keys sorted, no whitespace, 1.50 -> 1.5.
        let object =
            json!({"status": "approved", "id": 10443248, "amount": 1.50, "b": [true, null]});
        let want = Uuid::new_v5(
            &EVENT_ID_NAMESPACE,
            br#"deel
deel.timesheet.reviewed
{"amount":1.5,"b":[true,null],"id":10443248,"status":"approved"}"#,
        );
        let got = id_from_content(
            EventType::DeelTimesheetReviewed,
            object.as_object().unwrap(),
        )
        .unwrap();
        assert_eq!(got, want);
    }

    #[test]
    fn any_content_of_an_object_is_content() {
        let object = json!({"b": 1.50, "a": [1e3]});
        let t = CanonicalType::unmapped(Vendor::Deel, "payslip.available").unwrap();
        let want = Uuid::new_v5(
            &EVENT_ID_NAMESPACE,
            b"deel\ndeel.unmapped.payslip_available\n\"payslip.available\"\n{\"a\":[1000],\"b\":1.5}",
        );
        let name = IdName::generic(t.clone(), "payslip.available");
        assert_eq!(id_from_any_content(&name, &object).unwrap(), want);
        assert_eq!(
            id_from_content(name.clone(), object.as_object().unwrap()).unwrap(),
            want
        );
        let array = json!([{"id": 1}]);
        assert_eq!(
            id_from_any_content(&name, &array).unwrap(),
            Uuid::new_v5(
                &EVENT_ID_NAMESPACE,
                b"deel\ndeel.unmapped.payslip_available\n\"payslip.available\"\n[{\"id\":1}]"
            )
        );
    }

    /// Vendor types that share a generic type (normalised alike, or alike in their first
    /// 64 characters) never share an id: the vendor's type string is in the name, as a
    /// JSON string, so that no type can end where another's identity begins.
    #[test]
    fn generic_types_alike_after_normalising_keep_their_ids_apart() {
        let resource = json!({"id": "r-1"});
        let long = "a".repeat(64);
        let mut ids = BTreeSet::new();
        for vendor_type in [
            "payslip.available",
            "PAYSLIP_AVAILABLE",
            "payslip--available!!",
            &format!("{long}.one"),
            &format!("{long}.two"),
            "x\n\"a\"",
        ] {
            let t = CanonicalType::unmapped(Vendor::Deel, vendor_type).unwrap();
            let id = id_from_any_content(&IdName::generic(t, vendor_type), &resource).unwrap();
            assert!(ids.insert(id), "{vendor_type:?} shares an id");
        }
        let t = CanonicalType::unmapped(Vendor::Deel, "x\n\"a\"").unwrap();
        assert_eq!(
            id_from_vendor_event_id(IdName::generic(t, "x\n\"a\""), "7"),
            Uuid::new_v5(
                &EVENT_ID_NAMESPACE,
                b"deel\ndeel.unmapped.x_a\n\"x\\n\\\"a\\\"\"\n7"
            )
        );
    }

    /// A simulation is named as the real event under its own namespace: the same
    /// resource gives two ids, and nothing else about the name changes.
    #[test]
    fn a_simulation_never_shares_an_id_with_the_real_event() {
        let resource = json!({"id": "c-1", "status": "new"});
        let object = resource.as_object().unwrap();
        let real = id_from_content(EventType::DeelContractCreated, object).unwrap();
        let simulated = id_from_content(
            IdName::mapped(EventType::DeelContractCreated).simulated(true),
            object,
        )
        .unwrap();
        assert_ne!(real, simulated);
        assert_eq!(
            simulated,
            Uuid::new_v5(
                &SIMULATION_ID_NAMESPACE,
                br#"deel
deel.contract.created
{"id":"c-1","status":"new"}"#
            )
        );
        assert_eq!(
            id_from_content(
                IdName::mapped(EventType::DeelContractCreated).simulated(false),
                object
            )
            .unwrap(),
            real
        );
    }

    /// The cases where a JCS writer can go wrong, against an independent implementation:
    /// keys whose UTF-16 order is not their byte order (a character beyond U+FFFF sorts
    /// before U+E000..U+FFFF), escapes, and numbers of every form (the integers written
    /// as sent, and those that are not).
    #[test]
    fn canonical_form_of_the_hard_cases_agrees_with_an_independent_jcs() {
        let body = r#"{"\uE000": 1, "\uD83D\uDE00": 2, "a\u0000b": "\u001f\b\f\n\r\t\"\\\/\u007f\u2028",
            "": [], "z": {}, "aa": {"b": 1, "a": [null, true, false]}, "A": "é", "ab": 0,
            "n": [0, -0, 1.50, 1e3, -1e-7, 1e21, 1e20, 0.000001, 123456789012345,
                  -123456789012345, 1234567890123456, 12345678901234567890, 5e-324,
                  1.7976931348623157e308, 0.1, -2.5E+3]}"#;
        let value: Value = serde_json::from_str(body).unwrap();
        let object = value.as_object().unwrap();
        let ours = String::from_utf8(canonical_json(object).unwrap()).unwrap();
        let theirs = String::from_utf8(serde_json_canonicalizer::to_vec(object).unwrap()).unwrap();
        assert_eq!(ours, theirs);
        assert!(
            ours.starts_with("{\"\":[],\"A\":\"é\",\"a\\u0000b\":\"\\u001f\\b\\f\\n\\r\\t\\\"\\\\/\u{7f}\u{2028}\","),
            "{ours}"
        );
        assert!(
            ours.ends_with("\"z\":{},\"😀\":2,\"\u{e000}\":1}"),
            "{ours}"
        );
        assert!(
            ours.contains("\"n\":[0,0,1.5,1000,-1e-7,1e+21,100000000000000000000,0.000001,123456789012345,-123456789012345,1234567890123456,12345678901234567000,5e-324,1.7976931348623157e+308,0.1,-2500]"),
            "{ours}"
        );
    }

    #[test]
    fn numbers_jcs_cannot_represent_are_an_error_not_a_panic() {
        let object: Value = serde_json::from_str(r#"{"x": 1e400}"#).unwrap();
        assert_eq!(
            id_from_content(EventType::DeelContractCreated, object.as_object().unwrap()),
            Err(Uncanonicalizable)
        );
    }

    #[test]
    fn user_key_ignores_case_and_surrounding_space() {
        assert_eq!(
            user_key(" Jane.Doe@Example.com "),
            user_key("jane.doe@example.com")
        );
        assert_ne!(user_key("jane@example.com"), user_key("john@example.com"));
        assert_eq!(
            user_key("jane@example.com"),
            Uuid::new_v5(&USER_KEY_NAMESPACE, b"jane@example.com")
        );
    }
}
