//! The `unrouted` commands' walk of the unrouted queue ([`crate::tools::walk`]): each kept event
//! read as an [`UnroutedEvent`], and replayed to the canonical exchange as it was first
//! published.

pub mod stored;

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::{AmqpSettings, OutputSettings};
use crate::contract::headers;
use crate::tools::kept::{as_published, kept_at};
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
