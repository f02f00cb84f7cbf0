//! Instructions the worker executes per raw message, counted by valgrind's callgrind: a
//! figure that repeats from run to run where times on a shared machine do not, so two
//! builds (a refactoring and the commit before it) can be compared within a percent or
//! two. `scripts/instructions.sh` builds the release binary and runs this.
//!
//! Each run gets a fresh vhost with the worker's topology (as the other end-to-end
//! benchmarks), preloaded with N raw messages of the standard mix (deterministic: the
//! same bodies, ids and vendor hints every time). The worker binary then runs under
//! `valgrind --tool=callgrind --fair-sched=yes` until everything it should make is
//! stored and `/readyz` counts every raw message acknowledged; it is stopped with
//! SIGTERM, and callgrind's total of instructions executed (Ir, every thread, start to
//! exit) is read from its output file. A run of the same build over an empty queue
//! (start, connect, consume, idle, stop) gives the fixed cost, so per message =
//! (Ir(N) − Ir(0)) ÷ N.
//!
//! What still varies from run to run is how the worker's threads interleave (how many
//! deliveries one wake-up takes, how confirms and acks batch): `--fair-sched=yes` makes
//! valgrind hand the one CPU it gives the threads round in a fixed order (runs of 5,000
//! messages spread over 0.74% without it, 6 runs; 0.41% with it, 18 runs). Nothing the benchmark does while the worker runs
//! is counted against it but a handful of `/readyz` requests: progress is read from the
//! broker, and the worker's only timers that tick with the wall clock are set out of the
//! way (AMQP heartbeats every 3600 s, no periodic summary log line), since under
//! valgrind a run lasts 50 times longer and its length varies with the machine's load.
//! Idling costs nothing measurable (2 or 12 s idle: the same fixed cost within 0.1%).
//!
//! Needs RabbitMQ at 127.0.0.1:5672 (guest/guest), `rabbitmqctl` and `valgrind` on the
//! PATH. About 1.5 minutes with the defaults (N = 5000, 3 rounds):
//!
//! ```sh
//! scripts/instructions.sh
//! scripts/instructions.sh --baseline /path/to/older/webhook-normalizer --top 20
//! ```
//!
//! `WEBHOOK_NORMALIZER_BENCH_WORKER` measures another build than this checkout's (the
//! script sets it to the release binary: the benchmark's own build of the binary has
//! dev-dependency features unified in, so its figures differ a little); `--baseline
//! PATH` measures a second build in the same rounds (alternating) and prints the ratio.
//! `--top K` prints the K functions with the most instructions of their own in each
//! build's last run (`callgrind_annotate`). `--with same-output` adds the same-output
//! passthrough of `throughput` (this executable re-run as the baseline client, over a
//! recording of the worker's output made first) as one more side, counted the same way
//! with the recording's loading in its fixed cost: worker ÷ same-output is then the
//! worker's own CPU per message against the least a client publishing the same output
//! spends, in a figure that repeats. See `docs/performance.md`.

#![allow(clippy::expect_used, clippy::unwrap_used)]

// The worker's allocator (src/bin/webhook-normalizer/main.rs), for the passthrough side.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::Args;
use common::broker::{preload, stored};
use common::callgrind::total_ir;
use common::mix::Mix;
use common::passthrough::child_main;
use common::procs::{PassthroughProcess, readiness};
use common::recording::RecordingFile;
use common::report::{Table, median};
use common::runs::Env;
use testkit::{TestVhost, WorkerProcess, assert_alive, queue_depth};

const USAGE: &str = "cargo bench --bench instructions -- [--messages N] [--rounds R] [--idle SECONDS] [--baseline PATH] [--with same-output] [--top K]";

/// Giving up on a run whose stored output did not grow for this long (under valgrind).
const STALL: Duration = Duration::from_secs(300);
/// How often the broker is asked how much is stored, and `/readyz` how much is acked.
const POLL: Duration = Duration::from_secs(1);

/// A side to measure: a build of the worker, or the same-output passthrough.
struct Build {
    label: String,
    binary: PathBuf,
    /// The same-output passthrough over this recording (`binary` is then unused).
    recording: Option<PathBuf>,
}

