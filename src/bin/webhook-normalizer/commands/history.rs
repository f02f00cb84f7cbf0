//! `webhook-normalizer history …`: reads of the event history's stream, which take
//! nothing from it.

use std::io::{self, IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use webhook_normalizer::canonical::rfc3339_utc;
use webhook_normalizer::config::Settings;
use webhook_normalizer::tools::audit::{AuditCounts, FilterValue};
use webhook_normalizer::tools::history::{
    HistoryEvent, HistoryReader, HistoryStats, Replay, ReplayError, Window, parse_time,
    replay_history,
};
use webhook_normalizer::tools::unrouted::stored::TypePattern;

use crate::common::{
    ConfigFile, EXIT_UNAVAILABLE, EXIT_USAGE, report, runtime, with_settings, write_lines,
    written_to_stdout,
};
use crate::walk::{ReplayPace, audit};

/// A read ends once nothing has come from the stream for this long: the end of what it
/// holds (RabbitMQ 3.10 says nothing of a stream's end over AMQP 0-9-1).
pub(crate) const QUIET: Duration = Duration::from_secs(2);

#[derive(Subcommand)]
pub(crate) enum HistoryCommand {
    /// Events in the history by type: events, how many a team took and how many nobody
    /// was bound for, bytes, first and last kept. Reads the window; takes nothing.
    Stats {
        /// Only types matching this binding pattern (`deel.contract.*`, `*.background_check.completed`, `deel.#`).
        #[arg(long = "type", value_parser = type_pattern)]
        pattern: Option<TypePattern>,
        #[command(flatten)]
        window: WindowArgs,
        #[command(flatten)]
        config: ConfigFile,
    },
    /// Copy the events of the types matching `--type`, kept in the window, into a team's
    /// queue, in the order they were kept: same id, body and properties as the worker
    /// first published them, each confirmed. Takes nothing from the history; the team
    /// deduplicates on the id. Prints one line per event: type, id, time kept, bytes.
    Replay {
        /// The types to copy: a binding pattern (`deel.contract.*`, `deel.#`, `#` for all).
        #[arg(long = "type", value_parser = type_pattern)]
        pattern: TypePattern,
        /// The team's queue (declared and bound by the team); copies go through the
        /// default exchange, to it alone.
        #[arg(long = "to-queue", value_name = "QUEUE")]
        to_queue: String,
        #[command(flatten)]
        window: WindowArgs,
        #[command(flatten)]
        pace: ReplayPace,
        #[command(flatten)]
        config: ConfigFile,
    },
}

/// The events a command reads: by when the worker kept them (`x-normalizer-kept-at`).
#[derive(Args)]
pub(crate) struct WindowArgs {
    /// From this time: RFC 3339 (`2026-12-01T10:00:00Z`) or a span before now (`90s`,
    /// `10m`, `2h`, `7d`). Default: the oldest event the history holds.
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Until this time, in the same forms. Default: now, when the command starts.
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
}

impl WindowArgs {
    fn window(&self, now: DateTime<Utc>) -> Result<Window, String> {
        let time = |flag: &str, text: &Option<String>| {
            text.as_deref()
                .map(|t| parse_time(t, now).map_err(|e| format!("--{flag}: {e}")))
                .transpose()
        };
        let since = time("since", &self.since)?;
        let until = time("until", &self.until)?.unwrap_or(now);
        if since.is_some_and(|s| s > until) {
            return Err("--since is after --until: the window holds nothing".to_owned());
        }
        Ok(Window { since, until })
    }

    fn filters(&self) -> Vec<(&'static str, FilterValue)> {
        let mut filters = Vec::new();
        if let Some(s) = &self.since {
            filters.push(("since", FilterValue::Parsed(s.clone())));
        }
        if let Some(u) = &self.until {
            filters.push(("until", FilterValue::Parsed(u.clone())));
        }
        filters
    }
}

fn type_pattern(s: &str) -> Result<TypePattern, String> {
    TypePattern::parse(s).map_err(|e| e.to_string())
}

/// One event: type, id, time kept, bytes. Ids are the worker's own (UUIDs), never
/// personal.
fn event_line(e: &HistoryEvent) -> String {
    format!(
        "{}\t{}\t{}\t{}",
        e.event_type,
        e.id.as_deref().unwrap_or("-"),
        e.kept_at
            .map_or_else(|| "-".to_owned(), |t| rfc3339_utc::format(&t)),
        e.size
    )
}

pub(crate) fn run(command: HistoryCommand) -> anyhow::Result<ExitCode> {
    match command {
        HistoryCommand::Stats {
            pattern,
            window,
            config,
        } => with_settings(&config, |settings| stats(&settings, pattern, &window)),
        HistoryCommand::Replay {
            pattern,
            to_queue,
            window,
            pace,
            config,
        } => with_settings(&config, |settings| {
            replay(&settings, &pattern, &to_queue, &window, &pace)
        }),
    }
}

/// The window, or the exit for a bad one (EX_USAGE).
fn window_or_exit(window: &WindowArgs) -> Result<Window, ExitCode> {
    window.window(Utc::now()).map_err(|e| {
        report(format_args!("error: {e}"));
        ExitCode::from(EXIT_USAGE)
    })
}

/// Reports a failed read: with a hint where the stream is missing.
fn read_failed(settings: &Settings, e: &dyn std::fmt::Display, not_found: bool) -> ExitCode {
    report(format_args!("error: {e}"));
    if not_found {
        report(format_args!(
            "the history stream {} does not exist: the worker declares it with history.enabled = true (docs/operations.md, \"Event history\")",
            settings.history.stream
        ));
    }
    ExitCode::from(EXIT_UNAVAILABLE)
}

fn stats(
    settings: &Settings,
    pattern: Option<TypePattern>,
    window: &WindowArgs,
) -> anyhow::Result<ExitCode> {
    let window = match window_or_exit(window) {
        Ok(w) => w,
        Err(code) => return Ok(code),
    };
    let mut stats = HistoryStats::default();
    let mut progress = Progress::new(window);
    let read = runtime()?.block_on(async {
        let mut reader =
            HistoryReader::open(&settings.amqp, &settings.history.stream, window, QUIET).await?;
        let mut matched = 0u64;
        while let Some((event, _)) = reader.next().await? {
            progress.update(&event);
            if pattern
                .as_ref()
                .is_none_or(|p| p.matches(&event.event_type))
            {
                matched += 1;
                stats.add(&event);
            }
        }
        let read = reader.read;
        reader.close().await;
        Ok::<_, webhook_normalizer::amqp::BrokerError>((read, matched))
    });
    progress.finish();
    let (read, matched) = match read {
        Ok(counts) => counts,
        Err(e) => return Ok(read_failed(settings, &e, e.is_not_found())),
    };
    let written = write_lines(&mut io::stdout().lock(), stats.lines());
    report(format_args!(
        "{read} entries read in {}, {matched} events matched; the stream is as it was",
        settings.history.stream
    ));
    written_to_stdout(written)
}

fn replay(
    settings: &Settings,
    pattern: &TypePattern,
    to_queue: &str,
    window_args: &WindowArgs,
    pace: &ReplayPace,
) -> anyhow::Result<ExitCode> {
    let window = match window_or_exit(window_args) {
        Ok(w) => w,
        Err(code) => return Ok(code),
    };
    let mut out = io::stdout().lock();
    let mut write_failed: Option<io::Error> = None;
    let mut progress = Progress::new(window);
    let replayed = runtime()?.block_on(replay_history(
        &settings.amqp,
        &settings.history.stream,
        window,
        QUIET,
        Replay {
            to_queue,
            pattern: Some(pattern),
            limit: pace.limit,
            per_second: pace.rate,
            dry_run: pace.dry_run,
        },
        &mut |event| {
            progress.update(event);
            if write_failed.is_none()
                && let Err(e) = writeln!(out, "{}", event_line(event))
            {
                write_failed = Some(e);
            }
        },
    ));
    progress.finish();
    let _ = out.flush();
    let mut filters = vec![("type", FilterValue::Parsed(pattern.to_string()))];
    filters.extend(window_args.filters());
    if let Some(l) = pace.limit {
        filters.push(("limit", FilterValue::Parsed(l.to_string())));
    }
    if let Some(r) = pace.rate {
        filters.push(("rate", FilterValue::Parsed(r.to_string())));
    }
    let stream = &settings.history.stream;
    // The audit line of a replay that copied (or tried to): what it was asked, what it did.
    let audit_replay = |counts: AuditCounts| {
        audit(
            &settings.amqp,
            "history replay",
            to_queue,
            filters.clone(),
            false,
            counts,
        )
        .emit();
    };
    let summary = match replayed {
        Ok(summary) => summary,
        Err(e) => {
            let (sent, not_found) = match &e {
                ReplayError::Refused { sent, .. } => (*sent, false),
                ReplayError::Broker(b) => (0, b.is_not_found()),
                ReplayError::NoQueue(_) => (0, false),
            };
            if !pace.dry_run {
                audit_replay(AuditCounts {
                    matched: sent,
                    done: sent,
                    refused: 1,
                });
            }
            return Ok(read_failed(settings, &e, not_found));
        }
    };
    if let Some(e) = write_failed {
        return written_to_stdout(Err(e));
    }
    if pace.dry_run {
        report(format_args!(
            "dry run: {} of {} matching events would be copied to {to_queue} ({} read in {stream}); nothing copied",
            summary.sent, summary.matched, summary.read
        ));
    } else {
        report(format_args!(
            "{} copied to {to_queue} and confirmed ({} matched, {} read in {stream}); the stream is as it was",
            summary.sent, summary.matched, summary.read
        ));
        audit_replay(AuditCounts {
            matched: summary.matched,
            done: summary.sent,
            refused: 0,
        });
    }
    Ok(ExitCode::SUCCESS)
}

/// A bar over the window's time on a terminal: how far through it the read is, by when
/// the event at hand was kept.
struct Progress {
    window: Window,
    bar: Option<indicatif::ProgressBar>,
    on_terminal: bool,
}

impl Progress {
    fn new(window: Window) -> Progress {
        Progress {
            window,
            bar: None,
            on_terminal: io::stderr().is_terminal(),
        }
    }

    fn update(&mut self, event: &HistoryEvent) {
        let Some(kept) = event.kept_at else { return };
        if !self.on_terminal {
            return;
        }
        let since = *self.window.since.get_or_insert(kept);
        let whole = (self.window.until - since).num_seconds().max(1);
        let bar = self.bar.get_or_insert_with(|| {
            let bar = indicatif::ProgressBar::with_draw_target(
                Some(u64::try_from(whole).unwrap_or(1)),
                indicatif::ProgressDrawTarget::stderr(),
            );
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{wide_bar} {percent}% of the window, at {msg}",
            ) {
                bar.set_style(style);
            }
            bar
        });
        bar.set_position(u64::try_from((kept - since).num_seconds().clamp(0, whole)).unwrap_or(0));
        bar.set_message(rfc3339_utc::format(&kept));
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
