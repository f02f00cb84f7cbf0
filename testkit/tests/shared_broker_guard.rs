//! The guard of the chaos tests ([`BrokerWideState`]) tells what a test may not leave
//! changed (a node-wide setting, a user of the tests' own) from what other teams on a
//! shared broker change while we run (their vhosts, users, policies, parameters).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use testkit::{BrokerWideState, PrivateNode, rabbitmqctl};

/// Another team's vhosts, with a policy and a parameter each, created and deleted on
/// the shared broker all the while the guard reads it: the guard sees no change.
#[test]
fn other_teams_vhosts_coming_and_going_are_not_a_change() {
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let vhost = format!("other-team-{}-{n}", std::process::id());
                rabbitmqctl(&["-q", "add_vhost", &vhost]);
                rabbitmqctl(&[
                    "-q",
                    "set_policy",
                    "-p",
                    &vhost,
                    "ttl",
                    "^x$",
                    r#"{"message-ttl":1000}"#,
                ]);
                rabbitmqctl(&[
                    "-q",
                    "set_vhost_limits",
                    "-p",
                    &vhost,
                    r#"{"max-queues":5}"#,
                ]);
                if n % 2 == 1 {
                    // Every other one is still there when the guard reads again.
                    rabbitmqctl(&["-q", "delete_vhost", &vhost]);
                }
                n += 1;
            }
            n
        })
    };
    let before = BrokerWideState::read();
    std::thread::sleep(std::time::Duration::from_secs(3));
    let after = BrokerWideState::read();
    stop.store(true, Ordering::Relaxed);
    let made = churn.join().unwrap();
    for n in (0..made).step_by(2) {
        let vhost = format!("other-team-{}-{n}", std::process::id());
        rabbitmqctl(&["-q", "delete_vhost", &vhost]);
    }
    assert!(made >= 2, "the churn made {made} vhosts");
    assert_eq!(after.changes_since(&before), Vec::<String>::new());
}

/// On a private node (users and limits are broker-wide): another team's user is not a
/// change; a user of the tests' own left behind, a changed disk limit and a raised
/// alarm are.
#[test]
fn what_a_test_may_not_leave_changed_is_seen() {
    let node = PrivateNode::start();
    let before = BrokerWideState::read_on(&node);
    node.rabbitmqctl(&["add_user", "other-team", "secret-of-theirs"]);
    assert_eq!(
        BrokerWideState::read_on(&node).changes_since(&before),
        Vec::<String>::new()
    );

    node.rabbitmqctl(&["add_user", "wn-left-behind", "x"]);
    node.rabbitmqctl(&["set_disk_free_limit", "1000000000000"]);
    let mut changed: Vec<String> = BrokerWideState::read_on(&node)
        .changes_since(&before)
        .into_iter()
        .map(|line| line.split(':').next().unwrap().to_owned())
        .collect();
    changed.sort();
    // A limit above the free space raises the disk alarm within a second or so.
    assert!(
        changed.contains(&"disk_free_limit".to_owned()),
        "{changed:?}"
    );
    assert!(changed.contains(&"test_users".to_owned()), "{changed:?}");
    let alarmed = (0..50).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(200));
        BrokerWideState::read_on(&node)
            .changes_since(&before)
            .iter()
            .any(|line| line.starts_with("alarms:"))
    });
    assert!(alarmed, "a disk alarm is a change");
}
