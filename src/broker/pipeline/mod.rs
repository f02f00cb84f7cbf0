//! The path from `basic.deliver` to `basic.ack`: each raw delivery, in consumption
//! order, becomes bounded AMQP messages ([`crate::delivery::plan`], then the frame
//! check), which are published in that order; once its publishes are decided it is
//! settled, in that order. One task drives it all, and nothing here restarts the session:
//! what one message causes is settled for that message (see `crate::delivery` for the
//! policy).
//!
//! Failures:
//! - **transient** (nack, return, confirm timeout, lost channel, missing exchange): the
//!   pipeline enters an *outage*: it stops taking deliveries, and republishes every
//!   failed publish, in order, after a jittered exponential backoff, reopening the
//!   channel (and re-declaring the topology) when needed. A message failing for longer
//!   than `retry.max_elapsed_secs` is rejected for redelivery when its turn comes.
//! - **possibly one message's** (the broker closed the channel with 403, 406, 501, ...):
//!   the pipeline *isolates*: every publish that was in flight is a suspect, and the
//!   suspects are republished one message at a time on a fresh channel; a message whose
//!   publish closes the channel again is dead-lettered as `publish_refused`. When every
//!   one of several suspects is refused, the broker refuses everything (a permission
//!   lost, say): that is treated as transient instead, so a misconfiguration does not
//!   dead-letter the whole stream.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use chrono::Utc;
use futures_util::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};
use lapin::message::Delivery;
use lapin::types::ShortString;
use tokio::time::{Duration, Instant};
use tracing::{debug, info, warn};

mod entry;
mod isolation;

use entry::{Entry, Fate, PublishState};
use isolation::Isolation;

use super::dead_letter::dead_letter_message;
use super::ordered;
use super::publish::{
    AmqpMessage, Publisher, header_payload_bound, header_payload_size, header_room,
};
use super::raw::raw_message;
use super::wire::WireReport;
use crate::config::Settings;
use crate::delivery::{DeadLetter, Fault, Plan, PublishOutcome, RetryPolicy, Settle, plan_checked};
use crate::normalize::{ErrorKind, Limits};
use crate::ops::{Health, Outcome, WorkerState, describe};
use crate::signatures::Signatures;

/// How one publish attempt ended.
pub(crate) struct Decided {
    seq: u64,
    index: usize,
    attempt: u64,
    outcome: PublishOutcome,
}

type DecidedFuture = Pin<Box<dyn Future<Output = Decided> + Send>>;

/// Publishes are failing: deliveries are held and retried.
struct Outage {
    since: Instant,
    /// Retry rounds so far (the backoff's exponent).
    rounds: u32,
    /// When the next round (or isolation step) runs; `None` until a failure asks.
    next: Option<Instant>,
    /// An exchange went missing: declare the topology when reopening.
    redeclare: bool,
    last: PublishOutcome,
}

pub(crate) struct Pipeline<'s> {
    settings: &'s Settings,
    limits: Limits,
    signatures: Signatures,
    retry: RetryPolicy,
    output_exchange: ShortString,
    dead_letter_exchange: ShortString,
    publisher: Publisher,
    /// Settlements made and not yet handed to the settler, in order.
    settled: Vec<Settle>,
    health: Health,
    entries: VecDeque<Entry>,
    next_seq: u64,
    next_attempt: u64,
    decided: FuturesUnordered<DecidedFuture>,
    held_bytes: usize,
    outage: Option<Outage>,
    isolation: Option<Isolation>,
}

