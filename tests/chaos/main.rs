//! Tests that disturb the whole broker (alarms). Cargo runs test binaries one after
//! another, so these never overlap the parallel tests in `tests/broker/`; within this
//! binary a lock runs them one at a time, and each restores the broker however it ends.
//! Each also watches the shared broker ([`SharedBrokerWatch`]): its publishers must never
//! be blocked and its broker-wide settings must be as they were.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use testkit::*;

/// One broker-wide disturbance at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A memory alarm on the broker, cleared (to the watermark found before) when dropped.
struct MemoryAlarm {
    restore_to: String,
}

impl MemoryAlarm {
    fn raise() -> MemoryAlarm {
        let current = Command::new("rabbitmqctl")
            .args([
                "-q",
                "eval",
                "vm_memory_monitor:get_vm_memory_high_watermark().",
            ])
            .output()
            .unwrap();
        let current = String::from_utf8_lossy(&current.stdout).trim().to_owned();
        // A relative watermark prints as a float; anything else: RabbitMQ's default.
        let restore_to = if current.parse::<f64>().is_ok() {
            current
        } else {
            "0.4".to_owned()
        };
        let alarm = MemoryAlarm { restore_to };
        set_watermark("0.0001");
        wait_until(Duration::from_secs(20), "the memory alarm", alarm_active);
        alarm
    }
}

impl Drop for MemoryAlarm {
    fn drop(&mut self) {
        set_watermark(&self.restore_to);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while alarm_active() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn set_watermark(value: &str) {
    let status = Command::new("rabbitmqctl")
        .args(["-q", "set_vm_memory_high_watermark", value])
        .status()
        .unwrap();
    assert!(status.success());
}

fn alarm_active() -> bool {
    let out = Command::new("rabbitmq-diagnostics")
        .args(["-q", "alarms"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains("Memory alarm")
}

/// During a memory alarm the broker blocks the worker's publishing connection. The
/// worker holds its in-flight messages (no requeue, so no delivery attempts burnt, even
/// though the confirm timeout passes several times), reports `blocked`, and finishes
/// everything once the alarm clears.
#[tokio::test(flavor = "multi_thread")]
async fn a_memory_alarm_is_waited_out_without_redeliveries() {
    let _serial = SERIAL.lock().await;
    let watch = SharedBrokerWatch::start().await;
    let vhost = TestVhost::new("alarm");
    declare_topology(&vhost);
    let (_conn, channel) = setup(&vhost).await;
    let webhooks = webhook_mix(300, "alarm");
    publish_raw(&channel, &webhooks).await;

    let worker;
    {
        let _alarm = MemoryAlarm::raise();
        worker = WorkerProcess::start(&vhost, &[("NORMALIZER__AMQP__CONFIRM_TIMEOUT_SECS", "1")]);
        wait_until(
            Duration::from_secs(20),
            "the worker to see the block",
            || worker.readiness().1["blocked"] == true,
        );
        // Several confirm timeouts pass while blocked.
        std::thread::sleep(Duration::from_secs(4));
        let (_, doc) = worker.readiness();
        assert_eq!(doc["acked"], 0, "{doc}");
        assert_eq!(doc["requeued"], 0, "{doc}");
        assert!(doc["consumed"].as_u64().unwrap() > 0, "{doc}");
    }
    assert_nothing_lost(&channel, &webhooks).await;
    let (_, doc) = worker.readiness();
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
    let _serial = SERIAL.lock().await;
    let watch = SharedBrokerWatch::start().await;
    let vhost = TestVhost::new("signal2");
    declare_topology(&vhost);
    let (_conn, channel) = setup(&vhost).await;
    let webhooks = webhook_mix(100, "signal2");
    publish_raw(&channel, &webhooks).await;
    {
        let _alarm = MemoryAlarm::raise();
        let mut worker = WorkerProcess::start(&vhost, &[]);
        wait_until(
            Duration::from_secs(20),
            "the worker to see the block",
            || worker.readiness().1["blocked"] == true,
        );
        worker.signal("TERM");
        std::thread::sleep(Duration::from_millis(500));
        assert!(worker.readiness().0 == 503, "draining, not ready");
        worker.signal("TERM");
        assert_eq!(worker.wait_exit(Duration::from_secs(5)), Some(130));
    }
    let next = WorkerProcess::start(&vhost, &[]);
    next.wait_ready(Duration::from_secs(20));
    assert_nothing_lost(&channel, &webhooks).await;
    watch.assert_untouched().await;
}
