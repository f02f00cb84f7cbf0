//! Walking a queue we keep messages in (the dead-letter queue, the unrouted queue)
//! without changing it, for the `dlq` and `unrouted` commands.
//!
//! Looking at a message in a queue means taking it. Taking it and giving it back
//! (`basic.reject`/`nack` with requeue) raises its delivery count, and a quorum queue
//! with a delivery limit (RabbitMQ 4.x: 20 by default) eventually drops it. So a walk
//! never requeues:
//!
//! 1. It takes a lock: an exclusive queue `{queue}.lock`, which the broker lets one
//!    connection hold and removes when that connection ends, however it ends. A second
//!    walk fails at once with a clear message.
//! 2. It counts the messages present (`queue.declare`, passive) and takes exactly that
//!    many, in queue order (`basic.get`), so it always ends and never meets its own
//!    output.
//! 3. For each: it publishes a copy to the tail of the same queue (through the default
//!    exchange, so that no other queue bound where the message came from gets one), with
//!    the same body and properties, its routing key kept in a header and no
//!    `x-delivery-count`; and once the broker has confirmed the copy, acks the original.
//!    In a queue with a message TTL, the copy expires when the original would have: it
//!    carries the time it has left (`expiration`), from when it was first kept
//!    (`x-normalizer-kept-at`); one whose time is up is not copied.
//! 4. Or, for a message the caller picks, it sends it on instead (a replay), confirmed,
//!    and then acks it: it leaves the queue. If it comes back as unroutable, a copy is
//!    kept as in 3. Or it drops it (acks it without a copy).
//!
//! A copy carries the message's properties with only the edits named in 3 (a replay,
//! only its own: see the caller). The client parses properties into its own types and
//! writes them again: the same values. But what it cannot parse as sent (a short string
//! that is not UTF-8, headers nested deeper than it goes, a repeated header name) the
//! frame check rewrites first ([`crate::amqp::wire`]), and a copy made of that would carry the
//! rewrite. So the walk's connection keeps each rewritten content header as it was sent,
//! the walk makes the same edits to those bytes ([`crate::amqp::wire::edit`]), and the
//! connection's stream sends them in place of what the client writes for the copy. Where that cannot be done (the edited properties
//! would not fit `frame_max`, or the bytes cannot be walked), the message is left in
//! hand, unacked, until the walk ends: the broker then gives it back, as it was, at the
//! head of the queue, its delivery count one higher ([`WalkSummary::left_in_place`]).
//!
//! Publishes are pipelined: up to [`WINDOW`] messages (and at most [`WINDOW_BYTES`] of
//! bodies, beyond the first) are in hand at once, each acked in
//! order once its own publish is confirmed. After a whole walk the queue holds the same
//! messages in the same order (messages that arrived meanwhile may sit among them; a
//! replay that came back sits a little later). Killed at any point, nothing is lost: the
//! messages in hand are at worst both copied (or sent) and, unacked, given back to the
//! queue, where the next walk's copy starts their delivery count again.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use lapin::Acker;
use lapin::PublisherConfirm;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation};

use crate::amqp::confirm::judge;
use crate::amqp::connection::connect_checked;
use crate::amqp::error::{BrokerError, Role};
use crate::amqp::headers::{header_payload_size, header_room};
use crate::amqp::wire::edit::{PropertyEdits, edit_content_header};
use crate::amqp::wire::{FrameCheck, Returns, Sent, Verbatim, WireReports};
use crate::config::AmqpSettings;
use crate::delivery::PublishOutcome;

/// Messages in hand at once: taken, their copy or replay published, not yet acked.
/// Killed mid-walk, at most this many are both copied and given back.
pub const WINDOW: usize = 32;

/// Bytes of bodies in hand at once, beyond the oldest: a queue of large messages (a
/// broker-made dead letter of an oversized body can be 100 MiB) is walked one at a time.
pub const WINDOW_BYTES: usize = 64 * 1024 * 1024;

/// What to do with one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Leave it in the queue (a copy goes to the tail).
    Keep,
    /// Send it on (where, the caller's walk says) and take it off the queue.
    Replay,
    /// Take it off the queue for good.
    Drop,
}

/// What the walk does with one message: [`Action`] with the replay's destination.
pub(crate) enum Step {
    Keep,
    Send {
        exchange: String,
        routing_key: String,
        properties: Box<BasicProperties>,
    },
    Drop,
}

