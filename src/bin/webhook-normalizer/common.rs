//! What the commands share: the exit codes, the `--config` and `--schema-base-uri`
//! arguments, the one way to load the settings and build a runtime, writing to stdout
//! and stderr, and the signal watch of the long-running ones. No command's own logic.

use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use webhook_normalizer::canonical::{DEFAULT_SCHEMA_BASE, SchemaBase, rfc3339_utc};
use webhook_normalizer::config::{AmqpSettings, Settings};
use webhook_normalizer::telemetry::{self, TelemetryError};

/// sysexits.h EX_USAGE: an argument that cannot be used (a time window that ends before
/// it starts, `--since` without the event history).
pub(crate) const EXIT_USAGE: u8 = 64;
/// sysexits.h EX_DATAERR: the input was read but cannot be normalized.
pub(crate) const EXIT_DATA_ERROR: u8 = 65;
/// sysexits.h EX_UNAVAILABLE: the broker could not be reached or refused.
pub(crate) const EXIT_UNAVAILABLE: u8 = 69;
/// sysexits.h EX_CONFIG: the configuration is invalid.
pub(crate) const EXIT_CONFIG: u8 = 78;
/// EX_TEMPFAIL: another `dlq` or `unrouted` command holds the queue; try again later.
pub(crate) const EXIT_TEMPFAIL: u8 = 75;

/// `--config FILE`: every command that reads the settings takes it.
#[derive(clap::Args)]
pub(crate) struct ConfigFile {
    /// A TOML file layered over the defaults (config/default.toml); `NORMALIZER__{SECTION}__{KEY}` variables override both
    #[arg(long = "config", value_name = "FILE")]
    pub(crate) path: Option<PathBuf>,
}

/// `--schema-base-uri URI`: the commands that print events or schemas take it.
#[derive(clap::Args)]
pub(crate) struct SchemaBaseArg {
    /// What the schemas' `$id`s and the events' `dataschema` are made from, as the
    /// setting `schemas.base_uri` does: an absolute URI ending in `/`, an identifier that
    /// nothing fetches
    #[arg(long = "schema-base-uri", value_name = "URI", value_parser = parse_schema_base, default_value = DEFAULT_SCHEMA_BASE)]
    pub(crate) base: SchemaBase,
}

fn parse_schema_base(s: &str) -> Result<SchemaBase, String> {
    SchemaBase::new(s).map_err(|e| e.to_string())
}

/// A receipt time: RFC 3339, and one it can write in UTC, since it may become `time`.
pub(crate) fn parse_rfc3339(s: &str) -> Result<DateTime<Utc>, String> {
    let t = DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("not an RFC 3339 date-time: {e}"))?;
    if !rfc3339_utc::writable(&t) {
        return Err("outside RFC 3339 once in UTC (years 0000 to 9999, seconds 00 to 59)".into());
    }
    Ok(t)
}

/// Loads the settings (as [`configure`] does) and runs `command` with them. An invalid
/// configuration ends the command here, with the exit code `configure` gave it.
pub(crate) fn with_settings(
    file: &ConfigFile,
    command: impl FnOnce(Settings) -> anyhow::Result<ExitCode>,
) -> anyhow::Result<ExitCode> {
    match configure(file) {
        Ok(settings) => command(settings),
        Err(code) => Ok(code),
    }
}

/// Loads the settings and installs logging. An invalid configuration (a setting, or
/// `RUST_LOG`) is printed naming the key, and the process is to exit with the code
/// returned.
fn configure(file: &ConfigFile) -> Result<Settings, ExitCode> {
    let settings = Settings::load(file.path.as_deref()).map_err(|e| configuration_error(&e))?;
    if settings.amqp.url.expose().starts_with("amqps:") {
        webhook_normalizer::amqp::tls_client_config(&settings.amqp.tls)
            .map_err(|e| configuration_error(&e))?;
    }
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

/// The runtime a command talks to the broker (or serves HTTP) on: tokio's default,
/// one worker thread a core.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Runtime::new()?)
}

/// Prints an invalid configuration's message (which names the key): EX_CONFIG.
pub(crate) fn configuration_error(e: &dyn std::fmt::Display) -> ExitCode {
    report(format_args!("error: configuration: {e}"));
    ExitCode::from(EXIT_CONFIG)
}

/// Writes one line to stderr. Unlike `eprintln!`, does not panic when stderr is gone.
pub(crate) fn report(message: std::fmt::Arguments<'_>) {
    let _ = writeln!(io::stderr().lock(), "{message}");
}

/// The end of a command that wrote to stdout. A reader that went away
/// (`event-types | head -1`) has what it wanted: the command ends quietly with success.
pub(crate) fn written_to_stdout(written: io::Result<()>) -> anyhow::Result<ExitCode> {
    match written {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(anyhow::Error::new(e).context("cannot write to stdout")),
    }
}

/// Writes `lines` to `out`, one a line, stopping at the first failure.
pub(crate) fn write_lines(
    out: &mut impl Write,
    lines: impl IntoIterator<Item = String>,
) -> io::Result<()> {
    for line in lines {
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// The user and vhost of the first URL of `amqp.url` (never its password).
pub(crate) fn amqp_user_and_vhost(amqp: &AmqpSettings) -> (Option<String>, Option<String>) {
    let url = amqp.url.each().remove(0);
    match url.expose().parse::<lapin::uri::AMQPUri>() {
        Ok(u) => (Some(u.authority.userinfo.username), Some(u.vhost)),
        Err(_) => (None, None),
    }
}

/// First SIGTERM or SIGINT: graceful shutdown. Second: exit at once.
pub(crate) async fn watch_signals(shutdown: CancellationToken) {
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
