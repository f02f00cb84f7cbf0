//! The shared RabbitMQ on 5672, as tests use it: `rabbitmqctl` on it, and a throwaway
//! vhost per test. Nothing here changes broker-wide state.

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use lapin::{Connection, ConnectionProperties};

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

/// A vhost of its own for one test, deleted (with everything in it) when dropped.
pub struct TestVhost {
    pub name: String,
}

impl TestVhost {
    pub fn new(test: &str) -> TestVhost {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "wn-test-{test}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        rabbitmqctl(&["-q", "add_vhost", &name]);
        rabbitmqctl(&[
            "-q",
            "set_permissions",
            "-p",
            &name,
            "guest",
            ".*",
            ".*",
            ".*",
        ]);
        TestVhost { name }
    }

    pub fn url(&self) -> String {
        format!("{BROKER}/{}", self.name)
    }

    pub async fn connect(&self) -> Connection {
        Connection::connect(&self.url(), ConnectionProperties::default())
            .await
            .expect("test connection")
    }

    /// Closes every client connection in this vhost, as an operator would.
    pub fn close_all_connections(&self) {
        rabbitmqctl(&[
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
        rabbitmqctl(&[
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
        let out = rabbitmqctl(&[
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
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "delete_vhost", &self.name])
            .output();
    }
}
