//! Failures the worker must survive without losing a message: a kill -9, connections
//! closed by the broker, SIGTERM, a deleted queue or exchange, a publish that can never
//! succeed.

use std::time::Duration;

use crate::support::*;

/// kill -9 in the middle of a stream, then a restart: every input is accounted for.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_worker_loses_nothing_after_restart() {
    let vhost = TestVhost::new("sigkill");
    declare_topology(&vhost);
    let (_conn, channel) = setup(&vhost).await;
    let webhooks = webhook_mix(3000, "kill");
    publish_raw(&channel, &webhooks).await;

    let mut worker = WorkerProcess::start(&vhost, &[]);
    wait_for_progress(&worker, 200);
    worker.signal("KILL");
    assert_eq!(
        worker.wait_exit(Duration::from_secs(10)),
        None,
        "killed by the signal"
    );
    let remaining = queue_depth(&channel, "normalizer.raw").await;
    assert!(remaining > 0, "the kill should land mid-stream");

    let restarted = WorkerProcess::start(&vhost, &[]);
    restarted.wait_ready(Duration::from_secs(20));
    assert_nothing_lost(&channel, &webhooks).await;
}

/// The broker closes every connection mid-stream (as `rabbitmqctl close_all_connections`
/// does in a maintenance): the worker reconnects and finishes, losing nothing.
#[tokio::test(flavor = "multi_thread")]
async fn connections_closed_by_the_broker_are_survived() {
    let vhost = TestVhost::new("closeall");
    declare_topology(&vhost);
    let webhooks = webhook_mix(3000, "close");
    {
        let (conn, channel) = setup(&vhost).await;
        publish_raw(&channel, &webhooks).await;
        let _ = conn.close(200, "published".into()).await;
    }
    let worker = WorkerProcess::start(&vhost, &[]);
    wait_for_progress(&worker, 200);
    vhost.close_all_connections();
    wait_until(Duration::from_secs(30), "a second session", || {
        worker.readiness().1["sessions"].as_u64().unwrap_or(0) >= 2
    });
    worker.wait_ready(Duration::from_secs(20));
    let (_conn, channel) = setup(&vhost).await;
    assert_nothing_lost(&channel, &webhooks).await;
}

/// SIGTERM: the worker stops consuming, finishes what it holds, and exits 0 promptly;
/// nothing is lost (what it did not take is still queued for the next worker).
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_and_exits_zero() {
    let vhost = TestVhost::new("sigterm");
    declare_topology(&vhost);
    let (_conn, channel) = setup(&vhost).await;
    let webhooks = webhook_mix(3000, "term");
    publish_raw(&channel, &webhooks).await;

    let mut worker = WorkerProcess::start(&vhost, &[]);
    wait_for_progress(&worker, 200);
    worker.signal("TERM");
    assert_eq!(worker.wait_exit(Duration::from_secs(30)), Some(0));
    let logs = worker.logs().join("\n");
    assert!(logs.contains("shutdown requested"), "{logs}");
    assert!(logs.contains("\"stopped\""), "{logs}");
    assert!(
        !logs.contains("not finished within"),
        "drain overran: {logs}"
    );

    let next = WorkerProcess::start(&vhost, &[]);
    next.wait_ready(Duration::from_secs(20));
    assert_nothing_lost(&channel, &webhooks).await;
}

/// The raw queue is deleted under the worker (the broker cancels its consumer): it
/// re-declares the topology, consumes again, and keeps working.
#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_consumer_resubscribes() {
    let vhost = TestVhost::new("cancel");
    let worker = WorkerProcess::start(&vhost, &[]);
    worker.wait_ready(Duration::from_secs(20));
    let (_conn, channel) = setup(&vhost).await;
    channel
        .queue_delete("normalizer.raw".into(), Default::default())
        .await
        .unwrap();
    wait_until(Duration::from_secs(30), "a second session", || {
        let (status, doc) = worker.readiness();
        status == 200 && doc["sessions"].as_u64().unwrap_or(0) >= 2
    });
    let webhooks = webhook_mix(40, "cancel");
    publish_raw(&channel, &webhooks).await;
    assert_nothing_lost(&channel, &webhooks).await;
}

