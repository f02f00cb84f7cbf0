//! One message, one fate: a failure caused by one raw message is settled for that message
//! alone.
//!
//! Each hostile raw message below is published between ten valid neighbours before it and
//! ten after it. Whatever the hostile message does (fans out absurdly, carries a huge
//! value, carries properties the worker cannot republish, is refused by the broker), it
//! must end as exactly one dead letter that says why, while its neighbours come out once
//! each, the session is never restarted and nothing is requeued. The output outage tests
//! show the other side of the contract: a failure that is not the message's fault
//! (returns, nacks) is waited out in place, not turned into dead letters.
//!
//! These tests describe the redesigned pipeline; they are written before it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::Value;

use crate::support::*;

/// Neighbours published on each side of the hostile message.
const NEIGHBOURS_EACH_SIDE: usize = 10;

/// The hostile message's `message_id`, which its dead letter carries.
pub(crate) const HOSTILE_ID: &str = "hostile";

/// Ten valid webhooks to publish before the hostile one and ten after, each normalizable
/// and distinct (their own tags).
fn neighbours(tag: &str) -> (Vec<RawWebhook>, Vec<RawWebhook>) {
    let side = |side: &str| -> Vec<RawWebhook> {
        let picked: Vec<_> = webhook_mix(2 * NEIGHBOURS_EACH_SIDE, &format!("{tag}-{side}"))
            .into_iter()
            .filter(|w| expected(w).is_ok())
            .take(NEIGHBOURS_EACH_SIDE)
            .collect();
        assert_eq!(picked.len(), NEIGHBOURS_EACH_SIDE);
        picked
    };
    (side("before"), side("after"))
}

/// What the hostile message must become: one dead letter with this routing key and
/// error kind, carrying this body.
pub(crate) struct Hostile {
    pub(crate) body: Vec<u8>,
    pub(crate) routing_key: &'static str,
    pub(crate) kind: &'static str,
    /// Whether neighbours' events may arrive twice. Only when the broker closes the
    /// channel over the hostile publish: the neighbours' publishes in flight on it may or
    /// may not have been stored (AMQP cannot say which), so they are published again,
    /// with the same ids. Everywhere else the hostile message is caught before anything
    /// is published, and neighbours come out exactly once.
    pub(crate) neighbours_may_repeat: bool,
}

/// A header's value, whatever its type.
pub(crate) fn long_header(d: &Delivery, name: &str) -> Option<AMQPValue> {
    d.properties.headers().as_ref()?.inner().get(name).cloned()
}

