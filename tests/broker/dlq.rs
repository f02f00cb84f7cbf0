//! `webhook-normalizer dlq stats|peek`: counts that match what was dead-lettered, and
//! looking that leaves every dead letter as it was (same messages, order, content, no
//! delivery count).

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use futures_lite::StreamExt;
use lapin::BasicProperties;
use lapin::options::{BasicAckOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldArray, FieldTable};

use crate::support::*;

const DLQ: &str = "normalizer.dead-letter";

fn dlq_command(vhost: &TestVhost, args: &[&str]) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_webhook-normalizer"))
        .arg("dlq")
        .args(args)
        .env("NORMALIZER__AMQP__URL", vhost.url())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    output_within(child, Duration::from_secs(60))
}

/// A dead letter as RabbitMQ makes one when a raw message passes the raw queue's
/// delivery limit: routing key `unknown.delivery_limit`, only `x-death`.
fn broker_dead_letter() -> BasicProperties {
    let mut death = FieldTable::default();
    death.insert(
        "reason".into(),
        AMQPValue::LongString("delivery_limit".into()),
    );
    death.insert(
        "queue".into(),
        AMQPValue::LongString("normalizer.raw".into()),
    );
    death.insert(
        "exchange".into(),
        AMQPValue::LongString("webhooks.raw".into()),
    );
    death.insert(
        "routing-keys".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongString(
            "gateway".into(),
        )])),
    );
    death.insert("time".into(), AMQPValue::Timestamp(1_767_225_600));
    death.insert("count".into(), AMQPValue::LongLongInt(1));
    let mut headers = FieldTable::default();
    headers.insert(
        "x-death".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])),
    );
    headers.insert(
        "x-first-death-reason".into(),
        AMQPValue::LongString("delivery_limit".into()),
    );
    BasicProperties::default()
        .with_message_id("broker-dl".into())
        .with_delivery_mode(2)
        .with_headers(headers)
}

/// 100 raw webhooks (5 not normalizable) and one broker-made dead letter: `stats`
/// counts each group as the library and the broker made them; `peek` lists all six, the
/// same twice; afterwards the queue holds the same six in the same order, bodies as
/// they were, none with a delivery count.
#[tokio::test(flavor = "multi_thread")]
async fn stats_and_peek_count_every_dead_letter_and_leave_each_as_it_was() {
    let vhost = TestVhost::new("dlq");
    let worker = WorkerProcess::start(&vhost, &[]);
    worker.wait_ready(Duration::from_secs(20));
    let (_conn, channel) = setup(&vhost).await;
    let webhooks = webhook_mix(100, "dlq");
    publish_raw(&channel, &webhooks).await;
    wait_until(Duration::from_secs(30), "every raw message settled", || {
        worker.readiness().1["acked"].as_u64() == Some(webhooks.len() as u64)
    });
    drop(worker);
    let failing: Vec<&RawWebhook> = webhooks.iter().filter(|w| expected(w).is_err()).collect();
    assert!(!failing.is_empty());
    let broker_body = b"{\"the\":\"raw body\"}".to_vec();
    publish_raw_with(
        &channel,
        "webhooks.dead-letter",
        "unknown.delivery_limit",
        &broker_body,
        broker_dead_letter(),
    )
    .await;
    let depth = queue_depth(&channel, DLQ).await;
    assert_eq!(depth as usize, failing.len() + 1);
    let mut in_order: Vec<String> = failing.iter().map(|w| w.message_id.clone()).collect();
    in_order.push("broker-dl".into());

    let stats = dlq_command(&vhost, &["stats"]);
    assert!(
        stats.status.success(),
        "{}",
        String::from_utf8_lossy(&stats.stderr)
    );
    let text = String::from_utf8_lossy(&stats.stdout).into_owned();
    let mut counted: std::collections::BTreeMap<String, u64> = Default::default();
    for line in text.lines().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        counted.insert(format!("{}.{}", cols[0], cols[1]), cols[2].parse().unwrap());
    }
    let mut want: std::collections::BTreeMap<String, u64> = Default::default();
    for w in &failing {
        let e = expected(w).unwrap_err();
        *want
            .entry(format!(
                "{}.{}",
                e.vendor().map_or("unknown", |v| v.key()),
                e.kind()
            ))
            .or_default() += 1;
    }
    want.insert("unknown.delivery_limit".into(), 1);
    assert_eq!(counted, want, "{text}");

    let first = dlq_command(&vhost, &["peek"]);
    let second = dlq_command(&vhost, &["peek"]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert_eq!(
        first.stdout, second.stdout,
        "the same list, in the same order"
    );
    let lines: Vec<String> = String::from_utf8_lossy(&first.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len() as u32, depth);
    assert!(
        lines.last().unwrap().contains("\tbroker-dl\t"),
        "{lines:#?}"
    );
    let limited = dlq_command(
        &vhost,
        &["peek", "--limit", "1", "--kind", "delivery_limit"],
    );
    assert_eq!(String::from_utf8_lossy(&limited.stdout).lines().count(), 1);
    assert_eq!(
        queue_depth(&channel, DLQ).await,
        depth,
        "nothing taken away"
    );

    // Drain: the same messages in the same order, bodies intact, no delivery count.
    let mut consumer = take_from(&channel, DLQ).await;
    let mut ids = Vec::new();
    for _ in 0..depth {
        let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let count = d
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-delivery-count").cloned());
        assert_eq!(count, None, "a delivery count on {}", message_id(&d));
        if message_id(&d) == "broker-dl" {
            assert_eq!(d.data, broker_body);
        }
        ids.push(message_id(&d));
        d.acker.ack(BasicAckOptions::default()).await.unwrap();
    }
    let listed: Vec<String> = lines
        .iter()
        .map(|l| l.split('\t').nth(5).unwrap().to_owned())
        .collect();
    assert_eq!(
        listed, in_order,
        "peek lists them in the order they were dead-lettered"
    );
    assert_eq!(
        ids, in_order,
        "and the queue still holds them in that order"
    );
}

/// Two walks at once cannot interleave: the second fails at once, saying why.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_walk_is_refused_while_one_runs() {
    let vhost = TestVhost::new("dlqlock");
    declare_topology(&vhost);
    let conn = vhost.connect().await;
    let channel = conn.create_channel().await.unwrap();
    // What a running walk holds.
    channel
        .queue_declare(
            format!("{DLQ}.lock").as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let out = dlq_command(&vhost, &["stats"]);
    assert_eq!(out.status.code(), Some(75));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another dlq command is working on normalizer.dead-letter"),
        "{err}"
    );
    drop(channel);
    let _ = conn.close(200, "done".into()).await;
    let out = dlq_command(&vhost, &["stats"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
