//! `webhook-normalizer dlq stats|peek`: counts that match what was dead-lettered, and
//! looking that leaves every dead letter as it was (same messages, order, content, no
//! delivery count).

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use futures_lite::StreamExt;
use lapin::BasicProperties;
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldArray, FieldTable};

use crate::support::raw_amqp::{self, RawProperties, RawPublisher, prop, table, value};
use crate::support::*;

const DLQ: &str = "normalizer.dead-letter";

fn dlq_command(vhost: &TestVhost, args: &[&str]) -> Output {
    run_command(vhost, &[&["dlq"], args].concat())
}

/// A dead letter as RabbitMQ makes one when a raw message passes the raw queue's
/// delivery limit: routing key `unknown.delivery_limit`, only `x-death`.
fn broker_dead_letter() -> BasicProperties {
    let mut death = FieldTable::default();
    death.insert(
        "reason".into(),
        AMQPValue::LongString("delivery_limit".into()),
    );
    death.insert(
        "queue".into(),
        AMQPValue::LongString("normalizer.raw".into()),
    );
    death.insert(
        "exchange".into(),
        AMQPValue::LongString("webhooks.raw".into()),
    );
    death.insert(
        "routing-keys".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongString(
            "gateway".into(),
        )])),
    );
    death.insert("time".into(), AMQPValue::Timestamp(1_767_225_600));
    death.insert("count".into(), AMQPValue::LongLongInt(1));
    let mut headers = FieldTable::default();
    headers.insert(
        "x-death".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])),
    );
    headers.insert(
        "x-first-death-reason".into(),
        AMQPValue::LongString("delivery_limit".into()),
    );
    BasicProperties::default()
        .with_message_id("broker-dl".into())
        .with_delivery_mode(2)
        .with_headers(headers)
}

/// 100 raw webhooks (5 not normalizable) and one broker-made dead letter: `stats`
/// counts each group as the library and the broker made them; `peek` lists all six, the
/// same twice; afterwards the queue holds the same six in the same order, bodies as
/// they were, none with a delivery count.
#[tokio::test(flavor = "multi_thread")]
async fn stats_and_peek_count_every_dead_letter_and_leave_each_as_it_was() {
    let vhost = TestVhost::new("dlq");
    let worker = WorkerProcess::start(&vhost, &[]);
    worker.wait_ready(Duration::from_secs(20));
    let (_conn, channel) = setup(&vhost).await;
    let webhooks = webhook_mix(100, "dlq");
    publish_raw(&channel, &webhooks).await;
    wait_until(Duration::from_secs(30), "every raw message settled", || {
        worker.readiness().1["acked"].as_u64() == Some(webhooks.len() as u64)
    });
    drop(worker);
    let failing: Vec<&RawWebhook> = webhooks.iter().filter(|w| expected(w).is_err()).collect();
    assert!(!failing.is_empty());
    let broker_body = b"{\"the\":\"raw body\"}".to_vec();
    publish_raw_with(
        &channel,
        "webhooks.dead-letter",
        "unknown.delivery_limit",
        &broker_body,
        broker_dead_letter(),
    )
    .await;
    let depth = queue_depth(&channel, DLQ).await;
    assert_eq!(depth as usize, failing.len() + 1);
    let mut in_order: Vec<String> = failing.iter().map(|w| w.message_id.clone()).collect();
    in_order.push("broker-dl".into());

    let stats = dlq_command(&vhost, &["stats"]);
    assert!(
        stats.status.success(),
        "{}",
        String::from_utf8_lossy(&stats.stderr)
    );
    let text = String::from_utf8_lossy(&stats.stdout).into_owned();
    let mut counted: std::collections::BTreeMap<String, u64> = Default::default();
    for line in text.lines().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        counted.insert(format!("{}.{}", cols[0], cols[1]), cols[2].parse().unwrap());
    }
    let mut want: std::collections::BTreeMap<String, u64> = Default::default();
    for w in &failing {
        let e = expected(w).unwrap_err();
        *want
            .entry(format!(
                "{}.{}",
                e.vendor().map_or("unknown", |v| v.key()),
                e.kind()
            ))
            .or_default() += 1;
    }
    want.insert("unknown.delivery_limit".into(), 1);
    assert_eq!(counted, want, "{text}");

    let first = dlq_command(&vhost, &["peek"]);
    let second = dlq_command(&vhost, &["peek"]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    // The same list in the same order; the first column (age) may tick between the two.
    let without_age = |out: &[u8]| -> Vec<String> {
        String::from_utf8_lossy(out)
            .lines()
            .map(|l| l.split_once('\t').map_or(l, |(_, rest)| rest).to_owned())
            .collect()
    };
    assert_eq!(
        without_age(&first.stdout),
        without_age(&second.stdout),
        "the same list, in the same order"
    );
    let lines: Vec<String> = String::from_utf8_lossy(&first.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len() as u32, depth);
    assert!(
        lines.last().unwrap().contains("\tbroker-dl\t"),
        "{lines:#?}"
    );
    let limited = dlq_command(
        &vhost,
        &["peek", "--limit", "1", "--kind", "delivery_limit"],
    );
    assert_eq!(String::from_utf8_lossy(&limited.stdout).lines().count(), 1);
    assert_eq!(
        queue_depth(&channel, DLQ).await,
        depth,
        "nothing taken away"
    );

    // Drain: the same messages in the same order, bodies intact, no delivery count.
    let mut consumer = take_from(&channel, DLQ).await;
    let mut ids = Vec::new();
    for _ in 0..depth {
        let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let count = d
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-delivery-count").cloned());
        assert_eq!(count, None, "a delivery count on {}", message_id(&d));
        if message_id(&d) == "broker-dl" {
            assert_eq!(d.data, broker_body);
        }
        ids.push(message_id(&d));
    }
    let listed: Vec<String> = lines
        .iter()
        .map(|l| l.split('\t').nth(5).unwrap().to_owned())
        .collect();
    assert_eq!(
        listed, in_order,
        "peek lists them in the order they were dead-lettered"
    );
    assert_eq!(
        ids, in_order,
        "and the queue still holds them in that order"
    );
}

