//! The worker binary as a child process: started against a vhost, its health port read,
//! its logs kept, signalled, measured, killed when dropped.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::broker::TestVhost;
use crate::http::http_get;
use crate::{clip, wait_until};

/// The `webhook-normalizer` binary cargo built for these tests: `WEBHOOK_NORMALIZER_BIN`
/// if set, else the one beside the running test executable (cargo puts tests in
/// `target/{profile}/deps/` and the package's binaries in `target/{profile}/`, and builds
/// the binaries before it runs integration tests or benchmarks).
pub fn worker_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("WEBHOOK_NORMALIZER_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test executable's path");
    let binary = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| {
            profile.join(format!(
                "webhook-normalizer{}",
                std::env::consts::EXE_SUFFIX
            ))
        })
        .expect("the test executable is in target/{profile}/deps/");
    assert!(
        binary.is_file(),
        "no worker binary at {} (run the tests with cargo, or set WEBHOOK_NORMALIZER_BIN)",
        binary.display()
    );
    binary
}

/// How to start the worker: [`WorkerProcess::builder`]. Its base: `webhook-normalizer
/// run` against the URL, health on a free port, JSON logs, `RUST_LOG` removed.
pub struct WorkerBuilder {
    binary: Option<PathBuf>,
    url: String,
    env: Vec<(String, String)>,
    address_space: Option<u64>,
    open_files: Option<u64>,
    under: Vec<String>,
    startup: Duration,
    keep_log_lines: Option<usize>,
}

impl WorkerBuilder {
    /// Another build of the worker than [`worker_binary`] (a benchmark comparing an
    /// older commit's).
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// An environment variable, e.g. a `NORMALIZER__…` setting.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Runs the binary under `prlimit --as=BYTES`: an allocation beyond that address
    /// space fails and the worker aborts, instead of a runaway worker taking the
    /// machine's memory.
    pub fn address_space_limit(mut self, bytes: u64) -> Self {
        self.address_space = Some(bytes);
        self
    }

    /// Runs the binary under `prlimit --nofile=N:N`: at most `n` descriptors open.
    pub fn open_files_limit(mut self, n: u64) -> Self {
        self.open_files = Some(n);
        self
    }

    /// Runs the binary under another program, `PROGRAM ARGS… BINARY run` (a profiler
    /// such as valgrind, which runs it in its own process: the child's pid is still the
    /// worker's). After the limits' `prlimit`, when both are set.
    pub fn under(mut self, program: &str, args: &[String]) -> Self {
        self.under = std::iter::once(program.to_owned())
            .chain(args.iter().cloned())
            .collect();
        self
    }

    /// How long [`WorkerBuilder::start`] waits for the health address (30 s by default;
    /// longer under a slow [`WorkerBuilder::under`]).
    pub fn startup_timeout(mut self, within: Duration) -> Self {
        self.startup = within;
        self
    }

    /// Keeps only the last `n` log lines (for long runs); all by default.
    pub fn keep_log_lines(mut self, n: usize) -> Self {
        self.keep_log_lines = Some(n);
        self
    }

    /// Spawns it and waits (up to 30 s, or [`WorkerBuilder::startup_timeout`]) for the
    /// health address it logs when it starts.
    pub fn start(self) -> WorkerProcess {
        let binary = self.binary.unwrap_or_else(worker_binary);
        // prlimit sets the limit and execs the next program: the child's pid is the
        // worker's.
        let mut argv: Vec<std::ffi::OsString> = Vec::new();
        if self.address_space.is_some() || self.open_files.is_some() {
            argv.push("prlimit".into());
            if let Some(bytes) = self.address_space {
                argv.push(format!("--as={bytes}").into());
            }
            if let Some(n) = self.open_files {
                argv.push(format!("--nofile={n}:{n}").into());
            }
            argv.push("--".into());
        }
        argv.extend(self.under.iter().map(Into::into));
        argv.push(binary.into_os_string());
        let mut command = Command::new(&argv[0]);
        command.args(&argv[1..]);
        command
            .arg("run")
            .env("NORMALIZER__AMQP__URL", &self.url)
            .env("NORMALIZER__HTTP__LISTEN", "127.0.0.1:0")
            .env("NORMALIZER__LOG__FORMAT", "json")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .envs(self.env);
        let mut child = command.spawn().expect("worker starts");
        let stderr = child.stderr.take().expect("stderr");
        let logs = Arc::new(Mutex::new(VecDeque::new()));
        let keep = self.keep_log_lines.unwrap_or(usize::MAX);
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let reader = {
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    // The health address; at trace level other lines may carry an
                    // `address` too, so only one that parses counts.
                    if let Ok(v) = serde_json::from_str::<Value>(&line)
                        && let Some(Ok(addr)) = v
                            .get("address")
                            .and_then(Value::as_str)
                            .map(str::parse::<SocketAddr>)
                    {
                        let _ = addr_tx.send(addr);
                    }
                    let mut logs = logs.lock().unwrap();
                    if logs.len() == keep {
                        logs.pop_front();
                    }
                    logs.push_back(line);
                }
            })
        };
        let mut worker = WorkerProcess {
            child,
            health: SocketAddr::from(([127, 0, 0, 1], 0)),
            logs,
            reader: Some(reader),
        };
        match addr_rx.recv_timeout(self.startup) {
            Ok(address) => worker.health = address,
            Err(_) => panic!(
                "worker logged no health address; last log lines:\n{}",
                worker.log_tail(20)
            ),
        }
        worker
    }
}

