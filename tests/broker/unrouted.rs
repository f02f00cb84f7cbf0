//! `events.unrouted`: bounded, and `webhook-normalizer unrouted stats|replay` sends kept
//! events on once a team binds for them, with the `dlq` walk's guarantees.

use std::collections::BTreeMap;
use std::process::Output;
use std::time::Duration;

use lapin::message::Delivery;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;

use crate::support::raw_amqp;
use crate::support::*;

const UNROUTED: &str = "events.unrouted";

fn unrouted_command(vhost: &TestVhost, args: &[&str]) -> Output {
    run_command(vhost, &[&["unrouted"], args].concat())
}

fn succeeded(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// The (type, id) of each expected event, in the order the worker publishes them.
fn expected_events(webhooks: &[RawWebhook]) -> Vec<(String, String)> {
    webhooks
        .iter()
        .filter_map(|w| expected(w).ok())
        .flatten()
        .map(|e| (e.event_type.to_string(), e.id.to_string()))
        .collect()
}

/// (type, id) of each delivery: the type from the routing key, or from the walk's header
/// on a copy it put back.
fn type_and_id(d: &Delivery) -> (String, String) {
    let event_type =
        header(d, "x-normalizer-unrouted-routing-key").unwrap_or_else(|| d.routing_key.to_string());
    (event_type, message_id(d))
}

fn has_delivery_count(d: &Delivery) -> bool {
    d.properties
        .headers()
        .as_ref()
        .is_some_and(|h| h.inner().contains_key("x-delivery-count"))
}

/// Nobody bound: every event lands in events.unrouted. `stats` counts them by type;
/// after a team binds `deel.#`, `replay --type deel.#` sends exactly the Deel events to
/// it (same ids, properties as published, in order) and takes them off the queue; the
/// others stay, same ids in the same order, no delivery count. Replaying a type still
/// nobody is bound for brings it back to the queue, as it was.
#[tokio::test(flavor = "multi_thread")]
async fn replay_sends_exactly_the_matching_types_once_a_team_binds() {
    let vhost = TestVhost::new("unrouted-replay");
    let worker = WorkerProcess::start(&vhost, &[]);
    worker.wait_ready(Duration::from_secs(20));
    let conn = vhost.connect().await;
    let channel = conn.create_channel().await.unwrap();
    let webhooks = webhook_mix(40, "unr");
    publish_raw(&channel, &webhooks).await;
    let events = expected_events(&webhooks);
    wait_until(Duration::from_secs(30), "all raw messages settled", || {
        worker.readiness().1["acked"].as_u64() == Some(webhooks.len() as u64)
    });
    assert_eq!(queue_depth(&channel, UNROUTED).await as usize, events.len());

    // stats: one line per type, counts as the library says.
    let stats = succeeded(&unrouted_command(&vhost, &["stats"]));
    let mut want: BTreeMap<&str, usize> = BTreeMap::new();
    for (t, _) in &events {
        *want.entry(t).or_default() += 1;
    }
    let got: BTreeMap<&str, usize> = stats
        .lines()
        .skip(1)
        .map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            (cols[0], cols[1].parse().unwrap())
        })
        .collect();
    assert_eq!(got, want, "{stats}");
    assert!(want.len() >= 3 && want.keys().any(|t| !t.starts_with("deel.")));
    // When each type's first event was kept, and when it is dropped (7 days later by
    // default): how close they are to the drop, not the events' own times.
    for line in stats.lines().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        let kept: chrono::DateTime<chrono::Utc> = cols[5].parse().expect(line);
        let dropped: chrono::DateTime<chrono::Utc> = cols[6].parse().expect(line);
        let ago = chrono::Utc::now() - kept;
        assert!(
            ago >= chrono::TimeDelta::zero() && ago < chrono::TimeDelta::minutes(2),
            "{line}"
        );
        assert_eq!(dropped - kept, chrono::TimeDelta::days(7), "{line}");
    }

    // A team binds for Deel, and the kept Deel events are sent on.
    capture_queue(&channel, "team.deel", "events.canonical", "deel.#").await;
    let dry = unrouted_command(&vhost, &["replay", "--type", "deel.#", "--dry-run"]);
    let (deel, others): (Vec<_>, Vec<_>) = events
        .iter()
        .cloned()
        .partition(|(t, _)| t.starts_with("deel."));
    assert_eq!(succeeded(&dry).lines().count(), deel.len());
    assert_eq!(
        queue_depth(&channel, "team.deel").await,
        0,
        "a dry run moves nothing"
    );
    let replay = unrouted_command(&vhost, &["replay", "--type", "deel.#"]);
    let listed = succeeded(&replay);
    assert_eq!(listed.lines().count(), deel.len(), "{listed}");
    let summary = String::from_utf8_lossy(&replay.stderr);
    assert!(
        summary.starts_with(&format!(
            "{} sent to events.canonical, confirmed",
            deel.len()
        )),
        "{summary}"
    );
    // Its audit line (and the dry run's): filters and counts.
    for (out, dry_run, done) in [(&dry, true, 0), (&replay, false, deel.len())] {
        let err = String::from_utf8_lossy(&out.stderr);
        let line = err
            .lines()
            .find(|l| l.contains("audit: unrouted replay"))
            .unwrap_or_else(|| panic!("an audit line: {err}"));
        for part in [
            r#"filters="type=deel.#""#.to_owned(),
            format!("dry_run={dry_run}"),
            format!("matched={} done={done}", deel.len()),
            "queue=events.unrouted".to_owned(),
        ] {
            assert!(line.contains(&part), "{part} in {line}");
        }
    }
    let sent = read_messages(&channel, "team.deel", deel.len(), Duration::from_secs(20)).await;
    assert_eq!(sent.iter().map(type_and_id).collect::<Vec<_>>(), deel);
    for d in &sent {
        // As the worker published it: no walk header, its own routing key and properties.
        assert_eq!(
            d.properties.kind().as_ref().unwrap().as_str(),
            d.routing_key.as_str()
        );
        assert!(header(d, "x-normalizer-unrouted-routing-key").is_none());
        assert!(header(d, "cloudEvents_subject").is_some());
        assert!(!has_delivery_count(d));
    }

    // Authenticate events still have no taker: sent, they come back.
    let auth_count = others
        .iter()
        .filter(|(t, _)| t.starts_with("authenticate."))
        .count();
    assert!(auth_count > 0);
    let again = unrouted_command(&vhost, &["replay", "--type", "authenticate.#"]);
    assert_eq!(succeeded(&again).lines().count(), auth_count);
    // Every event is back at the tail: the ones kept as copies in walk order, the
    // replays that came back (copied once their return is known) a little later, in
    // their own order.
    let kept_deliveries = read_until_quiet(&channel, UNROUTED, Duration::from_millis(500)).await;
    assert!(kept_deliveries.iter().all(|d| !has_delivery_count(d)));
    let kept: Vec<(String, String)> = kept_deliveries.iter().map(type_and_id).collect();
    let of_type = |events: &[(String, String)], auth: bool| -> Vec<(String, String)> {
        events
            .iter()
            .filter(|(t, _)| t.starts_with("authenticate.") == auth)
            .cloned()
            .collect()
    };
    assert_eq!(of_type(&kept, true), of_type(&others, true));
    assert_eq!(of_type(&kept, false), of_type(&others, false));
    assert!(
        read_until_quiet(&channel, "team.deel", Duration::from_millis(300))
            .await
            .is_empty(),
        "nothing sent twice"
    );
}

