//! A copy the worker kept (on the unrouted queue, in the history): when it was kept, and
//! the event as the worker first published it.

use chrono::{DateTime, Utc};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};

use crate::amqp::headers::{LeftOut, rebuilt};
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
    let headers = (!headers.inner().is_empty()).then_some(headers);
    let left_out = LeftOut {
        expiration: true,
        ..LeftOut::default()
    };
    rebuilt(kept, headers, left_out)
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