/// The worker binary as a child process; killed if dropped while still running.
pub struct WorkerProcess {
    child: Child,
    pub health: SocketAddr,
    logs: Arc<Mutex<VecDeque<String>>>,
    /// The thread reading its log lines; it ends when the process's stderr closes.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl WorkerProcess {
    /// Starts the worker against the vhost, with the tests' settings (reconnecting
    /// after 100 ms, at most 1 s apart) and `env` on top.
    pub fn start(vhost: &TestVhost, env: &[(&str, &str)]) -> WorkerProcess {
        WorkerProcess::for_tests(&vhost.url(), env).start()
    }

    /// Like [`WorkerProcess::start`], against any broker URL (another node, another
    /// user).
    pub fn start_with_url(url: &str, env: &[(&str, &str)]) -> WorkerProcess {
        WorkerProcess::for_tests(url, env).start()
    }

    /// Like [`WorkerProcess::start`], under an address-space limit
    /// ([`WorkerBuilder::address_space_limit`]).
    pub fn start_with_address_space_limit(
        vhost: &TestVhost,
        env: &[(&str, &str)],
        bytes: u64,
    ) -> WorkerProcess {
        WorkerProcess::for_tests(&vhost.url(), env)
            .address_space_limit(bytes)
            .start()
    }

    /// The worker against `url`, with nothing but the base settings
    /// ([`WorkerBuilder`]).
    pub fn builder(url: &str) -> WorkerBuilder {
        WorkerBuilder {
            binary: None,
            url: url.to_owned(),
            env: Vec::new(),
            address_space: None,
            open_files: None,
            under: Vec::new(),
            startup: Duration::from_secs(30),
            keep_log_lines: None,
        }
    }

    /// The worker against `url` with the tests' settings and `env` on top, to adjust
    /// before [`WorkerBuilder::start`].
    pub fn for_tests(url: &str, env: &[(&str, &str)]) -> WorkerBuilder {
        let builder = WorkerProcess::builder(url)
            .env("NORMALIZER__AMQP__RECONNECT_INITIAL_MS", "100")
            .env("NORMALIZER__AMQP__RECONNECT_MAX_MS", "1000");
        env.iter().fold(builder, |b, (k, v)| b.env(k, v))
    }

    /// `GET path` on the health port: (status, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(self.health, path)
    }

    /// The /readyz document.
    pub fn readiness(&self) -> (u16, Value) {
        let (status, body) = self.get("/readyz");
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    pub fn wait_ready(&self, within: Duration) {
        wait_until(within, "worker ready", || self.readiness().0 == 200);
    }

    /// Its log lines so far (the last ones only, with
    /// [`WorkerBuilder::keep_log_lines`]).
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().iter().cloned().collect()
    }

    /// The last `n` log lines, one a line, for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        let logs = self.logs.lock().unwrap();
        let skip = logs.len().saturating_sub(n);
        logs.iter()
            .skip(skip)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Whether the process is still running (not exited, not killed).
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// How the process ended, if it has.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Peak resident set size so far (`VmHWM` in `/proc/{pid}/status`), in KiB. The
    /// process must still be running.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("/proc/{pid}/status of the worker");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/{pid}/status (has the worker exited?)")
    }

    /// SIGTERM, then waits (up to 60 s) for the graceful exit, which must succeed.
    pub fn terminate(&mut self) {
        self.signal("TERM");
        let code = self.wait_exit(Duration::from_secs(60));
        assert_eq!(
            code,
            Some(0),
            "worker exited with {code:?} after SIGTERM; last log lines:\n{}",
            self.log_tail(20)
        );
    }

    /// Waits for the process to exit; its exit code (None when killed by a signal).
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Every line it wrote is read before its logs are looked at.
                if let Some(reader) = self.reader.take() {
                    let _ = reader.join();
                }
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "worker did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Topology only, by the `topology` command, so raw messages can be queued before any
/// worker runs.
pub fn declare_topology(vhost: &TestVhost) {
    let status = Command::new(worker_binary())
        .arg("topology")
        .env("NORMALIZER__AMQP__URL", vhost.url())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
}

/// Runs `webhook-normalizer ARGS…` against `vhost` (no stdin), output captured; fails
/// the test if it takes over a minute.
pub fn run_command(vhost: &TestVhost, args: &[&str]) -> std::process::Output {
    run_command_with(vhost, args, &[])
}

/// [`run_command`] with these environment variables too (the worker's settings).
pub fn run_command_with(
    vhost: &TestVhost,
    args: &[&str],
    env: &[(&str, &str)],
) -> std::process::Output {
    let child = Command::new(worker_binary())
        .args(args)
        .envs(env.iter().copied())
        .env("NORMALIZER__AMQP__URL", vhost.url())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    crate::output_within(child, Duration::from_secs(60))
}

/// Waits until the worker has published more than `events` events: mid-stream.
pub fn wait_for_progress(worker: &WorkerProcess, events: u64) {
    wait_until(
        Duration::from_secs(30),
        "the worker to make progress",
        || {
            worker.readiness().1["events_published"]
                .as_u64()
                .unwrap_or(0)
                > events
        },
    );
}

/// Fails the test at once if the worker has exited, with how it ended and its last logs.
pub fn assert_alive(worker: &mut WorkerProcess, during: &str) {
    if let Some(status) = worker.exit_status() {
        let logs = worker.logs();
        let tail: Vec<String> = logs
            .iter()
            .rev()
            .take(3)
            .rev()
            .map(|l| clip(l, 300))
            .collect();
        panic!("the worker died ({status}) {during}; its last log lines: {tail:#?}");
    }
}
