//! The event history's readers (`history stats`, `history replay`): the stream read from
//! a time, which takes nothing away (a stream is read, not drained), and matching events
//! copied into a team's queue as the worker first published them.
//!
//! Over AMQP 0-9-1 a stream has no end a reader could reach, and RabbitMQ 3.10 reports no
//! message count for one: a reader waits for what comes next. A read ends at the first
//! event kept after its window (`until`, the read's start by default, plus the clock
//! skew allowed between replicas), or once nothing has come for `quiet`, which is the end
//! of what the stream held.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, PublisherConfirm};

use crate::amqp::confirm::judge;
use crate::amqp::connection::connect_checked;
use crate::amqp::error::{BrokerError, Role};
use crate::amqp::wire::{FrameCheck, Returns, Sent};
use crate::canonical::rfc3339_utc;
use crate::config::AmqpSettings;
use crate::delivery::PublishOutcome;
use crate::tools::kept::{as_published, kept_at};
use crate::tools::unrouted::stored::TypePattern;

/// How far one worker replica's clock may run ahead of another's: a read goes on this
/// long past its window's end, and starts this long before its start, so that an event
/// stamped by a replica a little ahead is still found.
const SKEW: TimeDelta = TimeDelta::seconds(5);

/// Deliveries a reader takes ahead (a stream consumer must set one).
const PREFETCH: u16 = 500;

/// Publishes a replay keeps unconfirmed at once.
const CONFIRM_WINDOW: usize = 64;

/// The events a read is for: kept (`x-normalizer-kept-at`) from `since` (the stream's
/// first event without one) until `until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub since: Option<DateTime<Utc>>,
    pub until: DateTime<Utc>,
}

impl Window {
    fn contains(&self, kept: DateTime<Utc>) -> bool {
        self.since.is_none_or(|since| kept >= since) && kept <= self.until
    }

    /// Where an event kept at `kept` falls: in the window, outside it, or so far past its
    /// end (more than [`SKEW`]) that nothing after it can be in it. A window ending at
    /// the latest time there is (a reader following the stream) has no past.
    fn place(&self, kept: DateTime<Utc>) -> Place {
        if self
            .until
            .checked_add_signed(SKEW)
            .is_some_and(|end| kept > end)
        {
            Place::Past
        } else if self.contains(kept) {
            Place::In
        } else {
            Place::Outside
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Place {
    In,
    Outside,
    Past,
}

/// Where the worker stored an event before keeping its copy in the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// A team's queue took it (tap routing key `canonical.{type}`).
    Delivered,
    /// No team was bound for it: kept on the unrouted queue (`unrouted.{type}`).
    Unrouted,
}

/// One event in the history, as its stream entry says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEvent {
    pub event_type: String,
    pub stored: Stored,
    /// The event's id (AMQP `message_id`).
    pub id: Option<String>,
    /// The raw message's id (AMQP `correlation_id`).
    pub correlation_id: Option<String>,
    pub kept_at: Option<DateTime<Utc>>,
    /// Its place in the stream (`x-stream-offset`).
    pub offset: Option<i64>,
    /// Body bytes.
    pub size: usize,
}

impl HistoryEvent {
    /// Reads a stream entry; `None` for one the history's bindings never route there (a
    /// copy made by hand, say).
    pub fn read(delivery: &Delivery) -> Option<HistoryEvent> {
        let key = delivery.routing_key.as_str();
        let (stored, event_type) = if let Some(t) = key.strip_prefix("canonical.") {
            (Stored::Delivered, t)
        } else if let Some(t) = key.strip_prefix("unrouted.") {
            (Stored::Unrouted, t)
        } else {
            return None;
        };
        let p = &delivery.properties;
        Some(HistoryEvent {
            event_type: event_type.to_owned(),
            stored,
            id: p.message_id().as_ref().map(|m| m.to_string()),
            correlation_id: p.correlation_id().as_ref().map(|m| m.to_string()),
            kept_at: kept_at(p),
            offset: p
                .headers()
                .as_ref()
                .and_then(|h| match h.inner().get("x-stream-offset") {
                    Some(AMQPValue::LongLongInt(n)) => Some(*n),
                    _ => None,
                }),
            size: delivery.data.len(),
        })
    }
}

/// Reads the history stream, in order, from its window's start: each event in the window
/// once, leaving the stream as it was.
pub struct HistoryReader {
    connection: Connection,
    /// What the broker returned of publishes on this connection (the client's own
    /// matching of returns to publishes cannot be trusted: [`crate::amqp::confirm`]).
    returns: Returns,
    consumer: lapin::Consumer,
    window: Window,
    /// `None`: a reader that follows the stream, waiting for what comes.
    quiet: Option<Duration>,
    /// Entries read, in the window or not.
    pub read: u64,
}

impl HistoryReader {
    /// Opens a reader of `stream` from `window.since` (less [`SKEW`]; from the first
    /// event kept without one), ending after `window.until` or `quiet` without an entry.
    pub async fn open(
        amqp: &AmqpSettings,
        stream: &str,
        window: Window,
        quiet: Duration,
    ) -> Result<HistoryReader, BrokerError> {
        let start = start_offset(window.since);
        HistoryReader::start(amqp, stream, window, start, Some(quiet)).await
    }

