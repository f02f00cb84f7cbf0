//! The chaos table: each scenario on a private node of its own, 20,000 mixed raw
//! messages in flight (all three vendors, 5% that cannot be normalized), one disruption
//! mid-stream, and every input accounted for afterwards: its events (duplicates counted,
//! same ids) or its one dead letter; nothing lost, nothing unexpected; the worker's
//! memory bounded. Each prints its row of the table in `docs/delivery.md` (`CHAOS-ROW …`) with the
//! time from the end of the disruption to the first event published after it.

use std::time::{Duration, Instant};

use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection};
use testkit::*;

const INPUTS: usize = 20_000;
/// Events published before the disruption: mid-stream.
const PROGRESS: u64 = 2_000;
/// Peak resident memory allowed to a worker through any scenario.
const MAX_RSS_KIB: u64 = 300 * 1024;

/// A vhost on `node` with the topology, `test.events` (quorum, with `capture_args`) and
/// the 20,000 raw messages published (confirmed) before any worker runs.
async fn loaded(
    node: &PrivateNode,
    label: &str,
    capture_args: FieldTable,
) -> (TestVhost, Vec<RawWebhook>) {
    let vhost = TestVhost::on(node, label);
    declare_topology(&vhost);
    let conn = vhost.connect().await;
    let channel = conn.create_channel().await.unwrap();
    quorum_capture_queue(&channel, capture_args).await;
    let webhooks = webhook_mix(INPUTS, label);
    publish_raw(&channel, &webhooks).await;
    let _ = conn.close(200, "loaded".into()).await;
    (vhost, webhooks)
}

fn published(worker: &WorkerProcess) -> u64 {
    let (_, doc) = worker.readiness();
    doc["events_published"].as_u64().unwrap_or(0)
}

/// Time from `since` until one of `workers` publishes beyond what it had at `since`.
fn recovery(workers: &[&WorkerProcess], since: Instant) -> Duration {
    let before: Vec<u64> = workers.iter().map(|w| published(w)).collect();
    wait_until(Duration::from_secs(120), "an event published again", || {
        workers.iter().zip(&before).any(|(w, b)| published(w) > *b)
    });
    since.elapsed()
}

/// Accounts for every input, asserts nothing lost or unexpected and memory bounded,
/// and prints the row.
async fn settle(
    vhost: &TestVhost,
    webhooks: &[RawWebhook],
    workers: &[&WorkerProcess],
    scenario: &str,
    recovered: Duration,
) -> Accounting {
    let (conn, channel): (Connection, Channel) = {
        let conn = vhost.connect().await;
        let channel = conn.create_channel().await.unwrap();
        (conn, channel)
    };
    let accounting = account(&channel, webhooks, Duration::from_secs(30)).await;
    let _ = conn.close(200, "accounted".into()).await;
    for w in workers {
        let rss = w.peak_rss_kib();
        assert!(rss < MAX_RSS_KIB, "{scenario}: worker peak RSS {rss} KiB");
    }
    let row = accounting.row(scenario, &format!("{:.1} s", recovered.as_secs_f64()));
    eprintln!("CHAOS-ROW {row}");
    assert_eq!(accounting.lost, 0, "{scenario}: {accounting}");
    assert_eq!(accounting.unexpected, 0, "{scenario}: {accounting}");
    accounting
}

/// `stop_app` mid-stream for 3 s, then `start_app`; then a full node stop and start.
#[tokio::test(flavor = "multi_thread")]
async fn a_broker_restart_mid_stream_loses_nothing() {
    let watch = SharedBrokerWatch::start().await;
    let mut node = PrivateNode::start();
    let fast_reconnect = [("NORMALIZER__AMQP__RECONNECT_MAX_MS", "1000")];

    let (vhost, webhooks) = loaded(&node, "chaos-app", FieldTable::default()).await;
    let worker = WorkerProcess::start(&vhost, &fast_reconnect);
    wait_for_progress(&worker, PROGRESS);
    node.stop_app();
    std::thread::sleep(Duration::from_secs(3));
    node.start_app();
    let recovered = recovery(&[&worker], Instant::now());
    settle(
        &vhost,
        &webhooks,
        &[&worker],
        "broker `stop_app`, 3 s, `start_app`",
        recovered,
    )
    .await;
    drop(worker);
    drop(vhost);

    let (vhost, webhooks) = loaded(&node, "chaos-node", FieldTable::default()).await;
    let worker = WorkerProcess::start(&vhost, &fast_reconnect);
    wait_for_progress(&worker, PROGRESS);
    node.restart();
    let recovered = recovery(&[&worker], Instant::now());
    settle(
        &vhost,
        &webhooks,
        &[&worker],
        "broker node stopped and started",
        recovered,
    )
    .await;
    watch.assert_untouched().await;
}

