//! The reference gateway (`webhook-normalizer ingest`) against a direct AMQP publisher,
//! same run, same broker, same body.
//!
//! Each round, in a fresh vhost with the worker's topology (no worker: the raw queue
//! keeps what arrives):
//! - **ingest**: `hey -n N -c C -m POST` sends N webhooks (a Deel fixture) to
//!   `POST /webhooks/deel`, C at a time; each answer comes after the broker's confirm.
//! - **direct**: C tasks in this process publish the same body N times in all to the raw
//!   exchange, each publish persistent, `mandatory`, waiting for its confirm, as a gateway
//!   must: the least a request can cost.
//!
//! Printed: requests (publishes) per second, latency p50, p90 and p99, and the ratios.
//! Needs `hey` (Debian: `apt install hey`).
//!
//! ```sh
//! cargo bench --bench ingest
//! cargo bench --bench ingest -- --requests 20000 --concurrency 32 --rounds 3
//! ```

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use testkit::{TestVhost, declare_topology, fixture, worker_binary};

struct Args {
    requests: usize,
    concurrency: usize,
    rounds: usize,
}

fn args() -> Args {
    let mut a = Args {
        requests: 20_000,
        concurrency: 32,
        rounds: 3,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let value = || argv.get(i + 1).and_then(|v| v.parse().ok());
        match argv[i].as_str() {
            "--requests" => a.requests = value().expect("--requests N"),
            "--concurrency" => a.concurrency = value().expect("--concurrency C"),
            "--rounds" => a.rounds = value().expect("--rounds R"),
            _ => {} // cargo bench's own flags
        }
        i += 1;
    }
    // hey sends (N / C) * C requests; both sides send that many.
    a.requests = a.requests / a.concurrency * a.concurrency;
    a
}

/// Requests a second and latency percentiles (seconds) of one side.
#[derive(Debug, Clone, Copy)]
struct Figures {
    per_second: f64,
    p50: f64,
    p90: f64,
    p99: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn direct(vhost: &TestVhost, body: &[u8], a: &Args) -> Figures {
    let conn = vhost.connect().await;
    let body = Arc::new(body.to_vec());
    let per_task = a.requests / a.concurrency;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..a.concurrency {
        let channel = conn.create_channel().await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_task);
            for _ in 0..per_task {
                let sent = Instant::now();
                let confirm = channel
                    .basic_publish(
                        "webhooks.raw".into(),
                        "deel".into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..BasicPublishOptions::default()
                        },
                        &body,
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await
                    .unwrap()
                    .await
                    .unwrap();
                assert!(confirm.is_ack());
                latencies.push(sent.elapsed().as_secs_f64());
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    Figures {
        per_second: all.len() as f64 / elapsed,
        p50: percentile(&all, 0.5),
        p90: percentile(&all, 0.9),
        p99: percentile(&all, 0.99),
    }
}

fn ingest(vhost: &TestVhost, body_file: &std::path::Path, a: &Args) -> Figures {
    let mut child = Command::new(worker_binary())
        .arg("ingest")
        .env("NORMALIZER__AMQP__URL", vhost.url())
        .env("NORMALIZER__INGEST__LISTEN", "127.0.0.1:0")
        .env("NORMALIZER__LOG__FORMAT", "json")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the worker binary runs");
    let stderr = child.stderr.take().unwrap();
    let mut addr = String::new();
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        let log: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if let Some(a) = log["address"].as_str() {
            addr = a.to_owned();
            break;
        }
    }
    let out = Command::new("hey")
        .args([
            "-n",
            &a.requests.to_string(),
            "-c",
            &a.concurrency.to_string(),
        ])
        .args(["-m", "POST", "-D"])
        .arg(body_file)
        .arg(format!("http://{addr}/webhooks/deel"))
        .output()
        .expect("hey runs (apt install hey)");
    let _ = child.kill();
    let _ = child.wait();
    let text = String::from_utf8_lossy(&out.stdout);
    let number_after = |label: &str| -> f64 {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {label} in hey's output:\n{text}"))
    };
    assert!(
        text.contains(&format!("[200]\t{} responses", a.requests)),
        "every request answered 200:\n{text}"
    );
    Figures {
        per_second: number_after("Requests/sec:"),
        p50: number_after("50% in"),
        p90: number_after("90% in"),
        p99: number_after("99% in"),
    }
}

fn main() {
    let a = args();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let body = fixture("deel/contract.created.json");
    let body_file =
        std::env::temp_dir().join(format!("wn-ingest-bench-{}.json", std::process::id()));
    std::fs::write(&body_file, &body).unwrap();
    println!(
        "{} requests, {} at a time, {} rounds; body {} bytes",
        a.requests,
        a.concurrency,
        a.rounds,
        body.len()
    );
    println!("round  side    req/s     p50 ms  p90 ms  p99 ms");
    let mut ratios = Vec::new();
    for round in 1..=a.rounds {
        let vhost = TestVhost::new("ingest-bench");
        declare_topology(&vhost);
        let d = runtime.block_on(direct(&vhost, &body, &a));
        let i = ingest(&vhost, &body_file, &a);
        for (side, f) in [("direct", d), ("ingest", i)] {
            println!(
                "{round:>5}  {side:<6} {:>8.0}  {:>7.2} {:>7.2} {:>7.2}",
                f.per_second,
                f.p50 * 1000.0,
                f.p90 * 1000.0,
                f.p99 * 1000.0
            );
        }
        ratios.push((i.per_second / d.per_second, i.p99 / d.p99));
    }
    std::fs::remove_file(&body_file).unwrap();
    let mut throughput: Vec<f64> = ratios.iter().map(|r| r.0).collect();
    let mut p99: Vec<f64> = ratios.iter().map(|r| r.1).collect();
    throughput.sort_by(f64::total_cmp);
    p99.sort_by(f64::total_cmp);
    println!(
        "median over rounds: ingest/direct requests per second {:.2}x, p99 latency {:.2}x",
        throughput[throughput.len() / 2],
        p99[p99.len() / 2]
    );
}
