//! Declaring the exchanges, queues and bindings the worker uses. Idempotent: declaring
//! what exists with the same arguments is a no-op, so every start (and every reconnect)
//! declares it all.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};

use super::connection::connect;
use super::error::{BrokerError, Role};
use crate::config::{AmqpSettings, HistorySettings, OutputSettings, Topology};
use crate::contract::DELIVERY_LIMIT_ROUTING_KEY;

/// Connects, declares the topology, and closes: `webhook-normalizer topology`.
pub async fn declare_topology(amqp: &AmqpSettings, topology: &Topology) -> Result<(), BrokerError> {
    let connection = connect(amqp, Role::Admin).await?;
    let channel = connection
        .create_channel()
        .await
        .map_err(BrokerError::amqp("opening a channel"))?;
    declare_topology_with(&channel, topology).await?;
    let _ = connection.close(200, "topology declared".into()).await;
    Ok(())
}

/// Declares the topology on an open channel ([`declare_topology_with`]), or with
/// `amqp.declare_topology` off checks that it exists ([`check_topology`]).
pub async fn prepare_topology(channel: &Channel, s: &Topology) -> Result<(), BrokerError> {
    if s.declare {
        declare_topology_with(channel, s).await
    } else {
        check_topology(channel, s).await
    }
}

/// Checks, with passive declarations (which need no configure permission), that every
/// exchange and queue exists; the first missing one ends the check with a 404 naming it.
/// Bindings cannot be checked this way.
pub async fn check_topology(channel: &Channel, s: &Topology) -> Result<(), BrokerError> {
    let passive_exchange = ExchangeDeclareOptions {
        passive: true,
        ..ExchangeDeclareOptions::default()
    };
    for exchange in [
        &s.input.exchange,
        &s.output.exchange,
        &s.output.tap_exchange,
        &s.output.unrouted_exchange,
        &s.dead_letter.exchange,
    ] {
        channel
            .exchange_declare(
                exchange.as_str().into(),
                ExchangeKind::Topic,
                passive_exchange,
                FieldTable::default(),
            )
            .await
            .map_err(BrokerError::amqp(format!(
                "checking that exchange {exchange} exists"
            )))?;
    }
    let passive_queue = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let history = s.history.enabled.then_some(&s.history.stream);
    for queue in [
        Some(&s.input.queue),
        Some(&s.output.unrouted_queue),
        Some(&s.dead_letter.queue),
        history,
    ]
    .into_iter()
    .flatten()
    {
        channel
            .queue_declare(queue.as_str().into(), passive_queue, FieldTable::default())
            .await
            .map_err(BrokerError::amqp(format!(
                "checking that queue {queue} exists"
            )))?;
    }
    Ok(())
}

/// Declares, on an open channel:
///
/// - `input.exchange` (topic) and `input.queue` (quorum) bound with `input.binding_key`;
///   the queue has `x-delivery-limit` and dead-letters, at least once, to the dead-letter
///   exchange with routing key `unknown.delivery_limit`; with
///   `input.single_active_consumer`, also `x-single-active-consumer`.
/// - `output.unrouted_queue` (quorum, bounded by `x-max-length` and `x-message-ttl`),
///   where the worker keeps events nobody is bound for; `output.unrouted_exchange`
///   (fanout) with nothing bound to it, and `output.exchange` (topic) with it as
///   `alternate-exchange`: so an event no team binds comes back to the worker
///   (`mandatory`) whatever else is bound, and the worker keeps it. Earlier versions bound
///   the unrouted queue to the alternate exchange: that binding is removed.
/// - `output.tap_exchange` (topic), where observers get a copy of what was stored.
/// - `dead_letter.exchange` (topic) and `dead_letter.queue` (quorum) bound with `#`.
/// - with `history.enabled`, `history.stream` (a stream, with its retention) bound to
///   `output.tap_exchange` with `canonical.#` and `unrouted.#`: every event once stored.
pub async fn declare_topology_with(channel: &Channel, s: &Topology) -> Result<(), BrokerError> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    let declare_exchange = |name: &str, kind: ExchangeKind, args: FieldTable| {
        channel.exchange_declare(name.into(), kind, durable, args)
    };

    declare_exchange(
        &s.dead_letter.exchange,
        ExchangeKind::Topic,
        FieldTable::default(),
    )
    .await
    .map_err(BrokerError::amqp("declaring the dead-letter exchange"))?;
    declare_quorum_queue(channel, &s.dead_letter.queue, FieldTable::default()).await?;
    bind(channel, &s.dead_letter.queue, &s.dead_letter.exchange, "#").await?;

    declare_exchange(
        &s.output.unrouted_exchange,
        ExchangeKind::Fanout,
        FieldTable::default(),
    )
    .await
    .map_err(BrokerError::amqp("declaring the unrouted exchange"))?;
    declare_quorum_queue(
        channel,
        &s.output.unrouted_queue,
        unrouted_queue_arguments(&s.output),
    )
    .await?;
    // Bound by earlier versions: with it, events no team binds would be stored there by
    // the broker, and an observer bound beside it would count as a destination.
    channel
        .queue_unbind(
            s.output.unrouted_queue.as_str().into(),
            s.output.unrouted_exchange.as_str().into(),
            "".into(),
            FieldTable::default(),
        )
        .await
        .map_err(BrokerError::amqp(format!(
            "unbinding queue {} from exchange {}",
            s.output.unrouted_queue, s.output.unrouted_exchange
        )))?;
    declare_exchange(
        &s.output.tap_exchange,
        ExchangeKind::Topic,
        FieldTable::default(),
    )
    .await
    .map_err(BrokerError::amqp("declaring the tap exchange"))?;
    if s.history.enabled {
        declare_history(channel, &s.history, &s.output.tap_exchange).await?;
    }
    let mut output_args = FieldTable::default();
    output_args.insert(
        "alternate-exchange".into(),
        AMQPValue::LongString(s.output.unrouted_exchange.as_str().into()),
    );
    declare_exchange(&s.output.exchange, ExchangeKind::Topic, output_args)
        .await
        .map_err(BrokerError::amqp("declaring the canonical exchange"))?;

    declare_exchange(
        &s.input.exchange,
        ExchangeKind::Topic,
        FieldTable::default(),
    )
    .await
    .map_err(BrokerError::amqp("declaring the raw exchange"))?;
    let mut input_args = raw_queue_arguments(s.input.delivery_limit, &s.dead_letter.exchange);
    if s.input.single_active_consumer {
        // One consumer at a time, the others standing by: order across replicas.
        input_args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    }
    declare_quorum_queue(channel, &s.input.queue, input_args).await?;
    bind(
        channel,
        &s.input.queue,
        &s.input.exchange,
        &s.input.binding_key,
    )
    .await
}

