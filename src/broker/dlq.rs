//! Walking the dead-letter queue without changing it, for the `dlq` commands.
//!
//! Looking at a message in a queue means taking it. Taking it and giving it back
//! (`basic.reject`/`nack` with requeue) raises its delivery count, and a quorum queue
//! with a delivery limit (RabbitMQ 4.x: 20 by default) eventually drops it. So a walk
//! never requeues:
//!
//! 1. It takes a lock: an exclusive queue `{dead-letter queue}.lock`, which the broker
//!    lets one connection hold and removes when that connection ends, however it ends.
//!    A second walk fails at once with a clear message.
//! 2. It counts the messages present (`queue.declare`, passive) and takes exactly that
//!    many, in queue order, so it always ends and never meets its own output.
//! 3. For each: it publishes a copy to the tail of the same queue (through the default
//!    exchange, so no other queue bound to the dead-letter exchange gets one), with the
//!    same body and properties, the routing key kept in
//!    [`ROUTING_KEY_HEADER`](crate::dead_letters::ROUTING_KEY_HEADER) and no
//!    `x-delivery-count`; waits for the broker to confirm it; and only then acks the
//!    original.
//!
//! 4. Or, for a dead letter the caller picks, it publishes it to where the raw message
//!    was first published instead (`dlq replay`), confirmed, and then acks it: it
//!    leaves the queue. The worker may dead-letter it again; that copy arrives at the
//!    tail, after the messages this walk counted, so a walk never meets its own output.
//!
//! After a whole walk the queue holds the same messages in the same order (dead letters
//! that arrived meanwhile may sit among them). Killed at any point, nothing is lost: the
//! message in hand is at worst both copied and, unacked, given back to the queue.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};

use super::connection::connect;
use super::error::{BrokerError, Role};
use crate::config::Settings;
use crate::dead_letters::{DeadLetterInfo, Death, Delivered, ROUTING_KEY_HEADER};

/// What to do with one dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Leave it in the queue (a copy goes to the tail).
    Keep,
    /// Publish it to where the raw message was first published, as it was then (the
    /// `x-normalizer-*`, `x-original-exchange`/`-routing-key` and `x-death` headers
    /// stripped, `x-replay-count` added), and take it off the queue.
    Replay,
    /// Take it off the queue for good (`dlq purge`).
    Drop,
}

/// What a walk saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalkSummary {
    /// Messages in the queue when the walk started.
    pub at_start: u64,
    /// Messages it read.
    pub read: u64,
    /// Of those, replayed (the rest were put back).
    pub replayed: u64,
    /// Picked for replay but returned as unroutable by their original exchange: kept.
    pub unroutable: u64,
    /// Taken off the queue for good.
    pub dropped: u64,
}

/// Why a walk could not run or stopped.
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    #[error(
        "another dlq command is working on {queue} (it holds the exclusive queue {lock}); try again when it has finished"
    )]
    Locked { queue: String, lock: String },
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("not confirmed ({0}); the dead letter stays in the queue")]
    NotConfirmed(String),
}

/// A publish the broker did not take.
enum PublishFailed {
    Broker(BrokerError),
    Nacked,
}

impl PublishFailed {
    fn context(self, what: &str) -> WalkError {
        match self {
            PublishFailed::Broker(BrokerError::Amqp { source, .. }) => {
                WalkError::Broker(BrokerError::Amqp {
                    what: what.to_owned(),
                    source,
                })
            }
            PublishFailed::Broker(e) => WalkError::Broker(e),
            PublishFailed::Nacked => WalkError::NotConfirmed(format!("{what}: nacked")),
        }
    }
}

/// Publishes one message, mandatory, and waits for its confirm: `true` when stored,
/// `false` when returned as unroutable.
async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<bool, PublishFailed> {
    let confirm = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            body,
            properties,
        )
        .await
        .map_err(|e| PublishFailed::Broker(BrokerError::amqp("publishing")(e)))?
        .await
        .map_err(|e| PublishFailed::Broker(BrokerError::amqp("publishing")(e)))?;
    if !confirm.is_ack() {
        return Err(PublishFailed::Nacked);
    }
    Ok(confirm.take_message().is_none())
}

/// Reads every dead letter present when it starts, in order, handing each to `visit`,
/// and leaves the queue as it was (see the module's documentation).
pub async fn walk_dead_letters(
    settings: &Settings,
    mut visit: impl FnMut(&DeadLetterInfo, &[u8]),
) -> Result<WalkSummary, WalkError> {
    walk_and_replay(settings, None, |info, body| {
        visit(info, body);
        Action::Keep
    })
    .await
}

/// [`walk_dead_letters`], replaying those `decide` picks, at most `per_second` a second.
pub async fn walk_and_replay(
    settings: &Settings,
    per_second: Option<f64>,
    mut decide: impl FnMut(&DeadLetterInfo, &[u8]) -> Action,
) -> Result<WalkSummary, WalkError> {
    walk_with_properties(settings, per_second, |info, body, _| decide(info, body)).await
}

