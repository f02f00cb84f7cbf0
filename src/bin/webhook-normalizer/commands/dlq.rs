//! `webhook-normalizer dlq …`: one walk of the dead-letter queue per command.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::Subcommand;

use webhook_normalizer::canonical::Vendor;
use webhook_normalizer::config::Settings;
use webhook_normalizer::tools::dlq::stored::{self, Filter, NotReplayable, Stats};

use webhook_normalizer::canonical::rfc3339_utc;
use webhook_normalizer::tools::audit::{AuditCounts, FilterValue};

use crate::common::{
    ConfigFile, parse_rfc3339, report, runtime, with_settings, write_lines, written_to_stdout,
};
use crate::progress::ProgressBar;
use crate::walk::{ReplayPace, audit, report_walk_warnings, walk_failed};

#[derive(Subcommand)]
pub(crate) enum DlqCommand {
    /// Dead letters grouped by vendor and error kind: count, oldest, newest, the most
    /// common detail. Reads every dead letter and leaves each as it was.
    Stats {
        #[command(flatten)]
        filter: DlqFilter,
        #[command(flatten)]
        config: ConfigFile,
    },
    /// One line per dead letter: age, vendor, kind, where it was published, size,
    /// message id, detail. Reads every dead letter and leaves each as it was.
    Peek {
        /// Print at most this many.
        #[arg(long)]
        limit: Option<u64>,
        /// Also print each body (as JSON text). Bodies hold personal data.
        #[arg(long)]
        show_body: bool,
        #[command(flatten)]
        filter: DlqFilter,
        #[command(flatten)]
        config: ConfigFile,
    },
    /// Publish matching dead letters to where their raw messages were first published,
    /// as they were then, confirmed; only then are they taken off the dead-letter queue.
    /// The others stay as they were. Prints one line per message replayed.
    Replay {
        #[command(flatten)]
        pace: ReplayPace,
        /// Replay even those replayed `dead_letter.max_replays` times already.
        #[arg(long)]
        ignore_replay_limit: bool,
        /// Send them back as this vendor's (entuitive, authenticate, deel): the
        /// `x-vendor` header set to it, for raw messages a gateway hinted wrongly.
        #[arg(long, value_name = "VENDOR")]
        as_vendor: Option<Vendor>,
        #[command(flatten)]
        filter: DlqFilter,
        #[command(flatten)]
        config: ConfigFile,
    },
    /// Write matching dead letters to FILE as JSON Lines (what they are, their routing key
    /// and properties, the body in base64), leaving each as it was. FILE must not exist.
    Export {
        /// The JSON Lines file to write; it must not exist yet.
        file: PathBuf,
        #[command(flatten)]
        filter: DlqFilter,
        #[command(flatten)]
        config: ConfigFile,
    },
    /// Remove matching dead letters for good. Needs --yes; export them first.
    Purge {
        /// Yes, remove them.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        filter: DlqFilter,
        #[command(flatten)]
        config: ConfigFile,
    },
}

/// Which dead letters a `dlq` command acts on; all that are given must match.
#[derive(clap::Args)]
pub(crate) struct DlqFilter {
    /// A vendor key, or `unknown`.
    #[arg(long)]
    vendor: Option<String>,
    /// An error kind (`invalid_json`, …) or `delivery_limit`.
    #[arg(long)]
    kind: Option<String>,
    /// The raw message's `message_id`.
    #[arg(long)]
    message_id: Option<String>,
    /// Dead-lettered before this time (RFC 3339).
    #[arg(long, value_parser = parse_rfc3339)]
    failed_before: Option<DateTime<Utc>>,
    /// Dead-lettered after this time (RFC 3339).
    #[arg(long, value_parser = parse_rfc3339)]
    failed_after: Option<DateTime<Utc>>,
    /// The routing key the raw message was published with.
    #[arg(long)]
    routing_key: Option<String>,
}

