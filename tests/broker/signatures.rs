//! Vendor signatures end to end: secrets set through the environment (a rotation: old
//! and new), signed webhooks become events, the others exactly one `invalid_signature`
//! dead letter each with their bytes, and neither secrets nor signatures reach the logs.

use std::collections::BTreeMap;
use std::time::Duration;

use hmac::{Hmac, Mac};
use lapin::types::AMQPValue;

use crate::support::*;

/// The documented schemes: hex HMAC-SHA256 of `prefix` + body.
fn sign(secret: &str, prefix: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(prefix);
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// A raw webhook of `vendor` with these extra headers.
fn with_headers(w: &RawWebhook, extra: &[(&str, &str)]) -> lapin::BasicProperties {
    let properties = raw_properties(w);
    let mut headers = properties.headers().clone().unwrap_or_default();
    for (name, value) in extra {
        headers.insert((*name).into(), AMQPValue::LongString((*value).into()));
    }
    properties.with_headers(headers)
}

/// A webhook, the headers it is sent with, and whether it passes.
type Case = (RawWebhook, Vec<(&'static str, String)>, bool);

#[tokio::test(flavor = "multi_thread")]
async fn signed_webhooks_pass_and_the_others_are_dead_lettered_once() {
    let vhost = TestVhost::new("signatures");
    let worker = WorkerProcess::start(
        &vhost,
        &[
            (
                "NORMALIZER__SIGNATURES__ENTUITIVE__SECRETS",
                r#"["old-e-s3cret", "new-e-s3cret"]"#,
            ),
            ("NORMALIZER__SIGNATURES__DEEL__SECRETS", r#"["d-s3cret"]"#),
            (
                "NORMALIZER__SIGNATURES__DEEL__LABELS",
                r#"{k2 = "d-label-s3cret"}"#,
            ),
        ],
    );
    worker.wait_ready(Duration::from_secs(20));
    let (_conn, channel) = setup(&vhost).await;

    let entuitive = fixture("entuitive/user.created__ids_as_strings.json");
    let mut entuitive_newline = entuitive.clone();
    entuitive_newline.push(b'\n');
    let deel = fixture("deel/contract.created.json");
    let w = |body: &[u8], vendor, id: &str| RawWebhook::new(body.to_vec(), Some(vendor), id);

    let cases: Vec<Case> = vec![
        (
            w(&entuitive, "entuitive", "e-old"),
            vec![(
                "x-entuitive-signature",
                sign("old-e-s3cret", b"", &entuitive),
            )],
            true,
        ),
        (
            w(&entuitive_newline, "entuitive", "e-new-newline"),
            vec![(
                "X-Entuitive-Signature",
                sign("new-e-s3cret", b"", &entuitive_newline),
            )],
            true,
        ),
        (
            w(&entuitive, "entuitive", "e-wrong"),
            vec![("x-entuitive-signature", sign("retired", b"", &entuitive))],
            false,
        ),
        (w(&entuitive, "entuitive", "e-missing"), vec![], false),
        (
            w(&entuitive, "entuitive", "e-malformed"),
            vec![("x-entuitive-signature", "not-hex".into())],
            false,
        ),
        (
            w(&deel, "deel", "d-ok"),
            vec![("x-deel-signature", sign("d-s3cret", b"POST", &deel))],
            true,
        ),
        (
            w(&deel, "deel", "d-label"),
            vec![
                ("x-deel-signature", sign("d-label-s3cret", b"POST", &deel)),
                ("x-deel-hmac-label", "k2".into()),
            ],
            true,
        ),
        (
            w(&deel, "deel", "d-body-only"),
            vec![("x-deel-signature", sign("d-s3cret", b"", &deel))],
            false,
        ),
        (w(&deel, "deel", "d-missing"), vec![], false),
    ];
    for (webhook, headers, _) in &cases {
        let extra: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        publish_raw_with(
            &channel,
            "webhooks.raw",
            "gateway",
            &webhook.body,
            with_headers(webhook, &extra),
        )
        .await;
    }

    let passing: Vec<RawWebhook> = cases.iter().filter(|c| c.2).map(|c| c.0.clone()).collect();
    let want_events: usize = passing.iter().map(|w| expected(w).unwrap().len()).sum();
    let events = read_messages(
        &channel,
        "test.events",
        want_events,
        Duration::from_secs(20),
    )
    .await;
    let mut by_raw: BTreeMap<String, usize> = BTreeMap::new();
    for e in &events {
        let raw_id = e.properties.correlation_id().as_ref().unwrap().to_string();
        *by_raw.entry(raw_id).or_default() += 1;
    }
    let failing: Vec<&Case> = cases.iter().filter(|c| !c.2).collect();
    let dead = read_messages(
        &channel,
        "normalizer.dead-letter",
        failing.len(),
        Duration::from_secs(20),
    )
    .await;
    let mut dead_ids = Vec::new();
    for d in &dead {
        let id = message_id(d);
        let (webhook, headers, _) = failing.iter().find(|c| c.0.message_id == id).unwrap();
        assert_eq!(d.data, webhook.body, "{id}: the original bytes");
        assert_eq!(
            header(d, "x-normalizer-error-kind").as_deref(),
            Some("invalid_signature")
        );
        let detail = header(d, "x-normalizer-error").unwrap();
        for (_, value) in headers {
            assert!(!detail.contains(value.as_str()), "{id}: {detail}");
        }
        dead_ids.push(id);
    }
    dead_ids.sort();
    let mut want_dead: Vec<String> = failing.iter().map(|c| c.0.message_id.clone()).collect();
    want_dead.sort();
    assert_eq!(dead_ids, want_dead, "exactly one dead letter each");
    assert!(
        read_until_quiet(&channel, "test.events", Duration::from_millis(500))
            .await
            .is_empty()
    );
    let mut passing_ids: Vec<String> = passing.iter().map(|w| w.message_id.clone()).collect();
    passing_ids.sort();
    assert_eq!(by_raw.keys().cloned().collect::<Vec<_>>(), passing_ids);

    let logs = worker.logs().join("\n");
    for secret in ["old-e-s3cret", "new-e-s3cret", "d-s3cret", "d-label-s3cret"] {
        assert!(!logs.contains(secret), "a secret in the logs");
    }
    for (_, headers, _) in &cases {
        for (_, value) in headers {
            assert!(
                value.len() < 10 || !logs.contains(value.as_str()),
                "a signature in the logs"
            );
        }
    }
}