/// One run of one build under callgrind.
struct Counted {
    /// Instructions executed, every thread, start to exit.
    ir: u64,
    /// Wall time from spawn to exit, under valgrind.
    wall: Duration,
    out_file: PathBuf,
}

fn main() {
    if child_main() {
        return;
    }
    let args = Args::parse(
        "instructions",
        &["messages", "rounds", "idle", "baseline", "with", "top"],
        USAGE,
    );
    if args.skip {
        return;
    }
    let n = args.number("messages", 5_000) as usize;
    let rounds = args.number("rounds", 3) as usize;
    let idle = Duration::from_secs(args.number("idle", 2));
    let top = args.text("top").map_or(0, |_| args.number("top", 1)) as usize;
    let valgrind = Command::new("valgrind")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .expect("valgrind on the PATH (apt-get install valgrind)");

    let mut builds = vec![Build {
        label: "worker".into(),
        binary: common::worker_binary(),
        recording: None,
    }];
    if let Some(path) = args.text("baseline") {
        let binary = PathBuf::from(path);
        assert!(binary.is_file(), "--baseline {path}: no such file");
        builds.push(Build {
            label: "baseline".into(),
            binary,
            recording: None,
        });
    }
    let with = args.words("with", &[]);
    assert!(
        with.iter().all(|w| w == "same-output"),
        "--with takes same-output; usage: {USAGE}"
    );
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("instructions");
    std::fs::create_dir_all(&dir).expect("output folder");

    let env = Env::new();
    let mix = Mix::standard(n);
    let empty = Mix::standard(0);
    // Kept for the whole run: the passthrough reads it in every round.
    let mut _recording: Option<RecordingFile> = None;
    if !with.is_empty() {
        eprintln!("recording the worker's output (not counted)");
        let (file, _, _) = env.record(&mix, "instructions");
        builds.push(Build {
            label: "same-output".into(),
            binary: std::env::current_exe().expect("own path"),
            recording: Some(file.path.clone()),
        });
        _recording = Some(file);
    }
    eprintln!(
        "{n} raw messages per run, {rounds} rounds, under {valgrind}; callgrind files in {}",
        dir.display()
    );

    // results[round][build] = (Ir(0), Ir(N))
    let mut results: Vec<Vec<(Counted, Counted)>> = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let mut this: Vec<Option<(Counted, Counted)>> = builds.iter().map(|_| None).collect();
        for k in 0..builds.len() {
            let b = (round + k) % builds.len();
            let build = &builds[b];
            let name =
                |m: usize| dir.join(format!("{}-r{}-n{m}.callgrind", build.label, round + 1));
            eprint!("round {} {}: idle ", round + 1, build.label);
            let zero = count(&env, build, &empty, idle, &name(0));
            eprint!("{} Ir; {n} messages ", zero.ir);
            let full = count(&env, build, &mix, idle, &name(n));
            eprintln!(
                "{} Ir ({:.0} s): {:.0} Ir per message",
                full.ir,
                full.wall.as_secs_f64(),
                per_message(&zero, &full, n)
            );
            this[b] = Some((zero, full));
        }
        results.push(
            this.into_iter()
                .map(|r| r.expect("every build ran"))
                .collect(),
        );
    }

    println!();
    println!("## instructions: {n} raw messages per run, {rounds} rounds, callgrind ({valgrind})");
    println!();
    println!(
        "mix: {}; x-vendor on {} of {n}; {} events + {} dead letters out",
        mix.description,
        mix.with_hint(),
        mix.expected_events,
        mix.expected_dead_letters
    );
    println!();
    for build in &builds {
        println!("- {}: `{}`", build.label, build.binary.display());
    }
    println!();
    let mut table = Table::new(&[
        "round",
        "build",
        "Ir, 0 messages",
        &format!("Ir, {n} messages"),
        "Ir per message",
        "wall s under valgrind",
    ]);
    for (round, runs) in results.iter().enumerate() {
        for (build, (zero, full)) in builds.iter().zip(runs) {
            table.row(vec![
                (round + 1).to_string(),
                build.label.clone(),
                zero.ir.to_string(),
                full.ir.to_string(),
                format!("{:.0}", per_message(zero, full, n)),
                format!("{:.0}", full.wall.as_secs_f64()),
            ]);
        }
    }
    table.print();
    let mut medians = Vec::new();
    for (b, build) in builds.iter().enumerate() {
        let each: Vec<f64> = results
            .iter()
            .map(|r| per_message(&r[b].0, &r[b].1, n))
            .collect();
        let fixed: Vec<f64> = results.iter().map(|r| r[b].0.ir as f64).collect();
        let mid = median(&each);
        let (lo, hi) = min_max(&each);
        let (flo, fhi) = min_max(&fixed);
        println!(
            "- {}: **{mid:.0} Ir per message** (median; {lo:.0}–{hi:.0}, spread {:.2}% of the median); fixed cost {:.1} M Ir (spread {:.2}%)",
            build.label,
            (hi - lo) / mid * 100.0,
            median(&fixed) / 1e6,
            (fhi - flo) / median(&fixed) * 100.0,
        );
        medians.push(mid);
    }
    for (b, other) in builds.iter().enumerate().skip(1) {
        let each: Vec<String> = results
            .iter()
            .map(|r| {
                let ratio = per_message(&r[0].0, &r[0].1, n) / per_message(&r[b].0, &r[b].1, n);
                format!("{ratio:.4}")
            })
            .collect();
        println!(
            "- worker ÷ {}, Ir per message: **{:.4}** ({:+.2}%; rounds {})",
            other.label,
            medians[0] / medians[b],
            (medians[0] / medians[b] - 1.0) * 100.0,
            each.join(", ")
        );
    }
    if top > 0 {
        for (b, build) in builds.iter().enumerate() {
            let last = &results[rounds - 1][b].1.out_file;
            println!();
            println!(
                "### {}: the {top} functions with the most instructions (self), {n} messages",
                build.label
            );
            println!();
            println!("```");
            for line in annotate(last, top) {
                println!("{line}");
            }
            println!("```");
        }
    }
}

