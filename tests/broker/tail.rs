//! `webhook-normalizer tail`: what was published, in order, from a queue of its own.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::*;

/// Starts `tail ARGS…` on `vhost` and waits until it says it is watching (bound).
fn start_tail(vhost: &TestVhost, args: &[&str]) -> Child {
    let mut child = Command::new(worker_binary())
        .arg("tail")
        .args(args)
        .env("NORMALIZER__AMQP__URL", vhost.url())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.starts_with("watching") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("tail says it is watching");
    child
}

#[tokio::test(flavor = "multi_thread")]
async fn tail_shows_what_was_published_in_order() {
    let vhost = TestVhost::new("tail");
    let worker = WorkerProcess::start(&vhost, &[]);
    worker.wait_ready(Duration::from_secs(20));
    let (_conn, channel) = setup(&vhost).await;
    let webhooks = webhook_mix(40, "tail");
    let events: Vec<_> = webhooks
        .iter()
        .filter_map(|w| expected(w).ok())
        .flatten()
        .collect();
    let deel: Vec<String> = events
        .iter()
        .filter(|e| e.event_type.to_string().starts_with("deel."))
        .map(|e| e.id.to_string())
        .collect();
    let dead = webhooks.iter().filter(|w| expected(w).is_err()).count();
    let limit = events.len().to_string();
    let all = start_tail(&vhost, &["--limit", &limit]);
    let deel_limit = deel.len().to_string();
    let only_deel = start_tail(&vhost, &["--limit", &deel_limit, "deel.#"]);
    let dead_limit = dead.to_string();
    let dead_letters = start_tail(&vhost, &["--dead-letters", "--limit", &dead_limit]);
    publish_raw(&channel, &webhooks).await;

    let ids = |child: Child| -> Vec<serde_json::Value> {
        let out = output_within(child, Duration::from_secs(30));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let seen: Vec<String> = ids(all)
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    let want: Vec<String> = events.iter().map(|e| e.id.to_string()).collect();
    assert_eq!(seen, want, "every event, in the order published");
    let seen: Vec<String> = ids(only_deel)
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(seen, deel);
    let records = ids(dead_letters);
    assert_eq!(records.len(), dead);
    for r in &records {
        assert_eq!(r["vendor"], "entuitive", "{r}");
        assert!(
            r.get("body_base64").is_none(),
            "no body without --show-body: {r}"
        );
    }
    // It took nothing from anyone else's queue.
    assert_nothing_lost(&channel, &webhooks).await;
}
