//! A private node's life cycle: restarted with its data, and gone, directory and all,
//! when its owner drops it or dies.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use testkit::{PrivateNode, wait_until};

/// The node's OS process id, asked of the node.
fn os_pid(node: &PrivateNode) -> u32 {
    node.eval("os:getpid().").trim_matches('"').parse().unwrap()
}

fn running(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn a_restarted_node_keeps_its_port_and_data_and_is_removed_when_dropped() {
    let mut node = PrivateNode::start();
    let (port, first) = (node.port(), os_pid(&node));
    node.rabbitmqctl(&["add_vhost", "kept"]);

    node.restart();
    let second = os_pid(&node);
    assert_ne!(first, second, "a new OS process");
    assert!(!running(first), "the first process has exited");
    assert_eq!(node.port(), port);
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("AMQP listener after restart");
    let vhosts = node.rabbitmqctl(&["list_vhosts", "--no-table-headers", "name"]);
    assert!(
        String::from_utf8_lossy(&vhosts.stdout)
            .lines()
            .any(|v| v == "kept"),
        "vhost kept across the restart"
    );

    let dir = node.dir().to_owned();
    drop(node);
    assert!(!running(second), "node process {second} still runs");
    assert!(!dir.exists(), "{} still exists", dir.display());
}

/// Where the child process below writes its node's OS process id and directory.
const HOLD_NODE: &str = "WN_TESTKIT_HOLD_NODE";

/// Run by the test below as a child process: starts a node, says so, and waits to be
/// killed.
#[test]
#[ignore = "a child process of a_node_outlives_no_killed_test_process"]
fn hold_a_node_until_killed() {
    let Some(out) = std::env::var_os(HOLD_NODE) else {
        return;
    };
    let node = PrivateNode::start();
    let info = format!("{}\n{}\n", os_pid(&node), node.dir().display());
    std::fs::write(PathBuf::from(&out).with_extension("tmp"), info).unwrap();
    std::fs::rename(PathBuf::from(&out).with_extension("tmp"), &out).unwrap();
    std::thread::sleep(Duration::from_secs(300));
}

/// A test process killed outright (SIGKILL: no unwinding, no Drop) leaves no node
/// running and no directory behind.
#[test]
fn a_node_outlives_no_killed_test_process() {
    let out = std::env::temp_dir().join(format!("wn-testkit-hold-{}", std::process::id()));
    let _ = std::fs::remove_file(&out);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "hold_a_node_until_killed",
            "--ignored",
            "--nocapture",
        ])
        .env(HOLD_NODE, &out)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !out.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the child exited ({status}) before its node ran");
        }
        assert!(Instant::now() < deadline, "the child's node did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let info = std::fs::read_to_string(&out).unwrap();
    let _ = std::fs::remove_file(&out);
    let (pid, dir) = info.trim().split_once('\n').unwrap();
    let (pid, dir): (u32, &Path) = (pid.parse().unwrap(), Path::new(dir));
    assert!(running(pid) && dir.exists());

    child.kill().unwrap();
    child.wait().unwrap();
    wait_until(Duration::from_secs(60), "the orphaned node to stop", || {
        !running(pid) && !dir.exists()
    });
}

/// Run by the test below as a child process, told that the shared broker is on a port
/// where nothing listens: a stand-in node takes its place.
#[test]
#[ignore = "a child process of nothing_on_5672_means_a_stand_in_node"]
fn use_the_shared_broker() {
    if std::env::var_os(testkit::SHARED_PORT_VAR).is_none() {
        return;
    }
    let url = testkit::shared_broker_url();
    assert_ne!(url, testkit::BROKER, "a stand-in, not 5672");
    let vhost = testkit::TestVhost::new("stand-in");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let conn = vhost.connect().await;
        assert!(vhost.url().starts_with(&url));
        conn.close(200, "ok".into()).await.unwrap();
    });
    println!("STAND-IN-OK");
}

/// With nothing on the shared broker's port, tests get a private node instead: the test
/// command needs RabbitMQ installed, not running.
#[test]
fn nothing_on_5672_means_a_stand_in_node() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "use_the_shared_broker",
            "--nocapture",
        ])
        .env(testkit::SHARED_PORT_VAR, testkit::free_port().to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("STAND-IN-OK"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