/// Neighbours unharmed, the hostile message settled alone:
///
/// - every neighbour's events arrive on `test.events` exactly once, and no other event;
/// - no neighbour is in the dead-letter queue, and nothing but the hostile message is;
/// - the hostile message has exactly one dead letter, with the expected routing key,
///   `x-normalizer-error-kind`, and the original body byte for byte;
/// - `/readyz` says `sessions == 1` (no session restart) and `requeued == 0`, and every
///   raw message was acknowledged;
/// - `normalizer.raw` is empty.
///
/// Waits at most `within` for the events and the dead letter (failing at once if the
/// worker dies), then 1 s more for duplicates. Returns the hostile dead letter, for the
/// test's own checks.
async fn assert_neighbours_unharmed(
    channel: &Channel,
    worker: &mut WorkerProcess,
    neighbours: &[RawWebhook],
    hostile: &Hostile,
    within: Duration,
) -> Delivery {
    let want = expectations(neighbours);
    assert!(
        want.dead_letters.is_empty(),
        "neighbours must all normalize"
    );
    let neighbour_ids: BTreeSet<&str> = neighbours.iter().map(|w| w.message_id.as_str()).collect();
    let per_neighbour: Vec<(&str, Vec<String>)> = neighbours
        .iter()
        .map(|w| {
            let ids = expected(w)
                .unwrap()
                .iter()
                .map(|e| e.id.to_string())
                .collect();
            (w.message_id.as_str(), ids)
        })
        .collect();

    let mut events_in = take_from(channel, "test.events").await;
    let mut dead_in = take_from(channel, "normalizer.dead-letter").await;
    let mut events: BTreeMap<String, usize> = BTreeMap::new();
    let mut dead: Vec<Delivery> = Vec::new();
    let deadline = Instant::now() + within;
    let mut complete_at: Option<Instant> = None;
    loop {
        tokio::select! {
            Some(d) = events_in.next() => {
                let d = d.unwrap_or_else(|e| panic!("the test connection broke reading test.events: {e}"));
                *events.entry(message_id(&d)).or_default() += 1;
            }
            Some(d) = dead_in.next() => dead.push(d.unwrap_or_else(|e| {
                panic!("the test connection broke reading normalizer.dead-letter: {e}")
            })),
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        assert_alive(
            worker,
            "while the neighbours and the hostile message were in flight",
        );
        // Every message accounted for: each neighbour by all its events or by a dead
        // letter (a failure, checked below), the hostile one by a dead letter.
        let dead_ids: BTreeSet<String> = dead.iter().map(message_id).collect();
        let complete = dead_ids.contains(HOSTILE_ID)
            && per_neighbour.iter().all(|(raw_id, ids)| {
                dead_ids.contains(*raw_id) || ids.iter().all(|id| events.contains_key(id))
            });
        match complete_at {
            // Wait a little more for duplicates and strays.
            Some(at) if at.elapsed() > Duration::from_secs(1) => break,
            Some(_) => {}
            None if complete => complete_at = Some(Instant::now()),
            None => {
                if Instant::now() > deadline {
                    let missing = want
                        .event_ids
                        .iter()
                        .filter(|id| !events.contains_key(*id))
                        .count();
                    let dead_keys: Vec<_> = dead
                        .iter()
                        .map(|d| (message_id(d), d.routing_key.to_string()))
                        .collect();
                    let hostile_seen = if dead.iter().any(|d| message_id(d) == HOSTILE_ID) {
                        "the hostile message's dead letter arrived"
                    } else {
                        "no dead letter for the hostile message"
                    };
                    panic!(
                        "within {within:?}: {hostile_seen}; {missing} of {} neighbour events missing; dead letters so far: {dead_keys:?}; worker peak RSS {} MiB; /readyz: {}",
                        want.event_ids.len(),
                        worker.peak_rss_kib() / 1024,
                        worker.readiness().1
                    );
                }
            }
        }
    }

    // The hostile message: exactly one dead letter, the right one.
    let mut hostile_dead: Vec<Delivery> = Vec::new();
    let mut others = Vec::new();
    for d in dead {
        if message_id(&d) == HOSTILE_ID {
            hostile_dead.push(d);
        } else {
            others.push(d);
        }
    }
    assert_eq!(
        hostile_dead.len(),
        1,
        "the hostile message must have exactly one dead letter"
    );
    let letter = hostile_dead.remove(0);
    assert_eq!(
        letter.routing_key.as_str(),
        hostile.routing_key,
        "the hostile dead letter's routing key (x-normalizer-error: {:?})",
        header(&letter, "x-normalizer-error").map(|e| clip(&e, 200))
    );
    assert_eq!(
        header(&letter, "x-normalizer-error-kind").as_deref(),
        Some(hostile.kind),
        "x-normalizer-error-kind"
    );
    assert!(
        letter.data == hostile.body,
        "the dead letter's body is not the original: {} bytes, the original {} bytes",
        letter.data.len(),
        hostile.body.len()
    );

    // The neighbours: none dead-lettered, nothing else either.
    let dead_neighbours: Vec<_> = others
        .iter()
        .filter(|d| neighbour_ids.contains(message_id(d).as_str()))
        .map(|d| (message_id(d), d.routing_key.to_string()))
        .collect();
    assert!(
        dead_neighbours.is_empty(),
        "neighbours were dead-lettered: {dead_neighbours:?}"
    );
    let strays: Vec<_> = others
        .iter()
        .map(|d| (message_id(d), d.routing_key.to_string()))
        .collect();
    assert!(strays.is_empty(), "unexpected dead letters: {strays:?}");

    // Each neighbour event exactly once (at least once where the hostile publish closed
    // the channel under them), and no other event.
    let duplicated: Vec<_> = events.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        hostile.neighbours_may_repeat || duplicated.is_empty(),
        "events published twice: {duplicated:?}"
    );
    let unexpected: Vec<_> = events
        .keys()
        .filter(|id| !want.event_ids.contains(*id))
        .collect();
    assert!(
        unexpected.is_empty(),
        "events that are no neighbour's: {unexpected:?}"
    );

    // No restart, no requeue, everything acknowledged.
    let total = neighbours.len() as u64 + 1;
    let (_, doc) = worker.readiness();
    assert_eq!(doc["sessions"], 1, "no session restart: {doc}");
    assert_eq!(doc["requeued"], 0, "nothing requeued: {doc}");
    wait_until(
        Duration::from_secs(10),
        "every raw message to be acknowledged",
        || worker.readiness().1["acked"].as_u64() == Some(total),
    );
    assert_eq!(queue_depth(channel, "normalizer.raw").await, 0);
    letter
}

