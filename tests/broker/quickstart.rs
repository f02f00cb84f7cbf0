//! `scripts/run-local.sh`, run as the README runs it, on each of its paths: the broker
//! the user's settings name (environment or `--config`; no broker started), and a broker
//! of its own when nothing answers. Each test sends TERM to the script's own process,
//! not its process group, as a supervisor or `kill PID` would, and checks that the
//! worker drained and exited and that nothing is left running.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use crate::support::*;

/// The script, started with `env` and `args`, its stderr read line by line.
struct Script {
    child: Child,
    lines: Receiver<String>,
    /// Every line read so far, for failure messages.
    seen: Vec<String>,
    /// Set in the script's environment: a worker carrying it is one this test started.
    mark: String,
}

impl Script {
    fn start(env: &[(&str, &str)], args: &[&str]) -> Script {
        let mark = format!("{}-{}", std::process::id(), fastrand::u64(..));
        let mut command = Command::new("bash");
        command
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/run-local.sh"))
            .args(args)
            .env_remove("NORMALIZER__AMQP__URL")
            .env_remove("WN_LOCAL_PORT")
            .env("WEBHOOK_NORMALIZER_BIN", worker_binary())
            .env("NORMALIZER__HTTP__LISTEN", "127.0.0.1:0")
            .env("NORMALIZER__LOG__FORMAT", "json")
            .env("WN_QUICKSTART_TEST", &mark)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Only so that a failing test can clean up everything it started (Drop).
            .process_group(0);
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Script {
            child,
            lines,
            seen: Vec::new(),
            mark,
        }
    }

    /// Reads stderr until the worker logs its health address; waits until it is ready.
    fn wait_ready(&mut self) -> SocketAddr {
        let health: SocketAddr = loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| {
                    panic!(
                        "the worker did not start; stderr:\n{}",
                        self.seen.join("\n")
                    )
                });
            self.seen.push(line.clone());
            let log: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if let Some(addr) = log["address"].as_str().and_then(|a| a.parse().ok()) {
                break addr;
            }
        };
        wait_until(Duration::from_secs(30), "the worker ready", || {
            http_get(health, "/readyz").0 == 200
        });
        health
    }

    /// The script's own lines (not the worker's JSON logs) so far.
    fn said(&mut self) -> String {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        self.seen
            .iter()
            .filter(|l| !l.starts_with('{'))
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// TERM to the script's own process only; its exit status, within 30 s.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-s", "TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the script did not exit within 30 s of a TERM to its process; stderr:\n{}",
                self.said()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Worker processes this test started that still run.
    fn workers_left(&self) -> Vec<u32> {
        let binary = std::fs::canonicalize(worker_binary()).unwrap();
        let wanted = format!("WN_QUICKSTART_TEST={}", self.mark);
        let mut left = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let proc_dir = entry.path();
            let is_worker = std::fs::read_link(proc_dir.join("exe")).is_ok_and(|exe| exe == binary);
            let ours = std::fs::read(proc_dir.join("environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == wanted.as_bytes()));
            if is_worker && ours {
                left.push(pid);
            }
        }
        left
    }
}

impl Drop for Script {
    /// However the test ends, nothing it started stays: TERM to the script's group.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-s", "TERM", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
    }
}

/// TERM to the script: the worker drains and exits 0, and no worker is left.
fn assert_stops_cleanly(script: &mut Script) {
    let status = script.terminate();
    assert_eq!(
        status.code(),
        Some(0),
        "the worker drained and exited 0: {status:?}"
    );
    let left = script.workers_left();
    assert!(left.is_empty(), "workers left running: {left:?}");
}

/// The names of the queues in `vhost`, listed by `rabbitmqctl` (`-n node` or the shared
/// broker).
fn queues(ctl: impl Fn(&[&str]) -> std::process::Output, vhost: &str) -> Vec<String> {
    let out = ctl(&[
        "-q",
        "list_queues",
        "-p",
        vhost,
        "--no-table-headers",
        "name",
    ]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

/// A broker answers on the script's port, and `NORMALIZER__AMQP__URL` names a vhost on
/// it: the worker declares its topology there, not in the broker's `/`. (A private node
/// stands in for the local broker, so this test can look at its `/`, and never touches
/// the shared broker's.)
#[test]
fn run_local_uses_the_url_in_the_environment() {
    let node = PrivateNode::start();
    let vhost = TestVhost::on(&node, "quickstart-env");
    let port = node.port().to_string();
    let url = vhost.url();
    let mut script = Script::start(
        &[("WN_LOCAL_PORT", &port), ("NORMALIZER__AMQP__URL", &url)],
        &[],
    );
    script.wait_ready();
    let said = script.said();
    assert!(said.contains("using amqp.url from your settings"), "{said}");
    assert!(
        !said.contains("guest:guest"),
        "the password is masked: {said}"
    );
    assert!(
        queues(|a| node.rabbitmqctl(a), &vhost.name).contains(&"normalizer.raw".to_owned()),
        "the topology in {}",
        vhost.name
    );
    assert_eq!(
        queues(|a| node.rabbitmqctl(a), "/"),
        Vec::<String>::new(),
        "nothing declared in /"
    );
    assert_stops_cleanly(&mut script);
}

/// `--config FILE` naming a vhost on the shared broker, with nothing answering on the
/// script's port: the script starts no broker, and the worker uses the file's URL.
#[test]
fn run_local_uses_the_url_of_a_config_file_and_starts_no_broker() {
    let vhost = TestVhost::new("quickstart-config");
    let dir = std::env::temp_dir().join(format!("wn-quickstart-{}", vhost.name));
    std::fs::create_dir_all(&dir).unwrap();
    let file: PathBuf = dir.join("my.toml");
    std::fs::write(&file, format!("[amqp]\nurl = \"{}\"\n", vhost.url())).unwrap();
    let port = free_port().to_string();
    let mut script = Script::start(
        &[("WN_LOCAL_PORT", &port)],
        &["--config", file.to_str().unwrap()],
    );
    script.wait_ready();
    let said = script.said();
    assert!(said.contains("starting no broker"), "{said}");
    assert!(!said.contains("starting one"), "{said}");
    assert!(
        queues(rabbitmqctl, &vhost.name).contains(&"normalizer.raw".to_owned()),
        "the topology in {}",
        vhost.name
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap())).is_err(),
        "no broker on the script's port"
    );
    assert_stops_cleanly(&mut script);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Nothing on its port, no Docker, no URL of the user's: the script starts a broker of
/// its own from `rabbitmq-server`, runs the worker against it, and on TERM the worker
/// drains and exits, then the broker is stopped and its directory removed.
#[test]
fn run_local_starts_a_broker_of_its_own_and_cleans_up() {
    let port = free_port();
    let mut script = Script::start(&[("WN_LOCAL_PORT", &port.to_string())], &[]);
    script.wait_ready();
    let said = script.said();
    let started_in = said
        .lines()
        .find_map(|l| l.strip_prefix("no RabbitMQ on "))
        .and_then(|rest| rest.rsplit(' ').next())
        .unwrap_or_default()
        .to_owned();
    assert!(started_in.starts_with("/tmp/wn-local-rabbitmq."), "{said}");

    assert_stops_cleanly(&mut script);
    wait_until(
        Duration::from_secs(60),
        "the broker stopped and its directory removed",
        || {
            !Path::new(&started_in).exists()
                && std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
        },
    );
}
