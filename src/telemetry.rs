//! Logging setup. Logs never carry body content: the mapping's errors name fields, not
//! values, the AMQP URI is always masked, and the AMQP client's own logs are dropped
//! whatever the filter says (see [`from_dependency_that_logs_messages`]).

use std::ffi::OsStr;

use tracing::Metadata;
use tracing_subscriber::filter::{EnvFilter, FilterExt, ParseError, filter_fn};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, fmt};

use crate::config::{LogFormat, LogSettings};

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// A filter that does not parse: a configuration error, named by where it came from
    /// (`log.filter` or `RUST_LOG`).
    #[error("{key}: {problem}")]
    InvalidFilter { key: &'static str, problem: String },
    #[error("cannot install the log subscriber: {0}")]
    Install(String),
}

/// Installs the global subscriber writing to `writer` (stderr in the binary), text logs
/// in ANSI colours only if `colour` (see [`colour_wanted`]). `RUST_LOG`, when set,
/// replaces the configured filter.
pub fn init<W>(settings: &LogSettings, writer: W, colour: bool) -> Result<(), TelemetryError>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = filter(settings, std::env::var_os("RUST_LOG"))?;
    let filter = filter.and(filter_fn(|meta| !from_dependency_that_logs_messages(meta)));
    let layer = fmt::layer()
        .with_writer(writer)
        .with_target(false)
        .with_ansi(colour);
    let layer = match settings.format {
        LogFormat::Text => layer.with_filter(filter).boxed(),
        LogFormat::Json => layer.json().flatten_event(true).with_filter(filter).boxed(),
    };
    tracing_subscriber::registry()
        .with(layer)
        .try_init()
        .map_err(|e| TelemetryError::Install(e.to_string()))
}

/// The filter: `rust_log` (the `RUST_LOG` variable) when set and not blank, else
/// `log.filter`.
pub fn filter(
    settings: &LogSettings,
    rust_log: Option<std::ffi::OsString>,
) -> Result<EnvFilter, TelemetryError> {
    let invalid = |key| {
        move |e: ParseError| TelemetryError::InvalidFilter {
            key,
            problem: format!("not a log filter: {e}"),
        }
    };
    match rust_log {
        Some(env) if !env.to_string_lossy().trim().is_empty() => {
            let env = env
                .into_string()
                .map_err(|_| TelemetryError::InvalidFilter {
                    key: "RUST_LOG",
                    problem: "not UTF-8".into(),
                })?;
            EnvFilter::try_new(env).map_err(invalid("RUST_LOG"))
        }
        _ => EnvFilter::try_new(&settings.filter).map_err(invalid("log.filter")),
    }
}

/// Whether text logs are coloured: only for a terminal (a file or a log collector's pipe
/// would keep the escape codes), and never when `NO_COLOR` is set and not empty
/// (<https://no-color.org>).
pub fn colour_wanted(to_terminal: bool, no_color: Option<&OsStr>) -> bool {
    to_terminal && no_color.is_none_or(OsStr::is_empty)
}

/// The AMQP client logs whole messages: a returned publish at WARN (body and headers,
/// with the person's e-mail and name), deliveries in errors while a consumer shuts down,
/// every frame at TRACE. Its failures reach us as errors, which we log ourselves without
/// the message, so none of its events is let through at any level.
pub fn from_dependency_that_logs_messages(meta: &Metadata<'_>) -> bool {
    let krate = meta.target().split("::").next().unwrap_or_default();
    krate == "lapin" || krate.starts_with("amq_protocol")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(filter: &str) -> LogSettings {
        LogSettings {
            format: LogFormat::Text,
            filter: filter.into(),
            summary_secs: 60,
        }
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour_wanted(true, None));
        assert!(colour_wanted(true, Some(OsStr::new(""))));
        assert!(!colour_wanted(true, Some(OsStr::new("1"))));
        assert!(!colour_wanted(true, Some(OsStr::new("0"))));
        assert!(!colour_wanted(false, None));
        assert!(!colour_wanted(false, Some(OsStr::new(""))));
    }

    #[test]
    fn rust_log_wins_and_each_source_is_named_when_invalid() {
        let ok = settings("info");
        assert!(filter(&ok, None).is_ok());
        assert!(filter(&ok, Some(" ".into())).is_ok());
        assert!(filter(&ok, Some("webhook_normalizer=debug".into())).is_ok());
        let e = filter(&ok, Some("[[[".into())).unwrap_err().to_string();
        assert!(e.starts_with("RUST_LOG: not a log filter"), "{e}");
        let e = filter(&settings("[[["), None).unwrap_err().to_string();
        assert!(e.starts_with("log.filter: not a log filter"), "{e}");
    }
}
