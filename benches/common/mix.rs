//! The raw messages a run is preloaded with (or a gateway sends), built from
//! `tests/fixtures/`, and what the worker should make of them.

use std::collections::HashSet;

use serde_json::Value;
use testkit::{fixtures_dir, received_at};
use webhook_normalizer::{DeadLetterKind, Limits, Unmapped, normalize};

/// A raw webhook as a gateway publishes it; its id is `bench-{index}` ([`super::raw_id`]).
pub struct RawWebhook {
    pub body: Vec<u8>,
    pub vendor: Option<&'static str>,
}

pub struct Mix {
    /// What it is, for the report.
    pub description: String,
    pub messages: Vec<RawWebhook>,
    /// Canonical events the normalizable messages map to.
    pub expected_events: u64,
    /// Messages that cannot be normalized (each becomes one dead letter).
    pub expected_dead_letters: u64,
}

impl Mix {
    /// The realistic mix: every 20th message is a body of an event type no vendor
    /// mapping knows; the others cycle through every fixture of the three vendors that
    /// normalizes. Each message is made distinct (its own event ids) by rewriting its
    /// identifying field; every other one carries `x-vendor`.
    pub fn standard(n: usize) -> Mix {
        let root = fixtures_dir();
        let at = received_at();
        let mut good = Vec::new();
        let mut bad = Vec::new();
        let mut templates = Vec::new();
        for vendor in ["entuitive", "authenticate", "deel"] {
            let mut paths: Vec<_> = std::fs::read_dir(root.join(vendor))
                .expect("fixtures folder")
                .map(|e| e.expect("fixtures entry").path())
                .collect();
            paths.sort();
            let mut count = 0;
            for path in paths {
                let bytes = std::fs::read(&path).expect("fixture");
                match normalize(
                    &bytes,
                    None,
                    at,
                    &Limits::default(),
                    &Unmapped::default(),
                    webhook_normalizer::SchemaBase::default(),
                ) {
                    Ok(_) => {
                        good.push((vendor, parse(&bytes)));
                        count += 1;
                    }
                    Err(e) if e.kind() == DeadLetterKind::UnknownEventType => {
                        bad.push((vendor, parse(&bytes)));
                    }
                    Err(_) => {}
                }
            }
            templates.push(format!("{vendor} {count}"));
        }
        assert!(!good.is_empty() && !bad.is_empty(), "fixtures missing");
        let (mut next_good, mut next_bad) = (0, 0);
        let bodies = (0..n).map(|i| {
            let unknown = i % 20 == 19;
            let (vendor, template) = if unknown {
                next_bad += 1;
                &bad[(next_bad - 1) % bad.len()]
            } else {
                next_good += 1;
                &good[(next_good - 1) % good.len()]
            };
            let mut body = template.clone();
            make_distinct(&mut body, vendor, i);
            (*vendor, body, !unknown)
        });
        let description = format!(
            "{} normalizable fixtures ({}), cycled, + every 20th of an unknown event type",
            good.len(),
            templates.join(", ")
        );
        Mix::checked(description, bodies.collect())
    }

    /// `n` Authenticate `CRIMINAL_REQUEST_STATUS_UPDATE` webhooks (the realistic
    /// fixture) padded to `size` bytes of body with a text field `order.notes`.
    pub fn padded(n: usize, size: usize) -> Mix {
        let template = parse(
            &std::fs::read(
                fixtures_dir().join("authenticate/CRIMINAL_REQUEST_STATUS_UPDATE__realistic.json"),
            )
            .expect("fixture"),
        );
        const TEXT: &str = "Reviewed against county records; no further action required. ";
        let bodies = (0..n)
            .map(|i| {
                let mut body = template.clone();
                make_distinct(&mut body, "authenticate", i);
                body["order"]["notes"] = Value::from("");
                let base = serde_json::to_vec(&body).expect("serializes").len();
                let pad = size.saturating_sub(base);
                let notes: String = TEXT.chars().cycle().take(pad).collect();
                body["order"]["notes"] = Value::from(notes);
                ("authenticate", body, true)
            })
            .collect();
        Mix::checked(
            format!("Authenticate CRIMINAL_REQUEST_STATUS_UPDATE padded to {size} bytes"),
            bodies,
        )
    }

