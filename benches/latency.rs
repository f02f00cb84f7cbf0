//! End-to-end latency at steady offered loads well below saturation, worker against the
//! same-output passthrough (see `throughput`), same run.
//!
//! For each rate (default 1,000, 3,000 and 5,000 raw messages/s) and each side, in a
//! fresh vhost with the worker's topology: the side is started and consuming; then a
//! paced gateway in this process publishes raw messages (the realistic mix, cycled, each
//! with its own id) at the rate, persistent, `mandatory`, with publisher confirms, on a
//! schedule fixed in absolute time (message k is due at t0 + k/rate; the timer wakes at
//! most every millisecond and sends everything due), recording each message's send
//! instant. A consumer in this process, on the capture queue bound `#` to the canonical
//! exchange, records each event's arrival instant and finds its raw message by
//! `correlation_id`. Latency = arrival − send, same clock: gateway publish to canonical
//! delivery, through both queues. The first seconds are warm-up; events of raw messages
//! sent within the window that follows are measured (p50, p99, max). Dead letters (5%)
//! are not events and are not measured.
//!
//! `--at-drain F` (such as `0.8`; off by default) replaces `--rates` by one rate taken
//! from this machine as it is: first the drain rate is measured as `throughput` measures
//! it, the worker (one process) and the same-output passthrough each draining a
//! preloaded queue of `--drain-messages` raw messages of the realistic mix (default
//! 20,000; the passthrough from a recording of that mix), alternating, for
//! `--drain-rounds` rounds (default 3); then both sides are offered F × the lower of the
//! two medians (normally the worker's), so they are compared at one load. The drain runs
//! (each, and the medians) and the offered rate are printed before the latency tables.
//!
//! ```sh
//! cargo bench --bench latency
//! cargo bench --bench latency -- --rates 1000,3000,5000,8000 --window 30 --rounds 3
//! cargo bench --bench latency -- --at-drain 0.8 --rounds 3
//! ```

#![allow(clippy::expect_used, clippy::unwrap_used)]

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use futures_util::FutureExt;
use futures_util::stream::FuturesUnordered;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::FieldTable;

use testkit::connect;

use common::broker::{RAW_ROUTING_KEY, raw_properties};
use common::mix::Mix;
use common::passthrough::{Variant, child_main};
use common::procs::{PassthroughProcess, pid_ticks, start_worker};
use common::recording::{Recording, RecordingFile};
use common::report::{Table, f0, f1, f2, median, percentile, runs_table};
use common::runs::{Env, Run, Side, alternate};
use common::{Args, EVENTS_QUEUE, STALL, parse_raw_id};

const USAGE: &str = "cargo bench --bench latency -- [--rates 1000,3000,5000 | --at-drain 0.8 [--drain-messages 20000] [--drain-rounds 3]] [--warmup SECS] [--window SECS] [--templates N] [--rounds R] [--cpus shared|split]";

struct Settings {
    warmup: Duration,
    window: Duration,
}

/// One side at one rate.
struct Measured {
    side: Side,
    rate: u64,
    /// What the gateway achieved over its whole schedule.
    offered: f64,
    /// Sorted latencies of the window's events.
    latencies: Vec<Duration>,
    /// Events of the window's raw messages that never arrived.
    missing: usize,
    /// Largest lag of a send behind its schedule.
    max_send_lag: Duration,
    cpu_us: f64,
    broker_cpu_us: f64,
    /// Worker only, from `/readyz` sampled every 10 ms: the most raw messages held, and
    /// the longest time its `acked` count stood still while it held some.
    max_in_flight: Option<u64>,
    longest_ack_gap: Option<Duration>,
}