/// Publishes ten neighbours, the hostile message (`publish`, a publishing future), ten
/// more, and checks with [`assert_neighbours_unharmed`]; returns the hostile dead letter.
pub(crate) async fn hostile_among_neighbours<F: std::future::Future<Output = ()>>(
    channel: &Channel,
    worker: &mut WorkerProcess,
    tag: &str,
    hostile: &Hostile,
    publish: F,
) -> Delivery {
    let (before, after) = neighbours(tag);
    let all = publish_around(channel, &before, publish, &after).await;
    assert_neighbours_unharmed(channel, worker, &all, hostile, Duration::from_secs(30)).await
}

/// Starts the worker in the vhost and a test channel with `test.events` bound to
/// everything.
pub(crate) async fn start(vhost: &TestVhost) -> (WorkerProcess, Connection, Channel) {
    let worker = WorkerProcess::start(vhost, &[]);
    worker.wait_ready(Duration::from_secs(20));
    let (conn, channel) = setup(vhost).await;
    (worker, conn, channel)
}

/// Publishes the neighbours before, then `hostile` (a publishing future), then the
/// neighbours after, each step confirmed before the next.
async fn publish_around<F: std::future::Future<Output = ()>>(
    channel: &Channel,
    before: &[RawWebhook],
    hostile: F,
    after: &[RawWebhook],
) -> Vec<RawWebhook> {
    publish_raw(channel, before).await;
    hostile.await;
    publish_raw(channel, after).await;
    before.iter().chain(after).cloned().collect()
}

/// Properties of a raw webhook without a vendor hint, plus one extra header.
fn raw_properties_with_header(name: &str, value: AMQPValue) -> BasicProperties {
    let props = raw_properties(&RawWebhook::new(Vec::new(), None, HOSTILE_ID));
    let mut headers = props.headers().clone().unwrap_or_default();
    headers.insert(name.into(), value);
    props.with_headers(headers)
}

/// A Deel `timesheet.reviewed` whose `resource` fans out into 100,000 events (0.9 MB, under
/// the body limit) is refused as one dead letter, `deel.too_many_events`, naming the
/// limit of 1000 events per message; the worker neither dies nor grows past 300 MiB, and
/// logs no personal data. (Run under a 2 GiB address-space limit so a worker that tries
/// to build every event dies instead of taking the machine.)
#[tokio::test(flavor = "multi_thread")]
async fn a_fan_out_bomb_is_one_dead_letter_and_memory_stays_bounded() {
    let vhost = TestVhost::new("fanbomb");
    let mut worker =
        WorkerProcess::start_with_address_space_limit(&vhost, &[], 2 * 1024 * 1024 * 1024);
    worker.wait_ready(Duration::from_secs(20));
    let (_conn, channel) = setup(&vhost).await;

    let mut bomb = fixture_json("deel/timesheet.reviewed.json");
    bomb["data"]["resource"] = Value::Array(vec![serde_json::json!({"id": 1}); 100_000]);
    let body = serde_json::to_vec(&bomb).unwrap();
    assert!(body.len() < 1024 * 1024, "under the body limit");
    let hostile = Hostile {
        body: body.clone(),
        routing_key: "deel.too_many_events",
        kind: "too_many_events",
        neighbours_may_repeat: false,
    };
    let letter = hostile_among_neighbours(
        &channel,
        &mut worker,
        "fanbomb",
        &hostile,
        publish_raw(&channel, &[RawWebhook::new(body, Some("deel"), HOSTILE_ID)]),
    )
    .await;
    let detail = header(&letter, "x-normalizer-error").unwrap_or_default();
    assert!(
        detail.contains("1000"),
        "x-normalizer-error names the limit: {}",
        clip(&detail, 200)
    );
    assert!(worker.is_running(), "the worker is still running");
    let peak = worker.peak_rss_kib();
    assert!(
        peak < 300 * 1024,
        "peak RSS {} MiB, over 300 MiB",
        peak / 1024
    );
    assert_no_personal_data(&worker.logs());
}

