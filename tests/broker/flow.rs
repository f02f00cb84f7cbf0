//! The happy and unhappy paths: fixtures in, canonical events and dead letters out.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use webhook_normalizer::CanonicalEvent;

use crate::support::*;

/// Every fixture, published raw, comes out as its canonical events (on the right routing
/// key, with the output contract's properties) or as exactly one dead letter with the
/// original bytes, properties and reason.
#[tokio::test(flavor = "multi_thread")]
async fn fixtures_come_out_as_events_or_dead_letters() {
    let vhost = TestVhost::new("fixtures");
    let worker = WorkerProcess::start(&vhost, &[]);
    worker.wait_ready(Duration::from_secs(20));
    let conn = vhost.connect().await;
    let channel = conn.create_channel().await.unwrap();
    capture_queue(&channel, "test.events", "events.canonical", "#").await;

    let webhooks = fixture_webhooks();
    publish_raw(&channel, &webhooks).await;

    // Per raw message (its gateway message id): the events or the dead letter it must give.
    let mut want_events: HashMap<String, Vec<CanonicalEvent>> = HashMap::new();
    let mut want_dead: HashMap<String, (String, String)> = HashMap::new();
    for w in &webhooks {
        match expected(w) {
            Ok(events) => {
                want_events.insert(w.message_id.clone(), events);
            }
            Err(e) => {
                let key = format!("{}.{}", e.vendor().map_or("unknown", |v| v.key()), e.kind());
                want_dead.insert(w.message_id.clone(), (key, e.to_string()));
            }
        }
    }
    let event_count: usize = want_events.values().map(Vec::len).sum();
    assert_eq!(
        (want_events.len(), event_count, want_dead.len()),
        (38, 39, 21)
    );

    let events = read_messages(
        &channel,
        "test.events",
        event_count,
        Duration::from_secs(30),
    )
    .await;
    let mut got: HashMap<String, Vec<CanonicalEvent>> = HashMap::new();
    for d in &events {
        let body: CanonicalEvent = serde_json::from_slice(&d.data).unwrap();
        let p = &d.properties;
        assert_eq!(d.exchange.as_str(), "events.canonical");
        assert_eq!(d.routing_key.as_str(), body.event_type.as_str());
        assert_eq!(
            p.content_type().as_ref().unwrap().as_str(),
            "application/cloudevents+json; charset=utf-8"
        );
        assert_eq!(*p.delivery_mode(), Some(2));
        assert_eq!(
            p.message_id().as_ref().unwrap().as_str(),
            body.id.to_string()
        );
        assert_eq!(
            p.kind().as_ref().unwrap().as_str(),
            body.event_type.as_str()
        );
        assert_eq!(*p.timestamp(), Some(body.time.timestamp() as u64));
        assert_eq!(p.app_id().as_ref().unwrap().as_str(), "webhook-normalizer");
        // Two headers: the subject, and the trace the event belongs to (0.2.1). Id, type
        // and time are properties (above).
        assert_eq!(header(d, "cloudEvents_subject").unwrap(), body.subject);
        let traceparent = header(d, "traceparent").expect("a traceparent");
        assert!(
            webhook_normalizer::trace_context::TraceParent::parse(&traceparent).is_some(),
            "{traceparent}"
        );
        assert_eq!(p.headers().as_ref().unwrap().inner().len(), 2);
        // The gateway's message id travels as the correlation id.
        let raw_id = p
            .correlation_id()
            .as_ref()
            .expect("correlation id")
            .to_string();
        got.entry(raw_id).or_default().push(body);
    }
    for events in got.values_mut() {
        events.sort_by_key(|e| e.subject.clone());
    }
    for events in want_events.values_mut() {
        events.sort_by_key(|e| e.subject.clone());
    }
    assert_eq!(got, want_events, "events per raw message");

    let dead = read_messages(
        &channel,
        "normalizer.dead-letter",
        want_dead.len(),
        Duration::from_secs(30),
    )
    .await;
    let originals: HashMap<_, _> = webhooks.iter().map(|w| (w.message_id.clone(), w)).collect();
    let mut seen = BTreeSet::new();
    for d in &dead {
        let id = d.properties.message_id().as_ref().unwrap().to_string();
        assert!(seen.insert(id.clone()), "{id} dead-lettered twice");
        let (key, detail) = &want_dead[&id];
        let original = originals[&id];
        assert_eq!(d.data, original.body, "{id}: original bytes");
        assert_eq!(d.routing_key.as_str(), key, "{id}");
        assert_eq!(
            header(d, "x-normalizer-error-kind").unwrap(),
            key.split('.').nth(1).unwrap()
        );
        assert_eq!(&header(d, "x-normalizer-error").unwrap(), detail);
        assert!(header(d, "x-normalizer-failed-at").unwrap().ends_with('Z'));
        assert_eq!(
            header(d, "x-normalizer-version").unwrap(),
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(header(d, "x-original-exchange").unwrap(), "webhooks.raw");
        assert_eq!(header(d, "x-original-routing-key").unwrap(), "gateway");
        // The gateway's own headers and properties are kept.
        assert_eq!(header(d, "x-gateway").unwrap(), "test-gateway");
        assert_eq!(header(d, "x-vendor"), original.vendor.map(str::to_owned));
        assert_eq!(
            d.properties.content_type().as_ref().unwrap().as_str(),
            "application/json"
        );
        assert_eq!(*d.properties.delivery_mode(), Some(2));
    }
    assert_eq!(seen.len(), want_dead.len());

    // Nothing else: no extra events, no leftovers.
    assert!(
        read_until_quiet(&channel, "test.events", Duration::from_millis(500))
            .await
            .is_empty()
    );
    assert_eq!(queue_depth(&channel, "normalizer.raw").await, 0);
    assert_eq!(queue_depth(&channel, "events.unrouted").await, 0);
    let (_, ready) = worker.readiness();
    assert_eq!(ready["dead_lettered"], want_dead.len());
    assert_eq!(ready["requeued"], 0);
}

/// The same raw message delivered again (a vendor retry, our own redelivery) yields the
/// same ids, and a Deel retry with a new tracking id and timestamp too.
#[tokio::test(flavor = "multi_thread")]
async fn redelivered_webhooks_keep_their_ids() {
    let vhost = TestVhost::new("redelivery");
    let worker = WorkerProcess::start(&vhost, &[]);
    worker.wait_ready(Duration::from_secs(20));
    let conn = vhost.connect().await;
    let channel = conn.create_channel().await.unwrap();
    capture_queue(&channel, "test.events", "events.canonical", "#").await;

    let body =
        std::fs::read(fixtures_dir().join("deel/timesheet.reviewed__two_items.json")).unwrap();
    let mut retried: serde_json::Value = serde_json::from_slice(&body).unwrap();
    retried["data"]["meta"]["tracking_id"] = "a-later-delivery".into();
    retried["timestamp"] = "2023-05-11T16:00:00.000Z".into();
    let batch = [
        RawWebhook::new(body.clone(), Some("deel"), "first"),
        RawWebhook::new(body, Some("deel"), "again"),
        RawWebhook::new(
            serde_json::to_vec_pretty(&retried).unwrap(),
            None,
            "vendor-retry",
        ),
    ];
    publish_raw(&channel, &batch).await;
    let events = read_messages(&channel, "test.events", 6, Duration::from_secs(20)).await;
    let mut by_raw: HashMap<String, BTreeSet<String>> = HashMap::new();
    for d in &events {
        by_raw
            .entry(d.properties.correlation_id().as_ref().unwrap().to_string())
            .or_default()
            .insert(d.properties.message_id().as_ref().unwrap().to_string());
    }
    assert_eq!(by_raw.len(), 3);
    assert_eq!(by_raw["first"].len(), 2);
    assert_eq!(by_raw["first"], by_raw["again"]);
    assert_eq!(by_raw["first"], by_raw["vendor-retry"]);
}

/// With nobody bound for a type, its events land in events.unrouted instead of vanishing:
/// kept there by the worker, the type in the `type` property and in
/// `x-normalizer-unrouted-routing-key`, with when it was kept.
#[tokio::test(flavor = "multi_thread")]
async fn events_nobody_is_bound_for_land_in_unrouted() {
    let vhost = TestVhost::new("unrouted");
    let worker = WorkerProcess::start(&vhost, &[]);
    worker.wait_ready(Duration::from_secs(20));
    let conn = vhost.connect().await;
    let channel = conn.create_channel().await.unwrap();
    // Bound only for Deel contracts: the Authenticate event has no taker.
    capture_queue(
        &channel,
        "test.contracts",
        "events.canonical",
        "deel.contract.*",
    )
    .await;
    let read = |p: &str| std::fs::read(fixtures_dir().join(p)).unwrap();
    publish_raw(
        &channel,
        &[
            RawWebhook::new(read("deel/contract.created.json"), None, "contract"),
            RawWebhook::new(
                read("authenticate/USER_PII_UPDATE__numeric_id.json"),
                None,
                "pii",
            ),
        ],
    )
    .await;
    let contracts = read_messages(&channel, "test.contracts", 1, Duration::from_secs(20)).await;
    assert_eq!(contracts[0].routing_key.as_str(), "deel.contract.created");
    let unrouted = read_messages(&channel, "events.unrouted", 1, Duration::from_secs(20)).await;
    assert_eq!(
        header(&unrouted[0], "x-normalizer-unrouted-routing-key").as_deref(),
        Some("authenticate.user.updated")
    );
    assert_eq!(
        unrouted[0].properties.kind().as_ref().map(|t| t.as_str()),
        Some("authenticate.user.updated")
    );
    let kept_at = header(&unrouted[0], "x-normalizer-kept-at").expect("when it was kept");
    let kept_at = chrono::DateTime::parse_from_rfc3339(&kept_at).unwrap();
    let age = chrono::Utc::now().signed_duration_since(kept_at);
    assert!(
        age >= chrono::TimeDelta::zero() && age < chrono::TimeDelta::seconds(30),
        "{kept_at}"
    );
    assert_eq!(
        unrouted[0]
            .properties
            .correlation_id()
            .as_ref()
            .unwrap()
            .as_str(),
        "pii"
    );
    assert!(
        read_until_quiet(&channel, "events.unrouted", Duration::from_millis(300))
            .await
            .is_empty()
    );
}

/// A body over the configured limit is dead-lettered, bytes intact, without the worker
/// reading it: rejected, so the raw queue's own dead-lettering keeps it, and the `dlq`
/// commands read it as `body_too_large` (`tests/broker/oversized.rs` has the 100 MiB case).
#[tokio::test(flavor = "multi_thread")]
async fn oversized_bodies_are_dead_lettered_whole() {
    let vhost = TestVhost::new("oversize");
    let worker = WorkerProcess::start(&vhost, &[("NORMALIZER__LIMITS__MAX_BODY_BYTES", "1000")]);
    worker.wait_ready(Duration::from_secs(20));
    let conn = vhost.connect().await;
    let channel = conn.create_channel().await.unwrap();
    let body = std::fs::read(fixtures_dir().join("deel/contract.status.updated.json")).unwrap();
    assert!(body.len() > 1000);
    publish_raw(
        &channel,
        &[RawWebhook::new(body.clone(), Some("deel"), "big")],
    )
    .await;
    let dead = read_messages(
        &channel,
        "normalizer.dead-letter",
        1,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(dead[0].routing_key.as_str(), "unknown.delivery_limit");
    assert_eq!(dead[0].data, body);
    let (_, doc) = worker.readiness();
    assert_eq!(doc["dead_lettered"], 1, "{doc}");
    assert_eq!(doc["acked"], 0, "rejected, not acknowledged: {doc}");
    // Put back as it was (the copy the walk reads), and read as too large.
    channel
        .basic_publish(
            "".into(),
            "normalizer.dead-letter".into(),
            Default::default(),
            &dead[0].data,
            dead[0].properties.clone(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    // The dlq commands take the worker's configuration, its body limit included.
    let out = run_command_with(
        &vhost,
        &["dlq", "peek"],
        &[("NORMALIZER__LIMITS__MAX_BODY_BYTES", "1000")],
    );
    let peek = String::from_utf8_lossy(&out.stdout);
    assert!(peek.contains("\tbody_too_large\t"), "{peek}");
}

/// The Python block of `docs/raw-message-contract.md`, written to a file of its own.
fn documented_gateway(dir: &std::path::Path) -> std::path::PathBuf {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/raw-message-contract.md"),
    )
    .unwrap();
    let start = doc.find("```python\n").expect("a python example") + "```python\n".len();
    let script = &doc[start..start + doc[start..].find("```").unwrap()];
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("gateway.py");
    std::fs::write(&path, script).unwrap();
    path
}

/// Runs the documented gateway: `python3 gateway.py args…` with `AMQP_URL`.
fn run_gateway(gateway: &std::path::Path, url: &str, args: &[&str]) -> std::process::Output {
    let child = std::process::Command::new("python3")
        .arg(gateway)
        .args(args)
        .env("AMQP_URL", url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 (CI installs it, with pika)");
    output_within(child, Duration::from_secs(30))
}

/// The gateway example in `docs/raw-message-contract.md` works as written: run as it is
/// there (Python with pika), it publishes a fixture body byte for byte (its trailing
/// newline too), persistent, with the vendor hint it is given, the signature headers
/// forwarded and a receipt time the worker reads, confirmed; and the worker makes the
/// fixture's events of it.
#[tokio::test(flavor = "multi_thread")]
async fn the_documented_gateway_example_works_as_written() {
    let vhost = TestVhost::new("gateway");
    declare_topology(&vhost);
    let dir = std::env::temp_dir().join(format!("wn-gateway-{}", vhost.name));
    let gateway = documented_gateway(&dir);
    let mut body = fixture("deel/contract.created.json");
    if !body.ends_with(b"\n") {
        body.push(b'\n');
    }
    std::fs::write(dir.join("body.json"), &body).unwrap();
    let body_path = dir.join("body.json");
    let out = run_gateway(
        &gateway,
        &vhost.url(),
        &[
            body_path.to_str().unwrap(),
            "deel",
            "X-Deel-Signature=sig-from-the-request",
        ],
    );
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        out.status.success() && out.stdout == b"accepted\n",
        "the example failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Read on a connection of its own, closed after: its consumer must not take the
    // message the worker is to get below.
    let raw_conn = vhost.connect().await;
    let raw_channel = raw_conn.create_channel().await.unwrap();
    let raw = read_messages(&raw_channel, "normalizer.raw", 1, Duration::from_secs(10)).await;
    raw_conn.close(200, "read".into()).await.unwrap();
    let (_conn, channel) = setup(&vhost).await;
    assert_eq!(raw[0].data, body, "the body byte for byte");
    assert_eq!(*raw[0].properties.delivery_mode(), Some(2));
    assert_eq!(header(&raw[0], "x-vendor").as_deref(), Some("deel"));
    assert_eq!(
        header(&raw[0], "x-deel-signature").as_deref(),
        Some("sig-from-the-request")
    );
    let received_at = header(&raw[0], "x-received-at").unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(&received_at).is_ok(),
        "{received_at}"
    );

    // The worker takes it from there.
    publish_raw(
        &channel,
        &[RawWebhook::new(body.clone(), Some("deel"), "again")],
    )
    .await;
    let worker = WorkerProcess::start(&vhost, &[]);
    worker.wait_ready(Duration::from_secs(20));
    let events = read_messages(&channel, "test.events", 1, Duration::from_secs(20)).await;
    let want = expected(&RawWebhook::new(body, Some("deel"), "x")).unwrap();
    assert_eq!(message_id(&events[0]), want[0].id.to_string());
}

/// The documented gateway takes the vendor it is given (an Entuitive body is hinted as
/// Entuitive and normalized), and every failure to store ends in "not accepted" with a
/// non-zero exit and no traceback: a broker that does not answer, a vhost without the
/// exchange.
#[tokio::test(flavor = "multi_thread")]
async fn the_documented_gateway_hints_what_it_is_told_and_fails_without_a_traceback() {
    let vhost = TestVhost::new("gateway-fail");
    let dir = std::env::temp_dir().join(format!("wn-gateway-{}", vhost.name));
    let gateway = documented_gateway(&dir);
    let body_path = dir.join("body.json");
    std::fs::write(&body_path, fixture("entuitive/user.created.json")).unwrap();
    let body_arg = body_path.to_str().unwrap();

    let no_exchange = run_gateway(&gateway, &vhost.url(), &[body_arg, "entuitive"]);
    let no_broker = run_gateway(
        &gateway,
        "amqp://guest:guest@127.0.0.1:1/%2f",
        &[body_arg, "entuitive"],
    );
    for (case, out) in [("no exchange", &no_exchange), ("no broker", &no_broker)] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{case}: exit {:?}", out.status);
        assert!(out.stdout.is_empty(), "{case}");
        assert!(stderr.starts_with("not accepted ("), "{case}: {stderr}");
        assert!(!stderr.contains("Traceback"), "{case}: {stderr}");
    }

    declare_topology(&vhost);
    let out = run_gateway(&gateway, &vhost.url(), &[body_arg, "entuitive"]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_conn, channel) = setup(&vhost).await;
    let worker = WorkerProcess::start(&vhost, &[]);
    worker.wait_ready(Duration::from_secs(20));
    let events = read_messages(&channel, "test.events", 1, Duration::from_secs(20)).await;
    let want = expected(&RawWebhook::new(
        fixture("entuitive/user.created.json"),
        Some("entuitive"),
        "x",
    ))
    .unwrap();
    assert_eq!(message_id(&events[0]), want[0].id.to_string());
}