/// Two walks at once cannot interleave: the second fails at once, saying why.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_walk_is_refused_while_one_runs() {
    let vhost = TestVhost::new("dlqlock");
    declare_topology(&vhost);
    let conn = vhost.connect().await;
    let channel = conn.create_channel().await.unwrap();
    // What a running walk holds.
    channel
        .queue_declare(
            format!("{DLQ}.lock").as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let out = dlq_command(&vhost, &["stats"]);
    assert_eq!(out.status.code(), Some(75));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another dlq command is working on normalizer.dead-letter"),
        "{err}"
    );
    drop(channel);
    let _ = conn.close(200, "done".into()).await;
    let out = dlq_command(&vhost, &["stats"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Event ids that arrive on `test.events` within `within`, until `want` are all there.
async fn events_until(
    channel: &lapin::Channel,
    want: &std::collections::BTreeSet<String>,
    within: Duration,
) -> std::collections::BTreeSet<String> {
    let mut got = std::collections::BTreeSet::new();
    let deadline = std::time::Instant::now() + within;
    while !want.is_subset(&got) && std::time::Instant::now() < deadline {
        for d in read_until_quiet(channel, "test.events", Duration::from_millis(300)).await {
            got.insert(message_id(&d));
        }
    }
    got
}

/// The Deel and Entuitive webhooks of `n` of the standard mix (the normalizable ones),
/// unsigned, dead-lettered as `invalid_signature` by a worker that requires both
/// vendors' signatures, which is then stopped: what a replay after a fix (a worker
/// without that requirement) starts from.
async fn dead_lettered_for_want_of_a_signature(
    vhost: &TestVhost,
    n: usize,
) -> (lapin::Connection, lapin::Channel, Vec<RawWebhook>) {
    let strict = WorkerProcess::start(
        vhost,
        &[
            ("NORMALIZER__SIGNATURES__DEEL__SECRETS", r#"["s3cret"]"#),
            (
                "NORMALIZER__SIGNATURES__ENTUITIVE__SECRETS",
                r#"["s3cret"]"#,
            ),
        ],
    );
    strict.wait_ready(Duration::from_secs(20));
    let (conn, channel) = setup(vhost).await;
    let webhooks: Vec<RawWebhook> = webhook_mix(n, &vhost.name)
        .into_iter()
        .filter(|w| expected(w).is_ok())
        .filter(|w| matches!(w.vendor, Some("deel" | "entuitive")))
        .collect();
    publish_raw(&channel, &webhooks).await;
    wait_until(Duration::from_secs(30), "every raw message settled", || {
        strict.readiness().1["acked"].as_u64() == Some(webhooks.len() as u64)
    });
    assert_eq!(queue_depth(&channel, DLQ).await as usize, webhooks.len());
    (conn, channel, webhooks)
}

/// The Deel webhooks, and the others' message ids in order.
fn split_deel(webhooks: &[RawWebhook]) -> (Vec<&RawWebhook>, Vec<String>) {
    let deel = webhooks
        .iter()
        .filter(|w| w.vendor == Some("deel"))
        .collect();
    let others = webhooks
        .iter()
        .filter(|w| w.vendor != Some("deel"))
        .map(|w| w.message_id.clone())
        .collect();
    (deel, others)
}

/// The message ids `dlq peek` lists, in its order (the queue's).
fn listed_message_ids(vhost: &TestVhost) -> Vec<String> {
    let peek = dlq_command(vhost, &["peek"]);
    assert!(
        peek.status.success(),
        "{}",
        String::from_utf8_lossy(&peek.stderr)
    );
    String::from_utf8_lossy(&peek.stdout)
        .lines()
        .map(|l| l.split('\t').nth(5).unwrap().to_owned())
        .collect()
}

/// Dead letters made by a worker that required signatures the webhooks lack
/// (`invalid_signature`) are replayed once it no longer does: `--dry-run` lists and moves nothing; `--vendor deel`
/// moves exactly the Deel ones, which the worker then normalizes, and leaves the others
/// in order; a broker-made dead letter replays too.
#[tokio::test(flavor = "multi_thread")]
async fn replay_moves_exactly_the_filtered_subset_and_the_worker_then_normalizes_it() {
    let vhost = TestVhost::new("replay");
    let (_conn, channel, webhooks) = dead_lettered_for_want_of_a_signature(&vhost, 20).await;
    let (deel, others) = split_deel(&webhooks);
    assert!(!deel.is_empty() && !others.is_empty());

    let dry = dlq_command(&vhost, &["replay", "--vendor", "deel", "--dry-run"]);
    assert!(
        dry.status.success(),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&dry.stdout).lines().count(),
        deel.len()
    );
    assert_eq!(
        queue_depth(&channel, DLQ).await as usize,
        webhooks.len(),
        "dry run moved nothing"
    );

    let worker = WorkerProcess::start(&vhost, &[]);
    worker.wait_ready(Duration::from_secs(20));
    let replay = dlq_command(&vhost, &["replay", "--vendor", "deel", "--rate", "100"]);
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&replay.stdout).lines().count(),
        deel.len()
    );
    let want: std::collections::BTreeSet<String> = deel
        .iter()
        .flat_map(|w| expected(w).unwrap())
        .map(|e| e.id.to_string())
        .collect();
    let got = events_until(&channel, &want, Duration::from_secs(30)).await;
    assert_eq!(got, want, "exactly the Deel ones' events");

    // The others stay, in order.
    let left = listed_message_ids(&vhost);
    assert_eq!(left, others);

    // A broker-made dead letter (delivery limit) of a valid Deel webhook replays too.
    let broker_made = webhook_mix(1, "replay-broker").remove(0);
    let mut props = broker_dead_letter().with_message_id("broker-dl".into());
    let mut headers = props.headers().clone().unwrap();
    headers.insert("x-vendor".into(), AMQPValue::LongString("deel".into()));
    headers.insert(
        "x-received-at".into(),
        AMQPValue::LongString(RECEIVED_AT.into()),
    );
    props = props.with_headers(headers);
    publish_raw_with(
        &channel,
        "webhooks.dead-letter",
        "unknown.delivery_limit",
        &broker_made.body,
        props,
    )
    .await;
    let replay = dlq_command(&vhost, &["replay", "--kind", "delivery_limit"]);
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    let want: std::collections::BTreeSet<String> = expected(&broker_made)
        .unwrap()
        .iter()
        .map(|e| e.id.to_string())
        .collect();
    let got = events_until(&channel, &want, Duration::from_secs(30)).await;
    assert!(want.is_subset(&got), "the broker-made dead letter's events");
    assert_eq!(queue_depth(&channel, DLQ).await as usize, others.len());
}

