//! Test plumbing: a throwaway vhost per test, the worker as a child process, and a small
//! AMQP client for publishing raw webhooks and reading what comes out.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::Value;
use webhook_normalizer::{CanonicalEvent, Limits, NormalizeError, normalize};

pub const BROKER: &str = "amqp://guest:guest@127.0.0.1:5672";

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn rabbitmqctl(args: &[&str]) -> std::process::Output {
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

/// The worker binary running against a test vhost.
pub struct WorkerProcess {
    child: Child,
    pub health: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
}

impl WorkerProcess {
    /// Starts `webhook-normalizer run` with the vhost's URL, health on a free port, JSON
    /// logs, and `env` on top.
    pub fn start(vhost: &TestVhost, env: &[(&str, &str)]) -> WorkerProcess {
        WorkerProcess::launch(&vhost.url(), env, None)
    }

    /// Like [`WorkerProcess::start`], against any broker URL (another node, another
    /// user).
    pub fn start_with_url(url: &str, env: &[(&str, &str)]) -> WorkerProcess {
        WorkerProcess::launch(url, env, None)
    }

    /// Like [`WorkerProcess::start`], but the binary runs under `prlimit --as=BYTES`: an
    /// allocation beyond that address space fails and the worker aborts, instead of a
    /// runaway worker taking the machine's memory.
    pub fn start_with_address_space_limit(
        vhost: &TestVhost,
        env: &[(&str, &str)],
        bytes: u64,
    ) -> WorkerProcess {
        WorkerProcess::launch(&vhost.url(), env, Some(bytes))
    }

    fn launch(url: &str, env: &[(&str, &str)], address_space: Option<u64>) -> WorkerProcess {
        let binary = env!("CARGO_BIN_EXE_webhook-normalizer");
        // prlimit sets the limit and execs the binary: the child's pid is the worker's.
        let mut command = match address_space {
            Some(bytes) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--as={bytes}")).arg("--").arg(binary);
                c
            }
            None => Command::new(binary),
        };
        command
            .arg("run")
            .env("NORMALIZER__AMQP__URL", url)
            .env("NORMALIZER__HTTP__LISTEN", "127.0.0.1:0")
            .env("NORMALIZER__LOG__FORMAT", "json")
            .env("NORMALIZER__AMQP__RECONNECT_INITIAL_MS", "100")
            .env("NORMALIZER__AMQP__RECONNECT_MAX_MS", "1000")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("worker starts");
        let stderr = child.stderr.take().expect("stderr");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        {
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
                    logs.lock().unwrap().push(line);
                }
            });
        }
        let health = addr_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("worker logs its health address");
        WorkerProcess {
            child,
            health,
            logs,
        }
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

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
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

    /// Waits for the process to exit; its exit code (None when killed by a signal).
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
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

pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return (0, String::new());
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Polls `check` every 50 ms until it holds; fails the test after `within`.
pub fn wait_until(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A raw webhook as a gateway publishes it.
#[derive(Clone, Debug)]
pub struct RawWebhook {
    pub body: Vec<u8>,
    pub vendor: Option<&'static str>,
    pub message_id: String,
}

impl RawWebhook {
    pub fn new(body: Vec<u8>, vendor: Option<&'static str>, message_id: impl Into<String>) -> Self {
        RawWebhook {
            body,
            vendor,
            message_id: message_id.into(),
        }
    }
}

/// The receipt time every test webhook carries in `x-received-at`.
pub const RECEIVED_AT: &str = "2026-01-02T03:04:05Z";

/// The properties a gateway gives a raw webhook: its message id, JSON content type,
/// persistent, and headers `x-received-at`, `x-gateway` and (when known) `x-vendor`.
pub fn raw_properties(w: &RawWebhook) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        "x-received-at".into(),
        AMQPValue::LongString(RECEIVED_AT.into()),
    );
    headers.insert(
        "x-gateway".into(),
        AMQPValue::LongString("test-gateway".into()),
    );
    if let Some(vendor) = w.vendor {
        headers.insert("x-vendor".into(), AMQPValue::LongString(vendor.into()));
    }
    BasicProperties::default()
        .with_message_id(w.message_id.as_str().into())
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_headers(headers)
}

