//! End-to-end throughput of the worker against a local RabbitMQ, beside a plain lapin
//! "passthrough" on the same broker in the same run.
//!
//! Each run drains a preloaded queue of N raw webhooks (a mix of all three vendors built
//! from `tests/fixtures/`, about 5% of them not normalizable) in a fresh vhost of its own,
//! deleted afterwards. The runs alternate, worker then passthrough, for R rounds, so drift
//! of a shared machine hits both sides alike.
//!
//! - **worker**: the `webhook-normalizer run` binary. Timed from spawn until `/readyz`
//!   reports every raw message acknowledged (polled every 10 ms); its CPU time and peak
//!   RSS are read from `/proc` at that instant.
//! - **passthrough**: this executable re-run in passthrough mode, shaped like the worker
//!   (a consuming and a publishing connection, the same prefetch, publisher confirms, one
//!   task per delivery that publishes the body unchanged, awaits the confirm, then acks)
//!   but without normalizing. Timed from spawn to exit. It is the floor: what moving the
//!   messages through the broker costs with this client and runtime.
//!
//! Both timings include process start and connecting (tens of milliseconds). Besides
//! each process's own CPU time, the table shows the broker's over the same interval (read
//! from `/proc` of the local RabbitMQ): when the broker shares the machine, throughput
//! follows the sum of the two. The ratio of the rates is the figure to compare across
//! changes; absolute rates depend on the machine.
//!
//! Needs RabbitMQ at 127.0.0.1:5672 (guest/guest) and `rabbitmqctl` on the PATH. About
//! 20 s with the defaults (N = 20000, R = 3):
//!
//! ```sh
//! cargo bench --bench throughput
//! cargo bench --bench throughput -- --messages 100000 --rounds 5
//! ```

#![allow(clippy::expect_used, clippy::unwrap_used)]

// The allocator the binary uses (see src/main.rs), so the passthrough pays what the
// worker pays for allocation.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::{HashSet, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use serde_json::Value;
use tokio_util::task::TaskTracker;
use webhook_normalizer::config::Settings;
use webhook_normalizer::{ErrorKind, Limits, normalize};

/// The broker, without a vhost.
const BROKER: &str = "amqp://guest:guest@127.0.0.1:5672";
/// Prefix of the vhosts this benchmark creates: `wn-bench-{pid}-{round}-{side}`.
const VHOST_PREFIX: &str = "wn-bench-";
/// The worker run's capture of canonical events, so they are stored like the
/// passthrough's output.
const EVENTS_QUEUE: &str = "bench.events";
/// The passthrough's input queue, output exchange and output queue.
const PASSTHROUGH_IN: &str = "bench.raw";
const PASSTHROUGH_EXCHANGE: &str = "bench.passthrough";
const PASSTHROUGH_OUT: &str = "bench.passthrough.out";
/// Its input queue's dead-letter exchange, so the queue has the worker's input queue's
/// arguments (at-least-once dead-lettering needs one).
const PASSTHROUGH_DEAD_LETTER: &str = "bench.dead-letter";
/// The `x-received-at` every raw message carries, as a gateway sets it.
const RECEIVED_AT: &str = "2026-01-02T03:04:05Z";
/// Giving up on a run that made no progress for this long.
const STALL: Duration = Duration::from_secs(60);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--passthrough") {
        passthrough::run(&args[1..]);
        return;
    }
    let options = Options::parse(&args);
    if !options.skip {
        bench(&options);
    }
}

/// Command-line options of the benchmark. `--bench`, which cargo adds, is ignored; a
/// name filter (`cargo bench FILTER`, meant for the other benchmarks) that does not match
/// "throughput" skips this one.
struct Options {
    messages: usize,
    rounds: usize,
    skip: bool,
}

impl Options {
    fn parse(args: &[String]) -> Options {
        let usage = "usage: cargo bench --bench throughput -- [--messages N] [--rounds R]";
        let mut options = Options {
            messages: 20_000,
            rounds: 3,
            skip: false,
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let mut number = || -> usize {
                args.next()
                    .and_then(|v| v.parse().ok())
                    .filter(|n| *n > 0)
                    .unwrap_or_else(|| panic!("{arg} needs a positive number; {usage}"))
            };
            match arg.as_str() {
                "--bench" => {}
                "--messages" => options.messages = number(),
                "--rounds" => options.rounds = number(),
                filter if !filter.starts_with('-') => {
                    options.skip = !"throughput".contains(filter);
                }
                other => panic!("unknown argument {other:?}; {usage}"),
            }
        }
        options
    }
}

