//! The broker side of a run: a vhost of its own with the worker's topology plus the
//! capture queue, preloading raw messages as a gateway publishes them, counting what
//! was stored.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use super::mix::Mix;
use super::{BROKER, EVENTS_QUEUE, RECEIVED_AT, VHOST_PREFIX, raw_id};
use webhook_normalizer::config::Settings;

/// A vhost of its own for one run, deleted with everything in it when dropped (also
/// when the run panics).
pub struct Vhost {
    pub name: String,
}

impl Vhost {
    /// `wn-bench-{pid}-{n}-{label}`, with the guest user's permissions.
    pub fn create(label: &str) -> Vhost {
        static NEXT: AtomicUsize = AtomicUsize::new(1);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("{VHOST_PREFIX}{}-{n}-{label}", std::process::id());
        rabbitmqctl(&["-q", "add_vhost", &name]);
        let vhost = Vhost { name };
        rabbitmqctl(&[
            "-q",
            "set_permissions",
            "-p",
            &vhost.name,
            "guest",
            ".*",
            ".*",
            ".*",
        ]);
        vhost
    }

    /// A vhost with the worker's topology (`webhook-normalizer topology`, so every side
    /// of a comparison routes through the same exchanges and queues) and the capture
    /// queue bound `#` to the canonical exchange.
    pub async fn with_topology(label: &str, settings: &Settings) -> Vhost {
        let vhost = Vhost::create(label);
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
        let connection = connect(&vhost.url()).await;
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

    pub fn url(&self) -> String {
        format!("{BROKER}/{}", self.name)
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let deleted = Command::new("rabbitmqctl")
            .args(["-q", "delete_vhost", &self.name])
            .output();
        if !deleted.is_ok_and(|o| o.status.success()) {
            eprintln!(
                "warning: could not delete vhost {}; run `rabbitmqctl delete_vhost {}`",
                self.name, self.name
            );
        }
    }
}

pub fn rabbitmqctl(args: &[&str]) -> String {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs (is RabbitMQ installed?)");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Deletes vhosts left by benchmark processes that no longer exist (killed by a signal,
/// which skips the guards).
pub fn delete_stale_vhosts() {
    let list = rabbitmqctl(&["-q", "list_vhosts", "--no-table-headers", "name"]);
    for name in list.lines().map(str::trim) {
        let Some(pid) = name
            .strip_prefix(VHOST_PREFIX)
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            eprintln!("deleting vhost {name}, left by an interrupted run");
            drop(Vhost {
                name: name.to_owned(),
            });
        }
    }
}

pub async fn connect(url: &str) -> Connection {
    Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("connects to RabbitMQ (is it running?)")
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

/// Ready messages in a queue.
pub async fn queue_depth(channel: &Channel, name: &str) -> u64 {
    let options = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let queue = channel
        .queue_declare(name.into(), options, FieldTable::default())
        .await
        .expect("passive declare");
    u64::from(queue.message_count())
}

/// What a run left in the output queues: (events, dead letters). Events are the
/// capture queue and the unrouted queue (empty, as the capture queue binds `#`).
pub async fn stored(url: &str, settings: &Settings) -> (u64, u64) {
    let connection = connect(url).await;
    let channel = connection.create_channel().await.expect("channel");
    let events = queue_depth(&channel, EVENTS_QUEUE).await
        + queue_depth(&channel, &settings.output.unrouted_queue).await;
    let dead_letters = queue_depth(&channel, &settings.dead_letter.queue).await;
    let _ = connection.close(200, "counted".into()).await;
    (events, dead_letters)
}

/// The properties a gateway gives raw message `seq`: its id, JSON, persistent, the
/// receive time as header and AMQP timestamp, and the vendor hint when it has one.
pub fn raw_properties(seq: u64, vendor: Option<&str>) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        "x-received-at".into(),
        AMQPValue::LongString(RECEIVED_AT.into()),
    );
    if let Some(vendor) = vendor {
        headers.insert("x-vendor".into(), AMQPValue::LongString(vendor.into()));
    }
    BasicProperties::default()
        .with_message_id(raw_id(seq).as_str().into())
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_timestamp(super::mix::received_at().timestamp() as u64)
        .with_headers(headers)
}

/// The routing key gateways publish raw messages with.
pub const RAW_ROUTING_KEY: &str = "gateway";

/// Publishes the mix as a gateway would: to the raw exchange, persistent, `mandatory`,
/// confirmed (in windows, to bound what is outstanding); then checks the queue depth.
pub async fn preload(url: &str, settings: &Settings, mix: &Mix) {
    let connection = connect(url).await;
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let indexed: Vec<(u64, &super::mix::RawWebhook)> = (0u64..).zip(&mix.messages).collect();
    for window in indexed.chunks(500) {
        let mut confirms = Vec::with_capacity(window.len());
        for (seq, message) in window {
            let options = BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            };
            confirms.push(
                channel
                    .basic_publish(
                        settings.input.exchange.as_str().into(),
                        RAW_ROUTING_KEY.into(),
                        options,
                        &message.body,
                        raw_properties(*seq, message.vendor),
                    )
                    .await
                    .expect("publish"),
            );
        }
        for confirm in confirms {
            let confirmation = confirm.await.expect("confirm");
            assert!(confirmation.is_ack(), "preload publish nacked");
            assert!(
                confirmation.take_message().is_none(),
                "preload publish returned: no queue bound?"
            );
        }
    }
    let depth = queue_depth(&channel, &settings.input.queue).await;
    assert_eq!(depth, mix.len(), "preloaded queue depth");
    let _ = connection.close(200, "preloaded".into()).await;
}