/// Which queue to walk, and how.
pub(crate) struct Walk<'a> {
    /// The command walking it (`dlq`, `unrouted`), for messages.
    pub(crate) command: &'static str,
    pub(crate) queue: &'a str,
    /// The header a copy keeps the message's routing key in (a copy's own is the queue's
    /// name).
    pub(crate) routing_key_header: &'a str,
    /// At most this many replays a second.
    pub(crate) per_second: Option<f64>,
    /// The only exchanges a replay may go to; one for any other is kept.
    pub(crate) replay_to: &'a [&'a str],
    /// The queue's message TTL, if it has one.
    pub(crate) ttl: Option<Duration>,
}

/// How far a walk is: called once the count is known, then after each message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub done: u64,
    pub at_start: u64,
}

/// What a walk saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WalkSummary {
    /// Messages in the queue when the walk started.
    pub at_start: u64,
    /// Messages it read.
    pub read: u64,
    /// Of those, replayed (confirmed, taken off the queue).
    pub replayed: u64,
    /// Picked for replay but returned as unroutable: kept.
    pub unroutable: u64,
    /// Taken off the queue for good.
    pub dropped: u64,
    /// Kept past the queue's TTL (the broker would have dropped them): not copied.
    pub expired: u64,
    /// Picked for replay to an exchange the walk may not publish to: kept.
    pub not_allowed: u64,
    /// Picked for replay to an exchange that does not exist, by exchange: kept.
    pub missing_exchanges: std::collections::BTreeMap<String, u64>,
    /// Read, but their properties as sent, with the walk's edits, could not be copied
    /// (or replayed) byte for byte (see the module's documentation): left unacked until
    /// the walk ended, so the broker gave them back as they were, their delivery count
    /// one higher.
    pub left_in_place: u64,
}

/// Why a walk could not run or stopped.
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    #[error(
        "another {command} command is working on {queue} (it holds the exclusive queue {lock}); try again when it has finished"
    )]
    Locked {
        command: &'static str,
        queue: String,
        lock: String,
    },
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("not confirmed ({0}); the message stays in the queue")]
    NotConfirmed(String),
}

/// Reads every message present in `walk.queue` when it starts, in order; `decide` says
/// what becomes of each (see the module's documentation).
pub(crate) async fn walk_queue(
    amqp: &AmqpSettings,
    walk: Walk<'_>,
    progress: &mut dyn FnMut(Progress),
    mut decide: impl FnMut(&Delivery, &str) -> Step,
) -> Result<WalkSummary, WalkError> {
    let queue = walk.queue;
    let verbatim = Verbatim::default();
    let check = FrameCheck {
        verbatim: Some(verbatim.clone()),
        ..FrameCheck::default()
    };
    let returns = check.returns.clone();
    let reports = check.reports.clone();
    let connection = connect_checked(amqp, Role::Admin, check).await?;
    let channel = connection
        .create_channel()
        .await
        .map_err(BrokerError::amqp("opening a channel"))?;
    let lock = format!("{queue}.lock");
    channel
        .queue_declare(
            lock.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| match e.kind() {
            lapin::ErrorKind::ProtocolError(amqp) if amqp.kind().get_id() == 405 => {
                WalkError::Locked {
                    command: walk.command,
                    queue: queue.to_owned(),
                    lock: lock.clone(),
                }
            }
            _ => BrokerError::amqp(format!("taking the lock {lock}"))(e).into(),
        })?;
    let mut reader = Reader {
        connection: &connection,
        scratch: None,
        exchanges: std::collections::HashMap::new(),
        channel: &channel,
        returns,
        reports,
        verbatim,
        header_room: header_room(connection.configuration().frame_max()),
        left_in_place: Vec::new(),
        walk: &walk,
        // A rate too small for a `Duration` (validated away by the CLI) means no pause
        // rather than a panic.
        pace: walk
            .per_second
            .filter(|r| *r > 0.0)
            .and_then(|r| Duration::try_from_secs_f64(1.0 / r).ok()),
        next_send: tokio::time::Instant::now(),
        in_hand: VecDeque::with_capacity(WINDOW),
        summary: WalkSummary::default(),
    };
    let walked = reader.read_through(progress, &mut decide).await;
    let _ = connection.close(200, "walk done".into()).await;
    walked
}