fn main() {
    if child_main() {
        return;
    }
    let args = Args::parse(
        "latency",
        &[
            "rates",
            "warmup",
            "window",
            "templates",
            "rounds",
            "cpus",
            "at-drain",
            "drain-messages",
            "drain-rounds",
        ],
        USAGE,
    );
    if args.skip {
        return;
    }
    let at_drain = args.fraction("at-drain");
    if at_drain.is_some() && args.text("rates").is_some() {
        eprintln!("--at-drain replaces --rates: the rates given are not used");
    }
    let drain_messages = args.number("drain-messages", 20_000) as usize;
    let drain_rounds = args.number("drain-rounds", 3) as usize;
    let settings = Settings {
        warmup: Duration::from_secs(args.number("warmup", 2)),
        window: Duration::from_secs(args.number("window", 10)),
    };
    let templates = args.number("templates", 2000) as usize;
    let rounds = args.number("rounds", 1) as usize;

    let env = Env::new();
    let _split = common::split_cpus(&args, &env);
    let mix = Mix::standard(templates);
    eprintln!("recording the worker's output for {templates} raw messages");
    let (file, recording, _) = env.record(&mix, "latency");
    let drain = at_drain.map(|fraction| drain_rate(&env, fraction, drain_messages, drain_rounds));
    let rates = match &drain {
        Some(drain) => vec![drain.offered],
        None => args.numbers("rates", &[1000, 3000, 5000]),
    };

    let mut all = Vec::new();
    for round in 0..rounds {
        for (i, rate) in rates.iter().enumerate() {
            let sides = if (round + i) % 2 == 0 {
                [Side::Worker(1), Side::Same(Variant::Exact)]
            } else {
                [Side::Same(Variant::Exact), Side::Worker(1)]
            };
            for side in sides {
                let m = measure(&env, &settings, &mix, &recording, &file, side, *rate);
                eprintln!(
                    "round {} {rate}/s {}: p50 {:.2} ms, p99 {:.2} ms",
                    round + 1,
                    side.name(),
                    ms(percentile(&m.latencies, 50.0)),
                    ms(percentile(&m.latencies, 99.0))
                );
                all.push((round, m));
            }
        }
    }

    let cpus = if _split.is_some() {
        "split (broker on CPU 0 alone)"
    } else {
        "shared"
    };
    if let Some(drain) = &drain {
        drain.print(env.settings.input.prefetch, cpus);
    }
    println!();
    println!(
        "## latency{}: warm-up {} s, window {} s per rate and side, {rounds} round(s), CPUs {cpus}",
        drain.as_ref().map_or(String::new(), |d| format!(
            " at {} × the lower drain rate",
            d.fraction
        )),
        settings.warmup.as_secs(),
        settings.window.as_secs(),
    );
    println!();
    println!(
        "mix: {} ({templates} raw messages, cycled with fresh ids)",
        mix.description
    );
    println!();
    let mut table = Table::new(&[
        "rate/s",
        "round",
        "side",
        "offered/s",
        "events",
        "p50 ms",
        "p99 ms",
        "max ms",
        "client CPU µs/msg",
        "broker CPU µs/msg",
        "max send lag ms",
        "worker: max held",
        "worker: longest ack gap ms",
    ]);
    for rate in &rates {
        for (round, m) in all.iter().filter(|(_, m)| m.rate == *rate) {
            table.row(vec![
                rate.to_string(),
                (round + 1).to_string(),
                m.side.name(),
                f0(m.offered),
                format!(
                    "{}{}",
                    m.latencies.len(),
                    if m.missing > 0 {
                        format!(" ({} missing)", m.missing)
                    } else {
                        String::new()
                    }
                ),
                f2(ms(percentile(&m.latencies, 50.0))),
                f2(ms(percentile(&m.latencies, 99.0))),
                f2(ms(m.latencies.last().copied())),
                f1(m.cpu_us),
                f1(m.broker_cpu_us),
                f1(m.max_send_lag.as_secs_f64() * 1e3),
                m.max_in_flight.map_or("–".into(), |h| h.to_string()),
                m.longest_ack_gap
                    .map_or("–".into(), |g| f0(g.as_secs_f64() * 1e3)),
            ]);
        }
    }
    table.print();
    for rate in &rates {
        let of = |side: Side, p: f64| {
            median(
                &all.iter()
                    .filter(|(_, m)| m.rate == *rate && m.side == side)
                    .map(|(_, m)| ms(percentile(&m.latencies, p)))
                    .collect::<Vec<_>>(),
            )
        };
        let (w50, s50) = (
            of(Side::Worker(1), 50.0),
            of(Side::Same(Variant::Exact), 50.0),
        );
        let (w99, s99) = (
            of(Side::Worker(1), 99.0),
            of(Side::Same(Variant::Exact), 99.0),
        );
        println!(
            "- {rate}/s: p99 worker {w99:.2} ms ÷ same-output {s99:.2} ms = **{:.2}x**; p50 {w50:.2} ÷ {s50:.2} = {:.2}x",
            w99 / s99,
            w50 / s50
        );
    }
}

/// The drain rates `--at-drain` measured, and the rate offered from them.
struct Drain {
    fraction: f64,
    messages: usize,
    /// By round: the worker's run, then the same-output passthrough's.
    runs: Vec<Vec<Run>>,
    worker: f64,
    same: f64,
    /// `fraction` × the lower of the two medians, msg/s.
    offered: u64,
}