    /// Opens a reader that follows `stream` from `since` (from its next entry without
    /// one), and ends only when the stream does.
    pub async fn follow(
        amqp: &AmqpSettings,
        stream: &str,
        since: Option<DateTime<Utc>>,
    ) -> Result<HistoryReader, BrokerError> {
        let start = match since {
            Some(_) => start_offset(since),
            None => AMQPValue::LongString("next".into()),
        };
        let window = Window {
            since,
            until: DateTime::<Utc>::MAX_UTC,
        };
        HistoryReader::start(amqp, stream, window, start, None).await
    }

    async fn start(
        amqp: &AmqpSettings,
        stream: &str,
        window: Window,
        start: AMQPValue,
        quiet: Option<Duration>,
    ) -> Result<HistoryReader, BrokerError> {
        let check = FrameCheck::default();
        let returns = check.returns.clone();
        let connection = connect_checked(amqp, Role::Consumer, check).await?;
        let channel = connection
            .create_channel()
            .await
            .map_err(BrokerError::amqp("opening a channel"))?;
        channel
            .basic_qos(PREFETCH, BasicQosOptions::default())
            .await
            .map_err(BrokerError::amqp("setting a prefetch"))?;
        let mut args = FieldTable::default();
        args.insert("x-stream-offset".into(), start);
        let consumer = channel
            .basic_consume(
                stream.into(),
                "history".into(),
                BasicConsumeOptions::default(),
                args,
            )
            .await
            .map_err(BrokerError::amqp(format!("reading stream {stream}")))?;
        Ok(HistoryReader {
            connection,
            returns,
            consumer,
            window,
            quiet,
            read: 0,
        })
    }

    /// A channel on the reader's connection, for publishing what it reads.
    async fn channel(&self) -> Result<Channel, BrokerError> {
        self.connection
            .create_channel()
            .await
            .map_err(BrokerError::amqp("opening a channel"))
    }

    /// The next event in the window, with its entry; `None` once past the window or the
    /// end of the stream.
    pub async fn next(&mut self) -> Result<Option<(HistoryEvent, Delivery)>, BrokerError> {
        loop {
            let next = match self.quiet {
                Some(quiet) => match tokio::time::timeout(quiet, self.consumer.next()).await {
                    Err(_) => return Ok(None),
                    Ok(next) => next,
                },
                None => self.consumer.next().await,
            };
            let delivery = match next {
                None => return Err(BrokerError::ConsumerCancelled),
                Some(delivery) => {
                    delivery.map_err(BrokerError::amqp("reading the history stream"))?
                }
            };
            self.read += 1;
            // A stream consumer's acknowledgements only return its credit.
            delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .map_err(BrokerError::amqp("acknowledging a stream entry"))?;
            let Some(event) = HistoryEvent::read(&delivery) else {
                continue;
            };
            if let Some(kept) = event.kept_at {
                match self.window.place(kept) {
                    Place::Past => return Ok(None),
                    Place::Outside => continue,
                    Place::In => {}
                }
            }
            return Ok(Some((event, delivery)));
        }
    }

