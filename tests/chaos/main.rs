//! Tests that disturb the whole broker (alarms), each on a RabbitMQ node of its own
//! ([`PrivateNode`]): the shared broker's publishers never block. Each also watches the
//! shared broker ([`SharedBrokerWatch`]): its publishers must never be blocked and its
//! broker-wide settings must be as they were.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use testkit::*;

mod cluster;
mod scenarios;

/// A memory alarm on a private node, cleared when dropped: the watermark goes back to
/// what it was, in the same form (relative, or absolute in bytes).
struct MemoryAlarm<'a> {
    node: &'a PrivateNode,
    restore_to: Vec<String>,
}

impl MemoryAlarm<'_> {
    fn raise(node: &PrivateNode) -> MemoryAlarm<'_> {
        let current = node.eval("vm_memory_monitor:get_vm_memory_high_watermark().");
        // `0.4`, or `{absolute,2000000000}`.
        let restore_to = match current
            .strip_prefix("{absolute,")
            .and_then(|b| b.strip_suffix('}'))
        {
            Some(bytes) => vec!["absolute".to_owned(), bytes.to_owned()],
            None => vec![current],
        };
        let alarm = MemoryAlarm { node, restore_to };
        node.rabbitmqctl(&["set_vm_memory_high_watermark", "0.0001"]);
        wait_until(Duration::from_secs(20), "the memory alarm", || {
            alarm_active(node)
        });
        alarm
    }
}

impl Drop for MemoryAlarm<'_> {
    fn drop(&mut self) {
        let restore: Vec<&str> = self.restore_to.iter().map(String::as_str).collect();
        self.node
            .rabbitmqctl(&[&["set_vm_memory_high_watermark"], &restore[..]].concat());
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while alarm_active(self.node) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn alarm_active(node: &PrivateNode) -> bool {
    node.eval("rabbit_alarm:get_alarms().") != "[]"
}

/// During a memory alarm the broker blocks the worker's publishing connection. The
/// worker holds its in-flight messages (no requeue, so no delivery attempts burnt, even
/// though the confirm timeout passes several times), reports `blocked`, and finishes
/// everything once the alarm clears.
#[tokio::test(flavor = "multi_thread")]
async fn a_memory_alarm_is_waited_out_without_redeliveries() {
    let watch = SharedBrokerWatch::start().await;
    let node = PrivateNode::start();
    let vhost = TestVhost::on(&node, "alarm");
    declare_topology(&vhost);
    let (_conn, channel) = setup(&vhost).await;
    let webhooks = webhook_mix(300, "alarm");
    publish_raw(&channel, &webhooks).await;

    let worker;
    {
        let _alarm = MemoryAlarm::raise(&node);
        worker = WorkerProcess::start(&vhost, &[("NORMALIZER__AMQP__CONFIRM_TIMEOUT_SECS", "1")]);
        wait_until(
            Duration::from_secs(20),
            "the worker to see the block",
            || worker.readiness().1["blocked"] == true,
        );
        // Several confirm timeouts pass while blocked.
        std::thread::sleep(Duration::from_secs(4));
        let (status, doc) = worker.readiness();
        // Not ready, and it says why.
        assert_eq!(status, 503, "{doc}");
        assert_eq!(doc["state"], "blocked", "{doc}");
        let reason = doc["reason"].as_str().unwrap_or_default();
        assert!(
            reason.starts_with("blocked by a broker alarm (low on memory)"),
            "{doc}"
        );
        assert_eq!(doc["acked"], 0, "{doc}");
        assert_eq!(doc["requeued"], 0, "{doc}");
        assert!(doc["consumed"].as_u64().unwrap() > 0, "{doc}");
    }
    assert_nothing_lost(&channel, &webhooks).await;
    let (status, doc) = worker.readiness();
    assert_eq!((status, &doc["state"]), (200, &"consuming".into()), "{doc}");
    assert_eq!(doc["requeued"], 0, "{doc}");
    assert_eq!(doc["blocked"], false, "{doc}");
    assert_eq!(doc["acked"], 300, "{doc}");
    watch.assert_untouched().await;
}

/// SIGTERM while deliveries are held by an alarm: the worker waits to drain them (up to
/// its deadline); a second signal exits at once with 130, and nothing is lost: the held
/// deliveries go back to the queue for the next worker.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_signal_exits_at_once_without_loss() {
    let watch = SharedBrokerWatch::start().await;
    let node = PrivateNode::start();
    let vhost = TestVhost::on(&node, "signal2");
    declare_topology(&vhost);
    let (_conn, channel) = setup(&vhost).await;
    let webhooks = webhook_mix(100, "signal2");
    publish_raw(&channel, &webhooks).await;
    {
        let _alarm = MemoryAlarm::raise(&node);
        let mut worker = WorkerProcess::start(&vhost, &[]);
        wait_until(
            Duration::from_secs(20),
            "the worker to hold deliveries it cannot publish",
            || {
                let (_, doc) = worker.readiness();
                doc["blocked"] == true && doc["in_flight"].as_u64() > Some(0)
            },
        );
        worker.signal("TERM");
        std::thread::sleep(Duration::from_millis(500));
        let (status, doc) = worker.readiness();
        assert_eq!((status, &doc["state"]), (503, &"draining".into()), "{doc}");
        worker.signal("TERM");
        assert_eq!(worker.wait_exit(Duration::from_secs(5)), Some(130));
    }
    let next = WorkerProcess::start(&vhost, &[]);
    next.wait_ready(Duration::from_secs(20));
    assert_nothing_lost(&channel, &webhooks).await;
    watch.assert_untouched().await;
}