/// [`walk_and_replay`], also handing over each dead letter's routing key and properties
/// as JSON (for `dlq export`).
pub async fn walk_with_properties(
    settings: &Settings,
    per_second: Option<f64>,
    mut decide: impl FnMut(&DeadLetterInfo, &[u8], &serde_json::Value) -> Action,
) -> Result<WalkSummary, WalkError> {
    let queue = settings.dead_letter.queue.clone();
    let connection = connect(&settings.amqp, Role::Admin).await?;
    let channel = connection
        .create_channel()
        .await
        .map_err(BrokerError::amqp("opening a channel"))?;
    let lock = format!("{queue}.lock");
    channel
        .queue_declare(
            lock.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| match e.kind() {
            lapin::ErrorKind::ProtocolError(amqp) if amqp.kind().get_id() == 405 => {
                WalkError::Locked {
                    queue: queue.clone(),
                    lock: lock.clone(),
                }
            }
            _ => BrokerError::amqp(format!("taking the lock {lock}"))(e).into(),
        })?;
    let pace = per_second
        .filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(1.0 / r));
    let walk = read_through(&channel, &queue, pace, &mut decide).await;
    let _ = connection.close(200, "dlq walk done".into()).await;
    walk
}

async fn read_through(
    channel: &Channel,
    queue: &str,
    pace: Option<Duration>,
    decide: &mut impl FnMut(&DeadLetterInfo, &[u8], &serde_json::Value) -> Action,
) -> Result<WalkSummary, WalkError> {
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(BrokerError::amqp(format!("finding the queue {queue}")))?;
    let at_start = u64::from(declared.message_count());
    let mut summary = WalkSummary {
        at_start,
        read: 0,
        replayed: 0,
        unroutable: 0,
        dropped: 0,
    };
    let mut next_replay = tokio::time::Instant::now();
    if at_start == 0 {
        return Ok(summary);
    }
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(BrokerError::amqp("turning on publisher confirms"))?;
    while summary.read < at_start {
        // One at a time (`basic.get`), not a consumer: a consumer's prefetch would take
        // copies from the tail past the last original, and giving those back would
        // count as a delivery.
        let got = channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
            .map_err(BrokerError::amqp(format!("reading {queue}")))?;
        let Some(got) = got else {
            break; // Another consumer took the rest.
        };
        let delivery = got.delivery;
        let delivered = delivered(&delivery);
        let info = DeadLetterInfo::read(&delivered);
        let mut action = decide(
            &info,
            &delivery.data,
            &properties_json(delivery.routing_key.as_str(), &delivery.properties),
        );
        if action == Action::Replay {
            if let Some(pace) = pace {
                tokio::time::sleep_until(next_replay).await;
                next_replay = tokio::time::Instant::now() + pace;
            }
            let replayed = publish_confirmed(
                channel,
                &info.original_exchange,
                &info.original_routing_key,
                &delivery.data,
                replay_properties(&delivery.properties),
            )
            .await
            .map_err(|e| e.context(&format!("replaying to {}", info.original_exchange)))?;
            if !replayed {
                // Nowhere to go (no such exchange binding): it stays a dead letter.
                summary.unroutable += 1;
                action = Action::Keep;
            }
        }
        if action == Action::Drop {
            summary.dropped += 1;
        }
        if action == Action::Keep {
            let kept = publish_confirmed(
                channel,
                "",
                queue,
                &delivery.data,
                copy_properties(&delivery.properties, delivery.routing_key.as_str()),
            )
            .await
            .map_err(|e| e.context(&format!("putting a copy back on {queue}")))?;
            if !kept {
                return Err(WalkError::NotConfirmed(format!(
                    "putting a copy back on {queue}: returned as unroutable"
                )));
            }
        }
        delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .map_err(BrokerError::amqp(format!(
                "acknowledging a dead letter on {queue}"
            )))?;
        summary.read += 1;
        if action == Action::Replay {
            summary.replayed += 1;
        }
    }
    Ok(summary)
}

/// The copy's properties: the original's, with the routing key kept and the broker's
/// delivery count left out (the copy is a new message; its count starts again).
fn copy_properties(original: &BasicProperties, routing_key: &str) -> BasicProperties {
    let mut headers = FieldTable::default();
    if let Some(table) = original.headers() {
        for (k, v) in table.inner() {
            if k.as_str() != "x-delivery-count" {
                headers.insert(k.clone(), v.clone());
            }
        }
    }
    if !headers.contains_key(ROUTING_KEY_HEADER) {
        headers.insert(
            ROUTING_KEY_HEADER.into(),
            AMQPValue::LongString(routing_key.into()),
        );
    }
    original.clone().with_headers(headers)
}

/// A replay's properties: the raw message's as the gateway sent them, as far as the
/// dead letter kept them: without the worker's and the broker's dead-letter headers,
/// with `x-replay-count` one more than before.
fn replay_properties(dead_letter: &BasicProperties) -> BasicProperties {
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
    dead_letter.clone().with_headers(headers)
}

/// How many times a message was replayed from the dead-letter queue.
pub const REPLAY_COUNT: &str = "x-replay-count";

/// A delivery as plain values for [`DeadLetterInfo::read`].
fn delivered(d: &lapin::message::Delivery) -> Delivered {
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
    }
}

/// A dead letter's routing key and properties as JSON: strings as text (byte strings
/// that are not UTF-8 as `{"base64": …}`), numbers as numbers, tables as objects.
fn properties_json(routing_key: &str, p: &BasicProperties) -> serde_json::Value {
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

fn text(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}