fn bench(options: &Options) {
    let bench = Bench {
        settings: Settings::load(None).expect("the worker's settings load"),
        mix: Mix::build(options.messages),
        runtime: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime"),
        clock_ticks: clock_ticks(),
        broker_pid: broker_pid(),
    };
    delete_stale_vhosts();
    eprintln!(
        "{} raw messages per run, {} rounds, prefetch {}",
        options.messages, options.rounds, bench.settings.input.prefetch
    );
    let mut rounds = Vec::with_capacity(options.rounds);
    for round in 1..=options.rounds {
        eprint!("round {round}: worker");
        let worker = bench.worker_run(round);
        eprint!(" {:.2} s; passthrough", worker.wall.as_secs_f64());
        let passthrough = bench.passthrough_run(round);
        eprintln!(" {:.2} s", passthrough.wall.as_secs_f64());
        rounds.push((worker, passthrough));
    }
    bench.report(&rounds);
}

/// What every run needs.
struct Bench {
    settings: Settings,
    mix: Mix,
    /// Drives the preloading and counting; the measured processes have their own.
    runtime: tokio::runtime::Runtime,
    /// Clock ticks per second, the unit of `/proc/*/stat` times.
    clock_ticks: u64,
    /// The broker's OS process: on a shared machine its CPU time per message is the
    /// other half of the cost.
    broker_pid: Option<u32>,
}

/// The raw messages every run is preloaded with, and what the worker should make of them.
struct Mix {
    messages: Vec<RawWebhook>,
    /// Fixtures used as templates, by vendor folder.
    templates: Vec<(&'static str, usize)>,
    /// Canonical events the normalizable messages map to.
    expected_events: u64,
    /// Messages that cannot be normalized (each becomes one dead letter).
    expected_dead_letters: u64,
    /// Total bytes of the canonical events' bodies.
    event_bytes: usize,
}

/// A raw webhook as a gateway publishes it.
struct RawWebhook {
    body: Vec<u8>,
    vendor: Option<&'static str>,
    message_id: String,
}

impl Mix {
    /// Every 20th message is a body of an event type no vendor mapping knows; the others
    /// cycle through every fixture that normalizes. Each message is made distinct (its own
    /// event ids) by rewriting its identifying field; every other one carries `x-vendor`.
    fn build(n: usize) -> Mix {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let at = received_at();
        let mut good = Vec::new();
        let mut bad = Vec::new();
        let mut templates = Vec::new();
        for vendor in ["entuitive", "authenticate", "deel"] {
            let mut paths: Vec<_> = std::fs::read_dir(root.join(vendor))
                .expect("fixtures folder")
                .map(|e| e.expect("fixtures entry").path())
                .collect();
            paths.sort();
            let mut count = 0;
            for path in paths {
                let bytes = std::fs::read(&path).expect("fixture");
                match normalize(&bytes, None, at, &Limits::default()) {
                    Ok(_) => {
                        good.push((vendor, parse(&bytes)));
                        count += 1;
                    }
                    Err(e) if e.kind() == ErrorKind::UnknownEventType => {
                        bad.push((vendor, parse(&bytes)));
                    }
                    Err(_) => {}
                }
            }
            templates.push((vendor, count));
        }
        assert!(!good.is_empty() && !bad.is_empty(), "fixtures missing");

        let mut messages = Vec::with_capacity(n);
        let mut ids = HashSet::new();
        let (mut events, mut dead_letters, mut event_bytes) = (0, 0, 0);
        let (mut next_good, mut next_bad) = (0, 0);
        for i in 0..n {
            let unknown = i % 20 == 19;
            let (vendor, template) = if unknown {
                next_bad += 1;
                &bad[(next_bad - 1) % bad.len()]
            } else {
                next_good += 1;
                &good[(next_good - 1) % good.len()]
            };
            let mut body = template.clone();
            make_distinct(&mut body, vendor, i);
            let body = serde_json::to_vec(&body).expect("serializes");
            let hint = (i % 2 == 0).then_some(*vendor);
            // What the worker will do with it: checked here so a rewrite that broke a
            // fixture cannot silently change the mix.
            match normalize(&body, hint, at, &Limits::default()) {
                Ok(out) if !unknown => {
                    events += out.len() as u64;
                    for event in &out {
                        event_bytes += serde_json::to_vec(event).expect("serializes").len();
                        assert!(ids.insert(event.id), "message {i} repeats an event id");
                    }
                }
                Err(e) if unknown && e.kind() == ErrorKind::UnknownEventType => {
                    dead_letters += 1;
                }
                other => panic!("message {i} ({vendor}) normalized unexpectedly: {other:?}"),
            }
            messages.push(RawWebhook {
                body,
                vendor: hint,
                message_id: format!("bench-{i}"),
            });
        }
        Mix {
            messages,
            templates,
            expected_events: events,
            expected_dead_letters: dead_letters,
            event_bytes,
        }
    }

