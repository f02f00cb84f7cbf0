//! Editing a content header as the broker sent it, for a walk that puts a message back
//! byte for byte: the few edits named change the top-level `headers` entries and the
//! `expiration`; every other property, header entry and nested value keeps its bytes,
//! whether or not the client could parse them. Pure.
//!
//! The walk decides what a copy or replay carries on the properties as the client parsed
//! them (`copy_properties`, `replay_properties`); [`PropertyEdits::between`] reads from
//! that what changed, and [`edit_content_header`] makes the same changes to the bytes
//! that were sent. Top-level entries are found by skipping each value by its type and
//! length, so a value nested far deeper than the client could take is never walked.

use std::borrow::Cow;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};

use super::properties::{CONTENT_HEADER_PREFIX, Cursor, PROPERTIES, lossy_within};

/// Flag order index of `headers`.
const HEADERS: usize = 2;
/// Flag order index of `expiration`.
const EXPIRATION: usize = 7;

/// What a walk changes in the properties of a message it puts back or sends on.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PropertyEdits {
    /// Top-level header entries left out, by their name as the client reads it (U+FFFD
    /// for bytes that are not UTF-8): every entry under such a name.
    pub drop: Vec<String>,
    /// Top-level header entries written: the name and the value encoded (type octet and
    /// value). In place of the first entry under that name (later ones are left out), or
    /// at the end of the table.
    pub set: Vec<(String, Vec<u8>)>,
    /// Whether there is to be a `headers` property: `None` as sent (one is added for
    /// entries set); `Some(true)` one, empty if nothing is in it; `Some(false)` none,
    /// which only a table with nothing left in it allows.
    pub headers_wanted: Option<bool>,
    /// `expiration`: `None` as it was; `Some(None)` removed; `Some(Some(text))` set.
    pub expiration: Option<Option<String>>,
}

impl PropertyEdits {
    /// What turns `seen` (a message's properties as the client parsed them) into `wanted`
    /// (what a walk publishes in their place). `None` when `wanted` differs from `seen` in
    /// anything else than top-level headers and `expiration`: no edit here says how.
    pub fn between(seen: &BasicProperties, wanted: &BasicProperties) -> Option<PropertyEdits> {
        let same = seen.content_type() == wanted.content_type()
            && seen.content_encoding() == wanted.content_encoding()
            && seen.delivery_mode() == wanted.delivery_mode()
            && seen.priority() == wanted.priority()
            && seen.correlation_id() == wanted.correlation_id()
            && seen.reply_to() == wanted.reply_to()
            && seen.message_id() == wanted.message_id()
            && seen.timestamp() == wanted.timestamp()
            && seen.kind() == wanted.kind()
            && seen.user_id() == wanted.user_id()
            && seen.app_id() == wanted.app_id()
            && seen.cluster_id() == wanted.cluster_id();
        if !same {
            return None;
        }
        let expiration = (seen.expiration() != wanted.expiration())
            .then(|| wanted.expiration().as_ref().map(|e| e.as_str().to_owned()));
        let none = FieldTable::default();
        let before = seen.headers().as_ref().unwrap_or(&none).inner();
        let after = wanted.headers().as_ref().unwrap_or(&none).inner();
        let drop = before
            .keys()
            .filter(|name| !after.contains_key(*name))
            .map(|name| name.as_str().to_owned())
            .collect();
        let mut set = Vec::new();
        for (name, value) in after {
            let value = encoded(value)?;
            // Compared as encoded: a NaN is the same value, a 'U' is not an 's'.
            if before.get(name).and_then(encoded).as_ref() != Some(&value) {
                set.push((name.as_str().to_owned(), value));
            }
        }
        Some(PropertyEdits {
            drop,
            set,
            headers_wanted: (seen.headers().is_some() != wanted.headers().is_some())
                .then_some(wanted.headers().is_some()),
            expiration,
        })
    }

    fn touch_headers(&self) -> bool {
        !self.drop.is_empty() || !self.set.is_empty() || self.headers_wanted.is_some()
    }
}

/// A field value as the client encodes it (type octet and value).
fn encoded(value: &AMQPValue) -> Option<Vec<u8>> {
    cookie_factory::gen_simple(lapin::types::generation::gen_value(value), Vec::new()).ok()
}

