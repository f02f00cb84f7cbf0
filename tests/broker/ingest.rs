//! `webhook-normalizer ingest`, the reference gateway, on a private node (the test stops
//! the broker): 200 only once the broker confirmed, the bytes and the contract's headers
//! as the worker expects them, 503 while the broker is away, 200 again once it is back.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use lapin::options::BasicGetOptions;

use crate::support::*;

struct Ingest {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Ingest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_ingest(url: &str) -> Ingest {
    let child = Command::new(worker_binary())
        .arg("ingest")
        .env("NORMALIZER__AMQP__URL", url)
        .env("NORMALIZER__INGEST__LISTEN", "127.0.0.1:0")
        .env("NORMALIZER__INGEST__REQUEST_TIMEOUT_SECS", "5")
        .env("NORMALIZER__LOG__FORMAT", "json")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Killed when dropped, also if its address never comes.
    let mut ingest = Ingest {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
    };
    let stderr = ingest.child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let Ok(log) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if let Some(addr) = log["address"].as_str().and_then(|a| a.parse().ok()) {
                let _ = tx.send(addr);
            }
        }
    });
    ingest.addr = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("ingest logs its address");
    ingest
}

#[tokio::test(flavor = "multi_thread")]
async fn ingest_answers_200_only_after_the_broker_confirmed() {
    let node = PrivateNode::start();
    let vhost = TestVhost::on(&node, "ingest");
    declare_topology(&vhost);
    let ingest = start_ingest(&vhost.url());

    let mut body = fixture("deel/contract.created.json");
    body.extend_from_slice(b"\n");
    let signed = [("X-Deel-Signature", "abc123"), ("x-deel-hmac-label", "k1")];
    let (status, _) = http_post(ingest.addr, "/webhooks/deel", &signed, &body);
    assert_eq!(status, 200);
    let (status, _) = http_post(ingest.addr, "/webhooks/acme", &[], b"{}");
    assert_eq!(status, 404);
    let too_large = vec![b' '; 1024 * 1024 + 1];
    let (status, _) = http_post(ingest.addr, "/webhooks/deel", &[], &too_large);
    assert_eq!(status, 413);

    let conn = vhost.connect().await;
    let channel = conn.create_channel().await.unwrap();
    let got = channel
        .basic_get("normalizer.raw".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("the accepted webhook is in the raw queue")
        .delivery;
    assert_eq!(got.data, body, "byte for byte");
    assert_eq!(got.routing_key.as_str(), "deel");
    assert_eq!(header(&got, "x-vendor").as_deref(), Some("deel"));
    assert_eq!(header(&got, "x-deel-signature").as_deref(), Some("abc123"));
    assert_eq!(header(&got, "x-deel-hmac-label").as_deref(), Some("k1"));
    assert!(header(&got, "x-received-at").is_some());
    assert!(message_id(&got).starts_with("ingest-"));
    assert_eq!(*got.properties.delivery_mode(), Some(2));
    assert_eq!(
        queue_depth(&channel, "normalizer.raw").await,
        0,
        "nothing else"
    );
    let _ = conn.close(200, "checked".into()).await;

    // The broker away: 503, so the vendor retries; back: 200 again.
    node.stop_app();
    let (status, _) = http_post(ingest.addr, "/webhooks/deel", &[], &body);
    assert_eq!(status, 503);
    node.start_app();
    wait_until(Duration::from_secs(30), "ingest to accept again", || {
        http_post(ingest.addr, "/webhooks/deel", &[], &body).0 == 200
    });
}
