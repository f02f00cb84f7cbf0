//! How the cost grows, worker against the same-output passthrough (see `throughput`),
//! each part with its own recording and alternating rounds:
//!
//! - `size`: raw bodies of 1 KB, 10 KB and 100 KB (the realistic Authenticate
//!   `CRIMINAL_REQUEST_STATUS_UPDATE` fixture, padded with a text field `order.notes`):
//!   throughput and CPU per message;
//! - `fanout`: Deel `timesheet.reviewed` with 1, 10 and 100 `resource` elements (one
//!   event per element, each carrying the body with `resource` narrowed to its own
//!   element): output bytes and time per raw message;
//! - `workers`: one against two worker processes draining one preloaded queue (the
//!   realistic mix).
//!
//! ```sh
//! cargo bench --bench growth
//! cargo bench --bench growth -- --only size --rounds 3 --messages 20000
//! cargo bench --bench growth -- --only fanout,workers
//! ```
//!
//! `--messages N` is the run size of the cheapest case (1 KB bodies, fan-out 1, and the
//! workers part); the costlier cases run fewer raw messages (N/3 at 10 KB, N/10 at
//! 100 KB; N/5 at fan-out 10, N/50 at fan-out 100).

#![allow(clippy::expect_used, clippy::unwrap_used)]

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod common;

use common::Args;
use common::mix::Mix;
use common::passthrough::{Variant, child_main};
use common::report::{Table, f0, f1, f2, median, rate_ratio, runs_table};
use common::runs::{Env, Run, Side, alternate};

const USAGE: &str = "cargo bench --bench growth -- [--only size,fanout,workers] [--messages N] [--rounds R] [--sizes 1024,10240,102400] [--elements 1,10,100]";

fn main() {
    if child_main() {
        return;
    }
    let args = Args::parse(
        "growth",
        &["only", "messages", "rounds", "sizes", "elements"],
        USAGE,
    );
    if args.skip {
        return;
    }
    let only = args.words("only", &["size", "fanout", "workers"]);
    let n = args.number("messages", 16_000) as usize;
    let rounds = args.number("rounds", 2) as usize;
    let sizes = args.numbers("sizes", &[1024, 10 * 1024, 100 * 1024]);
    let elements = args.numbers("elements", &[1, 10, 100]);
    let env = Env::new();
    for part in &only {
        match part.as_str() {
            "size" => size(&env, n, rounds, &sizes),
            "fanout" => fan_out(&env, n, rounds, &elements),
            "workers" => workers(&env, n, rounds),
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

fn workers(env: &Env, n: usize, rounds: usize) {
    let mix = Mix::standard(n);
    eprintln!("workers: {n} raw messages per run");
    let sides = [Side::Worker(1), Side::Worker(2)];
    let runs = alternate(env, &mix, &sides, rounds, None);
    println!();
    println!(
        "## one worker process against two on one queue: {n} raw messages per run, {rounds} alternating rounds"
    );
    println!();
    runs_table(&runs);
    let (ratio, each) = rate_ratio(&runs, 1, 0);
    println!(
        "- 2 workers ÷ 1 worker (msg/s): **{ratio:.2}x** (rounds {each}); CPU and RSS: sum and largest of the processes"
    );
    println!();
}