/// The worker reaches the broker through a proxy that blackholes everything for 30 s
/// (the heartbeat, 5 s, must notice: the worker reports it is not ready before the 30 s
/// are over), then passes again; later it resets every connection.
#[tokio::test(flavor = "multi_thread")]
async fn a_network_cut_is_noticed_and_survived() {
    let watch = SharedBrokerWatch::start().await;
    let node = PrivateNode::start();
    let (vhost, webhooks) = loaded(&node, "chaos-net", FieldTable::default()).await;
    let proxy = FaultyProxy::start(node.port()).await;
    let worker = WorkerProcess::start_with_url(
        &format!(
            "amqp://guest:guest@127.0.0.1:{}/{}",
            proxy.port(),
            vhost.name
        ),
        &[
            ("NORMALIZER__AMQP__HEARTBEAT_SECS", "5"),
            ("NORMALIZER__AMQP__CONNECT_TIMEOUT_SECS", "5"),
            ("NORMALIZER__AMQP__RECONNECT_MAX_MS", "1000"),
        ],
    );
    wait_for_progress(&worker, PROGRESS);
    proxy.blackhole();
    let cut = Instant::now();
    wait_until(
        Duration::from_secs(29),
        "the worker to notice the dead link",
        || worker.readiness().0 == 503,
    );
    let noticed = cut.elapsed();
    std::thread::sleep(Duration::from_secs(30).saturating_sub(cut.elapsed()));
    proxy.pass();
    let recovered = recovery(&[&worker], Instant::now());
    eprintln!("blackhole noticed after {:.1} s", noticed.as_secs_f64());

    wait_for_progress(&worker, published(&worker) + PROGRESS);
    proxy.reset_all();
    let reset_recovered = recovery(&[&worker], Instant::now());
    settle(
        &vhost,
        &webhooks,
        &[&worker],
        &format!(
            "network blackholed 30 s (noticed after {:.0} s), then every connection reset",
            noticed.as_secs_f64()
        ),
        recovered.max(reset_recovered),
    )
    .await;
    watch.assert_untouched().await;
}

/// Two, then three worker replicas on one queue; one is killed (SIGKILL) mid-stream:
/// what it held is redelivered to the others.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_killed_mid_stream_loses_nothing() {
    let watch = SharedBrokerWatch::start().await;
    let node = PrivateNode::start();
    for replicas in [2, 3] {
        let label = format!("chaos-replicas{replicas}");
        let (vhost, webhooks) = loaded(&node, &label, FieldTable::default()).await;
        let mut workers: Vec<WorkerProcess> = (0..replicas)
            .map(|_| WorkerProcess::start(&vhost, &[]))
            .collect();
        wait_for_progress(&workers[0], PROGRESS / replicas as u64);
        workers[0].signal("KILL");
        let killed = Instant::now();
        // No exit code: ended by the signal.
        assert_eq!(workers[0].wait_exit(Duration::from_secs(10)), None);
        let survivors: Vec<&WorkerProcess> = workers[1..].iter().collect();
        let recovered = recovery(&survivors, killed);
        settle(
            &vhost,
            &webhooks,
            &survivors,
            &format!("{replicas} replicas on one queue, one killed (SIGKILL)"),
            recovered,
        )
        .await;
        workers.clear();
    }
    watch.assert_untouched().await;
}