/// The unrouted queue keeps at most `output.unrouted_max_length` events (the newest)
/// and none longer than `output.unrouted_max_age_secs`.
#[tokio::test(flavor = "multi_thread")]
async fn the_unrouted_queue_is_bounded() {
    let vhost = TestVhost::new("unrouted-bound");
    let worker = WorkerProcess::start(
        &vhost,
        &[
            ("NORMALIZER__OUTPUT__UNROUTED_MAX_LENGTH", "5"),
            ("NORMALIZER__OUTPUT__UNROUTED_MAX_AGE_SECS", "3600"),
        ],
    );
    worker.wait_ready(Duration::from_secs(20));
    let conn = vhost.connect().await;
    let channel = conn.create_channel().await.unwrap();
    let webhooks = webhook_mix(20, "bound");
    publish_raw(&channel, &webhooks).await;
    wait_until(Duration::from_secs(30), "all raw messages settled", || {
        worker.readiness().1["acked"].as_u64() == Some(20)
    });
    let events = expected_events(&webhooks);
    assert!(events.len() > 5);
    let kept = read_until_quiet(&channel, UNROUTED, Duration::from_millis(500)).await;
    assert_eq!(
        kept.iter().map(type_and_id).collect::<Vec<_>>(),
        events[events.len() - 5..],
        "the newest five"
    );
    // The age bound is a queue argument; expiry itself is the broker's (60 s at least).
    let arguments = &vhost.queue_arguments()[UNROUTED];
    assert!(
        arguments.contains(r#"{"x-message-ttl",3600000}"#),
        "{arguments}"
    );
    assert!(arguments.contains(r#"{"x-max-length",5}"#), "{arguments}");
}

/// An unrouted queue declared by an older version (no bound) makes the worker not ready,
/// saying which queue and argument and what to do; it is logged once, not per attempt.
#[tokio::test(flavor = "multi_thread")]
async fn a_queue_declared_with_other_arguments_is_reported_with_a_hint() {
    let vhost = TestVhost::new("unrouted-old");
    let conn = vhost.connect().await;
    let channel = conn.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        lapin::types::AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(
            UNROUTED.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await
        .unwrap();
    let worker = WorkerProcess::start(
        &vhost,
        &[
            ("NORMALIZER__AMQP__RECONNECT_INITIAL_MS", "50"),
            ("NORMALIZER__AMQP__RECONNECT_MAX_MS", "200"),
        ],
    );
    wait_until(Duration::from_secs(20), "/readyz to say why", || {
        let (status, doc) = worker.readiness();
        status == 503
            && doc["reason"].as_str().is_some_and(|r| {
                r.contains("inequivalent arg 'x-max-length' for queue 'events.unrouted'")
                    && r.contains("Changing a queue's arguments")
            })
    });
    std::thread::sleep(Duration::from_secs(1));
    let errors = worker
        .logs()
        .iter()
        .filter(|l| l.contains("\"level\":\"ERROR\"") && l.contains("inequivalent arg"))
        .count();
    assert_eq!(errors, 1, "logged once");
}

/// A walk's copy keeps the time its event has left in `events.unrouted` (from
/// `x-normalizer-kept-at`): an event kept 59 s ago in a queue that keeps them 60 s goes
/// back with about one second to live, one kept 61 s ago is not copied (the broker would
/// have dropped it), and one kept by an older version (no header) starts again, stamped
/// so that it does so only once.
#[tokio::test(flavor = "multi_thread")]
async fn a_walk_copy_keeps_the_time_its_event_had_left() {
    let vhost = TestVhost::new("unrouted-ttl");
    declare_topology(&vhost);
    let conn = vhost.connect().await;
    let channel = conn.create_channel().await.unwrap();
    let ago = |secs: i64| {
        webhook_normalizer::canonical::rfc3339_utc::format(
            &(chrono::Utc::now() - chrono::TimeDelta::seconds(secs)),
        )
    };
    for (id, kept_at) in [
        ("almost", Some(ago(59))),
        ("gone", Some(ago(61))),
        ("old", None),
    ] {
        let mut headers = FieldTable::default();
        headers.insert(
            "x-normalizer-unrouted-routing-key".into(),
            lapin::types::AMQPValue::LongString("deel.contract.created".into()),
        );
        if let Some(t) = kept_at {
            headers.insert(
                "x-normalizer-kept-at".into(),
                lapin::types::AMQPValue::LongString(t.as_str().into()),
            );
        }
        channel
            .basic_publish(
                "".into(),
                UNROUTED.into(),
                Default::default(),
                b"{}",
                lapin::BasicProperties::default()
                    .with_message_id(id.into())
                    .with_headers(headers),
            )
            .await
            .unwrap();
    }
    let out = run_command_with(
        &vhost,
        &["unrouted", "stats"],
        &[("NORMALIZER__OUTPUT__UNROUTED_MAX_AGE_SECS", "60")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(
        summary.contains("1 were older than output.unrouted_max_age_secs"),
        "{summary}"
    );
    let kept = read_until_quiet(&channel, UNROUTED, Duration::from_millis(500)).await;
    let by_id: BTreeMap<String, Option<u64>> = kept
        .iter()
        .map(|d| {
            let expiration = d
                .properties
                .expiration()
                .as_ref()
                .map(|e| e.as_str().parse().unwrap());
            (message_id(d), expiration)
        })
        .collect();
    assert_eq!(by_id.len(), 2, "{by_id:?}");
    let left = by_id["almost"].expect("a copy with the time it had left");
    assert!((500..=1000).contains(&left), "{left} ms left");
    let old = by_id["old"].expect("no header: its time starts, once");
    assert!((59_000..=60_000).contains(&old), "{old} ms left");
}

/// Looking at kept events does not keep them longer: after `unrouted stats` twice, 1.5 s
/// apart, in a queue that keeps events 60 s, every event (kept by the worker, or by an
/// older version without `x-normalizer-kept-at`) carries less than the 60 s it had, so
/// the broker drops it when it would have without the looking. The older one's time is
/// started once, by the first walk, and not again by every later walk.
#[tokio::test(flavor = "multi_thread")]
async fn looking_at_kept_events_does_not_keep_them_longer() {
    let vhost = TestVhost::new("unrouted-looking");
    let env = [("NORMALIZER__OUTPUT__UNROUTED_MAX_AGE_SECS", "60")];
    let worker = WorkerProcess::start(&vhost, &env);
    worker.wait_ready(Duration::from_secs(20));
    let conn = vhost.connect().await;
    let channel = conn.create_channel().await.unwrap();
    let webhooks: Vec<RawWebhook> = webhook_mix(20, &vhost.name)
        .into_iter()
        .filter(|w| expected(w).is_ok())
        .collect();
    let events = expected_events(&webhooks).len();
    let mut headers = FieldTable::default();
    headers.insert(
        "x-normalizer-unrouted-routing-key".into(),
        lapin::types::AMQPValue::LongString("deel.contract.created".into()),
    );
    publish_confirmed(
        &channel,
        "",
        UNROUTED,
        [(
            &b"{}"[..],
            lapin::BasicProperties::default()
                .with_message_id("kept-by-an-older-version".into())
                .with_headers(headers),
        )],
    )
    .await;
    publish_raw(&channel, &webhooks).await;
    wait_until(Duration::from_secs(20), "every event kept", || {
        worker.readiness().1["acked"].as_u64() == Some(webhooks.len() as u64)
    });
    drop(worker);
    for _ in 0..2 {
        succeeded(&run_command_with(&vhost, &["unrouted", "stats"], &env));
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let kept = read_until_quiet(&channel, UNROUTED, Duration::from_millis(500)).await;
    assert_eq!(kept.len(), events + 1);
    for d in &kept {
        let left: Option<u64> = d
            .properties
            .expiration()
            .as_ref()
            .map(|e| e.as_str().parse().unwrap());
        let left = left.unwrap_or_else(|| panic!("{}: no time left set", message_id(d)));
        assert!(left <= 58_500, "{}: {left} ms left of 60 s", message_id(d));
    }
}

/// `unrouted stats` leaves kept events whose properties the client cannot parse as they
/// are byte for byte as they were, but for what keeping them in a queue with a TTL adds
/// (the routing key and kept-at headers, the expiration) and no delivery count.
#[tokio::test(flavor = "multi_thread")]
async fn looking_leaves_properties_the_client_cannot_parse_byte_for_byte() {
    let vhost = TestVhost::new("unrouted-bytes");
    declare_topology(&vhost);
    let messages = crate::dlq::unparseable_by_the_client();
    crate::dlq::publish_with_control(&vhost, "", UNROUTED.as_bytes(), &messages).await;

    succeeded(&unrouted_command(&vhost, &["stats"]));

    let before = raw_amqp::take_all("127.0.0.1:5672", &vhost.name, "control").unwrap();
    let after = raw_amqp::take_all("127.0.0.1:5672", &vhost.name, UNROUTED).unwrap();
    assert_eq!(after.len(), messages.len());
    for m in &after {
        let parts = raw_amqp::PropertyParts::of(&m.properties).unwrap();
        assert!(parts.header(b"x-normalizer-kept-at").is_some());
        assert!(
            parts
                .fields
                .iter()
                .any(|(i, _)| *i == raw_amqp::prop::EXPIRATION)
        );
    }
    raw_amqp::assert_put_back_byte_for_byte(
        &before,
        &after,
        "x-normalizer-unrouted-routing-key",
        UNROUTED.as_bytes(),
        &[b"x-normalizer-kept-at"],
        &[raw_amqp::prop::EXPIRATION],
    );
}
