//! Returned publishes told apart from stored ones, in the worker and in `ingest`, with
//! many publishes in flight under one ack: a return must never be counted against the
//! wrong publish (see `docs/operations.md`, "Returned publishes").

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::*;

/// `n` Deel and `n` Entuitive webhooks, alternating, each with an id of its own.
fn alternating(n: usize, tag: &str) -> (Vec<RawWebhook>, BTreeSet<String>, BTreeSet<String>) {
    let deel = fixture_json("deel/contract.status.updated.json");
    let ent = fixture_json("entuitive/user.created__ids_as_strings.json");
    let mut webhooks = Vec::new();
    let mut deel_events = BTreeSet::new();
    let mut entuitive_raw = BTreeSet::new();
    for i in 0..n {
        let mut d = deel.clone();
        d["data"]["resource"]["id"] = format!("{tag}-{i}").into();
        let w = RawWebhook::new(
            serde_json::to_vec(&d).unwrap(),
            Some("deel"),
            format!("{tag}-d{i}"),
        );
        deel_events.extend(expected(&w).unwrap().iter().map(|e| e.id.to_string()));
        webhooks.push(w);
        let mut e = ent.clone();
        e["data"]["email"] = format!("{tag}-{i}@example.com").into();
        let w = RawWebhook::new(
            serde_json::to_vec(&e).unwrap(),
            Some("entuitive"),
            format!("{tag}-e{i}"),
        );
        entuitive_raw.insert(w.message_id.clone());
        webhooks.push(w);
    }
    (webhooks, deel_events, entuitive_raw)
}

/// A team bound only to `deel.#`, and `events.unrouted` deleted (as an operator does to
/// change its bound): every Entuitive event is returned, in the same acks as stored Deel
/// events. No Entuitive raw message may be acknowledged as if its event were stored: each
/// ends in the dead-letter queue, byte for byte. No Deel event is taken for returned and
/// published twice.
#[tokio::test(flavor = "multi_thread")]
async fn no_returned_event_is_counted_as_stored() {
    const EACH: usize = 2000;
    let vhost = TestVhost::new("returns");
    let worker = WorkerProcess::start(
        &vhost,
        &[
            // Give up on a failing message at once; the broker dead-letters it at its
            // first redelivery (or the worker does).
            ("NORMALIZER__RETRY__MAX_ELAPSED_SECS", "0"),
            ("NORMALIZER__INPUT__DELIVERY_LIMIT", "1"),
        ],
    );
    worker.wait_ready(Duration::from_secs(20));
    let conn = vhost.connect().await;
    let channel = conn.create_channel().await.unwrap();
    capture_queue(&channel, "team.deel", "events.canonical", "deel.#").await;
    channel
        .queue_delete("events.unrouted".into(), Default::default())
        .await
        .unwrap();

    let (webhooks, deel_events, entuitive_raw) = alternating(EACH, "ret");
    publish_raw(&channel, &webhooks).await;

    let team = read_until_quiet(&channel, "team.deel", Duration::from_secs(5)).await;
    let mut per_id: BTreeMap<String, usize> = BTreeMap::new();
    for d in &team {
        *per_id.entry(message_id(d)).or_default() += 1;
    }
    let twice: Vec<_> = per_id.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "Deel events published again: {twice:?}");
    assert_eq!(
        per_id.keys().cloned().collect::<BTreeSet<_>>(),
        deel_events,
        "every Deel event reaches the team, and nothing else"
    );

    // Every Entuitive raw message is dead-lettered (by the broker or the worker), never
    // acknowledged: wait until the raw queue is empty and nothing is held.
    wait_until(Duration::from_secs(120), "the raw queue to drain", || {
        let (_, ready) = worker.readiness();
        ready["in_flight"].as_u64() == Some(0) && vhost.queue_messages("normalizer.raw") == Some(0)
    });
    let dead = read_until_quiet(&channel, "normalizer.dead-letter", Duration::from_secs(3)).await;
    let by_id: BTreeMap<String, &[u8]> = dead
        .iter()
        .map(|d| (message_id(d), d.data.as_slice()))
        .collect();
    let lost: Vec<&String> = entuitive_raw
        .iter()
        .filter(|id| !by_id.contains_key(*id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {EACH} Entuitive raw messages acknowledged but their event is in no queue: {:?}",
        lost.len(),
        lost.iter().take(10).collect::<Vec<_>>()
    );
    for w in webhooks.iter().filter(|w| w.vendor == Some("entuitive")) {
        assert_eq!(by_id[&w.message_id], w.body.as_slice(), "{}", w.message_id);
    }
    assert!(
        by_id.keys().all(|id| entuitive_raw.contains(id)),
        "only Entuitive messages are dead-lettered"
    );
}

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
        .env("NORMALIZER__LOG__FORMAT", "json")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
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

/// The raw queue bound for Deel only: of 4,000 webhooks posted 32 at a time, alternating
/// Deel and Entuitive, every Entuitive one is answered 503 (returned: stored nowhere, so
/// the vendor must retry) and every Deel one 200, and the raw queue holds exactly the
/// Deel ones.
#[tokio::test(flavor = "multi_thread")]
async fn ingest_answers_503_exactly_for_the_webhooks_stored_nowhere() {
    const EACH: usize = 2000;
    const CONCURRENCY: usize = 32;
    let vhost = TestVhost::new("ingest-returns");
    let status = Command::new(worker_binary())
        .arg("topology")
        .env("NORMALIZER__AMQP__URL", vhost.url())
        .env("NORMALIZER__INPUT__BINDING_KEY", "deel")
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let ingest = start_ingest(&vhost.url());
    let (webhooks, _, _) = alternating(EACH, "ing");
    let webhooks = Arc::new(webhooks);
    let next = Arc::new(AtomicUsize::new(0));
    let answers = Arc::new(Mutex::new(Vec::new()));
    let posters: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (webhooks, next, answers) = (webhooks.clone(), next.clone(), answers.clone());
            let addr = ingest.addr;
            std::thread::spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(w) = webhooks.get(i) else { break };
                    let vendor = w.vendor.unwrap();
                    let (status, _) = http_post(addr, &format!("/webhooks/{vendor}"), &[], &w.body);
                    answers.lock().unwrap().push((vendor, status));
                }
            })
        })
        .collect();
    for p in posters {
        p.join().unwrap();
    }
    let answers = std::mem::take(&mut *answers.lock().unwrap());
    let count = |vendor: &str, status: u16| {
        answers
            .iter()
            .filter(|(v, s)| *v == vendor && *s == status)
            .count()
    };
    assert_eq!(
        (count("entuitive", 503), count("entuitive", 200)),
        (EACH, 0),
        "Entuitive webhooks are stored nowhere: 503, every one"
    );
    assert_eq!(
        (count("deel", 200), count("deel", 503)),
        (EACH, 0),
        "Deel webhooks are stored: 200, every one"
    );
    let conn = vhost.connect().await;
    let channel = conn.create_channel().await.unwrap();
    assert_eq!(queue_depth(&channel, "normalizer.raw").await as usize, EACH);
}
