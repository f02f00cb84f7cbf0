//! `webhook-normalizer unrouted …`: one walk of the unrouted queue per command.

use std::io::{self, Write};
use std::process::ExitCode;

use clap::Subcommand;
use webhook_normalizer::canonical::rfc3339_utc;
use webhook_normalizer::config::Settings;
use webhook_normalizer::tools::unrouted::stored::{Stats, TypePattern, UnroutedEvent};
use webhook_normalizer::tools::walk::Action;

use webhook_normalizer::tools::audit::{AuditCounts, FilterValue};

use crate::common::{ConfigFile, report, runtime, with_settings, write_lines, written_to_stdout};
use crate::progress::ProgressBar;
use crate::walk::{ReplayPace, audit, report_walk_warnings, walk_failed};

#[derive(Subcommand)]
pub(crate) enum UnroutedCommand {
    /// Kept events grouped by type: count, bytes, oldest and newest event time. Reads
    /// every kept event and leaves each as it was.
    Stats {
        /// Only types matching this binding pattern (`deel.contract.*`, `*.background_check.completed`, `deel.#`).
        #[arg(long = "type", value_parser = type_pattern)]
        pattern: Option<TypePattern>,
        #[command(flatten)]
        config: ConfigFile,
    },
    /// Publish kept events to the canonical exchange, as they were first published,
    /// confirmed; only then are they taken off the unrouted queue. Bind for them first:
    /// one that still nobody is bound for goes back to the unrouted queue. Prints one line
    /// per event sent: type, id, time, bytes.
    Replay {
        /// Only types matching this binding pattern (`deel.contract.*`, `*.background_check.completed`, `deel.#`);
        /// without it, every kept event.
        #[arg(long = "type", value_parser = type_pattern)]
        pattern: Option<TypePattern>,
        #[command(flatten)]
        pace: ReplayPace,
        #[command(flatten)]
        config: ConfigFile,
    },
}

fn type_pattern(s: &str) -> Result<TypePattern, String> {
    TypePattern::parse(s).map_err(|e| e.to_string())
}

/// One event: type, id, time, bytes. Ids are the worker's own (UUIDs), never personal.
fn event_line(e: &UnroutedEvent) -> String {
    format!(
        "{}\t{}\t{}\t{}",
        e.event_type,
        e.id.as_deref().unwrap_or("-"),
        e.time
            .map_or_else(|| "-".to_owned(), |t| rfc3339_utc::format(&t)),
        e.size
    )
}

/// Runs an `unrouted` command: one walk of the unrouted queue.
pub(crate) fn run(command: UnroutedCommand) -> anyhow::Result<ExitCode> {
    let (pattern, limit, rate, dry_run, stats_only, config) = match command {
        UnroutedCommand::Stats { pattern, config } => (pattern, None, None, true, true, config),
        UnroutedCommand::Replay {
            pattern,
            pace:
                ReplayPace {
                    limit,
                    rate,
                    dry_run,
                },
            config,
        } => (pattern, limit, rate, dry_run, false, config),
    };
    let mut audit_filters = Vec::new();
    if let Some(p) = &pattern {
        audit_filters.push(("type", FilterValue::Parsed(p.to_string())));
    }
    if let Some(l) = limit {
        audit_filters.push(("limit", FilterValue::Parsed(l.to_string())));
    }
    if let Some(r) = rate {
        audit_filters.push(("rate", FilterValue::Parsed(r.to_string())));
    }
    let walk = UnroutedWalk {
        pattern,
        limit,
        rate,
        dry_run,
        stats_only,
    };
    with_settings(&config, |settings| walk.run(settings, audit_filters))
}

/// What an `unrouted` command walks the queue for.
struct UnroutedWalk {
    /// Only types matching this.
    pattern: Option<TypePattern>,
    limit: Option<u64>,
    rate: Option<f64>,
    dry_run: bool,
    /// `stats`: count, move nothing.
    stats_only: bool,
}

impl UnroutedWalk {
    /// The walk, once the arguments are read and the settings loaded.
    fn run(
        self,
        settings: Settings,
        audit_filters: Vec<(&'static str, FilterValue)>,
    ) -> anyhow::Result<ExitCode> {
        let UnroutedWalk {
            pattern,
            limit,
            rate,
            dry_run,
            stats_only,
        } = self;
        let mut stats = Stats::default();
        let (mut matched, mut picked) = (0u64, 0u64);
        let mut out = io::stdout().lock();
        let mut write_failed: Option<io::Error> = None;
        let runtime = runtime()?;
        let mut bar = ProgressBar::new("unrouted events");
        let walked = runtime.block_on(webhook_normalizer::tools::unrouted::walk_unrouted(
            &settings.amqp,
            &settings.output,
            rate,
            &mut |p| bar.update(p),
            |event| {
                if pattern
                    .as_ref()
                    .is_some_and(|p| !p.matches(&event.event_type))
                {
                    return Action::Keep;
                }
                matched += 1;
                if stats_only {
                    stats.add(event);
                    return Action::Keep;
                }
                if limit.is_some_and(|l| picked >= l) || write_failed.is_some() {
                    return Action::Keep;
                }
                picked += 1;
                if let Err(e) = writeln!(out, "{}", event_line(event)) {
                    write_failed = Some(e);
                }
                if dry_run {
                    Action::Keep
                } else {
                    Action::Replay
                }
            },
        ));
        bar.finish();
        let summary = match walked {
            Ok(summary) => summary,
            Err(e) => return Ok(walk_failed(&e)),
        };
        if stats_only
            && let Err(e) = write_lines(
                &mut out,
                stats.lines(chrono::TimeDelta::seconds(
                    i64::try_from(settings.output.unrouted_max_age_secs).unwrap_or(i64::MAX),
                )),
            )
        {
            write_failed = Some(e);
        }
        if let Some(e) = write_failed {
            return written_to_stdout(Err(e));
        }
        let _ = out.flush();
        let (queue, exchange) = (&settings.output.unrouted_queue, &settings.output.exchange);
        let read = summary.read;
        if stats_only {
            report(format_args!(
                "{read} events read in {queue}, {matched} matched; each left as it was"
            ));
        } else if dry_run {
            report(format_args!(
                "dry run: {picked} of {matched} matching events would be sent to {exchange} ({read} read in {queue}); nothing moved"
            ));
        } else {
            report(format_args!(
                "{} sent to {exchange}, confirmed and taken off {queue} ({matched} matched, {read} read); those still unbound are back at the tail of {queue}",
                summary.replayed
            ));
        }
        if !stats_only {
            audit(
                &settings.amqp,
                "unrouted replay",
                queue,
                audit_filters,
                dry_run,
                AuditCounts {
                    matched,
                    done: summary.replayed,
                    // Still bound for by nobody: back at the tail.
                    refused: summary.unroutable
                        + summary.not_allowed
                        + summary.missing_exchanges.values().sum::<u64>(),
                },
            )
            .emit();
        }
        if summary.expired > 0 {
            report(format_args!(
                "{} were older than output.unrouted_max_age_secs: not kept (the broker drops those)",
                summary.expired
            ));
        }
        report_walk_warnings(&summary);
        Ok(ExitCode::SUCCESS)
    }
}
