//! One team's or one message's trouble stays theirs: a full team queue, publishes the
//! broker refuses one by one, and output that loops back to the raw queue hold back
//! nobody else.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};

use crate::support::*;

/// A durable classic queue bound to `events.canonical` with `key`, full: at most one
/// message, and the broker refuses (nacks) publishes beyond that.
async fn full_queue(channel: &lapin::Channel, name: &str, key: &str) {
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(0));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            name.into(),
            "events.canonical".into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
}

/// Two teams: `team.all` bound to everything, `team.deel` to Deel's types with a queue
/// that is full (`reject-publish`). The broker nacks every Deel event. The other team
/// keeps receiving every other event at once, while the Deel raw messages are held for
/// retry; past `retry.max_elapsed_secs` each Deel raw message is dead-lettered as
/// `undeliverable`, and once the team has room again `dlq replay` gets it its events.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_team_queue_holds_back_no_other_team() {
    let vhost = TestVhost::new("full-team");
    let worker = WorkerProcess::start(&vhost, &[("NORMALIZER__RETRY__MAX_ELAPSED_SECS", "20")]);
    worker.wait_ready(Duration::from_secs(20));
    let conn = vhost.connect().await;
    let channel = conn.create_channel().await.unwrap();
    capture_queue(&channel, "team.all", "events.canonical", "#").await;
    full_queue(&channel, "team.deel", "deel.#").await;

    let webhooks: Vec<RawWebhook> = webhook_mix(60, "full")
        .into_iter()
        .filter(|w| expected(w).is_ok())
        .collect();
    let is_deel = |w: &RawWebhook| w.vendor == Some("deel");
    let ids = |ws: &mut dyn Iterator<Item = &RawWebhook>| -> BTreeSet<String> {
        ws.flat_map(|w| expected(w).unwrap())
            .map(|e| e.id.to_string())
            .collect()
    };
    let deel_events = ids(&mut webhooks.iter().filter(|w| is_deel(w)));
    let other_events = ids(&mut webhooks.iter().filter(|w| !is_deel(w)));
    assert!(deel_events.len() >= 20 && other_events.len() >= 20);
    let started = Instant::now();
    publish_raw(&channel, &webhooks).await;

    // Every other event reaches team.all once, long before the Deel messages are given
    // up on: nobody waits for team.deel.
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut consumer = take_from(&channel, "team.all").await;
    while !other_events.iter().all(|id| seen.contains_key(id)) {
        let next = tokio::time::timeout(
            Duration::from_secs(10),
            futures_lite::StreamExt::next(&mut consumer),
        )
        .await
        .expect("the other events keep coming")
        .unwrap()
        .unwrap();
        *seen.entry(message_id(&next)).or_default() += 1;
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "every other event in {:?}",
        started.elapsed()
    );
    let deel_count = webhooks.iter().filter(|w| is_deel(w)).count() as u64;
    // Once the Deel messages are refused again on a retry while others are stored, the
    // refusal is theirs: the worker says it is consuming, holding them for retry.
    let deadline = Instant::now() + Duration::from_secs(10);
    let doc = loop {
        let (_, doc) = worker.readiness();
        if doc["in_flight"].as_u64() == Some(deel_count) && doc["state"] == "consuming" {
            break doc;
        }
        assert!(
            Instant::now() < deadline,
            "only the {deel_count} Deel messages held, consuming: {doc}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        doc["reason"].as_str().is_some_and(
            |r| r.starts_with(&format!("{deel_count} messages held for retry (nacked"))
        ),
        "{doc}"
    );
    for id in &other_events {
        assert_eq!(seen[id], 1, "{id} once");
    }

    // Past the budget: each Deel raw message is dead-lettered, with the reason.
    let deel_raw: BTreeSet<String> = webhooks
        .iter()
        .filter(|w| is_deel(w))
        .map(|w| w.message_id.clone())
        .collect();
    // Read with `dlq export`, which leaves them where they are.
    let dir = std::env::temp_dir().join(format!("wn-full-team-{}", std::process::id()));
    let file = dir.with_extension("jsonl");
    let mut dead: Vec<serde_json::Value> = Vec::new();
    for _ in 0..120 {
        let _ = std::fs::remove_file(&file);
        let out = run_command(&vhost, &["dlq", "export", file.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        dead = std::fs::read_to_string(&file)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if dead.len() >= deel_raw.len() {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let _ = std::fs::remove_file(&file);
    assert_eq!(
        dead.iter()
            .map(|d| d["message"]["message_id"].as_str().unwrap().to_owned())
            .collect::<BTreeSet<_>>(),
        deel_raw
    );
    for d in &dead {
        assert_eq!(d["kind"], "undeliverable", "{d}");
        let detail = d["detail"].as_str().unwrap();
        assert!(detail.contains("nacked by the broker"), "{detail}");
        assert!(detail.contains("were stored meanwhile"), "{detail}");
    }
    // team.all had each Deel event, maybe more than once (each retry reaches it too).
    let rest = read_until_quiet(&channel, "team.all", Duration::from_millis(500)).await;
    for d in &rest {
        *seen.entry(message_id(d)).or_default() += 1;
    }
    assert!(deel_events.iter().all(|id| seen.contains_key(id)));

    // team.deel drains (here: a queue with room), and the dead letters are replayed.
    channel
        .queue_delete("team.deel".into(), Default::default())
        .await
        .unwrap();
    capture_queue(&channel, "team.deel", "events.canonical", "deel.#").await;
    let replay = run_command(&vhost, &["dlq", "replay", "--kind", "undeliverable"]);
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    let recovered = read_messages(
        &channel,
        "team.deel",
        deel_events.len(),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        recovered.iter().map(message_id).collect::<BTreeSet<_>>(),
        deel_events,
        "the full team's events are recovered"
    );
}

/// Ten adjacent messages whose events the broker refuses one by one (a topic permission
/// forbids `deel.contract.terminated`; each publish closes the channel with 403), then 55
/// good ones: each refused message has exactly one dead letter (`publish_refused`), the
/// good ones go out within seconds, and the session is never restarted.
#[tokio::test(flavor = "multi_thread")]
async fn refused_messages_side_by_side_are_each_dead_lettered_once_without_a_stall() {
    let vhost = TestVhost::new("refused-ten");
    vhost.refuse_writes_except("events.canonical", r"^(?!deel\.contract\.terminated$).*");
    let worker = WorkerProcess::start(&vhost, &[]);
    worker.wait_ready(Duration::from_secs(20));
    let (_conn, channel) = setup(&vhost).await;
    let terminated = fixture_json("deel/contract.terminated.json");
    let refused: Vec<RawWebhook> = (0..10)
        .map(|i| {
            let mut b = terminated.clone();
            b["data"]["resource"]["id"] = format!("refused-{i}").into();
            RawWebhook::new(
                serde_json::to_vec(&b).unwrap(),
                Some("deel"),
                format!("refused-{i}"),
            )
        })
        .collect();
    let good: Vec<RawWebhook> = webhook_mix(60, "good")
        .into_iter()
        .filter(|w| expected(w).is_ok())
        .take(55)
        .collect();
    let good_events: BTreeSet<String> = good
        .iter()
        .flat_map(|w| expected(w).unwrap())
        .map(|e| e.id.to_string())
        .collect();
    let started = Instant::now();
    publish_raw(&channel, &refused).await;
    publish_raw(&channel, &good).await;

    let events = read_messages(
        &channel,
        "test.events",
        good_events.len(),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        events.iter().map(message_id).collect::<BTreeSet<_>>(),
        good_events
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the good ones waited {:?}",
        started.elapsed()
    );
    let dead = read_messages(
        &channel,
        "normalizer.dead-letter",
        refused.len(),
        Duration::from_secs(30),
    )
    .await;
    let mut per_raw: BTreeMap<String, usize> = BTreeMap::new();
    for d in &dead {
        assert_eq!(
            header(d, "x-normalizer-error-kind").as_deref(),
            Some("publish_refused")
        );
        *per_raw.entry(message_id(d)).or_default() += 1;
    }
    let more = read_until_quiet(&channel, "normalizer.dead-letter", Duration::from_secs(1)).await;
    for d in &more {
        *per_raw.entry(message_id(d)).or_default() += 1;
    }
    let want: BTreeMap<String, usize> = refused.iter().map(|w| (w.message_id.clone(), 1)).collect();
    assert_eq!(per_raw, want, "one dead letter each");
    let (_, doc) = worker.readiness();
    assert_eq!(doc["sessions"], 1, "{doc}");
    assert_eq!(doc["state"], "consuming", "{doc}");
}

/// The raw queue bound by hand to the dead-letter exchange (configuration refuses the
/// same exchange for both; a binding made outside the topology cannot be seen): a
/// message that cannot be normalized is dead-lettered once, its dead letter comes back
/// through the raw queue, and is put in the dead-letter queue as it is instead of going
/// round again.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_routed_back_to_the_raw_queue_loops_no_more() {
    let vhost = TestVhost::new("loop");
    let worker = WorkerProcess::start(&vhost, &[]);
    worker.wait_ready(Duration::from_secs(20));
    let conn = vhost.connect().await;
    let channel = conn.create_channel().await.unwrap();
    channel
        .queue_bind(
            "normalizer.raw".into(),
            "webhooks.dead-letter".into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let poison = RawWebhook::new(b"{not json".to_vec(), Some("deel"), "poison");
    publish_raw(&channel, &[poison]).await;
    std::thread::sleep(Duration::from_secs(3));
    let (_, doc) = worker.readiness();
    assert_eq!(
        doc["consumed"], 2,
        "the poison and its dead letter coming back, no more: {doc}"
    );
    let dead = read_until_quiet(&channel, "normalizer.dead-letter", Duration::from_secs(1)).await;
    assert_eq!(
        dead.len(),
        2,
        "the dead letter, and the copy that came back"
    );
    assert!(dead.iter().all(|d| d.data == b"{not json"));
    let looped: Vec<_> = dead
        .iter()
        .filter_map(|d| header(d, "x-normalizer-looped-through"))
        .collect();
    assert_eq!(looped, ["webhooks.dead-letter"]);
    let (_, metrics) = worker.get("/metrics");
    assert!(
        metrics.contains("normalizer_loops_stopped_total 1"),
        "counted: {metrics}"
    );
}
