//! A RabbitMQ node of a test's own, for tests that change broker-wide state: started in
//! a directory of its own, stopped and removed however the test ends.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

/// Attempts at starting a node, each on fresh ports, before a test fails.
const START_ATTEMPTS: usize = 3;

/// Stops the node of directory `$1` once its standard input ends: when the test
/// process closes it (dropping the [`PrivateNode`]) or dies, however (a panic that aborts,
/// Ctrl-C, SIGKILL). It runs in a process group of its own, so a Ctrl-C at the terminal
/// does not reach it. The node is stopped by `rabbitmqctl stop`, else killed by the pid
/// in its pid file (if that process is still this node), and the directory is removed.
const REAPER: &str = r#"
dir=$1
echo ready
exec >/dev/null
while read -r _; do :; done
[ -d "$dir" ] || exit 0
node=$(cat "$dir/nodename")
alive() {
  pid=$(cat "$dir/pid" 2>/dev/null) && [ -n "$pid" ] &&
    tr '\0' '\n' < "/proc/$pid/environ" 2>/dev/null | grep -qxF "RABBITMQ_NODENAME=$node"
}
if alive; then
  timeout 30 rabbitmqctl -q -n "$node" stop "$dir/pid" >/dev/null 2>&1
  if alive; then
    kill -9 "$pid"
    n=0; while [ -e "/proc/$pid" ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n+1)); done
  fi
fi
rm -rf "$dir"
"#;

/// A RabbitMQ node of a test's own: its own node name (`wn-{pid}-{n}-{random}@localhost`),
/// AMQP and distribution ports, and a directory under the system's temporary directory
/// (configuration, data, logs, pid file) handed to the `rabbitmq` user. It never touches
/// the shared node on 5672. See the crate documentation for its life cycle.
pub struct PrivateNode {
    name: String,
    port: u16,
    dist_port: u16,
    dir: PathBuf,
    running: bool,
    /// The reaper: stops the node and removes `dir` once its stdin (ours) is closed.
    reaper: Child,
    reaper_stdin: Option<ChildStdin>,
}

impl PrivateNode {
    /// Starts a node with the default configuration and waits until it runs (about 6 s).
    pub fn start() -> PrivateNode {
        PrivateNode::start_with("", &[])
    }