/// A replay killed midway (SIGKILL, no chance to clean up) loses nothing: every dead
/// letter is still in the queue or was replayed, and a second replay finishes the job;
/// the worker then makes every event (a message replayed and still dead-lettered, at
/// worst, makes the same event ids twice).
#[tokio::test(flavor = "multi_thread")]
async fn a_replay_killed_midway_loses_nothing() {
    let vhost = TestVhost::new("replaykill");
    let (_conn, channel, webhooks) = dead_lettered_for_want_of_a_signature(&vhost, 40).await;
    let worker = WorkerProcess::start(&vhost, &[]);
    worker.wait_ready(Duration::from_secs(20));

    // 10 a second; killed once a few have left the queue (the one in hand counts as gone
    // until the kill gives it back), well before the last.
    let child = Command::new(env!("CARGO_BIN_EXE_webhook-normalizer"))
        .args(["dlq", "replay", "--rate", "10"])
        .env("NORMALIZER__AMQP__URL", vhost.url())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while queue_depth(&channel, DLQ).await as usize > webhooks.len() - 3 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the replay never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = Command::new("kill")
        .args(["-9", &child.id().to_string()])
        .status();
    let killed = output_within(child, Duration::from_secs(10));
    assert!(!killed.status.success(), "killed before it finished");
    let left = queue_depth(&channel, DLQ).await as usize;
    assert!(
        left > 0 && left < webhooks.len(),
        "killed midway: {left} of {} left",
        webhooks.len()
    );

    let again = dlq_command(&vhost, &["replay"]);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let want: std::collections::BTreeSet<String> = webhooks
        .iter()
        .flat_map(|w| expected(w).unwrap())
        .map(|e| e.id.to_string())
        .collect();
    let got = events_until(&channel, &want, Duration::from_secs(30)).await;
    assert_eq!(got, want, "every message's events, none lost");
    wait_until(
        Duration::from_secs(10),
        "the dead-letter queue to empty",
        || worker.readiness().1["in_flight"].as_u64() == Some(0),
    );
    assert_eq!(queue_depth(&channel, DLQ).await, 0);
}

