//! The broker side of a run: a vhost of its own (the test kit's) with the worker's
//! topology plus the capture queue, preloading raw messages as a gateway publishes them,
//! counting what was stored. Also the per-key partitioning of `docs/ordering.md`
//! (a consistent-hash exchange feeding one input exchange and queue per partition), for
//! a node with the consistent-hash exchange plugin.

use std::process::Command;

use lapin::options::{
    ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, ExchangeKind};
use testkit::{TestVhost, connect, publish_confirmed, queue_depth, received_at};

use super::mix::Mix;
use super::{EVENTS_QUEUE, raw_id};
use webhook_normalizer::config::Settings;

/// Gives `vhost` the worker's topology (`webhook-normalizer topology`, so every side of
/// a comparison routes through the same exchanges and queues) and the capture queue
/// bound `#` to the canonical exchange.
pub async fn with_topology(vhost: TestVhost, settings: &Settings) -> TestVhost {
    with_topology_and(vhost, settings, &[]).await
}

/// [`with_topology`], declared with these settings on top (`NORMALIZER__…`).
pub async fn with_topology_and(
    vhost: TestVhost,
    settings: &Settings,
    env: &[(&str, &str)],
) -> TestVhost {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    declare_topology(&vhost, &env);
    capture(&vhost, settings).await;
    vhost
}

/// Runs `webhook-normalizer topology` against `vhost` with the settings `env` on top.
fn declare_topology(vhost: &TestVhost, env: &[(String, String)]) {
    let topology = Command::new(super::worker_binary())
        .arg("topology")
        .env("NORMALIZER__AMQP__URL", vhost.url())
        .env("NORMALIZER__LOG__FILTER", "warn")
        .env_remove("RUST_LOG")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("webhook-normalizer topology runs");
    assert!(
        topology.status.success(),
        "webhook-normalizer topology failed: {}",
        String::from_utf8_lossy(&topology.stderr)
    );
}

/// The capture queue, bound `#` to the canonical exchange.
async fn capture(vhost: &TestVhost, settings: &Settings) {
    let connection = vhost.connect().await;
    let channel = connection.create_channel().await.expect("channel");
    declare_quorum_queue(&channel, EVENTS_QUEUE).await;
    channel
        .queue_bind(
            EVENTS_QUEUE.into(),
            settings.output.exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind the capture queue");
    let _ = connection.close(200, "declared".into()).await;
}

async fn declare_quorum_queue(channel: &Channel, name: &str) {
    let mut args = FieldTable::default();
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
        .expect("declare queue");
}

/// What a run left in the output queues: (events, dead letters). Events are the
/// capture queue and the unrouted queue (empty, as the capture queue binds `#`).
pub async fn stored(url: &str, settings: &Settings) -> (u64, u64) {
    let connection = connect(url).await;
    let channel = connection.create_channel().await.expect("channel");
    let events = u64::from(queue_depth(&channel, EVENTS_QUEUE).await)
        + u64::from(queue_depth(&channel, &settings.output.unrouted_queue).await);
    let dead_letters = u64::from(queue_depth(&channel, &settings.dead_letter.queue).await);
    let _ = connection.close(200, "counted".into()).await;
    (events, dead_letters)
}

/// The properties a gateway gives raw message `seq`: its id, JSON, persistent, the
/// receive time as header and AMQP timestamp, and the vendor hint when it has one.
pub fn raw_properties(seq: u64, vendor: Option<&str>) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        "x-received-at".into(),
        AMQPValue::LongString(testkit::RECEIVED_AT.into()),
    );
    if let Some(vendor) = vendor {
        headers.insert("x-vendor".into(), AMQPValue::LongString(vendor.into()));
    }
    BasicProperties::default()
        .with_message_id(raw_id(seq).as_str().into())
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_timestamp(received_at().timestamp() as u64)
        .with_headers(headers)
}

/// The routing key gateways publish raw messages with.
pub const RAW_ROUTING_KEY: &str = "gateway";

/// Publishes the mix as a gateway would: to the raw exchange, persistent, `mandatory`,
/// confirmed (in windows, to bound what is outstanding); then checks the queue depth.
pub async fn preload(url: &str, settings: &Settings, mix: &Mix) {
    let connection = connect(url).await;
    let channel = connection.create_channel().await.expect("channel");
    let messages = (0u64..)
        .zip(&mix.messages)
        .map(|(seq, m)| (m.body.as_slice(), raw_properties(seq, m.vendor)));
    publish_confirmed(
        &channel,
        &settings.input.exchange,
        RAW_ROUTING_KEY,
        messages,
    )
    .await;
    let depth = queue_depth(&channel, &settings.input.queue).await;
    assert_eq!(u64::from(depth), mix.len(), "preloaded queue depth");
    let _ = connection.close(200, "preloaded".into()).await;
}