/// The tap copies' routing keys the history keeps: events delivered to a team and
/// events kept because no team was bound for them, each stored once; not dead letters.
pub const HISTORY_BINDINGS: [&str; 2] = ["canonical.#", "unrouted.#"];

/// Declares the history stream with its retention, and binds it to the tap exchange
/// (never to the canonical exchange: a binding there would count as a team bound for
/// every type, and no event would be unroutable any more).
async fn declare_history(
    channel: &Channel,
    history: &HistorySettings,
    tap_exchange: &str,
) -> Result<(), BrokerError> {
    let options = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(
            history.stream.as_str().into(),
            options,
            history_stream_arguments(history),
        )
        .await
        .map_err(BrokerError::amqp(format!(
            "declaring stream {} (a stream's arguments are fixed when it is first declared: see docs/operations.md, \"Event history\")",
            history.stream
        )))?;
    for key in HISTORY_BINDINGS {
        bind(channel, &history.stream, tap_exchange, key).await?;
    }
    Ok(())
}

/// The history stream's arguments: its type and retention.
pub fn history_stream_arguments(history: &HistorySettings) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    args.insert(
        "x-max-age".into(),
        AMQPValue::LongString(format!("{}s", history.max_age_secs).into()),
    );
    args.insert(
        "x-max-length-bytes".into(),
        AMQPValue::LongLongInt(i64::try_from(history.max_bytes).unwrap_or(i64::MAX)),
    );
    args.insert(
        "x-stream-max-segment-size-bytes".into(),
        AMQPValue::LongLongInt(i64::try_from(history.segment_bytes).unwrap_or(i64::MAX)),
    );
    args
}

/// The unrouted queue's bound: at most `output.unrouted_max_length` events, none older
/// than `output.unrouted_max_age_secs`; past either the broker drops the oldest
/// (`drop-head`, the default overflow), so publishing to the canonical exchange never
/// fails for want of a binding.
fn unrouted_queue_arguments(output: &OutputSettings) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-max-length".into(),
        AMQPValue::LongLongInt(i64::try_from(output.unrouted_max_length).unwrap_or(i64::MAX)),
    );
    args.insert(
        "x-message-ttl".into(),
        AMQPValue::LongLongInt(
            i64::try_from(output.unrouted_max_age_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
        ),
    );
    args
}

/// The arguments of the raw input queue (besides `x-queue-type: quorum`): a delivery
/// limit, and at-least-once dead-lettering to `dead_letter_exchange` with routing key
/// `unknown.delivery_limit`. Public so that benchmarks build their baseline's queue alike.
pub fn raw_queue_arguments(delivery_limit: u32, dead_letter_exchange: &str) -> FieldTable {
    let mut args = FieldTable::default();
    // RabbitMQ 3.x quorum queues have no default delivery limit (4.x: 20); set it so a
    // message that fails every time ends in the dead-letter queue instead of looping.
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(i64::from(delivery_limit)),
    );
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(dead_letter_exchange.into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(DELIVERY_LIMIT_ROUTING_KEY.into()),
    );
    // At-least-once dead-lettering (the broker keeps the message until the dead-letter
    // queue confirms it) requires reject-publish overflow.
    args.insert(
        "x-dead-letter-strategy".into(),
        AMQPValue::LongString("at-least-once".into()),
    );
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    args
}

async fn declare_quorum_queue(
    channel: &Channel,
    name: &str,
    mut args: FieldTable,
) -> Result<(), BrokerError> {
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    let options = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(name.into(), options, args)
        .await
        .map(|_| ())
        .map_err(BrokerError::amqp(format!("declaring queue {name}")))
}

async fn bind(
    channel: &Channel,
    queue: &str,
    exchange: &str,
    key: &str,
) -> Result<(), BrokerError> {
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(BrokerError::amqp(format!(
            "binding queue {queue} to exchange {exchange}"
        )))
}
