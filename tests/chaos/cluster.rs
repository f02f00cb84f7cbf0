//! A three-node cluster of private nodes: the worker lists two of them in `amqp.url`;
//! the node it is connected to goes away, then the node leading the raw queue.

use std::time::{Duration, Instant};

use lapin::types::FieldTable;
use testkit::*;

/// The node (of `nodes`) that holds the worker's consuming connection, once it is
/// listed (a node that is down can keep the listing empty for a moment).
fn consumer_node<'a>(nodes: &[&'a PrivateNode], vhost: &TestVhost) -> &'a PrivateNode {
    let mut line = String::new();
    wait_until(
        Duration::from_secs(30),
        "the consumer connection listed",
        || {
            let out = nodes[0].try_rabbitmqctl(&[
                "list_connections",
                "-p",
                &vhost.name,
                "--no-table-headers",
                "pid",
                "client_properties",
            ]);
            match String::from_utf8_lossy(&out.stdout)
                .lines()
                .find(|l| l.contains("webhook-normalizer consumer"))
            {
                Some(found) => {
                    line = found.to_owned();
                    true
                }
                None => false,
            }
        },
    );
    nodes
        .iter()
        .find(|n| line.contains(&format!("<{}.", n.name())))
        .copied()
        .unwrap_or_else(|| panic!("the consumer is on none of the nodes: {line}"))
}

/// The node (of `nodes`) leading `queue`.
fn leader<'a>(nodes: &[&'a PrivateNode], vhost: &TestVhost, queue: &str) -> &'a PrivateNode {
    let out = nodes[0].rabbitmqctl(&[
        "list_queues",
        "-p",
        &vhost.name,
        "--no-table-headers",
        "name",
        "leader",
    ]);
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    let led = listing
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{queue}\t")))
        .unwrap_or_else(|| panic!("{queue} not in {listing}"))
        .trim()
        .to_owned();
    nodes
        .iter()
        .find(|n| n.name() == led)
        .copied()
        .unwrap_or_else(|| panic!("{queue} is led by {led}, none of ours"))
}

/// Events published so far, by the worker's own count.
fn published(worker: &WorkerProcess) -> u64 {
    worker.readiness().1["events_published"]
        .as_u64()
        .unwrap_or(0)
}

/// Waits until the worker publishes again after a disruption: the time it took.
fn recovered(worker: &WorkerProcess, from: u64, started: Instant) -> Duration {
    wait_until(
        Duration::from_secs(60),
        "the worker to publish again",
        || published(worker) > from,
    );
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread")]
async fn failover_across_a_three_node_cluster_loses_nothing() {
    let watch = SharedBrokerWatch::start().await;
    let a = PrivateNode::start();
    let b = PrivateNode::start();
    let c = PrivateNode::start();
    b.join_cluster(&a);
    c.join_cluster(&a);
    let nodes = [&a, &b, &c];
    let vhost = TestVhost::on(&c, "cluster");
    let url = |n: &PrivateNode| n.url("guest", "guest", &vhost.name);
    let worker = WorkerProcess::start_with_url(
        &format!("{},{}", url(&a), url(&b)),
        &[
            ("NORMALIZER__AMQP__RECONNECT_MAX_MS", "1000"),
            ("NORMALIZER__AMQP__HEARTBEAT_SECS", "2"),
        ],
    );
    worker.wait_ready(Duration::from_secs(30));

    // The test's events queue is a quorum queue too, so it outlives any one node.
    let conn = connect(&url(&c)).await;
    let channel = conn.create_channel().await.unwrap();
    quorum_capture_queue(&channel, FieldTable::default()).await;
    let mut webhooks = webhook_mix(20_000, "cluster");
    publish_raw(&channel, &webhooks).await;
    let _ = conn.close(200, "published".into()).await;

    // 1. The node the worker consumes through goes away.
    wait_for_progress(&worker, 300);
    let first = consumer_node(&nodes, &vhost);
    let before = published(&worker);
    let started = Instant::now();
    first.stop_app();
    let first_recovery = recovered(&worker, before, started);
    let others: Vec<&PrivateNode> = nodes
        .iter()
        .copied()
        .filter(|n| n.name() != first.name())
        .collect();
    let moved_to = consumer_node(&others, &vhost);
    assert_ne!(moved_to.name(), first.name());
    first.start_app();

    // 2. The node leading the raw queue goes away, while a second batch flows (the
    // first may be done by now).
    let more = webhook_mix(10_000, "cluster-2");
    let conn = connect(&url(&c)).await;
    publish_raw(&conn.create_channel().await.unwrap(), &more).await;
    let _ = conn.close(200, "published".into()).await;
    webhooks.extend(more);
    wait_for_progress(&worker, published(&worker) + 300);
    let led_by = leader(&nodes, &vhost, "normalizer.raw");
    let before = published(&worker);
    let started = Instant::now();
    led_by.stop_app();
    let up = nodes
        .iter()
        .copied()
        .find(|n| n.name() != led_by.name())
        .unwrap();
    let second_recovery = recovered(&worker, before, started);
    let conn = connect(&url(up)).await;
    let channel = conn.create_channel().await.unwrap();
    let accounting = account(&channel, &webhooks, Duration::from_secs(30)).await;
    led_by.start_app();
    let row = accounting.row(
        "3-node cluster: the worker's node stopped, then the raw queue's leader",
        &format!(
            "{:.1} s, {:.1} s",
            first_recovery.as_secs_f64(),
            second_recovery.as_secs_f64()
        ),
    );
    eprintln!("CHAOS-ROW {row}");
    assert_eq!(accounting.lost, 0, "{accounting}");
    assert_eq!(accounting.unexpected, 0, "{accounting}");
    assert!(worker.peak_rss_kib() < 300 * 1024);
    watch.assert_untouched().await;
}