/// (Ir(N) − Ir(0)) ÷ N.
fn per_message(zero: &Counted, full: &Counted, n: usize) -> f64 {
    (full.ir as f64 - zero.ir as f64) / n as f64
}

fn min_max(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(*v), hi.max(*v))
        })
}

/// One run of `build` under callgrind over `mix`, in a fresh vhost: preloaded, then the
/// worker started and left to drain the queue (over an empty queue: until it consumes,
/// then `idle`); stopped with SIGTERM, its output checked.
fn count(env: &Env, build: &Build, mix: &Mix, idle: Duration, out_file: &Path) -> Counted {
    if let Some(recording) = &build.recording {
        return count_passthrough(env, recording, mix, out_file);
    }
    let n = mix.len();
    let (vhost, log_file) = prepare(env, &build.label, mix, out_file);
    let url = vhost.url();
    let started = Instant::now();
    let mut worker = WorkerProcess::builder(&url)
        .binary(&build.binary)
        .under(
            "valgrind",
            &[
                "--tool=callgrind".into(),
                "--fair-sched=yes".into(),
                format!("--callgrind-out-file={}", out_file.display()),
                format!("--log-file={}", log_file.display()),
            ],
        )
        // The other benchmarks' settings (common::procs::start_worker) ...
        .env("NORMALIZER__LOG__FILTER", "info")
        // ... but nothing that runs by the wall clock, which valgrind stretches.
        .env("NORMALIZER__AMQP__HEARTBEAT_SECS", "3600")
        .env("NORMALIZER__LOG__SUMMARY_SECS", "0")
        .keep_log_lines(20)
        .startup_timeout(Duration::from_secs(180))
        .start();
    let expected = mix.expected_output();
    let mut progress = (0, Instant::now());
    // Progress from the broker's counts of stored output, not from the worker.
    while progress.0 < expected {
        std::thread::sleep(POLL);
        assert_alive(
            &mut worker,
            &format!("at {} of {expected} stored", progress.0),
        );
        let (events, dead_letters) = env.runtime.block_on(stored(&url, &env.settings));
        if events + dead_letters != progress.0 {
            progress = (events + dead_letters, Instant::now());
        }
        assert!(
            progress.1.elapsed() < STALL,
            "worker stalled at {} of {expected} stored; last log lines:\n{}",
            progress.0,
            worker.log_tail(20)
        );
    }
    // Every raw message acknowledged (and, for the empty queue, the worker consuming).
    let deadline = Instant::now() + STALL;
    loop {
        let counters = readiness(worker.health);
        if counters.ready && counters.acked >= n {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "worker did not acknowledge {n} raw messages: {counters:?}; last log lines:\n{}",
            worker.log_tail(20)
        );
        assert_alive(&mut worker, "waiting for its acks");
        std::thread::sleep(POLL);
    }
    if n == 0 {
        std::thread::sleep(idle);
    }
    worker.signal("TERM");
    let code = worker.wait_exit(STALL);
    let wall = started.elapsed();
    assert_eq!(
        code,
        Some(0),
        "worker exited with {code:?} after SIGTERM; last log lines:\n{}",
        worker.log_tail(20)
    );
    let (events, dead_letters) = env.runtime.block_on(stored(&url, &env.settings));
    assert_eq!(
        (events, dead_letters),
        (mix.expected_events, mix.expected_dead_letters),
        "stored events and dead letters"
    );
    // No consumer is left, so nothing is unacknowledged: every raw message left is ready.
    let left = env.runtime.block_on(async {
        let connection = vhost.connect().await;
        let channel = connection.create_channel().await.expect("channel");
        let depth = queue_depth(&channel, &env.settings.input.queue).await;
        let _ = connection.close(200, "counted".into()).await;
        depth
    });
    assert_eq!(left, 0, "raw messages left in {}", env.settings.input.queue);
    Counted {
        ir: total_ir(out_file),
        wall,
        out_file: out_file.to_owned(),
    }
}

