//! The one test kit of webhook-normalizer, used by `tests/broker`, `tests/chaos` and the
//! end-to-end benchmarks: dev-only, never published.
//!
//! - [`TestVhost`]: a vhost of a test's own on the shared broker (`127.0.0.1:5672`),
//!   deleted when dropped, so tests run in parallel and leave nothing behind.
//! - [`PrivateNode`]: a RabbitMQ node of a test's own, for anything broker-wide.
//! - [`WorkerProcess`]: the `webhook-normalizer` binary as a child process; its health
//!   and readiness over [`http_get`].
//! - Raw webhooks ([`RawWebhook`], [`fixture_webhooks`], [`webhook_mix`]) and what must
//!   come of them ([`expected`], [`assert_nothing_lost`]); publishing
//!   ([`publish_raw`]) and reading ([`read_messages`], [`read_until_quiet`]).
//! - [`assert_no_personal_data`] in the worker's logs.

mod broker;
mod http;
mod personal_data;
mod private_node;
mod publish;
mod read;
mod webhooks;
mod worker;

use std::time::{Duration, Instant};

pub use broker::{BROKER, TestVhost, rabbitmqctl};
pub use http::http_get;
pub use personal_data::{assert_no_personal_data, personal_data_in_fixtures};
pub use private_node::PrivateNode;
pub use publish::{publish_raw, publish_raw_with};
pub use read::{
    assert_nothing_lost, capture_queue, header, message_id, queue_depth, read_messages,
    read_until_quiet, setup, take_from,
};
pub use webhooks::{
    Expectations, RECEIVED_AT, RawWebhook, expectations, expected, fixture, fixture_json,
    fixture_webhooks, fixtures_dir, raw_properties, webhook_mix,
};
pub use worker::{WorkerProcess, assert_alive, declare_topology, wait_for_progress, worker_binary};

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
