//! The event history (`[history]`): a stream fed from the tap exchange keeps every event
//! once stored, byte for byte, without changing where any event goes.

use std::collections::BTreeMap;
use std::time::Duration;

use lapin::message::Delivery;
use lapin::options::{BasicGetOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};

use crate::support::*;

const HISTORY: &str = "events.history";
const UNROUTED: &str = "events.unrouted";

fn with_history(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut env = vec![("NORMALIZER__HISTORY__ENABLED", "true")];
    env.extend_from_slice(extra);
    env
}

/// Headers the stream and the tap add to what was published: where it sits in the
/// stream, and when it was kept.
const ADDED: [&str; 2] = ["x-stream-offset", "x-normalizer-kept-at"];

/// A delivery's properties as text, without the headers named in `without`.
fn properties_without(d: &Delivery, without: &[&str]) -> String {
    let mut p = d.properties.clone();
    if let Some(headers) = p.headers().clone() {
        let mut kept = FieldTable::default();
        for (k, v) in headers.inner() {
            if !without.contains(&k.as_str()) {
                kept.insert(k.clone(), v.clone());
            }
        }
        p = p.with_headers(kept);
    }
    format!("{p:?}")
}

async fn get_all(channel: &lapin::Channel, queue: &str) -> Vec<Delivery> {
    let mut out = Vec::new();
    while let Some(m) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        out.push(m.delivery);
    }
    out
}

/// With a team bound for Deel only: the team gets exactly the Deel events and the
/// unrouted queue exactly the others, as without the history (no binding of the
/// history counts as a destination); the stream holds every one of them once, body and
/// properties as the team and the unrouted queue got them, routed `canonical.{type}`
/// or `unrouted.{type}`; and it is declared with the configured retention.
#[tokio::test(flavor = "multi_thread")]
async fn the_history_keeps_every_stored_event_and_changes_no_route() {
    let vhost = TestVhost::new("history-keeps");
    let worker = WorkerProcess::start(
        &vhost,
        &with_history(&[
            ("NORMALIZER__HISTORY__MAX_AGE_SECS", "86400"),
            ("NORMALIZER__HISTORY__MAX_BYTES", "50000000"),
            ("NORMALIZER__HISTORY__SEGMENT_BYTES", "1000000"),
        ]),
    );
    worker.wait_ready(Duration::from_secs(20));
    let conn = vhost.connect().await;
    let channel = conn.create_channel().await.unwrap();
    capture_queue(&channel, "team.deel", "events.canonical", "deel.#").await;
    let webhooks = webhook_mix(40, "hist");
    publish_raw(&channel, &webhooks).await;
    wait_until(Duration::from_secs(30), "all raw messages settled", || {
        worker.readiness().1["acked"].as_u64() == Some(webhooks.len() as u64)
    });

    let events: Vec<(String, String)> = webhooks
        .iter()
        .filter_map(|w| expected(w).ok())
        .flatten()
        .map(|e| (e.event_type.to_string(), e.id.to_string()))
        .collect();
    let (deel, others): (Vec<_>, Vec<_>) = events.iter().partition(|(t, _)| t.starts_with("deel."));
    assert!(!deel.is_empty() && !others.is_empty());

    let team = get_all(&channel, "team.deel").await;
    let unrouted = get_all(&channel, UNROUTED).await;
    let ids = |ds: &[Delivery]| ds.iter().map(message_id).collect::<Vec<_>>();
    assert_eq!(
        ids(&team),
        deel.iter().map(|(_, id)| id.clone()).collect::<Vec<_>>(),
        "the team gets what it got without the history"
    );
    assert_eq!(
        ids(&unrouted),
        others.iter().map(|(_, id)| id.clone()).collect::<Vec<_>>(),
        "the unrouted queue keeps what it kept without the history"
    );

    let history = read_stream(&channel, HISTORY, events.len(), Duration::from_secs(30)).await;
    let mut by_id: BTreeMap<String, &Delivery> = BTreeMap::new();
    for d in &history {
        assert!(
            by_id.insert(message_id(d), d).is_none(),
            "each event once in the history"
        );
    }
    for d in &team {
        let kept = by_id[&message_id(d)];
        assert_eq!(kept.data, d.data, "the body as the team got it");
        assert_eq!(
            kept.routing_key.as_str(),
            format!("canonical.{}", d.routing_key)
        );
        assert_eq!(properties_without(kept, &ADDED), properties_without(d, &[]));
        assert!(header(kept, "x-normalizer-kept-at").is_some());
    }
    for d in &unrouted {
        let kept = by_id[&message_id(d)];
        assert_eq!(kept.data, d.data, "the body as the unrouted queue kept it");
        let event_type = header(d, "x-normalizer-unrouted-routing-key").unwrap();
        assert_eq!(kept.routing_key.as_str(), format!("unrouted.{event_type}"));
        // The quorum queue counts deliveries in a header of its own.
        assert_eq!(
            properties_without(kept, &["x-stream-offset"]),
            properties_without(d, &["x-delivery-count"])
        );
    }
    assert_eq!(history.len(), team.len() + unrouted.len());

    let arguments = vhost.queue_arguments();
    let stream = &arguments[HISTORY];
    for want in [
        "x-queue-type",
        "stream",
        "x-max-age",
        "86400s",
        "x-max-length-bytes",
        "50000000",
        "x-stream-max-segment-size-bytes",
        "1000000",
    ] {
        assert!(stream.contains(want), "{want} in {stream}");
    }
    drop(conn);
}

