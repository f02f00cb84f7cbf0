//! `dlq replay` as an attacker would try it: dead letters whose headers a raw publisher
//! wrote, ones naming an exchange that is gone, ones replayed too often, absurd rates.
//! A replay only ever publishes to a configured input, one bad dead letter never stops
//! the rest, and every refusal is reported.

use std::time::Duration;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};

use crate::support::*;

const DLQ: &str = "normalizer.dead-letter";

fn dlq_command(vhost: &TestVhost, args: &[&str]) -> std::process::Output {
    run_command(vhost, &[&["dlq"], args].concat())
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Headers in the shape the worker writes on its dead letters, saying the raw message
/// came from `exchange` with `routing_key`.
fn worker_headers(kind: &str, exchange: &str, routing_key: &str) -> FieldTable {
    let mut headers = FieldTable::default();
    for (name, value) in [
        ("x-normalizer-error-kind", kind),
        ("x-normalizer-error", "no mapping for this event type"),
        ("x-normalizer-failed-at", "2026-01-01T00:00:00Z"),
        ("x-original-exchange", exchange),
        ("x-original-routing-key", routing_key),
    ] {
        headers.insert(name.into(), AMQPValue::LongString(value.into()));
    }
    headers
}

/// A CloudEvent, as a forger would write one to pass for the worker's output.
const FORGED_EVENT: &[u8] = br#"{"specversion":"1.0","id":"forged","source":"deel","type":"deel.contract.terminated","data":{}}"#;

/// The issue's reproduction: a raw message carrying the worker's dead-letter headers
/// (saying "a Deel `unknown_event_type` from `events.canonical`") and a short
/// `expiration`, published while no worker consumes. The broker dead-letters it with
/// those headers. `dlq peek` shows it as what it is (the broker's, vendor unknown, the
/// worker headers unverified); the documented replay of Deel `unknown_event_type`
/// matches nothing; and no replay at all puts anything on `events.canonical`.
#[tokio::test(flavor = "multi_thread")]
async fn a_raw_publisher_cannot_steer_a_replay() {
    let vhost = TestVhost::new("forgedreplay");
    declare_topology(&vhost);
    let (_conn, channel) = setup(&vhost).await;
    let mut headers = worker_headers(
        "unknown_event_type",
        "events.canonical",
        "deel.contract.terminated",
    );
    headers.insert(
        "x-normalizer-dead-letter-routing-key".into(),
        AMQPValue::LongString("deel.unknown_event_type".into()),
    );
    let forged = BasicProperties::default()
        .with_message_id("forged-raw".into())
        .with_app_id("webhook-normalizer".into())
        .with_expiration("1".into())
        .with_headers(headers.clone());
    publish_confirmed(
        &channel,
        "webhooks.raw",
        "gateway",
        [(FORGED_EVENT, forged)],
    )
    .await;

    // Straight to the dead-letter exchange too, as anyone allowed to write there (or a
    // 3.10 publisher forging `x-death` as well) could: no `x-death` at all.
    let direct = BasicProperties::default()
        .with_message_id("forged-direct".into())
        .with_app_id("webhook-normalizer".into())
        .with_headers(headers);
    publish_confirmed(
        &channel,
        "webhooks.dead-letter",
        "deel.unknown_event_type",
        [(FORGED_EVENT, direct)],
    )
    .await;
    let mut depth = 0;
    for _ in 0..100 {
        depth = queue_depth(&channel, DLQ).await;
        if depth == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(depth, 2, "the broker dead-lettered the expired raw message");

    // Twice: a walk's copy must read the same as the original did.
    for _ in 0..2 {
        let peek = dlq_command(&vhost, &["peek"]);
        assert!(peek.status.success(), "{}", stderr(&peek));
        let text = String::from_utf8_lossy(&peek.stdout).into_owned();
        let raw_line = text
            .lines()
            .find(|l| l.contains("forged-raw"))
            .unwrap_or_else(|| panic!("{text}"));
        let fields: Vec<&str> = raw_line.split('\t').collect();
        assert_eq!(fields[1], "unknown", "the broker made it: {raw_line}");
        assert_eq!(fields[3], "webhooks.raw/gateway", "{raw_line}");
        assert!(raw_line.contains("unverified"), "{raw_line}");
    }

    let documented = dlq_command(
        &vhost,
        &["replay", "--kind", "unknown_event_type", "--vendor", "deel"],
    );
    assert!(documented.status.success(), "{}", stderr(&documented));
    let everything = dlq_command(&vhost, &["replay"]);
    assert!(everything.status.success(), "{}", stderr(&everything));
    let said = stderr(&everything);
    assert!(
        said.contains("events.canonical") && said.contains("dead_letter.replay_exchanges"),
        "the refusal names the exchange and the setting: {said}"
    );
    assert!(
        read_until_quiet(&channel, "test.events", Duration::from_millis(500))
            .await
            .is_empty(),
        "nothing was published to events.canonical"
    );
    // The raw one went back where it was published (the raw queue): only the one naming
    // events.canonical stays.
    assert_eq!(queue_depth(&channel, DLQ).await, 1);
    assert_eq!(queue_depth(&channel, "normalizer.raw").await, 1);
}

/// One dead letter naming an exchange that no longer exists (a configured partition
/// exchange, since deleted) does not stop the replay: the ones behind it are replayed,
/// it stays, and the report names the missing exchange.
#[tokio::test(flavor = "multi_thread")]
async fn a_missing_exchange_stops_no_replay() {
    let vhost = TestVhost::new("replaymissing");
    declare_topology(&vhost);
    let (_conn, channel) = setup(&vhost).await;
    let gone = BasicProperties::default()
        .with_message_id("to-gone".into())
        .with_headers(worker_headers("invalid_json", "webhooks.raw.p7", "gateway"));
    let fine = |i: usize| {
        BasicProperties::default()
            .with_message_id(format!("fine-{i}").into())
            .with_headers(worker_headers("invalid_json", "webhooks.raw", "gateway"))
    };
    publish_confirmed(
        &channel,
        "webhooks.dead-letter",
        "deel.invalid_json",
        [
            (&b"{}"[..], fine(0)),
            (&b"{}"[..], gone),
            (&b"{}"[..], fine(1)),
            (&b"{}"[..], fine(2)),
        ],
    )
    .await;
    let replay = run_command_with(
        &vhost,
        &["dlq", "replay"],
        &[(
            "NORMALIZER__DEAD_LETTER__REPLAY_EXCHANGES",
            r#"["webhooks.raw.p7"]"#,
        )],
    );
    let said = stderr(&replay);
    assert!(replay.status.success(), "{said}");
    assert!(said.contains("webhooks.raw.p7"), "{said}");
    assert!(!said.contains("reading normalizer.dead-letter"), "{said}");
    assert_eq!(queue_depth(&channel, "normalizer.raw").await, 3);
    assert_eq!(queue_depth(&channel, DLQ).await, 1);
    let peek = dlq_command(&vhost, &["peek"]);
    assert!(String::from_utf8_lossy(&peek.stdout).contains("to-gone"));
}

/// A dead letter replayed `dead_letter.max_replays` times already is not replayed again
/// (it stays, and the report says how many and how to override); with
/// `--ignore-replay-limit` it is.
#[tokio::test(flavor = "multi_thread")]
async fn the_replay_limit_holds_and_can_be_overridden() {
    let vhost = TestVhost::new("replaylimit");
    declare_topology(&vhost);
    let (_conn, channel) = setup(&vhost).await;
    let with_count = |id: &str, count: i64| {
        let mut headers = worker_headers("invalid_json", "webhooks.raw", "gateway");
        headers.insert("x-replay-count".into(), AMQPValue::LongLongInt(count));
        BasicProperties::default()
            .with_message_id(id.into())
            .with_headers(headers)
    };
    publish_confirmed(
        &channel,
        "webhooks.dead-letter",
        "deel.invalid_json",
        [
            (&b"{}"[..], with_count("worn-out", 5)),
            (&b"{}"[..], with_count("fresh", 4)),
        ],
    )
    .await;
    let replay = dlq_command(&vhost, &["replay"]);
    let said = stderr(&replay);
    assert!(replay.status.success(), "{said}");
    assert!(
        said.contains("1 not replayed") && said.contains("--ignore-replay-limit"),
        "{said}"
    );
    assert_eq!(queue_depth(&channel, "normalizer.raw").await, 1);
    assert_eq!(queue_depth(&channel, DLQ).await, 1);

    let forced = dlq_command(&vhost, &["replay", "--ignore-replay-limit"]);
    assert!(forced.status.success(), "{}", stderr(&forced));
    assert_eq!(queue_depth(&channel, "normalizer.raw").await, 2);
    assert_eq!(queue_depth(&channel, DLQ).await, 0);
}

/// A rate so small that its pause overflows is refused as an argument (exit 2), for
/// both replays, instead of panicking mid-walk.
#[tokio::test(flavor = "multi_thread")]
async fn an_absurd_rate_is_refused_not_a_panic() {
    let vhost = TestVhost::new("replayrate");
    declare_topology(&vhost);
    let (_conn, channel) = setup(&vhost).await;
    publish_confirmed(
        &channel,
        "webhooks.dead-letter",
        "deel.invalid_json",
        [(
            &b"{}"[..],
            BasicProperties::default().with_headers(worker_headers(
                "invalid_json",
                "webhooks.raw",
                "gateway",
            )),
        )],
    )
    .await;
    for command in [["dlq", "replay"], ["unrouted", "replay"]] {
        let out = run_command(&vhost, &[&command[..], &["--rate", "1e-300"]].concat());
        assert_eq!(out.status.code(), Some(2), "{command:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("--rate"), "{}", stderr(&out));
    }
    assert_eq!(queue_depth(&channel, DLQ).await, 1);
}

/// A gateway that hints every body as Deel: an Entuitive body is dead-lettered with a
/// reason that says the hint may be wrong, and `dlq replay --as-vendor entuitive` sends
/// it back hinted right, so the worker makes its event (no export, jq or republish).
#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_hint_is_said_and_corrected_by_a_replay() {
    let vhost = TestVhost::new("wronghint");
    declare_topology(&vhost);
    let (_conn, channel) = setup(&vhost).await;
    let worker = WorkerProcess::start(&vhost, &[]);
    worker.wait_ready(Duration::from_secs(20));
    let body = fixture("entuitive/user.created.json");
    publish_raw(
        &channel,
        &[RawWebhook::new(body.clone(), Some("deel"), "hinted-deel")],
    )
    .await;
    for _ in 0..100 {
        if queue_depth(&channel, DLQ).await == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let peek = dlq_command(&vhost, &["peek"]);
    let shown = String::from_utf8_lossy(&peek.stdout);
    assert!(
        shown.contains("the body fits the envelope of entuitive: the hint may be wrong"),
        "{shown}{}",
        stderr(&peek)
    );

    let replay = dlq_command(&vhost, &["replay", "--as-vendor", "entuitive"]);
    assert!(replay.status.success(), "{}", stderr(&replay));
    let events = read_messages(&channel, "test.events", 1, Duration::from_secs(20)).await;
    let want = expected(&RawWebhook::new(body, Some("entuitive"), "x")).unwrap();
    assert_eq!(message_id(&events[0]), want[0].id.to_string());
    assert_eq!(queue_depth(&channel, DLQ).await, 0);
}
