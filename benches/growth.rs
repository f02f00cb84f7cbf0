//! How the cost grows, worker against the same-output passthrough (see `throughput`),
//! each part with its own recording and alternating rounds:
//!
//! - `size`: raw bodies of 1 KB, 10 KB and 100 KB (the realistic Authenticate
//!   `CRIMINAL_REQUEST_STATUS_UPDATE` fixture, padded with a text field `order.notes`):
//!   throughput and CPU per message;
//! - `fanout`: Deel `timesheet.reviewed` with 1, 10 and 100 `resource` elements (one
//!   event per element, each carrying the body with `resource` narrowed to its own
//!   element): output bytes and time per raw message;
//! - `workers`: 1, 2 and 4 worker processes (`--workers`) draining one preloaded queue
//!   (the realistic mix): msg/s, its ratio to the first count, client CPU per message
//!   (summed over the processes), broker CPU per message, peak RSS (the largest);
//! - `partitions`: the per-key partitioning of `docs/ordering.md` with 1, 2 and 4
//!   partitions (`--partitions`), same columns: raw messages published to the raw
//!   exchange with their own `x-order-key` go through the consistent-hash exchange into
//!   one partition's queue (preloaded before the workers start), and one worker per
//!   partition drains its own input exchange and single-active-consumer queue. The
//!   shared broker lacks the consistent-hash exchange plugin, so this part (its
//!   1-partition baseline included) runs on a private node of its own with the plugin
//!   (`testkit::PrivateNode`, about 6 s to start), whose CPU time is read by its pid.
//!
//! On a machine with fewer cores than processes (2 cores, shared with the broker, here),
//! the `workers` and `partitions` parts measure contention, not scaling.
//!
//! ```sh
//! cargo bench --bench growth
//! cargo bench --bench growth -- --only size --rounds 3 --messages 20000
//! cargo bench --bench growth -- --only fanout,workers
//! cargo bench --bench growth -- --only workers,partitions --workers 1,2,4 --partitions 1,2,4
//! ```
//!
//! `--messages N` is the run size of the cheapest case (1 KB bodies, fan-out 1, and the
//! workers and partitions parts); the costlier cases run fewer raw messages (N/3 at
//! 10 KB, N/10 at 100 KB; N/5 at fan-out 10, N/50 at fan-out 100).

#![allow(clippy::expect_used, clippy::unwrap_used)]

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod common;

use common::Args;
use common::mix::Mix;
use common::passthrough::{Variant, child_main};
use common::report::{Table, f0, f1, f2, median, rate_ratio, runs_table};
use common::runs::{Env, Run, Side, alternate};

const USAGE: &str = "cargo bench --bench growth -- [--only size,fanout,workers,partitions] [--messages N] [--rounds R] [--sizes 1024,10240,102400] [--elements 1,10,100] [--workers 1,2,4] [--partitions 1,2,4]";

fn main() {
    if child_main() {
        return;
    }
    let args = Args::parse(
        "growth",
        &[
            "only",
            "messages",
            "rounds",
            "sizes",
            "elements",
            "workers",
            "partitions",
        ],
        USAGE,
    );
    if args.skip {
        return;
    }
    let only = args.words("only", &["size", "fanout", "workers", "partitions"]);
    let n = args.number("messages", 16_000) as usize;
    let rounds = args.number("rounds", 2) as usize;
    let sizes = args.numbers("sizes", &[1024, 10 * 1024, 100 * 1024]);
    let elements = args.numbers("elements", &[1, 10, 100]);
    let worker_counts = args.numbers("workers", &[1, 2, 4]);
    let partition_counts = args.numbers("partitions", &[1, 2, 4]);
    // The shared broker's Env only if a part runs there; the private node (seconds to
    // start) only for the partitions part.
    let shared = only.iter().any(|p| p != "partitions").then(Env::new);
    let env = || shared.as_ref().expect("the shared broker's Env");
    for part in &only {
        match part.as_str() {
            "size" => size(env(), n, rounds, &sizes),
            "fanout" => fan_out(env(), n, rounds, &elements),
            "workers" => workers(env(), n, rounds, &worker_counts),
            "partitions" => {
                eprintln!(
                    "partitions: starting a private RabbitMQ node with the consistent-hash exchange plugin"
                );
                let private = Env::private(&["rabbitmq_consistent_hash_exchange"]);
                partitions(&private, n, rounds, &partition_counts);
            }
            other => panic!("unknown part {other:?}; usage: {USAGE}"),
        }
    }
}