/// Retention drops whole segments, oldest first: with 1 MiB kept in segments of 64 KiB,
/// after about 3 MiB of events the stream starts well past its first offset and holds
/// no more than the bound and one segment; the newest events are all there.
#[tokio::test(flavor = "multi_thread")]
async fn retention_drops_the_oldest_segments_past_max_bytes() {
    let vhost = TestVhost::new("history-retention");
    let worker = WorkerProcess::start(
        &vhost,
        &with_history(&[
            ("NORMALIZER__HISTORY__MAX_BYTES", "1048576"),
            ("NORMALIZER__HISTORY__SEGMENT_BYTES", "65536"),
        ]),
    );
    worker.wait_ready(Duration::from_secs(20));
    let conn = vhost.connect().await;
    let channel = conn.create_channel().await.unwrap();
    let webhooks = webhook_mix(2400, "ret");
    publish_raw(&channel, &webhooks).await;
    wait_until(Duration::from_secs(120), "all raw messages settled", || {
        worker.readiness().1["acked"].as_u64() == Some(webhooks.len() as u64)
    });
    let events: Vec<String> = webhooks
        .iter()
        .filter_map(|w| expected(w).ok())
        .flatten()
        .map(|e| e.id.to_string())
        .collect();

    // Read from the first offset still kept until the newest event arrives.
    channel
        .basic_qos(500, BasicQosOptions::default())
        .await
        .unwrap();
    let newest = events.last().unwrap().clone();
    let mut kept = Vec::new();
    let mut bytes = 0usize;
    let mut first_offset = None;
    let history = {
        let mut args = FieldTable::default();
        args.insert(
            "x-stream-offset".into(),
            AMQPValue::LongString("first".into()),
        );
        channel
            .basic_consume(
                HISTORY.into(),
                "".into(),
                lapin::options::BasicConsumeOptions::default(),
                args,
            )
            .await
            .unwrap()
    };
    let mut history = history;
    while kept.last() != Some(&newest) {
        use futures_lite::StreamExt;
        let d = tokio::time::timeout(Duration::from_secs(30), history.next())
            .await
            .expect("the newest event within 30 s")
            .unwrap()
            .unwrap();
        if first_offset.is_none() {
            first_offset = d.properties.headers().as_ref().and_then(|h| {
                match h.inner().get("x-stream-offset") {
                    Some(AMQPValue::LongLongInt(n)) => Some(*n),
                    _ => None,
                }
            });
        }
        bytes += d.data.len();
        kept.push(message_id(&d));
        d.acker.ack(Default::default()).await.unwrap();
    }
    let total: usize = events.len();
    assert!(
        first_offset.unwrap() > 0 && kept.len() < total / 2,
        "old segments dropped: {} of {total} kept, first offset {first_offset:?}",
        kept.len()
    );
    assert!(
        bytes <= 1_048_576 + 2 * 65_536,
        "{bytes} bytes of bodies kept"
    );
    assert_eq!(
        kept[..],
        events[total - kept.len()..],
        "what is kept is the newest events, in order"
    );
}

