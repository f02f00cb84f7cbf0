//! What the canonical output's bytes and headers cost the broker: the same-output
//! passthrough republishes the worker's recorded output (see `throughput`) in four
//! variants, alternating, same run:
//!
//! - `exact`: as the worker publishes it (one header, `cloudEvents_subject`);
//! - `all-headers`: with the five `cloudEvents_*` headers the worker used to send too,
//!   which repeat what the message already says (`_id` = `message_id`, `_type` =
//!   `type` and the routing key, `_specversion` = the constant `1.0`, `_source` = the
//!   vendor prefix of the type, `_time` = the body's `time`);
//! - `no-headers`: without any headers;
//! - `half-body`: event bodies cut to their first half (the broker does not parse them);
//! - `history`: as `exact`, into a topology with the event history on (`[history]`): the
//!   tap copies of events are also appended to the history stream.
//!
//! Dead letters (5% of the mix) are republished exactly in every variant. The report
//! gives throughput and broker CPU per message for each variant, the mean sizes (raw
//! body, event body, event properties and headers encoded), the headers' sizes one by
//! one, and the mean event body split by top-level attribute. See
//! `docs/performance.md`.
//!
//! ```sh
//! cargo bench --bench output_cost
//! cargo bench --bench output_cost -- --messages 50000 --rounds 9
//! ```

#![allow(clippy::expect_used, clippy::unwrap_used)]

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod common;

use common::Args;
use common::mix::Mix;
use common::passthrough::{Variant, child_main};
use common::recording::{body_breakdown, header_entries, headers_size, properties_size};
use common::report::{Table, f0, f1, f2, median, runs_table};
use common::runs::{Env, Side, alternate};

const USAGE: &str = "cargo bench --bench output_cost -- [--messages N] [--rounds R]";

fn main() {
    if child_main() {
        return;
    }
    let args = Args::parse("output_cost", &["messages", "rounds"], USAGE);
    if args.skip {
        return;
    }
    let n = args.number("messages", 20_000) as usize;
    let rounds = args.number("rounds", 5) as usize;

    let env = Env::new();
    let mix = Mix::standard(n);
    eprintln!("{n} raw messages per run, {rounds} rounds; recording the worker's output");
    let (file, recording, _) = env.record(&mix, "output-cost");
    let sides: Vec<Side> = Variant::ALL.into_iter().map(Side::Same).collect();
    let runs = alternate(&env, &mix, &sides, rounds, Some(&file));

    println!();
    println!("## output cost: {n} raw messages per run, {rounds} rounds alternating");
    println!();
    println!("mix: {}", mix.description);
    println!();
    runs_table(&runs);

    let mut table = Table::new(&[
        "variant",
        "event body B",
        "event headers B",
        "msg/s",
        "÷ exact",
        "broker CPU µs/msg",
        "Δ broker CPU µs/msg",
        "client CPU µs/msg",
    ]);
    let events: Vec<_> = recording.events().collect();
    let mean = |f: &dyn Fn(&common::recording::Output) -> usize| {
        events.iter().map(|e| f(e)).sum::<usize>() as f64 / events.len().max(1) as f64
    };
    let exact_broker = median(
        &runs
            .iter()
            .map(|r| r[0].broker_cpu_us())
            .collect::<Vec<_>>(),
    );
    for (i, side) in sides.iter().enumerate() {
        let Side::Same(variant) = side else { continue };
        let ratio = median(
            &runs
                .iter()
                .map(|r| r[i].rate() / r[0].rate())
                .collect::<Vec<_>>(),
        );
        let broker = median(
            &runs
                .iter()
                .map(|r| r[i].broker_cpu_us())
                .collect::<Vec<_>>(),
        );
        table.row(vec![
            variant.name().into(),
            f0(mean(&|e| variant.apply(e).body.len())),
            f0(mean(&|e| headers_size(&variant.apply(e).properties))),
            f0(median(
                &runs.iter().map(|r| r[i].rate()).collect::<Vec<_>>(),
            )),
            format!("{}x", f2(ratio)),
            f1(broker),
            f1(broker - exact_broker),
            f1(median(
                &runs.iter().map(|r| r[i].cpu_us()).collect::<Vec<_>>(),
            )),
        ]);
    }
    println!("Medians by variant (÷ exact: median of the per-round ratios):");
    println!();
    table.print();

    let mut sizes = Table::new(&["mean size", "bytes"]);
    sizes.row(vec!["raw body".into(), f0(mix.mean_body_bytes())]);
    sizes.row(vec![
        "canonical event body".into(),
        f0(mean(&|e| e.body.len())),
    ]);
    sizes.row(vec![
        "event AMQP properties, encoded (with headers)".into(),
        f0(mean(&|e| properties_size(&e.properties))),
    ]);
    sizes.row(vec![
        "event headers table, encoded".into(),
        f0(mean(&|e| headers_size(&e.properties))),
    ]);
    sizes.row(vec![
        "events per raw message".into(),
        f2(events.len() as f64 / mix.len() as f64),
    ]);
    sizes.print();

    let mut headers = Table::new(&["event header", "mean bytes encoded"]);
    for (name, bytes) in header_entries(&recording) {
        headers.row(vec![format!("`{name}`"), f1(bytes)]);
    }
    headers.print();

    let (parts, total) = body_breakdown(&recording);
    let mut body = Table::new(&["event body attribute", "mean bytes", "share"]);
    let mut parts = parts;
    parts.sort_by(|a, b| b.1.total_cmp(&a.1));
    for (name, bytes) in &parts {
        body.row(vec![
            format!("`{name}`"),
            f0(*bytes),
            format!("{:.1}%", bytes * 100.0 / total),
        ]);
    }
    let payload: f64 = parts
        .iter()
        .filter(|(n, _)| n == "data.payload")
        .map(|(_, b)| b)
        .sum();
    body.row(vec!["**total**".into(), f0(total), "100%".into()]);
    body.print();
    println!(
        "`data.payload` {:.0} bytes ({:.1}%) vs everything else {:.0} bytes ({:.1}%)",
        payload,
        payload * 100.0 / total,
        total - payload,
        (total - payload) * 100.0 / total
    );
}