/// A Deel `timesheet.reviewed` whose element id is a 150,000-character string (the body
/// is still under 1 MiB) is one dead letter, `deel.invalid_payload`, whose detail names
/// the field: such an id would make an event (subject, headers) the broker cannot take.
#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_entity_id_is_one_dead_letter() {
    let vhost = TestVhost::new("bigid");
    let (mut worker, _conn, channel) = start(&vhost).await;

    let mut big = fixture_json("deel/timesheet.reviewed.json");
    big["data"]["resource"][0]["id"] = "x".repeat(150_000).into();
    let body = serde_json::to_vec(&big).unwrap();
    assert!(body.len() < 1024 * 1024, "under the body limit");
    let hostile = Hostile {
        body: body.clone(),
        routing_key: "deel.invalid_payload",
        kind: "invalid_payload",
        neighbours_may_repeat: false,
    };
    let letter = hostile_among_neighbours(
        &channel,
        &mut worker,
        "bigid",
        &hostile,
        publish_raw(&channel, &[RawWebhook::new(body, Some("deel"), HOSTILE_ID)]),
    )
    .await;
    let detail = header(&letter, "x-normalizer-error").unwrap_or_default();
    assert!(
        detail.starts_with("$.data.resource[0].id:"),
        "x-normalizer-error names the field: {}",
        clip(&detail, 200)
    );
    assert_no_personal_data(&worker.logs());
}

/// A raw message whose `user_id` property names the gateway's user: the worker runs as
/// another user, and the broker refuses a publish whose `user_id` is not the publisher's
/// own (406). Its dead letter therefore goes out without `user_id`, which travels as
/// `x-original-user-id`. Runs on a private node, since users are broker-wide.
#[tokio::test(flavor = "multi_thread")]
async fn a_raw_user_id_does_not_break_its_dead_letter() {
    let node = PrivateNode::start();
    node.add_user("gateway", "gateway-secret");
    node.add_user("normalizer", "normalizer-secret");
    let mut worker =
        WorkerProcess::start_with_url(&node.url("normalizer", "normalizer-secret", "%2f"), &[]);
    worker.wait_ready(Duration::from_secs(30));
    let conn = Connection::connect(
        &node.url("gateway", "gateway-secret", "%2f"),
        ConnectionProperties::default(),
    )
    .await
    .expect("gateway connection");
    let channel = conn.create_channel().await.unwrap();
    capture_queue(&channel, "test.events", "events.canonical", "#").await;

    let body = b"{not json".to_vec();
    let hostile = Hostile {
        body: body.clone(),
        routing_key: "unknown.invalid_json",
        kind: "invalid_json",
        neighbours_may_repeat: false,
    };
    let properties = raw_properties(&RawWebhook::new(Vec::new(), None, HOSTILE_ID))
        .with_user_id("gateway".into());
    let letter = hostile_among_neighbours(
        &channel,
        &mut worker,
        "userid",
        &hostile,
        publish_raw_with(&channel, "webhooks.raw", "gateway", &body, properties),
    )
    .await;
    assert_eq!(
        letter.properties.user_id().as_ref().map(|u| u.to_string()),
        None,
        "the dead letter has no user_id"
    );
    assert_eq!(
        header(&letter, "x-original-user-id").as_deref(),
        Some("gateway")
    );
    assert_eq!(
        header(&letter, "x-gateway").as_deref(),
        Some("test-gateway")
    );
}