    pub async fn close(self) {
        let _ = self.connection.close(200, "history read".into()).await;
    }
}

/// Where a read of the window starting at `since` starts: that time less [`SKEW`] (the
/// broker starts at the chunk holding it), or the stream's first entry.
fn start_offset(since: Option<DateTime<Utc>>) -> AMQPValue {
    match since {
        Some(t) => AMQPValue::Timestamp(
            t.checked_sub_signed(SKEW)
                .and_then(|t| u64::try_from(t.timestamp()).ok())
                .unwrap_or(0),
        ),
        None => AMQPValue::LongString("first".into()),
    }
}

/// Why a replay stopped before the end of its window.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("queue {0} does not exist: the team declares and binds its queue first")]
    NoQueue(String),
    #[error("queue {queue} refused an event ({why}) after {sent} were confirmed; those stay in it")]
    Refused {
        queue: String,
        why: &'static str,
        sent: u64,
    },
}

/// What `history replay` copies, and how fast.
pub struct Replay<'a> {
    /// The team's queue, published to through the default exchange.
    pub to_queue: &'a str,
    /// Only types matching this.
    pub pattern: Option<&'a TypePattern>,
    pub limit: Option<u64>,
    pub per_second: Option<f64>,
    /// List what would be copied; copy nothing.
    pub dry_run: bool,
}

/// What a replay read, matched and copied.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReplaySummary {
    pub read: u64,
    pub matched: u64,
    /// Copied and confirmed (listed, with `dry_run`).
    pub sent: u64,
}

/// Copies the window's events matching `replay.pattern`, in the stream's order, into
/// `replay.to_queue`: each with its id, body and properties as the worker first
/// published it, confirmed. Takes nothing from the stream. Killed half way, the queue
/// holds a prefix of the matching events. `each` sees each one picked, as it is picked.
pub async fn replay_history(
    amqp: &AmqpSettings,
    stream: &str,
    window: Window,
    quiet: Duration,
    replay: Replay<'_>,
    each: &mut dyn FnMut(&HistoryEvent),
) -> Result<ReplaySummary, ReplayError> {
    let mut reader = HistoryReader::open(amqp, stream, window, quiet).await?;
    let channel = reader.channel().await?;
    // Passive: the queue must exist (a copy to no queue would be returned, or lost).
    if let Err(e) = channel
        .queue_declare(
            replay.to_queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
    {
        let e = BrokerError::Amqp {
            what: format!("checking queue {}", replay.to_queue),
            source: e,
        };
        reader.close().await;
        return Err(if e.is_not_found() {
            ReplayError::NoQueue(replay.to_queue.to_owned())
        } else {
            e.into()
        });
    }
    let channel = reader.channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(BrokerError::amqp("enabling publisher confirms"))?;
    let mut summary = ReplaySummary::default();
    let mut confirms = Confirms {
        pending: VecDeque::new(),
        confirmed: 0,
        queue: replay.to_queue,
        channel: channel.id(),
        returns: reader.returns.clone(),
    };
    let pause = replay.per_second.map(|r| Duration::from_secs_f64(1.0 / r));
    let mut next_at = tokio::time::Instant::now();
    let copied = async {
        while let Some((event, delivery)) = reader.next().await? {
            if replay
                .pattern
                .is_some_and(|p| !p.matches(&event.event_type))
            {
                continue;
            }
            summary.matched += 1;
            if replay.limit.is_some_and(|l| summary.sent >= l) {
                continue;
            }
            summary.sent += 1;
            each(&event);
            if replay.dry_run {
                continue;
            }
            if let Some(pause) = pause {
                tokio::time::sleep_until(next_at).await;
                next_at += pause;
            }
            let confirm = channel
                .basic_publish(
                    "".into(),
                    replay.to_queue.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &delivery.data,
                    as_published(&delivery.properties),
                )
                .await
                .map_err(BrokerError::amqp(format!(
                    "publishing to queue {}",
                    replay.to_queue
                )))?;
            confirms
                .pending
                .push_back((confirm, event.id, delivery.data));
            if confirms.pending.len() >= CONFIRM_WINDOW {
                confirms.oldest().await?;
            }
        }
        while !confirms.pending.is_empty() {
            confirms.oldest().await?;
        }
        Ok::<(), ReplayError>(())
    };
    let copied = copied.await;
    summary.read = reader.read;
    reader.close().await;
    copied.map(|()| summary)
}

/// A replay's publishes awaiting their confirms, oldest first, each with its message id
/// and body: what tells a return of it from one of another.
struct Confirms<'a> {
    pending: VecDeque<(PublisherConfirm, Option<String>, Vec<u8>)>,
    confirmed: u64,
    queue: &'a str,
    channel: u16,
    returns: Returns,
}

