//! One measured run: a fresh vhost with the worker's topology, the mix preloaded, then
//! one side drains it while the benchmark watches; its CPU time, peak RSS and the
//! broker's CPU time over the same interval are read from `/proc`.
//!
//! - a **worker** run starts the `webhook-normalizer run` binary (one process, or
//!   several on the same queue) and is timed from spawn until `/readyz` reports every
//!   raw message acknowledged (polled every 10 ms);
//! - a **partitions** run (on an [`Env::private`] node with the consistent-hash exchange
//!   plugin) preloads through the per-key partitioning of `docs/ordering.md` and starts
//!   one worker per partition, each on its own input exchange and queue; timed like a
//!   worker run, until the workers' acked counts add up to every raw message;
//! - a **passthrough** run starts this executable in passthrough mode and is timed from
//!   the moment it has loaded its recording (setup, like building the mix) until it
//!   reports its last ack written; its CPU time is counted from the same moment.
//!
//! Both timings include process start and connecting (tens of milliseconds).

use std::path::Path;
use std::time::{Duration, Instant};

use webhook_normalizer::config::Settings;

use testkit::{PrivateNode, TestVhost, assert_alive, delete_stale_vhosts};

use super::broker::{
    partition_env, preload, preload_partitioned, stored, with_partitions, with_topology,
    with_topology_and,
};
use super::mix::Mix;
use super::passthrough::Variant;
use super::procs::{
    PassthroughProcess, broker_pid, clock_ticks, pid_ticks, private_node_pid, process_usage,
    readiness, start_worker, start_worker_with,
};
use super::recording::{Recording, RecordingFile};
use super::{STALL, VHOST_PREFIX};

/// What drains the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The worker binary, this many processes on the one queue.
    Worker(usize),
    /// The per-key partitioning of `docs/ordering.md` with this many partitions, one
    /// worker process each (needs an [`Env::private`] node).
    Partitions(usize),
    /// The bare-bytes passthrough.
    Bare,
    /// The same-output passthrough, publishing the recording (altered by the variant).
    Same(Variant),
}

impl Side {
    pub fn name(self) -> String {
        match self {
            Side::Worker(1) => "worker".into(),
            Side::Worker(k) => format!("{k} workers"),
            Side::Partitions(1) => "1 partition".into(),
            Side::Partitions(p) => format!("{p} partitions"),
            Side::Bare => "bare-bytes".into(),
            Side::Same(Variant::Exact) => "same-output".into(),
            Side::Same(v) => format!("same-output, {}", v.name()),
        }
    }
}

/// What one measured run cost.
#[derive(Debug, Clone)]
pub struct Run {
    pub side: Side,
    /// Raw messages drained.
    pub n: u64,
    pub wall: Duration,
    /// CPU time of the measured process(es).
    pub cpu: Duration,
    /// The broker's CPU time over the same interval.
    pub broker_cpu: Option<Duration>,
    /// Largest peak RSS of the measured process(es).
    pub peak_rss_kib: u64,
    /// Events and dead letters the broker stored.
    pub events: u64,
    pub dead_letters: u64,
    /// Whether that is what the side should have made.
    pub as_expected: bool,
    pub consuming_after: Option<Duration>,
    /// Worker counters: requeued, publish retries, sessions beyond the first.
    pub requeued: u64,
    pub publish_retries: u64,
    pub reconnects: u64,
    /// Ack frames sent (the worker's from `/readyz`).
    pub ack_frames: Option<u64>,
    /// Partitions runs: raw messages preloaded into each partition's queue.
    pub partition_depths: Vec<u64>,
}