/// The output queue is bounded (`x-max-length` 2,000, `x-overflow: reject-publish`) and
/// nobody reads it: the broker nacks, the worker holds and retries; 10 s later the
/// consumer resumes and everything flows.
#[tokio::test(flavor = "multi_thread")]
async fn back_pressure_from_a_full_output_queue_loses_nothing() {
    let watch = SharedBrokerWatch::start().await;
    let node = PrivateNode::start();
    let mut bounded = FieldTable::default();
    bounded.insert("x-max-length".into(), AMQPValue::LongLongInt(2_000));
    bounded.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    let (vhost, webhooks) = loaded(&node, "chaos-full", bounded).await;
    let worker = WorkerProcess::start(&vhost, &[]);
    wait_until(Duration::from_secs(60), "the worker to retry", || {
        worker.readiness().1["state"] == "retrying"
    });
    std::thread::sleep(Duration::from_secs(10));
    // The consumer resumes (settle reads test.events).
    let resumed = Instant::now();
    let settled = tokio::spawn({
        let vhost_url = vhost.url();
        let webhooks = webhooks.clone();
        async move {
            let conn = connect(&vhost_url).await;
            let channel = conn.create_channel().await.unwrap();
            account(&channel, &webhooks, Duration::from_secs(60)).await
        }
    });
    let recovered = recovery(&[&worker], resumed);
    let accounting = settled.await.unwrap();
    let row = accounting.row(
        "output queue full (reject-publish) 10 s, then drained",
        &format!("{:.1} s", recovered.as_secs_f64()),
    );
    eprintln!("CHAOS-ROW {row}");
    assert_eq!(accounting.lost, 0, "{accounting}");
    assert_eq!(accounting.unexpected, 0, "{accounting}");
    assert!(worker.peak_rss_kib() < MAX_RSS_KIB);
    drop(vhost);
    watch.assert_untouched().await;
}

fn alarms(node: &PrivateNode) -> String {
    node.eval("rabbit_alarm:get_alarms().")
}

/// A disk alarm (the free-disk limit raised past what the disk has) mid-stream for
/// 10 s: the broker blocks the publishing connection; the worker waits it out. The
/// event history is on: once the alarm is over it holds every event exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn a_disk_alarm_mid_stream_is_waited_out() {
    let watch = SharedBrokerWatch::start().await;
    let node = PrivateNode::start();
    let (vhost, webhooks) = loaded(&node, "chaos-disk", FieldTable::default()).await;
    let worker = WorkerProcess::start(&vhost, &[("NORMALIZER__HISTORY__ENABLED", "true")]);
    wait_for_progress(&worker, PROGRESS);
    let limit = node.eval("rabbit_disk_monitor:get_disk_free_limit().");
    node.rabbitmqctl(&["set_disk_free_limit", "1000000GB"]);
    wait_until(Duration::from_secs(30), "the disk alarm", || {
        alarms(&node).contains("disk")
    });
    wait_until(Duration::from_secs(30), "the worker to be blocked", || {
        worker.readiness().1["state"] == "blocked"
    });
    std::thread::sleep(Duration::from_secs(10));
    node.rabbitmqctl(&["set_disk_free_limit", &limit]);
    wait_until(Duration::from_secs(30), "the disk alarm to clear", || {
        !alarms(&node).contains("disk")
    });
    let recovered = recovery(&[&worker], Instant::now());
    let accounting = settle(&vhost, &webhooks, &[&worker], "disk alarm 10 s", recovered).await;
    assert_eq!(
        accounting.duplicates, 0,
        "an alarm is waited out, not retried"
    );
    let want: std::collections::BTreeSet<String> = webhooks
        .iter()
        .filter_map(|w| expected(w).ok())
        .flatten()
        .map(|e| e.id.to_string())
        .collect();
    assert_eq!(want.len(), accounting.events);
    let conn = vhost.connect().await;
    let channel = conn.create_channel().await.unwrap();
    let kept = read_stream(
        &channel,
        "events.history",
        want.len(),
        Duration::from_secs(120),
    )
    .await;
    let kept_ids: std::collections::BTreeSet<String> = kept.iter().map(message_id).collect();
    assert_eq!(
        kept_ids.len(),
        kept.len(),
        "an event kept twice in the history"
    );
    assert!(kept_ids == want, "the history lacks events or holds others");
    let _ = conn.close(200, "read".into()).await;
    watch.assert_untouched().await;
}
