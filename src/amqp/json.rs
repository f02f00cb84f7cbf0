//! AMQP values as plain values: properties and header tables as JSON for the tools
//! that print or export messages, and header values as text.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};

/// A dead letter's routing key and properties as JSON: strings as text (byte strings
/// that are not UTF-8 as `{"base64": …}`), numbers as numbers, tables as objects.
pub(crate) fn properties_json(routing_key: &str, p: &BasicProperties) -> serde_json::Value {
    use serde_json::{Map, Value, json};
    let mut out = Map::new();
    out.insert("routing_key".into(), json!(routing_key));
    let short = |v: &Option<lapin::types::ShortString>| v.as_ref().map(|s| s.to_string());
    for (name, value) in [
        ("content_type", short(p.content_type())),
        ("content_encoding", short(p.content_encoding())),
        ("correlation_id", short(p.correlation_id())),
        ("reply_to", short(p.reply_to())),
        ("expiration", short(p.expiration())),
        ("message_id", short(p.message_id())),
        ("type", short(p.kind())),
        ("user_id", short(p.user_id())),
        ("app_id", short(p.app_id())),
        ("cluster_id", short(p.cluster_id())),
    ] {
        if let Some(v) = value {
            out.insert(name.into(), Value::String(v));
        }
    }
    if let Some(m) = p.delivery_mode() {
        out.insert("delivery_mode".into(), json!(m));
    }
    if let Some(pr) = p.priority() {
        out.insert("priority".into(), json!(pr));
    }
    if let Some(t) = p.timestamp() {
        out.insert("timestamp".into(), json!(t));
    }
    if let Some(h) = p.headers() {
        out.insert("headers".into(), table_json(h));
    }
    Value::Object(out)
}

fn table_json(t: &FieldTable) -> serde_json::Value {
    serde_json::Value::Object(
        t.inner()
            .iter()
            .map(|(k, v)| (k.to_string(), value_json(v)))
            .collect(),
    )
}

fn value_json(v: &AMQPValue) -> serde_json::Value {
    use base64::Engine as _;
    use serde_json::{Value, json};
    let bytes = |b: &[u8]| match std::str::from_utf8(b) {
        Ok(s) => Value::String(s.to_owned()),
        Err(_) => json!({ "base64": base64::engine::general_purpose::STANDARD.encode(b) }),
    };
    match v {
        AMQPValue::Boolean(b) => json!(b),
        AMQPValue::ShortShortInt(n) => json!(n),
        AMQPValue::ShortShortUInt(n) => json!(n),
        AMQPValue::ShortInt(n) => json!(n),
        AMQPValue::ShortUInt(n) => json!(n),
        AMQPValue::LongInt(n) => json!(n),
        AMQPValue::LongUInt(n) => json!(n),
        AMQPValue::LongLongInt(n) => json!(n),
        AMQPValue::Float(n) => json!(n),
        AMQPValue::Double(n) => json!(n),
        AMQPValue::DecimalValue(d) => json!({ "scale": d.scale, "value": d.value }),
        AMQPValue::ShortString(s) => json!(s.as_str()),
        AMQPValue::LongString(s) => bytes(s.as_bytes()),
        AMQPValue::ByteArray(b) => bytes(b.as_slice()),
        AMQPValue::Timestamp(t) => json!(t),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(value_json).collect()),
        AMQPValue::FieldTable(t) => table_json(t),
        AMQPValue::Void => Value::Null,
    }
}

pub(crate) fn text(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}