/// Properties to publish a copy or replay with, and, for a message whose properties the
/// frame check had to rewrite, the content header to send in their place: the message's
/// own as sent, with the same edits.
struct Outgoing {
    properties: BasicProperties,
    verbatim: Option<Vec<u8>>,
}

/// A message taken and not yet acked.
struct InHand {
    acker: Acker,
    /// The copy's or the replay's confirm, and what it sent; none for a drop.
    confirm: Option<(PublisherConfirm, Published)>,
    took: Took,
}

impl InHand {
    /// The body it holds.
    fn bytes(&self) -> usize {
        self.confirm.as_ref().map_or(0, |(_, p)| p.body.len())
    }
}

/// What a walk did with a message in hand.
enum Took {
    /// Put a copy back at the tail.
    Kept,
    /// Sent it on; `copy` is what to keep if it comes back unroutable (none when its time
    /// in the queue is up).
    Replayed {
        copy: Option<Box<Outgoing>>,
    },
    Dropped,
    /// Its time in the queue was up: not copied.
    Expired,
    /// Could not be copied byte for byte: never acked.
    LeftInPlace,
}

/// What one publish of the walk sent, to tell whether it came back.
struct Published {
    exchange: String,
    routing_key: String,
    message_id: Option<String>,
    body: Vec<u8>,
}

impl Published {
    fn new(exchange: &str, routing_key: &str, properties: &BasicProperties, body: Vec<u8>) -> Self {
        Published {
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
            message_id: properties.message_id().as_ref().map(|m| m.to_string()),
            body,
        }
    }

    fn sent(&self) -> Sent<'_> {
        Sent {
            exchange: &self.exchange,
            routing_key: &self.routing_key,
            message_id: self.message_id.as_deref(),
            body: &self.body,
        }
    }
}

struct Reader<'a> {
    connection: &'a lapin::Connection,
    /// A channel for checking that an exchange exists (a failed check closes it).
    scratch: Option<Channel>,
    /// Exchanges checked so far, and whether they exist.
    exchanges: std::collections::HashMap<String, bool>,
    channel: &'a Channel,
    returns: Returns,
    /// What the frame check rewrote, by delivery: there, its content header as sent.
    reports: WireReports,
    verbatim: Verbatim,
    /// The largest content header payload the connection's `frame_max` allows.
    header_room: usize,
    /// Messages left unacked until the connection closes.
    left_in_place: Vec<Acker>,
    walk: &'a Walk<'a>,
    pace: Option<Duration>,
    next_send: tokio::time::Instant,
    in_hand: VecDeque<InHand>,
    summary: WalkSummary,
}

