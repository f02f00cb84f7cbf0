//! A copy the worker kept (on the unrouted queue, in the history): when it was kept, and
//! the event as the worker first published it.

use chrono::{DateTime, Utc};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};

use crate::contract::headers;

/// An event's properties as the worker published it: without what keeping it added (its
/// routing key, when it was kept, the time it had left) and what the broker added (a
/// quorum queue's delivery count, a stream's offset).
pub fn as_published(kept: &BasicProperties) -> BasicProperties {
    let mut headers = FieldTable::default();
    if let Some(table) = kept.headers() {
        for (k, v) in table.inner() {
            if !matches!(
                k.as_str(),
                headers::UNROUTED_ROUTING_KEY
                    | headers::KEPT_AT
                    | "x-delivery-count"
                    | "x-stream-offset"
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
pub fn kept_at(properties: &BasicProperties) -> Option<DateTime<Utc>> {
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
