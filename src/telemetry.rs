//! Logging setup. Logs never carry body content: the mapping's errors name fields, not
//! values, the AMQP URI is always masked, and the AMQP client's own logs are dropped
//! whatever the filter says (see [`from_dependency_that_logs_messages`]).

use tracing::Metadata;
use tracing_subscriber::filter::{EnvFilter, FilterExt, filter_fn};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, fmt};

use crate::config::{LogFormat, LogSettings};

/// Installs the global subscriber writing to `writer` (stderr in the binary). `RUST_LOG`,
/// when set, replaces the configured filter.
pub fn init<W>(settings: &LogSettings, writer: W) -> anyhow::Result<()>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.trim().is_empty() => EnvFilter::try_new(env)?,
        _ => {
            EnvFilter::try_new(&settings.filter).map_err(|e| anyhow::anyhow!("log.filter: {e}"))?
        }
    };
    let filter = filter.and(filter_fn(|meta| !from_dependency_that_logs_messages(meta)));
    let layer = fmt::layer().with_writer(writer).with_target(false);
    let layer = match settings.format {
        LogFormat::Text => layer.with_filter(filter).boxed(),
        LogFormat::Json => layer.json().flatten_event(true).with_filter(filter).boxed(),
    };
    tracing_subscriber::registry()
        .with(layer)
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot install the log subscriber: {e}"))
}

/// The AMQP client logs whole messages: a returned publish at WARN (body and headers,
/// with the person's e-mail and name), deliveries in errors while a consumer shuts down,
/// every frame at TRACE. Its failures reach us as errors, which we log ourselves without
/// the message, so none of its events is let through at any level.
pub fn from_dependency_that_logs_messages(meta: &Metadata<'_>) -> bool {
    let krate = meta.target().split("::").next().unwrap_or_default();
    krate == "lapin" || krate.starts_with("amq_protocol")
}