/// The median over rounds of `f` of side `i`.
fn med(runs: &[Vec<Run>], i: usize, f: impl Fn(&Run) -> f64) -> f64 {
    median(&runs.iter().map(|r| f(&r[i])).collect::<Vec<_>>())
}

fn size(env: &Env, n: usize, rounds: usize, sizes: &[u64]) {
    let sides = [Side::Worker(1), Side::Same(Variant::Exact)];
    let mut summary = Table::new(&[
        "raw body",
        "raw msgs/run",
        "event body B",
        "worker msg/s",
        "same-output msg/s",
        "worker ÷ same-output",
        "worker CPU µs/msg",
        "same-output CPU µs/msg",
        "broker CPU µs/msg (worker / same-output)",
    ]);
    for &size in sizes {
        let count = if size <= 2048 {
            n
        } else if size <= 20 * 1024 {
            n / 3
        } else {
            n / 10
        }
        .max(50);
        let mix = Mix::padded(count, size as usize);
        eprintln!("size {size}: {count} raw messages per run; recording");
        let (file, recording, _) = env.record(&mix, &format!("size-{size}"));
        let runs = alternate(env, &mix, &sides, rounds, Some(&file));
        println!();
        println!("### body size {size} bytes: {count} raw messages per run");
        println!();
        runs_table(&runs);
        let event_body = recording.events().map(|e| e.body.len()).sum::<usize>() as f64
            / recording.events().count().max(1) as f64;
        summary.row(vec![
            format!("{:.0} KB", size as f64 / 1024.0),
            count.to_string(),
            f0(event_body),
            f0(med(&runs, 0, Run::rate)),
            f0(med(&runs, 1, Run::rate)),
            format!("{}x", f2(rate_ratio(&runs, 0, 1).0)),
            f1(med(&runs, 0, Run::cpu_us)),
            f1(med(&runs, 1, Run::cpu_us)),
            format!(
                "{} / {}",
                f1(med(&runs, 0, Run::broker_cpu_us)),
                f1(med(&runs, 1, Run::broker_cpu_us))
            ),
        ]);
    }
    println!();
    println!("## growth with body size: medians of {rounds} alternating rounds");
    println!();
    summary.print();
}

fn fan_out(env: &Env, n: usize, rounds: usize, elements: &[u64]) {
    let sides = [Side::Worker(1), Side::Same(Variant::Exact)];
    let mut summary = Table::new(&[
        "elements",
        "raw msgs/run",
        "raw body B",
        "output B per raw msg",
        "worker µs per raw msg",
        "same-output µs per raw msg",
        "worker ÷ same-output (msg/s)",
        "worker CPU µs per raw msg",
        "broker CPU µs per raw msg (worker / same-output)",
    ]);
    for &k in elements {
        let count = match k {
            0..=1 => n,
            2..=10 => n / 5,
            _ => n / 50,
        }
        .max(20);
        let mix = Mix::fan_out(count, k as usize);
        eprintln!("fan-out {k}: {count} raw messages per run; recording");
        let (file, recording, _) = env.record(&mix, &format!("fanout-{k}"));
        let runs = alternate(env, &mix, &sides, rounds, Some(&file));
        println!();
        println!("### fan-out {k}: {count} raw messages per run");
        println!();
        runs_table(&runs);
        summary.row(vec![
            k.to_string(),
            count.to_string(),
            f0(mix.mean_body_bytes()),
            f0(recording.bytes_per_raw()),
            f1(med(&runs, 0, Run::us_per_message)),
            f1(med(&runs, 1, Run::us_per_message)),
            format!("{}x", f2(rate_ratio(&runs, 0, 1).0)),
            f1(med(&runs, 0, Run::cpu_us)),
            format!(
                "{} / {}",
                f1(med(&runs, 0, Run::broker_cpu_us)),
                f1(med(&runs, 1, Run::broker_cpu_us))
            ),
        ]);
    }
    println!();
    println!(
        "## growth with fan-out: medians of {rounds} alternating rounds (output bytes: event bodies + encoded properties)"
    );
    println!();
    summary.print();
}

