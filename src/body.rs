//! A webhook body parsed strictly: JSON in which no object repeats a key, nested at
//! most 125 deep, kept exactly as sent (key order, numbers as written). Pure; errors
//! give positions and paths, never text from the body.
//!
//! serde_json's own `Value` keeps the last of two equal keys, so `payload` would no
//! longer be the body as sent, and a reader and the vendor could disagree on a field.
//! Rather than a second pass over the bytes, the value is built by a visitor of our own
//! that notices a repeated key as it inserts it (the same one map lookup serde_json
//! makes), so refusing duplicates costs next to nothing.

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::map::Entry;
use serde_json::{Map, Number, Value};

use crate::redact::SafeName;
use crate::vendors::fields::child_path;

/// Parses `body` as JSON. The error is a detail for an `invalid_json` dead letter: a
/// syntax error with its position, or the JSON path of a repeated key.
pub fn parse(body: &[u8]) -> Result<Value, String> {
    // Valid UTF-8 (nearly every body) is checked once, in one pass, and read as a `str`,
    // which spares serde_json checking every string again; anything else is read as
    // bytes, so that its error is serde_json's, with its position.
    match std::str::from_utf8(body) {
        Ok(text) => parse_from(serde_json::Deserializer::from_str(text)),
        Err(_) => parse_from(serde_json::Deserializer::from_slice(body)),
    }
}

fn parse_from<'de, R: serde_json::de::Read<'de>>(
    mut de: serde_json::Deserializer<R>,
) -> Result<Value, String> {
    let mut state = State::default();
    // serde_json's own limit (127 levels read) is replaced by ours, which also bounds
    // the recursion: the level over it is refused before anything in it is read.
    de.disable_recursion_limit();
    let parsed = Node { state: &mut state }
        .deserialize(&mut de)
        .and_then(|value| de.end().map(|()| value));
    parsed.map_err(|e| match state.refused {
        Some(Refusal::DuplicateKey) => format!(
            "{}: the same key twice in one object (duplicate keys are refused)",
            state.path()
        ),
        Some(Refusal::TooDeep) => format!(
            "nested deeper than {MAX_DEPTH} arrays and objects at line {} column {}",
            e.line(),
            e.column()
        ),
        None => match e.classify() {
            // serde_json's syntax messages give a position and never quote the input.
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => e.to_string(),
            _ => format!("not valid JSON at line {} column {}", e.line(), e.column()),
        },
    })
}

/// The key serde_json (with `arbitrary_precision`) hands to a visitor's `visit_map` for
/// a number that is not a plain `u64`/`i64`: a map of this one key to the number's text.
const NUMBER_TOKEN: &str = "$serde_json::private::Number";

/// The deepest nesting of arrays and objects read: a body's top-level object is level 1.
///
/// 125 so that the events stay readable: an event holds its body two levels down
/// (`data.payload`), and serde_json, the strictest common reader, reads 127 levels by
/// default (our own `CanonicalEvent` included). No vendor nests more than a handful.
pub const MAX_DEPTH: usize = 125;

/// How deep the parse is, why it was stopped by us (not by a syntax error), and where:
/// a repeated key's path is collected on the way out, innermost step first, so the
/// happy path builds none.
#[derive(Default)]
struct State {
    /// Arrays and objects around the value being read.
    depth: usize,
    refused: Option<Refusal>,
    trail: Vec<Step>,
}

enum Refusal {
    DuplicateKey,
    TooDeep,
}

enum Step {
    Key(String),
    Index(usize),
}

impl State {
    fn refuse<E: de::Error>(&mut self, refusal: Refusal, at: Step) -> E {
        self.refused = Some(refusal);
        self.trail.push(at);
        E::custom("refused")
    }

    /// Records that the error coming out of a child happened at `step`.
    fn passed_through(&mut self, step: Step) {
        if matches!(self.refused, Some(Refusal::DuplicateKey)) {
            self.trail.push(step);
        }
    }

    /// Goes one array or object deeper, refusing level [`MAX_DEPTH`] + 1.
    fn enter<E: de::Error>(&mut self) -> Result<(), E> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            self.refused = Some(Refusal::TooDeep);
            return Err(E::custom("refused"));
        }
        Ok(())
    }

    fn path(&self) -> String {
        let mut path = String::from("$");
        for step in self.trail.iter().rev() {
            path = match step {
                // Body text, perhaps a person's data: shown only as a field name.
                Step::Key(key) if SafeName(key).is_plain() => child_path(&path, key),
                Step::Key(key) => format!("{path}[(key not shown: {} bytes)]", key.len()),
                Step::Index(i) => format!("{path}[{i}]"),
            };
        }
        path
    }
}

/// Builds one value (and everything in it).
struct Node<'s> {
    state: &'s mut State,
}