/// `payload` (a content header as sent: class, weight, body size, flags, properties)
/// with `edits` made, every other byte as it was (bytes after the last property too).
/// `None` when it cannot be walked: properties running past the end, a top-level header
/// of a type without a known size, more than one flag word, or `edits` asking for no
/// `headers` where entries the client never saw are left.
pub fn edit_content_header(payload: &[u8], edits: &PropertyEdits) -> Option<Vec<u8>> {
    let prefix = payload.get(..CONTENT_HEADER_PREFIX)?;
    let mut cur = Cursor::new(&payload[CONTENT_HEADER_PREFIX..]);
    let flags = cur.u16()?;
    if flags & 1 != 0 {
        // Another flag word follows: no basic-class layout the walk knows.
        return None;
    }
    let mut out = Vec::with_capacity(payload.len() + 128);
    out.extend_from_slice(prefix);
    let flags_at = out.len();
    out.extend_from_slice(&[0, 0]);
    let mut flags_out = flags;
    for (i, (_, encoding)) in PROPERTIES.iter().enumerate() {
        let bit = 1u16 << (15 - i);
        let sent = if flags & bit == 0 {
            None
        } else {
            Some(cur.take_encoded(*encoding)?)
        };
        let present = match (i, sent) {
            (HEADERS, sent) if edits.touch_headers() => edit_headers(sent, edits, &mut out)?,
            (EXPIRATION, sent) => match (&edits.expiration, sent) {
                (None, None) | (Some(None), _) => false,
                (None, Some(sent)) => {
                    out.extend_from_slice(sent);
                    true
                }
                (Some(Some(text)), _) => {
                    out.push(u8::try_from(text.len()).ok()?);
                    out.extend_from_slice(text.as_bytes());
                    true
                }
            },
            (_, Some(sent)) => {
                out.extend_from_slice(sent);
                true
            }
            (_, None) => false,
        };
        if present {
            flags_out |= bit;
        } else {
            flags_out &= !bit;
        }
    }
    out.extend_from_slice(cur.rest());
    out[flags_at..flags_at + 2].copy_from_slice(&flags_out.to_be_bytes());
    Some(out)
}

/// Writes the `headers` table (`sent`: length and entries, if there was one) with
/// `edits` made; whether there is one. `None` when it cannot be walked.
fn edit_headers(sent: Option<&[u8]>, edits: &PropertyEdits, out: &mut Vec<u8>) -> Option<bool> {
    let wanted = edits
        .headers_wanted
        .unwrap_or(sent.is_some() || !edits.set.is_empty());
    if sent.is_none() && !wanted {
        return Some(false);
    }
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    let mut written = vec![false; edits.set.len()];
    if let Some(sent) = sent {
        let mut entries = Cursor::new(sent.get(4..)?);
        while !entries.rest().is_empty() {
            let len = entries.u8()?;
            let key = entries.take(usize::from(len))?;
            let value = entries.take_field_value()?;
            let name = match std::str::from_utf8(key) {
                Ok(name) => Cow::Borrowed(name),
                Err(_) => Cow::Owned(lossy_within(key)),
            };
            if edits.drop.iter().any(|d| *d == name) {
                continue;
            }
            match edits.set.iter().position(|(n, _)| *n == name) {
                Some(j) if written[j] => {}
                Some(j) => {
                    out.push(len);
                    out.extend_from_slice(key);
                    out.extend_from_slice(&edits.set[j].1);
                    written[j] = true;
                }
                None => {
                    out.push(len);
                    out.extend_from_slice(key);
                    out.extend_from_slice(value);
                }
            }
        }
    }
    for ((name, value), _) in edits.set.iter().zip(&written).filter(|(_, w)| !**w) {
        out.push(u8::try_from(name.len()).ok()?);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(value);
    }
    let len = out.len() - start - 4;
    if !wanted {
        out.truncate(start);
        // Entries left that the client never saw: no edit says what becomes of them.
        return (len == 0).then_some(false);
    }
    out[start..start + 4].copy_from_slice(&u32::try_from(len).ok()?.to_be_bytes());
    Some(true)
}

#[cfg(test)]
mod tests {
    use lapin::protocol::basic::{gen_properties, parse_properties};
    use lapin::types::ShortString;
    use proptest::prelude::*;

