//! `scripts/run-local.sh` on a machine with nothing on its port and no Docker: it starts
//! a broker of its own from `rabbitmq-server`, runs the worker against it, and on a
//! signal stops both, leaving nothing behind.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

#[test]
fn run_local_starts_a_broker_of_its_own_and_cleans_up() {
    let port = free_port();
    let mut script = Command::new("bash")
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/run-local.sh"))
        .env("WN_LOCAL_PORT", port.to_string())
        .env("WEBHOOK_NORMALIZER_BIN", worker_binary())
        .env("NORMALIZER__HTTP__LISTEN", "127.0.0.1:0")
        .env("NORMALIZER__LOG__FORMAT", "json")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    // However the test ends, the script's process group (the worker, and the broker's
    // cleanup) gets a TERM.
    struct Group(u32);
    impl Drop for Group {
        fn drop(&mut self) {
            let _ = Command::new("kill")
                .args(["-s", "TERM", "--", &format!("-{}", self.0)])
                .status();
        }
    }
    let group = Group(script.id());
    let stderr = script.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut started_in = String::new();
    let health: SocketAddr = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the script starts a broker and the worker");
        if let Some(rest) = line.strip_prefix("no RabbitMQ on ") {
            started_in = rest.rsplit(' ').next().unwrap().to_owned();
        }
        let log: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if let Some(addr) = log["address"].as_str().and_then(|a| a.parse().ok()) {
            break addr;
        }
    };
    assert!(
        started_in.starts_with("/tmp/wn-local-rabbitmq."),
        "{started_in}"
    );
    wait_until(Duration::from_secs(30), "the worker ready", || {
        http_get(health, "/readyz").0 == 200
    });

    drop(group);
    let out = script.wait().unwrap();
    assert!(!out.success() || out.code() == Some(143), "{out:?}");
    assert!(
        !std::path::Path::new(&started_in).exists(),
        "{started_in} removed"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the broker stopped"
    );
}
