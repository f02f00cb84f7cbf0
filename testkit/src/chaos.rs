//! For chaos tests: accounting for every input after a disruption (events with their
//! duplicates, dead letters, what was lost), and a TCP proxy that cuts the network.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_lite::StreamExt;
use lapin::Channel;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::webhooks::{RawWebhook, expectations};

/// Declares `test.events`, a quorum queue (it outlives a node of a cluster, and a
/// restart), bound `#` to the canonical exchange, with extra `arguments`.
pub async fn quorum_capture_queue(channel: &Channel, arguments: FieldTable) {
    let mut args = arguments;
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(
            "test.events".into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await
        .expect("declare test.events");
    channel
        .queue_bind(
            "test.events".into(),
            "events.canonical".into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind test.events");
}

/// What became of the inputs of a chaos scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accounting {
    pub inputs: usize,
    /// Distinct expected events received.
    pub events: usize,
    /// Deliveries of an expected event beyond its first (same id: harmless downstream).
    pub duplicates: usize,
    /// Distinct expected dead letters received, with the expected routing key.
    pub dead_letters: usize,
    /// Expected events never received plus expected dead letters never received.
    pub lost: usize,
    /// Events or dead letters no input should have made (or with another routing key).
    pub unexpected: usize,
}

impl Accounting {
    /// A row of the chaos table in `docs/delivery.md`.
    pub fn row(&self, scenario: &str, recovery: &str) -> String {
        format!(
            "| {scenario} | {} | {} | {} | {} | {} | {recovery} |",
            self.inputs, self.events, self.duplicates, self.dead_letters, self.lost
        )
    }
}

impl fmt::Display for Accounting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} inputs: {} events ({} duplicates), {} dead letters, {} lost, {} unexpected",
            self.inputs,
            self.events,
            self.duplicates,
            self.dead_letters,
            self.lost,
            self.unexpected
        )
    }
}

/// Consumes `test.events` and the dead-letter queue until every expected event and dead
/// letter of `webhooks` has arrived, or nothing has arrived for `quiet`, and counts.
pub async fn account(channel: &Channel, webhooks: &[RawWebhook], quiet: Duration) -> Accounting {
    let want = expectations(webhooks);
    let consume = |queue: &'static str| {
        channel.basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
    };
    let mut events = consume("test.events").await.expect("consume test.events");
    let mut dead = consume("normalizer.dead-letter")
        .await
        .expect("consume the dead-letter queue");
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut dead_seen: BTreeMap<String, String> = BTreeMap::new();
    let mut unexpected = 0;
    loop {
        let done = want.event_ids.iter().all(|id| seen.contains_key(id))
            && dead_seen.len() >= want.dead_letters.len();
        let wait = if done {
            Duration::from_millis(500)
        } else {
            quiet
        };
        tokio::select! {
            got = events.next() => match got {
                Some(Ok(d)) => {
                    let id = d.properties.message_id().as_ref().map(|m| m.to_string()).unwrap_or_default();
                    if !want.event_ids.contains(&id) {
                        unexpected += 1;
                    }
                    *seen.entry(id).or_default() += 1;
                }
                other => panic!("consumer of test.events ended: {other:?}"),
            },
            got = dead.next() => match got {
                Some(Ok(d)) => {
                    let id = d.properties.message_id().as_ref().map(|m| m.to_string()).unwrap_or_default();
                    let key = d.routing_key.to_string();
                    if want.dead_letters.get(&id) != Some(&key) {
                        unexpected += 1;
                    }
                    dead_seen.insert(id, key);
                }
                other => panic!("consumer of the dead-letter queue ended: {other:?}"),
            },
            _ = tokio::time::sleep(wait) => break,
        }
    }
    let events_received = want
        .event_ids
        .iter()
        .filter(|id| seen.contains_key(*id))
        .count();
    let duplicates = want
        .event_ids
        .iter()
        .filter_map(|id| seen.get(id))
        .map(|n| n - 1)
        .sum();
    let dead_received = want
        .dead_letters
        .iter()
        .filter(|(id, key)| dead_seen.get(*id) == Some(key))
        .count();
    Accounting {
        inputs: webhooks.len(),
        events: events_received,
        duplicates,
        dead_letters: dead_received,
        lost: (want.event_ids.len() - events_received) + (want.dead_letters.len() - dead_received),
        unexpected,
    }
}

const PASS: u8 = 0;
const BLACKHOLE: u8 = 1;

/// A TCP proxy to a broker port that can cut the network: [`FaultyProxy::blackhole`]
/// stops forwarding (both ways, new connections too) while every socket stays open, as a
/// dead link does; [`FaultyProxy::reset_all`] resets every connection (RST).
pub struct FaultyProxy {
    port: u16,
    mode: Arc<AtomicU8>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    acceptor: JoinHandle<()>,
}

impl FaultyProxy {
    /// Listens on a free port of 127.0.0.1, forwarding to `127.0.0.1:{target}`.
    pub async fn start(target: u16) -> FaultyProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("proxy listens");
        let port = listener.local_addr().unwrap().port();
        let mode = Arc::new(AtomicU8::new(PASS));
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let acceptor = {
            let mode = mode.clone();
            let connections = connections.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let mode = mode.clone();
                    let task = tokio::spawn(async move {
                        // A dead link: connected, and then nothing.
                        while mode.load(Ordering::Relaxed) == BLACKHOLE {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        let Ok(upstream) = TcpStream::connect(("127.0.0.1", target)).await else {
                            return;
                        };
                        // Closed with RST, not FIN: a reset, not a goodbye.
                        let _ = client.set_zero_linger();
                        let _ = upstream.set_zero_linger();
                        let (client_read, client_write) = client.into_split();
                        let (upstream_read, upstream_write) = upstream.into_split();
                        tokio::select! {
                            _ = forward(client_read, upstream_write, &mode) => {}
                            _ = forward(upstream_read, client_write, &mode) => {}
                        }
                    });
                    connections.lock().unwrap().push(task);
                }
            })
        };
        FaultyProxy {
            port,
            mode,
            connections,
            acceptor,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops forwarding: nothing passes either way until [`FaultyProxy::pass`].
    pub fn blackhole(&self) {
        self.mode.store(BLACKHOLE, Ordering::Relaxed);
    }

    pub fn pass(&self) {
        self.mode.store(PASS, Ordering::Relaxed);
    }

    /// Resets every connection open now.
    pub fn reset_all(&self) {
        for task in self.connections.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

impl Drop for FaultyProxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        self.reset_all();
    }
}

/// Copies `from` to `to` while the mode is PASS; in BLACKHOLE reads nothing and writes
/// nothing (what was read already may still go out).
async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mode: &AtomicU8,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if mode.load(Ordering::Relaxed) == BLACKHOLE {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let n = match tokio::time::timeout(Duration::from_millis(50), from.read(&mut buf)).await {
            Err(_) => continue,
            Ok(Ok(0) | Err(_)) => return,
            Ok(Ok(n)) => n,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