impl Run {
    pub fn rate(&self) -> f64 {
        self.n as f64 / self.wall.as_secs_f64()
    }
    pub fn us_per_message(&self) -> f64 {
        self.wall.as_secs_f64() * 1e6 / self.n as f64
    }
    pub fn cpu_us(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.n as f64
    }
    pub fn broker_cpu_us(&self) -> f64 {
        self.broker_cpu
            .map_or(f64::NAN, |cpu| cpu.as_secs_f64() * 1e6 / self.n as f64)
    }
    pub fn peak_rss_mib(&self) -> f64 {
        self.peak_rss_kib as f64 / 1024.0
    }
}

/// What every run needs.
pub struct Env {
    pub settings: Settings,
    /// Drives preloading, counting and the latency gateway; the measured processes
    /// have their own.
    pub runtime: tokio::runtime::Runtime,
    /// Clock ticks per second, the unit of `/proc/*/stat` times.
    pub clock_ticks: u64,
    /// The broker's OS process: on a shared machine its CPU time per message is the
    /// other half of the cost.
    pub broker_pid: Option<u32>,
    /// The private node the runs are on ([`Env::private`]); `None`: the shared broker.
    pub node: Option<PrivateNode>,
}

impl Env {
    pub fn new() -> Env {
        delete_stale_vhosts(VHOST_PREFIX);
        let env = Env::on(broker_pid(), None);
        if env.broker_pid.is_none() {
            eprintln!("broker CPU: not measured (no local RabbitMQ process found)");
        }
        env
    }

    fn on(broker_pid: Option<u32>, node: Option<PrivateNode>) -> Env {
        Env {
            settings: Settings::load(None).expect("the worker's settings load"),
            runtime: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("tokio runtime"),
            clock_ticks: clock_ticks(),
            broker_pid,
            node,
        }
    }

    /// Runs on a RabbitMQ node of their own with `plugins` enabled (the test kit's
    /// [`PrivateNode`], stopped and removed when this is dropped), for anything
    /// broker-wide; its CPU time is read from `/proc` of the node's pid.
    pub fn private(plugins: &[&str]) -> Env {
        let node = PrivateNode::start_with("", plugins);
        let pid = private_node_pid(&node);
        if pid.is_none() {
            eprintln!(
                "broker CPU: not measured (no pid for the private node {})",
                node.name()
            );
        }
        Env::on(pid, Some(node))
    }

    /// A vhost of its own (`wn-bench-{pid}-{n}-{label}` on the shared broker, or on the
    /// private node) with the worker's topology and the capture queue.
    pub fn vhost(&self, label: &str) -> TestVhost {
        self.runtime
            .block_on(with_topology(self.bare_vhost(label), &self.settings))
    }

    /// A vhost with the partitioning of `docs/ordering.md` (`partitions` partitions) and
    /// the capture queue, on the private node.
    pub fn partitioned_vhost(&self, label: &str, partitions: usize) -> TestVhost {
        assert!(
            self.node.is_some(),
            "partitions need a node with the consistent-hash exchange plugin (Env::private)"
        );
        self.runtime.block_on(with_partitions(
            self.bare_vhost(label),
            &self.settings,
            partitions,
        ))
    }

    fn bare_vhost(&self, label: &str) -> TestVhost {
        match &self.node {
            Some(node) => TestVhost::on(node, label),
            None => TestVhost::with_prefix(VHOST_PREFIX, label),
        }
    }

    /// A worker run over `mix` whose output is then read back: the recording the
    /// same-output passthrough republishes, and that run's figures.
    pub fn record(&self, mix: &Mix, label: &str) -> (RecordingFile, Recording, Run) {
        let vhost = self.vhost(&format!("{label}-recording"));
        let run = self.drain(&vhost, mix, Side::Worker(1), None);
        assert!(
            run.as_expected,
            "the recording run's output is not as expected"
        );
        let recording = self.runtime.block_on(Recording::read(
            &vhost.url(),
            &self.settings,
            mix.len(),
            run.events,
            run.dead_letters,
        ));
        let file = RecordingFile::write(&recording, label);
        (file, recording, run)
    }

