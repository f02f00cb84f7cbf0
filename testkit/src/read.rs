//! Reading what the worker published: capture queues, consumers, queue depths, and the
//! check that every raw webhook is accounted for.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection};

use crate::broker::TestVhost;
use crate::webhooks::{RawWebhook, expectations};

/// Declares a queue bound to `exchange` with `key`, for a test to read from.
pub async fn capture_queue(channel: &Channel, name: &str, exchange: &str, key: &str) {
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare capture queue");
    channel
        .queue_bind(
            name.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind capture queue");
}

/// Ready messages in a queue (not counting unacknowledged ones).
pub async fn queue_depth(channel: &Channel, name: &str) -> u32 {
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive declare")
        .message_count()
}

/// A consumer that takes messages off `queue` as they arrive (no acks to send).
pub async fn take_from(channel: &Channel, queue: &str) -> lapin::Consumer {
    channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume")
}

/// Reads `count` messages from `queue`, failing after `within`.
pub async fn read_messages(
    channel: &Channel,
    queue: &str,
    count: usize,
    within: Duration,
) -> Vec<Delivery> {
    let mut consumer = take_from(channel, queue).await;
    let mut out = Vec::with_capacity(count);
    let deadline = tokio::time::Instant::now() + within;
    while out.len() < count {
        match tokio::time::timeout_at(deadline, consumer.next()).await {
            Ok(Some(Ok(d))) => out.push(d),
            Ok(other) => panic!("consumer of {queue} ended: {other:?}"),
            Err(_) => panic!(
                "only {} of {count} messages arrived on {queue} within {within:?}",
                out.len()
            ),
        }
    }
    out
}

/// Reads a stream from its first offset until `count` messages arrived, failing after
/// `within`; acknowledged as read (a stream consumer needs a prefetch and acks, and
/// takes nothing away).
pub async fn read_stream(
    channel: &Channel,
    stream: &str,
    count: usize,
    within: Duration,
) -> Vec<Delivery> {
    channel
        .basic_qos(100, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut args = FieldTable::default();
    args.insert(
        "x-stream-offset".into(),
        AMQPValue::LongString("first".into()),
    );
    let mut consumer = channel
        .basic_consume(
            stream.into(),
            "".into(),
            BasicConsumeOptions::default(),
            args,
        )
        .await
        .expect("consume the stream");
    let mut out = Vec::with_capacity(count);
    let deadline = tokio::time::Instant::now() + within;
    while out.len() < count {
        match tokio::time::timeout_at(deadline, consumer.next()).await {
            Ok(Some(Ok(d))) => {
                d.acker.ack(BasicAckOptions::default()).await.expect("ack");
                out.push(d);
            }
            Ok(other) => panic!("consumer of {stream} ended: {other:?}"),
            Err(_) => panic!(
                "only {} of {count} messages read from {stream} within {within:?}",
                out.len()
            ),
        }
    }
    out
}

/// Reads whatever arrives on `queue` until it has been quiet for `quiet`.
pub async fn read_until_quiet(channel: &Channel, queue: &str, quiet: Duration) -> Vec<Delivery> {
    let mut consumer = take_from(channel, queue).await;
    let mut out = Vec::new();
    while let Ok(Some(Ok(d))) = tokio::time::timeout(quiet, consumer.next()).await {
        out.push(d);
    }
    out
}

/// A header's text value.
pub fn header(d: &Delivery, name: &str) -> Option<String> {
    match d.properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// Reads every event and dead letter that arrives until both queues are quiet, and
/// checks each input is accounted for: all its ids among the events, or a dead letter
/// with its routing key. Duplicates are allowed (at-least-once), losses are not.
///
/// It waits as long as something arrives, and gives up after 60 s with nothing new: a
/// worker slowed by a loaded machine is not a loss.
pub async fn assert_nothing_lost(channel: &Channel, webhooks: &[RawWebhook]) {
    let want = expectations(webhooks);
    let patience = Duration::from_secs(60);
    let mut deadline = std::time::Instant::now() + patience;
    let mut event_ids = BTreeSet::new();
    let mut dead = BTreeMap::new();
    while std::time::Instant::now() < deadline
        && (!want.event_ids.is_subset(&event_ids) || dead.len() < want.dead_letters.len())
    {
        let seen = (event_ids.len(), dead.len());
        for d in read_until_quiet(channel, "test.events", Duration::from_millis(300)).await {
            event_ids.insert(d.properties.message_id().as_ref().unwrap().to_string());
        }
        for d in read_until_quiet(
            channel,
            "normalizer.dead-letter",
            Duration::from_millis(100),
        )
        .await
        {
            dead.insert(
                d.properties.message_id().as_ref().unwrap().to_string(),
                d.routing_key.to_string(),
            );
        }
        if (event_ids.len(), dead.len()) != seen {
            deadline = std::time::Instant::now() + patience;
        }
    }
    let missing: Vec<_> = want.event_ids.difference(&event_ids).take(5).collect();
    assert!(
        missing.is_empty(),
        "{} event ids missing, e.g. {missing:?}",
        want.event_ids.difference(&event_ids).count()
    );
    assert_eq!(dead, want.dead_letters, "dead letters");
    let unexpected: Vec<_> = event_ids.difference(&want.event_ids).take(5).collect();
    assert!(unexpected.is_empty(), "unexpected events {unexpected:?}");
    assert_eq!(queue_depth(channel, "normalizer.raw").await, 0);
}

/// A connection to the vhost and a channel on it, with `test.events` bound `#` to the
/// canonical exchange.
pub async fn setup(vhost: &TestVhost) -> (Connection, Channel) {
    let conn = vhost.connect().await;
    let channel = conn.create_channel().await.unwrap();
    capture_queue(&channel, "test.events", "events.canonical", "#").await;
    (conn, channel)
}

/// A delivery's `message_id`, or empty.
pub fn message_id(d: &Delivery) -> String {
    d.properties
        .message_id()
        .as_ref()
        .map(|id| id.to_string())
        .unwrap_or_default()
}