    /// As [`PrivateNode::start`], with `conf` (lines of `rabbitmq.conf`, e.g.
    /// `max_message_size = 65536`) and `plugins` enabled (those shipped with the broker,
    /// e.g. `rabbitmq_consistent_hash_exchange`). A listener in `conf` needs a port of its
    /// own: take it from [`free_port`].
    pub fn start_with(conf: &str, plugins: &[&str]) -> PrivateNode {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let stem = format!(
            "wn-{}-{}-{:04x}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            fastrand::u16(..)
        );
        let name = format!("{stem}@localhost");
        let dir = std::env::temp_dir().join(format!("{stem}.rabbitmq"));
        std::fs::create_dir(&dir).expect("the node's directory, new");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .expect("chmod the node's directory");
        std::fs::write(dir.join("nodename"), &name).expect("nodename file");
        std::fs::write(
            dir.join("enabled_plugins"),
            format!("[{}].\n", plugins.join(",")),
        )
        .expect("enabled_plugins");
        // From here on, the reaper removes the directory however this process ends.
        let mut reaper = Command::new("sh")
            .args(["-c", REAPER, "wn-node-reaper"])
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("sh runs");
        let reaper_stdin = reaper.stdin.take();
        let mut ready = String::new();
        let _ = BufReader::new(reaper.stdout.take().expect("reaper stdout")).read_line(&mut ready);
        assert_eq!(ready.trim(), "ready", "the node reaper did not start");
        let mut node = PrivateNode {
            name,
            port: 0,
            dist_port: 0,
            dir,
            running: false,
            reaper,
            reaper_stdin,
        };
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            // A port taken between our check and the node's bind fails the start: the
            // next attempt takes other ports.
            node.port = free_port();
            node.dist_port = free_port();
            std::fs::write(
                node.dir.join("rabbitmq.conf"),
                format!(
                    "listeners.tcp.1 = 127.0.0.1:{}\nloopback_users = none\n{conf}\n",
                    node.port
                ),
            )
            .expect("rabbitmq.conf");
            match node.boot() {
                Ok(()) => return node,
                Err(why) => {
                    failures.push(why);
                    node.kill_and_clear();
                }
            }
        }
        panic!(
            "private node {} did not start in {START_ATTEMPTS} attempts:\n{}",
            node.name,
            failures.join("\n---\n")
        );
    }

    /// The Erlang node name, `wn-…@localhost`, for `rabbitmqctl -n` or a cluster peer.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its AMQP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its directory: `rabbitmq.conf`, `enabled_plugins`, data (`mnesia/`), logs (`log/`),
    /// pid file; owned by `rabbitmq` while the node runs, removed with the node.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// An AMQP URL for `guest` on the vhost `/`.
    pub fn amqp_url(&self) -> String {
        self.url("guest", "guest", "%2f")
    }

    /// An AMQP URL for this node (`vhost` percent-encoded, `%2f` for `/`).
    pub fn url(&self, user: &str, password: &str, vhost: &str) -> String {
        format!("amqp://{user}:{password}@127.0.0.1:{}/{vhost}", self.port)
    }

    /// Runs `rabbitmqctl -q -n NODE args…` (at most 60 s) and asserts it succeeded.
    pub fn rabbitmqctl(&self, args: &[&str]) -> Output {
        let out = self.try_rabbitmqctl(args);
        assert!(
            out.status.success(),
            "rabbitmqctl -n {} {args:?}: {}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Runs `rabbitmqctl -q -n NODE args…` (at most 60 s), whatever its outcome.
    pub fn try_rabbitmqctl(&self, args: &[&str]) -> Output {
        Command::new("timeout")
            .args(["60", "rabbitmqctl", "-q", "-n", &self.name])
            .args(args)
            .output()
            .expect("rabbitmqctl runs")
    }

    /// Evaluates an Erlang expression on the node (`rabbitmqctl eval`): what it printed,
    /// trimmed.
    pub fn eval(&self, expression: &str) -> String {
        let out = self.rabbitmqctl(&["eval", expression]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Adds a user with full permissions on the vhost `/`.
    pub fn add_user(&self, name: &str, password: &str) {
        self.rabbitmqctl(&["add_user", name, password]);
        self.rabbitmqctl(&["set_permissions", "-p", "/", name, ".*", ".*", ".*"]);
    }

    /// Makes this (freshly started) node a member of `seed`'s cluster: `stop_app`,
    /// `join_cluster`, `start_app`. Both run as the `rabbitmq` user and share its Erlang
    /// cookie.
    pub fn join_cluster(&self, seed: &PrivateNode) {
        self.rabbitmqctl(&["stop_app"]);
        self.rabbitmqctl(&["join_cluster", seed.name()]);
        self.start_app();
    }

    /// `rabbitmqctl stop_app`: the broker stops (clients lose their connections), the
    /// Erlang node stays up.
    pub fn stop_app(&self) {
        self.rabbitmqctl(&["stop_app"]);
    }

    /// `rabbitmqctl start_app`, and waits until the broker runs again.
    pub fn start_app(&self) {
        self.rabbitmqctl(&["start_app"]);
        self.rabbitmqctl(&["await_startup"]);
    }

    /// Stops the node (`rabbitmqctl stop`), keeping its data, name and ports for
    /// [`PrivateNode::restart`]. Clients see their connections closed.
    pub fn stop(&mut self) {
        if self.running {
            self.rabbitmqctl(&["stop", &self.pid_file()]);
            self.running = false;
        }
    }

    /// Stops the node if it runs and starts it again: same name, ports, configuration
    /// and data (durable queues and their messages, users, vhosts).
    pub fn restart(&mut self) {
        self.stop();
        if let Err(why) = self.boot() {
            panic!("private node {} did not restart: {why}", self.name);
        }
    }

    /// `rabbitmq-server -detached` with this node's environment, then `rabbitmqctl wait`
    /// until the broker runs; on failure, why, with the end of the node's log.
    fn boot(&mut self) -> Result<(), String> {
        let d = self.dir.display().to_string();
        for sub in ["mnesia", "log"] {
            std::fs::create_dir_all(self.dir.join(sub)).expect("the node's data and log dirs");
        }
        let chown = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq", &d])
            .status()
            .expect("chown runs");
        assert!(
            chown.success(),
            "chown of {d} to rabbitmq (the tests that start a node run as root)"
        );
        let started = Command::new("timeout")
            .args(["60", "rabbitmq-server", "-detached"])
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", format!("{d}/mnesia"))
            .env("RABBITMQ_LOG_BASE", format!("{d}/log"))
            .env("RABBITMQ_CONFIG_FILE", format!("{d}/rabbitmq"))
            .env(
                "RABBITMQ_ADVANCED_CONFIG_FILE",
                format!("{d}/advanced.config"),
            )
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                format!("{d}/enabled_plugins"),
            )
            .env("RABBITMQ_PID_FILE", self.pid_file())
            // A node that fails early writes its crash dump here, not in the shared
            // node's home directory.
            .env("ERL_CRASH_DUMP", format!("{d}/log/erl_crash.dump"))
            .output()
            .expect("rabbitmq-server runs");
        let outcome = if started.status.success() {
            self.try_rabbitmqctl(&["wait", &self.pid_file()])
        } else {
            started
        };
        if outcome.status.success() {
            self.running = true;
            return Ok(());
        }
        Err(format!(
            "ports {}/{}: {}\nlog:\n{}",
            self.port,
            self.dist_port,
            String::from_utf8_lossy(&outcome.stderr).trim(),
            self.log_tail(15)
        ))
    }

    /// After a failed start: ends what may run of the node and clears its data and logs
    /// for the next attempt.
    fn kill_and_clear(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.pid_file()) {
            let pid = pid.trim();
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let ours = format!("RABBITMQ_NODENAME={}", self.name);
            if environ.split(|b| *b == 0).any(|v| v == ours.as_bytes()) {
                let _ = Command::new("kill").args(["-9", pid]).status();
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
        }
        for stale in ["mnesia", "log", "pid"] {
            let path = self.dir.join(stale);
            let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
        }
        self.running = false;
    }

    fn pid_file(&self) -> String {
        self.dir.join("pid").display().to_string()
    }

    /// The last `n` lines of the node's log.
    fn log_tail(&self, n: usize) -> String {
        let log = self.dir.join("log").join(format!("{}.log", self.name));
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for PrivateNode {
    /// Hands the node to its reaper (closing its stdin) and waits until it has stopped
    /// the node and removed the directory: the same path as when the test process dies.
    fn drop(&mut self) {
        if let Some(mut stdin) = self.reaper_stdin.take() {
            let _ = stdin.flush();
        }
        let _ = self.reaper.wait();
    }
}

/// A TCP port free on every interface right now, in 20000..32000: below Linux's
/// ephemeral range (32768 and up), so no outgoing connection takes it before the node
/// binds it, and never the same twice in one process. Another process may still take
/// it first; [`PrivateNode::start_with`] then retries on other ports.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..1000 {
        let port = fastrand::u16(20000..32000);
        // 25672: the shared node's distribution port.
        if port == 25672 || given.contains(&port) {
            continue;
        }
        let free = TcpListener::bind(("0.0.0.0", port)).is_ok();
        if free {
            given.insert(port);
            return port;
        }
    }
    panic!("no free port in 20000..32000");
}