/// The stream deleted while the worker runs (by an operator, a policy, a broker reset):
/// the history's copies come back (they are mandatory), the worker declares its
/// topology again, which makes the stream anew with its retention, and every event
/// stored after the deletion is in the new stream; the raw messages are acked only then.
#[tokio::test(flavor = "multi_thread")]
async fn a_history_stream_deleted_under_the_worker_is_made_again_and_misses_nothing() {
    let vhost = TestVhost::new("history-deleted");
    let worker = WorkerProcess::start(
        &vhost,
        &with_history(&[
            ("NORMALIZER__HISTORY__MAX_BYTES", "50000000"),
            ("NORMALIZER__HISTORY__SEGMENT_BYTES", "1000000"),
        ]),
    );
    worker.wait_ready(Duration::from_secs(20));
    let conn = vhost.connect().await;
    let channel = conn.create_channel().await.unwrap();
    let before = webhook_mix(10, "hist-before");
    publish_raw(&channel, &before).await;
    wait_until(
        Duration::from_secs(30),
        "the first raw messages settled",
        || worker.readiness().1["acked"].as_u64() == Some(before.len() as u64),
    );
    channel
        .queue_delete(
            HISTORY.into(),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await
        .expect("delete the history stream");

    let after = webhook_mix(30, "hist-after");
    publish_raw(&channel, &after).await;
    let total = (before.len() + after.len()) as u64;
    wait_until(Duration::from_secs(60), "every raw message settled", || {
        worker.readiness().1["acked"].as_u64() == Some(total)
    });
    let mut want: Vec<String> = after
        .iter()
        .filter_map(|w| expected(w).ok())
        .flatten()
        .map(|e| e.id.to_string())
        .collect();
    want.sort();
    assert!(!want.is_empty());
    let arguments = vhost.queue_arguments();
    let stream = arguments
        .get(HISTORY)
        .unwrap_or_else(|| panic!("no history stream after the deletion: {arguments:?}"));
    assert!(
        stream.contains("x-max-length-bytes") && stream.contains("50000000"),
        "made anew without its retention: {stream}"
    );
    let reader = conn.create_channel().await.unwrap();
    let kept = read_stream(&reader, HISTORY, want.len(), Duration::from_secs(30)).await;
    let mut got: Vec<String> = kept.iter().map(message_id).collect();
    got.sort();
    assert_eq!(got, want, "every event stored after the deletion, once");
    assert!(
        worker
            .logs()
            .iter()
            .any(|l| l.contains("the history's copies came back unroutable")),
        "the deletion went unreported"
    );
}

/// With `amqp.declare_topology` off the worker declares nothing: the stream deleted
/// under it stops publishing, with `/readyz` naming the stream, and nothing is acked
/// with its history copy lost; once the topology is declared again
/// (`webhook-normalizer topology`), every raw message is acked and its events are in the
/// new stream.
#[tokio::test(flavor = "multi_thread")]
async fn without_declaring_a_deleted_history_stream_stops_publishing_until_declared() {
    let vhost = TestVhost::new("history-deleted-undeclared");
    let settings = with_history(&[
        ("NORMALIZER__HISTORY__MAX_BYTES", "50000000"),
        ("NORMALIZER__HISTORY__SEGMENT_BYTES", "1000000"),
    ]);
    succeeded(&run_command_with(&vhost, &["topology"], &settings));
    let mut worker_settings = settings.clone();
    worker_settings.push(("NORMALIZER__AMQP__DECLARE_TOPOLOGY", "false"));
    let worker = WorkerProcess::start(&vhost, &worker_settings);
    worker.wait_ready(Duration::from_secs(20));
    let conn = vhost.connect().await;
    let channel = conn.create_channel().await.unwrap();
    channel
        .queue_delete(
            HISTORY.into(),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await
        .expect("delete the history stream");

    let webhooks = webhook_mix(10, "hist-undeclared");
    publish_raw(&channel, &webhooks).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, doc) = worker.readiness();
        if status == 503
            && doc["reason"]
                .as_str()
                .is_some_and(|r| r.contains("events.history"))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "readiness does not name the stream: {status} {doc}\n{}",
            worker.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        worker.readiness().1["acked"].as_u64(),
        Some(0),
        "acked with the history's copy lost"
    );

    succeeded(&run_command_with(&vhost, &["topology"], &settings));
    wait_until(Duration::from_secs(60), "every raw message settled", || {
        worker.readiness().1["acked"].as_u64() == Some(webhooks.len() as u64)
    });
    let want = webhooks
        .iter()
        .filter_map(|w| expected(w).ok())
        .map(|events| events.len())
        .sum::<usize>();
    let reader = conn.create_channel().await.unwrap();
    let kept = read_stream(&reader, HISTORY, want, Duration::from_secs(30)).await;
    let ids: std::collections::BTreeSet<String> = kept.iter().map(message_id).collect();
    assert_eq!(ids.len(), want, "each event once");
}

