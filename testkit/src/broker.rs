//! The shared RabbitMQ on 5672, as tests use it: `rabbitmqctl` on it, and a throwaway
//! vhost per test (there or on a private node). Nothing here changes broker-wide state.

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use lapin::{Connection, ConnectionProperties};

use crate::PrivateNode;

/// The shared broker, without a vhost.
pub const BROKER: &str = "amqp://guest:guest@127.0.0.1:5672";

/// Runs `rabbitmqctl args…` against the shared broker and asserts it succeeded.
pub fn rabbitmqctl(args: &[&str]) -> std::process::Output {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A vhost of its own for one test, on the shared broker or on a [`PrivateNode`],
/// with `guest`'s permissions; deleted (with everything in it) when dropped.
pub struct TestVhost {
    pub name: String,
    /// `amqp://guest:guest@127.0.0.1:{port}`, without the vhost.
    broker: String,
    /// The private node's name for `rabbitmqctl -n`; `None` on the shared broker.
    node: Option<String>,
}

impl TestVhost {
    /// A vhost on the shared broker.
    pub fn new(test: &str) -> TestVhost {
        TestVhost::create(test, BROKER.to_owned(), None)
    }

    /// A vhost on a private node (which must outlive it).
    pub fn on(node: &PrivateNode, test: &str) -> TestVhost {
        let broker = format!("amqp://guest:guest@127.0.0.1:{}", node.port());
        TestVhost::create(test, broker, Some(node.name().to_owned()))
    }

    fn create(test: &str, broker: String, node: Option<String>) -> TestVhost {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "wn-test-{test}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let vhost = TestVhost { name, broker, node };
        vhost.rabbitmqctl(&["-q", "add_vhost", &vhost.name]);
        vhost.rabbitmqctl(&[
            "-q",
            "set_permissions",
            "-p",
            &vhost.name,
            "guest",
            ".*",
            ".*",
            ".*",
        ]);
        vhost
    }

    pub fn url(&self) -> String {
        format!("{}/{}", self.broker, self.name)
    }

    pub async fn connect(&self) -> Connection {
        Connection::connect(&self.url(), ConnectionProperties::default())
            .await
            .expect("test connection")
    }

    /// `rabbitmqctl` on the vhost's broker, asserted to succeed.
    fn rabbitmqctl(&self, args: &[&str]) -> std::process::Output {
        match &self.node {
            Some(node) => rabbitmqctl(&[&["-n", node.as_str()], args].concat()),
            None => rabbitmqctl(args),
        }
    }

    /// Closes every client connection in this vhost, as an operator would.
    pub fn close_all_connections(&self) {
        self.rabbitmqctl(&[
            "-q",
            "close_all_connections",
            "-p",
            &self.name,
            "closed by the test",
        ]);
    }

    /// Topic permissions for `guest` in this vhost: on `exchange`, publishes only to
    /// routing keys matching `write` (anything else closes the channel, 403).
    pub fn refuse_writes_except(&self, exchange: &str, write: &str) {
        self.rabbitmqctl(&[
            "-q",
            "set_topic_permissions",
            "-p",
            &self.name,
            "guest",
            exchange,
            write,
            ".*",
        ]);
    }

    /// `name` and `arguments` of each queue, as rabbitmqctl prints them.
    pub fn queue_arguments(&self) -> HashMap<String, String> {
        let out = self.rabbitmqctl(&[
            "-q",
            "list_queues",
            "-p",
            &self.name,
            "--no-table-headers",
            "name",
            "arguments",
        ]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(n, a)| (n.to_owned(), a.to_owned()))
            .collect()
    }
}

impl Drop for TestVhost {
    fn drop(&mut self) {
        let mut command = Command::new("timeout");
        command.args(["60", "rabbitmqctl", "-q"]);
        if let Some(node) = &self.node {
            command.args(["-n", node]);
        }
        let _ = command.args(["delete_vhost", &self.name]).output();
    }
}
