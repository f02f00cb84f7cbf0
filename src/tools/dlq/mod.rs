//! The `dlq` commands' walk of the dead-letter queue ([`crate::tools::walk`]): each dead letter
//! read as a [`StoredDeadLetter`], and replayed to where the raw message was first
//! published, as it was then.

pub mod stored;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};

use crate::amqp::json::{properties_json, text};
use crate::canonical::Vendor;
use crate::config::{AmqpSettings, DlqSettings};
use crate::contract::headers::{DEAD_LETTER_ROUTING_KEY, REPLAY_COUNT};
use crate::tools::dlq::stored::{Death, Delivered, StoredDeadLetter};
use crate::tools::walk::{Action, Progress, Step, Walk, WalkError, WalkSummary, walk_queue};

/// Reads every dead letter present when it starts, in order, and leaves the queue as it
/// was except for those `decide` replays (to where the raw message was first published,
/// if that is a configured input ([`DlqSettings::replay_to`]) that exists,
/// the `x-normalizer-*`, `x-original-exchange`/`-routing-key` and `x-death` headers
/// stripped, `x-replay-count` added, `x-vendor` set to `as_vendor` when given; at most
/// `per_second` a second) or drops. `decide`
/// also gets each dead letter's routing key and properties as JSON (for `dlq export`).
pub async fn walk_dead_letters(
    amqp: &AmqpSettings,
    dlq: &DlqSettings,
    per_second: Option<f64>,
    as_vendor: Option<Vendor>,
    progress: &mut dyn FnMut(Progress),
    mut decide: impl FnMut(&StoredDeadLetter, &[u8], &serde_json::Value) -> Action,
) -> Result<WalkSummary, WalkError> {
    let replay_to: Vec<&str> = dlq.replay_to.iter().map(String::as_str).collect();
    let walk = Walk {
        command: "dlq",
        queue: &dlq.queue,
        routing_key_header: DEAD_LETTER_ROUTING_KEY,
        ttl: None,
        per_second,
        replay_to: &replay_to,
    };
    walk_queue(amqp, walk, progress, |delivery, routing_key| {
        let mut seen = delivered(delivery);
        seen.routing_key = routing_key.to_owned();
        let info = StoredDeadLetter::read_with_limit(&seen, dlq.max_body_bytes);
        let properties = properties_json(delivery.routing_key.as_str(), &delivery.properties);
        match decide(&info, &delivery.data, &properties) {
            Action::Keep => Step::Keep,
            Action::Drop => Step::Drop,
            Action::Replay => Step::Send {
                exchange: info.original_exchange,
                routing_key: info.original_routing_key,
                properties: Box::new(replay_properties(&delivery.properties, as_vendor)),
            },
        }
    })
    .await
}

/// A replay's properties: the raw message's as the gateway sent them, as far as the
/// dead letter kept them: without the worker's and the broker's dead-letter headers,
/// with `x-replay-count` one more than before, and `x-vendor` replaced by `as_vendor`
/// when given (a wrong hint corrected).
fn replay_properties(dead_letter: &BasicProperties, as_vendor: Option<Vendor>) -> BasicProperties {
    let mut headers = FieldTable::default();
    let mut replays = 0i64;
    if let Some(table) = dead_letter.headers() {
        for (k, v) in table.inner() {
            let name = k.as_str();
            if name == REPLAY_COUNT {
                replays = match v {
                    AMQPValue::LongLongInt(n) => *n,
                    AMQPValue::LongInt(n) => i64::from(*n),
                    _ => 0,
                };
                continue;
            }
            let dead_letter_header = name.starts_with("x-normalizer-")
                || name.starts_with("x-first-death-")
                || name.starts_with("x-last-death-")
                || matches!(
                    name,
                    "x-death"
                        | "x-delivery-count"
                        | "x-original-exchange"
                        | "x-original-routing-key"
                );
            if !dead_letter_header {
                headers.insert(k.clone(), v.clone());
            }
        }
    }
    headers.insert(REPLAY_COUNT.into(), AMQPValue::LongLongInt(replays + 1));
    if let Some(vendor) = as_vendor {
        headers.insert(
            "x-vendor".into(),
            AMQPValue::LongString(vendor.key().into()),
        );
    }
    dead_letter.clone().with_headers(headers)
}

/// A delivery as plain values for [`StoredDeadLetter::read`], with the routing key it was
/// delivered with (a walk's copy keeps its own in a header: the caller sets it).
pub(crate) fn delivered(d: &lapin::message::Delivery) -> Delivered {
    let table = d.properties.headers().clone().unwrap_or_default();
    let mut headers = BTreeMap::new();
    for (k, v) in table.inner() {
        if let Some(text) = text(v) {
            headers.insert(k.to_string(), text);
        }
    }
    let death = match table.inner().get("x-death") {
        Some(AMQPValue::FieldArray(deaths)) => deaths.as_slice().first().and_then(|first| {
            let AMQPValue::FieldTable(t) = first else {
                return None;
            };
            let get = |k: &str| t.inner().get(k).and_then(text);
            Some(Death {
                reason: get("reason"),
                exchange: get("exchange"),
                routing_keys: match t.inner().get("routing-keys") {
                    Some(AMQPValue::FieldArray(keys)) => {
                        keys.as_slice().iter().filter_map(text).collect()
                    }
                    _ => Vec::new(),
                },
                time: match t.inner().get("time") {
                    Some(AMQPValue::Timestamp(secs)) => i64::try_from(*secs)
                        .ok()
                        .and_then(|s| DateTime::<Utc>::from_timestamp(s, 0)),
                    _ => None,
                },
            })
        }),
        _ => None,
    };
    Delivered {
        routing_key: d.routing_key.to_string(),
        headers,
        death,
        message_id: d.properties.message_id().as_ref().map(|m| m.to_string()),
        body_len: d.data.len(),
        replays: match table.inner().get(REPLAY_COUNT) {
            Some(AMQPValue::LongLongInt(n)) => u64::try_from(*n).unwrap_or(0),
            Some(AMQPValue::LongInt(n)) => u64::try_from(*n).unwrap_or(0),
            _ => 0,
        },
    }
}