/// A publish that can never succeed (the alternate exchange has lost its queue, so events
/// are returned as unroutable) is retried in place for `retry.max_elapsed_secs`, then
/// rejected; after the delivery limit the broker dead-letters the raw message, bytes
/// intact. It does not loop forever.
#[tokio::test(flavor = "multi_thread")]
async fn a_message_that_always_fails_ends_in_the_dead_letter_queue() {
    let vhost = TestVhost::new("poison");
    let worker = WorkerProcess::start(
        &vhost,
        &[
            ("NORMALIZER__INPUT__DELIVERY_LIMIT", "2"),
            ("NORMALIZER__RETRY__MAX_ELAPSED_SECS", "1"),
        ],
    );
    worker.wait_ready(Duration::from_secs(20));
    let conn = vhost.connect().await;
    let channel = conn.create_channel().await.unwrap();
    channel
        .queue_delete("events.unrouted".into(), Default::default())
        .await
        .unwrap();
    let body = std::fs::read(fixtures_dir().join("deel/contract.created.json")).unwrap();
    publish_raw(
        &channel,
        &[RawWebhook::new(body.clone(), Some("deel"), "poison")],
    )
    .await;
    let dead = read_messages(
        &channel,
        "normalizer.dead-letter",
        1,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(dead[0].routing_key.as_str(), "unknown.delivery_limit");
    assert_eq!(dead[0].data, body);
    assert_eq!(
        dead[0].properties.message_id().as_ref().unwrap().as_str(),
        "poison"
    );
    // RabbitMQ says why, and the gateway's headers are still there.
    assert_eq!(
        header(&dead[0], "x-first-death-reason").unwrap(),
        "delivery_limit"
    );
    assert_eq!(
        header(&dead[0], "x-first-death-queue").unwrap(),
        "normalizer.raw"
    );
    assert_eq!(header(&dead[0], "x-gateway").unwrap(), "test-gateway");
    let (_, doc) = worker.readiness();
    assert!(doc["requeued"].as_u64().unwrap() >= 2, "{doc}");
    // Retried in place between redeliveries, not in a tight loop.
    assert!(doc["publish_retries"].as_u64().unwrap() >= 2, "{doc}");
    assert_eq!(queue_depth(&channel, "normalizer.raw").await, 0);
}

/// The output exchange is deleted under the worker: the broker closes the publishing
/// channel at the next publish (404). The worker reopens the channel and declares the
/// topology again, in place, holding its deliveries: no session restart, no delivery
/// attempt spent, every event arrives, nothing is dead-lettered.
#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_output_exchange_is_declared_again_in_place() {
    let vhost = TestVhost::new("chanlost");
    let worker = WorkerProcess::start(&vhost, &[("NORMALIZER__INPUT__DELIVERY_LIMIT", "3")]);
    worker.wait_ready(Duration::from_secs(20));
    let conn = vhost.connect().await;
    let channel = conn.create_channel().await.unwrap();
    channel
        .exchange_delete("events.canonical".into(), Default::default())
        .await
        .unwrap();
    let webhooks: Vec<_> = webhook_mix(200, "chanlost")
        .into_iter()
        .filter(|w| crate::support::expected(w).is_ok())
        .collect();
    publish_raw(&channel, &webhooks).await;

    // The re-declared exchange has no bindings yet: the events reach events.unrouted.
    let want = expectations(&webhooks);
    let got = read_messages(
        &channel,
        "events.unrouted",
        want.event_ids.len(),
        Duration::from_secs(60),
    )
    .await;
    let ids: std::collections::BTreeSet<_> = got
        .iter()
        .map(|d| d.properties.message_id().as_ref().unwrap().to_string())
        .collect();
    assert_eq!(ids, want.event_ids);
    let (_, doc) = worker.readiness();
    assert_eq!(doc["sessions"], 1, "{doc}");
    assert_eq!(
        doc["requeued"], 0,
        "no delivery attempt spent on a dead channel: {doc}"
    );
    assert!(
        read_until_quiet(
            &channel,
            "normalizer.dead-letter",
            Duration::from_millis(300)
        )
        .await
        .is_empty()
    );
}
