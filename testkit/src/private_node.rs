//! A RabbitMQ node of a test's own, for tests that change broker-wide state.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// A private RabbitMQ node for tests that change broker-wide state (users, limits): its own
/// directory under /tmp, its own node name and ports, stopped and removed when dropped
/// (also when the test panicked). It never touches the shared node on 5672.
pub struct PrivateNode {
    /// `wn-{pid}-{n}@localhost`.
    pub node: String,
    /// Its AMQP port.
    pub port: u16,
    dir: PathBuf,
}

impl PrivateNode {
    /// Starts the node and waits until it runs (a few seconds).
    pub fn start() -> PrivateNode {
        PrivateNode::start_with("", &[])
    }

    /// As [`PrivateNode::start`], with `extra` lines added to its `rabbitmq.conf` and
    /// `plugins` enabled (those shipped with the broker).
    pub fn start_with(extra: &str, plugins: &[&str]) -> PrivateNode {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let node = format!("wn-{pid}-{n}@localhost");
        let dir = PathBuf::from(format!("/tmp/wn-node.{pid}-{n}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("mnesia")).expect("node dir");
        std::fs::create_dir_all(dir.join("log")).expect("node log dir");
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
                .expect("chmod node dir");
        }
        // Free ports, held together so they differ, released just before the start.
        let (port, dist_port) = {
            let a = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
            let b = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
            (
                a.local_addr().expect("port").port(),
                b.local_addr().expect("port").port(),
            )
        };
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!("listeners.tcp.1 = 127.0.0.1:{port}\nloopback_users = none\n{extra}\n"),
        )
        .expect("rabbitmq.conf");
        std::fs::write(
            dir.join("enabled_plugins"),
            format!("[{}].\n", plugins.join(",")),
        )
        .expect("enabled_plugins");
        let chown = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(&dir)
            .status()
            .expect("chown");
        assert!(chown.success(), "chown of {}", dir.display());
        // From here on, Drop stops the node and removes the directory.
        let private = PrivateNode { node, port, dir };
        let d = private.dir.display().to_string();
        let out = Command::new("timeout")
            .args(["60", "rabbitmq-server", "-detached"])
            .env("RABBITMQ_NODENAME", &private.node)
            .env("RABBITMQ_NODE_PORT", port.to_string())
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", format!("{d}/mnesia"))
            .env("RABBITMQ_LOG_BASE", format!("{d}/log"))
            .env("RABBITMQ_CONFIG_FILE", format!("{d}/rabbitmq"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                format!("{d}/enabled_plugins"),
            )
            .env("RABBITMQ_PID_FILE", private.pid_file())
            .output()
            .expect("rabbitmq-server runs");
        assert!(
            out.status.success(),
            "rabbitmq-server -detached: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        private.rabbitmqctl(&["wait", &private.pid_file()]);
        private
    }

    fn pid_file(&self) -> String {
        self.dir.join("pid").display().to_string()
    }

    /// An AMQP URL for this node (`vhost` percent-encoded, `%2f` for `/`).
    pub fn url(&self, user: &str, password: &str, vhost: &str) -> String {
        format!("amqp://{user}:{password}@127.0.0.1:{}/{vhost}", self.port)
    }

    /// Runs `rabbitmqctl -n NODE args…` (at most 60 s) and asserts it succeeded.
    pub fn rabbitmqctl(&self, args: &[&str]) -> std::process::Output {
        let out = Command::new("timeout")
            .args(["60", "rabbitmqctl", "-q", "-n", &self.node])
            .args(args)
            .output()
            .expect("rabbitmqctl runs");
        assert!(
            out.status.success(),
            "rabbitmqctl -n {} {args:?}: {}{}",
            self.node,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Adds a user with full permissions on the vhost `/`.
    pub fn add_user(&self, name: &str, password: &str) {
        self.rabbitmqctl(&["add_user", name, password]);
        self.rabbitmqctl(&["set_permissions", "-p", "/", name, ".*", ".*", ".*"]);
    }
}

impl Drop for PrivateNode {
    fn drop(&mut self) {
        let pid_file = self.pid_file();
        let _ = Command::new("timeout")
            .args([
                "30",
                "rabbitmqctl",
                "-q",
                "-n",
                &self.node,
                "stop",
                &pid_file,
            ])
            .output();
        // If the stop failed or timed out, end the node's own process (the pid in its pid
        // file, if that process is still this node).
        if let Ok(pid) = std::fs::read_to_string(&pid_file) {
            let pid = pid.trim();
            let still_ours = std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&self.node));
            if !pid.is_empty() && still_ours {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
