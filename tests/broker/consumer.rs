//! The example consumer (`examples/consumer.rs`) against the real broker: it handles each
//! event once however often it is delivered, and acks what it handled.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

/// `target/{profile}/examples/consumer`, built by `cargo test` with the tests.
fn example_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile = exe.parent().and_then(|deps| deps.parent()).unwrap();
    profile.join("examples").join("consumer")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_example_consumer_handles_each_event_once() {
    let vhost = TestVhost::new("consumer");
    let worker = WorkerProcess::start(&vhost, &[]);
    worker.wait_ready(Duration::from_secs(20));
    let webhooks: Vec<RawWebhook> = webhook_mix(40, "consumer")
        .into_iter()
        .filter(|w| expected(w).is_ok_and(|e| e[0].event_type.to_string().starts_with("deel.")))
        .collect();
    let deel: Vec<String> = webhooks
        .iter()
        .flat_map(|w| expected(w).unwrap())
        .map(|e| e.id.to_string())
        .collect();

    let mut child = Command::new(example_binary())
        .args(["team.deel", "deel.#", "--limit", &deel.len().to_string()])
        .env("AMQP_URL", vhost.url())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the example is built with the tests");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(20)).unwrap();
    assert!(first.starts_with("consuming team.deel"), "{first}");

    // Every webhook twice in a row (a vendor retry): each event arrives twice.
    let (_conn, channel) = setup(&vhost).await;
    let twice: Vec<RawWebhook> = webhooks
        .iter()
        .flat_map(|w| [w.clone(), w.clone()])
        .collect();
    publish_raw(&channel, &twice).await;

    let out = output_within(child, Duration::from_secs(30));
    assert!(out.status.success());
    let handled: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.split(' ').nth(1).unwrap().to_owned())
        .collect();
    assert_eq!(handled, deel, "each once, in order");
    let summary = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let skipped: u64 = summary
        .split(", ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{summary}"));
    assert!(skipped >= 1, "{summary}");
    // Acked: what it handled and skipped is gone. What remains is only what came after
    // the limit: duplicates of events it handled (the last webhook's second copy, and any
    // publish the worker repeated under load), never an event it did not handle.
    let left = read_until_quiet(&channel, "team.deel", Duration::from_secs(1)).await;
    let handled_ids: std::collections::HashSet<&String> = deel.iter().collect();
    for d in &left {
        assert!(
            handled_ids.contains(&message_id(d)),
            "an unhandled event left behind"
        );
    }
    assert!(
        left.len() < deel.len(),
        "{} of {} left: not acked",
        left.len(),
        2 * deel.len()
    );
}

/// The Python example of `docs/consuming.md`, run as written: each event once, in order.
#[tokio::test(flavor = "multi_thread")]
async fn the_documented_python_consumer_works_as_written() {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/consuming.md"),
    )
    .unwrap();
    let start = doc.find("```python\n").expect("a python example") + "```python\n".len();
    let script = &doc[start..start + doc[start..].find("```").unwrap()];
    let vhost = TestVhost::new("pyconsumer");
    let worker = WorkerProcess::start(&vhost, &[]);
    worker.wait_ready(Duration::from_secs(20));
    let webhooks = webhook_mix(20, "pyconsumer");
    let events: Vec<String> = webhooks
        .iter()
        .filter_map(|w| expected(w).ok())
        .flatten()
        .map(|e| e.id.to_string())
        .collect();
    let dir = std::env::temp_dir().join(format!("wn-pyconsumer-{}", vhost.name));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("consumer.py"), script).unwrap();
    let mut child = Command::new("python3")
        .arg(dir.join("consumer.py"))
        .arg("team.all")
        .env("AMQP_URL", vhost.url())
        .env("LIMIT", events.len().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (CI installs it, with pika)");
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.starts_with("consuming team.all"), "{first}");
    let (_conn, channel) = setup(&vhost).await;
    let twice: Vec<RawWebhook> = webhooks
        .iter()
        .flat_map(|w| [w.clone(), w.clone()])
        .collect();
    publish_raw(&channel, &twice).await;
    let out = output_within(child, Duration::from_secs(30));
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(out.status.success());
    let handled: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.split(' ').nth(1).unwrap().to_owned())
        .collect();
    assert_eq!(handled, events, "each once, in order");
}