impl From<DlqFilter> for Filter {
    fn from(f: DlqFilter) -> Filter {
        Filter {
            vendor: f.vendor,
            kind: f.kind,
            message_id: f.message_id,
            failed_before: f.failed_before,
            failed_after: f.failed_after,
            routing_key: f.routing_key,
        }
    }
}

/// What a `dlq` command does with each matching dead letter.
enum DlqMode {
    Stats,
    Peek {
        show_body: bool,
    },
    Replay {
        dry_run: bool,
        ignore_replay_limit: bool,
        as_vendor: Option<Vendor>,
    },
    Export {
        file: PathBuf,
    },
    Purge,
}

/// Runs a `dlq` command: one walk of the dead-letter queue.
pub(crate) fn run(command: DlqCommand) -> anyhow::Result<ExitCode> {
    let (mode, filter, limit, rate, config) = match command {
        DlqCommand::Stats { filter, config } => (DlqMode::Stats, filter, None, None, config),
        DlqCommand::Peek {
            limit,
            show_body,
            filter,
            config,
        } => (DlqMode::Peek { show_body }, filter, limit, None, config),
        DlqCommand::Replay {
            pace:
                ReplayPace {
                    limit,
                    rate,
                    dry_run,
                },
            ignore_replay_limit,
            as_vendor,
            filter,
            config,
        } => (
            DlqMode::Replay {
                dry_run,
                ignore_replay_limit,
                as_vendor,
            },
            filter,
            limit,
            rate,
            config,
        ),
        DlqCommand::Export {
            file,
            filter,
            config,
        } => (DlqMode::Export { file }, filter, None, None, config),
        DlqCommand::Purge {
            yes,
            filter,
            config,
        } => {
            if !yes {
                report(format_args!(
                    "error: dlq purge removes dead letters for good and needs --yes; keep a copy first with `dlq export FILE` and the same filters"
                ));
                return Ok(ExitCode::from(2));
            }
            (DlqMode::Purge, filter, None, None, config)
        }
    };
    let filter: Filter = filter.into();
    let mut audit_filters = filter_list(&filter);
    if let DlqMode::Replay {
        ignore_replay_limit,
        as_vendor,
        ..
    } = &mode
    {
        if *ignore_replay_limit {
            audit_filters.push(("ignore_replay_limit", FilterValue::Parsed("true".into())));
        }
        if let Some(v) = as_vendor {
            audit_filters.push(("as_vendor", FilterValue::Parsed(v.key().into())));
        }
    }
    if let Some(l) = limit {
        audit_filters.push(("limit", FilterValue::Parsed(l.to_string())));
    }
    if let Some(r) = rate {
        audit_filters.push(("rate", FilterValue::Parsed(r.to_string())));
    }
    with_settings(&config, |settings| {
        walk(settings, mode, filter, limit, rate, audit_filters)
    })
}