/// Measures the worker's and the same-output passthrough's drain rates as `throughput`
/// does (a preloaded queue of the realistic mix, alternating rounds, the passthrough
/// from a recording of that mix), and the rate to offer both: `fraction` × the lower
/// median.
fn drain_rate(env: &Env, fraction: f64, messages: usize, rounds: usize) -> Drain {
    let mix = Mix::standard(messages);
    eprintln!("drain rate: recording the worker's output for {messages} raw messages");
    let (file, _, _) = env.record(&mix, "drain");
    let sides = [Side::Worker(1), Side::Same(Variant::Exact)];
    let runs = alternate(env, &mix, &sides, rounds, Some(&file));
    let of = |i: usize| median(&runs.iter().map(|r| r[i].rate()).collect::<Vec<_>>());
    let (worker, same) = (of(0), of(1));
    let offered = (fraction * worker.min(same)).round().max(1.0) as u64;
    eprintln!(
        "drain rate medians: worker {worker:.0} msg/s, same-output {same:.0} msg/s; offering {offered} msg/s"
    );
    Drain {
        fraction,
        messages,
        runs,
        worker,
        same,
        offered,
    }
}

impl Drain {
    fn print(&self, prefetch: u16, cpus: &str) {
        println!();
        println!(
            "## drain rate: {} raw messages per run, {} round(s) alternating, prefetch {prefetch}, CPUs {cpus}",
            self.messages,
            self.runs.len()
        );
        println!();
        runs_table(&self.runs);
        let lower = if self.worker <= self.same {
            "worker"
        } else {
            "same-output"
        };
        println!(
            "- drain medians: worker {:.0} msg/s, same-output {:.0} msg/s; offered to both sides: {} × {lower} {:.0} = **{} msg/s**",
            self.worker,
            self.same,
            self.fraction,
            self.worker.min(self.same),
            self.offered
        );
    }
}

fn ms(d: Option<Duration>) -> f64 {
    d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
}

fn measure(
    env: &Env,
    settings: &Settings,
    mix: &Mix,
    recording: &Recording,
    file: &RecordingFile,
    side: Side,
    rate: u64,
) -> Measured {
    let vhost = env.vhost(&format!("latency-{rate}-{}", side.name().replace(' ', "")));
    let url = vhost.url();
    let total = rate * (settings.warmup + settings.window).as_secs();
    let mut worker = None;
    let mut passthrough = None;
    let pid = match side {
        Side::Worker(_) => {
            let w = start_worker(&url);
            w.wait_ready(Duration::from_secs(30));
            let pid = w.pid();
            worker = Some(w);
            pid
        }
        _ => {
            let mut p = PassthroughProcess::start(&[
                url.clone(),
                total.to_string(),
                env.settings.input.prefetch.to_string(),
                Variant::Exact.name().into(),
                file.path.display().to_string(),
            ]);
            for want in ["loaded", "consuming"] {
                let line = p.line(Duration::from_secs(60));
                assert_eq!(line, want, "passthrough said {line:?}");
            }
            let pid = p.pid();
            passthrough = Some(p);
            pid
        }
    };
    let watcher = worker.as_ref().map(|w| watch(w.health));
    let cpu_before = pid_ticks(pid);
    let broker_before = env.broker_ticks();
    let (sent, arrivals, offered, max_send_lag) = env
        .runtime
        .block_on(gateway(&url, env, mix, recording, rate, total));
    let cpu = pid_ticks(pid).zip(cpu_before).map_or(f64::NAN, |(a, b)| {
        env.duration(a - b).as_secs_f64() * 1e6 / total as f64
    });
    let broker_cpu_us = env
        .broker_cpu_since(broker_before)
        .map_or(f64::NAN, |d| d.as_secs_f64() * 1e6 / total as f64);
    let (max_in_flight, longest_ack_gap) = match watcher {
        Some((stop, thread)) => {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let (held, gap) = thread.join().expect("watcher");
            (Some(held), Some(gap))
        }
        None => (None, None),
    };
    if let Some(mut w) = worker {
        w.terminate();
    }
    if let Some(mut p) = passthrough {
        let line = p.line(STALL);
        assert!(line.starts_with("done"), "passthrough said {line:?}");
        p.wait();
    }

    // Raw messages sent within the window, and their events' latencies.
    let t0 = sent[0];
    let from = t0 + settings.warmup;
    let to = from + settings.window;
    let in_window = |seq: usize| sent[seq] >= from && sent[seq] < to;
    let mut latencies: Vec<Duration> = arrivals
        .iter()
        .filter(|(seq, _)| in_window(*seq))
        .map(|(seq, at)| at.saturating_duration_since(sent[*seq]))
        .collect();
    latencies.sort();
    let expected: usize = (0..sent.len())
        .filter(|seq| in_window(*seq))
        .map(|seq| {
            recording.outputs[seq % recording.outputs.len()]
                .iter()
                .filter(|o| !o.dead_letter)
                .count()
        })
        .sum();
    Measured {
        side,
        rate,
        offered,
        missing: expected.saturating_sub(latencies.len()),
        latencies,
        max_send_lag,
        cpu_us: cpu,
        broker_cpu_us,
        max_in_flight,
        longest_ack_gap,
    }
}

