//! Shared by the end-to-end benchmarks (`throughput`, `output_cost`, `latency`,
//! `growth`): the raw-message mixes, the broker fixtures (a fresh vhost per run with the
//! worker's topology), the measured runs of the worker binary and of the passthrough
//! baselines, the recording of the worker's exact output, and the report helpers. Vhosts,
//! the worker process, HTTP and publishing come from the test kit (`testkit/`).
//!
//! Every benchmark executable doubles as the passthrough: re-run as
//! `EXE --passthrough ...` it becomes the baseline client ([`passthrough`]), so the
//! baseline is measured as its own process, like the worker.

// Each benchmark uses part of this module.
#![allow(dead_code)]

pub mod broker;
pub mod callgrind;
pub mod mix;
pub mod passthrough;
pub mod procs;
pub mod recording;
pub mod report;
pub mod runs;

use std::time::Duration;

/// Prefix of the vhosts these benchmarks create: `wn-bench-{pid}-{n}-{label}`.
pub const VHOST_PREFIX: &str = "wn-bench-";
/// Captures everything published to the canonical exchange (bound `#`), in every run,
/// so the worker's and the baselines' output is stored alike and can be counted or
/// recorded.
pub const EVENTS_QUEUE: &str = "bench.events";
/// Giving up on a run that made no progress for this long.
pub const STALL: Duration = Duration::from_secs(60);
/// The worker binary the benchmarks measure: this checkout's, or the one named by
/// `WEBHOOK_NORMALIZER_BENCH_WORKER` (to compare another build, such as an older
/// commit's, against the same baselines in the same run).
pub fn worker_binary() -> std::path::PathBuf {
    std::env::var_os("WEBHOOK_NORMALIZER_BENCH_WORKER")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_webhook-normalizer").into())
}

/// The raw message id of message `seq`: `bench-{seq}`. Ids are how outputs are matched
/// to raw messages (events carry it as `correlation_id`, dead letters as `message_id`).
pub fn raw_id(seq: u64) -> String {
    format!("bench-{seq}")
}

/// The sequence number in a raw message id made by [`raw_id`].
pub fn parse_raw_id(id: &str) -> Option<u64> {
    id.strip_prefix("bench-")?.parse().ok()
}

/// `--cpus split` pins the broker to CPU 0 and this benchmark (and what it starts) to
/// the others, for as long as the returned guard lives; `--cpus shared` (the default)
/// leaves both where the OS puts them.
pub fn split_cpus(args: &Args, env: &runs::Env) -> Option<procs::SplitCpus> {
    match args.text("cpus").unwrap_or("shared") {
        "shared" => None,
        "split" => procs::SplitCpus::apply(env.broker_pid?),
        other => panic!("--cpus takes shared or split, not {other:?}"),
    }
}

/// Benchmark options common to every target: `--bench` (added by cargo) is ignored, a
/// bare word is cargo's name filter (meant for other benchmarks: the target is skipped
/// unless its name contains it), `--flag value` pairs are returned.
pub struct Args {
    pub skip: bool,
    pairs: Vec<(String, String)>,
    usage: String,
}

impl Args {
    pub fn parse(target: &str, flags: &[&str], usage: &str) -> Args {
        let mut skip = false;
        let mut pairs = Vec::new();
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            if arg == "--bench" {
                continue;
            }
            if let Some(flag) = arg.strip_prefix("--") {
                assert!(
                    flags.contains(&flag),
                    "unknown argument {arg:?}; usage: {usage}"
                );
                let value = args
                    .next()
                    .unwrap_or_else(|| panic!("{arg} needs a value; usage: {usage}"));
                pairs.push((flag.to_owned(), value));
            } else {
                skip = !target.contains(arg.as_str());
            }
        }
        Args {
            skip,
            pairs,
            usage: usage.to_owned(),
        }
    }

    pub fn text(&self, flag: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(f, _)| f == flag)
            .map(|(_, v)| v.as_str())
    }

    /// A positive number, or `default`.
    pub fn number(&self, flag: &str, default: u64) -> u64 {
        self.text(flag).map_or(default, |v| {
            v.parse().ok().filter(|n| *n > 0).unwrap_or_else(|| {
                panic!("--{flag} needs a positive number; usage: {}", self.usage)
            })
        })
    }

    /// A positive decimal number (such as `0.8`), if given.
    pub fn fraction(&self, flag: &str) -> Option<f64> {
        self.text(flag).map(|v| {
            v.parse()
                .ok()
                .filter(|f: &f64| f.is_finite() && *f > 0.0)
                .unwrap_or_else(|| {
                    panic!(
                        "--{flag} needs a positive number such as 0.8; usage: {}",
                        self.usage
                    )
                })
        })
    }

    /// A comma-separated list of positive numbers, or `default`.
    pub fn numbers(&self, flag: &str, default: &[u64]) -> Vec<u64> {
        self.text(flag).map_or(default.to_vec(), |v| {
            v.split(',')
                .map(|n| {
                    n.trim().parse().ok().filter(|n| *n > 0).unwrap_or_else(|| {
                        panic!("--{flag} needs numbers like 1,2,3; usage: {}", self.usage)
                    })
                })
                .collect()
        })
    }

    /// A comma-separated list of words, or `default`.
    pub fn words(&self, flag: &str, default: &[&str]) -> Vec<String> {
        self.text(flag).map_or_else(
            || default.iter().map(|s| (*s).to_owned()).collect(),
            |v| v.split(',').map(|s| s.trim().to_owned()).collect(),
        )
    }
}
