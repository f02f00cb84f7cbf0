//! The vhosts of a test process killed by a signal (whose guards never ran) are deleted
//! by the next process to make one on the shared broker. Its own test binary, so that
//! the `TestVhost::new` below is this process's first.

use std::process::Command;

use testkit::{TestVhost, rabbitmqctl};

fn vhosts() -> Vec<String> {
    let out = rabbitmqctl(&["-q", "list_vhosts", "--no-table-headers", "name"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_owned())
        .collect()
}

#[test]
fn a_killed_runs_vhosts_are_deleted_by_the_next_run() {
    // A pid that no process has any more: a child that has exited and been reaped.
    let mut child = Command::new("true").spawn().unwrap();
    let gone = child.id();
    child.wait().unwrap();
    let stale = format!("wn-test-{gone}-0-stale");
    rabbitmqctl(&["-q", "add_vhost", &stale]);
    // A live process's vhost, which must stay.
    let live = format!("wn-test-{}-999-live", std::os::unix::process::parent_id());
    rabbitmqctl(&["-q", "add_vhost", &live]);

    let own = TestVhost::new("sweeper");
    let left = vhosts();
    rabbitmqctl(&["-q", "delete_vhost", &live]);
    assert!(!left.contains(&stale), "{stale} is still there: {left:?}");
    assert!(left.contains(&live), "a live process's vhost was deleted");
    assert!(left.contains(&own.name));
}