fn workers(env: &Env, n: usize, rounds: usize, counts: &[u64]) {
    let mix = Mix::standard(n);
    eprintln!("workers: {n} raw messages per run, {counts:?} worker processes");
    let sides: Vec<Side> = counts.iter().map(|&k| Side::Worker(k as usize)).collect();
    let runs = alternate(env, &mix, &sides, rounds, None);
    println!();
    println!(
        "## worker processes on one queue ({}): {n} raw messages per run, {rounds} alternating rounds",
        counts_text(counts)
    );
    println!();
    runs_table(&runs);
    scaling_table(&runs, counts, "workers", None);
    contention_note(counts, "worker processes");
}

fn partitions(env: &Env, n: usize, rounds: usize, counts: &[u64]) {
    let mix = Mix::standard(n);
    eprintln!("partitions: {n} raw messages per run, {counts:?} partitions");
    let sides: Vec<Side> = counts
        .iter()
        .map(|&p| Side::Partitions(p as usize))
        .collect();
    let runs = alternate(env, &mix, &sides, rounds, None);
    let node = env.node.as_ref().map_or("?", |node| node.name());
    println!();
    println!(
        "## per-key partitions ({}), one worker each: {n} raw messages per run, {rounds} alternating rounds",
        counts_text(counts)
    );
    println!();
    println!(
        "docs/ordering.md's recipe on a private node ({node}, plugin rabbitmq_consistent_hash_exchange): raw exchange → x-consistent-hash on header x-order-key (each raw message its own key) → webhooks.raw.pI → normalizer.raw.pI (single active consumer)"
    );
    println!();
    runs_table(&runs);
    scaling_table(&runs, counts, "partitions", Some(n));
    if env.broker_pid.is_none() {
        println!("- broker CPU not measured: the private node's pid was not found");
    }
    contention_note(counts, "worker processes (one per partition)");
}

fn counts_text(counts: &[u64]) -> String {
    counts
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The medians of each count, with msg/s against the first count's (the median of the
/// per-round ratios); for partitions also how the raw messages spread over them.
fn scaling_table(runs: &[Vec<Run>], counts: &[u64], what: &str, spread_of: Option<usize>) {
    let first = counts.first().copied().unwrap_or(1);
    let unit = if first == 1 {
        what.trim_end_matches('s')
    } else {
        what
    };
    let ratio_header = format!("msg/s ÷ {first} {unit}");
    let mut header = vec![
        what,
        "msg/s",
        ratio_header.as_str(),
        "client CPU µs/msg (sum)",
        "broker CPU µs/msg",
        "peak RSS MiB (largest)",
    ];
    if spread_of.is_some() {
        header.push("raw msgs per partition (round 1)");
    }
    let mut table = Table::new(&header);
    for (i, count) in counts.iter().enumerate() {
        let (ratio, each) = rate_ratio(runs, i, 0);
        let mut row = vec![
            count.to_string(),
            f0(med(runs, i, Run::rate)),
            if i == 0 {
                "1.00x".into()
            } else if runs.len() > 1 {
                format!("{}x (rounds {each})", f2(ratio))
            } else {
                format!("{}x", f2(ratio))
            },
            f1(med(runs, i, Run::cpu_us)),
            f1(med(runs, i, Run::broker_cpu_us)),
            f1(med(runs, i, Run::peak_rss_mib)),
        ];
        if spread_of.is_some() {
            row.push(
                runs.first()
                    .map(|r| counts_text(&r[i].partition_depths).replace(", ", " / "))
                    .unwrap_or_default(),
            );
        }
        table.row(row);
    }
    println!("medians of {} round(s):", runs.len());
    println!();
    table.print();
}

/// One line on what these figures are when the processes outnumber the cores.
fn contention_note(counts: &[u64], what: &str) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let most = counts.iter().copied().max().unwrap_or(1) as usize;
    // The broker needs a core of its own for the processes to scale.
    let verdict = if most < cpus {
        "more processes can use spare cores"
    } else {
        "this measures contention for them, not scaling"
    };
    println!(
        "- {cpus} CPUs shared by the broker, this benchmark and up to {most} {what}: {verdict}"
    );
    println!();
}
