//! Normalization cost per message against plain serde_json parsing of the same bodies,
//! in one run. Every iteration processes the whole fixture set that maps to events (the
//! documentation samples and tolerance cases of all three vendors); the figure per
//! message is the iteration time divided by the set's size (printed at the start).
//!
//! `cargo bench --bench normalize`

#![allow(clippy::expect_used)]

// The allocator the binary uses (see src/bin/webhook-normalizer/main.rs), so the figures are the worker's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
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
criterion_main!(benches);
