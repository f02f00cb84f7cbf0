//! The path from `basic.deliver` to `basic.ack`, around a core without I/O
//! ([`core`]): each raw delivery, in consumption order, becomes bounded AMQP messages
//! ([`crate::delivery::plan`], then the frame check); the core says what to publish,
//! when to reopen the channel and how to settle each delivery, and this glue does it with
//! lapin, feeding back what the broker said. One task drives it all, and nothing here
//! restarts the session: what one message causes is settled for that message (see the
//! core for the steps and the failure policy, and `crate::delivery` for the delivery
//! policy).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use chrono::Utc;
use futures_util::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};
use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::types::ShortString;
use tokio::time::Instant;
use tracing::{debug, info, warn};

mod core;

use self::core::{Command, Core, Fate, Finish, Messages, PublishId, Route, Status, Tuning};
use super::dead_letter::dead_letter_message;
use super::inbound::raw_message;
use super::publisher::{AmqpMessage, Publisher};
use crate::amqp::headers::{
    header_payload_bound, header_payload_size, header_room, with_added_headers,
};
use crate::amqp::ordered;
use crate::amqp::wire::WireReport;
use crate::canonical::{Vendor, rfc3339_utc};
use crate::config::WorkerSettings;
use crate::contract::DeadLetterKind;
use crate::contract::headers;
use crate::delivery::{DeadLetter, Lane, Plan, PublishOutcome, RawMessage, Settle, plan};
use crate::ops::{DeliveryId, Health, Occurrence, Outcome, WorkerState};
use crate::spans::{Kind, OpenSpan};
use crate::trace_context::{HEADER_LEN, TRACEPARENT, TraceParent};
use opentelemetry::KeyValue;

/// How one publish attempt ended.
pub(crate) struct Decided {
    id: PublishId,
    outcome: PublishOutcome,
}

type DecidedFuture = Pin<Box<dyn Future<Output = Decided> + Send>>;

/// A raw message as the core holds it: what its dead letter is made from.
pub(crate) struct Held {
    raw: RawMessage,
    original: BasicProperties,
    /// The `traceparent` of the worker's span for it: on each event and dead letter.
    /// Kept as bytes: each event's header is made from them, with no text in between.
    traceparent: [u8; HEADER_LEN],
    /// That span, when spans are exported: it ends when the message is settled (and
    /// this is dropped).
    span: Option<OpenSpan>,
}

/// How the worker's messages and their copies are made.
pub(crate) struct Amqp {
    dead_letter_exchange: ShortString,
    tap_exchange: ShortString,
    unrouted_queue: ShortString,
    frame_max: u32,
    /// `x-normalizer-kept-at` of the current millisecond, written once for all the copies
    /// made in it.
    now_text: std::sync::Mutex<(i64, String)>,
}

impl Amqp {
    /// Now, as `x-normalizer-kept-at` writes it.
    fn kept_at(&self) -> String {
        let now = Utc::now();
        let millis = now.timestamp_millis();
        let mut cached = self
            .now_text
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cached.0 != millis || cached.1.is_empty() {
            *cached = (millis, rfc3339_utc::format(&now));
        }
        cached.1.clone()
    }
}

impl Messages for Amqp {
    type Message = AmqpMessage;
    type Raw = Held;

