//! Least privilege, on a private node (users are broker-wide): the worker, the `dlq`
//! / `unrouted` commands, a gateway and a consuming team work as users holding exactly
//! what `webhook-normalizer permissions` prints, and a missing permission says which and
//! what to do.

use std::future::Future;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};

use crate::support::*;

/// `webhook-normalizer permissions` for `url` (and `env`): its lines (the worker's, the
/// operator's, both, the gateway's `gateway`, the consuming team's `team`).
fn printed_permissions(url: &str, env: &[(&str, &str)], user: &str) -> Vec<String> {
    let out = Command::new(worker_binary())
        .args(["permissions", "--user", user, "--operator", "ops"])
        .args(["--gateway", "gateway", "--consumer", "team"])
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
    drop(worker);

    // With the history on: the worker declares and feeds the stream, and the operator
    // reads it, each with what is printed.
    let vhost = TestVhost::on(&node, "history");
    let url = node.url("normalizer", "pw", &vhost.name);
    let history = [("NORMALIZER__HISTORY__ENABLED", "true")];
    let lines = printed_permissions(&url, &history, "normalizer");
    grant(&node, &lines[0]);
    grant(&node, &lines[1]);
    let worker = WorkerProcess::start_with_url(&url, &history);
    worker.wait_ready(Duration::from_secs(20));
    let (_conn, channel) = setup(&vhost).await;
    let webhooks = webhook_mix(10, "hist");
    publish_raw(&channel, &webhooks).await;
    assert_nothing_lost(&channel, &webhooks).await;
    let events = webhooks
        .iter()
        .filter_map(|w| expected(w).ok())
        .flatten()
        .count();
    let ops = connect(&node.url("ops", "pw", &vhost.name)).await;
    let kept = read_stream(
        &ops.create_channel().await.unwrap(),
        "events.history",
        events,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(kept.len(), events);
    // The operator's history commands: a read, a copy into a team's queue, a trace.
    capture_queue(&channel, "team.all", "events.canonical", "#").await;
    for command in [
        &["history", "stats"][..],
        &["history", "replay", "--type", "#", "--to-queue", "team.all"][..],
        &["trace", "hist-1"][..],
    ] {
        let out = Command::new(worker_binary())
            .args(command)
            .env("NORMALIZER__AMQP__URL", node.url("ops", "pw", &vhost.name))
            .envs(history)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{command:?} as ops: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(queue_depth(&channel, "team.all").await as usize, events);
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

/// Runs `op` on a fresh channel of `conn` and asserts the broker refused it (403).
async fn assert_refused<F, Fut>(conn: &Connection, what: &str, op: F)
where
    F: FnOnce(Channel) -> Fut,
    Fut: Future<Output = Result<(), lapin::Error>>,
{
    let channel = conn.create_channel().await.unwrap();
    match op(channel).await {
        Ok(()) => panic!("{what}: allowed"),
        Err(e) => assert!(e.to_string().contains("ACCESS_REFUSED"), "{what}: {e}"),
    }
}

/// Publishes one message to `exchange` and waits for its confirm.
async fn publish_to(channel: Channel, exchange: &str) -> Result<(), lapin::Error> {
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    channel
        .basic_publish(
            exchange.into(),
            "deel.contract.created".into(),
            BasicPublishOptions::default(),
            b"{}",
            BasicProperties::default(),
        )
        .await?
        .await?;
    Ok(())
}

async fn declare_queue(channel: Channel, queue: &str) -> Result<(), lapin::Error> {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .map(drop)
}

async fn bind_queue(channel: Channel, queue: &str, exchange: &str) -> Result<(), lapin::Error> {
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

async fn get_from(channel: Channel, queue: &str) -> Result<(), lapin::Error> {
    channel
        .basic_get(queue.into(), BasicGetOptions::default())
        .await
        .map(drop)
}

/// A gateway's user and a consuming team's user, holding exactly the printed lines, each
/// do their job (a webhook published through `webhook-normalizer publish` reaches the
/// team's own queue through the worker) and are refused everything else they might try.
#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_and_a_consuming_team_can_do_their_job_and_nothing_more() {
    let node = PrivateNode::start();
    add_user(&node, "gateway");
    add_user(&node, "team");
    let vhost = TestVhost::on(&node, "roles");
    declare_topology(&vhost);
    let lines = printed_permissions(&vhost.url(), &[], "normalizer");
    assert_eq!(lines.len(), 5, "{lines:?}");
    assert!(lines[3].contains(" 'gateway' "), "{}", lines[3]);
    grant(&node, &lines[3]);
    assert!(lines[4].contains(" 'team' "), "{}", lines[4]);
    grant(&node, &lines[4]);

    // The team's job: its own queue (named `team.…`, the default prefix), bound to the
    // canonical exchange.
    let team = connect(&node.url("team", "pw", &vhost.name)).await;
    declare_queue(team.create_channel().await.unwrap(), "team.contracts")
        .await
        .unwrap();
    bind_queue(
        team.create_channel().await.unwrap(),
        "team.contracts",
        "events.canonical",
    )
    .await
    .unwrap();

    // The gateway's job: a webhook to the raw exchange, confirmed.
    let worker = WorkerProcess::start(&vhost, &[]);
    worker.wait_ready(Duration::from_secs(20));
    let mut publish = Command::new(worker_binary())
        .args(["publish", "--vendor", "deel", "--message-id", "gw-1"])
        .env(
            "NORMALIZER__AMQP__URL",
            node.url("gateway", "pw", &vhost.name),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = publish.stdin.take().unwrap();
    input
        .write_all(&fixture("deel/contract.created.json"))
        .unwrap();
    drop(input);
    let out = output_within(publish, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "publish as gateway: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The team consumes its event.
    let channel = team.create_channel().await.unwrap();
    let mut got = None;
    for _ in 0..100 {
        got = channel
            .basic_get("team.contracts".into(), BasicGetOptions::default())
            .await
            .unwrap();
        if got.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let event = got.expect("the team's queue gets the event");
    assert!(
        String::from_utf8_lossy(&event.data).contains("deel.contract.created"),
        "an event of the webhook"
    );
    drop(worker);

    // Nothing more, for the gateway: no other exchange, no declaring, no reading.
    let gateway = connect(&node.url("gateway", "pw", &vhost.name)).await;
    for exchange in ["events.canonical", "amq.default", "webhooks.dead-letter"] {
        assert_refused(
            &gateway,
            &format!("gateway publishing to {exchange}"),
            |c| publish_to(c, exchange),
        )
        .await;
    }
    assert_refused(&gateway, "gateway declaring a queue", |c| {
        declare_queue(c, "gateway.q")
    })
    .await;
    for queue in [
        "normalizer.raw",
        "normalizer.dead-letter",
        "events.unrouted",
    ] {
        assert_refused(&gateway, &format!("gateway reading {queue}"), |c| {
            get_from(c, queue)
        })
        .await;
    }
    // Nor for the team: no queue not its own, no exchange but the canonical one, no
    // publishing, no reading our queues.
    assert_refused(&team, "team declaring a queue not its own", |c| {
        declare_queue(c, "other.queue")
    })
    .await;
    for exchange in [
        "webhooks.raw",
        "events.tap",
        "events.unrouted",
        "webhooks.dead-letter",
    ] {
        assert_refused(&team, &format!("team binding to {exchange}"), |c| {
            bind_queue(c, "team.contracts", exchange)
        })
        .await;
    }
    for exchange in ["events.canonical", "webhooks.raw", "amq.default"] {
        assert_refused(&team, &format!("team publishing to {exchange}"), |c| {
            publish_to(c, exchange)
        })
        .await;
    }
    for queue in [
        "normalizer.raw",
        "normalizer.dead-letter",
        "events.unrouted",
    ] {
        assert_refused(&team, &format!("team reading {queue}"), |c| {
            get_from(c, queue)
        })
        .await;
    }
}