    fn len(&self) -> u64 {
        self.messages.len() as u64
    }

    fn mean_body_bytes(&self) -> usize {
        let total: usize = self.messages.iter().map(|m| m.body.len()).sum();
        total / self.messages.len().max(1)
    }

    fn mean_event_bytes(&self) -> usize {
        self.event_bytes / (self.expected_events as usize).max(1)
    }
}

fn parse(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("fixture is JSON")
}

fn received_at() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(RECEIVED_AT)
        .expect("time")
        .with_timezone(&Utc)
}

/// Rewrites the field the vendor's stable id depends on: Deel `resource.id` (each
/// element's, for an array), Authenticate `id`, Entuitive the user's email.
fn make_distinct(body: &mut Value, vendor: &str, i: usize) {
    match vendor {
        "deel" => {
            // `data.resource`, or the older top-level `resource`.
            let resource = if body["data"]["resource"].is_null() {
                &mut body["resource"]
            } else {
                &mut body["data"]["resource"]
            };
            match resource {
                Value::Array(items) => {
                    for (k, item) in items.iter_mut().enumerate() {
                        set_id(item, "id", i * 16 + k);
                    }
                }
                item => set_id(item, "id", i * 16),
            }
        }
        "authenticate" => set_id(body, "id", i),
        _ => {
            let email = Value::from(format!("user-{i}@example.com"));
            if let Some(data) = body.get_mut("data").and_then(Value::as_object_mut) {
                for key in ["email", "user_email"] {
                    if data.contains_key(key) {
                        data.insert(key.into(), email.clone());
                    }
                }
            }
            if let Some(top) = body.as_object_mut()
                && top.contains_key("user_email")
            {
                top.insert("user_email".into(), email);
            }
        }
    }
}

/// Sets `object[key]` to a value unique for `n`, keeping a numeric id numeric.
fn set_id(object: &mut Value, key: &str, n: usize) {
    let Some(object) = object.as_object_mut() else {
        return;
    };
    let id = match object.get(key) {
        Some(Value::Number(_)) => Value::from(1_000_000_000 + n as u64),
        Some(Value::String(s)) => Value::from(format!("{s}-{n}")),
        _ => Value::from(format!("bench-{n}")),
    };
    object.insert(key.into(), id);
}

/// What one measured run cost.
struct Run {
    wall: Duration,
    cpu: Duration,
    /// The broker's CPU time over the same interval.
    broker_cpu: Option<Duration>,
    peak_rss_kib: u64,
    /// Messages it produced that the broker stored.
    output: u64,
    /// For the worker: canonical events and dead letters stored, and how long after
    /// spawning it was consuming.
    events: u64,
    dead_letters: u64,
    consuming_after: Option<Duration>,
}

impl Run {
    fn rate(&self, n: u64) -> f64 {
        n as f64 / self.wall.as_secs_f64()
    }
    fn cpu_us_per_message(&self, n: u64) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / n as f64
    }
    fn broker_cpu_us_per_message(&self, n: u64) -> f64 {
        self.broker_cpu
            .map_or(f64::NAN, |cpu| cpu.as_secs_f64() * 1e6 / n as f64)
    }
    fn peak_rss_mib(&self) -> f64 {
        self.peak_rss_kib as f64 / 1024.0
    }
}