    fn exchange<'a>(&self, message: &'a AmqpMessage) -> &'a str {
        message.exchange.as_str()
    }

    fn routing_key<'a>(&self, message: &'a AmqpMessage) -> &'a str {
        message.routing_key.as_str()
    }

    fn size(&self, message: &AmqpMessage) -> usize {
        message.body.len()
    }

    /// The event as published, to the unrouted queue through the default exchange, with
    /// its type in `x-normalizer-unrouted-routing-key` and when it was kept.
    fn kept(&self, event: &AmqpMessage) -> AmqpMessage {
        event.copy(
            ShortString::from(""),
            self.unrouted_queue.clone(),
            [
                (headers::UNROUTED_ROUTING_KEY, event.routing_key.to_string()),
                (headers::KEPT_AT, self.kept_at()),
            ],
        )
    }

    /// The stored message, to the tap exchange: `canonical.{type}`, `unrouted.{type}` or
    /// `dead-letter.{routing key}`, with when it was kept (a kept event's own time).
    fn tapped(&self, stored: &AmqpMessage, route: Route) -> AmqpMessage {
        let (prefix, key) = match route {
            Route::Canonical => ("canonical.", stored.routing_key.as_str().into()),
            Route::Unrouted => (
                "unrouted.",
                stored
                    .properties
                    .kind()
                    .as_ref()
                    .map_or(stored.routing_key.as_str(), |t| t.as_str())
                    .into(),
            ),
            Route::DeadLetter => (
                "dead-letter.",
                stored
                    .header_text(headers::DEAD_LETTER_ROUTING_KEY)
                    .unwrap_or_else(|| stored.routing_key.as_str().into()),
            ),
        };
        let mut routing_key = String::with_capacity(prefix.len() + key.len());
        routing_key.push_str(prefix);
        routing_key.push_str(&key);
        let kept_at = match stored.header_text(headers::KEPT_AT) {
            Some(_) => None,
            None => Some((headers::KEPT_AT, self.kept_at())),
        };
        stored.copy(
            self.tap_exchange.clone(),
            ShortString::from(routing_key),
            kept_at,
        )
    }

    fn dead_letter(
        &self,
        raw: &Held,
        kind: DeadLetterKind,
        vendor: Option<Vendor>,
        detail: &str,
    ) -> (DeadLetter, Result<AmqpMessage, String>) {
        let mut dead_letter = DeadLetter::new(&raw.raw, kind, vendor, detail, Utc::now());
        dead_letter.headers.push((
            TRACEPARENT,
            String::from_utf8_lossy(&raw.traceparent).into_owned(),
        ));
        let message = dead_letter_message(
            &dead_letter,
            Arc::new(raw.raw.body.clone()),
            &raw.original,
            &self.dead_letter_exchange,
            self.frame_max,
        )
        .map_err(|e| e.to_string());
        (dead_letter, message)
    }
}

/// The attributes of the worker's span for one raw message: the messaging semantic
/// conventions for a RabbitMQ consumer ([`crate::spans::SEMANTIC_CONVENTIONS`]). Names of
/// exchanges and queues, the routing key, the delivery tag, sizes and the gateway's
/// message id; nothing from the body.
fn process_attributes(
    raw: &RawMessage,
    queue: &str,
    delivery_tag: u64,
    message_id: &Option<ShortString>,
) -> Vec<KeyValue> {
    let mut attributes = vec![
        KeyValue::new("messaging.system", "rabbitmq"),
        KeyValue::new("messaging.operation.type", "process"),
        KeyValue::new("messaging.operation.name", "process"),
        KeyValue::new("messaging.destination.name", raw.exchange.clone()),
        KeyValue::new(
            "messaging.rabbitmq.destination.routing_key",
            raw.routing_key.clone(),
        ),
        KeyValue::new("messaging.consumer.group.name", queue.to_owned()),
        KeyValue::new(
            "messaging.rabbitmq.message.delivery_tag",
            i64::try_from(delivery_tag).unwrap_or(i64::MAX),
        ),
        KeyValue::new(
            "messaging.message.body.size",
            i64::try_from(raw.body.len()).unwrap_or(i64::MAX),
        ),
    ];
    if let Some(id) = message_id {
        attributes.push(KeyValue::new("messaging.message.id", id.to_string()));
    }
    attributes
}

pub(crate) struct Pipeline<'s> {
    settings: &'s WorkerSettings,
    output_exchange: ShortString,
    publisher: Publisher,
    core: Core<Amqp>,
    /// Settlements made and not yet handed to the settler.
    settled: Vec<Settle>,
    health: Health,
    decided: FuturesUnordered<DecidedFuture>,
}

