//! Order: within one worker, canonical events come out in the order their raw messages
//! were consumed; across replicas, order holds with single-active-consumer, and per key
//! with the partitioning recipe of `docs/ordering.md`.

use std::collections::BTreeMap;
use std::time::Duration;

use lapin::options::{ExchangeBindOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use serde_json::Value;

use crate::support::*;

/// `n` updates of one Deel contract, each with its own status `s00000`, `s00001`, ...
fn updates(contract: &str, n: usize, tag: &str) -> Vec<RawWebhook> {
    let template = fixture_json("deel/contract.status.updated.json");
    (0..n)
        .map(|i| {
            let mut body = template.clone();
            body["data"]["resource"]["id"] = contract.into();
            body["data"]["resource"]["status"] = format!("s{i:05}").into();
            RawWebhook::new(
                serde_json::to_vec(&body).unwrap(),
                Some("deel"),
                format!("{tag}-{contract}-{i}"),
            )
        })
        .collect()
}

/// The `data.status` of a canonical event.
fn status(d: &lapin::message::Delivery) -> String {
    let event: Value = serde_json::from_slice(&d.data).unwrap();
    event["data"]["status"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// 2,000 updates of one Deel contract, queued before the worker starts (so it takes them
/// 256 at a time): their events come out in the order the raw messages were consumed, so
/// a consumer that keeps the last status per contract ends with the right one.
#[tokio::test(flavor = "multi_thread")]
async fn events_come_out_in_the_order_their_raw_messages_were_consumed() {
    const UPDATES: usize = 2000;
    let vhost = TestVhost::new("order");
    declare_topology(&vhost);
    let (_conn, channel) = setup(&vhost).await;
    publish_raw(&channel, &updates("c-1", UPDATES, "order")).await;

    let mut worker = WorkerProcess::start(&vhost, &[]);
    let events = read_messages(&channel, "test.events", UPDATES, Duration::from_secs(60)).await;
    assert_alive(&mut worker, "while publishing");
    let statuses: Vec<String> = events.iter().map(status).collect();
    if let Some(i) = (0..UPDATES).find(|&i| statuses[i] != format!("s{i:05}")) {
        panic!(
            "event {i} is out of order: status {:?}, expected \"s{i:05}\" (events {}..{}: {:?})",
            statuses[i],
            i.saturating_sub(2),
            (i + 3).min(UPDATES),
            &statuses[i.saturating_sub(2)..(i + 3).min(UPDATES)]
        );
    }
}

/// With `input.single_active_consumer`, the raw queue is declared single-active-consumer:
/// of two worker replicas one consumes, the other stands by, and order holds across
/// both; when the active one is killed, the standby takes over where it stopped.
#[tokio::test(flavor = "multi_thread")]
async fn replicas_with_single_active_consumer_keep_order_across_a_fail_over() {
    const UPDATES: usize = 600;
    let vhost = TestVhost::new("sac");
    let sac = [("NORMALIZER__INPUT__SINGLE_ACTIVE_CONSUMER", "true")];
    let first = WorkerProcess::start(&vhost, &sac);
    first.wait_ready(Duration::from_secs(20));
    let second = WorkerProcess::start(&vhost, &sac);
    second.wait_ready(Duration::from_secs(20));
    assert!(
        vhost.queue_arguments()["normalizer.raw"].contains(r#"{"x-single-active-consumer",true}"#),
        "{:?}",
        vhost.queue_arguments()
    );
    let (_conn, channel) = setup(&vhost).await;
    let webhooks = updates("c-1", UPDATES, "sac");
    publish_raw(&channel, &webhooks[..UPDATES / 2]).await;
    let mut events = read_messages(
        &channel,
        "test.events",
        UPDATES / 2,
        Duration::from_secs(60),
    )
    .await;
    let consumed = |w: &WorkerProcess| w.readiness().1["consumed"].as_u64().unwrap_or(0);
    assert_eq!(
        (consumed(&first), consumed(&second)),
        ((UPDATES / 2) as u64, 0),
        "only the first replica consumes"
    );
    first.signal("KILL");
    publish_raw(&channel, &webhooks[UPDATES / 2..]).await;
    // What the killed replica had published but not yet acknowledged is redelivered to
    // the standby, first: the same events again (same ids), which consumers deduplicate.
    wait_until(Duration::from_secs(60), "the standby to finish", || {
        second.readiness().1["acked"].as_u64() >= Some((UPDATES / 2) as u64)
            && second.readiness().1["in_flight"].as_u64() == Some(0)
    });
    events.extend(read_until_quiet(&channel, "test.events", Duration::from_secs(2)).await);
    let mut ids = std::collections::HashSet::new();
    let firsts: Vec<String> = events
        .iter()
        .filter(|e| ids.insert(message_id(e)))
        .map(status)
        .collect();
    let want: Vec<String> = (0..UPDATES).map(|i| format!("s{i:05}")).collect();
    assert_eq!(firsts, want, "in order, once duplicates are dropped");
    let again = events.len() - firsts.len();
    assert!(
        again as u64 <= consumed(&second) - (UPDATES / 2) as u64,
        "only redeliveries come twice: {again}"
    );
}

/// The per-key recipe of `docs/ordering.md`, as written there: gateways set `x-order-key`;
/// a consistent-hash exchange bound to `webhooks.raw` spreads raw messages over partition
/// exchanges by that header; each partition has its own worker (its own `input.exchange`
/// and single-active-consumer `input.queue`). Eight contracts' updates, interleaved, come
/// out in order per contract, and both partitions do work; messages without the header
/// are routed too (all to one partition). Runs on a private node, with
/// the consistent-hash exchange plugin enabled.
#[tokio::test(flavor = "multi_thread")]
async fn per_key_order_across_partitions_with_a_consistent_hash_exchange() {
    const CONTRACTS: usize = 8;
    const UPDATES: usize = 60;
    let node = PrivateNode::start_with("", &["rabbitmq_consistent_hash_exchange"]);
    let url = node.url("guest", "guest", "%2f");
    let conn = Connection::connect(&url, ConnectionProperties::default())
        .await
        .expect("test connection");
    let channel = conn.create_channel().await.unwrap();

    // The recipe's broker side, declared once by ops.
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let mut by_key = FieldTable::default();
    by_key.insert(
        "hash-header".into(),
        AMQPValue::LongString("x-order-key".into()),
    );
    for (name, kind, args) in [
        ("webhooks.raw", ExchangeKind::Topic, FieldTable::default()),
        (
            "webhooks.by-order-key",
            ExchangeKind::Custom("x-consistent-hash".into()),
            by_key,
        ),
        (
            "webhooks.raw.p0",
            ExchangeKind::Topic,
            FieldTable::default(),
        ),
        (
            "webhooks.raw.p1",
            ExchangeKind::Topic,
            FieldTable::default(),
        ),
    ] {
        channel
            .exchange_declare(name.into(), kind, durable, args)
            .await
            .unwrap();
    }
    let bind = |destination: &'static str, source: &'static str, key: &'static str| {
        channel.exchange_bind(
            destination.into(),
            source.into(),
            key.into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        )
    };
    bind("webhooks.by-order-key", "webhooks.raw", "#")
        .await
        .unwrap();
    // Equal weights.
    bind("webhooks.raw.p0", "webhooks.by-order-key", "1")
        .await
        .unwrap();
    bind("webhooks.raw.p1", "webhooks.by-order-key", "1")
        .await
        .unwrap();

    // One worker per partition.
    let mut workers = Vec::new();
    for p in ["p0", "p1"] {
        let exchange = format!("webhooks.raw.{p}");
        let queue = format!("normalizer.raw.{p}");
        let worker = WorkerProcess::start_with_url(
            &url,
            &[
                ("NORMALIZER__INPUT__EXCHANGE", exchange.as_str()),
                ("NORMALIZER__INPUT__QUEUE", queue.as_str()),
                ("NORMALIZER__INPUT__SINGLE_ACTIVE_CONSUMER", "true"),
            ],
        );
        worker.wait_ready(Duration::from_secs(30));
        workers.push(worker);
    }
    capture_queue(&channel, "test.events", "events.canonical", "#").await;

    // Interleaved: update i of every contract, then update i + 1 of every contract, ...
    let per_contract: Vec<Vec<RawWebhook>> = (0..CONTRACTS)
        .map(|c| updates(&format!("c-{c}"), UPDATES, "hash"))
        .collect();
    for i in 0..UPDATES {
        for (c, webhooks) in per_contract.iter().enumerate() {
            let w = &webhooks[i];
            let mut headers = raw_properties(w).headers().clone().unwrap_or_default();
            headers.insert(
                "x-order-key".into(),
                AMQPValue::LongString(format!("c-{c}").into()),
            );
            let properties: BasicProperties = raw_properties(w).with_headers(headers);
            publish_raw_with(&channel, "webhooks.raw", "gateway", &w.body, properties).await;
        }
    }

    // Without the header: routed all the same (hashed as a missing key), all to one
    // partition, so in order among themselves too.
    const UNKEYED: usize = 5;
    for w in &updates("c-unkeyed", UNKEYED, "unkeyed") {
        publish_raw_with(
            &channel,
            "webhooks.raw",
            "gateway",
            &w.body,
            raw_properties(w),
        )
        .await;
    }

    let events = read_messages(
        &channel,
        "test.events",
        CONTRACTS * UPDATES + UNKEYED,
        Duration::from_secs(60),
    )
    .await;
    let mut per_subject: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for d in &events {
        per_subject
            .entry(header(d, "cloudEvents_subject").unwrap_or_default())
            .or_default()
            .push(status(d));
    }
    assert_eq!(per_subject.len(), CONTRACTS + 1);
    for (subject, statuses) in &per_subject {
        let n = if subject == "contract/c-unkeyed" {
            UNKEYED
        } else {
            UPDATES
        };
        let want: Vec<String> = (0..n).map(|i| format!("s{i:05}")).collect();
        assert_eq!(statuses, &want, "{subject} out of order");
    }
    let consumed: Vec<u64> = workers
        .iter()
        .map(|w| w.readiness().1["consumed"].as_u64().unwrap_or(0))
        .collect();
    assert!(
        consumed.iter().all(|n| *n > 0)
            && consumed.iter().sum::<u64>() == (CONTRACTS * UPDATES + UNKEYED) as u64,
        "both partitions work: {consumed:?}"
    );
}
