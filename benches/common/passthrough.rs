//! The baselines: this executable re-run as `EXE --passthrough URL N PREFETCH MODE
//! [RECORDING]`, a tuned lapin client on the worker's queues that consumes N raw
//! messages and exits.
//!
//! - `bare`: publishes each raw message's body and properties unchanged to the
//!   canonical exchange: what moving the input bytes through the broker costs.
//! - `exact`, `all-headers`, `no-headers`, `half-body` (the same-output passthrough):
//!   publishes, for each raw message, what the worker published for it (from the
//!   recording: exchange, routing key, body, every property and header), precomputed,
//!   and each one's copy to the tap exchange, as the worker makes it for observers;
//!   the variants alter the recorded events before the run (see [`Variant`]).
//!
//! The client is shaped for speed under the worker's contract: a consuming and a
//! publishing connection, the worker's prefetch, publisher confirms, publishes sent in
//! consumption order from one task without waiting for each other, confirms awaited,
//! and each raw message acked once all its publishes are confirmed, in order, batched
//! into one `multiple` ack per burst of completions.
//!
//! It prints `loaded` once the recording is loaded (the parent starts its clock then,
//! as the worker's starts at its spawn), `consuming` once its consumer is registered, then, after the last ack is
//! written, `done {cpu ticks since loaded} {VmHWM KiB} {ack frames}`. Its peak RSS
//! includes the recording it holds.

use std::collections::VecDeque;
use std::future::Future;
use std::io::Write;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use futures_lite::StreamExt;
use futures_util::FutureExt;
use futures_util::stream::{FuturesOrdered, FuturesUnordered};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel};
use testkit::connect;

use super::parse_raw_id;
use super::procs::process_usage;
use super::recording::{Output, Recording};
use chrono::{SecondsFormat, Utc};
use webhook_normalizer::config::Settings;
use webhook_normalizer::contract::headers;

/// What the same-output passthrough does to the recorded events (dead letters are
/// always republished exactly).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// As the worker published them.
    Exact,
    /// With the five `cloudEvents_*` headers the worker used to send besides
    /// `cloudEvents_subject`, rebuilt from the event: `_id` (= `message_id`), `_type`
    /// (= `type` and the routing key), `_source` (the type's vendor), `_time` (the
    /// body's `time`), `_specversion` (`1.0`).
    AllHeaders,
    /// Without any headers.
    NoHeaders,
    /// Bodies cut to their first half (the broker does not parse them).
    HalfBody,
    /// As the worker published them, into a topology with the event history on: the tap
    /// copies of events are also stored in the history stream.
    History,
}

impl Variant {
    pub const ALL: [Variant; 5] = [
        Variant::Exact,
        Variant::AllHeaders,
        Variant::NoHeaders,
        Variant::HalfBody,
        Variant::History,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Variant::Exact => "exact",
            Variant::AllHeaders => "all-headers",
            Variant::NoHeaders => "no-headers",
            Variant::HalfBody => "half-body",
            Variant::History => "history",
        }
    }

    pub fn parse(name: &str) -> Option<Variant> {
        Variant::ALL.into_iter().find(|v| v.name() == name)
    }

    /// The recorded event as this variant publishes it.
    pub fn apply(self, event: &Output) -> Output {
        let mut out = event.clone();
        match self {
            Variant::Exact | Variant::History => {}
            Variant::AllHeaders => {
                let p = &event.properties;
                let text = |s: &Option<ShortString>| s.as_ref().map(|s| s.to_string());
                let event_type = text(p.kind()).unwrap_or_default();
                let body: serde_json::Value =
                    serde_json::from_slice(&event.body).unwrap_or_default();
                let mut headers = p.headers().clone().unwrap_or_default();
                for (name, value) in [
                    ("cloudEvents_specversion", "1.0".to_owned()),
                    ("cloudEvents_id", text(p.message_id()).unwrap_or_default()),
                    (
                        "cloudEvents_source",
                        format!("/vendors/{}", event_type.split('.').next().unwrap_or("")),
                    ),
                    ("cloudEvents_type", event_type.clone()),
                    (
                        "cloudEvents_time",
                        body["time"].as_str().unwrap_or_default().to_owned(),
                    ),
                ] {
                    headers.insert(name.into(), AMQPValue::LongString(value.into()));
                }
                out.properties = p.clone().with_headers(headers);
            }
            Variant::NoHeaders => out.properties = without_headers(&event.properties),
            Variant::HalfBody => out.body = Arc::new(event.body[..event.body.len() / 2].to_vec()),
        }
        out
    }
}

