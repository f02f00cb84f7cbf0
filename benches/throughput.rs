//! End-to-end throughput of the worker against a local RabbitMQ, beside two baselines
//! on the same broker in the same run:
//!
//! - **same-output passthrough**: consumes the same raw messages and publishes exactly
//!   what the worker publishes for them (recorded from a worker run before the timed
//!   rounds: exchanges, routing keys, bodies, every property and header), with
//!   publisher confirms and `multiple` acks, from a client tuned for it. It does no
//!   normalizing, so it is the limit of the worker's output contract on this machine:
//!   the figure to hold the worker to.
//! - **bare-bytes passthrough**: the same client publishing each raw message unchanged:
//!   what moving the input bytes costs.
//!
//! Each run drains a preloaded queue of N raw webhooks (a mix of all three vendors built
//! from `tests/fixtures/`, 5% of them not normalizable) in a fresh vhost of its own with
//! the worker's topology, deleted afterwards. The sides alternate, in an order rotated
//! every round, for R rounds; the report gives every run, the medians, and the median of
//! the per-round ratios. Besides each process's own CPU time, it shows the broker's over
//! the same interval (read from `/proc` of the local RabbitMQ): when the broker shares
//! the machine, throughput follows the sum of the two. See `docs/performance.md`.
//!
//! Needs RabbitMQ at 127.0.0.1:5672 (guest/guest) and `rabbitmqctl` on the PATH. About
//! a minute with the defaults (N = 20000, R = 3):
//!
//! ```sh
//! cargo bench --bench throughput
//! cargo bench --bench throughput -- --messages 100000 --rounds 5
//! ```

#![allow(clippy::expect_used, clippy::unwrap_used)]

// The allocator the binary uses (see src/bin/webhook-normalizer/main.rs), so the passthrough pays what the
// worker pays for allocation.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod common;

use common::mix::Mix;
use common::passthrough::{Variant, child_main};
use common::report::{f1, rate_ratio, runs_table};
use common::runs::{Env, Side, alternate};
use common::{Args, recording};

const USAGE: &str =
    "cargo bench --bench throughput -- [--messages N] [--rounds R] [--cpus shared|split]";

fn main() {
    if child_main() {
        return;
    }
    let args = Args::parse("throughput", &["messages", "rounds", "cpus"], USAGE);
    if args.skip {
        return;
    }
    let n = args.number("messages", 20_000) as usize;
    let rounds = args.number("rounds", 3) as usize;

    let env = Env::new();
    let _split = common::split_cpus(&args, &env);
    let mix = Mix::standard(n);
    eprintln!("{n} raw messages per run, {rounds} rounds; recording the worker's output");
    let (file, recording, recorded) = env.record(&mix, "throughput");
    eprintln!(
        "recorded {} outputs ({:.0} msg/s in the recording run)",
        recording.total(),
        recorded.rate()
    );
    let sides = [Side::Worker(1), Side::Same(Variant::Exact), Side::Bare];
    let runs = alternate(&env, &mix, &sides, rounds, Some(&file));

    println!();
    println!(
        "## throughput: {n} raw messages per run, {rounds} rounds alternating, prefetch {}, CPUs {}",
        env.settings.input.prefetch,
        if _split.is_some() {
            "split (broker on CPU 0 alone)"
        } else {
            "shared"
        }
    );
    println!();
    println!(
        "mix: {}; x-vendor on {} of {n}; {} events + {} dead letters out",
        mix.description,
        mix.with_hint(),
        mix.expected_events,
        mix.expected_dead_letters
    );
    let events: Vec<_> = recording.events().collect();
    let mean = |f: &dyn Fn(&recording::Output) -> usize| {
        events.iter().map(|e| f(e)).sum::<usize>() as f64 / events.len().max(1) as f64
    };
    println!(
        "mean raw body {:.0} bytes; mean canonical event body {:.0} bytes, properties {:.0} bytes encoded (headers {:.0})",
        mix.mean_body_bytes(),
        mean(&|e| e.body.len()),
        mean(&|e| recording::properties_size(&e.properties)),
        mean(&|e| recording::headers_size(&e.properties)),
    );
    println!();
    runs_table(&runs);
    let (same, same_each) = rate_ratio(&runs, 0, 1);
    let (bare, bare_each) = rate_ratio(&runs, 0, 2);
    let (ceiling, ceiling_each) = rate_ratio(&runs, 1, 2);
    println!("- worker ÷ same-output passthrough: **{same:.2}x** (rounds {same_each})");
    println!("- worker ÷ bare-bytes passthrough: **{bare:.2}x** (rounds {bare_each})");
    println!("- same-output ÷ bare-bytes: {ceiling:.2}x (rounds {ceiling_each})");
    let worker_cpu: Vec<f64> = runs
        .iter()
        .map(|r| r[0].cpu_us() + r[0].broker_cpu_us())
        .collect();
    let same_cpu: Vec<f64> = runs
        .iter()
        .map(|r| r[1].cpu_us() + r[1].broker_cpu_us())
        .collect();
    println!(
        "- client + broker CPU per raw message, median: worker {} µs, same-output {} µs",
        f1(common::report::median(&worker_cpu)),
        f1(common::report::median(&same_cpu))
    );
    for (i, round) in runs.iter().enumerate() {
        let w = &round[0];
        let acks: Vec<String> = round
            .iter()
            .filter_map(|r| {
                // A worker that does not count its ack frames reports 0.
                r.ack_frames
                    .filter(|a| *a > 0)
                    .map(|a| format!("{} {:.1}", r.side.name(), r.n as f64 / a as f64))
            })
            .collect();
        println!(
            "- round {}: worker consuming {} ms after spawn, requeued {}, publish retries {}, reconnects {}; raw messages per ack frame: {}",
            i + 1,
            w.consuming_after
                .map_or("?".into(), |d| d.as_millis().to_string()),
            w.requeued,
            w.publish_retries,
            w.reconnects,
            acks.join(", ")
        );
    }
}
