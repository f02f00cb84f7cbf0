//! Settings: defaults compiled in from `config/default.toml`, an optional file over them,
//! `NORMALIZER__{SECTION}__{KEY}` environment variables over both; validated once at start.
//! The sections are here; loading them is in `load.rs`, checking them in
//! `validate.rs` (one function a section), the AMQP URL and the listen
//! address in files of their own; each component's own settings, made from them, in
//! `components.rs`. No role's logic here: roles import their settings
//! from this module, never the other way.

mod access;
mod amqp_url;
mod components;
mod listen;
mod load;
mod validate;

use std::time::Duration;

use serde::Deserialize;

pub use self::access::{Access, MIN_SECRET_CHARS, VendorAccess};
pub use self::amqp_url::AmqpUrl;
pub use self::components::{
    DlqSettings, GatewaySettings, PipelineSettings, Topology, WorkerSettings,
};
pub use self::listen::ListenAddr;
pub use self::load::{DEFAULTS, ENV_PREFIX};
use crate::delivery::RetryPolicy;
use crate::normalize::Limits;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub amqp: AmqpSettings,
    pub input: InputSettings,
    pub output: OutputSettings,
    pub dead_letter: DeadLetterSettings,
    pub history: HistorySettings,
    pub tracing: TracingSettings,
    pub limits: LimitSettings,
    pub retry: RetrySettings,
    pub http: HttpSettings,
    pub ingest: IngestSettings,
    #[serde(default)]
    pub signatures: crate::signatures::Signatures,
    /// What becomes of each vendor's types that are not in the type table.
    pub unmapped: crate::vendors::Unmapped,
    pub schemas: SchemaSettings,
    pub shutdown: ShutdownSettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSettings {
    pub url: AmqpUrl,
    /// A file holding the URL (with its password), read at start; when set it replaces
    /// `url`, so the password stays out of the environment and the configuration file.
    #[serde(default)]
    pub url_file: Option<std::path::PathBuf>,
    pub heartbeat_secs: u16,
    pub connect_timeout_secs: u64,
    pub confirm_timeout_secs: u64,
    pub reconnect_initial_ms: u64,
    pub reconnect_max_ms: u64,
    /// Declare the exchanges, queues and bindings at each session; off: check that
    /// they exist (passively) and declare nothing.
    pub declare_topology: bool,
    #[serde(default)]
    pub tls: TlsSettings,
}

/// Files for `amqps://` (PEM). Without `ca_file` the server's certificate is verified
/// against the system's roots; `cert_file` and `key_file` together present a client
/// certificate (mutual TLS, and the `EXTERNAL` mechanism with `?auth_mechanism=external`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    pub ca_file: Option<std::path::PathBuf>,
    pub cert_file: Option<std::path::PathBuf>,
    pub key_file: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSettings {
    pub exchange: String,
    pub queue: String,
    pub binding_key: String,
    pub prefetch: u16,
    pub delivery_limit: u32,
    pub single_active_consumer: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSettings {
    pub exchange: String,
    /// Where observers (`tail`, history) get a copy of what was stored.
    pub tap_exchange: String,
    pub unrouted_exchange: String,
    pub unrouted_queue: String,
    /// Most events `unrouted_queue` keeps (`x-max-length`); the oldest go first.
    pub unrouted_max_length: u64,
    /// Longest an event stays in `unrouted_queue` (`x-message-ttl`), seconds.
    pub unrouted_max_age_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterSettings {
    pub exchange: String,
    pub queue: String,
    /// Exchanges besides `input.exchange` that `dlq replay` may publish to (the partition
    /// exchanges of `docs/ordering.md`). A dead letter naming any other is not replayed:
    /// the headers that name it may have been written by whoever published the raw
    /// message.
    #[serde(default)]
    pub replay_exchanges: Vec<String>,
    /// How many times `dlq replay` replays one message (counted in `x-replay-count`)
    /// before it leaves it for a person to look at (`--ignore-replay-limit`).
    pub max_replays: u32,
}

/// Where spans are exported.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingSettings {
    /// OTLP over HTTP (JSON), `http://…/v1/traces`; empty: no export.
    pub otlp_endpoint: String,
    /// The share of the traces this process starts whose spans are exported (0 to 1);
    /// a trace continued from a `traceparent` follows that context's sampled flag.
    pub sample_ratio: f64,
}

impl TracingSettings {
    /// The spans this process exports as `service`: none without an endpoint.
    pub fn spans(&self, service: &'static str) -> Result<crate::spans::Spans, String> {
        if self.otlp_endpoint.is_empty() {
            return Ok(crate::spans::Spans::off());
        }
        crate::spans::Spans::otlp(&self.otlp_endpoint, service, self.sample_ratio)
    }
}

/// The event history: a RabbitMQ stream bound to the tap exchange for `canonical.#` and
/// `unrouted.#`, so it keeps a copy of every event once it is stored, and changes
/// nothing about where events go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistorySettings {
    /// Declare the stream and bind it (off: declare nothing; an existing stream is left
    /// as it is, and no longer fed once its bindings are removed by hand).
    pub enabled: bool,
    /// The stream's name.
    pub stream: String,
    /// Retention by age (`x-max-age`), seconds.
    pub max_age_secs: u64,
    /// Retention by size (`x-max-length-bytes`): the stream never holds much more.
    pub max_bytes: u64,
    /// Size of one segment file (`x-stream-max-segment-size-bytes`); retention drops
    /// whole segments, so the stream holds up to one segment more than `max_bytes`.
    pub segment_bytes: u64,
}

