//! A downstream consumer of canonical events, as a team would write one: its own durable
//! queue bound to `events.canonical` with the type patterns it cares about, at-least-once
//! delivery handled by deduplicating on the event id (the AMQP `message_id`, stable for a
//! vendor event) over a bounded window, and an ack only after the event was handled.
//!
//! ```sh
//! AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f \
//!   cargo run --example consumer -- team.contracts 'deel.contract.*' '*.background_check.completed'
//! ```
//!
//! Prints one line per event handled (`type id subject`), and a summary on stderr when it
//! stops (Ctrl-C, or after `--limit N` events).

use std::collections::{HashSet, VecDeque};

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};

/// Ids remembered for deduplication. Redeliveries and replays come close together in
/// practice; size it to a few minutes of traffic.
const WINDOW: usize = 100_000;

/// The last `WINDOW` ids seen.
struct Seen {
    ids: HashSet<String>,
    order: VecDeque<String>,
}

impl Seen {
    fn new() -> Seen {
        Seen {
            ids: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    /// `true` the first time an id is seen (within the window).
    fn first_time(&mut self, id: &str) -> bool {
        if self.ids.contains(id) {
            return false;
        }
        if self.order.len() == WINDOW
            && let Some(oldest) = self.order.pop_front()
        {
            self.ids.remove(&oldest);
        }
        self.ids.insert(id.to_owned());
        self.order.push_back(id.to_owned());
        true
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let limit = match args.iter().position(|a| a == "--limit") {
        Some(i) => {
            let n: u64 = args.get(i + 1).ok_or("--limit N")?.parse()?;
            args.drain(i..=i + 1);
            Some(n)
        }
        None => None,
    };
    let Some((queue, patterns)) = args.split_first() else {
        return Err("usage: consumer QUEUE PATTERN... [--limit N]".into());
    };
    let patterns: Vec<&str> = if patterns.is_empty() {
        vec!["#"]
    } else {
        patterns.iter().map(String::as_str).collect()
    };
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());

    let connection = Connection::connect(&url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    // A quorum queue of the team's own: it survives restarts and a node's loss.
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await?;
    for pattern in &patterns {
        channel
            .queue_bind(
                queue.as_str().into(),
                "events.canonical".into(),
                (*pattern).into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    channel.basic_qos(64, BasicQosOptions::default()).await?;
    let mut deliveries = channel
        .basic_consume(
            queue.as_str().into(),
            "example-consumer".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    eprintln!("consuming {queue} bound to {}", patterns.join(" "));

    let mut seen = Seen::new();
    let (mut handled, mut duplicates) = (0u64, 0u64);
    loop {
        let delivery = tokio::select! {
            next = deliveries.next() => match next {
                Some(delivery) => delivery?,
                None => break,
            },
            _ = tokio::signal::ctrl_c() => break,
        };
        let id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.to_string())
            .unwrap_or_default();
        if seen.first_time(&id) {
            let event: serde_json::Value = serde_json::from_slice(&delivery.data)?;
            // Handle the event here; this one prints it.
            println!(
                "{} {} {}",
                event["type"].as_str().unwrap_or("-"),
                id,
                event["subject"].as_str().unwrap_or("-")
            );
            handled += 1;
        } else {
            duplicates += 1;
        }
        // After handling: a crash before this line redelivers the event, and the window
        // (or the handler's own idempotence) absorbs it.
        delivery.ack(BasicAckOptions::default()).await?;
        if limit.is_some_and(|l| handled >= l) {
            break;
        }
    }
    eprintln!("{handled} events handled, {duplicates} duplicates skipped");
    connection.close(200, "done".into()).await?;
    Ok(())
}