impl Bench {
    /// One worker run: topology, capture queue, preload, then the worker drains the queue.
    fn worker_run(&self, round: usize) -> Run {
        let (settings, mix) = (&self.settings, &self.mix);
        let vhost = Vhost::create(&format!(
            "{VHOST_PREFIX}{}-{round}-worker",
            std::process::id()
        ));
        let url = vhost.url();
        let topology = Command::new(env!("CARGO_BIN_EXE_webhook-normalizer"))
            .arg("topology")
            .env("NORMALIZER__AMQP__URL", &url)
            .env("NORMALIZER__LOG__FILTER", "warn")
            .env_remove("RUST_LOG")
            .output()
            .expect("webhook-normalizer topology runs");
        assert!(
            topology.status.success(),
            "webhook-normalizer topology failed: {}",
            String::from_utf8_lossy(&topology.stderr)
        );
        self.runtime.block_on(async {
            let connection = connect(&url).await;
            let channel = connection.create_channel().await.expect("channel");
            declare_quorum_queue(&channel, EVENTS_QUEUE, FieldTable::default()).await;
            bind(&channel, EVENTS_QUEUE, &settings.output.exchange, "#").await;
            preload(&channel, &settings.input.exchange, mix).await;
            let depth = queue_depth(&channel, &settings.input.queue).await;
            assert_eq!(depth, mix.len(), "preloaded queue depth");
            let _ = connection.close(200, "preloaded".into()).await;
        });

        let n = mix.len();
        self.settle_broker();
        let broker_before = self.broker_ticks();
        let started = Instant::now();
        let mut worker = WorkerProcess::start(&url);
        let mut consuming_after = None;
        let mut progress = (0, Instant::now());
        let counters = loop {
            let counters = worker.readiness();
            if counters.acked >= n {
                break counters;
            }
            if counters.ready && consuming_after.is_none() {
                consuming_after = Some(started.elapsed());
            }
            if let Some(status) = worker.exited() {
                panic!(
                    "worker exited ({status}) at {} of {n} acked; last log lines:\n{}",
                    counters.acked,
                    worker.log_tail()
                );
            }
            if counters.acked != progress.0 {
                progress = (counters.acked, Instant::now());
            }
            if progress.1.elapsed() > STALL {
                panic!(
                    "worker stalled at {} of {n} acked; last log lines:\n{}",
                    counters.acked,
                    worker.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let wall = started.elapsed();
        let (cpu_ticks, peak_rss_kib) = process_usage(&format!("/proc/{}", worker.pid()));
        let broker_cpu = self.broker_cpu_since(broker_before);
        if counters.requeued != 0 || counters.settle_failed != 0 {
            eprintln!(
                "warning: the worker requeued {} and failed to settle {}",
                counters.requeued, counters.settle_failed
            );
        }
        worker.terminate();

        let (events, dead_letters) = self.runtime.block_on(async {
            let connection = connect(&url).await;
            let channel = connection.create_channel().await.expect("channel");
            let events = queue_depth(&channel, EVENTS_QUEUE).await
                + queue_depth(&channel, &settings.output.unrouted_queue).await;
            let dead_letters = queue_depth(&channel, &settings.dead_letter.queue).await;
            let _ = connection.close(200, "counted".into()).await;
            (events, dead_letters)
        });
        Run {
            wall,
            cpu: self.duration(cpu_ticks),
            broker_cpu,
            peak_rss_kib,
            output: events + dead_letters,
            events,
            dead_letters,
            consuming_after,
        }
    }

    /// One passthrough run: its queues, preload, then this executable in passthrough mode.
    fn passthrough_run(&self, round: usize) -> Run {
        let (settings, mix) = (&self.settings, &self.mix);
        let vhost = Vhost::create(&format!(
            "{VHOST_PREFIX}{}-{round}-passthrough",
            std::process::id()
        ));
        let url = vhost.url();
        self.runtime.block_on(async {
            let connection = connect(&url).await;
            let channel = connection.create_channel().await.expect("channel");
            passthrough::declare(&channel, settings).await;
            preload(&channel, &settings.input.exchange, mix).await;
            let depth = queue_depth(&channel, PASSTHROUGH_IN).await;
            assert_eq!(depth, mix.len(), "preloaded queue depth");
            let _ = connection.close(200, "preloaded".into()).await;
        });

        let n = mix.len();
        self.settle_broker();
        let broker_before = self.broker_ticks();
        let started = Instant::now();
        let child = Command::new(std::env::current_exe().expect("own path"))
            .args(["--passthrough", &url, &n.to_string()])
            .arg(settings.input.prefetch.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("passthrough starts");
        let pid = child.id();
        let (done_tx, done_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = done_tx.send(child.wait_with_output());
        });
        let limit = STALL + Duration::from_millis(10 * n);
        let output = match done_rx.recv_timeout(limit) {
            Ok(output) => output.expect("passthrough runs"),
            Err(_) => {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
                panic!("passthrough did not finish within {limit:?}");
            }
        };
        let wall = started.elapsed();
        let broker_cpu = self.broker_cpu_since(broker_before);
        assert!(output.status.success(), "passthrough failed");
        let line = String::from_utf8_lossy(&output.stdout);
        let mut fields = line.split_whitespace().map(|f| f.parse::<u64>().ok());
        let (Some(Some(cpu_ticks)), Some(Some(peak_rss_kib))) = (fields.next(), fields.next())
        else {
            panic!("passthrough printed {line:?}, not `cpu_ticks vmhwm_kib`");
        };

        let stored = self.runtime.block_on(async {
            let connection = connect(&url).await;
            let channel = connection.create_channel().await.expect("channel");
            let stored = queue_depth(&channel, PASSTHROUGH_OUT).await;
            let _ = connection.close(200, "counted".into()).await;
            stored
        });
        Run {
            wall,
            cpu: self.duration(cpu_ticks),
            broker_cpu,
            peak_rss_kib,
            output: stored,
            events: 0,
            dead_letters: 0,
            consuming_after: None,
        }
    }

    fn duration(&self, ticks: u64) -> Duration {
        Duration::from_secs_f64(ticks as f64 / self.clock_ticks as f64)
    }

    /// Waits (up to 10 s) until the broker is idle: after a preload it still moves
    /// messages from its write-ahead log to segment files, work that would otherwise
    /// land in the measured interval.
    fn settle_broker(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let Some(mut before) = self.broker_ticks() else {
            return;
        };
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            let Some(now) = self.broker_ticks() else {
                return;
            };
            // At most 1 tick (10 ms) of CPU in 100 ms.
            if now.saturating_sub(before) * 1000 <= self.clock_ticks * 10 {
                return;
            }
            before = now;
        }
    }

    fn broker_ticks(&self) -> Option<u64> {
        let pid = self.broker_pid?;
        cpu_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
    }

    fn broker_cpu_since(&self, before: Option<u64>) -> Option<Duration> {
        Some(self.duration(self.broker_ticks()?.checked_sub(before?)?))
    }
}

/// The passthrough: the worker's shape (see `src/broker/consume.rs`) without the
/// normalizing.
mod passthrough {
    use super::*;

    /// Its topology, declared before preloading: the raw exchange bound with `#` to a
    /// quorum input queue with the worker's input queue's arguments, and the output side.
    pub(super) async fn declare(channel: &Channel, settings: &Settings) {
        declare_exchange(channel, &settings.input.exchange, ExchangeKind::Topic).await;
        declare_exchange(channel, PASSTHROUGH_DEAD_LETTER, ExchangeKind::Topic).await;
        let args = webhook_normalizer::broker::raw_queue_arguments(
            settings.input.delivery_limit,
            PASSTHROUGH_DEAD_LETTER,
        );
        declare_quorum_queue(channel, PASSTHROUGH_IN, args).await;
        bind(channel, PASSTHROUGH_IN, &settings.input.exchange, "#").await;
        declare_output(channel).await;
    }

    /// The output side: a durable topic exchange bound with `#` to a quorum queue. The
    /// child declares it again when it starts, as the worker declares its topology
    /// whenever it connects.
    async fn declare_output(channel: &Channel) {
        declare_exchange(channel, PASSTHROUGH_EXCHANGE, ExchangeKind::Topic).await;
        declare_quorum_queue(channel, PASSTHROUGH_OUT, FieldTable::default()).await;
        bind(channel, PASSTHROUGH_OUT, PASSTHROUGH_EXCHANGE, "#").await;
    }

    /// Child mode, `--passthrough URL N PREFETCH`: forwards N deliveries, then prints
    /// `{cpu ticks} {VmHWM KiB}` of this process and exits.
    pub(super) fn run(args: &[String]) {
        let [url, n, prefetch] = args else {
            panic!("passthrough mode takes URL N PREFETCH, got {args:?}");
        };
        let n: usize = n.parse().expect("N");
        let prefetch: u16 = prefetch.parse().expect("PREFETCH");
        // The worker's runtime: multi-threaded, one thread per core.
        let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
        runtime.block_on(forward_all(url, n, prefetch));
    }

    async fn forward_all(url: &str, n: usize, prefetch: u16) {
        let publisher_connection = connect(url).await;
        let publisher = publisher_connection
            .create_channel()
            .await
            .expect("publishing channel");
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        declare_output(&publisher).await;

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
                PASSTHROUGH_IN.into(),
                format!("passthrough-{}", std::process::id()).into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume");

        let in_flight = TaskTracker::new();
        for _ in 0..n {
            match consumer.next().await {
                Some(Ok(delivery)) => {
                    in_flight.spawn(forward(delivery, publisher.clone()));
                }
                other => fail(&format!("consumer ended: {other:?}")),
            }
        }
        in_flight.close();
        in_flight.wait().await;

        let (cpu_ticks, peak_rss_kib) = process_usage("/proc/self");
        println!("{cpu_ticks} {peak_rss_kib}");
        let close = Duration::from_secs(5);
        let _ = tokio::time::timeout(close, consumer_connection.close(200, "bye".into())).await;
        let _ = tokio::time::timeout(close, publisher_connection.close(200, "bye".into())).await;
    }

    /// Publishes the body and properties unchanged, awaits the confirm (with the worker's
    /// timeout), then acks.
    async fn forward(delivery: Delivery, publisher: Channel) {
        let Delivery {
            data,
            routing_key,
            properties,
            acker,
            ..
        } = delivery;
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let confirm = match publisher
            .basic_publish(
                PASSTHROUGH_EXCHANGE.into(),
                routing_key,
                options,
                &data,
                properties,
            )
            .await
        {
            Ok(confirm) => confirm,
            Err(e) => fail(&format!("publish: {e}")),
        };
        match tokio::time::timeout(Duration::from_secs(30), confirm).await {
            Ok(Ok(confirmation)) if confirmation.is_ack() => {
                if confirmation.take_message().is_some() {
                    fail("publish returned as unroutable");
                }
            }
            other => fail(&format!("publish not confirmed: {other:?}")),
        }
        if !matches!(acker.ack(BasicAckOptions::default()).await, Ok(true)) {
            fail("ack failed");
        }
    }

    /// A failure in a delivery task ends the process: the parent reports it.
    fn fail(what: &str) -> ! {
        eprintln!("passthrough: {what}");
        std::process::exit(2);
    }
}

/// The worker binary, `run`ning against a vhost; killed if dropped while still running.
struct WorkerProcess {
    child: Child,
    health: SocketAddr,
    logs: Arc<Mutex<VecDeque<String>>>,
}

impl WorkerProcess {
    /// Spawns it and waits for the health address it logs at info when it starts (so
    /// the filter stays at info; per-message lines are debug, except one warn line per
    /// dead letter).
    fn start(url: &str) -> WorkerProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_webhook-normalizer"))
            .arg("run")
            .env("NORMALIZER__AMQP__URL", url)
            .env("NORMALIZER__HTTP__LISTEN", "127.0.0.1:0")
            .env("NORMALIZER__LOG__FORMAT", "json")
            .env("NORMALIZER__LOG__FILTER", "info")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("worker starts");
        let stderr = child.stderr.take().expect("stderr");
        let logs = Arc::new(Mutex::new(VecDeque::new()));
        let (address_tx, address_rx) = mpsc::channel();
        {
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(v) = serde_json::from_str::<Value>(&line)
                        && let Some(address) = v.get("address").and_then(Value::as_str)
                        && let Ok(address) = address.parse::<SocketAddr>()
                    {
                        let _ = address_tx.send(address);
                    }
                    let mut logs = logs.lock().unwrap();
                    if logs.len() == 20 {
                        logs.pop_front();
                    }
                    logs.push_back(line);
                }
            });
        }
        let mut worker = WorkerProcess {
            child,
            health: SocketAddr::from(([127, 0, 0, 1], 0)),
            logs,
        };
        match address_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(address) => worker.health = address,
            Err(_) => panic!(
                "worker logged no health address; last log lines:\n{}",
                worker.log_tail()
            ),
        }
        worker
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn readiness(&self) -> Counters {
        let body = http_get(self.health, "/readyz").unwrap_or_default();
        serde_json::from_str(&body).unwrap_or_default()
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    fn log_tail(&self) -> String {
        let logs = self.logs.lock().unwrap();
        logs.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// SIGTERM, then waits for the graceful exit.
    fn terminate(&mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                assert!(status.success(), "worker exited with {status}");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "worker did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The counters of `/readyz` this benchmark reads.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct Counters {
    ready: bool,
    acked: u64,
    requeued: u64,
    settle_failed: u64,
}

/// `GET path` over a plain TCP connection: the response body.
fn http_get(address: SocketAddr, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())
}

/// A vhost of its own for one run, deleted with everything in it when dropped (also
/// when the run panics).
struct Vhost {
    name: String,
}

impl Vhost {
    fn create(name: &str) -> Vhost {
        rabbitmqctl(&["-q", "add_vhost", name]);
        let vhost = Vhost {
            name: name.to_owned(),
        };
        rabbitmqctl(&[
            "-q",
            "set_permissions",
            "-p",
            name,
            "guest",
            ".*",
            ".*",
            ".*",
        ]);
        vhost
    }

    fn url(&self) -> String {
        format!("{BROKER}/{}", self.name)
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let deleted = Command::new("rabbitmqctl")
            .args(["-q", "delete_vhost", &self.name])
            .output();
        if !deleted.is_ok_and(|o| o.status.success()) {
            eprintln!(
                "warning: could not delete vhost {}; run `rabbitmqctl delete_vhost {}`",
                self.name, self.name
            );
        }
    }
}

fn rabbitmqctl(args: &[&str]) -> String {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs (is RabbitMQ installed?)");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Deletes vhosts left by benchmark processes that no longer exist (killed by a signal,
/// which skips the guards).
fn delete_stale_vhosts() {
    let list = rabbitmqctl(&["-q", "list_vhosts", "--no-table-headers", "name"]);
    for name in list.lines().map(str::trim) {
        let Some(pid) = name
            .strip_prefix(VHOST_PREFIX)
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            eprintln!("deleting vhost {name}, left by an interrupted run");
            drop(Vhost {
                name: name.to_owned(),
            });
        }
    }
}

async fn connect(url: &str) -> Connection {
    Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("connects to RabbitMQ (is it running?)")
}

async fn declare_exchange(channel: &Channel, name: &str, kind: ExchangeKind) {
    let options = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(name.into(), kind, options, FieldTable::default())
        .await
        .expect("declare exchange");
}

async fn declare_quorum_queue(channel: &Channel, name: &str, mut args: FieldTable) {
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    let options = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(name.into(), options, args)
        .await
        .expect("declare queue");
}

async fn bind(channel: &Channel, queue: &str, exchange: &str, key: &str) {
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind queue");
}

/// Ready messages in a queue.
async fn queue_depth(channel: &Channel, name: &str) -> u64 {
    let options = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let queue = channel
        .queue_declare(name.into(), options, FieldTable::default())
        .await
        .expect("passive declare");
    u64::from(queue.message_count())
}

/// Publishes the mix as a gateway would: to the raw exchange with routing key `gateway`,
/// persistent, `mandatory`, confirmed (in windows, to bound what is outstanding).
async fn preload(channel: &Channel, exchange: &str, mix: &Mix) {
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let timestamp = received_at().timestamp() as u64;
    for window in mix.messages.chunks(1000) {
        let mut confirms = Vec::with_capacity(window.len());
        for message in window {
            let mut headers = FieldTable::default();
            headers.insert(
                "x-received-at".into(),
                AMQPValue::LongString(RECEIVED_AT.into()),
            );
            if let Some(vendor) = message.vendor {
                headers.insert("x-vendor".into(), AMQPValue::LongString(vendor.into()));
            }
            let properties = BasicProperties::default()
                .with_message_id(message.message_id.as_str().into())
                .with_content_type("application/json".into())
                .with_delivery_mode(2)
                .with_timestamp(timestamp)
                .with_headers(headers);
            let options = BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            };
            confirms.push(
                channel
                    .basic_publish(
                        exchange.into(),
                        "gateway".into(),
                        options,
                        &message.body,
                        properties,
                    )
                    .await
                    .expect("publish"),
            );
        }
        for confirm in confirms {
            let confirmation = confirm.await.expect("confirm");
            assert!(confirmation.is_ack(), "preload publish nacked");
            assert!(
                confirmation.take_message().is_none(),
                "preload publish returned: no queue bound?"
            );
        }
    }
}