/// `export` writes exactly the matching dead letters (bodies byte for byte, in base64)
/// and leaves the queue as it was; `purge` refuses without `--yes` and then removes
/// exactly the matching ones, the others staying in order.
#[tokio::test(flavor = "multi_thread")]
async fn export_keeps_a_copy_and_purge_removes_exactly_what_matches() {
    use base64::Engine as _;
    let vhost = TestVhost::new("purge");
    let (_conn, channel, webhooks) = dead_lettered_for_want_of_a_signature(&vhost, 20).await;
    let (deel, others) = split_deel(&webhooks);

    let dir = std::env::temp_dir().join(format!("wn-export-{}", vhost.name));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("deel.jsonl");
    let export = dlq_command(
        &vhost,
        &["export", file.to_str().unwrap(), "--vendor", "deel"],
    );
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "bodies hold personal data: {mode:o}");
    let text = std::fs::read_to_string(&file).unwrap();
    let mut bodies: Vec<Vec<u8>> = text
        .lines()
        .map(|l| {
            let record: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(record["kind"], "invalid_signature");
            assert_eq!(
                record["message"]["headers"]["x-normalizer-error-kind"],
                "invalid_signature"
            );
            base64::engine::general_purpose::STANDARD
                .decode(record["body_base64"].as_str().unwrap())
                .unwrap()
        })
        .collect();
    let mut want: Vec<Vec<u8>> = deel.iter().map(|w| w.body.clone()).collect();
    bodies.sort();
    want.sort();
    assert_eq!(bodies, want);
    assert_eq!(queue_depth(&channel, DLQ).await as usize, webhooks.len());
    let again = dlq_command(&vhost, &["export", file.to_str().unwrap()]);
    assert!(!again.status.success(), "an export never overwrites a file");
    std::fs::remove_dir_all(&dir).unwrap();

    let refused = dlq_command(&vhost, &["purge", "--vendor", "deel"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("dlq export"));
    assert_eq!(queue_depth(&channel, DLQ).await as usize, webhooks.len());

    let purge = dlq_command(&vhost, &["purge", "--vendor", "deel", "--yes"]);
    assert!(
        purge.status.success(),
        "{}",
        String::from_utf8_lossy(&purge.stderr)
    );
    let left = listed_message_ids(&vhost);
    assert_eq!(left, others);
}

/// The `audit: …` line of `command` in `stderr` (the log's, or the plain one).
fn audit_line(stderr: &[u8], command: &str) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(&format!("audit: {command}")))
        .collect();
    assert_eq!(lines.len(), 1, "one audit line for {command}: {text}");
    lines[0].to_owned()
}

fn assert_has(line: &str, parts: &[&str]) {
    for part in parts {
        assert!(line.contains(part), "{part:?} in {line}");
    }
}

