//! The measured processes: the worker binary (the test kit's [`WorkerProcess`]), the
//! passthrough child, and what `/proc` says about them and about the broker.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use testkit::{WorkerProcess, http_get};

/// The worker binary (this checkout's, or [`super::worker_binary`]'s), `run`ning
/// against a vhost at log level info: per-message lines are debug, except one warn line
/// per dead letter, so the filter stays at info; the last 20 lines are kept.
pub fn start_worker(url: &str) -> WorkerProcess {
    start_worker_with(url, &[])
}

/// [`start_worker`] with these settings on top (a partition's input exchange and queue).
pub fn start_worker_with(url: &str, env: &[(String, String)]) -> WorkerProcess {
    let builder = WorkerProcess::builder(url)
        .binary(super::worker_binary())
        .env("NORMALIZER__LOG__FILTER", "info")
        .keep_log_lines(20);
    env.iter().fold(builder, |b, (k, v)| b.env(k, v)).start()
}

/// The counters of `/readyz` these benchmarks read.
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(default)]
pub struct Counters {
    pub ready: bool,
    pub consumed: u64,
    pub acked: u64,
    pub requeued: u64,
    pub settle_failed: u64,
    pub sessions: u64,
    pub publish_retries: u64,
    pub ack_frames: u64,
    pub in_flight: u64,
}

/// The worker's `/readyz` counters (all zero if it does not answer).
pub fn readiness(health: SocketAddr) -> Counters {
    let (_, body) = http_get(health, "/readyz");
    serde_json::from_str(&body).unwrap_or_default()
}

/// The passthrough child (this executable in `--passthrough` mode), whose stdout lines
/// are read on a thread; killed if dropped while still running.
pub struct PassthroughProcess {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl PassthroughProcess {
    pub fn start(args: &[String]) -> PassthroughProcess {
        PassthroughProcess::start_under(None, args)
    }

    /// Started as `PROGRAM ARGS... EXE --passthrough ...` when `under` is given (a
    /// profiler, say), else directly.
    pub fn start_under(under: Option<(&str, &[String])>, args: &[String]) -> PassthroughProcess {
        let exe = std::env::current_exe().expect("own path");
        let mut command = match under {
            Some((program, wrapper_args)) => {
                let mut c = Command::new(program);
                c.args(wrapper_args).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        let mut child = command
            .arg("--passthrough")
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("passthrough starts");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        PassthroughProcess { child, lines }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line it prints, within `limit`.
    pub fn line(&mut self, limit: Duration) -> String {
        match self.lines.recv_timeout(limit) {
            Ok(line) => line,
            Err(_) => {
                let status = self.child.try_wait().ok().flatten();
                panic!("passthrough printed nothing within {limit:?} (exited: {status:?})");
            }
        }
    }

    /// Waits (bounded) for it to exit, successfully.
    pub fn wait(&mut self) {
        self.wait_within(Duration::from_secs(30));
    }

    /// Waits up to `limit` for it to exit, successfully.
    pub fn wait_within(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                assert!(status.success(), "passthrough exited with {status}");
                return;
            }
            assert!(Instant::now() < deadline, "passthrough did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for PassthroughProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Clock ticks per second, for `/proc/*/stat` times.
pub fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100)
}

/// The local broker's OS process id, asked of the broker itself.
pub fn broker_pid() -> Option<u32> {
    let out = Command::new("rabbitmqctl")
        .args(["-q", "eval", "os:getpid()."])
        .output()
        .ok()?;
    let pid = String::from_utf8_lossy(&out.stdout)
        .trim()
        .trim_matches('"')
        .parse()
        .ok()?;
    Path::new(&format!("/proc/{pid}/stat"))
        .exists()
        .then_some(pid)
}

/// A private node's OS process id: from the pid file the node writes in its directory,
/// else asked of the node itself.
pub fn private_node_pid(node: &testkit::PrivateNode) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(node.dir().join("pid"))
        .ok()
        .and_then(|p| p.trim().parse().ok())
        .or_else(|| {
            let out = node.try_rabbitmqctl(&["eval", "os:getpid()."]);
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .trim_matches('"')
                .parse()
                .ok()
        })?;
    Path::new(&format!("/proc/{pid}/stat"))
        .exists()
        .then_some(pid)
}

/// CPU ticks (`utime` + `stime`) and `VmHWM` (KiB) from a `/proc/{pid}` folder.
pub fn process_usage(proc_dir: &str) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("{proc_dir}/stat")).expect("/proc stat");
    let used = cpu_ticks(&stat).expect("/proc stat format");
    let status = std::fs::read_to_string(format!("{proc_dir}/status")).expect("/proc status");
    let peak = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    (used, peak)
}

/// CPU ticks of a process, if it exists.
pub fn pid_ticks(pid: u32) -> Option<u64> {
    cpu_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// `utime` + `stime` of a `/proc/{pid}/stat` line.
fn cpu_ticks(stat: &str) -> Option<u64> {
    // Fields 14 and 15; counted after the command name, which is in parentheses and may
    // contain spaces, they are the 12th and 13th.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// `--cpus split`: the broker on CPU 0 alone, this benchmark and the processes it starts
/// (the measured clients) on the other CPUs, as when the broker runs on a machine of its
/// own. Both affinities are restored when this is dropped (a failed run included).
pub struct SplitCpus {
    broker_pid: u32,
    broker_mask: String,
    own_mask: String,
}

impl SplitCpus {
    /// Splits the CPUs; `None` (with a note) when there are fewer than two, or `taskset`
    /// fails.
    pub fn apply(broker_pid: u32) -> Option<SplitCpus> {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        if cpus < 2 {
            eprintln!("--cpus split needs at least 2 CPUs; running shared");
            return None;
        }
        let own = std::process::id();
        let split = SplitCpus {
            broker_pid,
            broker_mask: affinity(broker_pid)?,
            own_mask: affinity(own)?,
        };
        let others = format!("1-{}", cpus - 1);
        let ok = taskset(&["-apc", "0", &broker_pid.to_string()])
            && taskset(&["-apc", &others, &own.to_string()]);
        if !ok {
            eprintln!("taskset failed; running shared");
            return None;
        }
        eprintln!("CPUs split: the broker on CPU 0, the clients on CPUs {others}");
        Some(split)
    }
}

impl Drop for SplitCpus {
    fn drop(&mut self) {
        taskset(&["-ap", &self.broker_mask, &self.broker_pid.to_string()]);
        taskset(&["-ap", &self.own_mask, &std::process::id().to_string()]);
    }
}

/// A process's CPU mask, as `taskset -p` prints it (hex).
fn affinity(pid: u32) -> Option<String> {
    let out = Command::new("taskset")
        .args(["-p", &pid.to_string()])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Some(text.rsplit(": ").next()?.trim().to_owned())
}

fn taskset(args: &[&str]) -> bool {
    Command::new("taskset")
        .args(args)
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