impl Reader<'_> {
    async fn read_through(
        &mut self,
        progress: &mut dyn FnMut(Progress),
        decide: &mut impl FnMut(&Delivery, &str) -> Step,
    ) -> Result<WalkSummary, WalkError> {
        let queue = self.walk.queue;
        let declared = self
            .channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(BrokerError::amqp(format!("finding the queue {queue}")))?;
        let at_start = u64::from(declared.message_count());
        self.summary.at_start = at_start;
        progress(Progress { done: 0, at_start });
        if at_start == 0 {
            return Ok(std::mem::take(&mut self.summary));
        }
        self.channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(BrokerError::amqp("turning on publisher confirms"))?;
        let mut taken = 0u64;
        while taken < at_start {
            // One at a time (`basic.get`), not a consumer: a consumer's prefetch would
            // take copies from the tail past the last original, and giving those back
            // would count as a delivery.
            let got = self
                .channel
                .basic_get(queue.into(), BasicGetOptions::default())
                .await
                .map_err(BrokerError::amqp(format!("reading {queue}")))?;
            let Some(got) = got else {
                break; // Another consumer took the rest.
            };
            taken += 1;
            let delivery = got.delivery;
            // Taken for every delivery, so none is left behind.
            let sent = self
                .reports
                .take(self.channel.id(), delivery.delivery_tag)
                .and_then(|report| report.original_header);
            let routing_key = own_routing_key(&delivery, self.walk.routing_key_header);
            let step = match decide(&delivery, &routing_key) {
                Step::Send { exchange, .. }
                    if !self.walk.replay_to.contains(&exchange.as_str()) =>
                {
                    self.summary.not_allowed += 1;
                    Step::Keep
                }
                Step::Send { exchange, .. } if !self.exchange_exists(&exchange).await? => {
                    *self.summary.missing_exchanges.entry(exchange).or_default() += 1;
                    Step::Keep
                }
                step => step,
            };
            let in_hand = self
                .start(step, delivery, &routing_key, sent.as_deref())
                .await?;
            self.in_hand.push_back(in_hand);
            let bytes: usize = self.in_hand.iter().map(InHand::bytes).sum();
            // Ack what is confirmed already (few are left to give back if killed); wait
            // for the oldest only when the window is full.
            let full = self.in_hand.len() >= WINDOW || bytes >= WINDOW_BYTES;
            if self.settle(full).await? > 0 {
                progress(Progress {
                    done: self.summary.read,
                    at_start,
                });
            }
        }
        while !self.in_hand.is_empty() {
            self.settle(true).await?;
            progress(Progress {
                done: self.summary.read,
                at_start,
            });
        }
        Ok(std::mem::take(&mut self.summary))
    }

    /// Whether `exchange` exists (asked once per walk): a dead letter naming one that
    /// was deleted is kept, and does not stop the walk by closing its channel.
    async fn exchange_exists(&mut self, exchange: &str) -> Result<bool, WalkError> {
        if let Some(known) = self.exchanges.get(exchange) {
            return Ok(*known);
        }
        let scratch = match self.scratch.take() {
            Some(channel) if channel.status().connected() => channel,
            _ => self
                .connection
                .create_channel()
                .await
                .map_err(BrokerError::amqp("opening a channel"))?,
        };
        let declared = scratch
            .exchange_declare(
                exchange.into(),
                lapin::ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    passive: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        let exists = match declared {
            Ok(()) => {
                self.scratch = Some(scratch);
                true
            }
            Err(e) if matches!(e.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.kind().get_id() == 404) => {
                false
            }
            Err(e) => {
                return Err(BrokerError::amqp(format!(
                    "checking that the exchange {exchange} exists"
                ))(e)
                .into());
            }
        };
        self.exchanges.insert(exchange.to_owned(), exists);
        Ok(exists)
    }

    /// Publishes a message's copy or replay (not waiting for the confirm). `sent` is
    /// its content header as sent, when the frame check had to rewrite it.
    async fn start(
        &mut self,
        step: Step,
        delivery: Delivery,
        routing_key: &str,
        sent: Option<&[u8]>,
    ) -> Result<InHand, WalkError> {
        let queue = self.walk.queue;
        let left_in_place = |acker| InHand {
            acker,
            confirm: None,
            took: Took::LeftInPlace,
        };
        let (confirm, took) = match step {
            Step::Drop => (None, Took::Dropped),
            Step::Keep => {
                let Some(properties) = copy_properties(
                    &delivery.properties,
                    self.walk.routing_key_header,
                    routing_key,
                    self.walk.ttl,
                ) else {
                    return Ok(InHand {
                        acker: delivery.acker,
                        confirm: None,
                        took: Took::Expired,
                    });
                };
                let Some(copy) = self.outgoing(sent, &delivery.properties, properties) else {
                    return Ok(left_in_place(delivery.acker));
                };
                let published = Published::new("", queue, &copy.properties, delivery.data);
                let confirm = self
                    .publish(&published, copy)
                    .await
                    .map_err(BrokerError::amqp(format!("putting a copy back on {queue}")))?;
                (Some((confirm, published)), Took::Kept)
            }
            Step::Send {
                exchange,
                routing_key: to,
                properties,
            } => {
                let copy = match copy_properties(
                    &delivery.properties,
                    self.walk.routing_key_header,
                    routing_key,
                    self.walk.ttl,
                ) {
                    None => None,
                    Some(copy) => match self.outgoing(sent, &delivery.properties, copy) {
                        Some(copy) => Some(Box::new(copy)),
                        None => return Ok(left_in_place(delivery.acker)),
                    },
                };
                let Some(replay) = self.outgoing(sent, &delivery.properties, *properties) else {
                    return Ok(left_in_place(delivery.acker));
                };
                if let Some(pace) = self.pace {
                    tokio::time::sleep_until(self.next_send).await;
                    self.next_send = tokio::time::Instant::now() + pace;
                }
                let published = Published::new(&exchange, &to, &replay.properties, delivery.data);
                let confirm = self
                    .publish(&published, replay)
                    .await
                    .map_err(BrokerError::amqp(format!("replaying to {exchange}")))?;
                (Some((confirm, published)), Took::Replayed { copy })
            }
        };
        Ok(InHand {
            acker: delivery.acker,
            confirm,
            took,
        })
    }

    /// Settles, in order, the messages in hand whose publishes are confirmed; with
    /// `wait_for_oldest`, waits for the oldest one's confirm first. Returns how many.
    async fn settle(&mut self, mut wait_for_oldest: bool) -> Result<u64, WalkError> {
        let mut settled = 0;
        while let Some(oldest) = self.in_hand.front_mut() {
            let outcome = match oldest.confirm.as_mut() {
                None => None,
                Some((confirm, _)) if wait_for_oldest => Some(confirm.await),
                Some((confirm, _)) => {
                    let polled =
                        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *confirm).poll(cx)))
                            .await;
                    match polled {
                        Poll::Ready(outcome) => Some(outcome),
                        Poll::Pending => break,
                    }
                }
            };
            wait_for_oldest = false;
            let Some(held) = self.in_hand.pop_front() else {
                break;
            };
            self.settle_one(held, outcome).await?;
            settled += 1;
        }
        Ok(settled)
    }

    /// Keeps a copy of a replay that came back, then acks the message (but one left in
    /// place).
    async fn settle_one(
        &mut self,
        held: InHand,
        confirmed: Option<Result<Confirmation, lapin::Error>>,
    ) -> Result<(), WalkError> {
        let queue = self.walk.queue;
        if let Took::LeftInPlace = held.took {
            self.left_in_place.push(held.acker);
            self.summary.left_in_place += 1;
            self.summary.read += 1;
            return Ok(());
        }
        match (confirmed, held.confirm, held.took) {
            (Some(confirmation), Some((_, published)), took) => {
                let came_back = self.returned(confirmation, &published, "publishing")?;
                match (took, came_back) {
                    (Took::Replayed { .. }, false) => self.summary.replayed += 1,
                    (Took::Replayed { copy: Some(copy) }, true) => {
                        // Nowhere to go: it stays where it was.
                        self.summary.unroutable += 1;
                        let copied = Published::new("", queue, &copy.properties, published.body);
                        let confirm =
                            self.publish(&copied, *copy)
                                .await
                                .map_err(BrokerError::amqp(format!(
                                    "putting a copy back on {queue}"
                                )))?;
                        if self.returned(confirm.await, &copied, "putting a copy back")? {
                            return Err(WalkError::NotConfirmed(format!(
                                "putting a copy back on {queue}: returned as unroutable"
                            )));
                        }
                    }
                    (Took::Replayed { copy: None }, true) => {
                        // Nowhere to go, and its time in the queue is up.
                        self.summary.unroutable += 1;
                        self.summary.expired += 1;
                    }
                    (_, false) => {}
                    (_, true) => {
                        return Err(WalkError::NotConfirmed(format!(
                            "putting a copy back on {queue}: returned as unroutable"
                        )));
                    }
                }
            }
            (_, _, Took::Expired) => self.summary.expired += 1,
            _ => self.summary.dropped += 1,
        }
        held.acker
            .ack(BasicAckOptions::default())
            .await
            .map_err(BrokerError::amqp(format!(
                "acknowledging a message on {queue}"
            )))?;
        self.summary.read += 1;
        Ok(())
    }
}

