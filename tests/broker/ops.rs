//! What operators touch: the topology command, health endpoints, configuration errors.

use std::process::Command;
use std::time::Duration;

use crate::support::*;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_webhook-normalizer"))
}

/// Runs the command to its end, failing the test (not hanging it) after 30 s.
fn finish(mut command: Command) -> std::process::Output {
    let child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    output_within(child, Duration::from_secs(30))
}

/// `topology` declares every exchange, queue and binding with the documented arguments,
/// and is idempotent.
#[test]
fn topology_command_declares_everything_and_can_repeat() {
    let vhost = TestVhost::new("topology");
    for _ in 0..2 {
        let mut command = bin();
        command
            .arg("topology")
            .env("NORMALIZER__AMQP__URL", vhost.url());
        let out = finish(command);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let queues = vhost.queue_arguments();
    let raw = &queues["normalizer.raw"];
    for arg in [
        r#"{"x-queue-type","quorum"}"#,
        r#"{"x-delivery-limit",5}"#,
        r#"{"x-dead-letter-exchange","webhooks.dead-letter"}"#,
        r#"{"x-dead-letter-routing-key","unknown.delivery_limit"}"#,
        r#"{"x-dead-letter-strategy","at-least-once"}"#,
        r#"{"x-overflow","reject-publish"}"#,
    ] {
        assert!(raw.contains(arg), "normalizer.raw lacks {arg}: {raw}");
    }
    assert!(queues["normalizer.dead-letter"].contains("quorum"));
    assert!(queues["events.unrouted"].contains("quorum"));
}

/// `topology` against a broker it cannot reach exits 69 (EX_UNAVAILABLE), without the
/// password in its output.
#[test]
fn topology_command_reports_an_unreachable_broker() {
    let mut command = bin();
    command.arg("topology").env(
        "NORMALIZER__AMQP__URL",
        "amqp://guest:s3cret@127.0.0.1:1/%2f",
    );
    let out = finish(command);
    assert_eq!(out.status.code(), Some(69));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot declare the topology"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
}

/// Liveness is up while the process runs; readiness only while consuming.
#[test]
fn readiness_follows_the_broker_connection() {
    // Nothing listens on port 1: the worker keeps retrying, alive but not ready.
    let worker = WorkerProcess::start_with_url("amqp://guest:guest@127.0.0.1:1/%2f", &[]);
    assert_eq!(worker.get("/healthz").0, 200);
    let (status, doc) = worker.readiness();
    assert_eq!(status, 503);
    assert_eq!(doc["ready"], false);
    // The first failed attempt is logged within a moment (not within a fixed 500 ms: a
    // loaded machine took longer once).
    wait_until(Duration::from_secs(10), "the failed attempt logged", || {
        worker
            .logs()
            .iter()
            .any(|l| l.contains("cannot open a broker session"))
    });
    let logs = worker.logs().join("\n");
    assert!(!logs.contains("guest:guest"), "password in logs: {logs}");

    let vhost = TestVhost::new("ready");
    let worker = WorkerProcess::start(&vhost, &[]);
    worker.wait_ready(Duration::from_secs(20));
    assert_eq!(worker.readiness().1["ready"], true);
}

/// An invalid setting stops the start with exit 78 and a message naming the key; a bad
/// URL never shows its password.
#[test]
fn invalid_configuration_names_the_key() {
    let mut command = bin();
    command.arg("run").env("NORMALIZER__INPUT__PREFETCH", "0");
    let out = finish(command);
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("input.prefetch"), "{err}");

    for url in [
        "guest:hunter2@rabbit:5672",
        "amqp://guest:hunter2@rabbit:5672/",
        "amqp://guest:hunter2@rabbit/%2f,amqp//guest:hunter2@rabbit-2",
    ] {
        let mut command = bin();
        command.arg("run").env("NORMALIZER__AMQP__URL", url);
        let out = finish(command);
        assert_eq!(out.status.code(), Some(78));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("amqp.url") && !err.contains("hunter2"),
            "{err}"
        );
    }

    let mut command = bin();
    command.args(["run", "--config", "/nonexistent.toml"]);
    let out = finish(command);
    assert_eq!(out.status.code(), Some(78));
}