/// The properties an event carries, less its headers.
fn without_headers(p: &BasicProperties) -> BasicProperties {
    let mut q = BasicProperties::default();
    if let Some(v) = p.content_type() {
        q = q.with_content_type(v.clone());
    }
    if let Some(v) = p.delivery_mode() {
        q = q.with_delivery_mode(*v);
    }
    if let Some(v) = p.message_id() {
        q = q.with_message_id(v.clone());
    }
    if let Some(v) = p.kind() {
        q = q.with_type(v.clone());
    }
    if let Some(v) = p.timestamp() {
        q = q.with_timestamp(*v);
    }
    if let Some(v) = p.app_id() {
        q = q.with_app_id(v.clone());
    }
    if let Some(v) = p.correlation_id() {
        q = q.with_correlation_id(v.clone());
    }
    q
}

/// `outputs` followed by their tap copies, as the worker publishes them once each output
/// is stored (`src/worker/pipeline`, `Messages::tapped`): to the tap exchange, not
/// `mandatory`, routed `canonical.{type}` or `dead-letter.{its routing key}`, with
/// `x-normalizer-kept-at`. Made once, at load; published right after the outputs, without
/// waiting for their confirms (the least a client publishing this output can do).
fn with_taps(mut outputs: Vec<Output>, tap_exchange: &ShortString, kept_at: &str) -> Vec<Output> {
    let taps: Vec<Output> = outputs
        .iter()
        .map(|o| {
            let mut headers = o.properties.headers().clone().unwrap_or_default();
            let routing_key = if o.dead_letter {
                let key = match headers.inner().get(headers::DEAD_LETTER_ROUTING_KEY) {
                    Some(AMQPValue::LongString(k)) => {
                        String::from_utf8_lossy(k.as_bytes()).into_owned()
                    }
                    _ => o.routing_key.to_string(),
                };
                format!("dead-letter.{key}")
            } else {
                format!("canonical.{}", o.routing_key)
            };
            headers.insert(
                headers::KEPT_AT.into(),
                AMQPValue::LongString(kept_at.into()),
            );
            Output {
                dead_letter: o.dead_letter,
                tap: true,
                exchange: tap_exchange.clone(),
                routing_key: routing_key.as_str().into(),
                properties: o.properties.clone().with_headers(headers),
                body: o.body.clone(),
            }
        })
        .collect();
    outputs.extend(taps);
    outputs
}

/// What the child publishes for each delivery.
enum Source {
    Bare { exchange: ShortString },
    Recorded(Vec<Vec<Output>>),
}

/// Child mode: runs and exits the process.
pub fn child_main() -> bool {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) != Some("--passthrough") {
        return false;
    }
    let [_, url, n, prefetch, mode, rest @ ..] = args.as_slice() else {
        panic!("passthrough mode takes URL N PREFETCH MODE [RECORDING], got {args:?}");
    };
    let n: u64 = n.parse().expect("N");
    let prefetch: u16 = prefetch.parse().expect("PREFETCH");
    let source = if mode == "bare" {
        let exchange = rest.first().expect("bare mode takes the output exchange");
        Source::Bare {
            exchange: exchange.as_str().into(),
        }
    } else {
        let variant = Variant::parse(mode).unwrap_or_else(|| panic!("unknown mode {mode}"));
        let path = rest.first().expect("same-output mode takes a recording");
        let recording = Recording::load(Path::new(path));
        // The tap exchange of the worker's settings (the benchmark's are the same).
        let settings = Settings::load(None).expect("the worker's settings load");
        let tap_exchange: ShortString = settings.output.tap_exchange.as_str().into();
        let kept_at = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
        Source::Recorded(
            recording
                .outputs
                .into_iter()
                .map(|outs| {
                    let outs: Vec<Output> = outs
                        .into_iter()
                        .map(|o| if o.dead_letter { o } else { variant.apply(&o) })
                        .collect();
                    with_taps(outs, &tap_exchange, &kept_at)
                })
                .collect(),
        )
    };
    let (loaded_ticks, _) = process_usage("/proc/self");
    say("loaded");
    // The worker's runtime: multi-threaded, one thread per core.
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(forward_all(url, n, prefetch, &source, loaded_ticks));
    true
}

type Pending = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
type Settled = Pin<Box<dyn Future<Output = Result<u64, String>> + Send>>;