    /// `n` Deel `timesheet.reviewed` webhooks whose `resource` array has `elements`
    /// entries: one canonical event per element.
    pub fn fan_out(n: usize, elements: usize) -> Mix {
        let template = parse(
            &std::fs::read(fixtures_dir().join("deel/timesheet.reviewed__two_items.json"))
                .expect("fixture"),
        );
        let bodies = (0..n)
            .map(|i| {
                let mut body = template.clone();
                let items: Vec<Value> = (0..elements)
                    .map(|k| {
                        serde_json::json!({
                            "id": 1_000_000_000u64 + (i * 1000 + k) as u64,
                            "public_id": format!("86ea6346-e5d3-491c-a065-{:012x}", i * 1000 + k),
                            "status": if k % 2 == 0 { "approved" } else { "declined" },
                        })
                    })
                    .collect();
                body["data"]["resource"] = Value::from(items);
                ("deel", body, true)
            })
            .collect();
        Mix::checked(
            format!("Deel timesheet.reviewed with {elements} resource elements"),
            bodies,
        )
    }

    /// Serializes the bodies and checks what the worker will do with each, so a rewrite
    /// that broke a fixture cannot silently change the mix.
    fn checked(description: String, bodies: Vec<(&'static str, Value, bool)>) -> Mix {
        let at = received_at();
        let mut ids = HashSet::new();
        let (mut events, mut dead_letters) = (0, 0);
        let mut messages = Vec::with_capacity(bodies.len());
        for (i, (vendor, body, normalizable)) in bodies.into_iter().enumerate() {
            let body = serde_json::to_vec(&body).expect("serializes");
            let hint = (i % 2 == 0).then_some(vendor);
            match normalize(
                &body,
                hint,
                at,
                &Limits::default(),
                &Unmapped::default(),
                webhook_normalizer::SchemaBase::default(),
            ) {
                Ok(out) if normalizable => {
                    events += out.len() as u64;
                    for event in &out {
                        assert!(ids.insert(event.id), "message {i} repeats an event id");
                    }
                }
                Err(e) if !normalizable && e.kind() == DeadLetterKind::UnknownEventType => {
                    dead_letters += 1;
                }
                other => panic!("message {i} ({vendor}) normalized unexpectedly: {other:?}"),
            }
            messages.push(RawWebhook { body, vendor: hint });
        }
        Mix {
            description,
            messages,
            expected_events: events,
            expected_dead_letters: dead_letters,
        }
    }

    pub fn len(&self) -> u64 {
        self.messages.len() as u64
    }

    /// Output messages the worker makes of it.
    pub fn expected_output(&self) -> u64 {
        self.expected_events + self.expected_dead_letters
    }

    pub fn mean_body_bytes(&self) -> f64 {
        let total: usize = self.messages.iter().map(|m| m.body.len()).sum();
        total as f64 / self.messages.len().max(1) as f64
    }

    pub fn with_hint(&self) -> usize {
        self.messages.iter().filter(|m| m.vendor.is_some()).count()
    }
}

fn parse(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("fixture is JSON")
}

/// Rewrites the field the vendor's stable id depends on: Deel `resource.id` (each
/// element's, for an array), Authenticate `id`, Entuitive the user's email.
fn make_distinct(body: &mut Value, vendor: &str, i: usize) {
    match vendor {
        "deel" => {
            // `data.resource`, or the older top-level `resource`.
            let resource = if body["data"]["resource"].is_null() {
                &mut body["resource"]
            } else {
                &mut body["data"]["resource"]
            };
            match resource {
                Value::Array(items) => {
                    for (k, item) in items.iter_mut().enumerate() {
                        set_id(item, "id", i * 16 + k);
                    }
                }
                item => set_id(item, "id", i * 16),
            }
        }
        "authenticate" => set_id(body, "id", i),
        _ => {
            let email = Value::from(format!("user-{i}@example.com"));
            if let Some(data) = body.get_mut("data").and_then(Value::as_object_mut) {
                for key in ["email", "user_email"] {
                    if data.contains_key(key) {
                        data.insert(key.into(), email.clone());
                    }
                }
            }
            if let Some(top) = body.as_object_mut()
                && top.contains_key("user_email")
            {
                top.insert("user_email".into(), email);
            }
        }
    }
}

/// Sets `object[key]` to a value unique for `n`, keeping a numeric id numeric.
fn set_id(object: &mut Value, key: &str, n: usize) {
    let Some(object) = object.as_object_mut() else {
        return;
    };
    let id = match object.get(key) {
        Some(Value::Number(_)) => Value::from(1_000_000_000 + n as u64),
        Some(Value::String(s)) => Value::from(format!("{s}-{n}")),
        _ => Value::from(format!("bench-{n}")),
    };
    object.insert(key.into(), id);
}