    use super::*;
    use crate::amqp::wire::properties::check_content_header;

    fn short(bytes: &[u8]) -> Vec<u8> {
        [vec![u8::try_from(bytes.len()).unwrap()], bytes.to_vec()].concat()
    }

    fn long_string(bytes: &[u8]) -> Vec<u8> {
        [
            vec![b'S'],
            u32::try_from(bytes.len()).unwrap().to_be_bytes().to_vec(),
            bytes.to_vec(),
        ]
        .concat()
    }

    fn table(entries: &[(&[u8], Vec<u8>)]) -> Vec<u8> {
        let body: Vec<u8> = entries
            .iter()
            .flat_map(|(k, v)| short(k).into_iter().chain(v.iter().copied()))
            .collect();
        [
            u32::try_from(body.len()).unwrap().to_be_bytes().to_vec(),
            body,
        ]
        .concat()
    }

    fn nested(depth: usize) -> Vec<u8> {
        let mut t = table(&[]);
        for _ in 1..depth {
            t = table(&[(b"n", [vec![b'F'], t].concat())]);
        }
        [vec![b'F'], t].concat()
    }

    /// A content header payload: class 60, weight 0, body size 7, the properties at
    /// these flag indexes (each encoded), then `trailing`.
    fn header(properties: &[(usize, Vec<u8>)], trailing: &[u8]) -> Vec<u8> {
        let flags = properties
            .iter()
            .fold(0u16, |f, (i, _)| f | (1 << (15 - i)));
        let mut out = vec![0, 60, 0, 0];
        out.extend_from_slice(&7u64.to_be_bytes());
        out.extend_from_slice(&flags.to_be_bytes());
        for (_, bytes) in properties {
            out.extend_from_slice(bytes);
        }
        out.extend_from_slice(trailing);
        out
    }

    /// What the client makes of a payload as the frame check hands it over.
    fn seen(payload: &[u8]) -> BasicProperties {
        let checked = check_content_header(payload);
        let payload = checked.rewritten.unwrap_or_else(|| payload.to_vec());
        parse_properties(&payload[CONTENT_HEADER_PREFIX..])
            .unwrap()
            .1
    }

    /// A walk's copy: the routing key kept, no delivery count.
    fn copy_edits() -> PropertyEdits {
        PropertyEdits {
            drop: vec!["x-delivery-count".into()],
            set: vec![("x-rk".into(), long_string(b"unknown.invalid_json"))],
            ..PropertyEdits::default()
        }
    }

    const MESSAGE_ID: usize = 8;

    #[test]
    fn a_message_id_that_is_not_utf8_is_kept_as_sent() {
        let id = short(b"id-\xff\xfe");
        let payload = header(&[(HEADERS, table(&[])), (MESSAGE_ID, id.clone())], &[]);
        let edited = edit_content_header(&payload, &copy_edits()).unwrap();
        let want = header(
            &[
                (
                    HEADERS,
                    table(&[(b"x-rk", long_string(b"unknown.invalid_json"))]),
                ),
                (MESSAGE_ID, id),
            ],
            &[],
        );
        assert_eq!(edited, want);
    }

    #[test]
    fn headers_nested_40_deep_are_kept_as_sent() {
        let deep = nested(40);
        let payload = header(&[(HEADERS, table(&[(b"x-deep", deep.clone())]))], &[]);
        let edited = edit_content_header(&payload, &copy_edits()).unwrap();
        let want = header(
            &[(
                HEADERS,
                table(&[
                    (b"x-deep", deep),
                    (b"x-rk", long_string(b"unknown.invalid_json")),
                ]),
            )],
            &[],
        );
        assert_eq!(edited, want);
    }

    #[test]
    fn repeated_names_are_kept_and_a_name_set_is_written_once_in_place() {
        let payload = header(
            &[(
                HEADERS,
                table(&[
                    (b"x-trace", long_string(b"1")),
                    (b"x-rk", long_string(b"old")),
                    (b"x-trace", long_string(b"2")),
                    (b"x-rk", long_string(b"older")),
                ]),
            )],
            b"\x01\x02",
        );
        let edited = edit_content_header(&payload, &copy_edits()).unwrap();
        let want = header(
            &[(
                HEADERS,
                table(&[
                    (b"x-trace", long_string(b"1")),
                    (b"x-rk", long_string(b"unknown.invalid_json")),
                    (b"x-trace", long_string(b"2")),
                ]),
            )],
            b"\x01\x02",
        );
        assert_eq!(edited, want, "bytes after the last property kept too");
    }