/// Every replay and purge, dry run or not, leaves one audit line on stderr (the log's
/// info event, target `audit`; a plain line when the log filter leaves it out): who (OS
/// and AMQP user), the filters, dry run or not, and the counts; a filter value that is
/// not a plain name is not shown.
#[tokio::test(flavor = "multi_thread")]
async fn every_replay_and_purge_leaves_an_audit_line() {
    let vhost = TestVhost::new("audit");
    let (_conn, channel, webhooks) = dead_lettered_for_want_of_a_signature(&vhost, 20).await;
    let (deel, others) = split_deel(&webhooks);
    let (deel, others) = (deel.len(), others.len());
    assert!(deel > 2 && others > 0);
    let as_auditor = [("USER", "auditor")];

    let dry = run_command_with(
        &vhost,
        &["dlq", "replay", "--vendor", "deel", "--dry-run"],
        &as_auditor,
    );
    assert!(dry.status.success());
    assert_has(
        &audit_line(&dry.stderr, "dlq replay"),
        &[
            "INFO",
            "os_user=auditor",
            "amqp_user=guest",
            &format!("vhost={}", vhost.name),
            "queue=normalizer.dead-letter",
            r#"filters="vendor=deel""#,
            "dry_run=true",
            &format!("matched={deel} done=0 kept={deel} refused=0"),
        ],
    );

    let replay = run_command_with(
        &vhost,
        &["dlq", "replay", "--vendor", "deel", "--limit", "2"],
        &as_auditor,
    );
    assert!(replay.status.success());
    assert_has(
        &audit_line(&replay.stderr, "dlq replay"),
        &[
            r#"filters="vendor=deel limit=2""#,
            "dry_run=false",
            &format!("matched={deel} done=2 kept={} refused=0", deel - 2),
        ],
    );

    // A message id that may be personal data is not shown; a purge says what it removed.
    let purge = run_command_with(
        &vhost,
        &["dlq", "purge", "--message-id", "jane@example.com", "--yes"],
        &as_auditor,
    );
    assert!(purge.status.success());
    let line = audit_line(&purge.stderr, "dlq purge");
    assert!(!line.contains("jane"), "{line}");
    assert_has(
        &line,
        &[
            r#"filters="message_id=(not shown: 16 bytes)""#,
            "matched=0 done=0",
        ],
    );

    // With the log at `warn`, the plain line.
    let purge = run_command_with(
        &vhost,
        &["dlq", "purge", "--vendor", "entuitive", "--yes"],
        &[("USER", "auditor"), ("RUST_LOG", "warn")],
    );
    assert!(purge.status.success());
    assert_has(
        &audit_line(&purge.stderr, "dlq purge"),
        &[
            "os_user=auditor",
            "amqp_user=guest",
            r#"filters="vendor=entuitive""#,
            "dry_run=false",
            &format!("matched={others} purged={others} kept=0 refused=0"),
        ],
    );
    assert_eq!(queue_depth(&channel, DLQ).await as usize, deel - 2);
}

/// A long walk shows a progress bar when stderr is a terminal (here a pseudo-terminal
/// from `script`), and nothing but the one-line summary when it is not.
#[tokio::test(flavor = "multi_thread")]
async fn a_long_walk_shows_progress_on_a_terminal_only() {
    let vhost = TestVhost::new("dlqprogress");
    declare_topology(&vhost);
    let conn = vhost.connect().await;
    let channel = conn.create_channel().await.unwrap();
    let body = br#"{"not": "a webhook"}"#;
    let dead_letter = BasicProperties::default()
        .with_message_id("filler".into())
        .with_headers(worker_dead_letter_headers());
    publish_confirmed(
        &channel,
        "",
        DLQ,
        (0..400).map(|_| (&body[..], dead_letter.clone())),
    )
    .await;

    let piped = dlq_command(&vhost, &["stats"]);
    let err = String::from_utf8_lossy(&piped.stderr);
    assert_eq!(err.lines().count(), 1, "only the summary: {err}");
    assert!(err.starts_with("400 dead letters read"), "{err}");

    let command = format!(
        "{} dlq stats >/dev/null",
        env!("CARGO_BIN_EXE_webhook-normalizer")
    );
    let child = Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .env("NORMALIZER__AMQP__URL", vhost.url())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script (util-linux) runs a command on a pseudo-terminal");
    let on_terminal = output_within(child, Duration::from_secs(60));
    assert!(on_terminal.status.success());
    let shown = String::from_utf8_lossy(&on_terminal.stdout);
    assert!(shown.contains("/400 dead letters"), "{shown:?}");
    assert!(shown.contains("400 dead letters read"), "{shown:?}");
    assert_eq!(queue_depth(&channel, DLQ).await, 400);
}

/// The headers of a dead letter the worker made (the shape the `dlq` commands read).
fn worker_dead_letter_headers() -> FieldTable {
    let mut headers = FieldTable::default();
    for (name, value) in [
        ("x-normalizer-error-kind", "invalid_json"),
        ("x-normalizer-error", "expected value at line 1 column 1"),
        ("x-normalizer-failed-at", "2026-01-01T00:00:00Z"),
        ("x-original-exchange", "webhooks.raw"),
        ("x-original-routing-key", "gateway"),
    ] {
        headers.insert(name.into(), AMQPValue::LongString(value.into()));
    }
    headers
}