/// A fresh vhost preloaded with `mix`, the broker settled, and where callgrind's log
/// goes (its output file removed from an earlier run).
fn prepare(env: &Env, label: &str, mix: &Mix, out_file: &Path) -> (TestVhost, PathBuf) {
    let vhost = env.vhost(&format!("instructions-{label}-{}", mix.len()));
    env.runtime
        .block_on(preload(&vhost.url(), &env.settings, mix));
    env.settle_broker();
    let _ = std::fs::remove_file(out_file);
    (vhost, out_file.with_extension("log"))
}

/// One run of the same-output passthrough under callgrind over `mix`, in a fresh vhost:
/// preloaded, then the passthrough started (it loads the recording, consumes N raw
/// messages, publishes their recorded output, acks and exits), its output checked.
fn count_passthrough(env: &Env, recording: &Path, mix: &Mix, out_file: &Path) -> Counted {
    let n = mix.len();
    let (vhost, log_file) = prepare(env, "same-output", mix, out_file);
    let url = vhost.url();
    let started = Instant::now();
    let valgrind_args = [
        "--tool=callgrind".to_owned(),
        "--fair-sched=yes".to_owned(),
        format!("--callgrind-out-file={}", out_file.display()),
        format!("--log-file={}", log_file.display()),
    ];
    let args = [
        url.clone(),
        n.to_string(),
        env.settings.input.prefetch.to_string(),
        "exact".to_owned(),
        recording.display().to_string(),
    ];
    let mut child = PassthroughProcess::start_under(Some(("valgrind", &valgrind_args)), &args);
    for expected in ["loaded", "consuming"] {
        let line = child.line(STALL);
        assert_eq!(line, expected, "passthrough said {line:?}");
    }
    let line = child.line(STALL);
    assert!(line.starts_with("done "), "passthrough said {line:?}");
    child.wait_within(STALL);
    let wall = started.elapsed();
    let (events, dead_letters) = env.runtime.block_on(stored(&url, &env.settings));
    assert_eq!(
        events + dead_letters,
        mix.expected_output(),
        "stored events and dead letters"
    );
    Counted {
        ir: total_ir(out_file),
        wall,
        out_file: out_file.to_owned(),
    }
}

/// The first `top` function lines of `callgrind_annotate FILE` (self cost).
fn annotate(out_file: &Path, top: usize) -> Vec<String> {
    let out = Command::new("callgrind_annotate")
        .arg(out_file)
        .output()
        .expect("callgrind_annotate runs");
    assert!(out.status.success(), "callgrind_annotate failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip_while(|l| !l.contains("file:function"))
        .skip(2)
        .take_while(|l| !l.trim().is_empty())
        .take(top)
        .map(str::to_owned)
        .collect()
}