/// Publishes raw webhooks to `webhooks.raw` (routing key `gateway`, vendor in `x-vendor`)
/// with confirms, as a gateway would.
pub async fn publish_raw(channel: &Channel, webhooks: &[RawWebhook]) {
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let mut confirms = Vec::new();
    for w in webhooks {
        confirms.push(
            channel
                .basic_publish(
                    "webhooks.raw".into(),
                    "gateway".into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &w.body,
                    raw_properties(w),
                )
                .await
                .expect("publish"),
        );
    }
    for c in confirms {
        let confirmation = c.await.expect("confirm");
        assert!(confirmation.is_ack(), "raw publish not acked");
        assert!(
            confirmation.take_message().is_none(),
            "raw publish returned: no topology?"
        );
    }
}

/// Publishes one message with exactly `properties` (for unusual ones: `user_id`,
/// `expiration`, huge headers), mandatory and confirmed; fails unless acked and routed.
pub async fn publish_raw_with(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) {
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let confirmation = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            body,
            properties,
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(confirmation.is_ack(), "publish to {exchange} not acked");
    assert!(
        confirmation.take_message().is_none(),
        "publish to {exchange} returned: no topology?"
    );
}

/// Declares a queue bound to `exchange` with `key`, for a test to read from.
pub async fn capture_queue(channel: &Channel, name: &str, exchange: &str, key: &str) {
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare capture queue");
    channel
        .queue_bind(
            name.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind capture queue");
}

/// Ready messages in a queue (not counting unacknowledged ones).
pub async fn queue_depth(channel: &Channel, name: &str) -> u32 {
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive declare")
        .message_count()
}

/// A consumer that takes messages off `queue` as they arrive (no acks to send).
pub async fn take_from(channel: &Channel, queue: &str) -> lapin::Consumer {
    channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume")
}

/// Reads `count` messages from `queue`, failing after `within`.
pub async fn read_messages(
    channel: &Channel,
    queue: &str,
    count: usize,
    within: Duration,
) -> Vec<Delivery> {
    let mut consumer = take_from(channel, queue).await;
    let mut out = Vec::with_capacity(count);
    let deadline = tokio::time::Instant::now() + within;
    while out.len() < count {
        match tokio::time::timeout_at(deadline, consumer.next()).await {
            Ok(Some(Ok(d))) => out.push(d),
            Ok(other) => panic!("consumer of {queue} ended: {other:?}"),
            Err(_) => panic!(
                "only {} of {count} messages arrived on {queue} within {within:?}",
                out.len()
            ),
        }
    }
    out
}

/// Reads whatever arrives on `queue` until it has been quiet for `quiet`.
pub async fn read_until_quiet(channel: &Channel, queue: &str, quiet: Duration) -> Vec<Delivery> {
    let mut consumer = take_from(channel, queue).await;
    let mut out = Vec::new();
    while let Ok(Some(Ok(d))) = tokio::time::timeout(quiet, consumer.next()).await {
        out.push(d);
    }
    out
}

/// A header's text value.
pub fn header(d: &Delivery, name: &str) -> Option<String> {
    match d.properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// Every fixture with the vendor its folder names (`unknown/` has none).
pub fn fixture_webhooks() -> Vec<RawWebhook> {
    let mut out = Vec::new();
    for (dir, vendor) in [
        ("entuitive", Some("entuitive")),
        ("authenticate", Some("authenticate")),
        ("deel", Some("deel")),
        ("unknown", None),
    ] {
        let mut paths: Vec<_> = std::fs::read_dir(fixtures_dir().join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        paths.sort();
        for p in paths {
            let id = format!("{dir}/{}", p.file_name().unwrap().to_string_lossy());
            out.push(RawWebhook::new(std::fs::read(&p).unwrap(), vendor, id));
        }
    }
    out
}

/// `n` distinct webhooks, a mix of all three vendors, every 20th one not normalizable.
pub fn webhook_mix(n: usize, tag: &str) -> Vec<RawWebhook> {
    let read = |p: &str| -> Value {
        serde_json::from_slice(&std::fs::read(fixtures_dir().join(p)).unwrap()).unwrap()
    };
    let deel = read("deel/contract.status.updated.json");
    let deel_fan = read("deel/timesheet.reviewed__two_items.json");
    let auth = read("authenticate/CRIMINAL_REQUEST_STATUS_UPDATE__realistic.json");
    let ent = read("entuitive/user.created__ids_as_strings.json");
    (0..n)
        .map(|i| {
            let (body, vendor) = match i % 20 {
                19 => (serde_json::json!({"event_type": "user.password_reset", "data": {"email": format!("{tag}-{i}@example.com")}}), Some("entuitive")),
                k if k % 4 == 0 => {
                    let mut b = deel.clone();
                    b["data"]["resource"]["id"] = format!("{tag}-{i}").into();
                    (b, Some("deel"))
                }
                k if k % 4 == 1 => {
                    let mut b = auth.clone();
                    b["id"] = format!("{tag}-{i}").into();
                    (b, None)
                }
                k if k % 4 == 2 => {
                    let mut b = ent.clone();
                    b["data"]["email"] = format!("{tag}-{i}@example.com").into();
                    (b, Some("entuitive"))
                }
                _ => {
                    let mut b = deel_fan.clone();
                    b["data"]["resource"][0]["id"] = format!("{tag}-{i}-a").into();
                    b["data"]["resource"][1]["id"] = format!("{tag}-{i}-b").into();
                    (b, Some("deel"))
                }
            };
            RawWebhook::new(serde_json::to_vec(&body).unwrap(), vendor, format!("{tag}-{i}"))
        })
        .collect()
}

/// What the library says should come out of one raw webhook.
pub fn expected(w: &RawWebhook) -> Result<Vec<CanonicalEvent>, NormalizeError> {
    let at: DateTime<Utc> = DateTime::parse_from_rfc3339(RECEIVED_AT)
        .unwrap()
        .with_timezone(&Utc);
    normalize(&w.body, w.vendor, at, &Limits::default())
}

/// Per input: the event ids it must produce, or the dead-letter routing key it must get.
#[derive(Default)]
pub struct Expectations {
    pub event_ids: BTreeSet<String>,
    pub dead_letters: BTreeMap<String, String>,
}

pub fn expectations(webhooks: &[RawWebhook]) -> Expectations {
    let mut e = Expectations::default();
    for w in webhooks {
        match expected(w) {
            Ok(events) => e
                .event_ids
                .extend(events.iter().map(|ev| ev.id.to_string())),
            Err(err) => {
                let key = format!(
                    "{}.{}",
                    err.vendor().map_or("unknown", |v| v.key()),
                    err.kind()
                );
                e.dead_letters.insert(w.message_id.clone(), key);
            }
        }
    }
    e
}

/// Reads every event and dead letter that arrives until both queues are quiet, and
/// checks each input is accounted for: all its ids among the events, or a dead letter
/// with its routing key. Duplicates are allowed (at-least-once), losses are not.
pub async fn assert_nothing_lost(channel: &Channel, webhooks: &[RawWebhook]) {
    let want = expectations(webhooks);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut event_ids = BTreeSet::new();
    let mut dead = BTreeMap::new();
    while std::time::Instant::now() < deadline
        && (!want.event_ids.is_subset(&event_ids) || dead.len() < want.dead_letters.len())
    {
        for d in read_until_quiet(channel, "test.events", Duration::from_millis(300)).await {
            event_ids.insert(d.properties.message_id().as_ref().unwrap().to_string());
        }
        for d in read_until_quiet(
            channel,
            "normalizer.dead-letter",
            Duration::from_millis(100),
        )
        .await
        {
            dead.insert(
                d.properties.message_id().as_ref().unwrap().to_string(),
                d.routing_key.to_string(),
            );
        }
    }
    let missing: Vec<_> = want.event_ids.difference(&event_ids).take(5).collect();
    assert!(
        missing.is_empty(),
        "{} event ids missing, e.g. {missing:?}",
        want.event_ids.difference(&event_ids).count()
    );
    assert_eq!(dead, want.dead_letters, "dead letters");
    let unexpected: Vec<_> = event_ids.difference(&want.event_ids).take(5).collect();
    assert!(unexpected.is_empty(), "unexpected events {unexpected:?}");
    assert_eq!(queue_depth(channel, "normalizer.raw").await, 0);
}

pub async fn setup(vhost: &TestVhost) -> (lapin::Connection, Channel) {
    let conn = vhost.connect().await;
    let channel = conn.create_channel().await.unwrap();
    capture_queue(&channel, "test.events", "events.canonical", "#").await;
    (conn, channel)
}

/// Topology only, by the `topology` command, so raw messages can be queued before any
/// worker runs.
pub fn declare_topology(vhost: &TestVhost) {
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_webhook-normalizer"))
        .arg("topology")
        .env("NORMALIZER__AMQP__URL", vhost.url())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
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

/// Whether a JSON key names an e-mail address or a person's name.
fn is_personal_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key == "email"
        || key.ends_with("_email")
        || matches!(
            key.as_str(),
            "first_name" | "middle_name" | "last_name" | "fname" | "lname" | "name" | "full_name"
        )
}

/// Every e-mail address and person name in `tests/fixtures/**.json`: the string values
/// (or strings in array values) of keys such as `email`, `*_email`, `first_name`,
/// `last_name`, `fname`, `lname`, `name`, `full_name`, at least 4 characters long and
/// with a letter; deduplicated. Files that are not JSON are skipped.
pub fn personal_data_in_fixtures() -> Vec<String> {
    fn strings(v: &Value, out: &mut BTreeSet<String>) {
        match v {
            Value::String(s) if s.chars().count() >= 4 && s.chars().any(char::is_alphabetic) => {
                out.insert(s.clone());
            }
            Value::Array(items) => items.iter().for_each(|i| strings(i, out)),
            _ => {}
        }
    }
    fn walk(v: &Value, out: &mut BTreeSet<String>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    if is_personal_key(k) {
                        strings(v, out);
                    }
                    walk(v, out);
                }
            }
            Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            _ => {}
        }
    }
    fn files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("fixtures dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                files(&path, out);
            } else if path.extension().is_some_and(|e| e == "json") {
                out.push(path);
            }
        }
    }
    let mut paths = Vec::new();
    files(&fixtures_dir(), &mut paths);
    let mut found = BTreeSet::new();
    for path in paths {
        let bytes = std::fs::read(&path).expect("fixture");
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
        if let Ok(v) = serde_json::from_slice::<Value>(bytes) {
            walk(&v, &mut found);
        }
    }
    found.into_iter().collect()
}

