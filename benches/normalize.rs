//! Normalization cost per message against plain serde_json parsing of the same bodies,
//! in one run. Every iteration processes the whole fixture set that maps to events (the
//! documentation samples and tolerance cases of all three vendors); the figure per
//! message is the iteration time divided by the set's size (printed at the start).
//!
//! `cargo bench --bench normalize`
//!
//! `cargo bench --bench normalize -- --instructions [--iterations N]` counts
//! instructions instead of timing, with no broker: this executable re-runs itself under
//! valgrind's callgrind once per loop (a plain `serde_json::Value` parse, the strict
//! reader `body::parse`, and `normalize_json`, the worker's path), each over the same
//! fixture set for 0 and for N iterations (default 100), and prints a table of
//! Ir per message = (Ir(N) − Ir(0)) ÷ (N × set size), with each loop's ratio to the
//! plain parse. Counts repeat from run to run, so two builds compare within a fraction
//! of a percent where criterion's times on a shared machine do not. The callgrind files
//! are kept (their paths are printed) for `callgrind_annotate --inclusive=yes`.

#![allow(clippy::expect_used)]

// The allocator the binary uses (see src/bin/webhook-normalizer/main.rs), so the figures are the worker's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "common/callgrind.rs"]
mod callgrind;

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;

use callgrind::total_ir;
use criterion::{Criterion, Throughput, criterion_group};
use testkit::{fixtures_dir, received_at};
use webhook_normalizer::normalize::normalize_json;
use webhook_normalizer::{Limits, Unmapped, normalize};

fn bodies() -> Vec<(Vec<u8>, Option<&'static str>)> {
    let root = fixtures_dir();
    let at = received_at();
    let mut out = Vec::new();
    for vendor in ["entuitive", "authenticate", "deel"] {
        let mut paths: Vec<_> = std::fs::read_dir(root.join(vendor))
            .expect("fixtures")
            .map(|e| e.expect("entry").path())
            .collect();
        paths.sort();
        for p in paths {
            let body = std::fs::read(&p).expect("fixture");
            // Real traffic arrives without a hint as often as with one: bench the
            // detection path too.
            if normalize(
                &body,
                None,
                at,
                &Limits::default(),
                &Unmapped::default(),
                webhook_normalizer::SchemaBase::default(),
            )
            .is_ok()
            {
                out.push((body, None));
            }
        }
    }
    out
}

