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

/// Prefix of the vhosts tests create: `wn-test-{pid}-{n}-{label}`.
const TEST_PREFIX: &str = "wn-test-";

impl TestVhost {
    /// A vhost on the shared broker, `wn-test-{pid}-{n}-{label}`.
    pub fn new(label: &str) -> TestVhost {
        TestVhost::create(TEST_PREFIX, label, BROKER.to_owned(), None)
    }

    /// A vhost on a private node (which must outlive it).
    pub fn on(node: &PrivateNode, label: &str) -> TestVhost {
        let broker = format!("amqp://guest:guest@127.0.0.1:{}", node.port());
        TestVhost::create(TEST_PREFIX, label, broker, Some(node.name().to_owned()))
    }

    /// A vhost on the shared broker named `{prefix}{pid}-{n}-{label}`: a benchmark's,
    /// whose leftovers [`delete_stale_vhosts`] finds by the pid.
    pub fn with_prefix(prefix: &str, label: &str) -> TestVhost {
        TestVhost::create(prefix, label, BROKER.to_owned(), None)
    }

    fn create(prefix: &str, label: &str, broker: String, node: Option<String>) -> TestVhost {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{prefix}{}-{}-{label}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let vhost = TestVhost { name, broker, node };
        vhost.rabbitmqctl(&["-q", "add_vhost", &vhost.name]);
        vhost.grant_guest();
        vhost
    }

    /// Gives `guest` every permission in this vhost (as created).
    pub fn grant_guest(&self) {
        self.rabbitmqctl(&[
            "-q",
            "set_permissions",
            "-p",
            &self.name,
            "guest",
            ".*",
            ".*",
            ".*",
        ]);
    }

    /// Takes `guest`'s permissions in this vhost away: its next connection is refused.
    pub fn revoke_guest(&self) {
        self.rabbitmqctl(&["-q", "clear_permissions", "-p", &self.name, "guest"]);
    }

    pub fn url(&self) -> String {
        format!("{}/{}", self.broker, self.name)
    }

    pub async fn connect(&self) -> Connection {
        connect(&self.url()).await
    }

    /// `rabbitmqctl` on the vhost's broker, asserted to succeed.
    pub fn rabbitmqctl(&self, args: &[&str]) -> std::process::Output {
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
        let deleted = command.args(["delete_vhost", &self.name]).output();
        if !deleted.is_ok_and(|o| o.status.success()) {
            eprintln!("warning: could not delete vhost {}", self.name);
        }
    }
}

/// An AMQP connection to `url`.
pub async fn connect(url: &str) -> Connection {
    Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("connects to RabbitMQ (is it running?)")
}

/// Deletes the shared broker's vhosts named `{prefix}{pid}-…` whose process no longer
/// exists (killed by a signal, which skips their guards).
pub fn delete_stale_vhosts(prefix: &str) {
    let out = rabbitmqctl(&["-q", "list_vhosts", "--no-table-headers", "name"]);
    for name in String::from_utf8_lossy(&out.stdout).lines().map(str::trim) {
        let Some(pid) = name
            .strip_prefix(prefix)
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !pid.is_empty() && !std::path::Path::new("/proc").join(pid).exists() {
            eprintln!("deleting vhost {name}, left by an interrupted run");
            rabbitmqctl(&["-q", "delete_vhost", name]);
        }
    }
}
