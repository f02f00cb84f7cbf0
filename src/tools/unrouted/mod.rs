//! The `unrouted` commands' walk of the unrouted queue ([`crate::tools::walk`]): each kept event
//! read as an [`UnroutedEvent`], and replayed to the canonical exchange as it was first
//! published.

pub mod stored;

use std::time::Duration;

use chrono::{DateTime, Utc};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};

use crate::config::{AmqpSettings, OutputSettings};
use crate::contract::headers;
use crate::tools::unrouted::stored::UnroutedEvent;
use crate::tools::walk::{Action, Progress, Step, Walk, WalkError, WalkSummary, walk_queue};

/// Reads every event in the unrouted queue when it starts, in order, and leaves the queue
/// as it was except for those `decide` replays: published to `output.exchange` with their
/// own routing key, body and properties, at most `per_second` a second, confirmed, then
/// taken off the queue. One that still nobody is bound for comes back through the
/// alternate exchange, to the queue's tail, as it was.
pub async fn walk_unrouted(
    amqp: &AmqpSettings,
    output: &OutputSettings,
    per_second: Option<f64>,
    progress: &mut dyn FnMut(Progress),
    mut decide: impl FnMut(&UnroutedEvent) -> Action,
) -> Result<WalkSummary, WalkError> {
    let replay_to = [output.exchange.as_str()];
    let walk = Walk {
        replay_to: &replay_to,
        command: "unrouted",
        queue: &output.unrouted_queue,
        routing_key_header: headers::UNROUTED_ROUTING_KEY,
        per_second,
        ttl: Some(Duration::from_secs(output.unrouted_max_age_secs)),
    };
    walk_queue(amqp, walk, progress, |delivery, routing_key| {
        let p = &delivery.properties;
        let event = UnroutedEvent {
            event_type: routing_key.to_owned(),
            id: p.message_id().as_ref().map(|m| m.to_string()),
            time: p
                .timestamp()
                .and_then(|t| i64::try_from(t).ok())
                .and_then(|t| DateTime::<Utc>::from_timestamp(t, 0)),
            kept_at: kept_at(p),
            size: delivery.data.len(),
        };
        match decide(&event) {
            Action::Keep => Step::Keep,
            Action::Drop => Step::Drop,
            Action::Replay => Step::Send {
                exchange: output.exchange.clone(),
                routing_key: event.event_type,
                properties: Box::new(as_published(p)),
            },
        }
    })
    .await
}

/// An event's properties as the worker published it: without what keeping it added (its
/// routing key, when it was kept, the time it had left) and the broker's delivery count.
fn as_published(kept: &BasicProperties) -> BasicProperties {
    let mut headers = FieldTable::default();
    if let Some(table) = kept.headers() {
        for (k, v) in table.inner() {
            if !matches!(
                k.as_str(),
                headers::UNROUTED_ROUTING_KEY | headers::KEPT_AT | "x-delivery-count"
            ) {
                headers.insert(k.clone(), v.clone());
            }
        }
    }
    let mut published = BasicProperties::default();
    let p = kept;
    if let Some(v) = p.content_type() {
        published = published.with_content_type(v.clone());
    }
    if let Some(v) = p.content_encoding() {
        published = published.with_content_encoding(v.clone());
    }
    if !headers.inner().is_empty() {
        published = published.with_headers(headers);
    }
    if let Some(v) = p.delivery_mode() {
        published = published.with_delivery_mode(*v);
    }
    if let Some(v) = p.priority() {
        published = published.with_priority(*v);
    }
    if let Some(v) = p.correlation_id() {
        published = published.with_correlation_id(v.clone());
    }
    if let Some(v) = p.reply_to() {
        published = published.with_reply_to(v.clone());
    }
    if let Some(v) = p.message_id() {
        published = published.with_message_id(v.clone());
    }
    if let Some(v) = p.timestamp() {
        published = published.with_timestamp(*v);
    }
    if let Some(v) = p.kind() {
        published = published.with_type(v.clone());
    }
    if let Some(v) = p.user_id() {
        published = published.with_user_id(v.clone());
    }
    if let Some(v) = p.app_id() {
        published = published.with_app_id(v.clone());
    }
    if let Some(v) = p.cluster_id() {
        published = published.with_cluster_id(v.clone());
    }
    published
}

/// When a kept event was kept: its `x-normalizer-kept-at` header, when it has one.
fn kept_at(properties: &BasicProperties) -> Option<DateTime<Utc>> {
    match properties
        .headers()
        .as_ref()?
        .inner()
        .get(headers::KEPT_AT)?
    {
        AMQPValue::LongString(t) => {
            DateTime::parse_from_rfc3339(&String::from_utf8_lossy(t.as_bytes()))
                .ok()
                .map(|t| t.with_timezone(&Utc))
        }
        _ => None,
    }
}