    /// One run of `side` over `mix`, in a fresh vhost.
    pub fn run(&self, mix: &Mix, side: Side, recording: Option<&RecordingFile>) -> Run {
        let label = side.name().replace([' ', ','], "");
        let vhost = match side {
            Side::Partitions(p) => self.partitioned_vhost(&label, p),
            Side::Same(Variant::History) => self.runtime.block_on(with_topology_and(
                self.bare_vhost(&label),
                &self.settings,
                &[("NORMALIZER__HISTORY__ENABLED", "true")],
            )),
            _ => self.vhost(&label),
        };
        self.drain(&vhost, mix, side, recording.map(|r| r.path.as_path()))
    }

    fn drain(&self, vhost: &TestVhost, mix: &Mix, side: Side, recording: Option<&Path>) -> Run {
        let url = vhost.url();
        let partition_depths = match side {
            Side::Partitions(p) => {
                self.runtime
                    .block_on(preload_partitioned(&url, &self.settings, mix, p))
            }
            _ => {
                self.runtime.block_on(preload(&url, &self.settings, mix));
                Vec::new()
            }
        };
        let n = mix.len();
        self.settle_broker();
        let mut broker_before = self.broker_ticks();
        let mut started = Instant::now();
        let mut run = Run {
            side,
            n,
            wall: Duration::ZERO,
            cpu: Duration::ZERO,
            broker_cpu: None,
            peak_rss_kib: 0,
            events: 0,
            dead_letters: 0,
            as_expected: false,
            consuming_after: None,
            requeued: 0,
            publish_retries: 0,
            reconnects: 0,
            ack_frames: None,
            partition_depths,
        };
        let mut workers = Vec::new();
        match side {
            Side::Worker(_) | Side::Partitions(_) => {
                workers = match side {
                    Side::Partitions(p) => (0..p)
                        .map(|i| start_worker_with(&url, &partition_env(i)))
                        .collect(),
                    Side::Worker(k) => (0..k).map(|_| start_worker(&url)).collect(),
                    _ => unreachable!(),
                };
                let mut progress = (0, Instant::now());
                loop {
                    let counters: Vec<_> = workers.iter().map(|w| readiness(w.health)).collect();
                    let acked: u64 = counters.iter().map(|c| c.acked).sum();
                    if acked >= n {
                        run.wall = started.elapsed();
                        run.requeued = counters.iter().map(|c| c.requeued).sum();
                        run.publish_retries = counters.iter().map(|c| c.publish_retries).sum();
                        run.ack_frames = Some(counters.iter().map(|c| c.ack_frames).sum());
                        run.reconnects =
                            counters.iter().map(|c| c.sessions.saturating_sub(1)).sum();
                        break;
                    }
                    if run.consuming_after.is_none() && counters.iter().all(|c| c.ready) {
                        run.consuming_after = Some(started.elapsed());
                    }
                    for w in &mut workers {
                        assert_alive(w, &format!("at {acked} acked"));
                    }
                    if acked != progress.0 {
                        progress = (acked, Instant::now());
                    }
                    assert!(
                        progress.1.elapsed() < STALL,
                        "worker stalled at {acked} of {n} acked; last log lines:\n{}",
                        workers[0].log_tail(20)
                    );
                    std::thread::sleep(Duration::from_millis(10));
                }
                for w in &workers {
                    let (ticks, rss) = process_usage(&format!("/proc/{}", w.pid()));
                    run.cpu += self.duration(ticks);
                    run.peak_rss_kib = run.peak_rss_kib.max(rss);
                }
            }
            Side::Bare | Side::Same(_) => {
                let prefetch = self.settings.input.prefetch.to_string();
                let mut args = vec![url.clone(), n.to_string(), prefetch];
                match side {
                    Side::Bare => {
                        args.push("bare".into());
                        args.push(self.settings.output.exchange.clone());
                    }
                    Side::Same(variant) => {
                        args.push(variant.name().into());
                        let path = recording.expect("same-output needs a recording");
                        args.push(path.display().to_string());
                    }
                    Side::Worker(_) | Side::Partitions(_) => unreachable!(),
                }
                let mut child = PassthroughProcess::start(&args);
                // Loading the recording is setup, not part of the run.
                let line = child.line(Duration::from_secs(60));
                assert_eq!(line, "loaded", "passthrough said {line:?}");
                broker_before = self.broker_ticks();
                started = Instant::now();
                let line = child.line(Duration::from_secs(60));
                assert_eq!(line, "consuming", "passthrough said {line:?}");
                run.consuming_after = Some(started.elapsed());
                let line = child.line(STALL + Duration::from_millis(n));
                run.wall = started.elapsed();
                let fields: Vec<u64> = line
                    .strip_prefix("done ")
                    .map(|rest| rest.split(' ').filter_map(|f| f.parse().ok()).collect())
                    .unwrap_or_default();
                let [ticks, rss, acks] = fields[..] else {
                    panic!("passthrough said {line:?}, not `done CPU RSS ACKS`");
                };
                run.cpu = self.duration(ticks);
                run.peak_rss_kib = rss;
                run.ack_frames = Some(acks);
                child.wait();
            }
        }
        run.broker_cpu = self.broker_cpu_since(broker_before);
        for w in &mut workers {
            w.terminate();
        }
        let (events, dead_letters) = self.runtime.block_on(stored(&url, &self.settings));
        run.events = events;
        run.dead_letters = dead_letters;
        run.as_expected = match side {
            Side::Worker(_) | Side::Partitions(_) => {
                events == mix.expected_events && dead_letters == mix.expected_dead_letters
            }
            Side::Bare => events == n && dead_letters == 0,
            Side::Same(_) => events + dead_letters == mix.expected_output(),
        };
        if !run.as_expected {
            eprintln!(
                "warning: {} stored {events} events + {dead_letters} dead letters; expected {} + {}",
                side.name(),
                mix.expected_events,
                mix.expected_dead_letters
            );
        }
        if run.requeued != 0 || run.reconnects != 0 {
            eprintln!(
                "warning: {} requeued {} and reconnected {} times",
                side.name(),
                run.requeued,
                run.reconnects
            );
        }
        run
    }