impl Confirms<'_> {
    /// Waits for the oldest publish's confirm.
    async fn oldest(&mut self) -> Result<(), ReplayError> {
        let Some((confirm, message_id, body)) = self.pending.pop_front() else {
            return Ok(());
        };
        let confirmation = confirm.await.map_err(BrokerError::amqp(format!(
            "confirming to queue {}",
            self.queue
        )))?;
        let sent = Sent {
            exchange: "",
            routing_key: self.queue,
            message_id: message_id.as_deref(),
            body: &body,
        };
        let why = match judge(&confirmation, &self.returns, self.channel, &sent) {
            PublishOutcome::Confirmed => {
                self.confirmed += 1;
                return Ok(());
            }
            PublishOutcome::Returned => "returned: the queue is gone",
            PublishOutcome::Nacked => "nacked: full, or unavailable",
            _ => "not confirmed",
        };
        Err(ReplayError::Refused {
            queue: self.queue.to_owned(),
            why,
            sent: self.confirmed,
        })
    }
}

/// The history's events by type: `history stats`.
#[derive(Debug, Default)]
pub struct HistoryStats {
    by_type: BTreeMap<String, TypeStats>,
}

#[derive(Debug, Default)]
struct TypeStats {
    delivered: u64,
    unrouted: u64,
    bytes: u64,
    first_kept: Option<DateTime<Utc>>,
    last_kept: Option<DateTime<Utc>>,
}

impl HistoryStats {
    pub fn add(&mut self, event: &HistoryEvent) {
        let t = self.by_type.entry(event.event_type.clone()).or_default();
        match event.stored {
            Stored::Delivered => t.delivered += 1,
            Stored::Unrouted => t.unrouted += 1,
        }
        t.bytes += event.size as u64;
        if let Some(kept) = event.kept_at {
            t.first_kept = Some(t.first_kept.map_or(kept, |f| f.min(kept)));
            t.last_kept = Some(t.last_kept.map_or(kept, |l| l.max(kept)));
        }
    }

    /// A header line, then one line per type (tab-separated): type, events, delivered to
    /// a team, kept unrouted, bytes, first and last kept.
    pub fn lines(&self) -> Vec<String> {
        let time = |t: Option<DateTime<Utc>>| {
            t.map_or_else(|| "-".to_owned(), |t| rfc3339_utc::format(&t))
        };
        std::iter::once(
            "type\tevents\tdelivered\tunrouted\tbytes\tfirst_kept\tlast_kept".to_owned(),
        )
        .chain(self.by_type.iter().map(|(name, t)| {
            format!(
                "{name}\t{}\t{}\t{}\t{}\t{}\t{}",
                t.delivered + t.unrouted,
                t.delivered,
                t.unrouted,
                t.bytes,
                time(t.first_kept),
                time(t.last_kept)
            )
        }))
        .collect()
    }
}

