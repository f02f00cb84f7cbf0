//! Least privilege, on a private node (users are broker-wide): the worker and the `dlq`
//! / `unrouted` commands work as users holding exactly what `webhook-normalizer
//! permissions` prints, and a missing permission says which and what to do.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

/// `webhook-normalizer permissions` for `url` (and `env`): its three lines.
fn printed_permissions(url: &str, env: &[(&str, &str)], user: &str) -> Vec<String> {
    let out = Command::new(worker_binary())
        .args(["permissions", "--user", user, "--operator", "ops"])
        .env("NORMALIZER__AMQP__URL", url)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("rabbitmqctl "))
        .map(str::to_owned)
        .collect()
}

/// Runs a printed `rabbitmqctl` line against `node`, as a shell would.
fn grant(node: &PrivateNode, line: &str) {
    let line = line.replacen(
        "rabbitmqctl ",
        &format!("rabbitmqctl -q -n {} ", node.name()),
        1,
    );
    let status = Command::new("sh").args(["-c", &line]).status().unwrap();
    assert!(status.success(), "{line}");
}

fn add_user(node: &PrivateNode, user: &str) {
    node.rabbitmqctl(&["add_user", user, "pw"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_worker_and_the_commands_run_with_exactly_the_printed_permissions() {
    let node = PrivateNode::start();
    add_user(&node, "normalizer");
    add_user(&node, "ops");

    // Declaring the topology itself.
    let vhost = TestVhost::on(&node, "least");
    let url = node.url("normalizer", "pw", &vhost.name);
    let lines = printed_permissions(&url, &[], "normalizer");
    grant(&node, &lines[0]);
    grant(&node, &lines[1]);
    let worker = WorkerProcess::start_with_url(&url, &[]);
    worker.wait_ready(Duration::from_secs(20));
    let (_conn, channel) = setup(&vhost).await;
    let webhooks = webhook_mix(40, "least");
    publish_raw(&channel, &webhooks).await;
    assert_nothing_lost(&channel, &webhooks).await;
    // `tail`, as the operator: its own queue, bound to each exchange it watches.
    // It says "watching" once its queue is declared, bound and consumed; a refusal ends it.
    for source in [&[][..], &["--dead-letters"][..], &["--unrouted"][..]] {
        let mut tail = Command::new(worker_binary())
            .arg("tail")
            .args(source)
            .env("NORMALIZER__AMQP__URL", node.url("ops", "pw", &vhost.name))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(tail.stderr.take().unwrap()).lines();
        let mut before = Vec::new();
        let watching = loop {
            match lines.next() {
                Some(Ok(line)) if line.starts_with("watching") => break true,
                Some(Ok(line)) => before.push(line),
                _ => break false,
            }
        };
        let _ = tail.kill();
        let _ = tail.wait();
        assert!(watching, "tail {source:?} as ops: {before:?}");
    }
    drop(worker);
    // The operator's commands, as the operator.
    for command in [&["dlq", "stats"][..], &["unrouted", "stats"][..]] {
        let out = Command::new(worker_binary())
            .args(command)
            .env("NORMALIZER__AMQP__URL", node.url("ops", "pw", &vhost.name))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{command:?} as ops: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // A topology declared beforehand: no configure permission at all.
    let vhost = TestVhost::on(&node, "predeclared");
    declare_topology(&vhost);
    let url = node.url("normalizer", "pw", &vhost.name);
    let pre = [("NORMALIZER__AMQP__DECLARE_TOPOLOGY", "false")];
    let lines = printed_permissions(&url, &pre, "normalizer");
    assert!(
        lines[0].contains(" '^$' "),
        "no configure permission: {}",
        lines[0]
    );
    grant(&node, &lines[0]);
    let worker = WorkerProcess::start_with_url(&url, &pre);
    worker.wait_ready(Duration::from_secs(20));
    let (_conn, channel) = setup(&vhost).await;
    publish_raw(&channel, &webhooks).await;
    assert_nothing_lost(&channel, &webhooks).await;
}

/// Without write permission on the dead-letter exchange (needed to declare the raw queue
/// that dead-letters to it), the worker is not ready and says which permission and what
/// to run; with a pre-declared topology missing an exchange, it says which is missing.
#[tokio::test(flavor = "multi_thread")]
async fn a_missing_permission_or_exchange_is_named_with_what_to_do() {
    let node = PrivateNode::start();
    add_user(&node, "normalizer");
    let vhost = TestVhost::on(&node, "missing");
    let url = node.url("normalizer", "pw", &vhost.name);
    let lines = printed_permissions(&url, &[], "normalizer");
    grant(
        &node,
        &lines[0].replace(
            r"|webhooks\.dead-letter|normalizer\.raw|",
            "|normalizer.raw|",
        ),
    );
    let worker = WorkerProcess::start_with_url(&url, &[]);
    wait_until(Duration::from_secs(20), "/readyz to say why", || {
        let (status, doc) = worker.readiness();
        status == 503
            && doc["reason"].as_str().is_some_and(|r| {
                r.contains("ACCESS_REFUSED")
                    && r.contains("exchange 'webhooks.dead-letter'")
                    && r.contains("webhook-normalizer permissions")
            })
    });
    drop(worker);

    let vhost = TestVhost::on(&node, "nothing-declared");
    let url = node.url("normalizer", "pw", &vhost.name);
    let pre = [("NORMALIZER__AMQP__DECLARE_TOPOLOGY", "false")];
    grant(&node, &printed_permissions(&url, &pre, "normalizer")[0]);
    let worker = WorkerProcess::start_with_url(&url, &pre);
    wait_until(Duration::from_secs(20), "/readyz to say why", || {
        let (status, doc) = worker.readiness();
        status == 503
            && doc["reason"].as_str().is_some_and(|r| {
                r.contains("NOT_FOUND") && r.contains("webhook-normalizer topology")
            })
    });
}
