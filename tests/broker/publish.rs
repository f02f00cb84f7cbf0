//! `webhook-normalizer publish`: raw bodies byte for byte, with the contract's headers,
//! confirmed; a return or a nack is a failure.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use lapin::options::{BasicGetOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;

use crate::support::*;

fn publish_command(vhost: &TestVhost, args: &[&str], stdin: Option<&[u8]>) -> std::process::Output {
    let mut child = Command::new(worker_binary())
        .arg("publish")
        .args(args)
        .env("NORMALIZER__AMQP__URL", vhost.url())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        // A command that refuses its arguments exits without reading its input.
        match input.write_all(bytes) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            written => written.unwrap(),
        }
    }
    drop(input);
    output_within(child, Duration::from_secs(30))
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_sends_each_body_byte_for_byte_with_the_contract_headers() {
    let vhost = TestVhost::new("publish");
    declare_topology(&vhost);
    // A body with a trailing newline, as many HTTP clients send it: the newline stays.
    let mut body = fixture("deel/contract.created.json");
    body.extend_from_slice(b"\n");
    let dir = std::env::temp_dir().join(format!("wn-publish-{}", vhost.name));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("contract.json");
    std::fs::write(&file, &body).unwrap();
    let second = dir.join("second.json");
    std::fs::write(&second, b"{\"not\": \"a webhook\"}").unwrap();

    let out = publish_command(
        &vhost,
        &[
            "--vendor",
            "deel",
            "--message-id",
            "gw",
            file.to_str().unwrap(),
            second.to_str().unwrap(),
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let from_stdin = b"{\"event\": \"x\"}\r\n";
    let out = publish_command(&vhost, &[], Some(from_stdin));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&dir).unwrap();

    let conn = vhost.connect().await;
    let channel = conn.create_channel().await.unwrap();
    let mut got = Vec::new();
    while let Some(m) = channel
        .basic_get("normalizer.raw".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        got.push(m.delivery);
    }
    assert_eq!(got.len(), 3);
    assert_eq!(got[0].data, body, "byte for byte, newline and all");
    assert_eq!(got[0].routing_key.as_str(), "deel");
    assert_eq!(message_id(&got[0]), "gw-1");
    assert_eq!(message_id(&got[1]), "gw-2");
    assert_eq!(header(&got[0], "x-vendor").as_deref(), Some("deel"));
    let received_at = header(&got[0], "x-received-at").unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(&received_at).is_ok(),
        "{received_at}"
    );
    assert_eq!(*got[0].properties.delivery_mode(), Some(2));
    assert_eq!(got[2].data, from_stdin);
    assert_eq!(got[2].routing_key.as_str(), "gateway");
    assert!(header(&got[2], "x-vendor").is_none());
}

/// Nothing bound to the raw exchange: the body comes back, and `publish` fails saying so.
#[tokio::test(flavor = "multi_thread")]
async fn a_returned_body_fails_the_command() {
    let vhost = TestVhost::new("publish-returned");
    let conn = vhost.connect().await;
    let channel = conn.create_channel().await.unwrap();
    channel
        .exchange_declare(
            "webhooks.raw".into(),
            lapin::ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let out = publish_command(&vhost, &["--vendor", "deel"], Some(b"{}"));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("returned: no queue is bound to webhooks.raw"),
        "{err}"
    );
    let out = publish_command(&vhost, &["--vendor", "acme"], None);
    assert_eq!(out.status.code(), Some(2), "not a vendor key");
}

/// No raw exchange at all (the topology never declared, or another `input.exchange`):
/// the broker was reached, so `publish` says which exchange is missing and what to do,
/// and does not exit 69 ("cannot reach the broker").
#[test]
fn a_missing_exchange_is_named_with_a_hint_not_called_unreachable() {
    let vhost = TestVhost::new("publish-no-exchange");
    let out = publish_command(&vhost, &["--vendor", "deel"], Some(b"{}"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("exchange webhooks.raw does not exist"),
        "names the exchange: {err}"
    );
    assert!(err.contains("webhook-normalizer topology"), "a hint: {err}");
    assert!(err.contains("input.exchange"), "the setting: {err}");
    assert!(!err.contains("NOT_FOUND"), "no raw protocol error: {err}");
}
