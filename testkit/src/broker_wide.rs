//! Whether a test left the shared broker as it found it: its broker-wide settings read
//! before and after, and a publisher watching for alarms in between.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Connection, Event};

use crate::broker::{TestVhost, rabbitmqctl};
use crate::private_node::PrivateNode;

/// Evaluated on a node: one line `name term` per setting. Only what is the node's own
/// (memory and disk limits, alarms, cluster members, plugins, listeners) and objects
/// named with the tests' prefix `wn-` (users; the tests' vhosts come and go in
/// parallel, so they are not compared): other teams' vhosts, users, permissions,
/// policies and parameters on a shared broker are theirs to change while we run.
const READ_STATE: &str = r#"
Wn = fun(V) -> binary:match(V, <<"wn-">>) =:= {0, 3} end,
State = [
  {memory_high_watermark, vm_memory_monitor:get_vm_memory_high_watermark()},
  {memory_limit, vm_memory_monitor:get_memory_limit()},
  {disk_free_limit, rabbit_disk_monitor:get_disk_free_limit()},
  {alarms, lists:sort(rabbit_alarm:get_alarms())},
  {test_users, lists:sort([U || U <- rabbit_auth_backend_internal:list_users(), Wn(proplists:get_value(user, U))])},
  {cluster_nodes, lists:sort(rabbit_nodes:all())},
  {plugins, lists:sort(rabbit_plugins:active())},
  {listeners, lists:sort([{element(3, L), element(6, L)} || L <- rabbit_networking:active_listeners()])}
],
[io:format("~s ~ts~n", [K, io_lib:print(V, 1, 1000000, -1)]) || {K, V} <- State],
ok.
"#;

/// A broker's node-wide state: memory watermark (in the form it was set, relative or
/// absolute) and limit, disk free limit, alarms, the tests' users (`wn-…`), cluster
/// nodes, plugins, listeners; each as the broker prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerWideState(BTreeMap<String, String>);

impl BrokerWideState {
    /// Reads it (one `rabbitmqctl eval`, under a second).
    pub fn read() -> BrokerWideState {
        BrokerWideState::parse(&rabbitmqctl(&["-q", "eval", READ_STATE]))
    }

    /// The same, read on a private node.
    pub fn read_on(node: &PrivateNode) -> BrokerWideState {
        BrokerWideState::parse(&node.rabbitmqctl(&["eval", READ_STATE]))
    }

    fn parse(out: &std::process::Output) -> BrokerWideState {
        let state: BTreeMap<String, String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        assert!(
            state.contains_key("memory_high_watermark") && state.contains_key("listeners"),
            "unexpected output of the broker-wide state: {state:?}"
        );
        BrokerWideState(state)
    }

    /// The memory high watermark as the broker holds it: `0.4` (relative) or
    /// `{absolute,2000000000}`.
    pub fn memory_high_watermark(&self) -> &str {
        &self.0["memory_high_watermark"]
    }

    /// What differs from `before`: one line per setting, `name: before -> now`.
    pub fn changes_since(&self, before: &BrokerWideState) -> Vec<String> {
        let keys: std::collections::BTreeSet<&String> =
            before.0.keys().chain(self.0.keys()).collect();
        keys.into_iter()
            .filter(|k| before.0.get(*k) != self.0.get(*k))
            .map(|k| {
                let show = |s: &BrokerWideState| {
                    s.0.get(k)
                        .map_or("(none)".to_owned(), |v| crate::clip(v, 300))
                };
                format!("{k}: {} -> {}", show(before), show(self))
            })
            .collect()
    }
}

/// Watches the shared broker while a test runs: its [`BrokerWideState`] when the watch
/// starts and ends, and in between a publisher in a vhost of its own that publishes a
/// small unroutable message every 200 ms and notes each `connection.blocked` the broker
/// sends it (an alarm stops every publisher on the broker, in every vhost, for as long
/// as it lasts, even when the settings are put back afterwards).
pub struct SharedBrokerWatch {
    before: BrokerWideState,
    blocked: Arc<Mutex<Vec<String>>>,
    confirmed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    connection: Connection,
    started: Instant,
    _vhost: TestVhost,
}

impl SharedBrokerWatch {
    /// Reads the state and starts the publisher (on the caller's tokio runtime).
    pub async fn start() -> SharedBrokerWatch {
        let before = BrokerWideState::read();
        let vhost = TestVhost::new("watch");
        let connection = vhost.connect().await;
        let channel = connection.create_channel().await.expect("watch channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        let started = Instant::now();
        let blocked = Arc::new(Mutex::new(Vec::new()));
        let confirmed = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut events = connection.events_listener();
        let notes = blocked.clone();
        let listen = tokio::spawn(async move {
            while let Some(event) = events.next().await {
                if let Event::ConnectionBlocked(reason) = event {
                    notes.lock().unwrap().push(format!(
                        "at {:.1} s: publishers blocked ({reason})",
                        started.elapsed().as_secs_f64()
                    ));
                }
            }
        });
        let (count, halt) = (confirmed.clone(), stop.clone());
        let publish = tokio::spawn(async move {
            while !halt.load(Ordering::Relaxed) {
                // A blocked connection holds the publish: wait for it at most 1 s, so
                // the loop keeps publishing and is ready to stop.
                let attempt = tokio::time::timeout(Duration::from_secs(1), async {
                    channel
                        .basic_publish(
                            "".into(),
                            "wn-watch-no-such-queue".into(),
                            BasicPublishOptions::default(),
                            b"watch",
                            BasicProperties::default(),
                        )
                        .await?
                        .await
                })
                .await;
                if let Ok(Ok(confirmation)) = attempt
                    && confirmation.is_ack()
                {
                    count.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        SharedBrokerWatch {
            before,
            blocked,
            confirmed,
            stop,
            tasks: vec![listen, publish],
            connection,
            started,
            _vhost: vhost,
        }
    }

    /// Stops watching and fails the test if the broker's publishers were blocked at any
    /// time, or its broker-wide state is not what it was at the start. Either may also
    /// be another process's doing (anything that shares the broker); the message says
    /// what changed.
    pub async fn assert_untouched(self) {
        // At least one publish after the test's last action, to catch what it left.
        let at_end = self.confirmed.load(Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(3);
        while self.confirmed.load(Ordering::Relaxed) == at_end && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.stop.store(true, Ordering::Relaxed);
        for task in &self.tasks {
            task.abort();
        }
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            self.connection.close(200, "watch over".into()),
        )
        .await;
        let after = BrokerWideState::read();
        let blocked = self.blocked.lock().unwrap().clone();
        let changes = after.changes_since(&self.before);
        let confirmed = self.confirmed.load(Ordering::Relaxed);
        assert!(
            blocked.is_empty() && changes.is_empty(),
            "the shared broker was disturbed while this test ran ({:.0} s; by it, or by \
             another process using the broker):\n  blocked: {blocked:?}\n  changed: {changes:#?}",
            self.started.elapsed().as_secs_f64()
        );
        assert!(
            confirmed > at_end,
            "the watch's publisher had no publish confirmed after the test ({confirmed} in \
             all): it could not have seen a block"
        );
    }
}
