//! The shared RabbitMQ on 5672, as tests use it: `rabbitmqctl` on it, and a throwaway
//! vhost per test (there or on a private node). Nothing here changes broker-wide state.
//!
//! When nothing answers on 5672, the first test to need the shared broker starts a
//! private node in its place ([`PrivateNode`]), one per test process, stopped when the
//! process ends: `cargo test` needs RabbitMQ installed, not running.

use std::collections::HashMap;
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use lapin::{Connection, ConnectionProperties};

use crate::PrivateNode;

/// The shared broker, without a vhost.
pub const BROKER: &str = "amqp://guest:guest@127.0.0.1:5672";

/// The broker tests share: RabbitMQ on 5672, or a private node standing in for it.
struct Shared {
    /// `amqp://guest:guest@127.0.0.1:{port}`.
    url: String,
    /// The stand-in's node name, for `rabbitmqctl -n`.
    node: Option<String>,
    /// Kept for the life of the process; its reaper stops it when the process ends.
    _stand_in: Option<std::sync::Mutex<PrivateNode>>,
}

/// Where the shared broker is looked for, when not 5672 (the test kit's own tests).
pub const SHARED_PORT_VAR: &str = "WN_TESTKIT_SHARED_PORT";

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        // Another port only for the test kit's own test of the stand-in.
        let port: u16 = std::env::var(SHARED_PORT_VAR)
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(5672);
        let answers = std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(2),
        )
        .is_ok();
        if answers {
            return Shared {
                url: BROKER.to_owned(),
                node: None,
                _stand_in: None,
            };
        }
        eprintln!("nothing answers on 127.0.0.1:{port}: starting a private RabbitMQ node for this test process");
        let node = PrivateNode::start();
        Shared {
            url: format!("amqp://guest:guest@127.0.0.1:{}", node.port()),
            node: Some(node.name().to_owned()),
            _stand_in: Some(std::sync::Mutex::new(node)),
        }
    })
}

/// The shared broker's URL, without a vhost (5672, or the stand-in's port).
pub fn shared_broker_url() -> String {
    shared().url.clone()
}

/// Runs `rabbitmqctl args…` against the shared broker and asserts it succeeded.
pub fn rabbitmqctl(args: &[&str]) -> std::process::Output {
    let node: Vec<&str> = match &shared().node {
        Some(name) => vec!["-n", name.as_str()],
        None => Vec::new(),
    };
    run_rabbitmqctl(&[&node[..], args].concat())
}

fn run_rabbitmqctl(args: &[&str]) -> std::process::Output {
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
    /// A vhost on the shared broker, `wn-test-{pid}-{n}-{label}`. The first in a process
    /// also deletes the vhosts of test processes that are gone: one killed by a signal
    /// skips its guards, and would leave its vhosts behind for good.
    pub fn new(label: &str) -> TestVhost {
        let shared = shared();
        static SWEPT: std::sync::Once = std::sync::Once::new();
        SWEPT.call_once(|| delete_stale_vhosts(TEST_PREFIX));
        TestVhost::create(TEST_PREFIX, label, shared.url.clone(), shared.node.clone())
    }

    /// A vhost on a private node (which must outlive it).
    pub fn on(node: &PrivateNode, label: &str) -> TestVhost {
        let broker = format!("amqp://guest:guest@127.0.0.1:{}", node.port());
        TestVhost::create(TEST_PREFIX, label, broker, Some(node.name().to_owned()))
    }

    /// A vhost on the shared broker named `{prefix}{pid}-{n}-{label}`: a benchmark's,
    /// whose leftovers [`delete_stale_vhosts`] finds by the pid.
    pub fn with_prefix(prefix: &str, label: &str) -> TestVhost {
        let shared = shared();
        TestVhost::create(prefix, label, shared.url.clone(), shared.node.clone())
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
            Some(node) => run_rabbitmqctl(&[&["-n", node.as_str()], args].concat()),
            None => run_rabbitmqctl(args),
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

    /// Messages in `queue`, ready and unacknowledged; `None` when it does not exist.
    pub fn queue_messages(&self, queue: &str) -> Option<u64> {
        let out = self.rabbitmqctl(&[
            "-q",
            "list_queues",
            "-p",
            &self.name,
            "--no-table-headers",
            "name",
            "messages",
        ]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .find(|(name, _)| *name == queue)
            .and_then(|(_, n)| n.trim().parse().ok())
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