/// A stream declared earlier with other retention: queue arguments cannot change, so the
/// worker is not ready, and says which stream and where to read what to do.
#[tokio::test(flavor = "multi_thread")]
async fn other_retention_on_an_existing_stream_is_named_with_what_to_do() {
    let vhost = TestVhost::new("history-changed");
    let conn = vhost.connect().await;
    let channel = conn.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    args.insert("x-max-age".into(), AMQPValue::LongString("3600s".into()));
    channel
        .queue_declare(
            HISTORY.into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .unwrap();
    let worker = WorkerProcess::start(&vhost, &with_history(&[]));
    wait_until(Duration::from_secs(20), "/readyz to say why", || {
        let (status, doc) = worker.readiness();
        status == 503
            && doc["reason"].as_str().is_some_and(|r| {
                r.contains("PRECONDITION_FAILED")
                    && r.contains("stream events.history")
                    && r.contains("Event history")
            })
    });
}

fn history_command(vhost: &TestVhost, args: &[&str]) -> std::process::Output {
    run_command(vhost, &[&["history"], args].concat())
}

fn succeeded(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// The ids a replay listed (type, id, time kept, bytes), in order.
fn listed_ids(listing: &str) -> Vec<String> {
    listing
        .lines()
        .map(|l| l.split('\t').nth(1).unwrap().to_owned())
        .collect()
}

/// Starts a worker with the history on, publishes `n` raw messages of the mix nobody is
/// bound for, and waits until all are settled: every event is in `events.unrouted` and
/// in the history. Returns the worker and the events' (type, id), in publish order.
async fn kept_while_nobody_was_bound(
    vhost: &TestVhost,
    n: usize,
    tag: &str,
) -> (WorkerProcess, lapin::Connection, Vec<(String, String)>) {
    let worker = WorkerProcess::start(vhost, &with_history(&[]));
    worker.wait_ready(Duration::from_secs(20));
    let conn = vhost.connect().await;
    let channel = conn.create_channel().await.unwrap();
    let webhooks = webhook_mix(n, tag);
    publish_raw(&channel, &webhooks).await;
    wait_until(Duration::from_secs(60), "all raw messages settled", || {
        worker.readiness().1["acked"].as_u64() == Some(webhooks.len() as u64)
    });
    let events = webhooks
        .iter()
        .filter_map(|w| expected(w).ok())
        .flatten()
        .map(|e| (e.event_type.to_string(), e.id.to_string()))
        .collect();
    (worker, conn, events)
}

/// Events published while no team was bound are copied into a queue bound later, byte
/// for byte with the same ids and properties as published, and nothing else changes:
/// `events.unrouted` keeps what it kept, and the history still holds every event.
#[tokio::test(flavor = "multi_thread")]
async fn replay_backfills_a_queue_bound_later_byte_for_byte() {
    let vhost = TestVhost::new("history-replay");
    let (_worker, conn, events) = kept_while_nobody_was_bound(&vhost, 40, "back").await;
    let channel = conn.create_channel().await.unwrap();
    let deel: Vec<String> = events
        .iter()
        .filter(|(t, _)| t.starts_with("deel."))
        .map(|(_, id)| id.clone())
        .collect();
    assert!(deel.len() >= 3 && deel.len() < events.len());

    // A team binds for Deel after the fact.
    capture_queue(&channel, "team.deel", "events.canonical", "deel.#").await;
    let dry = succeeded(&history_command(
        &vhost,
        &[
            "replay",
            "--type",
            "deel.#",
            "--to-queue",
            "team.deel",
            "--dry-run",
        ],
    ));
    assert_eq!(listed_ids(&dry), deel, "listed in the order kept");
    assert_eq!(
        queue_depth(&channel, "team.deel").await,
        0,
        "a dry run copies nothing"
    );

    let out = history_command(
        &vhost,
        &["replay", "--type", "deel.#", "--to-queue", "team.deel"],
    );
    assert_eq!(listed_ids(&succeeded(&out)), deel);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{} copied to team.deel and confirmed", deel.len())),
        "{stderr}"
    );
    let copied = get_all(&channel, "team.deel").await;
    assert_eq!(copied.iter().map(message_id).collect::<Vec<_>>(), deel);

    // Byte for byte what the worker kept, and properties as it published them: the
    // unrouted queue's copies less what keeping them added.
    let unrouted = get_all(&channel, UNROUTED).await;
    assert_eq!(
        unrouted.len(),
        events.len(),
        "events.unrouted keeps what it kept"
    );
    let kept: BTreeMap<String, &Delivery> = unrouted.iter().map(|d| (message_id(d), d)).collect();
    for d in &copied {
        let original = kept[&message_id(d)];
        assert_eq!(d.data, original.data);
        assert_eq!(
            properties_without(d, &["x-delivery-count"]),
            properties_without(
                original,
                &[
                    "x-delivery-count",
                    "x-normalizer-kept-at",
                    "x-normalizer-unrouted-routing-key"
                ]
            )
        );
        assert_eq!(
            d.routing_key.as_str(),
            "team.deel",
            "through the default exchange"
        );
    }

    // The history is as it was: every event, once.
    let stats = succeeded(&history_command(&vhost, &["stats"]));
    let total: u64 = stats
        .lines()
        .skip(1)
        .map(|l| l.split('\t').nth(1).unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(total as usize, events.len(), "{stats}");

    // A queue that does not exist is refused before anything is read.
    let out = history_command(&vhost, &["replay", "--type", "#", "--to-queue", "no.such"]);
    assert_eq!(out.status.code(), Some(69));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("queue no.such does not exist"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `--since` and `--until` select by when the worker kept an event.
#[tokio::test(flavor = "multi_thread")]
async fn since_and_until_select_by_the_time_kept() {
    let vhost = TestVhost::new("history-window");
    let (worker, conn, first) = kept_while_nobody_was_bound(&vhost, 12, "early").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let between = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let channel = conn.create_channel().await.unwrap();
    let later = webhook_mix(12, "late");
    publish_raw(&channel, &later).await;
    wait_until(
        Duration::from_secs(60),
        "the later messages settled",
        || worker.readiness().1["acked"].as_u64() == Some(24),
    );
    let second: Vec<String> = later
        .iter()
        .filter_map(|w| expected(w).ok())
        .flatten()
        .map(|e| e.id.to_string())
        .collect();
    capture_queue(&channel, "team.all", "events.canonical", "#").await;
    let at = between.to_rfc3339();
    let listing = |window: &[&str]| {
        let args = [
            &[
                "replay",
                "--type",
                "#",
                "--to-queue",
                "team.all",
                "--dry-run",
            ],
            window,
        ]
        .concat();
        listed_ids(&succeeded(&history_command(&vhost, &args)))
    };
    assert_eq!(listing(&["--since", &at]), second);
    assert_eq!(
        listing(&["--until", &at]),
        first.iter().map(|(_, id)| id.clone()).collect::<Vec<_>>()
    );
    assert_eq!(
        listing(&["--since", "1h"]).len(),
        first.len() + second.len()
    );
    let out = history_command(&vhost, &["stats", "--since", "10m", "--until", "1h"]);
    assert_eq!(
        out.status.code(),
        Some(64),
        "a window that ends before it starts"
    );
}

/// A replay killed half way leaves the team's queue with a prefix of the matching events,
/// in the order kept.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_replay_leaves_a_prefix() {
    let vhost = TestVhost::new("history-killed");
    let (_worker, conn, events) = kept_while_nobody_was_bound(&vhost, 60, "kill").await;
    let channel = conn.create_channel().await.unwrap();
    capture_queue(&channel, "team.all", "events.canonical", "#").await;
    let all = listed_ids(&succeeded(&history_command(
        &vhost,
        &[
            "replay",
            "--type",
            "#",
            "--to-queue",
            "team.all",
            "--dry-run",
        ],
    )));
    assert_eq!(all.len(), events.len());
    let mut replay = std::process::Command::new(worker_binary())
        .args([
            "history",
            "replay",
            "--type",
            "#",
            "--to-queue",
            "team.all",
            "--rate",
            "20",
        ])
        .env("NORMALIZER__AMQP__URL", vhost.url())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(30), "a few events copied", || {
        vhost.queue_messages("team.all").unwrap_or(0) >= 5
    });
    replay.kill().unwrap();
    replay.wait().unwrap();
    let copied: Vec<String> = get_all(&channel, "team.all")
        .await
        .iter()
        .map(message_id)
        .collect();
    assert!(
        copied.len() >= 5 && copied.len() < all.len(),
        "{} of {}",
        copied.len(),
        all.len()
    );
    assert_eq!(copied, all[..copied.len()], "a prefix, in the order kept");
}

/// `tail --since` shows events kept before it started, then those to come, read from the
/// history: it declares no queue, takes nothing, and with it running `events.unrouted`
/// keeps what it keeps without it. Without the history, `--since` is refused.
#[tokio::test(flavor = "multi_thread")]
async fn tail_since_shows_past_events_and_takes_nothing() {
    let vhost = TestVhost::new("history-tail");
    let (worker, conn, past) = kept_while_nobody_was_bound(&vhost, 12, "past").await;
    let channel = conn.create_channel().await.unwrap();
    let env = with_history(&[]);
    let queues_before: Vec<String> = {
        let mut q: Vec<String> = vhost.queue_arguments().into_keys().collect();
        q.sort();
        q
    };

    // Following from 10 minutes back: the past events, then new ones as they come.
    let mut tail = std::process::Command::new(worker_binary())
        .args(["tail", "--since", "10m", "#"])
        .env("NORMALIZER__AMQP__URL", vhost.url())
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = tail.stdout.take().unwrap();
    let lines = std::thread::spawn(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<String>>()
    });
    let later = webhook_mix(12, "later");
    publish_raw(&channel, &later).await;
    wait_until(
        Duration::from_secs(60),
        "the later messages settled",
        || worker.readiness().1["acked"].as_u64() == Some(24),
    );
    let future: Vec<(String, String)> = later
        .iter()
        .filter_map(|w| expected(w).ok())
        .flatten()
        .map(|e| (e.event_type.to_string(), e.id.to_string()))
        .collect();
    let all = past.len() + future.len();
    wait_until(Duration::from_secs(30), "tail to print every event", || {
        vhost.queue_messages(UNROUTED) == Some(all as u64)
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut queues_during: Vec<String> = vhost.queue_arguments().into_keys().collect();
    queues_during.sort();
    tail.kill().unwrap();
    tail.wait().unwrap();
    let printed: Vec<String> = lines
        .join()
        .unwrap()
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let mut want: Vec<String> = past
        .iter()
        .chain(&future)
        .map(|(_, id)| id.clone())
        .collect();
    let mut got = printed.clone();
    want.sort();
    got.sort();
    assert_eq!(got, want, "each event once, past and to come");
    assert_eq!(queues_during, queues_before, "no queue of tail's own");
    assert_eq!(
        queue_depth(&channel, UNROUTED).await as usize,
        all,
        "events.unrouted keeps what it kept"
    );

    // A type pattern, from the past only, with a limit.
    let deel = past.iter().filter(|(t, _)| t.starts_with("deel.")).count();
    let out = run_command_with(
        &vhost,
        &[
            "tail",
            "--since",
            "1h",
            "--limit",
            &deel.to_string(),
            "deel.#",
        ],
        &env,
    );
    let shown = succeeded(&out);
    assert_eq!(shown.lines().count(), deel);
    for line in shown.lines() {
        let event: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(
            event["type"].as_str().unwrap().starts_with("deel."),
            "{line}"
        );
    }

    // Without the history: refused, with why.
    let out = run_command(&vhost, &["tail", "--since", "10m"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("history.enabled is off"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `trace` finds what a webhook became by any of its ids: the events of a raw message
/// (by the raw message id, an event id, the vendor event id) from the history, and the
/// dead letter of a failed one from the dead-letter queue; every queue stays as it was;
/// nothing found is exit 1.
#[tokio::test(flavor = "multi_thread")]
async fn trace_finds_the_events_and_the_dead_letter_of_a_webhook() {
    let vhost = TestVhost::new("history-trace");
    let worker = WorkerProcess::start(&vhost, &with_history(&[]));
    worker.wait_ready(Duration::from_secs(20));
    let conn = vhost.connect().await;
    let channel = conn.create_channel().await.unwrap();
    let ok = RawWebhook::new(
        fixture("deel/contract.created.json"),
        Some("deel"),
        "trace-ok",
    );
    let bad = RawWebhook::new(b"{ not json".to_vec(), Some("deel"), "trace-bad");
    // Readable, with the vendor's event id, but not a Deel event the worker can map (its
    // type is a number): a dead letter found by that id.
    let mut unreadable: serde_json::Value =
        serde_json::from_slice(&fixture("deel/contract.created.json")).unwrap();
    unreadable["data"]["meta"]["event_type"] = serde_json::json!(7);
    unreadable["data"]["meta"]["tracking_id"] = serde_json::json!("trace-dead-vendor-id");
    let unreadable = RawWebhook::new(
        serde_json::to_vec(&unreadable).unwrap(),
        Some("deel"),
        "trace-unreadable",
    );
    let mut webhooks = webhook_mix(10, "noise");
    webhooks.insert(4, ok.clone());
    webhooks.push(bad.clone());
    webhooks.push(unreadable.clone());
    publish_raw(&channel, &webhooks).await;
    wait_until(Duration::from_secs(60), "all raw messages settled", || {
        worker.readiness().1["acked"].as_u64() == Some(webhooks.len() as u64)
    });
    let ok_events = expected(&ok).unwrap();
    assert!(!ok_events.is_empty());
    let unrouted_before = queue_depth(&channel, UNROUTED).await;
    let dead_before = queue_depth(&channel, "normalizer.dead-letter").await;
    let trace = |id: &str| run_command_with(&vhost, &["trace", id], &with_history(&[]));
    let event_lines = |out: &std::process::Output| -> Vec<Vec<String>> {
        succeeded(out)
            .lines()
            .filter(|l| l.starts_with("event\t"))
            .map(|l| l.split('\t').map(str::to_owned).collect())
            .collect()
    };

    // By the raw message id: every event it became, delivered or kept unrouted.
    let lines = event_lines(&trace("trace-ok"));
    let ids: Vec<&str> = lines.iter().map(|l| l[2].as_str()).collect();
    let want: Vec<String> = ok_events.iter().map(|e| e.id.to_string()).collect();
    assert_eq!(ids, want);
    for (line, event) in lines.iter().zip(&ok_events) {
        assert_eq!(line[1], event.event_type.to_string());
        assert_eq!(line[3], "unrouted", "nobody is bound");
        assert_eq!(line[5], "by raw message id");
    }
    // By the event's own id, and by the vendor's event id.
    let first = &ok_events[0];
    let lines = event_lines(&trace(&first.id.to_string()));
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0][5], "by event id");
    let vendor_id = first
        .vendoreventid
        .clone()
        .expect("a Deel event has its vendor id");
    let lines = event_lines(&trace(&vendor_id));
    assert!(
        !lines.is_empty() && lines.iter().all(|l| l[5] == "by vendor event id"),
        "{lines:?}"
    );

    // The failed one: its dead letter, kind and reason.
    let out = trace("trace-bad");
    let text = succeeded(&out);
    let dead: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("dead-letter\t"))
        .collect();
    assert_eq!(dead.len(), 1, "{text}");
    assert!(
        dead[0].contains("deel.invalid_json") && dead[0].contains("trace-bad"),
        "{text}"
    );
    assert!(!text.contains("event\t"), "{text}");
    assert_eq!(
        dead[0].split('\t').nth(4),
        Some("by raw message id"),
        "{text}"
    );

    // A dead letter by the vendor's event id in its body.
    let text = succeeded(&trace("trace-dead-vendor-id"));
    let dead: Vec<Vec<&str>> = text
        .lines()
        .filter(|l| l.starts_with("dead-letter\t"))
        .map(|l| l.split('\t').collect())
        .collect();
    assert_eq!(dead.len(), 1, "{text}");
    assert_eq!(dead[0][2], "trace-unreadable", "{text}");
    assert_eq!(dead[0][4], "by a string in its body", "{text}");

    // Nothing found: exit 1. Every queue as it was.
    assert_eq!(trace("no-such-id").status.code(), Some(1));
    assert_eq!(queue_depth(&channel, UNROUTED).await, unrouted_before);
    assert_eq!(
        queue_depth(&channel, "normalizer.dead-letter").await,
        dead_before
    );
}