    #[test]
    fn every_delivery_count_is_dropped_whatever_its_name_bytes() {
        let payload = header(
            &[(
                HEADERS,
                table(&[
                    (b"x-delivery-count", vec![b'l', 0, 0, 0, 0, 0, 0, 0, 3]),
                    (b"a\xff", long_string(b"kept")),
                    (b"x-delivery-count", vec![b'I', 0, 0, 0, 1]),
                ]),
            )],
            &[],
        );
        let edited = edit_content_header(&payload, &copy_edits()).unwrap();
        let want = header(
            &[(
                HEADERS,
                table(&[
                    (b"a\xff", long_string(b"kept")),
                    (b"x-rk", long_string(b"unknown.invalid_json")),
                ]),
            )],
            &[],
        );
        assert_eq!(edited, want);
    }

    #[test]
    fn an_expiration_is_added_in_its_place_with_its_flag() {
        let payload = header(&[(0, short(b"json")), (MESSAGE_ID, short(b"m\xff"))], &[]);
        let edits = PropertyEdits {
            expiration: Some(Some("5000".into())),
            ..PropertyEdits::default()
        };
        let edited = edit_content_header(&payload, &edits).unwrap();
        let want = header(
            &[
                (0, short(b"json")),
                (EXPIRATION, short(b"5000")),
                (MESSAGE_ID, short(b"m\xff")),
            ],
            &[],
        );
        assert_eq!(edited, want);
        // Replaced, then removed.
        let edits = PropertyEdits {
            expiration: Some(Some("7".into())),
            ..PropertyEdits::default()
        };
        let replaced = edit_content_header(&edited, &edits).unwrap();
        let want_replaced = header(
            &[
                (0, short(b"json")),
                (EXPIRATION, short(b"7")),
                (MESSAGE_ID, short(b"m\xff")),
            ],
            &[],
        );
        assert_eq!(replaced, want_replaced);
        let edits = PropertyEdits {
            expiration: Some(None),
            ..PropertyEdits::default()
        };
        assert_eq!(edit_content_header(&replaced, &edits).unwrap(), payload);
    }

    #[test]
    fn headers_are_added_or_removed_with_their_flag() {
        let payload = header(&[(MESSAGE_ID, short(b"m"))], &[]);
        let added = edit_content_header(&payload, &copy_edits()).unwrap();
        assert_eq!(
            added,
            header(
                &[
                    (
                        HEADERS,
                        table(&[(b"x-rk", long_string(b"unknown.invalid_json"))])
                    ),
                    (MESSAGE_ID, short(b"m")),
                ],
                &[],
            )
        );
        let edits = PropertyEdits {
            drop: vec!["x-rk".into()],
            headers_wanted: Some(false),
            ..PropertyEdits::default()
        };
        assert_eq!(edit_content_header(&added, &edits).unwrap(), payload);
        // Entries the client never saw are not dropped by saying "no headers".
        let edits = PropertyEdits {
            headers_wanted: Some(false),
            ..PropertyEdits::default()
        };
        assert_eq!(edit_content_header(&added, &edits), None);
    }

    #[test]
    fn what_cannot_be_walked_is_not_edited() {
        let unknown_type = header(&[(HEADERS, table(&[(b"k", vec![b'Z', 1, 2])]))], &[]);
        assert_eq!(edit_content_header(&unknown_type, &copy_edits()), None);
        let past_the_end = header(&[(MESSAGE_ID, vec![9, b'x'])], &[]);
        assert_eq!(edit_content_header(&past_the_end, &copy_edits()), None);
        let mut two_flag_words = header(&[(MESSAGE_ID, short(b"m"))], &[]);
        two_flag_words[CONTENT_HEADER_PREFIX + 1] |= 1;
        assert_eq!(edit_content_header(&two_flag_words, &copy_edits()), None);
        // An unknown type nested inside a table is skipped by the table's length.
        let nested_unknown = header(
            &[(
                HEADERS,
                table(&[(b"t", [vec![b'F'], table(&[(b"k", vec![b'Z', 1])])].concat())]),
            )],
            &[],
        );
        assert!(edit_content_header(&nested_unknown, &copy_edits()).is_some());
    }

