//! The `unrouted` commands' walk of the unrouted queue ([`super::walk`]): each kept event
//! read as an [`UnroutedEvent`], and replayed to the canonical exchange as it was first
//! published.

use chrono::{DateTime, Utc};
use lapin::BasicProperties;
use lapin::types::FieldTable;

use super::walk::{Action, Progress, Step, Walk, WalkError, WalkSummary, walk_queue};
use crate::config::Settings;
use crate::unrouted::{ROUTING_KEY_HEADER, UnroutedEvent};

/// Reads every event in the unrouted queue when it starts, in order, and leaves the queue
/// as it was except for those `decide` replays: published to `output.exchange` with their
/// own routing key, body and properties, at most `per_second` a second, confirmed, then
/// taken off the queue. One that still nobody is bound for comes back through the
/// alternate exchange, to the queue's tail, as it was.
pub async fn walk_unrouted(
    settings: &Settings,
    per_second: Option<f64>,
    progress: &mut dyn FnMut(Progress),
    mut decide: impl FnMut(&UnroutedEvent) -> Action,
) -> Result<WalkSummary, WalkError> {
    let walk = Walk {
        command: "unrouted",
        queue: &settings.output.unrouted_queue,
        routing_key_header: ROUTING_KEY_HEADER,
        per_second,
    };
    walk_queue(settings, walk, progress, |delivery, routing_key| {
        let p = &delivery.properties;
        let event = UnroutedEvent {
            event_type: routing_key.to_owned(),
            id: p.message_id().as_ref().map(|m| m.to_string()),
            time: p
                .timestamp()
                .and_then(|t| i64::try_from(t).ok())
                .and_then(|t| DateTime::<Utc>::from_timestamp(t, 0)),
            size: delivery.data.len(),
        };
        match decide(&event) {
            Action::Keep => Step::Keep,
            Action::Drop => Step::Drop,
            Action::Replay => Step::Send {
                exchange: settings.output.exchange.clone(),
                routing_key: event.event_type,
                properties: Box::new(as_published(p)),
            },
        }
    })
    .await
}

/// An event's properties as the worker published it: without the walk's header and the
/// broker's delivery count.
fn as_published(kept: &BasicProperties) -> BasicProperties {
    let Some(table) = kept.headers() else {
        return kept.clone();
    };
    let mut headers = FieldTable::default();
    for (k, v) in table.inner() {
        if !matches!(k.as_str(), ROUTING_KEY_HEADER | "x-delivery-count") {
            headers.insert(k.clone(), v.clone());
        }
    }
    kept.clone().with_headers(headers)
}