impl Settings {
    /// Where `dlq replay` may publish: `input.exchange` and
    /// `dead_letter.replay_exchanges`, nothing else.
    pub fn replay_exchanges(&self) -> Vec<&str> {
        std::iter::once(self.input.exchange.as_str())
            .chain(self.dead_letter.replay_exchanges.iter().map(String::as_str))
            .collect()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    pub max_body_bytes: usize,
    pub max_events_per_message: usize,
    pub max_output_bytes: usize,
    pub max_in_flight_bytes: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySettings {
    pub initial_ms: u64,
    pub max_ms: u64,
    pub max_elapsed_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub listen: ListenAddr,
}

/// The reference gateway (`webhook-normalizer ingest`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestSettings {
    /// Where it takes webhooks: `POST /webhooks/{vendor}`.
    pub listen: ListenAddr,
    /// Longest a request may take, reading the body and the broker's confirm included.
    pub request_timeout_secs: u64,
    /// Check signatures (where `signatures.{vendor}` has secrets) before publishing, and
    /// answer 401 to a forged or unsigned request.
    pub verify_signatures: bool,
    /// Requests holding a body in memory at once; others wait for a turn.
    pub max_concurrent_requests: usize,
    /// Client connections open at once; at the limit the one idle longest is closed.
    pub max_connections: usize,
    /// Longest a client may take to send a request's headers, or stay idle between
    /// requests.
    pub header_timeout_secs: u64,
    /// Continue a valid `traceparent` the client sent, instead of starting a trace.
    pub trust_traceparent: bool,
    /// Who may post each vendor's webhooks: path tokens, basic auth.
    #[serde(default)]
    pub access: Access,
}

impl IngestSettings {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaSettings {
    /// What the schema documents' `$id`s and every event's `dataschema` are made from:
    /// an identifier, not a location (consumers validate from the files).
    pub base_uri: crate::canonical::SchemaBase,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownSettings {
    pub drain_timeout_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub filter: String,
    /// Seconds between the `info` summaries logged while messages flow; 0: none.
    pub summary_secs: u64,
}

impl LogSettings {
    /// How often to log a summary while messages flow, if at all.
    pub fn summary_every(&self) -> Option<Duration> {
        (self.summary_secs > 0).then(|| Duration::from_secs(self.summary_secs))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Configuration that cannot be used; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist or cannot be read")]
    MissingFile(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{key}: {problem}")]
    Rejected { key: &'static str, problem: String },
    /// A secret's file: the setting and the path, never the content.
    #[error("{key}: {path}: {problem}")]
    SecretFile {
        key: String,
        path: String,
        problem: String,
    },
}

impl Settings {
    pub fn limits(&self) -> Limits {
        Limits {
            max_body_bytes: self.limits.max_body_bytes,
            max_events_per_message: self.limits.max_events_per_message,
            max_output_bytes: self.limits.max_output_bytes,
        }
    }
}

impl AmqpSettings {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }
    pub fn confirm_timeout(&self) -> Duration {
        Duration::from_secs(self.confirm_timeout_secs)
    }
    pub fn reconnect_initial(&self) -> Duration {
        Duration::from_millis(self.reconnect_initial_ms)
    }
    pub fn reconnect_max(&self) -> Duration {
        Duration::from_millis(self.reconnect_max_ms)
    }
}

impl RetrySettings {
    pub fn initial(&self) -> Duration {
        Duration::from_millis(self.initial_ms)
    }
    pub fn max(&self) -> Duration {
        Duration::from_millis(self.max_ms)
    }
    pub fn max_elapsed(&self) -> Duration {
        Duration::from_secs(self.max_elapsed_secs)
    }

    /// The policy the pipeline retries a refused publish by.
    pub fn policy(&self) -> RetryPolicy {
        RetryPolicy {
            initial: self.initial(),
            max: self.max(),
            max_elapsed: self.max_elapsed(),
        }
    }
}

impl ShutdownSettings {
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout_secs)
    }
}

/// Loads with these environment variables set, in figment's jail (a temporary directory
/// and environment, restored afterwards, one test at a time). For the tests of each part.
#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return figment::Error
fn load_env(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    let mut out = None;
    figment::Jail::expect_with(|jail| {
        for (k, v) in vars {
            jail.set_env(k, v);
        }
        out = Some(Settings::load(None));
        Ok(())
    });
    out.expect("jail ran")
}