    #[test]
    fn edits_between_say_what_a_walk_changed() {
        let mut before = FieldTable::default();
        before.insert("x-delivery-count".into(), AMQPValue::LongLongInt(2));
        before.insert("x-vendor".into(), AMQPValue::LongString("deel".into()));
        before.insert("x-replay-count".into(), AMQPValue::LongLongInt(1));
        let seen = BasicProperties::default()
            .with_message_id("m".into())
            .with_headers(before);
        let mut after_table = FieldTable::default();
        after_table.insert("x-vendor".into(), AMQPValue::LongString("deel".into()));
        after_table.insert("x-replay-count".into(), AMQPValue::LongLongInt(2));
        let wanted = seen
            .clone()
            .with_headers(after_table)
            .with_expiration(ShortString::from("100"));
        let edits = PropertyEdits::between(&seen, &wanted).unwrap();
        assert_eq!(edits.drop, ["x-delivery-count"]);
        assert_eq!(
            edits.set,
            [(
                "x-replay-count".to_owned(),
                vec![b'l', 0, 0, 0, 0, 0, 0, 0, 2]
            )]
        );
        assert_eq!(edits.expiration, Some(Some("100".into())));
        assert_eq!(edits.headers_wanted, None);
        let other = seen.clone().with_app_id("a".into());
        assert_eq!(PropertyEdits::between(&seen, &other), None);
        assert_eq!(
            PropertyEdits::between(&seen, &seen),
            Some(PropertyEdits::default())
        );
    }

    /// Properties the client takes as they are, with a few header entries.
    fn properties() -> impl Strategy<Value = BasicProperties> {
        let name = prop::sample::select(vec!["a", "x-delivery-count", "x-rk", "x-vendor", "z"]);
        let value = prop_oneof![
            any::<i64>().prop_map(AMQPValue::LongLongInt),
            "[a-z]{0,8}".prop_map(|s| AMQPValue::LongString(s.as_str().into())),
            any::<bool>().prop_map(AMQPValue::Boolean),
        ];
        (
            prop::collection::vec((name, value), 0..5),
            prop::option::of("[0-9]{1,6}"),
            prop::option::of("[a-z]{1,6}"),
            any::<bool>(),
        )
            .prop_map(|(entries, expiration, id, with_headers)| {
                let mut p = BasicProperties::default();
                if with_headers || !entries.is_empty() {
                    let mut t = FieldTable::default();
                    for (k, v) in entries {
                        t.insert(k.into(), v);
                    }
                    p = p.with_headers(t);
                }
                if let Some(e) = expiration {
                    p = p.with_expiration(e.as_str().into());
                }
                if let Some(id) = id {
                    p = p.with_message_id(id.as_str().into());
                }
                p
            })
    }

    proptest! {
        /// Whatever a walk wants in place of properties the client took as they were,
        /// the edited bytes say exactly that to the client.
        #[test]
        fn the_client_reads_in_the_edited_bytes_what_the_walk_wanted(
            sent in properties(),
            wanted_headers in properties(),
            expiration in prop::option::of(prop::option::of("[0-9]{1,6}")),
        ) {
            let mut wanted = sent.clone();
            if let Some(h) = wanted_headers.headers() {
                wanted = wanted.with_headers(h.clone());
            }
            if let Some(Some(e)) = &expiration {
                wanted = wanted.with_expiration(e.as_str().into());
            }
            let encoded = cookie_factory::gen_simple(gen_properties(&sent), Vec::new()).unwrap();
            let payload = header(&[], &[]);
            let payload = [&payload[..CONTENT_HEADER_PREFIX], &encoded].concat();
            prop_assert_eq!(&seen(&payload), &sent);
            let edits = PropertyEdits::between(&sent, &wanted).unwrap();
            let edited = edit_content_header(&payload, &edits).unwrap();
            let parsed = parse_properties(&edited[CONTENT_HEADER_PREFIX..]).unwrap();
            prop_assert!(parsed.0.is_empty());
            prop_assert_eq!(parsed.1, wanted);
        }
    }
}
