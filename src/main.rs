//! The `webhook-normalizer` binary: parses arguments and hands over to the library.

use std::io::{self, IsTerminal, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use webhook_normalizer::canonical::rfc3339_utc;
use webhook_normalizer::config::Settings;
use webhook_normalizer::dead_letters::{self, Filter, Stats};
use webhook_normalizer::normalize::{EventJson, normalize_json};
use webhook_normalizer::ops::{self, Health};
use webhook_normalizer::telemetry::TelemetryError;
use webhook_normalizer::{ErrorKind, EventType, Limits, broker, telemetry, worker};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// sysexits.h EX_DATAERR: the input was read but cannot be normalized.
const EXIT_DATA_ERROR: u8 = 65;
/// sysexits.h EX_UNAVAILABLE: the broker could not be reached or refused.
const EXIT_UNAVAILABLE: u8 = 69;
/// sysexits.h EX_CONFIG: the configuration is invalid.
const EXIT_CONFIG: u8 = 78;
/// EX_TEMPFAIL: another `dlq` command holds the dead-letter queue; try again later.
const EXIT_TEMPFAIL: u8 = 75;

#[derive(Parser)]
#[command(version, about = "Vendor webhooks in, one CloudEvents stream out")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the worker: consume raw webhooks, publish canonical events, dead-letter the rest.
    ///
    /// Stops on SIGTERM or SIGINT after finishing what is in flight (exit 0); a second
    /// signal exits at once (what was in flight is redelivered).
    Run {
        /// A TOML file layered over the defaults (config/default.toml).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Declare the exchanges, queues and bindings, then exit: for infrastructure pipelines.
    Topology {
        /// A TOML file layered over the defaults (config/default.toml).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Normalize one webhook body offline and print its canonical events as JSON Lines.
    ///
    /// Exit 0 with the events on stdout; exit 65 with `error: {kind}: {detail}` on stderr
    /// and nothing on stdout when the body cannot be normalized.
    Normalize {
        /// Vendor key (entuitive, authenticate, deel); detected from the body if omitted.
        #[arg(long)]
        vendor: Option<String>,
        /// Receipt time (RFC 3339), used when the body carries no time; default: now.
        #[arg(long, value_parser = parse_rfc3339)]
        received_at: Option<DateTime<Utc>>,
        /// Largest body accepted, in bytes (at least 1). No more than this and one byte
        /// is read.
        #[arg(long, default_value_t = Limits::default().max_body_bytes, value_parser = at_least_1)]
        max_body_bytes: usize,
        /// Most events one body may fan out into (at least 1).
        #[arg(long, default_value_t = Limits::default().max_events_per_message, value_parser = at_least_1)]
        max_events_per_message: usize,
        /// Most bytes of event JSON one body may make, all its events together (at least 1).
        #[arg(long, default_value_t = Limits::default().max_output_bytes, value_parser = at_least_1)]
        max_output_bytes: usize,
        /// File holding the raw body; `-` or nothing reads stdin.
        file: Option<PathBuf>,
    },
    /// Look at the dead-letter queue without changing it (same configuration as `run`).
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Print the canonical type table: vendor, vendor type, condition, canonical type, subject.
    EventTypes {
        #[arg(long, value_enum, default_value_t = TableFormat::Text)]
        format: TableFormat,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Dead letters grouped by vendor and error kind: count, oldest, newest, the most
    /// common detail. Reads every dead letter and leaves each as it was.
    Stats {
        #[command(flatten)]
        filter: DlqFilter,
        #[arg(long)]
        config: Option<PathBuf>,
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
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Publish matching dead letters to where their raw messages were first published,
    /// as they were then, confirmed; only then are they taken off the dead-letter queue.
    /// The others stay as they were. Prints one line per message replayed.
    Replay {
        /// Replay at most this many.
        #[arg(long)]
        limit: Option<u64>,
        /// At most this many a second.
        #[arg(long)]
        rate: Option<f64>,
        /// List and count what would be replayed; move nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        filter: DlqFilter,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Write matching dead letters to FILE as JSON Lines (what they are, their routing key
    /// and properties, the body in base64), leaving each as it was. FILE must not exist.
    Export {
        file: PathBuf,
        #[command(flatten)]
        filter: DlqFilter,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Remove matching dead letters for good. Needs --yes; export them first.
    Purge {
        /// Yes, remove them.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        filter: DlqFilter,
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// Which dead letters a `dlq` command acts on; all that are given must match.
#[derive(clap::Args)]
struct DlqFilter {
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

#[derive(Clone, Copy, clap::ValueEnum)]
enum TableFormat {
    /// Aligned columns.
    Text,
    /// One JSON object per line.
    Json,
    /// A Markdown table.
    Markdown,
}

/// A limit: 0 would refuse every body.
fn at_least_1(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{e}; must be a whole number, at least 1")),
    }
}

/// A receipt time: RFC 3339, and one it can write in UTC, since it may become `time`.
fn parse_rfc3339(s: &str) -> Result<DateTime<Utc>, String> {
    let t = DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("not an RFC 3339 date-time: {e}"))?;
    if !rfc3339_utc::writable(&t) {
        return Err("outside RFC 3339 once in UTC (years 0000 to 9999, seconds 00 to 59)".into());
    }
    Ok(t)
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(code) => code,
        Err(e) => {
            // `{:#}`: the causes on one line. Never `{:?}`, which appends a stack trace
            // whenever RUST_BACKTRACE or RUST_LIB_BACKTRACE is set: these are the user's
            // errors (a missing file, a port in use), not bugs.
            report(format_args!("error: {e:#}"));
            ExitCode::FAILURE
        }
    }
}

/// Writes one line to stderr. Unlike `eprintln!`, does not panic when stderr is gone.
fn report(message: std::fmt::Arguments<'_>) {
    let _ = writeln!(io::stderr().lock(), "{message}");
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run { config } => {
            let settings = match configure(config.as_deref()) {
                Ok(settings) => settings,
                Err(code) => return Ok(code),
            };
            let health_addrs = match settings.http.listen.resolve() {
                Ok(addrs) => addrs,
                Err(e) => return Ok(configuration_error(&e)),
            };
            tokio::runtime::Runtime::new()?.block_on(run_worker(settings, &health_addrs))
        }
        Command::Topology { config } => {
            let settings = match configure(config.as_deref()) {
                Ok(settings) => settings,
                Err(code) => return Ok(code),
            };
            let runtime = tokio::runtime::Runtime::new()?;
            match runtime.block_on(broker::declare_topology(&settings)) {
                Ok(()) => {
                    info!(broker = %settings.amqp.url, "topology declared");
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    error!(error = %e, "cannot declare the topology");
                    Ok(ExitCode::from(EXIT_UNAVAILABLE))
                }
            }
        }
        Command::Normalize {
            vendor,
            received_at,
            max_body_bytes,
            max_events_per_message,
            max_output_bytes,
            file,
        } => {
            let body = match read_input(file.as_deref(), max_body_bytes)? {
                Input::Body(body) => body,
                Input::TooLarge { size } => {
                    let kind = ErrorKind::BodyTooLarge;
                    match size {
                        Some(size) => report(format_args!(
                            "error: {kind}: body is {size} bytes, over the limit of {max_body_bytes}"
                        )),
                        None => report(format_args!(
                            "error: {kind}: body is over the limit of {max_body_bytes} bytes (reading stopped there)"
                        )),
                    }
                    return Ok(ExitCode::from(EXIT_DATA_ERROR));
                }
            };
            let limits = Limits {
                max_body_bytes,
                max_events_per_message,
                max_output_bytes,
            };
            let received_at = received_at.unwrap_or_else(Utc::now);
            // Serialized (and bounded) before anything is printed: an error prints nothing
            // on stdout.
            match normalize_json(&body, vendor.as_deref(), received_at, &limits) {
                Ok(events) => written_to_stdout(print_events(&events)),
                Err(e) => {
                    report(format_args!("error: {}: {e}", e.kind()));
                    Ok(ExitCode::from(EXIT_DATA_ERROR))
                }
            }
        }
        Command::EventTypes { format } => written_to_stdout(print_event_types(format)),
        Command::Dlq { command } => dlq(command),
    }
}

/// What a `dlq` command does with each matching dead letter.
enum DlqMode {
    Stats,
    Peek { show_body: bool },
    Replay { dry_run: bool },
    Export { file: PathBuf },
    Purge,
}

/// Runs a `dlq` command: one walk of the dead-letter queue.
fn dlq(command: DlqCommand) -> anyhow::Result<ExitCode> {
    let (mode, filter, limit, rate, config) = match command {
        DlqCommand::Stats { filter, config } => (DlqMode::Stats, filter, None, None, config),
        DlqCommand::Peek {
            limit,
            show_body,
            filter,
            config,
        } => (DlqMode::Peek { show_body }, filter, limit, None, config),
        DlqCommand::Replay {
            limit,
            rate,
            dry_run,
            filter,
            config,
        } => {
            if rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
                report(format_args!(
                    "error: --rate must be a positive number of messages a second"
                ));
                return Ok(ExitCode::from(2));
            }
            (DlqMode::Replay { dry_run }, filter, limit, rate, config)
        }
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
    let settings = match configure(config.as_deref()) {
        Ok(settings) => settings,
        Err(code) => return Ok(code),
    };
    let mut export = match &mode {
        DlqMode::Export { file } => match std::fs::File::create_new(file) {
            Ok(f) => Some(io::BufWriter::new(f)),
            Err(e) => {
                report(format_args!("error: cannot create {}: {e}", file.display()));
                return Ok(ExitCode::FAILURE);
            }
        },
        _ => None,
    };
    let now = Utc::now();
    let mut stats = Stats::default();
    let mut picked = 0u64;
    let mut matched = 0u64;
    let mut out = io::stdout().lock();
    let mut write_failed: Option<io::Error> = None;
    let runtime = tokio::runtime::Runtime::new()?;
    let walked = runtime.block_on(broker::walk_with_properties(
        &settings,
        rate,
        |info, body, properties| {
            if !filter.matches(info) {
                return broker::Action::Keep;
            }
            matched += 1;
            if limit.is_some_and(|l| picked >= l) || write_failed.is_some() {
                return broker::Action::Keep;
            }
            let replay = matches!(mode, DlqMode::Replay { .. });
            if replay && info.original_exchange.is_empty() {
                // Where it came from is unknown: it cannot be replayed.
                return broker::Action::Keep;
            }
            picked += 1;
            let line = match &mode {
                DlqMode::Stats => {
                    stats.add(info);
                    return broker::Action::Keep;
                }
                DlqMode::Export { .. } => {
                    let record = dead_letters::export_record(info, body, properties);
                    if let Some(w) = export.as_mut()
                        && let Err(e) = writeln!(w, "{record}")
                    {
                        write_failed = Some(e);
                    }
                    return broker::Action::Keep;
                }
                DlqMode::Peek { show_body: true } => {
                    let body = String::from_utf8_lossy(body).into_owned();
                    format!(
                        "{}\t{}",
                        dead_letters::peek_line(info, now),
                        serde_json::Value::String(body)
                    )
                }
                _ => dead_letters::peek_line(info, now),
            };
            if let Err(e) = writeln!(out, "{line}") {
                write_failed = Some(e);
            }
            match mode {
                DlqMode::Replay { dry_run: false } => broker::Action::Replay,
                DlqMode::Purge => broker::Action::Drop,
                _ => broker::Action::Keep,
            }
        },
    ));
    let summary = match walked {
        Ok(summary) => summary,
        Err(e @ broker::WalkError::Locked { .. }) => {
            report(format_args!("error: {e}"));
            return Ok(ExitCode::from(EXIT_TEMPFAIL));
        }
        Err(e) => {
            report(format_args!("error: {e}"));
            return Ok(ExitCode::from(EXIT_UNAVAILABLE));
        }
    };
    if let Some(mut w) = export.take()
        && let Err(e) = w.flush()
    {
        write_failed.get_or_insert(e);
    }
    if let DlqMode::Stats = mode {
        for line in dead_letters::stats_lines(&stats) {
            if let Err(e) = writeln!(out, "{line}") {
                write_failed = Some(e);
                break;
            }
        }
    }
    if let Some(e) = write_failed {
        return written_to_stdout(Err(e));
    }
    let _ = out.flush();
    let queue = &settings.dead_letter.queue;
    let read = summary.read;
    match mode {
        DlqMode::Stats | DlqMode::Peek { .. } => report(format_args!(
            "{read} dead letters read in {queue}, {matched} matched; each left as it was"
        )),
        DlqMode::Export { file } => report(format_args!(
            "{picked} dead letters written to {} ({matched} matched, {read} read in {queue}); each left as it was",
            file.display()
        )),
        DlqMode::Replay { dry_run: true } => report(format_args!(
            "dry run: {picked} of {matched} matching dead letters would be replayed ({read} read in {queue}); nothing moved"
        )),
        DlqMode::Replay { dry_run: false } => report(format_args!(
            "{} replayed, confirmed and taken off {queue} ({matched} matched, {read} read); the others left as they were",
            summary.replayed
        )),
        DlqMode::Purge => report(format_args!(
            "{} purged from {queue} ({matched} matched, {read} read); the others left as they were",
            summary.dropped
        )),
    }
    if summary.unroutable > 0 {
        report(format_args!(
            "warning: {} could not be replayed (their exchange routes them nowhere); they stay dead letters",
            summary.unroutable
        ));
    }
    if summary.read < summary.at_start {
        report(format_args!(
            "warning: {} were present at the start but another consumer took them first",
            summary.at_start - summary.read
        ));
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints an invalid configuration's message (which names the key): EX_CONFIG.
fn configuration_error(e: &dyn std::fmt::Display) -> ExitCode {
    report(format_args!("error: configuration: {e}"));
    ExitCode::from(EXIT_CONFIG)
}

/// Loads the settings and installs logging. An invalid configuration (a setting, or
/// `RUST_LOG`) is printed naming the key, and the process is to exit with the code
/// returned.
fn configure(file: Option<&std::path::Path>) -> Result<Settings, ExitCode> {
    let settings = Settings::load(file).map_err(|e| configuration_error(&e))?;
    let colour = telemetry::colour_wanted(
        io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    match telemetry::init(&settings.log, io::stderr, colour) {
        Ok(()) => Ok(settings),
        Err(e @ TelemetryError::InvalidFilter { .. }) => Err(configuration_error(&e)),
        Err(e @ TelemetryError::Install(_)) => {
            report(format_args!("error: {e}"));
            Err(ExitCode::FAILURE)
        }
    }
}

/// Runs the worker and the health endpoints until a signal, then drains and exits 0. If
/// the drain overruns its deadline by more than a grace period, exits 1 rather than hang.
async fn run_worker(settings: Settings, health_addrs: &[SocketAddr]) -> anyhow::Result<ExitCode> {
    let shutdown = CancellationToken::new();
    let http_shutdown = CancellationToken::new();
    let health = Health::default();

    let listeners = ops::listen(health_addrs)
        .await
        .context("http.listen: cannot listen")?;
    let mut http = Vec::new();
    for listener in listeners {
        info!(address = %listener.local_addr()?, "health and metrics on /healthz, /readyz and /metrics");
        http.push(tokio::spawn(ops::serve(
            listener,
            health.clone(),
            http_shutdown.clone(),
        )));
    }
    tokio::spawn(watch_signals(shutdown.clone()));

    let hard_deadline = settings
        .shutdown
        .drain_timeout()
        .saturating_add(Duration::from_secs(15));
    let deadline = {
        let shutdown = shutdown.clone();
        async move {
            shutdown.cancelled().await;
            tokio::time::sleep(hard_deadline).await;
        }
    };
    let code = tokio::select! {
        _ = worker::run(&settings, shutdown, health) => ExitCode::SUCCESS,
        _ = deadline => {
            error!("shutdown did not finish in {}s; exiting", hard_deadline.as_secs());
            ExitCode::FAILURE
        }
    };
    http_shutdown.cancel();
    let _ =
        tokio::time::timeout(Duration::from_secs(2), futures_util::future::join_all(http)).await;
    Ok(code)
}

/// First SIGTERM or SIGINT: graceful shutdown. Second: exit at once.
async fn watch_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        error!("cannot install signal handlers");
        return;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    info!("shutdown requested; finishing in-flight messages");
    shutdown.cancel();
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    warn!("second signal; exiting now");
    std::process::exit(130);
}

/// The body `normalize` reads, or the fact that it is over the limit.
enum Input {
    Body(Vec<u8>),
    /// Over the limit; `size` when known without reading (a regular file).
    TooLarge {
        size: Option<u64>,
    },
}

/// Reads the body from `file` (`-` or nothing: stdin), at most `limit + 1` bytes: enough
/// to know it is over the limit without reading, or holding, an endless stream or a
/// huge file. A regular file is measured before it is read.
fn read_input(file: Option<&std::path::Path>, limit: usize) -> anyhow::Result<Input> {
    let limit = u64::try_from(limit).unwrap_or(u64::MAX);
    let (reader, name): (Box<dyn Read>, String) = match file {
        None => (Box::new(io::stdin().lock()), "stdin".into()),
        Some(p) if p.as_os_str() == "-" => (Box::new(io::stdin().lock()), "stdin".into()),
        Some(p) => {
            let file =
                std::fs::File::open(p).with_context(|| format!("cannot read {}", p.display()))?;
            if let Ok(meta) = file.metadata()
                && meta.is_file()
                && meta.len() > limit
            {
                return Ok(Input::TooLarge {
                    size: Some(meta.len()),
                });
            }
            (Box::new(file), p.display().to_string())
        }
    };
    let mut body = Vec::new();
    reader
        .take(limit.saturating_add(1))
        .read_to_end(&mut body)
        .with_context(|| format!("cannot read {name}"))?;
    if body.len() as u64 > limit {
        return Ok(Input::TooLarge { size: None });
    }
    Ok(Input::Body(body))
}

/// The end of a command that wrote to stdout. A reader that went away
/// (`event-types | head -1`) has what it wanted: the command ends quietly with success.
fn written_to_stdout(written: io::Result<()>) -> anyhow::Result<ExitCode> {
    match written {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(anyhow::Error::new(e).context("cannot write to stdout")),
    }
}

/// JSON Lines.
fn print_events(events: &[EventJson]) -> io::Result<()> {
    let mut out = io::stdout().lock();
    for event in events {
        out.write_all(&event.json)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

fn print_event_types(format: TableFormat) -> io::Result<()> {
    let mut out = io::stdout().lock();
    if let TableFormat::Markdown = format {
        out.write_all(webhook_normalizer::canonical::markdown_table().as_bytes())?;
    } else if let TableFormat::Json = format {
        for t in EventType::ALL {
            let row = serde_json::json!({
                "vendor": t.vendor(),
                "vendor_event_type": t.vendor_event_type(),
                "condition": (!t.condition().is_empty()).then_some(t.condition()),
                "type": t,
                "subject": t.subject_rule(),
            });
            // An I/O error comes back as itself, so a broken pipe is still one.
            serde_json::to_writer(&mut out, &row).map_err(io::Error::from)?;
            out.write_all(b"\n")?;
        }
    } else {
        let header = [
            "VENDOR",
            "VENDOR TYPE",
            "CONDITION",
            "CANONICAL TYPE",
            "SUBJECT",
        ];
        let rows: Vec<[&str; 5]> = EventType::ALL
            .iter()
            .map(|t| {
                [
                    t.vendor().key(),
                    t.vendor_event_type(),
                    t.condition(),
                    t.as_str(),
                    t.subject_rule(),
                ]
            })
            .collect();
        let mut widths = header.map(str::len);
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.len());
            }
        }
        for row in std::iter::once(&header).chain(&rows) {
            let line: Vec<String> = row
                .iter()
                .zip(widths)
                .map(|(cell, w)| format!("{cell:w$}"))
                .collect();
            writeln!(out, "{}", line.join("  ").trim_end())?;
        }
    }
    out.flush()?;
    Ok(())
}
