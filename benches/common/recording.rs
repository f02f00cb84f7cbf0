//! The worker's exact output, recorded: after a worker run, the capture queue (bound
//! `#` to the canonical exchange) holds every event and the dead-letter queue every
//! dead letter, each with its routing key, body, properties and headers. They are
//! matched to the raw message that made them (events carry its id as
//! `correlation_id`, dead letters as `message_id`) and written to a file the
//! same-output passthrough loads before it starts.

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_lite::StreamExt;
use lapin::BasicProperties;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::{FieldTable, ShortString};
use serde_json::Value;
use testkit::connect;

use super::{EVENTS_QUEUE, parse_raw_id};
use webhook_normalizer::config::Settings;

/// One message the worker published.
#[derive(Clone)]
pub struct Output {
    pub dead_letter: bool,
    /// A copy for observers, to the tap exchange (not `mandatory`); made by the
    /// passthrough from the output it copies, never recorded.
    pub tap: bool,
    pub exchange: ShortString,
    pub routing_key: ShortString,
    pub properties: BasicProperties,
    pub body: Arc<Vec<u8>>,
}

/// What the worker published for each raw message, by the raw message's index.
pub struct Recording {
    pub outputs: Vec<Vec<Output>>,
}

impl Recording {
    /// Reads the output of a drained worker run from the vhost at `url`: `events`
    /// events and `dead_letters` dead letters, for `raw` raw messages.
    pub async fn read(
        url: &str,
        settings: &Settings,
        raw: u64,
        events: u64,
        dead_letters: u64,
    ) -> Recording {
        let mut outputs = vec![Vec::new(); raw as usize];
        let connection = connect(url).await;
        for (queue, exchange, count, dead_letter) in [
            (EVENTS_QUEUE, &settings.output.exchange, events, false),
            (
                settings.dead_letter.queue.as_str(),
                &settings.dead_letter.exchange,
                dead_letters,
                true,
            ),
        ] {
            if count == 0 {
                continue;
            }
            let channel = connection.create_channel().await.expect("channel");
            channel
                .basic_qos(2000, BasicQosOptions::default())
                .await
                .expect("qos");
            let mut consumer = channel
                .basic_consume(
                    queue.into(),
                    "recorder".into(),
                    BasicConsumeOptions {
                        no_ack: true,
                        ..BasicConsumeOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .expect("consume the recorded output");
            for _ in 0..count {
                let delivery = tokio::time::timeout(Duration::from_secs(30), consumer.next())
                    .await
                    .unwrap_or_else(|_| panic!("recording: {queue} has fewer than {count}"))
                    .expect("consumer open")
                    .expect("delivery");
                let properties = without_broker_headers(delivery.properties);
                let id = if dead_letter {
                    properties.message_id()
                } else {
                    properties.correlation_id()
                };
                let index = id
                    .as_ref()
                    .and_then(|id| parse_raw_id(id.as_str()))
                    .expect("recorded output names its raw message");
                outputs[index as usize].push(Output {
                    dead_letter,
                    tap: false,
                    exchange: exchange.as_str().into(),
                    routing_key: delivery.routing_key,
                    properties,
                    body: Arc::new(delivery.data),
                });
            }
            let _ = channel.close(200, "recorded".into()).await;
        }
        let _ = connection.close(200, "recorded".into()).await;
        let recording = Recording { outputs };
        let missing = recording.outputs.iter().filter(|o| o.is_empty()).count();
        assert_eq!(
            missing, 0,
            "recording: {missing} raw messages have no output"
        );
        recording
    }

    pub fn events(&self) -> impl Iterator<Item = &Output> {
        self.outputs.iter().flatten().filter(|o| !o.dead_letter)
    }

    pub fn total(&self) -> u64 {
        self.outputs.iter().map(|o| o.len() as u64).sum()
    }

    /// Body bytes plus encoded properties, per raw message.
    pub fn bytes_per_raw(&self) -> f64 {
        let total: usize = self
            .outputs
            .iter()
            .flatten()
            .map(|o| o.body.len() + properties_size(&o.properties))
            .sum();
        total as f64 / self.outputs.len().max(1) as f64
    }

    /// Writes it to `path` (a simple length-prefixed format; properties in their AMQP
    /// wire encoding).
    pub fn write(&self, path: &Path) {
        let file = std::fs::File::create(path).expect("recording file");
        let mut w = BufWriter::new(file);
        let mut put = |bytes: &[u8]| w.write_all(bytes).expect("write recording");
        put(&(self.outputs.len() as u32).to_le_bytes());
        for outputs in &self.outputs {
            put(&(outputs.len() as u32).to_le_bytes());
            for o in outputs {
                put(&[u8::from(o.dead_letter)]);
                for field in [
                    o.exchange.as_str().as_bytes(),
                    o.routing_key.as_str().as_bytes(),
                    &encode_properties(&o.properties),
                    &o.body,
                ] {
                    put(&(field.len() as u32).to_le_bytes());
                    put(field);
                }
            }
        }
        w.flush().expect("write recording");
    }

    pub fn load(path: &Path) -> Recording {
        let file = std::fs::File::open(path).expect("recording file");
        let mut r = BufReader::new(file);
        fn read_u32(r: &mut impl Read) -> usize {
            let mut b = [0u8; 4];
            r.read_exact(&mut b).expect("recording truncated");
            u32::from_le_bytes(b) as usize
        }
        fn read_bytes(r: &mut impl Read) -> Vec<u8> {
            let mut v = vec![0; read_u32(r)];
            r.read_exact(&mut v).expect("recording truncated");
            v
        }
        let raw = read_u32(&mut r);
        let mut outputs = Vec::with_capacity(raw);
        for _ in 0..raw {
            let n = read_u32(&mut r);
            let mut list = Vec::with_capacity(n);
            for _ in 0..n {
                let mut role = [0u8; 1];
                r.read_exact(&mut role).expect("recording truncated");
                let exchange = String::from_utf8(read_bytes(&mut r)).expect("utf-8");
                let routing_key = String::from_utf8(read_bytes(&mut r)).expect("utf-8");
                let properties = decode_properties(&read_bytes(&mut r));
                let body = read_bytes(&mut r);
                list.push(Output {
                    dead_letter: role[0] == 1,
                    tap: false,
                    exchange: exchange.as_str().into(),
                    routing_key: routing_key.as_str().into(),
                    properties,
                    body: Arc::new(body),
                });
            }
            outputs.push(list);
        }
        Recording { outputs }
    }
}

/// Headers the broker adds on delivery (quorum queues count redeliveries), which the
/// worker did not publish.
fn without_broker_headers(properties: BasicProperties) -> BasicProperties {
    let Some(headers) = properties.headers().clone() else {
        return properties;
    };
    if !headers.contains_key("x-delivery-count") {
        return properties;
    }
    let mut kept = FieldTable::default();
    for (k, v) in headers.inner() {
        if k.as_str() != "x-delivery-count" {
            kept.insert(k.clone(), v.clone());
        }
    }
    properties.with_headers(kept)
}

pub fn encode_properties(properties: &BasicProperties) -> Vec<u8> {
    cookie_factory::gen_simple(
        lapin::protocol::basic::gen_properties(properties),
        Vec::with_capacity(256),
    )
    .expect("encode properties")
}

fn decode_properties(bytes: &[u8]) -> BasicProperties {
    let (_, properties) =
        lapin::protocol::basic::parse_properties(bytes).expect("decode recorded properties");
    properties
}

/// Encoded size of the AMQP properties (with their headers table).
pub fn properties_size(properties: &BasicProperties) -> usize {
    encode_properties(properties).len()
}

/// Encoded size of the headers table alone.
pub fn headers_size(properties: &BasicProperties) -> usize {
    properties.headers().as_ref().map_or(0, |h| {
        cookie_factory::gen_simple(lapin::types::generation::gen_field_table(h), Vec::new())
            .expect("encode headers")
            .len()
    })
}

/// The recording in a file, deleted when dropped.
pub struct RecordingFile {
    pub path: PathBuf,
}

impl RecordingFile {
    pub fn write(recording: &Recording, label: &str) -> RecordingFile {
        let path = std::env::temp_dir().join(format!(
            "{}{}-{label}.recording",
            super::VHOST_PREFIX,
            std::process::id()
        ));
        recording.write(&path);
        RecordingFile { path }
    }
}

impl Drop for RecordingFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// How the canonical event bodies' bytes split by top-level attribute, and `data`'s
/// by its own attributes: mean bytes per event of `"name":value` (plus its comma).
pub fn body_breakdown(recording: &Recording) -> (Vec<(String, f64)>, f64) {
    let mut totals: Vec<(String, usize)> = Vec::new();
    let mut events = 0usize;
    let mut body_total = 0usize;
    let mut add = |name: String, bytes: usize| match totals.iter_mut().find(|(n, _)| *n == name) {
        Some((_, t)) => *t += bytes,
        None => totals.push((name, bytes)),
    };
    for event in recording.events() {
        events += 1;
        body_total += event.body.len();
        let Ok(Value::Object(top)) = serde_json::from_slice::<Value>(&event.body) else {
            continue;
        };
        let mut accounted = 0;
        for (key, value) in &top {
            if key == "data"
                && let Value::Object(data) = value
            {
                // `"data":{` ... `}` and the comma.
                let overhead = member_size(key, &Value::Null) - 4 + 2;
                add("data (its key, braces, commas)".into(), overhead);
                accounted += overhead;
                for (k, v) in data {
                    let size = member_size(k, v);
                    add(format!("data.{k}"), size);
                    accounted += size;
                }
                continue;
            }
            let size = member_size(key, value);
            add(key.clone(), size);
            accounted += size;
        }
        // The outer braces, less the last member's comma.
        add(
            "(outer braces)".into(),
            event.body.len().saturating_sub(accounted),
        );
    }
    let n = events.max(1) as f64;
    (
        totals
            .into_iter()
            .map(|(name, bytes)| (name, bytes as f64 / n))
            .collect(),
        body_total as f64 / n,
    )
}

/// `"key":value,` as compact JSON.
fn member_size(key: &str, value: &Value) -> usize {
    serde_json::to_string(key).map_or(0, |k| k.len())
        + 1
        + serde_json::to_string(value).map_or(0, |v| v.len())
        + 1
}

/// The header entries of events and their mean encoded sizes.
pub fn header_entries(recording: &Recording) -> Vec<(String, f64)> {
    let mut totals: Vec<(String, usize)> = Vec::new();
    let mut events = 0usize;
    for event in recording.events() {
        events += 1;
        let Some(headers) = event.properties.headers() else {
            continue;
        };
        for (name, value) in headers.inner() {
            let mut one = FieldTable::default();
            one.insert(name.clone(), value.clone());
            let size = cookie_factory::gen_simple(
                lapin::types::generation::gen_field_table(&one),
                Vec::new(),
            )
            .map_or(0, |b| b.len().saturating_sub(4));
            match totals.iter_mut().find(|(n, _)| n == name.as_str()) {
                Some((_, t)) => *t += size,
                None => totals.push((name.as_str().to_owned(), size)),
            }
        }
    }
    totals
        .into_iter()
        .map(|(n, t)| (n, t as f64 / events.max(1) as f64))
        .collect()
}
