//! `unmapped.{vendor} = "passthrough"`: an unmapped Deel type reaches the bindings on
//! `deel.unmapped.*` as one generic event with a stable id, while the other vendors'
//! unmapped types stay dead letters.

use std::time::Duration;

use serde_json::json;
use webhook_normalizer::CanonicalEvent;

use crate::support::*;

/// A ready worker with `env`, and a capture queue `test.generic` on `deel.unmapped.*`.
async fn start(
    vhost: &TestVhost,
    env: &[(&str, &str)],
) -> (WorkerProcess, lapin::Connection, lapin::Channel) {
    let worker = WorkerProcess::start(vhost, env);
    worker.wait_ready(Duration::from_secs(20));
    let conn = vhost.connect().await;
    let channel = conn.create_channel().await.unwrap();
    capture_queue(
        &channel,
        "test.generic",
        "events.canonical",
        "deel.unmapped.*",
    )
    .await;
    (worker, conn, channel)
}

#[tokio::test(flavor = "multi_thread")]
async fn passthrough_of_an_unmapped_deel_type_is_a_generic_event_with_a_stable_id() {
    let vhost = TestVhost::new("unmapped");
    let (worker, _conn, channel) =
        start(&vhost, &[("NORMALIZER__UNMAPPED__DEEL", "passthrough")]).await;
    capture_queue(&channel, "test.dead", "webhooks.dead-letter", "#").await;

    // Deel delivers one payslip twice (a retry: new tracking id and timestamp), then an
    // Entuitive type we do not map either.
    let first = fixture("deel/payslip.available.json");
    let mut retry = fixture_json("deel/payslip.available.json");
    retry["data"]["meta"]["tracking_id"] = json!("retry-tracking-id");
    retry["timestamp"] = json!("2023-05-11T12:40:00.000Z");
    let webhooks = [
        RawWebhook::new(first, Some("deel"), "payslip-1"),
        RawWebhook::new(retry.to_string().into_bytes(), None, "payslip-2"),
        RawWebhook::new(
            fixture("entuitive/user.password_reset.json"),
            Some("entuitive"),
            "reset-1",
        ),
    ];
    publish_raw(&channel, &webhooks).await;

    let events = read_messages(&channel, "test.generic", 2, Duration::from_secs(30)).await;
    let bodies: Vec<CanonicalEvent> = events
        .iter()
        .map(|d| serde_json::from_slice(&d.data).unwrap())
        .collect();
    for (d, event) in events.iter().zip(&bodies) {
        assert_eq!(d.routing_key.as_str(), "deel.unmapped.payslip_available");
        assert_eq!(event.event_type.as_str(), "deel.unmapped.payslip_available");
        assert_eq!(message_id(d), event.id.to_string());
        assert_eq!(event.vendoreventtype, "payslip.available");
        assert_eq!(
            event.data.payload["data"]["resource"]["id"],
            json!(10446275)
        );
    }
    assert_eq!(bodies[0].id, bodies[1].id, "a retry is the same event");
    assert_eq!(
        bodies[0].vendoreventid.as_deref(),
        Some("xGt7b5_uCVenTFN_88IsU52ztxXg")
    );
    assert_eq!(
        bodies[1].vendoreventid.as_deref(),
        Some("retry-tracking-id")
    );

    let dead = read_messages(&channel, "test.dead", 1, Duration::from_secs(30)).await;
    assert_eq!(dead[0].routing_key.as_str(), "entuitive.unknown_event_type");
    assert_eq!(
        dead[0].data,
        fixture("entuitive/user.password_reset.json"),
        "the original bytes"
    );

    // Metrics label generic types by vendor only: vendors name them, not us. They are
    // counted when a message is settled, which may be after its events reach the queue.
    wait_until(Duration::from_secs(20), "all three settled", || {
        worker.readiness().1["acked"].as_u64() == Some(3)
    });
    let (_, text) = worker.get("/metrics");
    assert!(
        text.contains(r#"normalizer_events_published_total{vendor="deel",type="deel.unmapped"} 2"#),
        "{text}"
    );
    assert!(!text.contains("payslip"), "{text}");
}

/// The documented way to start passing a vendor's types through: what was dead-lettered
/// before is replayed (`dlq replay --kind unknown_event_type --vendor deel`) into the
/// worker, now configured `passthrough`, and comes out as the generic event, with the id
/// the same body gets when it arrives new.
#[tokio::test(flavor = "multi_thread")]
async fn dead_lettered_unmapped_types_replay_into_generic_events_once_passed_through() {
    let vhost = TestVhost::new("unmapped-replay");
    let (mut worker, _conn, channel) = start(&vhost, &[]).await;
    let body = fixture("deel/payslip.available.json");
    publish_raw(
        &channel,
        &[RawWebhook::new(body.clone(), Some("deel"), "p-1")],
    )
    .await;
    wait_until(Duration::from_secs(20), "the dead letter", || {
        worker.get("/metrics").1.contains(
            r#"normalizer_dead_lettered_total{vendor="deel",kind="unknown_event_type"} 1"#,
        )
    });
    worker.terminate();

    let worker = WorkerProcess::start(&vhost, &[("NORMALIZER__UNMAPPED__DEEL", "passthrough")]);
    worker.wait_ready(Duration::from_secs(20));
    let replay = run_command(
        &vhost,
        &[
            "dlq",
            "replay",
            "--kind",
            "unknown_event_type",
            "--vendor",
            "deel",
        ],
    );
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    let got = read_messages(&channel, "test.generic", 1, Duration::from_secs(30)).await;
    let event: CanonicalEvent = serde_json::from_slice(&got[0].data).unwrap();
    let passthrough = webhook_normalizer::Unmapped {
        deel: webhook_normalizer::UnmappedPolicy::Passthrough,
        ..Default::default()
    };
    let want = webhook_normalizer::normalize(
        &body,
        Some("deel"),
        received_at(),
        &webhook_normalizer::Limits::default(),
        &passthrough,
        webhook_normalizer::SchemaBase::default(),
    )
    .unwrap();
    assert_eq!(event.id, want[0].id);
    assert_eq!(event.event_type.as_str(), "deel.unmapped.payslip_available");
    assert_eq!(queue_depth(&channel, "normalizer.dead-letter").await, 0);
}
