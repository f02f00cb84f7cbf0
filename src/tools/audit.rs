//! The audit line of an operator command that moves or removes messages (`dlq replay`,
//! `dlq purge`, `unrouted replay`): who ran it, with which filters, dry run or not, and
//! what became of the matching messages. Pure but for [`Audit::emit`]; never holds a body,
//! and shows outside text (filters, user names) only as [`SafeName`]s.

use std::fmt::{self, Write as _};

use crate::redact::SafeName;

/// One run of a command that replays or purges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audit {
    /// `dlq replay`, `dlq purge`, `unrouted replay`.
    pub command: &'static str,
    /// The OS user who ran it (`USER`, else `LOGNAME`), and its uid.
    pub os_user: Option<String>,
    pub uid: u32,
    /// The AMQP user of `amqp.url` (never its password).
    pub amqp_user: Option<String>,
    pub vhost: Option<String>,
    pub queue: String,
    /// The filters and options given, in the order the command lists them.
    pub filters: Vec<(&'static str, FilterValue)>,
    pub dry_run: bool,
    pub counts: AuditCounts,
}

/// A filter's or option's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterValue {
    /// Text as the operator typed it (a message id, a routing key): shown only when it is
    /// a plain name.
    Given(String),
    /// A value the command parsed (a type pattern, a time, a number): shown.
    Parsed(String),
}

/// What became of the matching messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuditCounts {
    /// Matched the filters.
    pub matched: u64,
    /// Replayed (confirmed, taken off the queue) or purged.
    pub done: u64,
    /// Matched but refused: not replayable (no origin, replayed too often, not an input
    /// exchange, a missing exchange, routed nowhere).
    pub refused: u64,
}

impl AuditCounts {
    /// Matched and left in the queue, for whatever reason (a dry run, `--limit`, refused).
    pub fn kept(&self) -> u64 {
        self.matched.saturating_sub(self.done)
    }
}

impl Audit {
    /// `replayed` or `purged`.
    fn done_word(&self) -> &'static str {
        if self.command.ends_with("purge") {
            "purged"
        } else {
            "replayed"
        }
    }

    /// The filters, `key=value` separated by spaces (`none` without any).
    pub fn filters_text(&self) -> String {
        if self.filters.is_empty() {
            return "none".to_owned();
        }
        let mut out = String::new();
        for (key, value) in &self.filters {
            if !out.is_empty() {
                out.push(' ');
            }
            let _ = match value {
                FilterValue::Given(v) => write!(out, "{key}={}", SafeName(v).bare()),
                FilterValue::Parsed(v) => write!(out, "{key}={v}"),
            };
        }
        out
    }

    /// Logs the audit line: an info event with target `audit`, which the log writes to
    /// stderr; when the log filter leaves it out, the line is written to stderr directly,
    /// so a run that moved or removed messages always says so.
    pub fn emit(&self) {
        let shown = |v: &Option<String>| {
            v.as_deref()
                .map_or_else(|| "-".to_owned(), |v| SafeName(v).bare().to_string())
        };
        if tracing::enabled!(target: "audit", tracing::Level::INFO) {
            tracing::info!(
                target: "audit",
                command = self.command,
                os_user = %shown(&self.os_user),
                uid = self.uid,
                amqp_user = %shown(&self.amqp_user),
                vhost = %shown(&self.vhost),
                queue = %SafeName(&self.queue).bare(),
                filters = self.filters_text().as_str(),
                dry_run = self.dry_run,
                matched = self.counts.matched,
                done = self.counts.done,
                kept = self.counts.kept(),
                refused = self.counts.refused,
                "audit: {}",
                self.command
            );
        } else {
            eprintln!("{self}");
        }
    }
}

/// The line written to stderr when the log leaves the event out.
impl fmt::Display for Audit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = |v: &Option<String>| {
            v.as_deref()
                .map_or_else(|| "-".to_owned(), |v| SafeName(v).bare().to_string())
        };
        write!(
            f,
            "audit: {} os_user={} uid={} amqp_user={} vhost={} queue={} filters=\"{}\" dry_run={} matched={} {}={} kept={} refused={}",
            self.command,
            shown(&self.os_user),
            self.uid,
            shown(&self.amqp_user),
            shown(&self.vhost),
            SafeName(&self.queue).bare(),
            self.filters_text(),
            self.dry_run,
            self.counts.matched,
            self.done_word(),
            self.counts.done,
            self.counts.kept(),
            self.counts.refused
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audit() -> Audit {
        Audit {
            command: "dlq replay",
            os_user: Some("alice".into()),
            uid: 1000,
            amqp_user: Some("ops".into()),
            vhost: Some("prod".into()),
            queue: "normalizer.dead-letter".into(),
            filters: vec![
                ("vendor", FilterValue::Given("deel".into())),
                ("message_id", FilterValue::Given("jane@example.com".into())),
                (
                    "failed_before",
                    FilterValue::Parsed("2026-01-02T03:04:05Z".into()),
                ),
            ],
            dry_run: false,
            counts: AuditCounts {
                matched: 5,
                done: 3,
                refused: 1,
            },
        }
    }

    #[test]
    fn the_line_says_who_what_and_how_many_and_no_personal_data() {
        assert_eq!(
            audit().to_string(),
            "audit: dlq replay os_user=alice uid=1000 amqp_user=ops vhost=prod queue=normalizer.dead-letter filters=\"vendor=deel message_id=(not shown: 16 bytes) failed_before=2026-01-02T03:04:05Z\" dry_run=false matched=5 replayed=3 kept=2 refused=1"
        );
    }

    #[test]
    fn a_purge_says_purged_and_no_filters_say_none() {
        let mut a = audit();
        a.command = "dlq purge";
        a.filters.clear();
        a.os_user = None;
        a.counts = AuditCounts {
            matched: 2,
            done: 2,
            refused: 0,
        };
        let line = a.to_string();
        assert!(line.contains("os_user=- "), "{line}");
        assert!(
            line.contains("filters=\"none\" dry_run=false matched=2 purged=2 kept=0 refused=0"),
            "{line}"
        );
    }
}
