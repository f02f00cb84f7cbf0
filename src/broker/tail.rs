//! Watching what flows (`webhook-normalizer tail`): a temporary exclusive queue of its
//! own, bound to the canonical exchange (or the dead-letter or unrouted exchange), read
//! without acknowledgements. It takes nothing from anyone else's queue.

use std::future::Future;

use futures_lite::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;

use super::connection::connect;
use super::dlq::{delivered, properties_json};
use super::error::{BrokerError, Role};
use crate::config::Settings;
use crate::dead_letters::DeadLetterInfo;

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
        info: Box<DeadLetterInfo>,
        body: &'a [u8],
        /// Routing key and properties, as `dlq export` writes them.
        properties: serde_json::Value,
    },
}

/// Binds a queue of its own, calls `ready` once it is bound, then hands each message to
/// `each` until `each` says stop (`false`) or `stop` completes. Returns how many it saw.
pub async fn tail(
    settings: &Settings,
    source: &TailSource,
    ready: impl FnOnce(),
    mut each: impl FnMut(Tailed<'_>) -> bool,
    stop: impl Future<Output = ()>,
) -> Result<u64, BrokerError> {
    let connection = connect(&settings.amqp, Role::Consumer).await?;
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
    let bindings: Vec<(&str, &str)> = match source {
        TailSource::Events(patterns) => patterns
            .iter()
            .map(|p| (settings.output.exchange.as_str(), p.as_str()))
            .collect(),
        TailSource::DeadLetters => vec![(settings.dead_letter.exchange.as_str(), "#")],
        TailSource::Unrouted => vec![(settings.output.unrouted_exchange.as_str(), "")],
    };
    for (exchange, key) in bindings {
        channel
            .queue_bind(
                name.clone(),
                exchange.into(),
                key.into(),
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
            let item = match source {
                TailSource::DeadLetters => Tailed::DeadLetter {
                    info: Box::new(DeadLetterInfo::read(&delivered(&delivery))),
                    body: &delivery.data,
                    properties: properties_json(
                        delivery.routing_key.as_str(),
                        &delivery.properties,
                    ),
                },
                _ => Tailed::Event {
                    routing_key: delivery.routing_key.as_str(),
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
