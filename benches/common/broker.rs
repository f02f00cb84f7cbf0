//! The broker side of a run: a vhost of its own (the test kit's) with the worker's
//! topology plus the capture queue, preloading raw messages as a gateway publishes them,
//! counting what was stored.

use std::process::Command;

use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};
use testkit::{TestVhost, connect, publish_confirmed, queue_depth, received_at};

use super::mix::Mix;
use super::{EVENTS_QUEUE, VHOST_PREFIX, raw_id};
use webhook_normalizer::config::Settings;

/// A vhost of its own, `wn-bench-{pid}-{n}-{label}`, with the worker's topology
/// (`webhook-normalizer topology`, so every side of a comparison routes through the same
/// exchanges and queues) and the capture queue bound `#` to the canonical exchange.
pub async fn vhost_with_topology(label: &str, settings: &Settings) -> TestVhost {
    let vhost = TestVhost::with_prefix(VHOST_PREFIX, label);
    let topology = Command::new(super::worker_binary())
        .arg("topology")
        .env("NORMALIZER__AMQP__URL", vhost.url())
        .env("NORMALIZER__LOG__FILTER", "warn")
        .env_remove("RUST_LOG")
        .output()
        .expect("webhook-normalizer topology runs");
    assert!(
        topology.status.success(),
        "webhook-normalizer topology failed: {}",
        String::from_utf8_lossy(&topology.stderr)
    );
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
    vhost
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
