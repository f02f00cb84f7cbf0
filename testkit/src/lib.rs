//! The one test kit of webhook-normalizer, used by `tests/broker`, `tests/chaos` and the
//! end-to-end benchmarks: dev-only, never published.
//!
//! - [`TestVhost`]: a vhost of a test's own on the shared broker (`127.0.0.1:5672`), or
//!   on a private node ([`TestVhost::on`]), deleted when dropped, so tests run in
//!   parallel and leave nothing behind.
//! - [`PrivateNode`]: a RabbitMQ node of a test's own, for anything broker-wide.
//! - [`WorkerProcess`]: the `webhook-normalizer` binary ([`worker_binary`]) as a child
//!   process, with the tests' settings or any ([`WorkerProcess::builder`]); its health
//!   and readiness over [`http_get`].
//! - Raw webhooks ([`RawWebhook`], [`fixture_webhooks`], [`webhook_mix`]) and what must
//!   come of them ([`expected`], [`assert_nothing_lost`]); publishing
//!   ([`publish_raw`], [`publish_confirmed`]) and reading ([`read_messages`],
//!   [`read_until_quiet`]).
//! - [`raw_amqp`]: a publisher writing AMQP frames byte by byte, for properties no
//!   client library sends (short strings not UTF-8, headers nested thousands deep,
//!   repeated keys), and a reader taking messages as the broker sent them
//!   ([`raw_amqp::take_all`], [`raw_amqp::PropertyParts`]), to compare them byte for byte.
//! - [`assert_no_personal_data`] in the worker's logs.
//! - [`SharedBrokerWatch`]: fails a test that blocked the shared broker's publishers or
//!   left its broker-wide state ([`BrokerWideState`]) other than it found it.
//!
//! # Private nodes
//!
//! A test that changes broker-wide state (alarms, restarts, clusters, listeners, users,
//! policies, limits) runs on a [`PrivateNode`], never on the shared broker that
//! developers and other tests use. Starting one takes about 6 s, so few tests should.
//!
//! ```no_run
//! use testkit::{PrivateNode, TestVhost, WorkerProcess, free_port};
//!
//! let mut node = PrivateNode::start_with("max_message_size = 65536", &[]);
//! node.rabbitmqctl(&["set_vm_memory_high_watermark", "0.0001"]);
//! let worker = WorkerProcess::start_with_url(&node.amqp_url(), &[]);
//! node.restart(); // same name, ports and data
//! // A listener of a test's own needs a port: `listeners.ssl.1 = 127.0.0.1:{free_port()}`.
//! # let _ = (worker, free_port());
//! ```
//!
//! - [`PrivateNode::start`], [`PrivateNode::start_with`]`(conf lines, plugins)`: its own
//!   node name (`wn-{pid}-{n}-{random}@localhost`), AMQP and distribution ports (from
//!   [`free_port`], retried on other ports if taken meanwhile), and a directory under
//!   the temporary directory handed to the `rabbitmq` user (so the tests run as root,
//!   as CI does). A node that does not start fails the test with the end of its log.
//! - [`PrivateNode::amqp_url`] (guest on `/`), [`PrivateNode::url`],
//!   [`PrivateNode::name`] (for `rabbitmqctl -n` or a cluster peer),
//!   [`PrivateNode::port`], [`PrivateNode::dir`].
//! - [`PrivateNode::rabbitmqctl`] (asserts success), [`PrivateNode::try_rabbitmqctl`],
//!   [`PrivateNode::eval`], [`PrivateNode::add_user`].
//! - [`PrivateNode::stop`] and [`PrivateNode::restart`]: data, name and ports kept.
//! - Cleanup, however the test ends: each node has a reaper, a small shell process in a
//!   process group of its own, that waits for the end of a pipe from the test process.
//!   Dropping the node (also while a test panics) closes the pipe and waits for the
//!   reaper; a test process that dies (Ctrl-C, SIGKILL, an abort) closes it too. The
//!   reaper then stops the node (`rabbitmqctl stop`), kills it by its pid file if that
//!   fails, and removes its directory.

mod broker;
mod broker_wide;
mod chaos;
mod http;
mod otlp;
mod personal_data;
mod pki;
mod private_node;
mod publish;
pub mod raw_amqp;
mod read;
mod webhooks;
mod worker;

use std::time::{Duration, Instant};

pub use broker::{
    BROKER, SHARED_PORT_VAR, TestVhost, connect, delete_stale_vhosts, rabbitmqctl,
    shared_broker_url,
};
pub use broker_wide::{BrokerWideState, SharedBrokerWatch};
pub use chaos::{Accounting, FaultyProxy, account, quorum_capture_queue};
pub use http::{http_get, http_post};
pub use otlp::{OtlpReceiver, ReceivedSpan};
pub use personal_data::{assert_no_personal_data, personal_data_in_fixtures};
pub use pki::{CLIENT_NAME, TestPki};
pub use private_node::{PrivateNode, free_port};
pub use publish::{publish_confirmed, publish_raw, publish_raw_with};
pub use read::{
    assert_nothing_lost, capture_queue, header, message_id, queue_depth, read_messages,
    read_stream, read_until_quiet, setup, take_from,
};
pub use webhooks::{
    Expectations, RECEIVED_AT, RawWebhook, expectations, expected, fixture, fixture_json,
    fixture_webhooks, fixtures_dir, raw_properties, received_at, webhook_mix,
};
pub use worker::{
    WorkerBuilder, WorkerProcess, assert_alive, declare_topology, run_command, run_command_with,
    wait_for_progress, worker_binary,
};

/// Waits for a spawned child to end and collects its output, failing the test (not
/// hanging it) after `within`, when the child is killed.
pub fn output_within(child: std::process::Child, within: Duration) -> std::process::Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output().expect("child output")));
    rx.recv_timeout(within).unwrap_or_else(|_| {
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
        panic!("command did not finish within {within:?}");
    })
}

/// Polls `check` every 50 ms until it holds; fails the test after `within`.
pub fn wait_until(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The first `n` characters of a text, for failure messages.
pub fn clip(text: &str, n: usize) -> String {
    text.chars().take(n).collect()
}