impl Reader<'_> {
    /// How to publish `wanted` in place of a message the client saw as `seen`: as it is
    /// when the frame check left the properties as sent; else with the bytes `sent` with
    /// the same edits made. `None` when that cannot be done: the bytes cannot be walked,
    /// or the edited content header (or the client's, marked) would not fit `frame_max`.
    fn outgoing(
        &self,
        sent: Option<&[u8]>,
        seen: &BasicProperties,
        wanted: BasicProperties,
    ) -> Option<Outgoing> {
        let Some(sent) = sent else {
            return Some(Outgoing {
                properties: wanted,
                verbatim: None,
            });
        };
        let edits = PropertyEdits::between(seen, &wanted)?;
        let edited = edit_content_header(sent, &edits)?;
        let marked = wanted
            .clone()
            .with_cluster_id("m".repeat(Verbatim::MARKER_LEN).as_str().into());
        if edited.len() > self.header_room || header_payload_size(&marked) > self.header_room {
            return None;
        }
        Some(Outgoing {
            properties: wanted,
            verbatim: Some(edited),
        })
    }

    /// Publishes one message, mandatory, marked for its content header to be swapped when
    /// it has one to send instead; the confirm is waited for later.
    async fn publish(
        &self,
        published: &Published,
        outgoing: Outgoing,
    ) -> Result<PublisherConfirm, lapin::Error> {
        let mut properties = outgoing.properties;
        let marker = outgoing
            .verbatim
            .map(|edited| self.verbatim.register(edited));
        if let Some(marker) = &marker {
            properties = properties.with_cluster_id(marker.as_str().into());
        }
        let published = self
            .channel
            .basic_publish(
                published.exchange.as_str().into(),
                published.routing_key.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &published.body,
                properties,
            )
            .await;
        if published.is_err()
            && let Some(marker) = &marker
        {
            self.verbatim.forget(marker);
        }
        published
    }

    /// A publish's confirm: `Ok(true)` when the message came back as unroutable.
    fn returned(
        &self,
        confirmation: Result<Confirmation, lapin::Error>,
        published: &Published,
        what: &str,
    ) -> Result<bool, WalkError> {
        let confirmation = confirmation.map_err(BrokerError::amqp(what))?;
        match judge(
            &confirmation,
            &self.returns,
            self.channel.id(),
            &published.sent(),
        ) {
            PublishOutcome::Confirmed => Ok(false),
            PublishOutcome::Returned => Ok(true),
            PublishOutcome::Nacked => Err(WalkError::NotConfirmed(format!("{what}: nacked"))),
            other => Err(WalkError::NotConfirmed(format!(
                "{what}: {}",
                crate::ops::describe(&other)
            ))),
        }
    }
}