/// A raw message whose headers nearly fill a frame (a 130,900-byte `x-padding`; the
/// broker's frame_max is 131,072): its dead letter, which adds the error headers, would
/// not fit, so the worker drops the oversized header and says so in
/// `x-normalizer-dropped-headers`, keeping the others.
#[tokio::test(flavor = "multi_thread")]
async fn raw_headers_near_the_frame_limit_still_dead_letter() {
    let vhost = TestVhost::new("bighead");
    let (mut worker, _conn, channel) = start(&vhost).await;

    let body = b"{not json".to_vec();
    let hostile = Hostile {
        body: body.clone(),
        routing_key: "unknown.invalid_json",
        kind: "invalid_json",
        neighbours_may_repeat: false,
    };
    let properties = raw_properties_with_header(
        "x-padding",
        AMQPValue::LongString("p".repeat(130_900).into()),
    );
    let letter = hostile_among_neighbours(
        &channel,
        &mut worker,
        "bighead",
        &hostile,
        publish_raw_with(&channel, "webhooks.raw", "gateway", &body, properties),
    )
    .await;
    assert!(
        long_header(&letter, "x-padding").is_none(),
        "x-padding is dropped"
    );
    let dropped = header(&letter, "x-normalizer-dropped-headers").unwrap_or_default();
    assert!(
        dropped.contains("x-padding"),
        "x-normalizer-dropped-headers names it: {dropped:?}"
    );
    assert_eq!(
        header(&letter, "x-gateway").as_deref(),
        Some("test-gateway")
    );
}

/// A raw message with a per-message TTL (`expiration = 4000`): its dead letter must not
/// inherit it and vanish from the dead-letter queue 4 s later. It has no `expiration`,
/// and says what it was in `x-original-expiration`.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_does_not_expire() {
    let vhost = TestVhost::new("expiry");
    let (mut worker, _conn, channel) = start(&vhost).await;

    let body = b"{not json".to_vec();
    let hostile = Hostile {
        body: body.clone(),
        routing_key: "unknown.invalid_json",
        kind: "invalid_json",
        neighbours_may_repeat: false,
    };
    let properties = raw_properties(&RawWebhook::new(Vec::new(), None, HOSTILE_ID))
        .with_expiration("4000".into());
    let (before, after) = neighbours("expiry");
    let all = publish_around(
        &channel,
        &before,
        publish_raw_with(&channel, "webhooks.raw", "gateway", &body, properties),
        &after,
    )
    .await;

    wait_until(Duration::from_secs(30), "the dead letter", || {
        worker.readiness().1["dead_lettered"].as_u64() >= Some(1)
    });
    // Longer than the original TTL.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        queue_depth(&channel, "normalizer.dead-letter").await,
        1,
        "the dead letter is still in normalizer.dead-letter 6 s later"
    );
    let letter = assert_neighbours_unharmed(
        &channel,
        &mut worker,
        &all,
        &hostile,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        letter
            .properties
            .expiration()
            .as_ref()
            .map(|e| e.to_string()),
        None,
        "the dead letter has no expiration"
    );
    assert_eq!(
        header(&letter, "x-original-expiration").as_deref(),
        Some("4000")
    );
}

/// Twenty valid webhooks, normalizable, for the outage tests.
fn outage_webhooks(tag: &str) -> Vec<RawWebhook> {
    let webhooks: Vec<_> = webhook_mix(21, tag)
        .into_iter()
        .filter(|w| expected(w).is_ok())
        .collect();
    assert_eq!(webhooks.len(), 20);
    webhooks
}

/// After the outage: every event arrives, nothing was dead-lettered or requeued, every
/// raw message is acknowledged.
async fn assert_outage_waited_out(
    channel: &Channel,
    worker: &mut WorkerProcess,
    webhooks: &[RawWebhook],
) {
    let want = expectations(webhooks);
    let mut events_in = take_from(channel, "test.events").await;
    let mut seen = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !want.event_ids.is_subset(&seen) {
        match tokio::time::timeout_at(deadline, events_in.next()).await {
            Ok(Some(d)) => {
                seen.insert(message_id(&d.expect("event delivery")));
            }
            Ok(None) => panic!("the consumer of test.events ended"),
            Err(_) => panic!(
                "{} of {} events arrived within 60 s of the outage's end; /readyz: {}",
                want.event_ids.intersection(&seen).count(),
                want.event_ids.len(),
                worker.readiness().1
            ),
        }
        assert_alive(worker, "after the outage");
    }
    let unexpected: Vec<_> = seen.difference(&want.event_ids).collect();
    assert!(unexpected.is_empty(), "unexpected events: {unexpected:?}");
    let dead = read_until_quiet(
        channel,
        "normalizer.dead-letter",
        Duration::from_millis(500),
    )
    .await;
    let dead: Vec<_> = dead
        .iter()
        .map(|d| (message_id(d), d.routing_key.to_string()))
        .collect();
    assert!(dead.is_empty(), "dead letters: {dead:?}");
    wait_until(
        Duration::from_secs(10),
        "every raw message to be acknowledged",
        || worker.readiness().1["acked"].as_u64() == Some(webhooks.len() as u64),
    );
    let (_, doc) = worker.readiness();
    assert_eq!(doc["requeued"], 0, "nothing requeued: {doc}");
    assert_eq!(doc["dead_lettered"], 0, "nothing dead-lettered: {doc}");
    assert_eq!(queue_depth(channel, "normalizer.raw").await, 0);
}