impl<'s> Pipeline<'s> {
    pub(crate) fn new(
        settings: &'s WorkerSettings,
        publisher: Publisher,
        health: Health,
    ) -> Pipeline<'s> {
        let topology = &settings.topology;
        let amqp = Amqp {
            dead_letter_exchange: topology.dead_letter.exchange.as_str().into(),
            tap_exchange: topology.output.tap_exchange.as_str().into(),
            unrouted_queue: topology.output.unrouted_queue.as_str().into(),
            frame_max: publisher.frame_max(),
            now_text: std::sync::Mutex::default(),
        };
        let tuning = Tuning {
            retry: settings.pipeline.retry,
            window: usize::from(settings.pipeline.prefetch),
            window_bytes: settings.pipeline.max_in_flight_bytes,
            history: topology.history.enabled,
        };
        Pipeline {
            settings,
            output_exchange: topology.output.exchange.as_str().into(),
            publisher,
            core: Core::new(amqp, tuning, fastrand::u64(..)),
            settled: Vec::new(),
            health,
            decided: FuturesUnordered::new(),
        }
    }

    /// The publishing side, back, when the session ends.
    pub(crate) fn into_publisher(self) -> Publisher {
        self.publisher
    }

    /// Raw messages held: consumed, not yet settled.
    pub(crate) fn held(&self) -> usize {
        self.core.held()
    }

    /// Whether to take another delivery.
    pub(crate) fn can_take(&self) -> bool {
        self.core.can_take()
    }

    /// When the core needs to run again at the latest (a retry, a reopen, a budget).
    pub(crate) fn wake_at(&self) -> Option<Instant> {
        self.core.wake_at()
    }

    /// The next decided publish; `None` when nothing is in flight.
    pub(crate) async fn next_decided(&mut self) -> Option<Decided> {
        self.decided.next().await
    }

    /// Hands a decided publish to the core.
    pub(crate) fn on_decided(&mut self, decided: Decided) {
        self.core
            .decided(Instant::now(), decided.id, decided.outcome);
    }

    /// Hands every publish already decided to the core, without waiting: confirms
    /// arrive in bursts, and settling a whole burst at once makes one `multiple` ack.
    pub(crate) fn drain_decided(&mut self) {
        while let Some(Some(decided)) = self.decided.next().now_or_never() {
            self.on_decided(decided);
        }
    }

    /// Runs what is due now (retries, reopens, budgets): the commands follow.
    pub(crate) fn tick(&mut self) {
        self.core.tick(Instant::now());
    }

    /// Takes a delivery: plans it, bounds it, and hands it to the core.
    /// `report` is what the frame checks changed in the delivery's frames, if anything.
    pub(crate) fn admit(&mut self, delivery: Delivery, report: Option<WireReport>) {
        let Delivery {
            delivery_tag,
            data,
            exchange,
            routing_key,
            properties,
            redelivered,
            ..
        } = delivery;
        self.health.record(Occurrence::Consumed { redelivered });
        let body_omitted = report.as_ref().and_then(|r| r.body_omitted);
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
        // The raw message's trace continues (one span of ours per raw message, its
        // child); one without a readable context starts its own.
        let parent = raw.traceparent.as_deref().and_then(TraceParent::parse);
        let queue = &self.settings.topology.input.queue;
        let (trace, span) = self.settings.spans.start(
            || format!("process {queue}"),
            Kind::Consumer,
            parent,
            None,
            || process_attributes(&raw, queue, delivery_tag, properties.message_id()),
        );
        let mut held = Held {
            raw,
            original: properties,
            traceparent: trace.header_bytes(),
            span,
        };
        if let Some(size) = body_omitted {
            let dead_letter = DeadLetter::new(
                &held.raw,
                DeadLetterKind::BodyTooLarge,
                None,
                &format!(
                    "body of {size} bytes, over limits.max_body_bytes ({}): not read; dead-lettered by the broker with its bytes",
                    self.settings.pipeline.limits.max_body_bytes
                ),
                Utc::now(),
            );
            let fate = Fate::LeftToBroker(dead_letter);
            self.core
                .admit(Instant::now(), delivery_tag, held, fate, Vec::new());
            return;
        }
        if let Some(through) = self.came_back(&held.raw.exchange) {
            let fate = Fate::Looped(through.to_owned());
            let message = self.looped(&held);
            self.core
                .admit(Instant::now(), delivery_tag, held, fate, vec![message]);
            return;
        }
        let planned = plan(
            &held.raw,
            &self.settings.pipeline.limits,
            &self.settings.pipeline.signatures,
            &self.settings.pipeline.unmapped,
            self.settings.pipeline.schema_base,
            Utc::now(),
        );
        let (fate, messages) = self.prepare(&held, planned);
        if let Some(span) = held.span.as_mut() {
            match &fate {
                Fate::Events { types, .. } => {
                    span.set("webhook_normalizer.events", types.len() as i64);
                }
                Fate::DeadLetter(dead_letter) => {
                    span.set(
                        "webhook_normalizer.dead_letter.kind",
                        dead_letter.kind.as_str(),
                    );
                }
                _ => {}
            }
        }
        self.core
            .admit(Instant::now(), delivery_tag, held, fate, messages);
    }

    /// The worker's own exchange a delivery came through, when it did: only a binding
    /// made outside the topology (the raw queue bound to the dead-letter exchange, say)
    /// routes what the worker publishes back to its raw queue, and each round would make
    /// another dead letter, for ever. Such bindings cannot be read over AMQP 0-9-1, so
    /// every delivery is checked.
    fn came_back(&self, exchange: &str) -> Option<&'s str> {
        let output = &self.settings.topology.output;
        [
            self.settings.topology.dead_letter.exchange.as_str(),
            output.exchange.as_str(),
            output.tap_exchange.as_str(),
            output.unrouted_exchange.as_str(),
        ]
        .into_iter()
        .find(|own| *own == exchange)
    }

    /// A delivery that came back, as it is, to the dead-letter queue through the default
    /// exchange (so that no binding can send it round again), saying where it came from.
    fn looped(&self, held: &Held) -> AmqpMessage {
        let properties = with_added_headers(
            &held.original,
            [
                (headers::LOOPED_THROUGH, held.raw.exchange.as_str()),
                (
                    headers::DEAD_LETTER_ROUTING_KEY,
                    held.raw.routing_key.as_str(),
                ),
            ],
        );
        AmqpMessage::new(
            ShortString::from(""),
            self.settings.topology.dead_letter.queue.as_str().into(),
            Arc::new(held.raw.body.clone()),
            properties,
        )
    }

    /// Turns a plan into AMQP messages that fit the broker's frame, or into the dead
    /// letter that says why not.
    fn prepare(&self, held: &Held, planned: Plan) -> (Fate, Vec<AmqpMessage>) {
        let frame_max = self.publisher.frame_max();
        let room = header_room(frame_max);
        let dead_letter = match planned {
            Plan::Publish { vendor, events } => {
                let count = events.len();
                let types: Vec<&'static str> =
                    events.iter().map(|e| e.event_type.label()).collect();
                let correlation_id = held.original.message_id().clone();
                let messages: Vec<_> = events
                    .into_iter()
                    .map(|e| {
                        AmqpMessage::event(
                            e,
                            &self.output_exchange,
                            correlation_id.as_ref(),
                            &held.traceparent,
                        )
                    })
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
                    None => return (Fate::Events { vendor, types }, messages),
                    Some((i, size)) => DeadLetter::new(
                        &held.raw,
                        DeadLetterKind::OutputTooLarge,
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
        let mut dead_letter = dead_letter;
        // Its trace: the worker's span, in place of the raw message's own context.
        dead_letter.headers.push((
            TRACEPARENT,
            String::from_utf8_lossy(&held.traceparent).into_owned(),
        ));
        let built = dead_letter_message(
            &dead_letter,
            Arc::new(held.raw.body.clone()),
            &held.original,
            &self.settings.topology.dead_letter.exchange.as_str().into(),
            frame_max,
        );
        match built {
            Ok(message) => (Fate::DeadLetter(dead_letter), vec![message]),
            Err(e) => (
                Fate::HandToBroker(format!("{}: {e}", dead_letter.kind)),
                Vec::new(),
            ),
        }
    }

    /// Runs the core's commands, in order, until it has none: publishes (their frames
    /// handed to the client in this order) and channel reopens.
    pub(crate) async fn run_commands(&mut self) {
        loop {
            self.core.tick(Instant::now());
            let commands = self.core.take_commands();
            if commands.is_empty() {
                break;
            }
            for command in commands {
                match command {
                    Command::Publish {
                        id,
                        lane,
                        message,
                        mandatory,
                    } => self.start_publish(id, lane, message, mandatory).await,
                    Command::Reopen { lane, redeclare } => {
                        let reopened = self
                            .publisher
                            .reopen(
                                &self.settings.amqp,
                                &self.settings.topology,
                                lane,
                                redeclare,
                            )
                            .await;
                        if let Err(e) = &reopened {
                            warn!(error = %e, "cannot reopen the publishing channel");
                        }
                        self.core.messages_mut().frame_max = self.publisher.frame_max();
                        self.core.reopened(
                            Instant::now(),
                            lane,
                            reopened.map_err(|e| e.to_string()),
                        );
                    }
                }
            }
        }
        self.collect();
    }

    async fn start_publish(
        &mut self,
        id: PublishId,
        lane: Lane,
        message: Arc<AmqpMessage>,
        mandatory: bool,
    ) {
        let publish = self.publisher.publish(message, lane, mandatory);
        let mut decided: DecidedFuture = Box::pin(async move {
            Decided {
                id,
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

    /// Records what the core finished and counted, and tells `/readyz` what it is doing.
    fn collect(&mut self) {
        let counts = self.core.take_counts();
        if counts.retries > 0 {
            self.health.record(Occurrence::PublishesRetried {
                publishes: counts.retries,
            });
        }
        if counts.unroutable > 0 {
            self.health.record(Occurrence::Unroutable {
                publishes: counts.unroutable,
            });
        }
        if counts.taps_given_up > 0 {
            self.health.record(Occurrence::TapsGivenUp {
                copies: counts.taps_given_up,
            });
            warn!(
                copies = counts.taps_given_up,
                "tap copies for observers kept failing; given up (the messages are stored)"
            );
        }
        if counts.history_missing > 0 {
            warn!(
                copies = counts.history_missing,
                "the history's copies came back unroutable: its stream or binding is gone; declaring the topology again and retrying them"
            );
        }
        for finished in self.core.take_finished() {
            let who = DeliveryId {
                tag: finished.tag,
                message_id: finished
                    .raw
                    .original
                    .message_id()
                    .as_ref()
                    .map(|id| id.as_str()),
            };
            match &finished.finish {
                Finish::Stored {
                    vendor,
                    delivered,
                    kept,
                } => Outcome::Published {
                    vendor: *vendor,
                    delivered,
                    kept,
                    lag: finished.raw.raw.receipt_lag(Utc::now()),
                }
                .record(&self.health, who),
                Finish::DeadLettered(dead_letter) => {
                    Outcome::DeadLettered(dead_letter).record(&self.health, who);
                }
                Finish::Requeued { failing_for, last } => Outcome::Requeued {
                    failing_for: *failing_for,
                    last,
                }
                .record(&self.health, who),
                Finish::HandedToBroker(why) => {
                    Outcome::HandedToBroker { why }.record(&self.health, who);
                }
                Finish::LeftToBroker(dead_letter) => {
                    Outcome::LeftToBroker(dead_letter).record(&self.health, who);
                }
                Finish::Looped(through) => {
                    Outcome::Looped {
                        through,
                        queue: &self.settings.topology.dead_letter.queue,
                    }
                    .record(&self.health, who);
                }
            }
            self.health.record(Occurrence::Settled {
                after: finished.admitted_at.elapsed(),
            });
            self.settled.push(finished.settle);
        }
        self.health.set_in_flight(self.core.held());
        self.report_state();
    }

    /// The settlements made since the last call.
    pub(crate) fn take_settled(&mut self) -> Vec<Settle> {
        std::mem::take(&mut self.settled)
    }

    /// Tells `/readyz` what the pipeline is doing.
    fn report_state(&self) {
        if matches!(
            self.health.state(),
            WorkerState::Draining | WorkerState::Connecting
        ) {
            return;
        }
        let (state, reason) = match self.core.status() {
            Status::Flowing { held: 0, .. } => (WorkerState::Consuming, None),
            Status::Flowing { held, last } => (
                WorkerState::Consuming,
                Some(format!(
                    "{held} messages held for retry ({}); the others flow",
                    last.unwrap_or_default()
                )),
            ),
            Status::Retrying { since, held, last } => (
                WorkerState::Retrying,
                Some(format!(
                    "publishes failing for {:.1} s ({last}); holding {held} deliveries",
                    since.elapsed().as_secs_f64()
                )),
            ),
            Status::Isolating { held, last } => (
                WorkerState::Isolating,
                Some(format!(
                    "the broker closed the publishing channel ({last}); trying {held} held deliveries one at a time"
                )),
            ),
        };
        let changed = self.health.state() != state;
        self.health.set_state(state, reason);
        if changed && state == WorkerState::Consuming {
            info!("publishing recovered");
        }
    }
}