/// Clock ticks per second, for `/proc/*/stat` times.
fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100)
}

/// The local broker's OS process id, asked of the broker itself.
fn broker_pid() -> Option<u32> {
    let out = Command::new("rabbitmqctl")
        .args(["-q", "eval", "os:getpid()."])
        .output()
        .ok()?;
    let pid = String::from_utf8_lossy(&out.stdout)
        .trim()
        .trim_matches('"')
        .parse()
        .ok()?;
    Path::new(&format!("/proc/{pid}/stat"))
        .exists()
        .then_some(pid)
}

/// CPU ticks (`utime` + `stime`) and `VmHWM` (KiB) from a `/proc/{pid}` folder.
fn process_usage(proc_dir: &str) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("{proc_dir}/stat")).expect("/proc stat");
    let used = cpu_ticks(&stat).expect("/proc stat format");
    let status = std::fs::read_to_string(format!("{proc_dir}/status")).expect("/proc status");
    let peak = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    (used, peak)
}

/// `utime` + `stime` of a `/proc/{pid}/stat` line.
fn cpu_ticks(stat: &str) -> Option<u64> {
    // Fields 14 and 15; counted after the command name, which is in parentheses and may
    // contain spaces, they are the 12th and 13th.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

impl Bench {
    fn report(&self, rounds: &[(Run, Run)]) {
        let mix = &self.mix;
        let n = mix.len();
        let with_hint = mix.messages.iter().filter(|m| m.vendor.is_some()).count();
        let templates: Vec<String> = mix
            .templates
            .iter()
            .map(|(vendor, count)| format!("{vendor} {count}"))
            .collect();
        println!();
        println!(
            "throughput: {n} raw messages per run, {} rounds alternating worker / passthrough, prefetch {}",
            rounds.len(),
            self.settings.input.prefetch
        );
        println!(
            "mix: {} normalizable, from {} fixtures ({}), + {} of unknown event types; x-vendor on {with_hint}",
            n - mix.expected_dead_letters,
            mix.templates.iter().map(|(_, c)| c).sum::<usize>(),
            templates.join(", "),
            mix.expected_dead_letters,
        );
        println!(
            "mean raw body {} bytes; mean canonical event {} bytes",
            mix.mean_body_bytes(),
            mix.mean_event_bytes()
        );
        println!();
        println!(
            "{:<7} {:<12} {:>7} {:>7} {:>11} {:>18} {:>13} {:>12}",
            "round",
            "run",
            "wall s",
            "msg/s",
            "CPU µs/msg",
            "broker CPU µs/msg",
            "peak RSS MiB",
            "output msgs"
        );
        let row = |round: &str, side: &str, values: [f64; 6]| {
            let [wall, rate, cpu, broker, rss, output] = values;
            println!(
                "{round:<7} {side:<12} {wall:>7.2} {rate:>7.0} {cpu:>11.1} {broker:>18.1} {rss:>13.1} {output:>12.0}"
            );
        };
        let columns = |r: &Run| {
            [
                r.wall.as_secs_f64(),
                r.rate(n),
                r.cpu_us_per_message(n),
                r.broker_cpu_us_per_message(n),
                r.peak_rss_mib(),
                r.output as f64,
            ]
        };
        for (i, (worker, passthrough)) in rounds.iter().enumerate() {
            row(&(i + 1).to_string(), "worker", columns(worker));
            row(&(i + 1).to_string(), "passthrough", columns(passthrough));
        }
        for (side, runs) in [
            ("worker", rounds.iter().map(|r| &r.0).collect::<Vec<_>>()),
            ("passthrough", rounds.iter().map(|r| &r.1).collect()),
        ] {
            let all: Vec<[f64; 6]> = runs.iter().map(|r| columns(r)).collect();
            let medians =
                std::array::from_fn(|c| median(&mut all.iter().map(|v| v[c]).collect::<Vec<_>>()));
            row("median", side, medians);
        }

        let mut ratios: Vec<f64> = rounds.iter().map(|(w, p)| w.rate(n) / p.rate(n)).collect();
        let per_round: Vec<String> = ratios.iter().map(|r| format!("{r:.2}x")).collect();
        println!();
        println!(
            "worker msg/s ÷ passthrough msg/s: {:.2}x (median of per-round ratios {})",
            median(&mut ratios),
            per_round.join(", ")
        );
        let expected = mix.expected_events + mix.expected_dead_letters;
        for (i, (worker, _)) in rounds.iter().enumerate() {
            let verdict = if worker.output == expected {
                "as expected"
            } else {
                "NOT as expected"
            };
            let consuming = worker
                .consuming_after
                .map_or("?".into(), |d| format!("{}", d.as_millis()));
            println!(
                "round {}: worker output {} for {n} raw = {} events + {} dead letters ({verdict}: {} + {}); consuming {consuming} ms after spawn",
                i + 1,
                worker.output,
                worker.events,
                worker.dead_letters,
                mix.expected_events,
                mix.expected_dead_letters,
            );
        }
        if self.broker_pid.is_none() {
            println!("broker CPU: not measured (no local RabbitMQ process found)");
        }
    }
}