impl Node<'_> {
    fn child(&mut self) -> Node<'_> {
        Node {
            state: &mut *self.state,
        }
    }

    /// The rest of an object whose first key and value have been read.
    fn object<'de, A: MapAccess<'de>>(
        mut self,
        mut map: A,
        first_key: String,
        first_value: Value,
    ) -> Result<Value, A::Error> {
        let mut object = Map::new();
        object.insert(first_key, first_value);
        while let Some(key) = map.next_key::<String>()? {
            let value = match map.next_value_seed(self.child()) {
                Ok(value) => value,
                Err(e) => {
                    self.state.passed_through(Step::Key(key));
                    return Err(e);
                }
            };
            match object.entry(key) {
                Entry::Vacant(slot) => {
                    slot.insert(value);
                }
                Entry::Occupied(slot) => {
                    let key = slot.key().clone();
                    return Err(self.state.refuse(Refusal::DuplicateKey, Step::Key(key)));
                }
            }
        }
        self.state.depth -= 1;
        Ok(Value::Object(object))
    }
}

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<Value, A::Error> {
        self.state.enter()?;
        let mut items = Vec::new();
        loop {
            match seq.next_element_seed(self.child()) {
                Ok(Some(item)) => items.push(item),
                Ok(None) => {
                    self.state.depth -= 1;
                    return Ok(Value::Array(items));
                }
                Err(e) => {
                    self.state.passed_through(Step::Index(items.len()));
                    return Err(e);
                }
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Value, A::Error> {
        let Some(first_key) = map.next_key::<String>()? else {
            self.state.enter()?;
            self.state.depth -= 1;
            return Ok(Value::Object(Map::new()));
        };
        if first_key == NUMBER_TOKEN {
            // A number, or a body's own object with this odd key: serde_json hands a
            // number's text over as an owned `String`, and a string in the body always
            // as `&str`, which tells them apart. Read one level down (as an object's
            // value would be) and checked once it is known to be an object.
            self.state.depth += 1;
            match map.next_value_seed(FirstValue(self.child())) {
                Ok(First::NumberText(text)) => {
                    self.state.depth -= 1;
                    return text
                        .parse::<Number>()
                        .map(Value::Number)
                        .map_err(de::Error::custom);
                }
                Ok(First::Value(value)) => {
                    self.state.depth -= 1;
                    self.state.enter()?;
                    return self.object(map, first_key, value);
                }
                Err(e) => {
                    self.state.passed_through(Step::Key(first_key));
                    return Err(e);
                }
            }
        }
        self.state.enter()?;
        match map.next_value_seed(self.child()) {
            Ok(value) => self.object(map, first_key, value),
            Err(e) => {
                self.state.passed_through(Step::Key(first_key));
                Err(e)
            }
        }
    }
}

/// The value of an object's first key when that key is [`NUMBER_TOKEN`].
enum First {
    NumberText(String),
    Value(Value),
}

struct FirstValue<'s>(Node<'s>);

impl<'de> DeserializeSeed<'de> for FirstValue<'_> {
    type Value = First;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<First, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for FirstValue<'_> {
    type Value = First;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_string<E>(self, v: String) -> Result<First, E> {
        Ok(First::NumberText(v))
    }

    fn visit_bool<E>(self, v: bool) -> Result<First, E> {
        Ok(First::Value(Value::Bool(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<First, E> {
        Ok(First::Value(Value::Number(v.into())))
    }

    fn visit_u64<E>(self, v: u64) -> Result<First, E> {
        Ok(First::Value(Value::Number(v.into())))
    }

    fn visit_f64<E>(self, v: f64) -> Result<First, E> {
        Ok(First::Value(
            Number::from_f64(v).map_or(Value::Null, Value::Number),
        ))
    }

    fn visit_str<E>(self, v: &str) -> Result<First, E> {
        Ok(First::Value(Value::String(v.to_owned())))
    }

    fn visit_unit<E>(self) -> Result<First, E> {
        Ok(First::Value(Value::Null))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<First, A::Error> {
        self.0.visit_seq(seq).map(First::Value)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<First, A::Error> {
        self.0.visit_map(map).map(First::Value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(body: &str) -> String {
        parse(body.as_bytes()).unwrap_err()
    }

    #[test]
    fn parses_what_serde_json_parses_into_the_same_value() {
        for body in [
            r#"{"b":1,"a":[true,false,null,"x\n\u00e9",{"z":{}, "y":[]}],"c":-0}"#,
            r#"[1.10, -0, 1e400, 1E-400, 123456789012345678901234567890, -9223372036854775809, 0.5e1]"#,
            r#""top-level string""#,
            "18446744073709551615",
            "-12",
            "1.0",
            "null",
            r#"{"":1,"\u0000":2}"#,
        ] {
            let ours = parse(body.as_bytes()).unwrap();
            let theirs: Value = serde_json::from_str(body).unwrap();
            assert_eq!(ours, theirs, "{body}");
            // Equal as text too: key order and number spelling.
            assert_eq!(ours.to_string(), theirs.to_string(), "{body}");
        }
    }

    /// A key is body text, and may be a person's data: shown only when it looks like a
    /// field name.
    #[test]
    fn a_repeated_key_that_is_no_field_name_is_not_shown() {
        let detail = refused(r#"{"people":{"jane.doe@example.com":1,"jane.doe@example.com":2}}"#);
        assert_eq!(
            detail,
            "$.people[(key not shown: 20 bytes)]: the same key twice in one object (duplicate keys are refused)"
        );
    }

    #[test]
    fn a_key_repeated_at_any_depth_is_refused_naming_its_path() {
        let cases = [
            (r#"{"a":1,"a":1}"#, "$.a"),
            (r#"{"a":1,"b":2,"a":{}}"#, "$.a"),
            (r#"{"a":{"b":[0,{"c":1,"c":2}]}}"#, "$.a.b[1].c"),
            (
                r#"[[],[{"x y":1,"x y":1}]]"#,
                "$[1][0][(key not shown: 3 bytes)]",
            ),
            (r#"{"x-trace":1,"x-trace":1}"#, "$['x-trace']"),
            (r#"{"k":1,"\u006b":2}"#, "$.k"),
            (r#"{"a\nb":1,"a\nb":2}"#, "$[(key not shown: 3 bytes)]"),
            // The first repeat met wins, inner before outer.
            (r#"{"o":{"i":1,"i":2},"o":3}"#, "$.o.i"),
        ];
        for (body, path) in cases {
            assert_eq!(
                refused(body),
                format!("{path}: the same key twice in one object (duplicate keys are refused)"),
                "{body}"
            );
        }
    }

    #[test]
    fn syntax_errors_keep_serde_json_s_message() {
        assert_eq!(refused(r#"{"a":1,}"#), "trailing comma at line 1 column 8");
        assert_eq!(
            refused(r#"{"a":1} x"#),
            "trailing characters at line 1 column 9"
        );
        assert_eq!(refused(""), "EOF while parsing a value at line 1 column 0");
        assert_eq!(
            refused(r#"{"a":"secret""#),
            "EOF while parsing an object at line 1 column 13"
        );
    }

    /// `depth` arrays and objects, alternating, around `leaf`.
    fn nested(depth: usize, leaf: &str) -> String {
        let mut body = String::new();
        for level in 0..depth {
            body.push_str(if level % 2 == 0 { "[" } else { "{\"k\":" });
        }
        body.push_str(leaf);
        for level in (0..depth).rev() {
            body.push(if level % 2 == 0 { ']' } else { '}' });
        }
        body
    }

    #[test]
    fn nesting_125_deep_is_read_and_deeper_is_refused() {
        for leaf in ["1", "1.5", "\"s\"", "[]", "{}"] {
            // An empty array or object is a level of its own.
            let inner = usize::from(leaf == "[]" || leaf == "{}");
            let at_limit = nested(MAX_DEPTH - inner, leaf);
            let value = parse(at_limit.as_bytes()).unwrap_or_else(|e| panic!("{leaf}: {e}"));
            assert_eq!(value.to_string(), at_limit, "{leaf}");
            let over = nested(MAX_DEPTH + 1 - inner, leaf);
            let e = refused(&over);
            assert!(
                e.starts_with("nested deeper than 125 arrays and objects at line 1 column "),
                "{leaf}: {e}"
            );
        }
        let e = refused(&"[".repeat(100_000));
        assert_eq!(
            e,
            "nested deeper than 125 arrays and objects at line 1 column 126"
        );
    }

    /// An object of the body whose first key happens to be serde_json's number token
    /// stays an object (serde_json's own `Value` would turn it into a number).
    #[test]
    fn the_number_token_as_a_key_is_an_ordinary_key() {
        for body in [
            r#"{"$serde_json::private::Number":"5"}"#,
            r#"{"$serde_json::private::Number":"5","b":1}"#,
            r#"{"$serde_json::private::Number":5}"#,
            r#"{"$serde_json::private::Number":{"n":"1.5"}}"#,
        ] {
            let value = parse(body.as_bytes()).unwrap();
            assert!(value.is_object(), "{body}: {value}");
            assert_eq!(value.to_string(), body.replace(' ', ""));
        }
        assert_eq!(
            refused(r#"{"$serde_json::private::Number":"5","$serde_json::private::Number":1}"#),
            "$[(key not shown: 28 bytes)]: the same key twice in one object (duplicate keys are refused)"
        );
    }
}