fn bench(c: &mut Criterion) {
    let bodies = bodies();
    let bytes: usize = bodies.iter().map(|(b, _)| b.len()).sum();
    eprintln!(
        "fixture set: {} messages, {} bytes, mean {} bytes",
        bodies.len(),
        bytes,
        bytes / bodies.len()
    );
    let limits = Limits::default();
    let at = received_at();

    let mut group = c.benchmark_group("per_fixture_set");
    group.throughput(Throughput::Elements(bodies.len() as u64));
    group.bench_function("serde_json_parse_only", |b| {
        b.iter(|| {
            for (body, _) in &bodies {
                let v: serde_json::Value =
                    serde_json::from_slice(black_box(body)).expect("valid json");
                black_box(v);
            }
        })
    });
    group.bench_function("normalize", |b| {
        b.iter(|| {
            for (body, hint) in &bodies {
                black_box(
                    normalize(
                        black_box(body),
                        *hint,
                        at,
                        &limits,
                        &Unmapped::default(),
                        webhook_normalizer::SchemaBase::default(),
                    )
                    .expect("maps"),
                );
            }
        })
    });
    group.bench_function("normalize_and_serialize", |b| {
        let mut out = Vec::with_capacity(64 * 1024);
        b.iter(|| {
            for (body, hint) in &bodies {
                for event in normalize(
                    black_box(body),
                    *hint,
                    at,
                    &limits,
                    &Unmapped::default(),
                    webhook_normalizer::SchemaBase::default(),
                )
                .expect("maps")
                {
                    out.clear();
                    serde_json::to_writer(&mut out, &event).expect("serializes");
                    black_box(&out);
                }
            }
        })
    });
    // The worker's path: each event serialized once, as it is built.
    group.bench_function("normalize_json", |b| {
        b.iter(|| {
            for (body, hint) in &bodies {
                black_box(
                    normalize_json(
                        black_box(body),
                        *hint,
                        at,
                        &limits,
                        &Unmapped::default(),
                        webhook_normalizer::SchemaBase::default(),
                    )
                    .expect("maps"),
                );
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .map(|i| args.get(i + 1).map(String::as_str))
    };
    let iterations = flag("--iterations").map(|v| {
        v.and_then(|v| v.parse::<usize>().ok())
            .expect("--iterations needs a number")
    });
    if let Some(only) = flag("--only") {
        let only = only
            .and_then(Loop::named)
            .expect("--only parse|strict|normalize");
        run_loop(only, iterations.unwrap_or(1));
    } else if args.iter().any(|a| a == "--instructions") {
        instructions(iterations.unwrap_or(100));
    } else {
        benches();
        criterion::Criterion::default()
            .configure_from_args()
            .final_summary();
    }
}

/// What one callgrind run executes over the fixture set.
#[derive(Clone, Copy)]
enum Loop {
    /// `serde_json::from_slice::<serde_json::Value>`: the baseline.
    Parse,
    /// `body::parse`, the strict reader `normalize_json` starts with.
    Strict,
    /// `normalize_json`, the worker's path.
    Normalize,
}

impl Loop {
    const ALL: [Loop; 3] = [Loop::Parse, Loop::Strict, Loop::Normalize];

    fn name(self) -> &'static str {
        match self {
            Loop::Parse => "parse",
            Loop::Strict => "strict",
            Loop::Normalize => "normalize",
        }
    }

    fn named(name: &str) -> Option<Loop> {
        Loop::ALL.into_iter().find(|l| l.name() == name)
    }

    fn label(self) -> &'static str {
        match self {
            Loop::Parse => "`serde_json::Value` parse",
            Loop::Strict => "`body::parse` (strict reader)",
            Loop::Normalize => "`normalize_json`",
        }
    }
}

/// The child: loads the fixture set (the fixed cost), then runs `which` over it
/// `iterations` times.
fn run_loop(which: Loop, iterations: usize) {
    let bodies = bodies();
    let limits = Limits::default();
    let at = received_at();
    for _ in 0..iterations {
        for (body, hint) in &bodies {
            match which {
                Loop::Parse => {
                    let v: serde_json::Value =
                        serde_json::from_slice(black_box(body)).expect("valid json");
                    black_box(v);
                }
                Loop::Strict => {
                    black_box(webhook_normalizer::body::parse(black_box(body)).expect("valid"));
                }
                Loop::Normalize => {
                    black_box(
                        normalize_json(
                            black_box(body),
                            *hint,
                            at,
                            &limits,
                            &Unmapped::default(),
                            webhook_normalizer::SchemaBase::default(),
                        )
                        .expect("maps"),
                    );
                }
            }
        }
    }
}

/// The harness: every loop under callgrind for 0 and `n` iterations, and the table.
fn instructions(n: usize) {
    let messages = bodies().len();
    let exe = std::env::current_exe().expect("own path");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("instructions");
    std::fs::create_dir_all(&dir).expect("output folder");
    let count = |which: Loop, iterations: usize| -> (u64, PathBuf) {
        let out = dir.join(format!("mapping-{}-n{iterations}.callgrind", which.name()));
        let status = Command::new("valgrind")
            .arg("--tool=callgrind")
            .arg(format!("--callgrind-out-file={}", out.display()))
            .arg(format!(
                "--log-file={}",
                out.with_extension("log").display()
            ))
            .arg(&exe)
            .args(["--only", which.name(), "--iterations"])
            .arg(iterations.to_string())
            .status()
            .expect("valgrind on the PATH (apt-get install valgrind)");
        assert!(
            status.success(),
            "{} under callgrind: {status}",
            which.name()
        );
        (total_ir(&out), out)
    };
    println!(
        "## mapping instructions: {messages} fixtures x {n} iterations = {} messages per loop, callgrind",
        messages * n
    );
    println!();
    println!("| loop | Ir, 0 iterations | Ir, {n} iterations | Ir per message | ÷ parse |");
    println!("|---|---:|---:|---:|---:|");
    let mut parse = None;
    for which in Loop::ALL {
        let (zero, _) = count(which, 0);
        let (full, file) = count(which, n);
        let per = (full as f64 - zero as f64) / (n * messages) as f64;
        let base = *parse.get_or_insert(per);
        println!(
            "| {} | {zero} | {full} | {per:.0} | {:.2}x |",
            which.label(),
            per / base
        );
        eprintln!("{}: {}", which.name(), file.display());
    }
}
