//! `webhook-normalizer trace ID`: what happened to one webhook, from the event history
//! and the dead-letter queue, leaving both as they were.

use std::io::{self, Write};
use std::process::ExitCode;

use chrono::Utc;
use webhook_normalizer::canonical::rfc3339_utc;
use webhook_normalizer::config::Settings;
use webhook_normalizer::tools::dlq::walk_dead_letters;
use webhook_normalizer::tools::history::{HistoryReader, Stored, Window, parse_time};
use webhook_normalizer::tools::trace::{dead_letter_matches, event_matches};
use webhook_normalizer::tools::walk::Action;

use crate::commands::history::QUIET;
use crate::common::{
    ConfigFile, EXIT_UNAVAILABLE, EXIT_USAGE, report, runtime, with_settings, written_to_stdout,
};
use crate::progress::ProgressBar;
use crate::walk::walk_failed;

/// The arguments of `trace` (its description is on its `Command` variant).
#[derive(clap::Args)]
pub(crate) struct TraceArgs {
    /// A raw message's `message_id`, a vendor's event id, or a canonical event's id.
    id: String,
    /// Search the history from this time: RFC 3339 or a span before now (`2h`, `7d`).
    /// A history read has no index: the wider the window, the longer it reads.
    #[arg(long, value_name = "TIME", default_value = "24h")]
    since: String,
    /// Until this time, in the same forms. Default: now.
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    #[command(flatten)]
    config: ConfigFile,
}

pub(crate) fn run(args: TraceArgs) -> anyhow::Result<ExitCode> {
    with_settings(&args.config, |settings| trace(&settings, &args))
}

/// EXIT 1, as grep: nothing found.
const EXIT_NOT_FOUND: u8 = 1;

fn trace(settings: &Settings, args: &TraceArgs) -> anyhow::Result<ExitCode> {
    let now = Utc::now();
    let window = args
        .until
        .as_deref()
        .map_or(Ok(now), |t| parse_time(t, now))
        .and_then(|until| {
            Ok(Window {
                since: Some(parse_time(&args.since, now)?),
                until,
            })
        });
    let window = match window {
        Ok(w) if w.since.is_none_or(|s| s <= w.until) => w,
        Ok(_) => {
            report(format_args!("error: --since is after --until"));
            return Ok(ExitCode::from(EXIT_USAGE));
        }
        Err(e) => {
            report(format_args!("error: {e}"));
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    let id = args.id.as_str();
    let mut out = io::stdout().lock();
    let mut lines: Vec<String> = Vec::new();
    let runtime = runtime()?;

    // The events it became, from the history.
    let (mut events, mut read) = (0u64, 0u64);
    if settings.history.enabled {
        let searched = runtime.block_on(async {
            let mut reader =
                HistoryReader::open(&settings.amqp, &settings.history.stream, window, QUIET)
                    .await?;
            while let Some((event, delivery)) = reader.next().await? {
                if let Some(how) = event_matches(id, &event, &delivery.data) {
                    events += 1;
                    lines.push(format!(
                        "event\t{}\t{}\t{}\t{}\tby {}",
                        event.event_type,
                        event.id.as_deref().unwrap_or("-"),
                        match event.stored {
                            Stored::Delivered => "delivered",
                            Stored::Unrouted => "unrouted",
                        },
                        event
                            .kept_at
                            .map_or_else(|| "-".to_owned(), |t| rfc3339_utc::format(&t)),
                        how.as_str()
                    ));
                }
            }
            read = reader.read;
            reader.close().await;
            Ok::<(), webhook_normalizer::amqp::BrokerError>(())
        });
        if let Err(e) = searched {
            report(format_args!("error: reading the history: {e}"));
            return Ok(ExitCode::from(EXIT_UNAVAILABLE));
        }
    } else {
        report(format_args!(
            "history.enabled is off: events are not kept, only the dead-letter queue is searched"
        ));
    }

    // The dead letter it ended as, from the dead-letter queue (all of it).
    let mut dead_letters = 0u64;
    let mut bar = ProgressBar::new("dead letters");
    let walked = runtime.block_on(walk_dead_letters(
        &settings.amqp,
        &settings.dlq(),
        None,
        None,
        &mut |p| bar.update(p),
        |info, body, _properties| {
            if let Some(how) = dead_letter_matches(id, info, body) {
                dead_letters += 1;
                lines.push(format!(
                    "dead-letter\t{}.{}\t{}\t{}\tby {}\t{}",
                    info.vendor,
                    info.kind,
                    info.message_id.as_deref().unwrap_or("-"),
                    info.failed_at
                        .map_or_else(|| "-".to_owned(), |t| rfc3339_utc::format(&t)),
                    how.as_str(),
                    info.detail.replace(['\t', '\n', '\r'], " ")
                ));
            }
            Action::Keep
        },
    ));
    bar.finish();
    let walked = match walked {
        Ok(summary) => summary,
        Err(e) => return Ok(walk_failed(&e)),
    };
    let written = lines.iter().try_for_each(|l| writeln!(out, "{l}"));
    let _ = out.flush();
    report(format_args!(
        "{events} events ({read} read in {} from {}) and {dead_letters} dead letters ({} read in {}); every queue as it was",
        settings.history.stream,
        window
            .since
            .map_or_else(|| "its start".to_owned(), |t| rfc3339_utc::format(&t)),
        walked.read,
        settings.dead_letter.queue
    ));
    if written.is_err() {
        return written_to_stdout(written);
    }
    if events + dead_letters == 0 {
        return Ok(ExitCode::from(EXIT_NOT_FOUND));
    }
    Ok(ExitCode::SUCCESS)
}