/// The walk of a `dlq` command, once its arguments are read and the settings loaded.
fn walk(
    settings: Settings,
    mode: DlqMode,
    filter: Filter,
    limit: Option<u64>,
    rate: Option<f64>,
    audit_filters: Vec<(&'static str, FilterValue)>,
) -> anyhow::Result<ExitCode> {
    let mut export = match &mode {
        // Bodies hold personal data: readable by its owner only (0600), whatever the umask.
        DlqMode::Export { file } => match std::os::unix::fs::OpenOptionsExt::mode(
            std::fs::OpenOptions::new().write(true).create_new(true),
            0o600,
        )
        .open(file)
        {
            Ok(f) => Some(io::BufWriter::new(f)),
            Err(e) => {
                report(format_args!("error: cannot create {}: {e}", file.display()));
                return Ok(ExitCode::FAILURE);
            }
        },
        _ => None,
    };
    let now = Utc::now();
    let replay_to = settings.replay_exchanges();
    let max_replays = u64::from(settings.dead_letter.max_replays);
    let mut not_replayable = NotReplayed::default();
    let mut stats = Stats::default();
    let mut picked = 0u64;
    let mut matched = 0u64;
    let mut out = io::stdout().lock();
    let mut write_failed: Option<io::Error> = None;
    let runtime = runtime()?;
    let mut bar = ProgressBar::new("dead letters");
    let as_vendor = match mode {
        DlqMode::Replay { as_vendor, .. } => as_vendor,
        _ => None,
    };
    let walked = runtime.block_on(webhook_normalizer::tools::dlq::walk_dead_letters(
        &settings.amqp,
        &settings.dlq(),
        rate,
        as_vendor,
        &mut |p| bar.update(p),
        |info, body, properties| {
            if !filter.matches(info) {
                return webhook_normalizer::tools::walk::Action::Keep;
            }
            matched += 1;
            if limit.is_some_and(|l| picked >= l) || write_failed.is_some() {
                return webhook_normalizer::tools::walk::Action::Keep;
            }
            if let DlqMode::Replay {
                ignore_replay_limit,
                ..
            } = mode
                && let Err(why) = info.replay_target(&replay_to, max_replays, ignore_replay_limit)
            {
                not_replayable.add(why);
                return webhook_normalizer::tools::walk::Action::Keep;
            }
            picked += 1;
            let line = match &mode {
                DlqMode::Stats => {
                    stats.add(info);
                    return webhook_normalizer::tools::walk::Action::Keep;
                }
                DlqMode::Export { .. } => {
                    let record = stored::export_record(info, body, properties);
                    if let Some(w) = export.as_mut()
                        && let Err(e) = writeln!(w, "{record}")
                    {
                        write_failed = Some(e);
                    }
                    return webhook_normalizer::tools::walk::Action::Keep;
                }
                DlqMode::Peek { show_body: true } => {
                    let body = String::from_utf8_lossy(body).into_owned();
                    format!(
                        "{}\t{}",
                        stored::peek_line(info, now),
                        serde_json::Value::String(body)
                    )
                }
                _ => stored::peek_line(info, now),
            };
            if let Err(e) = writeln!(out, "{line}") {
                write_failed = Some(e);
            }
            match mode {
                DlqMode::Replay { dry_run: false, .. } => {
                    webhook_normalizer::tools::walk::Action::Replay
                }
                DlqMode::Purge => webhook_normalizer::tools::walk::Action::Drop,
                _ => webhook_normalizer::tools::walk::Action::Keep,
            }
        },
    ));
    bar.finish();
    let summary = match walked {
        Ok(summary) => summary,
        Err(e) => return Ok(walk_failed(&e)),
    };
    if let Some(mut w) = export.take()
        && let Err(e) = w.flush()
    {
        write_failed.get_or_insert(e);
    }
    if let DlqMode::Stats = mode
        && let Err(e) = write_lines(&mut out, stored::stats_lines(&stats))
    {
        write_failed = Some(e);
    }
    if let Some(e) = write_failed {
        return written_to_stdout(Err(e));
    }
    let _ = out.flush();
    let queue = &settings.dead_letter.queue;
    let read = summary.read;
    match &mode {
        DlqMode::Stats | DlqMode::Peek { .. } => report(format_args!(
            "{read} dead letters read in {queue}, {matched} matched; each left as it was"
        )),
        DlqMode::Export { file } => report(format_args!(
            "{picked} dead letters written to {} ({matched} matched, {read} read in {queue}); each left as it was",
            file.display()
        )),
        DlqMode::Replay { dry_run: true, .. } => report(format_args!(
            "dry run: {picked} of {matched} matching dead letters would be replayed ({read} read in {queue}); nothing moved"
        )),
        DlqMode::Replay { dry_run: false, .. } => report(format_args!(
            "{} replayed, confirmed and taken off {queue} ({matched} matched, {read} read); the others left as they were",
            summary.replayed
        )),
        DlqMode::Purge => report(format_args!(
            "{} purged from {queue} ({matched} matched, {read} read); the others left as they were",
            summary.dropped
        )),
    }
    let refused = not_replayable.total()
        + summary.not_allowed
        + summary.missing_exchanges.values().sum::<u64>()
        + summary.unroutable;
    match mode {
        DlqMode::Replay { dry_run, .. } => audit(
            &settings.amqp,
            "dlq replay",
            queue,
            audit_filters,
            dry_run,
            AuditCounts {
                matched,
                done: summary.replayed,
                refused,
            },
        )
        .emit(),
        DlqMode::Purge => audit(
            &settings.amqp,
            "dlq purge",
            queue,
            audit_filters,
            false,
            AuditCounts {
                matched,
                done: summary.dropped,
                refused: 0,
            },
        )
        .emit(),
        _ => {}
    }
    not_replayable.report(max_replays, summary.not_allowed);
    for (exchange, n) in &summary.missing_exchanges {
        report(format_args!(
            "warning: {n} not replayed: the exchange {exchange:?} they name does not exist (deleted?); they stay dead letters"
        ));
    }
    if summary.unroutable > 0 {
        report(format_args!(
            "warning: {} could not be replayed (their exchange routes them nowhere); they stay dead letters",
            summary.unroutable
        ));
    }
    report_walk_warnings(&summary);
    Ok(ExitCode::SUCCESS)
}

/// The filters given, for the audit line.
fn filter_list(f: &Filter) -> Vec<(&'static str, FilterValue)> {
    let mut out = Vec::new();
    let texts = [
        ("vendor", &f.vendor),
        ("kind", &f.kind),
        ("message_id", &f.message_id),
        ("routing_key", &f.routing_key),
    ];
    for (key, value) in texts {
        if let Some(v) = value {
            out.push((key, FilterValue::Given(v.clone())));
        }
    }
    let times = [
        ("failed_before", &f.failed_before),
        ("failed_after", &f.failed_after),
    ];
    for (key, value) in times {
        if let Some(t) = value {
            out.push((key, FilterValue::Parsed(rfc3339_utc::format(t))));
        }
    }
    out
}

/// Matching dead letters `dlq replay` left where they were, and why.
#[derive(Default)]
struct NotReplayed {
    no_origin: u64,
    replayed_enough: u64,
    /// By the exchange they name.
    not_an_input: std::collections::BTreeMap<String, u64>,
}

impl NotReplayed {
    fn total(&self) -> u64 {
        self.no_origin + self.replayed_enough + self.not_an_input.values().sum::<u64>()
    }

    fn add(&mut self, why: NotReplayable) {
        match why {
            NotReplayable::NoOrigin => self.no_origin += 1,
            NotReplayable::ReplayedEnough => self.replayed_enough += 1,
            NotReplayable::NotAnInput(exchange) => {
                *self.not_an_input.entry(exchange).or_default() += 1;
            }
        }
    }

    /// One warning per reason; `refused_by_walk` were refused by the walk itself (it
    /// checks the same list).
    fn report(&self, max_replays: u64, refused_by_walk: u64) {
        if self.no_origin > 0 {
            report(format_args!(
                "warning: {} not replayed: where their raw messages were published is unknown; they stay dead letters",
                self.no_origin
            ));
        }
        if self.replayed_enough > 0 {
            report(format_args!(
                "warning: {} not replayed: replayed {max_replays} times already (dead_letter.max_replays; x-replay-count); look at why they keep failing, or replay them anyway with --ignore-replay-limit",
                self.replayed_enough
            ));
        }
        for (exchange, n) in &self.not_an_input {
            report(format_args!(
                "warning: {n} not replayed: they name the exchange {exchange:?}, which is neither input.exchange nor in dead_letter.replay_exchanges (where a dead letter came from is read from headers its raw message's publisher could write); they stay dead letters"
            ));
        }
        if refused_by_walk > 0 {
            report(format_args!(
                "warning: {refused_by_walk} not replayed: not to input.exchange or dead_letter.replay_exchanges; they stay dead letters"
            ));
        }
    }
}