impl<'s> Pipeline<'s> {
    pub(crate) fn new(
        settings: &'s Settings,
        publisher: Publisher,
        health: Health,
    ) -> Pipeline<'s> {
        Pipeline {
            settings,
            limits: settings.limits(),
            signatures: settings.signatures.clone(),
            retry: RetryPolicy {
                initial: settings.retry.initial(),
                max: settings.retry.max(),
                max_elapsed: settings.retry.max_elapsed(),
            },
            output_exchange: settings.output.exchange.as_str().into(),
            dead_letter_exchange: settings.dead_letter.exchange.as_str().into(),
            publisher,
            settled: Vec::new(),
            health,
            entries: VecDeque::new(),
            next_seq: 0,
            next_attempt: 0,
            decided: FuturesUnordered::new(),
            held_bytes: 0,
            outage: None,
            isolation: None,
        }
    }

    /// The publishing side, back, when the session ends.
    pub(crate) fn into_publisher(self) -> Publisher {
        self.publisher
    }

    /// Raw messages held: consumed, not yet settled.
    pub(crate) fn held(&self) -> usize {
        self.entries.len()
    }

    /// Whether to take another delivery: not while publishes are failing (they would only
    /// pile up) and not while the output held is over its budget.
    pub(crate) fn can_take(&self) -> bool {
        self.outage.is_none() && self.held_bytes < self.settings.limits.max_in_flight_bytes
    }

    /// When the next retry round or isolation step is due.
    pub(crate) fn retry_at(&self) -> Option<Instant> {
        self.outage.as_ref().and_then(|o| o.next)
    }

    /// The next decided publish; `None` when nothing is in flight.
    pub(crate) async fn next_decided(&mut self) -> Option<Decided> {
        self.decided.next().await
    }

    /// Records every publish already decided, without waiting: confirms arrive in
    /// bursts, and settling a whole burst at once makes one `multiple` ack of it.
    pub(crate) fn drain_decided(&mut self) {
        while let Some(Some(decided)) = self.decided.next().now_or_never() {
            self.on_decided(decided);
        }
    }

    /// The settlements made since the last call, in order.
    pub(crate) fn take_settled(&mut self) -> Vec<Settle> {
        std::mem::take(&mut self.settled)
    }

    /// Takes a delivery: plans it, bounds it, and publishes it (unless publishes are
    /// failing, in which case it waits its turn).
    /// `report` is what the frame checks changed in the delivery's frames, if anything.
    pub(crate) async fn admit(&mut self, delivery: Delivery, report: Option<WireReport>) {
        let Delivery {
            delivery_tag,
            data,
            exchange,
            routing_key,
            properties,
            redelivered,
            ..
        } = delivery;
        self.health.add_consumed(redelivered);
        let (properties, property_problems) = match report {
            Some(report) => report.apply(properties),
            None => (properties, Vec::new()),
        };
        let raw = raw_message(
            data,
            exchange.to_string(),
            routing_key.to_string(),
            &properties,
            property_problems,
        );
        if tracing::enabled!(tracing::Level::DEBUG) {
            for passed_over in raw.receipt_time().1 {
                debug!(
                    tag = delivery_tag,
                    source = passed_over.source,
                    why = passed_over.why,
                    "receipt time passed over; the next source is used"
                );
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut entry = Entry {
            seq,
            tag: delivery_tag,
            raw,
            original: properties,
            messages: Vec::new(),
            states: Vec::new(),
            fate: Fate::HandToBroker(String::new()),
            bytes: 0,
            failing_since: None,
            admitted_at: Instant::now(),
        };
        let planned = plan_checked(
            &entry.raw,
            &self.limits,
            &self.signatures,
            &self.settings.unmapped,
            Utc::now(),
        );
        self.prepare(&mut entry, planned);
        self.held_bytes += entry.bytes;
        self.entries.push_back(entry);
        self.health.set_in_flight(self.entries.len());
        if self.outage.is_none() {
            self.publish_unsent(seq).await;
        }
    }

    /// Turns a plan into AMQP messages that fit the broker's frame, or into the dead
    /// letter that says why not.
    fn prepare(&self, entry: &mut Entry, planned: Plan) {
        let frame_max = self.publisher.frame_max();
        let room = header_room(frame_max);
        let dead_letter = match planned {
            Plan::Publish { vendor, events } => {
                let count = events.len();
                let types: Vec<&'static str> =
                    events.iter().map(|e| e.event_type.label()).collect();
                let correlation_id = entry.original.message_id().clone();
                let messages: Vec<_> = events
                    .into_iter()
                    .map(|e| AmqpMessage::event(e, &self.output_exchange, correlation_id.as_ref()))
                    .collect();
                // Measured exactly only when the cheap bound does not settle it.
                let oversized = messages.iter().enumerate().find_map(|(i, m)| {
                    if header_payload_bound(&m.properties).is_some_and(|b| b <= room) {
                        return None;
                    }
                    let size = header_payload_size(&m.properties);
                    (size > room).then_some((i, size))
                });
                match oversized {
                    None => {
                        entry.fate = Fate::Events { vendor, types };
                        entry.set_messages(messages.into_iter().map(Arc::new).collect());
                        return;
                    }
                    Some((i, size)) => DeadLetter::new(
                        &entry.raw,
                        ErrorKind::OutputTooLarge,
                        Some(vendor),
                        &format!(
                            "event {} of {count}: its AMQP properties take {size} bytes, over the {room} the broker's frame_max of {frame_max} allows",
                            i + 1
                        ),
                        Utc::now(),
                    ),
                }
            }
            Plan::DeadLetter(dead_letter) => dead_letter,
        };
        self.set_dead_letter(entry, dead_letter);
    }

    /// Makes `dead_letter` what `entry` publishes (or, when it cannot be published,
    /// hands the delivery to the broker's dead-lettering).
    fn set_dead_letter(&self, entry: &mut Entry, dead_letter: DeadLetter) {
        let built = dead_letter_message(
            &dead_letter,
            Arc::new(entry.raw.body.clone()),
            &entry.original,
            &self.dead_letter_exchange,
            self.publisher.frame_max(),
        );
        match built {
            Ok(message) => {
                entry.fate = Fate::DeadLetter(dead_letter);
                entry.set_messages(vec![Arc::new(message)]);
            }
            Err(e) => {
                entry.fate = Fate::HandToBroker(format!("{}: {e}", dead_letter.kind));
                entry.set_messages(Vec::new());
            }
        }
    }

    /// Publishes every waiting or failed message of entry `seq`, in order.
    async fn publish_unsent(&mut self, seq: u64) {
        let Some(i) = self.position(seq) else { return };
        let unsent: Vec<usize> = self.entries[i]
            .states
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s, PublishState::Waiting | PublishState::Failed(_)))
            .map(|(index, _)| index)
            .collect();
        for index in unsent {
            self.start_publish(seq, index).await;
        }
    }

    async fn start_publish(&mut self, seq: u64, index: usize) {
        let Some(i) = self.position(seq) else { return };
        let attempt = self.next_attempt;
        self.next_attempt += 1;
        let entry = &mut self.entries[i];
        if matches!(entry.states[index], PublishState::Failed(_)) {
            self.health.add_publish_retries(1);
        }
        entry.states[index] = PublishState::InFlight { attempt };
        let publish = self.publisher.publish(entry.messages[index].clone());
        let mut decided: DecidedFuture = Box::pin(async move {
            Decided {
                seq,
                index,
                attempt,
                outcome: publish.await,
            }
        });
        // Publishes go out in the order they are started here, whatever order their
        // confirms come back in.
        match ordered::start(&mut decided).await {
            Poll::Ready(decided) => self.on_decided(decided),
            Poll::Pending => self.decided.push(decided),
        }
    }

    fn position(&self, seq: u64) -> Option<usize> {
        let first = self.entries.front()?.seq;
        let i = usize::try_from(seq.checked_sub(first)?).ok()?;
        (i < self.entries.len()).then_some(i)
    }

    /// Records how a publish ended.
    pub(crate) fn on_decided(&mut self, decided: Decided) {
        let Some(i) = self.position(decided.seq) else {
            return;
        };
        let entry = &mut self.entries[i];
        if entry.states.get(decided.index)
            != Some(&PublishState::InFlight {
                attempt: decided.attempt,
            })
        {
            return; // A stale confirm of an attempt already given up on.
        }
        let Some(fault) = decided.outcome.fault() else {
            entry.states[decided.index] = PublishState::Confirmed;
            if self.isolation.is_some() {
                self.step_isolation_if_done(decided.seq);
            }
            return;
        };
        if decided.outcome == PublishOutcome::Returned {
            self.health.add_unroutable();
        }
        let now = Instant::now();
        entry.failing_since.get_or_insert(now);
        entry.states[decided.index] = PublishState::Failed(decided.outcome.clone());
        let outage = self.outage.get_or_insert_with(|| {
            warn!(
                reason = %describe(&decided.outcome),
                "publishes failing; holding deliveries and retrying"
            );
            Outage {
                since: now,
                rounds: 0,
                next: None,
                redeclare: false,
                last: decided.outcome.clone(),
            }
        });
        outage.last = decided.outcome.clone();
        match fault {
            Fault::Topology => outage.redeclare = true,
            Fault::Message if self.isolation.is_none() => {
                warn!(
                    reason = %describe(&decided.outcome),
                    "the broker closed the publishing channel over a publish; republishing the suspects one message at a time"
                );
                self.isolation = Some(Isolation::new());
            }
            _ => {}
        }
        if self.isolation.is_some() {
            self.step_isolation_if_done(decided.seq);
        }
        let outage = self.outage.as_mut();
        if let Some(outage) = outage
            && outage.next.is_none()
        {
            let delay = if self.isolation.is_some() {
                Duration::ZERO
            } else {
                self.retry.delay(outage.rounds, fastrand::f64())
            };
            outage.next = Some(now + delay);
        }
        self.report_state();
    }

    /// Runs a retry round, or the next isolation step: reopens the channel if it is
    /// gone, then republishes.
    pub(crate) async fn retry(&mut self) {
        let Some(outage) = &mut self.outage else {
            return;
        };
        outage.next = None;
        if let Some(isolation) = &self.isolation {
            if isolation.current.is_some() {
                // A suspect is being tried alone; its verdict schedules the next step.
                return;
            }
            if isolation.queue.is_none() && self.entries.iter().any(Entry::in_flight) {
                // Isolation starts once every publish of the closed channel is decided;
                // they come back at once, failed.
                outage.next = Some(Instant::now() + Duration::from_millis(20));
                return;
            }
        }
        if !self.publisher.is_open() || outage.redeclare {
            let redeclare = outage.redeclare;
            match self.publisher.reopen(self.settings, redeclare).await {
                Ok(()) => {
                    if let Some(outage) = &mut self.outage {
                        outage.redeclare = false;
                    }
                }
                Err(e) => {
                    warn!(error = %e, "cannot reopen the publishing channel");
                    if let Some(outage) = &mut self.outage {
                        outage.rounds += 1;
                        outage.next =
                            Some(Instant::now() + self.retry.delay(outage.rounds, fastrand::f64()));
                    }
                    self.report_state();
                    return;
                }
            }
        }
        if self.isolation.is_some() {
            self.isolation_step().await;
        } else {
            self.retry_round().await;
        }
        self.report_state();
    }

    /// Republishes everything failed or waiting, in order.
    async fn retry_round(&mut self) {
        if let Some(outage) = &mut self.outage {
            outage.rounds += 1;
        }
        let seqs: Vec<u64> = self
            .entries
            .iter()
            .filter(|e| e.unsent())
            .map(|e| e.seq)
            .collect();
        for seq in seqs {
            self.publish_unsent(seq).await;
        }
    }

    /// Settles every delivery at the head whose publishes are decided, in order.
    pub(crate) fn advance(&mut self) {
        let now = Instant::now();
        while let Some(head) = self.entries.front() {
            if head.in_flight() || head.states.contains(&PublishState::Waiting) {
                break;
            }
            let all_confirmed = head.states.iter().all(|s| *s == PublishState::Confirmed);
            let settle = match &head.fate {
                Fate::HandToBroker(why) => {
                    Outcome::HandedToBroker { why }.record(&self.health, head.delivery());
                    Settle::Reject {
                        tag: head.tag,
                        requeue: false,
                    }
                }
                Fate::Events { vendor, types } if all_confirmed => {
                    Outcome::Published {
                        vendor: *vendor,
                        types,
                    }
                    .record(&self.health, head.delivery());
                    Settle::Ack { tag: head.tag }
                }
                Fate::DeadLetter(dead_letter) if all_confirmed => {
                    Outcome::DeadLettered(dead_letter).record(&self.health, head.delivery());
                    Settle::Ack { tag: head.tag }
                }
                _ => {
                    // Failed: retried in place until the budget is spent, unless it may
                    // be the message's own fault (isolation decides that).
                    let failing_for = head
                        .failing_since
                        .map_or(Duration::ZERO, |t| now.duration_since(t));
                    if self.isolation.is_some()
                        || head.refusal().is_some()
                        || !self.retry.gives_up(failing_for)
                    {
                        break;
                    }
                    let last = head
                        .states
                        .iter()
                        .find_map(|s| match s {
                            PublishState::Failed(o) => Some(o.clone()),
                            _ => None,
                        })
                        .unwrap_or(PublishOutcome::TimedOut);
                    Outcome::Requeued {
                        failing_for,
                        last: &last,
                    }
                    .record(&self.health, head.delivery());
                    Settle::Reject {
                        tag: head.tag,
                        requeue: true,
                    }
                }
            };
            self.settled.push(settle);
            self.health
                .observe_processing(head.admitted_at.elapsed().as_secs_f64());
            if let Some(done) = self.entries.pop_front() {
                self.held_bytes = self.held_bytes.saturating_sub(done.bytes);
            }
        }
        self.health.set_in_flight(self.entries.len());
        self.end_outage_if_over();
    }

    fn end_outage_if_over(&mut self) {
        let Some(outage) = &self.outage else { return };
        if self.isolation.is_some() || self.entries.iter().any(Entry::troubled) {
            return;
        }
        info!(
            failing_for_ms = outage.since.elapsed().as_millis() as u64,
            retry_rounds = outage.rounds,
            "publishing recovered"
        );
        self.outage = None;
        self.report_state();
    }

    /// Tells `/readyz` what the pipeline is doing.
    fn report_state(&self) {
        if self.health.state() == WorkerState::Draining {
            return;
        }
        let held = self.entries.len();
        match (&self.outage, &self.isolation) {
            (None, _) => self.health.set_state(WorkerState::Consuming, None),
            (Some(outage), Some(_)) => self.health.set_state(
                WorkerState::Isolating,
                Some(format!(
                    "the broker closed the publishing channel ({}); republishing {held} held deliveries one at a time",
                    describe(&outage.last)
                )),
            ),
            (Some(outage), None) => self.health.set_state(
                WorkerState::Retrying,
                Some(format!(
                    "publishes failing for {:.1} s ({}); holding {held} deliveries, retry round {}",
                    outage.since.elapsed().as_secs_f64(),
                    describe(&outage.last),
                    outage.rounds
                )),
            ),
        }
    }
}