    pub fn duration(&self, ticks: u64) -> Duration {
        Duration::from_secs_f64(ticks as f64 / self.clock_ticks as f64)
    }

    /// Waits (up to 10 s) until the broker is idle: after a preload it still moves
    /// messages from its write-ahead log to segment files, work that would otherwise
    /// land in the measured interval.
    pub fn settle_broker(&self) {
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

    pub fn broker_ticks(&self) -> Option<u64> {
        pid_ticks(self.broker_pid?)
    }

    pub fn broker_cpu_since(&self, before: Option<u64>) -> Option<Duration> {
        Some(self.duration(self.broker_ticks()?.checked_sub(before?)?))
    }
}

/// Runs `sides` over `mix` for `rounds` rounds, each round in a rotated order (round
/// r starts with side r), so drift of a shared machine hits every side alike. Returns
/// the runs by round, in the order of `sides`.
pub fn alternate(
    env: &Env,
    mix: &Mix,
    sides: &[Side],
    rounds: usize,
    recording: Option<&RecordingFile>,
) -> Vec<Vec<Run>> {
    let mut all = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let mut runs: Vec<Option<Run>> = vec![None; sides.len()];
        eprint!("round {}:", round + 1);
        for k in 0..sides.len() {
            let i = (round + k) % sides.len();
            let run = env.run(mix, sides[i], recording);
            eprint!(" {} {:.0} msg/s;", sides[i].name(), run.rate());
            runs[i] = Some(run);
        }
        eprintln!();
        all.push(
            runs.into_iter()
                .map(|r| r.expect("every side ran"))
                .collect(),
        );
    }
    all
}