/// During the outage itself: nothing dead-lettered, nothing requeued, and `/readyz` says
/// the worker is retrying, and why.
async fn assert_nothing_given_up(channel: &Channel, worker: &mut WorkerProcess, why: &str) {
    assert_alive(worker, "during the outage");
    let (status, doc) = worker.readiness();
    assert_eq!(status, 503, "not ready while retrying: {doc}");
    assert_eq!(doc["state"], "retrying", "{doc}");
    let reason = doc["reason"].as_str().unwrap_or_default();
    assert!(reason.contains(why), "the reason says why: {doc}");
    assert_eq!(
        queue_depth(channel, "normalizer.dead-letter").await,
        0,
        "dead letters during a 10 s outage; /readyz: {doc}"
    );
    assert_eq!(doc["requeued"], 0, "requeued during a 10 s outage: {doc}");
}

/// A 10 s output outage, in its two forms (returns, nacks), is waited out: nothing is
/// dead-lettered or requeued for a failure that is not the message's fault.
mod a_ten_second_output_outage_dead_letters_nothing {
    use super::*;

    /// 10 s during which every event is returned as unroutable (no queue bound, and the
    /// alternate exchange's queue deleted): the worker retries in place, and once a queue is
    /// bound every event arrives; nothing is dead-lettered or requeued. Logs stay free of
    /// personal data (lapin logs each returned message).
    #[tokio::test(flavor = "multi_thread")]
    async fn returns() {
        let vhost = TestVhost::new("outage-returns");
        let mut worker = WorkerProcess::start(&vhost, &[]);
        worker.wait_ready(Duration::from_secs(20));
        let conn = vhost.connect().await;
        let channel = conn.create_channel().await.unwrap();
        channel
            .queue_delete("events.unrouted".into(), Default::default())
            .await
            .unwrap();
        let webhooks = outage_webhooks("returns");
        let (first, second) = webhooks.split_at(10);
        publish_raw(&channel, first).await;

        // The outage. Halfway, more raw messages arrive: the worker takes them too (it
        // cannot know they fail alike before trying; at most the prefetch is held), and
        // gives none up: nothing is stored anywhere, so the failure is not theirs.
        std::thread::sleep(Duration::from_secs(5));
        publish_raw(&channel, second).await;
        std::thread::sleep(Duration::from_secs(5));
        assert_nothing_given_up(&channel, &mut worker, "returned as unroutable").await;
        assert_eq!(
            worker.readiness().1["in_flight"].as_u64(),
            Some(webhooks.len() as u64),
            "every raw message held, none settled"
        );
        capture_queue(&channel, "test.events", "events.canonical", "#").await;

        assert_outage_waited_out(&channel, &mut worker, &webhooks).await;
        assert_no_personal_data(&worker.logs());
    }