/// A time given on the command line: RFC 3339 (`2026-12-01T10:00:00Z`), or a span before
/// `now` (`90s`, `10m`, `2h`, `7d`).
pub fn parse_time(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let seconds_per = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => 0,
    };
    let span = digits
        .parse::<i64>()
        .ok()
        .filter(|_| seconds_per > 0)
        .and_then(|n| n.checked_mul(seconds_per))
        .and_then(TimeDelta::try_seconds);
    match span.and_then(|span| now.checked_sub_signed(span)) {
        Some(t) => Ok(t),
        None => Err(
            "must be a time (RFC 3339, e.g. 2026-12-01T10:00:00Z) or a span before now (90s, 10m, 2h, 7d)"
                .to_owned(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn times_are_rfc3339_or_a_span_before_now() {
        let now = at("2026-12-06T12:00:00Z");
        assert_eq!(parse_time("10m", now), Ok(at("2026-12-06T11:50:00Z")));
        assert_eq!(parse_time("2h", now), Ok(at("2026-12-06T10:00:00Z")));
        assert_eq!(parse_time("7d", now), Ok(at("2026-11-29T12:00:00Z")));
        assert_eq!(parse_time("90s", now), Ok(at("2026-12-06T11:58:30Z")));
        assert_eq!(
            parse_time("2026-12-01T10:00:00+01:00", now),
            Ok(at("2026-12-01T09:00:00Z"))
        );
        for bad in [
            "",
            "10",
            "m",
            "10 m",
            "-5m",
            "10w",
            "99999999999999999d",
            "yesterday",
        ] {
            assert!(parse_time(bad, now).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_window_holds_its_ends() {
        let w = Window {
            since: Some(at("2026-12-06T10:00:00Z")),
            until: at("2026-12-06T11:00:00Z"),
        };
        assert!(w.contains(at("2026-12-06T10:00:00Z")));
        assert!(w.contains(at("2026-12-06T11:00:00Z")));
        assert!(!w.contains(at("2026-12-06T09:59:59Z")));
        assert!(!w.contains(at("2026-12-06T11:00:01Z")));
        let open = Window {
            since: None,
            until: at("2026-12-06T11:00:00Z"),
        };
        assert!(open.contains(at("1970-01-01T00:00:00Z")));
        assert_eq!(w.place(at("2026-12-06T11:00:05Z")), Place::Outside);
        assert_eq!(w.place(at("2026-12-06T11:00:05.001Z")), Place::Past);
        assert_eq!(w.place(at("2026-12-06T09:00:00Z")), Place::Outside);
        assert_eq!(w.place(at("2026-12-06T10:30:00Z")), Place::In);
        let following = Window {
            since: None,
            until: DateTime::<Utc>::MAX_UTC,
        };
        assert_eq!(following.place(DateTime::<Utc>::MAX_UTC), Place::In);
    }

    #[test]
    fn a_read_from_a_time_starts_before_it_and_without_one_at_the_first_entry() {
        assert_eq!(
            start_offset(Some(at("2026-12-06T10:00:00Z"))),
            AMQPValue::Timestamp(at("2026-12-06T09:59:55Z").timestamp() as u64)
        );
        assert_eq!(start_offset(None), AMQPValue::LongString("first".into()));
    }

    #[test]
    fn stats_count_by_type_and_where_stored() {
        let event = |t: &str, stored, kept: &str| HistoryEvent {
            event_type: t.to_owned(),
            stored,
            id: None,
            correlation_id: None,
            kept_at: Some(at(kept)),
            offset: None,
            size: 10,
        };
        let mut stats = HistoryStats::default();
        stats.add(&event(
            "deel.contract.created",
            Stored::Delivered,
            "2026-12-06T10:00:00Z",
        ));
        stats.add(&event(
            "deel.contract.created",
            Stored::Unrouted,
            "2026-12-06T09:00:00Z",
        ));
        stats.add(&event(
            "authenticate.identity.verified",
            Stored::Delivered,
            "2026-12-06T11:00:00Z",
        ));
        assert_eq!(
            stats.lines(),
            [
                "type\tevents\tdelivered\tunrouted\tbytes\tfirst_kept\tlast_kept",
                "authenticate.identity.verified\t1\t1\t0\t10\t2026-12-06T11:00:00Z\t2026-12-06T11:00:00Z",
                "deel.contract.created\t2\t1\t1\t20\t2026-12-06T09:00:00Z\t2026-12-06T10:00:00Z",
            ]
        );
    }
}