/// `text` as Rust's `Debug` prints a byte slice's contents (`74, 111, 104, 110`), which is
/// how lapin logs message bodies and header values.
fn debug_bytes(text: &str) -> String {
    text.bytes()
        .map(|b| b.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether `line` contains `needle` as a whole list of numbers (not inside a longer
/// number at either end).
fn contains_byte_list(line: &str, needle: &str) -> bool {
    line.match_indices(needle).any(|(at, _)| {
        let before = line[..at].chars().next_back();
        let after = line[at + needle.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_digit()) && !after.is_some_and(|c| c.is_ascii_digit())
    })
}

/// Fails if any log line contains an e-mail address or person name from the fixtures,
/// as text or as the decimal byte list lapin's `Debug` output prints bodies and headers
/// as; names the string found and shows only the start of the line.
pub fn assert_no_personal_data(logs: &[String]) {
    let personal: Vec<(String, String)> = personal_data_in_fixtures()
        .into_iter()
        .map(|p| {
            let bytes = debug_bytes(&p);
            (p, bytes)
        })
        .collect();
    assert!(
        !personal.is_empty(),
        "no personal data found in the fixtures"
    );
    for (n, line) in logs.iter().enumerate() {
        for (text, bytes) in &personal {
            let form = if line.contains(text.as_str()) {
                "as text"
            } else if contains_byte_list(line, bytes) {
                "as bytes"
            } else {
                continue;
            };
            let start: String = line.chars().take(40).collect();
            panic!(
                "personal data {text:?} ({form}) in log line {n} of {}: {start}...",
                logs.len()
            );
        }
    }
}

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

/// The first `n` characters of a text, for failure messages.
pub fn clip(text: &str, n: usize) -> String {
    text.chars().take(n).collect()
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

/// A delivery's `message_id`, or empty.
pub fn message_id(d: &Delivery) -> String {
    d.properties
        .message_id()
        .as_ref()
        .map(|id| id.to_string())
        .unwrap_or_default()
}

/// A fixture's bytes, by path under `tests/fixtures/`.
pub fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(fixtures_dir().join(path)).unwrap()
}

/// A fixture, parsed.
pub fn fixture_json(path: &str) -> Value {
    serde_json::from_slice(&fixture(path)).unwrap()
}
