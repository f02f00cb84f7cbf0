//! Raw webhooks as gateways publish them, built from `tests/fixtures/`, and what the
//! library says each must become.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use serde_json::Value;
use webhook_normalizer::{CanonicalEvent, Limits, NormalizeError, Unmapped, normalize};

/// `tests/fixtures/` of the repository.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures"))
}

/// A raw webhook as a gateway publishes it.
#[derive(Clone, Debug)]
pub struct RawWebhook {
    pub body: Vec<u8>,
    pub vendor: Option<&'static str>,
    pub message_id: String,
}

impl RawWebhook {
    pub fn new(body: Vec<u8>, vendor: Option<&'static str>, message_id: impl Into<String>) -> Self {
        RawWebhook {
            body,
            vendor,
            message_id: message_id.into(),
        }
    }
}

/// The receipt time every test webhook carries in `x-received-at`.
pub const RECEIVED_AT: &str = "2026-01-02T03:04:05Z";

/// [`RECEIVED_AT`] as a time.
pub fn received_at() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(RECEIVED_AT)
        .expect("RECEIVED_AT is RFC 3339")
        .with_timezone(&Utc)
}

/// The properties a gateway gives a raw webhook: its message id, JSON content type,
/// persistent, and headers `x-received-at`, `x-gateway` and (when known) `x-vendor`.
pub fn raw_properties(w: &RawWebhook) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        "x-received-at".into(),
        AMQPValue::LongString(RECEIVED_AT.into()),
    );
    headers.insert(
        "x-gateway".into(),
        AMQPValue::LongString("test-gateway".into()),
    );
    if let Some(vendor) = w.vendor {
        headers.insert("x-vendor".into(), AMQPValue::LongString(vendor.into()));
    }
    BasicProperties::default()
        .with_message_id(w.message_id.as_str().into())
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_headers(headers)
}

/// A fixture's bytes, by path under `tests/fixtures/`.
pub fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(fixtures_dir().join(path)).unwrap()
}

/// A fixture, parsed.
pub fn fixture_json(path: &str) -> Value {
    serde_json::from_slice(&fixture(path)).unwrap()
}

/// Every fixture with the vendor its folder names (`unknown/` has none).
pub fn fixture_webhooks() -> Vec<RawWebhook> {
    let mut out = Vec::new();
    for (dir, vendor) in [
        ("entuitive", Some("entuitive")),
        ("authenticate", Some("authenticate")),
        ("deel", Some("deel")),
        ("unknown", None),
    ] {
        let mut paths: Vec<_> = std::fs::read_dir(fixtures_dir().join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        paths.sort();
        for p in paths {
            let id = format!("{dir}/{}", p.file_name().unwrap().to_string_lossy());
            out.push(RawWebhook::new(std::fs::read(&p).unwrap(), vendor, id));
        }
    }
    out
}

/// `n` distinct webhooks, a mix of all three vendors, every 20th one not normalizable.
pub fn webhook_mix(n: usize, tag: &str) -> Vec<RawWebhook> {
    let read = |p: &str| -> Value {
        serde_json::from_slice(&std::fs::read(fixtures_dir().join(p)).unwrap()).unwrap()
    };
    let deel = read("deel/contract.status.updated.json");
    let deel_fan = read("deel/timesheet.reviewed__two_items.json");
    let auth = read("authenticate/CRIMINAL_REQUEST_STATUS_UPDATE__realistic.json");
    let ent = read("entuitive/user.created__ids_as_strings.json");
    (0..n)
        .map(|i| {
            let (body, vendor) = match i % 20 {
                19 => (serde_json::json!({"event_type": "user.password_reset", "data": {"email": format!("{tag}-{i}@example.com")}}), Some("entuitive")),
                k if k % 4 == 0 => {
                    let mut b = deel.clone();
                    b["data"]["resource"]["id"] = format!("{tag}-{i}").into();
                    (b, Some("deel"))
                }
                k if k % 4 == 1 => {
                    let mut b = auth.clone();
                    b["id"] = format!("{tag}-{i}").into();
                    (b, None)
                }
                k if k % 4 == 2 => {
                    let mut b = ent.clone();
                    b["data"]["email"] = format!("{tag}-{i}@example.com").into();
                    (b, Some("entuitive"))
                }
                _ => {
                    let mut b = deel_fan.clone();
                    b["data"]["resource"][0]["id"] = format!("{tag}-{i}-a").into();
                    b["data"]["resource"][1]["id"] = format!("{tag}-{i}-b").into();
                    (b, Some("deel"))
                }
            };
            RawWebhook::new(serde_json::to_vec(&body).unwrap(), vendor, format!("{tag}-{i}"))
        })
        .collect()
}

/// What the library says should come out of one raw webhook.
pub fn expected(w: &RawWebhook) -> Result<Vec<CanonicalEvent>, NormalizeError> {
    normalize(
        &w.body,
        w.vendor,
        received_at(),
        &Limits::default(),
        &Unmapped::default(),
        webhook_normalizer::SchemaBase::default(),
    )
}

/// Per input: the event ids it must produce, or the dead-letter routing key it must get.
#[derive(Default)]
pub struct Expectations {
    pub event_ids: BTreeSet<String>,
    pub dead_letters: BTreeMap<String, String>,
}

pub fn expectations(webhooks: &[RawWebhook]) -> Expectations {
    let mut e = Expectations::default();
    for w in webhooks {
        match expected(w) {
            Ok(events) => e
                .event_ids
                .extend(events.iter().map(|ev| ev.id.to_string())),
            Err(err) => {
                let key = format!(
                    "{}.{}",
                    err.vendor().map_or("unknown", |v| v.key()),
                    err.kind()
                );
                e.dead_letters.insert(w.message_id.clone(), key);
            }
        }
    }
    e
}