/// A message's own routing key: for a copy a walk put back (delivered through the
/// default exchange, under the queue's name), the one kept in `header`; for any other,
/// the one it was delivered with, whatever its headers say (whoever published it could
/// have written them).
fn own_routing_key(delivery: &Delivery, header: &str) -> String {
    let kept = delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(header))
        .filter(|_| delivery.exchange.as_str().is_empty());
    match kept {
        Some(AMQPValue::LongString(k)) => String::from_utf8_lossy(k.as_bytes()).into_owned(),
        _ => delivery.routing_key.to_string(),
    }
}

/// The copy's properties: the original's, with the routing key kept in `header` and the
/// broker's delivery count left out (the copy is a new message; its count starts again).
/// In a queue with a `ttl`, the copy expires when the original would have (from
/// `x-normalizer-kept-at`); `None` when that time has passed. One that does not say when
/// it was kept (kept by an older version), or says a time still to come, is stamped
/// with now: its time starts again once, not at every walk.
fn copy_properties(
    original: &BasicProperties,
    header: &str,
    routing_key: &str,
    ttl: Option<Duration>,
) -> Option<BasicProperties> {
    use crate::contract::headers::KEPT_AT;
    let mut headers = FieldTable::default();
    if let Some(table) = original.headers() {
        for (k, v) in table.inner() {
            if k.as_str() != "x-delivery-count" {
                headers.insert(k.clone(), v.clone());
            }
        }
    }
    headers.insert(header.into(), AMQPValue::LongString(routing_key.into()));
    let Some(ttl) = ttl else {
        return Some(original.clone().with_headers(headers));
    };
    let now = chrono::Utc::now();
    let kept_at = match headers.inner().get(KEPT_AT) {
        Some(AMQPValue::LongString(t)) => {
            chrono::DateTime::parse_from_rfc3339(&String::from_utf8_lossy(t.as_bytes()))
                .ok()
                .map(|t| t.with_timezone(&chrono::Utc))
                .filter(|t| *t <= now)
        }
        _ => None,
    };
    let kept_at = kept_at.unwrap_or_else(|| {
        let stamp = crate::canonical::rfc3339_utc::format(&now);
        headers.insert(KEPT_AT.into(), AMQPValue::LongString(stamp.as_str().into()));
        now
    });
    let age = now
        .signed_duration_since(kept_at)
        .to_std()
        .unwrap_or_default();
    let left = ttl.checked_sub(age).filter(|left| !left.is_zero())?;
    Some(
        original
            .clone()
            .with_headers(headers)
            .with_expiration(left.as_millis().max(1).to_string().as_str().into()),
    )
}