type Watcher = (
    Arc<std::sync::atomic::AtomicBool>,
    std::thread::JoinHandle<(u64, Duration)>,
);

/// Samples the worker's `/readyz` every 10 ms (light enough not to load it) until stopped: the most raw messages it
/// held, and the longest time `acked` stood still while it held some.
fn watch(health: std::net::SocketAddr) -> Watcher {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    let thread = std::thread::spawn(move || {
        let (mut held, mut gap) = (0, Duration::ZERO);
        let mut last = (0, Instant::now());
        while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
            let c = common::procs::readiness(health);
            let now = Instant::now();
            held = held.max(c.in_flight);
            if c.acked != last.0 || c.in_flight == 0 {
                last = (c.acked, now);
            } else {
                gap = gap.max(now - last.1);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        (held, gap)
    });
    (stop, thread)
}

/// Publishes `total` raw messages at `rate` while consuming the canonical output:
/// returns each raw message's send instant, each event's (raw message, arrival), the
/// achieved rate and the largest lag of a send behind its schedule.
async fn gateway(
    url: &str,
    env: &Env,
    mix: &Mix,
    recording: &Recording,
    rate: u64,
    total: u64,
) -> (Vec<Instant>, Vec<(usize, Instant)>, f64, Duration) {
    let settings = &env.settings;
    let expected_events: usize = (0..total as usize)
        .map(|seq| {
            recording.outputs[seq % recording.outputs.len()]
                .iter()
                .filter(|o| !o.dead_letter)
                .count()
        })
        .sum();

    // The consumer: records arrivals until every event came or the deadline passed.
    let consumer_connection = connect(url).await;
    let channel = consumer_connection.create_channel().await.expect("channel");
    channel
        .basic_qos(1000, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut consumer = channel
        .basic_consume(
            EVENTS_QUEUE.into(),
            "latency".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume the canonical output");
    let deadline = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let consumer_deadline = deadline.clone();
    let arrivals = tokio::spawn(async move {
        let mut arrivals = Vec::with_capacity(expected_events);
        while arrivals.len() < expected_events {
            let wait = match *consumer_deadline.lock().unwrap() {
                Some(at) => at.saturating_duration_since(Instant::now()),
                None => Duration::from_secs(3600),
            };
            let next = tokio::time::timeout(wait.min(Duration::from_millis(200)), consumer.next());
            match next.await {
                Ok(Some(Ok(delivery))) => {
                    let at = Instant::now();
                    let seq = delivery
                        .properties
                        .correlation_id()
                        .as_ref()
                        .and_then(|id| parse_raw_id(id.as_str()))
                        .expect("event names its raw message");
                    arrivals.push((seq as usize, at));
                }
                Ok(other) => panic!("latency consumer ended: {other:?}"),
                Err(_) => {
                    if consumer_deadline
                        .lock()
                        .unwrap()
                        .is_some_and(|at| Instant::now() >= at)
                    {
                        break;
                    }
                }
            }
        }
        arrivals
    });

    // The gateway.
    let connection = connect(url).await;
    let publisher = connection.create_channel().await.expect("channel");
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let mut sent = Vec::with_capacity(total as usize);
    let mut confirms = FuturesUnordered::new();
    let mut max_lag = Duration::ZERO;
    let t0 = Instant::now() + Duration::from_millis(20);
    for seq in 0..total {
        let due = t0 + Duration::from_secs_f64(seq as f64 / rate as f64);
        let now = Instant::now();
        if now < due {
            tokio::time::sleep_until(due.into()).await;
        } else {
            max_lag = max_lag.max(now - due);
        }
        let message = &mix.messages[seq as usize % mix.messages.len()];
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        sent.push(Instant::now());
        let confirm = publisher
            .basic_publish(
                settings.input.exchange.as_str().into(),
                RAW_ROUTING_KEY.into(),
                options,
                &message.body,
                raw_properties(seq, message.vendor),
            )
            .await
            .expect("publish");
        confirms.push(confirm);
        while let Some(Some(done)) = confirms.next().now_or_never() {
            assert!(done.expect("confirm").is_ack(), "gateway publish nacked");
        }
    }
    let offered = total as f64 / sent[sent.len() - 1].duration_since(sent[0]).as_secs_f64();
    while let Some(done) = confirms.next().await {
        assert!(done.expect("confirm").is_ack(), "gateway publish nacked");
    }
    *deadline.lock().unwrap() = Some(Instant::now() + Duration::from_secs(30));
    let arrivals = arrivals.await.expect("consumer task");
    let _ = consumer_connection.close(200, "bye".into()).await;
    let _ = connection.close(200, "bye".into()).await;
    (sent, arrivals, offered, max_lag)
}
