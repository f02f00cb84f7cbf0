//! Watching what flows (`webhook-normalizer tail`): a temporary exclusive queue of its
//! own, bound to the tap exchange, where the worker puts a copy of each message once it
//! is stored, read without acknowledgements. It takes nothing from anyone else's queue,
//! and, bound nowhere an event is routed, never changes where one goes: an event no team
//! binds is unroutable whether `tail` runs or not.
//!
//! With the event history on, events are read from its stream instead ([`tail_history`]):
//! from a time in the past or from now, with no queue of its own at all.

use std::future::Future;

use futures_lite::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;

use super::dlq::delivered;
use crate::amqp::connection::connect;
use crate::amqp::error::{BrokerError, Role};
use crate::amqp::json::properties_json;
use crate::config::AmqpSettings;
use crate::tools::dlq::stored::StoredDeadLetter;
use crate::tools::history::{HistoryReader, Stored};
use crate::tools::unrouted::stored::TypePattern;

/// What to watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TailSource {
    /// Canonical events whose type matches one of these binding patterns.
    Events(Vec<String>),
    /// Everything dead-lettered from now on.
    DeadLetters,
    /// Events nobody is bound for, from now on.
    Unrouted,
}

/// One message seen.
pub enum Tailed<'a> {
    Event {
        routing_key: &'a str,
        body: &'a [u8],
    },
    DeadLetter {
        info: Box<StoredDeadLetter>,
        body: &'a [u8],
        /// Routing key and properties, as `dlq export` writes them.
        properties: serde_json::Value,
    },
}

/// Binds a queue of its own, calls `ready` once it is bound, then hands each message to
/// `each` until `each` says stop (`false`) or `stop` completes. Returns how many it saw.
/// `tap_exchange` is `output.tap_exchange`.
pub async fn tail(
    amqp: &AmqpSettings,
    tap_exchange: &str,
    source: &TailSource,
    ready: impl FnOnce(),
    mut each: impl FnMut(Tailed<'_>) -> bool,
    stop: impl Future<Output = ()>,
) -> Result<u64, BrokerError> {
    let connection = connect(amqp, Role::Consumer).await?;
    let channel = connection
        .create_channel()
        .await
        .map_err(BrokerError::amqp("opening a channel"))?;
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(BrokerError::amqp("declaring a queue of its own"))?;
    let name = queue.name().clone();
    let exchange = tap_exchange;
    for key in tap_bindings(source) {
        channel
            .queue_bind(
                name.clone(),
                exchange.into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(BrokerError::amqp(format!("binding to {exchange}")))?;
    }
    let mut consumer = channel
        .basic_consume(
            name.clone(),
            "tail".into(),
            BasicConsumeOptions {
                // Its own queue: what it reads is gone when it ends anyway.
                no_ack: true,
                exclusive: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(BrokerError::amqp("consuming its queue"))?;
    ready();
    let mut seen = 0u64;
    let watching = async {
        while let Some(delivery) = consumer.next().await {
            let delivery = delivery.map_err(BrokerError::amqp("reading its queue"))?;
            seen += 1;
            let (_, routing_key) = tapped_route(delivery.routing_key.as_str());
            let item = match source {
                TailSource::DeadLetters => {
                    let mut seen = delivered(&delivery);
                    seen.routing_key = routing_key.to_owned();
                    Tailed::DeadLetter {
                        info: Box::new(StoredDeadLetter::read(&seen)),
                        body: &delivery.data,
                        properties: properties_json(routing_key, &delivery.properties),
                    }
                }
                _ => Tailed::Event {
                    routing_key,
                    body: &delivery.data,
                },
            };
            if !each(item) {
                break;
            }
        }
        Ok::<(), BrokerError>(())
    };
    let watched = tokio::select! {
        watched = watching => watched,
        () = stop => Ok(()),
    };
    let _ = connection.close(200, "tail done".into()).await;
    watched.map(|()| seen)
}

/// [`tail`] of events (`source` is not [`TailSource::DeadLetters`], which the history
/// does not hold) from the history stream: from `since`, or from now, filtered here (a
/// stream read over AMQP 0-9-1 has no server-side filter). Declares and binds nothing.
pub async fn tail_history(
    amqp: &AmqpSettings,
    stream: &str,
    source: &TailSource,
    since: Option<chrono::DateTime<chrono::Utc>>,
    ready: impl FnOnce(),
    mut each: impl FnMut(Tailed<'_>) -> bool,
    stop: impl Future<Output = ()>,
) -> Result<u64, BrokerError> {
    let patterns: Vec<TypePattern> = match source {
        TailSource::Events(patterns) => patterns
            .iter()
            .filter_map(|p| TypePattern::parse(p).ok())
            .collect(),
        TailSource::Unrouted | TailSource::DeadLetters => Vec::new(),
    };
    let wanted = |event_type: &str, stored: Stored| match source {
        TailSource::Events(_) => patterns.iter().any(|p| p.matches(event_type)),
        TailSource::Unrouted => stored == Stored::Unrouted,
        TailSource::DeadLetters => false,
    };
    let mut reader = HistoryReader::follow(amqp, stream, since).await?;
    ready();
    let mut seen = 0u64;
    let watching = async {
        while let Some((event, delivery)) = reader.next().await? {
            if !wanted(&event.event_type, event.stored) {
                continue;
            }
            seen += 1;
            let item = Tailed::Event {
                routing_key: &event.event_type,
                body: &delivery.data,
            };
            if !each(item) {
                break;
            }
        }
        Ok::<(), BrokerError>(())
    };
    let watched = tokio::select! {
        watched = watching => watched,
        () = stop => Ok(()),
    };
    reader.close().await;
    watched.map(|()| seen)
}

/// The tap's binding keys for what `source` watches.
fn tap_bindings(source: &TailSource) -> Vec<String> {
    match source {
        TailSource::Events(patterns) => patterns
            .iter()
            .flat_map(|p| [format!("canonical.{p}"), format!("unrouted.{p}")])
            .collect(),
        TailSource::DeadLetters => vec!["dead-letter.#".to_owned()],
        TailSource::Unrouted => vec!["unrouted.#".to_owned()],
    }
}

/// A tap copy's routing key split into where it was stored (`canonical`, `unrouted`,
/// `dead-letter`) and its own routing key.
fn tapped_route(routing_key: &str) -> (&str, &str) {
    ["canonical.", "unrouted.", "dead-letter."]
        .iter()
        .find_map(|prefix| {
            routing_key
                .strip_prefix(prefix)
                .map(|rest| (&prefix[..prefix.len() - 1], rest))
        })
        .unwrap_or(("", routing_key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watching_events_binds_both_places_an_event_is_stored() {
        assert_eq!(
            tap_bindings(&TailSource::Events(vec![
                "deel.contract.*".into(),
                "#".into()
            ])),
            [
                "canonical.deel.contract.*",
                "unrouted.deel.contract.*",
                "canonical.#",
                "unrouted.#"
            ]
        );
        assert_eq!(tap_bindings(&TailSource::Unrouted), ["unrouted.#"]);
        assert_eq!(tap_bindings(&TailSource::DeadLetters), ["dead-letter.#"]);
    }

    #[test]
    fn a_tap_routing_key_gives_back_the_stored_one() {
        assert_eq!(
            tapped_route("canonical.deel.contract.created"),
            ("canonical", "deel.contract.created")
        );
        assert_eq!(
            tapped_route("dead-letter.unknown.invalid_json"),
            ("dead-letter", "unknown.invalid_json")
        );
        assert_eq!(tapped_route("other"), ("", "other"));
    }
}