async fn forward_all(url: &str, n: u64, prefetch: u16, source: &Source, loaded_ticks: u64) {
    let publisher_connection = connect(url).await;
    let publisher = publisher_connection
        .create_channel()
        .await
        .expect("publishing channel");
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let consumer_connection = connect(url).await;
    let channel = consumer_connection
        .create_channel()
        .await
        .expect("consuming channel");
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .expect("prefetch");
    let mut consumer = channel
        .basic_consume(
            "normalizer.raw".into(),
            format!("passthrough-{}", std::process::id()).into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    say("consuming");

    let mut received = 0u64;
    let mut settled = 0u64;
    let mut ack_frames = 0u64;
    // Per delivery, in consumption order: resolves with its tag once all its publishes
    // are confirmed.
    let mut in_order: FuturesOrdered<Settled> = FuturesOrdered::new();
    let mut acks: FuturesUnordered<Pending> = FuturesUnordered::new();
    while settled < n || !acks.is_empty() {
        tokio::select! {
            biased;
            Some(done) = in_order.next() => {
                let mut highest = done.unwrap_or_else(|e| fail(&e));
                settled += 1;
                // Everything else already confirmed goes into the same ack.
                while let Some(Some(done)) = in_order.next().now_or_never() {
                    highest = done.unwrap_or_else(|e| fail(&e));
                    settled += 1;
                }
                let channel = channel.clone();
                ack_frames += 1;
                acks.push(started(Box::pin(async move {
                    channel
                        .basic_ack(highest, BasicAckOptions { multiple: true })
                        .await
                        .map_err(|e| format!("ack: {e}"))
                }))
                .await);
            }
            Some(sent) = acks.next() => sent.unwrap_or_else(|e| fail(&e)),
            next = consumer.next(), if received < n => match next {
                Some(Ok(delivery)) => {
                    received += 1;
                    in_order.push_back(forward(delivery, &publisher, source).await);
                }
                other => fail(&format!("consumer ended: {other:?}")),
            },
        }
    }
    let (cpu_ticks, peak_rss_kib) = process_usage("/proc/self");
    let cpu_ticks = cpu_ticks.saturating_sub(loaded_ticks);
    say(&format!("done {cpu_ticks} {peak_rss_kib} {ack_frames}"));
    let close = std::time::Duration::from_secs(5);
    let _ = tokio::time::timeout(close, consumer_connection.close(200, "bye".into())).await;
    let _ = tokio::time::timeout(close, publisher_connection.close(200, "bye".into())).await;
}

/// Publishes what `delivery` maps to (the frames go out now, in order) and returns the
/// future of its settlement.
async fn forward(delivery: Delivery, publisher: &Channel, source: &Source) -> Settled {
    let Delivery {
        delivery_tag,
        data,
        routing_key,
        properties,
        ..
    } = delivery;
    let mut publishes = VecDeque::new();
    match source {
        Source::Bare { exchange } => {
            let body = Arc::new(data);
            publishes.push_back(
                started(publish(
                    publisher,
                    exchange.clone(),
                    routing_key,
                    body,
                    properties,
                    true,
                ))
                .await,
            );
        }
        Source::Recorded(outputs) => {
            let raw_id = properties.message_id().clone();
            let seq = raw_id
                .as_ref()
                .and_then(|id| parse_raw_id(id.as_str()))
                .unwrap_or_else(|| fail("raw message without a bench id"));
            let recorded = &outputs[(seq % outputs.len() as u64) as usize];
            let cycled = seq >= outputs.len() as u64;
            for o in recorded {
                let mut properties = o.properties.clone();
                // A raw message sent again under a new id (the latency benchmark cycles
                // the recorded mix) gets what the worker makes of it: its own id.
                if cycled && let Some(id) = &raw_id {
                    properties = if o.dead_letter {
                        properties.with_message_id(id.clone())
                    } else {
                        properties.with_correlation_id(id.clone())
                    };
                }
                publishes.push_back(
                    started(publish(
                        publisher,
                        o.exchange.clone(),
                        o.routing_key.clone(),
                        o.body.clone(),
                        properties,
                        !o.tap,
                    ))
                    .await,
                );
            }
        }
    }
    Box::pin(async move {
        for p in publishes {
            p.await?;
        }
        Ok(delivery_tag)
    })
}

/// A publish (`mandatory` but for tap copies) that resolves once confirmed (an error if
/// nacked or returned).
fn publish(
    channel: &Channel,
    exchange: ShortString,
    routing_key: ShortString,
    body: Arc<Vec<u8>>,
    properties: BasicProperties,
    mandatory: bool,
) -> Pending {
    let channel = channel.clone();
    Box::pin(async move {
        let options = BasicPublishOptions {
            mandatory,
            ..BasicPublishOptions::default()
        };
        let confirm = channel
            .basic_publish(exchange, routing_key, options, &body, properties)
            .await
            .map_err(|e| format!("publish: {e}"))?;
        let confirmation = confirm.await.map_err(|e| format!("confirm: {e}"))?;
        if !confirmation.is_ack() {
            return Err("publish nacked".into());
        }
        if confirmation.take_message().is_some() {
            return Err("publish returned as unroutable".into());
        }
        Ok(())
    })
}

/// Polls `future` once, so that what it sends first is handed to the client now (this
/// fixes the order of frames), and returns what is left of it.
async fn started<T: Send + 'static>(
    mut future: Pin<Box<dyn Future<Output = T> + Send>>,
) -> Pin<Box<dyn Future<Output = T> + Send>> {
    match std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx))).await {
        Poll::Ready(out) => Box::pin(std::future::ready(out)),
        Poll::Pending => future,
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// A failure ends the process: the parent reports it.
fn fail(what: &str) -> ! {
    eprintln!("passthrough: {what}");
    std::process::exit(2);
}