/// The broker refuses the worker (its permissions on the vhost are gone): `/readyz` is
/// 503 and says why, with a hint; the refusal is logged once, clearly, however often it
/// is retried; once access is back the worker is ready again, on its own.
#[test]
fn readiness_says_why_the_broker_refuses_and_recovers() {
    let vhost = TestVhost::new("refused");
    let worker = WorkerProcess::start(
        &vhost,
        &[
            ("NORMALIZER__AMQP__RECONNECT_INITIAL_MS", "50"),
            ("NORMALIZER__AMQP__RECONNECT_MAX_MS", "200"),
        ],
    );
    worker.wait_ready(Duration::from_secs(20));
    vhost.revoke_guest();
    vhost.close_all_connections();
    wait_until(Duration::from_secs(20), "/readyz to say why", || {
        let (status, doc) = worker.readiness();
        status == 503
            && doc["reason"]
                .as_str()
                .is_some_and(|r| r.contains("access") && r.contains("set_permissions"))
    });
    // Retried every 100-200 ms meanwhile: logged once, not once per attempt.
    std::thread::sleep(Duration::from_secs(2));
    let logs = worker.logs();
    let refusals = logs
        .iter()
        .filter(|l| l.contains("\"level\":\"ERROR\"") && l.contains("set_permissions"))
        .count();
    assert_eq!(
        refusals,
        1,
        "logged once: {:#?}",
        &logs[logs.len().saturating_sub(20)..]
    );

    vhost.grant_guest();
    worker.wait_ready(Duration::from_secs(20));
    assert_eq!(worker.readiness().1["reason"], serde_json::Value::Null);
}

/// The fields of the worker's JSON log lines with this message.
fn log_lines(worker: &WorkerProcess, message: &str) -> Vec<serde_json::Value> {
    worker
        .logs()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["message"].as_str() == Some(message))
        .collect()
}

/// While messages flow, an `info` summary every `log.summary_secs`; together they count
/// every message; at stop, one line with the totals.
#[tokio::test(flavor = "multi_thread")]
async fn summaries_count_what_flowed_and_the_stop_line_the_totals() {
    let vhost = TestVhost::new("summary");
    let mut worker = WorkerProcess::start(&vhost, &[("NORMALIZER__LOG__SUMMARY_SECS", "1")]);
    worker.wait_ready(Duration::from_secs(20));
    let (_conn, channel) = setup(&vhost).await;
    let webhooks = webhook_mix(60, "summary");
    publish_raw(&channel, &webhooks).await;
    assert_nothing_lost(&channel, &webhooks).await;
    let n = webhooks.len() as u64;
    let sum = |worker: &WorkerProcess, field: &str| -> u64 {
        log_lines(worker, "in the last 1s")
            .iter()
            .map(|f| f[field].as_u64().unwrap_or(0))
            .sum()
    };
    wait_until(
        Duration::from_secs(10),
        "summaries to count every message",
        || sum(&worker, "consumed") == n,
    );
    let expected_events: u64 = webhooks
        .iter()
        .filter_map(|w| expected(w).ok())
        .map(|e| e.len() as u64)
        .sum();
    assert_eq!(sum(&worker, "events_published"), expected_events);
    assert_eq!(
        sum(&worker, "dead_lettered"),
        webhooks.iter().filter(|w| expected(w).is_err()).count() as u64
    );

    worker.signal("TERM");
    assert_eq!(worker.wait_exit(Duration::from_secs(20)), Some(0));
    let stopped = log_lines(&worker, "stopped");
    assert_eq!(stopped.len(), 1, "one stop line");
    assert_eq!(stopped[0]["consumed"], n);
    assert_eq!(stopped[0]["events_published"], expected_events);
    assert_no_personal_data(&worker.logs());
}

/// Idle connections to `http.listen` cannot take the descriptors the worker needs for
/// the broker: limited to 256 descriptors, with 400 connections held open on its health
/// port, the worker still reconnects after its broker connections are closed, answers
/// `/readyz`, and normalizes every webhook.
#[tokio::test(flavor = "multi_thread")]
async fn idle_health_connections_do_not_starve_the_worker() {
    let vhost = TestVhost::new("health-fds");
    declare_topology(&vhost);
    let worker = WorkerProcess::for_tests(&vhost.url(), &[])
        .open_files_limit(256)
        .start();
    worker.wait_ready(Duration::from_secs(20));
    let mut idle = Vec::new();
    for _ in 0..400 {
        if let Ok(s) = std::net::TcpStream::connect_timeout(&worker.health, Duration::from_secs(2))
        {
            idle.push(s);
        }
    }
    vhost.close_all_connections();
    worker.wait_ready(Duration::from_secs(30));
    let (_conn, channel) = setup(&vhost).await;
    let webhooks: Vec<RawWebhook> = webhook_mix(20, &vhost.name)
        .into_iter()
        .filter(|w| expected(w).is_ok())
        .collect();
    let want: usize = webhooks.iter().map(|w| expected(w).unwrap().len()).sum();
    publish_raw(&channel, &webhooks).await;
    let mut got = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while got < want && std::time::Instant::now() < deadline {
        got += read_until_quiet(&channel, "test.events", Duration::from_millis(500))
            .await
            .len();
    }
    assert_eq!(
        got,
        want,
        "every event, with {} idle connections held",
        idle.len()
    );
    assert!(
        !worker.log_tail(200).contains("Too many open files"),
        "{}",
        worker.log_tail(50)
    );
}
