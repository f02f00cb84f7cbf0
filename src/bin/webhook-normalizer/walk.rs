//! What the `dlq` and `unrouted` commands share: the pace of a replay, how a failed walk
//! ends, the warnings a walk ends with, and the audit record of one that moves messages.

use std::process::ExitCode;

use webhook_normalizer::tools::audit::{Audit, AuditCounts, FilterValue};

use webhook_normalizer::config::AmqpSettings;

use crate::common::{EXIT_TEMPFAIL, EXIT_UNAVAILABLE, amqp_user_and_vhost, report};

/// How much a `replay` moves, and how fast: the same for dead letters and unrouted events.
#[derive(clap::Args)]
pub(crate) struct ReplayPace {
    /// Move at most this many.
    #[arg(long)]
    pub(crate) limit: Option<u64>,
    /// At most this many a second.
    #[arg(long, value_parser = positive_rate)]
    pub(crate) rate: Option<f64>,
    /// List and count what would be moved; move nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
}

/// The smallest `--rate`: one message every 1,000 seconds. Smaller ones are mistakes,
/// and their pause overflows a `Duration`.
const MIN_RATE: f64 = 0.001;

/// A rate: a number of messages a second, at least [`MIN_RATE`].
fn positive_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r >= MIN_RATE && r.is_finite() => Ok(r),
        _ => Err(format!(
            "must be a number of messages a second, at least {MIN_RATE}"
        )),
    }
}

/// The warnings a walk ends with: messages it could not copy byte for byte, and
/// messages it counted that another consumer took.
pub(crate) fn report_walk_warnings(summary: &webhook_normalizer::tools::walk::WalkSummary) {
    if summary.left_in_place > 0 {
        report(format_args!(
            "warning: {} could not be copied byte for byte; left in place, their delivery count rose by one (their properties as sent, with the walk's edits, would not fit the broker's frame_max or could not be walked)",
            summary.left_in_place
        ));
    }
    if summary.read < summary.at_start {
        report(format_args!(
            "warning: {} were present at the start but another consumer took them first",
            summary.at_start - summary.read
        ));
    }
}

/// Reports why a `dlq` or `unrouted` walk failed: EX_TEMPFAIL when another holds the
/// queue, EX_UNAVAILABLE otherwise.
pub(crate) fn walk_failed(e: &webhook_normalizer::tools::walk::WalkError) -> ExitCode {
    report(format_args!("error: {e}"));
    match e {
        webhook_normalizer::tools::walk::WalkError::Locked { .. } => ExitCode::from(EXIT_TEMPFAIL),
        _ => ExitCode::from(EXIT_UNAVAILABLE),
    }
}

/// An audit record of a command that moves or removes messages, with who runs it: the
/// OS user (`USER`, else `LOGNAME`) and uid, and the AMQP user.
pub(crate) fn audit(
    amqp: &AmqpSettings,
    command: &'static str,
    queue: &str,
    filters: Vec<(&'static str, FilterValue)>,
    dry_run: bool,
    counts: AuditCounts,
) -> Audit {
    let (amqp_user, vhost) = amqp_user_and_vhost(amqp);
    Audit {
        command,
        os_user: std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .ok()
            .filter(|u| !u.is_empty()),
        uid: rustix::process::getuid().as_raw(),
        amqp_user,
        vhost,
        queue: queue.to_owned(),
        filters,
        dry_run,
        counts,
    }
}