    /// 10 s during which every event is nacked (the only bound queue is full with
    /// `reject-publish`; RabbitMQ 3.10 nacks such a publish even with an alternate exchange,
    /// since the message was routed): the worker retries in place, and once the queue takes
    /// messages every event arrives; nothing is dead-lettered or requeued.
    #[tokio::test(flavor = "multi_thread")]
    async fn nacks() {
        let vhost = TestVhost::new("outage-nacks");
        let mut worker = WorkerProcess::start(&vhost, &[]);
        worker.wait_ready(Duration::from_secs(20));
        let conn = vhost.connect().await;
        let channel = conn.create_channel().await.unwrap();
        channel
            .queue_delete("events.unrouted".into(), Default::default())
            .await
            .unwrap();
        let mut full = FieldTable::default();
        full.insert("x-max-length".into(), AMQPValue::LongInt(0));
        full.insert(
            "x-overflow".into(),
            AMQPValue::LongString("reject-publish".into()),
        );
        channel
            .queue_declare(
                "test.events".into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                full,
            )
            .await
            .unwrap();
        channel
            .queue_bind(
                "test.events".into(),
                "events.canonical".into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let webhooks = outage_webhooks("nacks");
        publish_raw(&channel, &webhooks).await;

        // The outage.
        std::thread::sleep(Duration::from_secs(10));
        assert_nothing_given_up(&channel, &mut worker, "nacked").await;
        channel
            .queue_delete("test.events".into(), Default::default())
            .await
            .unwrap();
        capture_queue(&channel, "test.events", "events.canonical", "#").await;

        assert_outage_waited_out(&channel, &mut worker, &webhooks).await;
    }
}

/// A publish the broker refuses for one routing key only (a topic permission forbids
/// `deel.contract.terminated`; the broker closes the channel with 403 ACCESS_REFUSED):
/// the message behind it is dead-lettered as `deel.publish_refused`, and the others go
/// on, with no session restart.
#[tokio::test(flavor = "multi_thread")]
async fn a_publish_the_broker_refuses_for_one_message_dead_letters_only_that_message() {
    let vhost = TestVhost::new("refused");
    vhost.refuse_writes_except("events.canonical", r"^(?!deel\.contract\.terminated$).*");
    let (mut worker, _conn, channel) = start(&vhost).await;

    let body = fixture("deel/contract.terminated.json");
    let hostile = Hostile {
        body: body.clone(),
        routing_key: "deel.publish_refused",
        kind: "publish_refused",
        neighbours_may_repeat: true,
    };
    let (before, after) = neighbours("refused");
    for w in before.iter().chain(&after) {
        let types: Vec<_> = expected(w)
            .unwrap()
            .iter()
            .map(|e| e.event_type.to_string())
            .collect();
        assert!(
            !types.iter().any(|t| t == "deel.contract.terminated"),
            "a neighbour would be refused too"
        );
    }
    let all = publish_around(
        &channel,
        &before,
        publish_raw(&channel, &[RawWebhook::new(body, Some("deel"), HOSTILE_ID)]),
        &after,
    )
    .await;

    assert_neighbours_unharmed(
        &channel,
        &mut worker,
        &all,
        &hostile,
        Duration::from_secs(30),
    )
    .await;
}

/// At `RUST_LOG=trace`, with every fixture flowing through and the first seconds of
/// publishes returned as unroutable (lapin logs returned messages), no log line contains
/// an e-mail address or a person's name from the fixtures.
#[tokio::test(flavor = "multi_thread")]
async fn logs_carry_no_personal_data() {
    let vhost = TestVhost::new("pii");
    let worker = WorkerProcess::start(&vhost, &[("RUST_LOG", "trace")]);
    worker.wait_ready(Duration::from_secs(20));
    let conn = vhost.connect().await;
    let channel = conn.create_channel().await.unwrap();
    channel
        .queue_delete("events.unrouted".into(), Default::default())
        .await
        .unwrap();
    let webhooks = fixture_webhooks();
    publish_raw(&channel, &webhooks).await;

    // Returns for 3 s, then the alternate exchange's queue is back.
    std::thread::sleep(Duration::from_secs(3));
    declare_topology(&vhost);

    // Settled: every raw message acknowledged, or (a worker that gives up) nothing moving
    // any more. The log check comes first; settling is checked after it.
    let total = webhooks.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = (Value::Null, Instant::now());
    loop {
        let doc = worker.readiness().1;
        let depth = queue_depth(&channel, "normalizer.raw").await;
        if depth == 0 && doc["acked"].as_u64() == Some(total) {
            break;
        }
        if doc != last.0 {
            last = (doc, Instant::now());
        } else if depth == 0 && last.1.elapsed() > Duration::from_secs(3) {
            break;
        }
        if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let logs = worker.logs();
    assert!(
        logs.len() > webhooks.len(),
        "trace logging is on: {} lines",
        logs.len()
    );
    assert_no_personal_data(&logs);
    let (_, doc) = worker.readiness();
    assert_eq!(doc["acked"], total, "every raw message settled: {doc}");
    assert_eq!(queue_depth(&channel, "normalizer.raw").await, 0);
}

/// The last resort: a dead letter the broker refuses too (topic permissions forbid its
/// routing key on the dead-letter exchange) is handed to the raw queue's own
/// dead-lettering (`basic.reject` without requeue). Nothing is lost: it reaches
/// `normalizer.dead-letter` as `unknown.delivery_limit` with `x-first-death-reason:
/// rejected`, bytes intact, while the neighbours come out and nothing restarts.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_the_broker_refuses_is_handed_to_the_broker_not_lost() {
    let vhost = TestVhost::new("dlrefused");
    vhost.refuse_writes_except("webhooks.dead-letter", r"^(?!unknown\.invalid_json$).*");
    let (mut worker, _conn, channel) = start(&vhost).await;
    let (before, after) = neighbours("dlrefused");
    let body = b"{not json".to_vec();
    let all = publish_around(
        &channel,
        &before,
        publish_raw(&channel, &[RawWebhook::new(body.clone(), None, HOSTILE_ID)]),
        &after,
    )
    .await;

    let dead = read_messages(
        &channel,
        "normalizer.dead-letter",
        1,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(message_id(&dead[0]), HOSTILE_ID);
    assert_eq!(dead[0].routing_key.as_str(), "unknown.delivery_limit");
    assert_eq!(
        header(&dead[0], "x-first-death-reason").as_deref(),
        Some("rejected")
    );
    assert_eq!(dead[0].data, body);

    // Every neighbour's events (some maybe twice: the refused publish closed the
    // channel under them).
    let want = expectations(&all);
    let mut ids = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !want.event_ids.is_subset(&ids) && Instant::now() < deadline {
        for d in read_until_quiet(&channel, "test.events", Duration::from_millis(300)).await {
            ids.insert(message_id(&d));
        }
    }
    assert!(want.event_ids.is_subset(&ids), "every neighbour's events");
    assert!(ids.is_subset(&want.event_ids), "no other event");
    assert_alive(&mut worker, "after the refusal");
    wait_until(Duration::from_secs(10), "everything settled", || {
        let doc = worker.readiness().1;
        doc["acked"] == all.len() && doc["handed_to_broker"] == 1
    });
    let (_, doc) = worker.readiness();
    assert_eq!(doc["sessions"], 1, "{doc}");
    assert_eq!(doc["requeued"], 0, "{doc}");
    assert_eq!(doc["dead_lettered"], 0, "{doc}");
}

/// A broker with a smaller `max_message_size` (RabbitMQ 4.x refuses messages over 16 MiB
/// by default; this private node, over 64 KiB) refuses the one event that exceeds it,
/// closing the publishing channel (406). The worker finds which message by republishing
/// the suspects one at a time and dead-letters that one as `publish_refused` (its raw
/// body, smaller than the event, fits); the neighbours come out, and the session stays.
#[tokio::test(flavor = "multi_thread")]
async fn an_event_over_the_brokers_max_message_size_is_one_dead_letter() {
    let node = PrivateNode::start_with("max_message_size = 65536", &[]);
    let url = node.url("guest", "guest", "%2f");
    let mut worker = WorkerProcess::start_with_url(&url, &[]);
    worker.wait_ready(Duration::from_secs(30));
    let conn = Connection::connect(&url, ConnectionProperties::default())
        .await
        .expect("test connection");
    let channel = conn.create_channel().await.unwrap();
    capture_queue(&channel, "test.events", "events.canonical", "#").await;

    // 65,000 bytes raw (accepted); its event, the body plus the envelope, is over 65,536.
    let mut big = fixture_json("authenticate/USER_PII_UPDATE__numeric_id.json");
    let len = serde_json::to_vec(&big).unwrap().len();
    big["order"]["notes"] = "n".repeat(65_000 - len - 11).into();
    let body = serde_json::to_vec(&big).unwrap();
    assert_eq!(body.len(), 65_000);
    let hostile = Hostile {
        body: body.clone(),
        routing_key: "authenticate.publish_refused",
        kind: "publish_refused",
        neighbours_may_repeat: true,
    };
    let letter = hostile_among_neighbours(
        &channel,
        &mut worker,
        "maxsize",
        &hostile,
        publish_raw(
            &channel,
            &[RawWebhook::new(body, Some("authenticate"), HOSTILE_ID)],
        ),
    )
    .await;
    let detail = header(&letter, "x-normalizer-error").unwrap_or_default();
    assert!(
        detail.contains("PRECONDITION") && detail.contains("max size"),
        "the broker's reason: {detail}"
    );
}