/// The header the partitioning hashes (`docs/ordering.md`: gateways set it).
pub const ORDER_KEY_HEADER: &str = "x-order-key";
/// The consistent-hash exchange bound `#` to the raw exchange.
pub const BY_ORDER_KEY: &str = "webhooks.by-order-key";

/// Partition `i`'s input exchange and queue: `webhooks.raw.p{i}`, `normalizer.raw.p{i}`.
pub fn partition(i: usize) -> (String, String) {
    (format!("webhooks.raw.p{i}"), format!("normalizer.raw.p{i}"))
}

/// The settings of partition `i`'s worker, as `docs/ordering.md` runs it: its own input
/// exchange and single-active-consumer queue.
pub fn partition_env(i: usize) -> Vec<(String, String)> {
    let (exchange, queue) = partition(i);
    vec![
        ("NORMALIZER__INPUT__EXCHANGE".into(), exchange),
        ("NORMALIZER__INPUT__QUEUE".into(), queue),
        (
            "NORMALIZER__INPUT__SINGLE_ACTIVE_CONSUMER".into(),
            "true".into(),
        ),
    ]
}

/// The recipe of `docs/ordering.md` in `vhost` (on a node with the consistent-hash
/// exchange plugin): each partition's topology as its worker declares it
/// (`webhook-normalizer topology` with [`partition_env`]; output and dead-letter
/// exchanges shared), the raw exchange `input.exchange` (topic), the consistent-hash
/// exchange [`BY_ORDER_KEY`] (`hash-header` = [`ORDER_KEY_HEADER`]) bound to it with
/// `#`, each partition exchange bound to that with weight `"1"`; and the capture queue.
pub async fn with_partitions(
    vhost: TestVhost,
    settings: &Settings,
    partitions: usize,
) -> TestVhost {
    for i in 0..partitions {
        declare_topology(&vhost, &partition_env(i));
    }
    let connection = vhost.connect().await;
    let channel = connection.create_channel().await.expect("channel");
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    let mut by_key = FieldTable::default();
    by_key.insert(
        "hash-header".into(),
        AMQPValue::LongString(ORDER_KEY_HEADER.into()),
    );
    for (name, kind, args) in [
        (
            settings.input.exchange.as_str(),
            ExchangeKind::Topic,
            FieldTable::default(),
        ),
        (
            BY_ORDER_KEY,
            ExchangeKind::Custom("x-consistent-hash".into()),
            by_key,
        ),
    ] {
        channel
            .exchange_declare(name.into(), kind, durable, args)
            .await
            .unwrap_or_else(|e| panic!("declare exchange {name} (is the plugin enabled?): {e}"));
    }
    let bind = |destination: String, source: &str, key: &str| {
        channel.exchange_bind(
            destination.as_str().into(),
            source.into(),
            key.into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        )
    };
    bind(BY_ORDER_KEY.into(), &settings.input.exchange, "#")
        .await
        .expect("bind the consistent-hash exchange to the raw exchange");
    for i in 0..partitions {
        // Equal weights, equal shares.
        bind(partition(i).0, BY_ORDER_KEY, "1")
            .await
            .expect("bind a partition exchange");
    }
    let _ = connection.close(200, "declared".into()).await;
    capture(&vhost, settings).await;
    vhost
}

/// Like [`preload`], through the partitioning: each raw message published to the raw
/// exchange with its own [`ORDER_KEY_HEADER`] (its raw id, as for distinct entities), so
/// it lands in one partition's queue. Returns each partition's queue depth (their sum is
/// checked).
pub async fn preload_partitioned(
    url: &str,
    settings: &Settings,
    mix: &Mix,
    partitions: usize,
) -> Vec<u64> {
    let connection = connect(url).await;
    let channel = connection.create_channel().await.expect("channel");
    let messages = (0u64..).zip(&mix.messages).map(|(seq, m)| {
        let properties = raw_properties(seq, m.vendor);
        let mut headers = properties.headers().clone().unwrap_or_default();
        headers.insert(
            ORDER_KEY_HEADER.into(),
            AMQPValue::LongString(raw_id(seq).into()),
        );
        (m.body.as_slice(), properties.with_headers(headers))
    });
    publish_confirmed(
        &channel,
        &settings.input.exchange,
        RAW_ROUTING_KEY,
        messages,
    )
    .await;
    let mut depths = Vec::with_capacity(partitions);
    for i in 0..partitions {
        depths.push(u64::from(queue_depth(&channel, &partition(i).1).await));
    }
    assert_eq!(
        depths.iter().sum::<u64>(),
        mix.len(),
        "preloaded partition queue depths {depths:?}"
    );
    let _ = connection.close(200, "preloaded".into()).await;
    depths
}