/// Why the runbook says not to set `x-delivery-limit: -1` ("unlimited" on RabbitMQ 4.x)
/// on 3.x: there a message returned once to such a queue is dropped. On 4.x the same
/// message stays.
#[tokio::test(flavor = "multi_thread")]
async fn a_delivery_limit_of_minus_one() {
    let vhost = TestVhost::new("dlminus1");
    let conn = vhost.connect().await;
    let version = String::from_utf8(rabbitmqctl(&["version"]).stdout).unwrap();
    let version = version.trim();
    let channel = conn.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(-1));
    channel
        .queue_declare(
            "minus1".into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await
        .unwrap();
    publish_confirmed(
        &channel,
        "",
        "minus1",
        [(&b"kept?"[..], BasicProperties::default())],
    )
    .await;
    let got = channel
        .basic_get("minus1".into(), lapin::options::BasicGetOptions::default())
        .await
        .unwrap()
        .expect("the message");
    got.delivery
        .acker
        .reject(lapin::options::BasicRejectOptions { requeue: true })
        .await
        .unwrap();
    // Settled once the queue counts it neither ready nor unacknowledged, or ready.
    let _ = channel.close(200, "done".into()).await;
    let mut left = String::new();
    wait_until(Duration::from_secs(10), "the return to settle", || {
        let out = vhost.rabbitmqctl(&[
            "-q",
            "list_queues",
            "-p",
            &vhost.name,
            "--no-table-headers",
            "messages_ready",
            "messages_unacknowledged",
        ]);
        left = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        left.ends_with("\t0")
    });
    let left: u32 = left.split('\t').next().unwrap().parse().unwrap();
    if version.starts_with("3.") {
        assert_eq!(left, 0, "RabbitMQ {version} dropped it");
    } else {
        assert_eq!(left, 1, "RabbitMQ {version} kept it");
    }
}

/// Raw dead letters whose properties the AMQP client cannot take as they are (a
/// `message_id` that is not UTF-8, headers nested 40 deep, a repeated header name), and an
/// ordinary one; each body names its case.
pub(crate) fn unparseable_by_the_client() -> Vec<(RawProperties, Vec<u8>)> {
    let base = || {
        RawProperties::default()
            .short(prop::CONTENT_TYPE, b"application/json")
            .delivery_mode(2)
    };
    let vendor = || value::long_string(b"deel");
    vec![
        (
            base()
                .short(prop::MESSAGE_ID, b"id-\xff\xfe-1")
                .headers(table(&[(b"x-vendor", vendor())])),
            b"{\"case\":\"message_id not UTF-8\"}".to_vec(),
        ),
        (
            base().short(prop::MESSAGE_ID, b"deep").headers(table(&[
                (b"x-deep", value::nested_tables(40)),
                (b"x-vendor", vendor()),
            ])),
            b"{\"case\":\"headers nested 40 deep\"}".to_vec(),
        ),
        (
            base().short(prop::MESSAGE_ID, b"repeated").headers(table(&[
                (b"x-trace", value::long_string(b"1")),
                (b"x-vendor", vendor()),
                (b"x-trace", value::long_string(b"2")),
            ])),
            b"{\"case\":\"a repeated header name\"}".to_vec(),
        ),
        (
            // Headers in the order the client writes them (by name), values it writes as
            // they are: its own encoding gives the same bytes.
            base().short(prop::MESSAGE_ID, b"ordinary").headers(table(&[
                (b"a-first", value::long_string(b"1")),
                (b"x-vendor", vendor()),
            ])),
            b"{\"case\":\"ordinary\"}".to_vec(),
        ),
    ]
}

/// Publishes each message (byte for byte) to `exchange` with `routing_key`, and to a
/// quorum queue `control` declared here that nothing walks: what the broker gives back of
/// a message left alone, to compare with.
pub(crate) async fn publish_with_control(
    vhost: &TestVhost,
    exchange: &str,
    routing_key: &[u8],
    messages: &[(RawProperties, Vec<u8>)],
) {
    let conn = vhost.connect().await;
    let channel = conn.create_channel().await.unwrap();
    let mut quorum = FieldTable::default();
    quorum.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(
            "control".into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            quorum,
        )
        .await
        .unwrap();
    let _ = conn.close(200, "declared".into()).await;
    let mut publisher = RawPublisher::connect("127.0.0.1:5672", &vhost.name).unwrap();
    for (properties, body) in messages {
        publisher
            .publish(exchange, routing_key, properties, body)
            .unwrap();
        publisher.publish("", b"control", properties, body).unwrap();
    }
    publisher.close();
}

