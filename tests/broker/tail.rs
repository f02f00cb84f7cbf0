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

/// A running `tail` and a thread reading its lines as they come (a pipe left unread
/// would stop it once full).
fn reading(mut child: Child) -> (Child, std::thread::JoinHandle<Vec<String>>) {
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect()
    });
    (child, reader)
}

/// (type, id) of an event kept on `events.unrouted` (its type in the keep's header).
fn kept(d: &lapin::message::Delivery) -> (String, String) {
    (
        header(d, "x-normalizer-unrouted-routing-key").unwrap_or_default(),
        message_id(d),
    )
}

/// Observers change nothing anyone else receives or keeps. With `tail`, `tail --unrouted`
/// and `tail --dead-letters` all running and a team bound to `deel.#` only:
/// `events.unrouted` keeps exactly the events no team binds (a `#` observer used to take
/// them all), `unrouted replay --type '#'` sends nothing away (nobody is bound) and
/// leaves every event kept; and once `events.unrouted` is deleted, an event no team
/// binds is not acknowledged on the strength of an observer's copy: its raw message ends
/// in the dead-letter queue. The observers saw what was stored, and nothing else.
#[tokio::test(flavor = "multi_thread")]
async fn observers_change_nothing_anyone_receives_or_keeps() {
    let vhost = TestVhost::new("tail-routing");
    let worker = WorkerProcess::start(
        &vhost,
        &[
            ("NORMALIZER__RETRY__MAX_ELAPSED_SECS", "1"),
            ("NORMALIZER__INPUT__DELIVERY_LIMIT", "1"),
        ],
    );
    worker.wait_ready(Duration::from_secs(20));
    let conn = vhost.connect().await;
    let channel = conn.create_channel().await.unwrap();
    capture_queue(&channel, "team.deel", "events.canonical", "deel.#").await;
    let all = reading(start_tail(&vhost, &[]));
    let unrouted = reading(start_tail(&vhost, &["--unrouted"]));
    let dead_letters = reading(start_tail(&vhost, &["--dead-letters"]));

    let webhooks = webhook_mix(40, "observed");
    publish_raw(&channel, &webhooks).await;
    let events: Vec<(String, String)> = webhooks
        .iter()
        .filter_map(|w| expected(w).ok())
        .flatten()
        .map(|e| (e.event_type.to_string(), e.id.to_string()))
        .collect();
    let (deel, others): (Vec<_>, Vec<_>) = events
        .iter()
        .cloned()
        .partition(|(t, _)| t.starts_with("deel."));
    wait_until(Duration::from_secs(30), "every raw message settled", || {
        worker.readiness().1["acked"].as_u64() == Some(webhooks.len() as u64)
    });
    let team: Vec<String> = read_until_quiet(&channel, "team.deel", Duration::from_millis(500))
        .await
        .iter()
        .map(message_id)
        .collect();
    assert_eq!(
        team,
        deel.iter().map(|(_, id)| id.clone()).collect::<Vec<_>>()
    );
    assert_eq!(
        queue_depth(&channel, "events.unrouted").await as usize,
        others.len(),
        "events.unrouted keeps every event no team binds"
    );

    // A replay of everything while the observers run: still nobody bound, so nothing is
    // sent away and everything stays kept.
    let replay = run_command(&vhost, &["unrouted", "replay", "--type", "#"]);
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    let summary = String::from_utf8_lossy(&replay.stderr);
    assert!(
        summary.starts_with("0 sent to events.canonical"),
        "{summary}"
    );
    // Read on a channel of its own, closed before the queue is deleted below.
    let reader = conn.create_channel().await.unwrap();
    let kept_now: Vec<(String, String)> =
        read_until_quiet(&reader, "events.unrouted", Duration::from_millis(500))
            .await
            .iter()
            .map(kept)
            .collect();
    let _ = reader.close(200, "read".into()).await;
    assert_eq!(kept_now, others, "every kept event still kept, in order");

    // events.unrouted gone: an Authenticate event has no keeper but the observers.
    channel
        .queue_delete("events.unrouted".into(), Default::default())
        .await
        .unwrap();
    // Deel webhooks go on meanwhile: the failure is the orphans' own, and the worker
    // dead-letters them (as undeliverable) once retry.max_elapsed_secs is spent.
    let batch = webhook_mix(8, "orphan");
    let is_auth = |w: &RawWebhook| {
        expected(w).is_ok_and(|e| {
            e.iter()
                .all(|e| e.event_type.to_string().starts_with("authenticate."))
        })
    };
    let orphans: Vec<RawWebhook> = batch.iter().filter(|w| is_auth(w)).cloned().collect();
    assert!(!orphans.is_empty());
    let deel_too: Vec<RawWebhook> = batch
        .iter()
        .filter(|w| w.vendor == Some("deel"))
        .cloned()
        .collect();
    publish_raw(&channel, &orphans).await;
    for _ in 0..20 {
        publish_raw(&channel, &deel_too).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first_dead = webhooks.iter().filter(|w| expected(w).is_err()).count();
    let want = (first_dead + orphans.len()) as u32;
    let reader = conn.create_channel().await.unwrap();
    let mut waited = 0;
    while queue_depth(&reader, "normalizer.dead-letter").await < want && waited < 600 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += 1;
    }
    let dead = read_until_quiet(&reader, "normalizer.dead-letter", Duration::from_secs(1)).await;
    let orphaned: Vec<_> = dead
        .iter()
        .filter(|d| message_id(d).starts_with("orphan-"))
        .collect();
    for d in &orphaned {
        assert_eq!(
            header(d, "x-normalizer-error-kind").as_deref(),
            Some("undeliverable")
        );
    }
    let mut dead_ids: Vec<String> = orphaned.iter().map(|d| message_id(d)).collect();
    dead_ids.sort();
    let mut orphan_ids: Vec<String> = orphans.iter().map(|w| w.message_id.clone()).collect();
    orphan_ids.sort();
    assert_eq!(
        dead_ids, orphan_ids,
        "each dead-lettered, none acknowledged as stored"
    );

    // The observers saw what was stored: every event, the unrouted ones, the dead
    // letters of the first batch; none of the orphans' events.
    let lines = |(mut child, reader): (Child, std::thread::JoinHandle<Vec<String>>)| {
        let _ = child.kill();
        let _ = child.wait();
        reader
            .join()
            .unwrap()
            .iter()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    let seen_all = lines(all);
    let seen: Vec<String> = seen_all
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    let first_batch: Vec<String> = events.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(seen[..first_batch.len()], first_batch[..]);
    let orphan_events: Vec<String> = orphans
        .iter()
        .flat_map(|w| expected(w).unwrap())
        .map(|e| e.id.to_string())
        .collect();
    assert!(
        seen.iter().all(|id| !orphan_events.contains(id)),
        "an orphan's event was stored nowhere, so no observer saw it"
    );
    let seen: Vec<String> = lines(unrouted)
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        seen,
        others.iter().map(|(_, id)| id.clone()).collect::<Vec<_>>()
    );
    let dead_seen = lines(dead_letters);
    assert_eq!(dead_seen.len(), first_dead + orphans.len(), "{dead_seen:?}");
}
