//! Raw bodies over `limits.max_body_bytes` are never held by the worker: dropped as
//! their frames go by, left to the broker's dead-lettering with their bytes, and shown as
//! too large by the `dlq` commands.

use std::time::Duration;

use lapin::options::{BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};

use crate::support::*;

const MIB: usize = 1024 * 1024;
const BODIES: usize = 12;
const BODY: usize = 100 * MIB;

/// Body `i`: 100 MiB, different for each, cheap to check.
fn body(i: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(BODY);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ i as u64;
    while out.len() < BODY {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(BODY);
    out
}

/// Twelve raw messages of 100 MiB, on a private node (RabbitMQ 3.10 takes up to 128 MiB;
/// the worker's limit is 1 MiB): the worker's peak RSS stays under 150 MiB, each message
/// ends in the dead-letter queue with its bytes (the broker's dead letter of a reject),
/// and `dlq stats` shows them as `body_too_large`.
#[tokio::test(flavor = "multi_thread")]
async fn oversized_bodies_are_dead_lettered_without_the_worker_holding_them() {
    let node = PrivateNode::start();
    let vhost = TestVhost::on(&node, "oversized");
    let worker = WorkerProcess::start(&vhost, &[]);
    worker.wait_ready(Duration::from_secs(30));
    let conn = Connection::connect(&vhost.url(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for i in 0..BODIES {
        let mut headers = FieldTable::default();
        headers.insert("x-vendor".into(), AMQPValue::LongString("deel".into()));
        let properties = BasicProperties::default()
            .with_message_id(format!("big-{i}").into())
            .with_delivery_mode(2)
            .with_headers(headers);
        let confirm = channel
            .basic_publish(
                "webhooks.raw".into(),
                "deel".into(),
                BasicPublishOptions::default(),
                &body(i),
                properties,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack(), "big-{i} stored in the raw queue");
    }
    wait_until(Duration::from_secs(120), "every body dead-lettered", || {
        let (_, doc) = worker.readiness();
        doc["consumed"].as_u64() == Some(BODIES as u64)
            && doc["in_flight"].as_u64() == Some(0)
            && vhost.queue_messages("normalizer.dead-letter") == Some(BODIES as u64)
    });
    let peak_mib = worker.peak_rss_kib() / 1024;
    eprintln!("worker peak RSS: {peak_mib} MiB for {BODIES} raw bodies of 100 MiB");
    assert!(peak_mib < 150, "peak RSS {peak_mib} MiB");
    let (_, doc) = worker.readiness();
    assert_eq!(doc["dead_lettered"], BODIES, "{doc}");
    let (_, metrics) = worker.get("/metrics");
    assert!(
        metrics.contains(&format!(
            "normalizer_dead_lettered_total{{vendor=\"unknown\",kind=\"body_too_large\"}} {BODIES}"
        )),
        "{metrics}"
    );

    let stats = run_command(&vhost, &["dlq", "stats"]);
    assert!(
        stats.status.success(),
        "{}",
        String::from_utf8_lossy(&stats.stderr)
    );
    let stats = String::from_utf8_lossy(&stats.stdout);
    let line = stats
        .lines()
        .find(|l| l.contains("body_too_large"))
        .unwrap_or_else(|| panic!("{stats}"));
    assert!(line.starts_with("unknown\tbody_too_large\t12\t"), "{stats}");

    // Each with its bytes, taken one at a time.
    let mut seen = Vec::new();
    while let Some(got) = channel
        .basic_get(
            "normalizer.dead-letter".into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
    {
        let d = got.delivery;
        let id = message_id(&d);
        let i: usize = id.strip_prefix("big-").unwrap().parse().unwrap();
        assert!(d.data == body(i), "{id}: the bytes as published");
        seen.push(i);
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..BODIES).collect::<Vec<_>>());
    let _ = conn.close(200, "checked".into()).await;
}