/// Looking (`dlq stats`, then `dlq peek`) at dead letters whose properties the client
/// cannot parse as they are leaves each byte for byte as it was: every property and
/// header entry, nested ones too, as the broker holds it, but for the walk's own header
/// (the routing key) and no delivery count.
#[tokio::test(flavor = "multi_thread")]
async fn looking_leaves_properties_the_client_cannot_parse_byte_for_byte() {
    let vhost = TestVhost::new("dlqbytes");
    declare_topology(&vhost);
    let messages = unparseable_by_the_client();
    let routing_key = b"unknown.invalid_properties";
    publish_with_control(&vhost, "webhooks.dead-letter", routing_key, &messages).await;

    for command in ["stats", "peek"] {
        let out = dlq_command(&vhost, &[command]);
        assert!(
            out.status.success(),
            "dlq {command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let before = raw_amqp::take_all("127.0.0.1:5672", &vhost.name, "control").unwrap();
    let after = raw_amqp::take_all("127.0.0.1:5672", &vhost.name, DLQ).unwrap();
    assert_eq!(
        after.iter().map(|m| &m.body).collect::<Vec<_>>(),
        messages.iter().map(|(_, b)| b).collect::<Vec<_>>(),
        "the same messages in the same order"
    );
    raw_amqp::assert_put_back_byte_for_byte(
        &before,
        &after,
        "x-normalizer-dead-letter-routing-key",
        routing_key,
        &[],
        &[],
    );
}

/// A dead letter whose properties the client cannot parse, and which nearly fills a
/// frame: its copy, with the walk's header, would not fit `frame_max`. It is left where
/// it was, as it was (the broker gives it back when the walk ends, its delivery count
/// one higher), and the command says so; the others are copied as usual.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_whose_copy_would_not_fit_a_frame_is_left_in_place() {
    let vhost = TestVhost::new("dlqframe");
    declare_topology(&vhost);
    let frame_max = RawPublisher::connect("127.0.0.1:5672", &vhost.name)
        .unwrap()
        .frame_max() as usize;
    let id = b"big-\xff";
    // Frame overhead 8, class to body size 12, flags 2, the message id, the table's
    // length 4, the padding entry's name, type and length: 40 bytes to spare, room for the
    // broker's `x-delivery-count` but not for the walk's header.
    let padding = frame_max - 40 - 8 - 12 - 2 - (1 + id.len()) - 4 - (1 + 9 + 1 + 4);
    let big = RawProperties::default()
        .short(prop::MESSAGE_ID, id)
        .headers(table(&[(
            b"x-padding",
            value::long_string(&vec![b'p'; padding]),
        )]));
    let mut messages = vec![(big, b"{\"case\":\"big\"}".to_vec())];
    messages.push(unparseable_by_the_client().pop().unwrap());
    let routing_key = b"unknown.invalid_properties";
    publish_with_control(&vhost, "webhooks.dead-letter", routing_key, &messages).await;

    let out = dlq_command(&vhost, &["stats"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(
            "1 could not be copied byte for byte; left in place, their delivery count rose by one"
        ),
        "{err}"
    );

    let before = raw_amqp::take_all("127.0.0.1:5672", &vhost.name, "control").unwrap();
    let after = raw_amqp::take_all("127.0.0.1:5672", &vhost.name, DLQ).unwrap();
    assert_eq!(after.len(), 2);
    let big_after = after.iter().find(|m| m.body == messages[0].1).unwrap();
    let parts = |m: &raw_amqp::RawMessage| {
        raw_amqp::PropertyParts::of(&m.properties)
            .unwrap()
            .without(&[b"x-delivery-count"], &[])
    };
    assert_eq!(parts(big_after), parts(&before[0]), "left as it was");
    raw_amqp::assert_put_back_byte_for_byte(
        &before[1..],
        &after,
        "x-normalizer-dead-letter-routing-key",
        routing_key,
        &[],
        &[],
    );
}

/// A replay of a dead letter whose properties the client cannot parse (a `message_id`
/// that is not UTF-8, headers nested 40 deep, a repeated header name) sends it on byte
/// for byte as it was, but for the replay's own edits: the dead-letter headers stripped,
/// `x-replay-count` added.
#[tokio::test(flavor = "multi_thread")]
async fn a_replay_sends_properties_the_client_cannot_parse_byte_for_byte() {
    let vhost = TestVhost::new("dlqreplaybytes");
    declare_topology(&vhost);
    let text = |s: &[u8]| value::long_string(s);
    let properties = RawProperties::default()
        .short(prop::CONTENT_TYPE, b"application/json")
        .short(prop::MESSAGE_ID, b"replayed-\xff")
        .delivery_mode(2)
        .headers(table(&[
            (b"x-vendor", text(b"deel")),
            (b"x-trace", text(b"1")),
            (b"x-deep", value::nested_tables(40)),
            (b"x-trace", text(b"2")),
            (b"x-normalizer-error-kind", text(b"invalid_properties")),
            (b"x-normalizer-error", text(b"message_id: not UTF-8")),
            (b"x-original-exchange", text(b"webhooks.raw")),
            (b"x-original-routing-key", text(b"gateway")),
        ]));
    let messages = vec![(properties, b"{\"case\":\"replayed\"}".to_vec())];
    publish_with_control(
        &vhost,
        "webhooks.dead-letter",
        b"deel.invalid_properties",
        &messages,
    )
    .await;

    let out = dlq_command(&vhost, &["replay", "--kind", "invalid_properties"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = raw_amqp::take_all("127.0.0.1:5672", &vhost.name, "control").unwrap();
    let replayed = raw_amqp::take_all("127.0.0.1:5672", &vhost.name, "normalizer.raw").unwrap();
    assert_eq!(
        replayed.len(),
        1,
        "no worker ran: the replay waits in the raw queue"
    );
    assert!(
        raw_amqp::take_all("127.0.0.1:5672", &vhost.name, DLQ)
            .unwrap()
            .is_empty()
    );
    assert_eq!(replayed[0].body, messages[0].1);
    let after = raw_amqp::PropertyParts::of(&replayed[0].properties).unwrap();
    let was = raw_amqp::PropertyParts::of(&before[0].properties).unwrap();
    assert_eq!(
        after.header(b"x-replay-count"),
        Some([b'l', 0, 0, 0, 0, 0, 0, 0, 1].as_slice())
    );
    assert_eq!(
        after.header(b"x-delivery-count"),
        was.header(b"x-delivery-count")
    );
    let stripped: &[&[u8]] = &[
        b"x-normalizer-error-kind",
        b"x-normalizer-error",
        b"x-original-exchange",
        b"x-original-routing-key",
    ];
    assert_eq!(
        after.without(&[b"x-replay-count", b"x-delivery-count"], &[]),
        was.without(&[stripped, &[b"x-delivery-count"]].concat(), &[]),
    );
}

/// A replay of such a dead letter that its exchange routes nowhere comes back, is told
/// apart from the others by what the client saw of it, and is kept byte for byte as it
/// was (its copy, like any walk's, with the routing key header).
#[tokio::test(flavor = "multi_thread")]
async fn a_replay_that_comes_back_is_kept_byte_for_byte() {
    let vhost = TestVhost::new("dlqreplayback");
    declare_topology(&vhost);
    let conn = vhost.connect().await;
    let channel = conn.create_channel().await.unwrap();
    channel
        .exchange_declare(
            "partition.nowhere".into(),
            lapin::ExchangeKind::Topic,
            lapin::options::ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let _ = conn.close(200, "declared".into()).await;
    let text = |s: &[u8]| value::long_string(s);
    let properties = RawProperties::default()
        .short(prop::MESSAGE_ID, b"back-\xff")
        .headers(table(&[
            (b"x-deep", value::nested_tables(40)),
            (b"x-normalizer-error-kind", text(b"invalid_properties")),
            (b"x-original-exchange", text(b"partition.nowhere")),
            (b"x-original-routing-key", text(b"gateway")),
        ]));
    let messages = vec![(properties, b"{\"case\":\"comes back\"}".to_vec())];
    let routing_key = b"deel.invalid_properties";
    publish_with_control(&vhost, "webhooks.dead-letter", routing_key, &messages).await;

    let out = run_command_with(
        &vhost,
        &["dlq", "replay"],
        &[(
            "NORMALIZER__DEAD_LETTER__REPLAY_EXCHANGES",
            r#"["partition.nowhere"]"#,
        )],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("1 could not be replayed"), "{err}");
    let before = raw_amqp::take_all("127.0.0.1:5672", &vhost.name, "control").unwrap();
    let after = raw_amqp::take_all("127.0.0.1:5672", &vhost.name, DLQ).unwrap();
    assert_eq!(after.len(), 1);
    raw_amqp::assert_put_back_byte_for_byte(
        &before,
        &after,
        "x-normalizer-dead-letter-routing-key",
        routing_key,
        &[],
        &[],
    );
}
