//! `webhook-normalizer tail`: watch canonical events (or dead letters, or unrouted
//! events) go by, from a queue of its own, or, with the event history on, from its
//! stream (from a time in the past, too).

use std::io::{self, IsTerminal, Write};
use std::process::ExitCode;

use webhook_normalizer::canonical::rfc3339_utc;
use webhook_normalizer::config::Settings;
use webhook_normalizer::telemetry;
use webhook_normalizer::tools::dlq::stored;
use webhook_normalizer::tools::history::parse_time;
use webhook_normalizer::tools::tail::{self, TailSource, Tailed};
use webhook_normalizer::tools::unrouted::stored::TypePattern;

use crate::common::{
    ConfigFile, EXIT_UNAVAILABLE, EXIT_USAGE, report, runtime, with_settings, written_to_stdout,
};

/// The arguments of `tail` (its description is on its `Command` variant).
#[derive(clap::Args)]
pub(crate) struct TailArgs {
    /// Binding patterns over canonical types (`deel.contract.*`, `*.background_check.#`);
    /// default `#`, every event.
    #[arg(value_parser = type_pattern)]
    patterns: Vec<TypePattern>,
    /// Watch what is dead-lettered instead.
    #[arg(long, conflicts_with_all = ["patterns", "unrouted"])]
    dead_letters: bool,
    /// Watch events nobody is bound for instead.
    #[arg(long, conflicts_with = "patterns")]
    unrouted: bool,
    /// Dead letters: print each body too (they hold personal data).
    #[arg(long)]
    show_body: bool,
    /// Stop after this many.
    #[arg(long)]
    limit: Option<u64>,
    /// Start this far back (`10m`, `2h`, `7d`) or at this time (RFC 3339): events kept
    /// since then, then those to come. Reads the event history (`history.enabled`);
    /// without it, from now.
    #[arg(long, value_name = "TIME", conflicts_with = "dead_letters")]
    since: Option<String>,
    #[command(flatten)]
    config: ConfigFile,
}

fn type_pattern(s: &str) -> Result<TypePattern, String> {
    TypePattern::parse(s).map_err(|e| e.to_string())
}

/// One event as a line on a terminal: time, type (in colour), subject, id.
fn event_line(body: &[u8], routing_key: &str, colour: bool) -> String {
    let event: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let field = |k: &str| event[k].as_str().unwrap_or("-").to_owned();
    let kind = if colour {
        format!("\x1b[1;36m{routing_key}\x1b[0m")
    } else {
        routing_key.to_owned()
    };
    format!(
        "{}  {kind}  {}  {}",
        field("time"),
        field("subject"),
        field("id")
    )
}

pub(crate) fn run(args: TailArgs) -> anyhow::Result<ExitCode> {
    with_settings(&args.config, |settings| watch(settings, &args))
}

/// Watches until a signal, the limit, or a reader that went away.
fn watch(settings: Settings, args: &TailArgs) -> anyhow::Result<ExitCode> {
    let source = if args.dead_letters {
        TailSource::DeadLetters
    } else if args.unrouted {
        TailSource::Unrouted
    } else if args.patterns.is_empty() {
        TailSource::Events(vec!["#".into()])
    } else {
        TailSource::Events(args.patterns.iter().map(ToString::to_string).collect())
    };
    let watching = match &source {
        TailSource::Events(patterns) => format!(
            "events {} on {}",
            patterns.join(" "),
            settings.output.exchange
        ),
        TailSource::DeadLetters => format!("dead letters on {}", settings.dead_letter.exchange),
        TailSource::Unrouted => format!("events on {}", settings.output.unrouted_exchange),
    };
    // Events come from the history when it is on: no queue of tail's own at all.
    let from_history = settings.history.enabled && !args.dead_letters;
    let since = match (&args.since, from_history) {
        (None, _) => None,
        (Some(_), false) => {
            report(format_args!(
                "error: --since reads the event history, and history.enabled is off (docs/operations.md, \"Event history\")"
            ));
            return Ok(ExitCode::from(EXIT_USAGE));
        }
        (Some(text), true) => match parse_time(text, chrono::Utc::now()) {
            Ok(t) => Some(t),
            Err(e) => {
                report(format_args!("error: --since: {e}"));
                return Ok(ExitCode::from(EXIT_USAGE));
            }
        },
    };
    let watching = if from_history {
        format!(
            "{} in the history {} from {}",
            match &source {
                TailSource::Events(patterns) => format!("events {}", patterns.join(" ")),
                _ => "events nobody was bound for".to_owned(),
            },
            settings.history.stream,
            since.map_or_else(|| "now".to_owned(), |t| rfc3339_utc::format(&t))
        )
    } else {
        watching
    };
    let terminal = io::stdout().is_terminal();
    let colour = telemetry::colour_wanted(terminal, std::env::var_os("NO_COLOR").as_deref());
    let mut out = io::stdout().lock();
    let mut write_failed: Option<io::Error> = None;
    let mut printed = 0u64;
    let runtime = runtime()?;
    let ready = || report(format_args!("watching {watching}; Ctrl-C to stop"));
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let mut each = |item: Tailed<'_>| {
        let line = match item {
            Tailed::Event { routing_key, body } if terminal => {
                event_line(body, routing_key, colour)
            }
            // Piped: the event as published, one JSON document a line.
            Tailed::Event { body, .. } => String::from_utf8_lossy(body).into_owned(),
            Tailed::DeadLetter {
                info,
                body,
                properties,
            } if terminal => {
                let _ = properties;
                let mut line = stored::peek_line(&info, chrono::Utc::now());
                if args.show_body {
                    line.push('\t');
                    line.push_str(&String::from_utf8_lossy(body));
                }
                line
            }
            Tailed::DeadLetter {
                info,
                body,
                properties,
            } => {
                let mut record = stored::export_record(&info, body, &properties);
                if !args.show_body
                    && let Some(map) = record.as_object_mut()
                {
                    map.remove("body_base64");
                }
                record.to_string()
            }
        };
        if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
            write_failed = Some(e);
            return false;
        }
        printed += 1;
        args.limit.is_none_or(|l| printed < l)
    };
    let watched = if from_history {
        runtime.block_on(tail::tail_history(
            &settings.amqp,
            &settings.history.stream,
            &source,
            since,
            ready,
            &mut each,
            stop,
        ))
    } else {
        runtime.block_on(tail::tail(
            &settings.amqp,
            &settings.output.tap_exchange,
            &source,
            ready,
            &mut each,
            stop,
        ))
    };
    if let Some(e) = write_failed {
        return written_to_stdout(Err(e));
    }
    match watched {
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            report(format_args!("error: {e}"));
            Ok(ExitCode::from(EXIT_UNAVAILABLE))
        }
    }
}
