//! `GET /metrics`: what Prometheus scrapes, checked against what a test sent through.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::*;

/// The samples of an OpenMetrics text, by series (`name{labels}` as written).
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// 200 raw webhooks of all three vendors (every 20th not normalizable): the counters
/// say exactly how many came in, which events went out by vendor and type, and which
/// dead letters by vendor and kind; nothing is left in flight; `/readyz` says the same.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_exactly_what_went_through() {
    let vhost = TestVhost::new("metrics");
    let worker = WorkerProcess::start(&vhost, &[]);
    worker.wait_ready(Duration::from_secs(20));
    let (_conn, channel) = setup(&vhost).await;
    let webhooks = webhook_mix(200, "metrics");
    publish_raw(&channel, &webhooks).await;
    assert_nothing_lost(&channel, &webhooks).await;
    wait_until(Duration::from_secs(10), "every raw message acked", || {
        worker.readiness().1["acked"].as_u64() == Some(webhooks.len() as u64)
    });

    let mut want: BTreeMap<String, f64> = BTreeMap::new();
    for w in &webhooks {
        match expected(w) {
            Ok(events) => {
                for e in events {
                    let key = format!(
                        "normalizer_events_published_total{{vendor=\"{}\",type=\"{}\"}}",
                        e.event_type.vendor().key(),
                        e.event_type
                    );
                    *want.entry(key).or_default() += 1.0;
                }
            }
            Err(e) => {
                let key = format!(
                    "normalizer_dead_lettered_total{{vendor=\"{}\",kind=\"{}\"}}",
                    e.vendor().map_or("unknown", |v| v.key()),
                    e.kind()
                );
                *want.entry(key).or_default() += 1.0;
            }
        }
    }
    let n = webhooks.len() as f64;
    for (series, value) in [
        ("normalizer_messages_consumed_total", n),
        ("normalizer_messages_acked_total", n),
        ("normalizer_redeliveries_total", 0.0),
        ("normalizer_unroutable_total", 0.0),
        ("normalizer_publish_retries_total", 0.0),
        ("normalizer_processing_seconds_count", n),
        ("normalizer_in_flight", 0.0),
        ("normalizer_broker_connected", 1.0),
        ("normalizer_reconnects_total", 0.0),
        ("normalizer_sessions_total", 1.0),
    ] {
        want.insert(series.to_owned(), value);
    }
    want.insert(
        format!(
            "normalizer_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        ),
        1.0,
    );

    let (status, text) = worker.get("/metrics");
    assert_eq!(status, 200, "{text}");
    let got = samples(&text);
    for (series, value) in &want {
        assert_eq!(got.get(series), Some(value), "{series} in:\n{text}");
    }
    // No other event or dead-letter series above 0 (every dead-letter series exists from
    // the start, at 0): nothing counted twice or under other labels.
    for (series, value) in &got {
        if (series.starts_with("normalizer_events_published_total")
            || series.starts_with("normalizer_dead_lettered_total"))
            && *value != 0.0
        {
            assert!(want.contains_key(series), "unexpected {series} in:\n{text}");
        }
    }
    assert!(
        want.keys()
            .any(|k| k.starts_with("normalizer_dead_lettered_total")),
        "the mix has dead letters to count"
    );
    // `/readyz` reads its counts from these very series: with nothing moving, each equals
    // its series (a labelled family's summed).
    let (_, ready) = worker.readiness();
    let total = |name: &str| -> f64 {
        got.iter()
            .filter(|(series, _)| series.split('{').next() == Some(name))
            .map(|(_, value)| value)
            .sum()
    };
    for (field, name) in [
        ("consumed", "normalizer_messages_consumed_total"),
        ("acked", "normalizer_messages_acked_total"),
        ("ack_frames", "normalizer_ack_frames_total"),
        ("events_published", "normalizer_events_published_total"),
        ("dead_lettered", "normalizer_dead_lettered_total"),
        ("sessions", "normalizer_sessions_total"),
        ("in_flight", "normalizer_in_flight"),
    ] {
        assert_eq!(
            ready[field].as_u64().map(|n| n as f64),
            Some(total(name)),
            "/readyz {field} against {name}: {ready}\n{text}"
        );
    }
}

/// The end-to-end lag is observed once per raw message whose events are confirmed, and
/// only when the message carried its receipt time: webhooks received "two seconds ago"
/// (`x-received-at`) or "five seconds ago" (the AMQP timestamp) are counted, within 30 s;
/// those that carry neither (the worker's own receipt time would say no lag) and those
/// dead-lettered are not.
#[tokio::test(flavor = "multi_thread")]
async fn the_end_to_end_lag_counts_confirmed_messages_that_say_when_they_were_received() {
    use lapin::BasicProperties;
    use lapin::types::{AMQPValue, FieldTable};

    let vhost = TestVhost::new("lag");
    let worker = WorkerProcess::start(&vhost, &[]);
    worker.wait_ready(Duration::from_secs(20));
    let (_conn, channel) = setup(&vhost).await;
    let webhooks = webhook_mix(60, "lag");
    let now = chrono::Utc::now();
    let (mut with_header, mut with_timestamp) = (0, 0);
    let messages: Vec<(&[u8], BasicProperties)> = webhooks
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let mut headers = FieldTable::default();
            if let Some(vendor) = w.vendor {
                headers.insert("x-vendor".into(), AMQPValue::LongString(vendor.into()));
            }
            let mut properties = BasicProperties::default()
                .with_message_id(w.message_id.as_str().into())
                .with_delivery_mode(2);
            let confirmed = expected(w).is_ok();
            match i % 3 {
                0 => {
                    let at = now - chrono::Duration::seconds(2);
                    headers.insert(
                        "x-received-at".into(),
                        AMQPValue::LongString(at.to_rfc3339().into()),
                    );
                    with_header += u64::from(confirmed);
                }
                1 => {
                    let at = u64::try_from(now.timestamp()).unwrap() - 5;
                    properties = properties.with_timestamp(at);
                    with_timestamp += u64::from(confirmed);
                }
                _ => {}
            }
            (w.body.as_slice(), properties.with_headers(headers))
        })
        .collect();
    publish_confirmed(&channel, "webhooks.raw", "gateway", messages).await;
    assert_nothing_lost(&channel, &webhooks).await;
    wait_until(Duration::from_secs(10), "every raw message acked", || {
        worker.readiness().1["acked"].as_u64() == Some(webhooks.len() as u64)
    });
    let counted = with_header + with_timestamp;
    assert!(with_header > 0 && with_timestamp > 0);
    assert!(
        webhooks.iter().any(|w| expected(w).is_err()),
        "the mix has dead letters, which are not counted"
    );

    let (_, text) = worker.get("/metrics");
    let got = samples(&text);
    let n = counted as f64;
    for (series, value) in [
        ("normalizer_end_to_end_lag_seconds_count", n),
        ("normalizer_end_to_end_lag_seconds_bucket{le=\"1.0\"}", 0.0),
        ("normalizer_end_to_end_lag_seconds_bucket{le=\"30.0\"}", n),
        ("normalizer_end_to_end_lag_seconds_bucket{le=\"+Inf\"}", n),
    ] {
        assert_eq!(got.get(series), Some(&value), "{series} in:\n{text}");
    }
    let sum = got["normalizer_end_to_end_lag_seconds_sum"];
    assert!(sum >= n * 2.0 && sum < n * 30.0, "sum {sum} in:\n{text}");
}
