//! Settings: defaults compiled in from `config/default.toml`, an optional file over them,
//! `NORMALIZER__{SECTION}__{KEY}` environment variables over both; validated once at start.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;

use crate::normalize::Limits;

/// The defaults file, which is also the configuration reference.
pub const DEFAULTS: &str = include_str!("../config/default.toml");

/// The environment variable prefix; `__` separates section and key.
pub const ENV_PREFIX: &str = "NORMALIZER__";

const MIB: usize = 1024 * 1024;
const UNROUTED_MAX_LENGTH_LIMIT: u64 = 100_000_000;
/// RabbitMQ takes a message TTL of at most 2^32-1 ms.
const UNROUTED_MAX_AGE_LIMIT_SECS: u64 = u32::MAX as u64 / 1000;
const HOUR_SECS: u64 = 3600;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub amqp: AmqpSettings,
    pub input: InputSettings,
    pub output: OutputSettings,
    pub dead_letter: DeadLetterSettings,
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
    /// Who may post each vendor's webhooks: path tokens, basic auth.
    #[serde(default)]
    pub access: crate::gateway::access::Access,
}

impl IngestSettings {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }
}

/// `host:port` for the health endpoints: an IPv4 address, a bracketed IPv6 address or a
/// host name, resolved when the worker starts ([`ListenAddr::resolve`]). Checked for
/// form only when loaded, so a setting naming a host resolves where the worker runs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct ListenAddr {
    host: String,
    port: u16,
}

impl ListenAddr {
    /// The addresses to listen on: each one the host resolves to, in the resolver's
    /// order, without duplicates (`localhost` is often both 127.0.0.1 and ::1). Failure
    /// to resolve is an error naming `http.listen`.
    pub fn resolve(&self) -> Result<Vec<SocketAddr>, ConfigError> {
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        let resolved = (host, self.port)
            .to_socket_addrs()
            .map_err(|e| ConfigError::Rejected {
                key: "http.listen",
                problem: format!("cannot resolve {}: {e}", self.host),
            })?;
        let mut addrs: Vec<SocketAddr> = Vec::new();
        for addr in resolved {
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
        if addrs.is_empty() {
            return Err(ConfigError::Rejected {
                key: "http.listen",
                problem: format!("{} resolves to no address", self.host),
            });
        }
        Ok(addrs)
    }
}

impl TryFrom<String> for ListenAddr {
    type Error = String;

    fn try_from(text: String) -> Result<ListenAddr, String> {
        const FORM: &str = "expected host:port, e.g. 127.0.0.1:9090, [::1]:9090 or localhost:9090";
        if let Ok(addr) = text.parse::<SocketAddr>() {
            let host = match addr {
                SocketAddr::V4(a) => a.ip().to_string(),
                SocketAddr::V6(a) => format!("[{}]", a.ip()),
            };
            return Ok(ListenAddr {
                host,
                port: addr.port(),
            });
        }
        let Some((host, port)) = text.rsplit_once(':') else {
            return Err(format!("{text:?} has no port; {FORM}"));
        };
        let Ok(port) = port.parse::<u16>() else {
            return Err(format!("{port:?} is not a port (0 to 65535); {FORM}"));
        };
        // A host name (RFC 1123 labels; `_` tolerated); an IP address parsed above.
        let is_name = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !is_name {
            return Err(format!("{host:?} is not a host name or IP address; {FORM}"));
        }
        Ok(ListenAddr {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
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

/// An AMQP URI. It holds a password, so `Debug` and `Display` print it masked; only
/// [`AmqpUrl::expose`] gives the real text, to the connection code.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct AmqpUrl(String);

impl AmqpUrl {
    pub fn new(url: impl Into<String>) -> AmqpUrl {
        AmqpUrl(url.into())
    }

    /// The URI with its password. Never log this.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URLs it lists: one, or several separated by commas (the nodes of a cluster).
    pub fn each(&self) -> Vec<AmqpUrl> {
        self.0
            .split(',')
            .map(|u| AmqpUrl(u.trim().to_owned()))
            .collect()
    }

    /// `amqps://`.
    pub fn is_tls(&self) -> bool {
        self.0.trim_start().starts_with("amqps:")
    }

    /// Why one URL cannot be used (`tls_set`: TLS files are configured); never quotes
    /// the password.
    fn validate(&self, tls_set: bool) -> Result<(), String> {
        match self.expose().parse::<lapin::uri::AMQPUri>() {
            // The parser's own message can quote the whole URI, password included.
            Err(_) => {
                return Err(String::from(
                    "not an AMQP URI (amqp://user:password@host:port/vhost)",
                ));
            }
            Ok(uri) if uri.scheme == lapin::uri::AMQPScheme::AMQP && tls_set => {
                return Err(String::from(
                    "TLS files are set but amqp.url is amqp:// (plain text); use amqps://",
                ));
            }
            // `amqp://host/` is not the default vhost: the path after the `/` is the
            // vhost's name, here empty, and RabbitMQ refuses every connection to it.
            Ok(uri) if uri.vhost.is_empty() => {
                // The URI as it should be, password masked: `%2f` after the `/`.
                let masked = self.masked();
                let path = masked
                    .find("://")
                    .and_then(|i| masked[i + 3..].find('/').map(|j| i + 3 + j + 1))
                    .unwrap_or(masked.len());
                return Err(format!(
                    "a trailing `/` names the empty vhost, which RabbitMQ never has; the \
                     default vhost `/` is written `%2f` ({}%2f{}), or leave the path out",
                    &masked[..path],
                    &masked[path..]
                ));
            }
            Ok(_) => {}
        }
        // The client library's URI parser turns an IPv6 literal host into "localhost".
        let url = self.expose();
        if url
            .split_once("://")
            .and_then(|(_, rest)| rest.split(['/', '?']).next())
            .is_some_and(|authority| {
                authority
                    .rsplit('@')
                    .next()
                    .is_some_and(|h| h.starts_with('['))
            })
        {
            return Err(String::from(
                "IPv6 literal hosts are not supported by the AMQP client; use a host name",
            ));
        }
        Ok(())
    }

    /// `scheme://user:****@host...`: the URI with any password replaced (each of them,
    /// when it lists several).
    pub fn masked(&self) -> String {
        if self.0.contains(',') {
            return self
                .each()
                .iter()
                .map(AmqpUrl::masked)
                .collect::<Vec<_>>()
                .join(",");
        }
        let url = &self.0;
        let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
            return "(not a URI)".into();
        };
        let rest = &url[scheme_end..];
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        match rest[..authority_end].rfind('@') {
            Some(at) => {
                let userinfo = &rest[..at];
                let user = userinfo.split(':').next().unwrap_or_default();
                let masked = if userinfo.contains(':') {
                    format!("{user}:****")
                } else {
                    user.to_owned()
                };
                format!("{}{masked}{}", &url[..scheme_end], &rest[at..])
            }
            None => url.clone(),
        }
    }
}

impl TlsSettings {
    fn is_set(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()
    }
}

impl fmt::Debug for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AmqpUrl({})", self.masked())
    }
}

impl fmt::Display for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
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

/// The text of a secret's file: UTF-8, its trailing line ending (`\n` or `\r\n`) taken
/// off. An error names the setting and the path, never what the file holds.
fn read_secret_file(key: &str, path: &Path) -> Result<String, ConfigError> {
    let fail = |problem: String| ConfigError::SecretFile {
        key: key.to_owned(),
        path: path.display().to_string(),
        problem,
    };
    let bytes = std::fs::read(path).map_err(|e| fail(format!("cannot be read ({e})")))?;
    let text = String::from_utf8(bytes).map_err(|_| fail("is not UTF-8 text".into()))?;
    let text = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text);
    if text.is_empty() {
        return Err(fail("is empty".into()));
    }
    Ok(text.to_owned())
}

/// A secrets file's entries: one a line, blank lines skipped.
fn read_secret_lines(key: &str, path: &Path) -> Result<Vec<String>, ConfigError> {
    let text = read_secret_file(key, path)?;
    let lines: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect();
    if lines.is_empty() {
        return Err(ConfigError::SecretFile {
            key: key.to_owned(),
            path: path.display().to_string(),
            problem: "holds only blank lines".into(),
        });
    }
    Ok(lines)
}

/// `key` and `key_file` both set.
fn both(key: String) -> ConfigError {
    ConfigError::SecretFile {
        problem: format!("set {key} or {key}_file, not both"),
        path: String::from("(both set)"),
        key: format!("{key}_file"),
    }
}

impl Settings {
    /// Loads the layered settings and validates them.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        Settings::load_from(file, Env::prefixed(ENV_PREFIX).split("__"))
    }

    /// As [`Settings::load`], with the environment provider given (tests pass their own).
    pub fn load_from(file: Option<&Path>, env: Env) -> Result<Settings, ConfigError> {
        let mut settings: Settings = layered(file, env)?
            .extract()
            .map_err(|e| ConfigError::Invalid(describe_figment_error(e)))?;
        settings.read_secret_files()?;
        settings.validate()?;
        Ok(settings)
    }

    /// The effective settings (defaults, `file`, environment), validated, as a TOML
    /// table with every secret masked: `amqp.url`'s passwords as `****`, and every
    /// string under `signatures` and `ingest.access` (a basic-auth pair keeps its user).
    /// What `webhook-normalizer config` prints.
    pub fn masked_table(file: Option<&Path>) -> Result<toml::Table, ConfigError> {
        Settings::masked_table_from(file, Env::prefixed(ENV_PREFIX).split("__"))
    }

    /// As [`Settings::masked_table`], with the environment provider given.
    pub fn masked_table_from(file: Option<&Path>, env: Env) -> Result<toml::Table, ConfigError> {
        let settings = Settings::load_from(file, env.clone())?;
        let value: figment::value::Value = layered(file, env)?
            .extract()
            .map_err(|e| ConfigError::Invalid(describe_figment_error(e)))?;
        let mut table = match toml::Value::try_from(value) {
            Ok(toml::Value::Table(table)) => table,
            _ => return Err(ConfigError::Invalid("settings are not a table".into())),
        };
        if let Some(toml::Value::Table(amqp)) = table.get_mut("amqp") {
            amqp.insert(
                "url".into(),
                toml::Value::String(settings.amqp.url.masked()),
            );
        }
        if let Some(signatures) = table.get_mut("signatures") {
            mask_strings(signatures, false);
        }
        if let Some(toml::Value::Table(ingest)) = table.get_mut("ingest")
            && let Some(access) = ingest.get_mut("access")
        {
            mask_strings(access, true);
        }
        Ok(table)
    }
}

/// Replaces every string in `value` by `****`; `user:password` pairs keep the user when
/// `keep_user`.
fn mask_strings(value: &mut toml::Value, keep_user: bool) {
    match value {
        toml::Value::String(s) => {
            *s = match s.split_once(':') {
                Some((user, _)) if keep_user => format!("{user}:****"),
                _ => "****".into(),
            }
        }
        toml::Value::Array(items) => items.iter_mut().for_each(|v| mask_strings(v, keep_user)),
        toml::Value::Table(table) => table
            .iter_mut()
            .for_each(|(_, v)| mask_strings(v, keep_user)),
        _ => {}
    }
}

/// The layers, last wins: the compiled-in defaults, `file`, the environment.
fn layered(file: Option<&Path>, env: Env) -> Result<Figment, ConfigError> {
    let mut figment = Figment::from(Toml::string(DEFAULTS));
    if let Some(path) = file {
        if std::fs::metadata(path)
            .map(|m| !m.is_file())
            .unwrap_or(true)
        {
            return Err(ConfigError::MissingFile(path.display().to_string()));
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    Ok(figment.merge(env))
}

impl Settings {
    /// Reads every `*_file` secret setting into the setting it stands for. A file and
    /// the value itself both set is refused (which was meant?), except `amqp.url`, which
    /// has a default: `amqp.url_file` replaces it.
    fn read_secret_files(&mut self) -> Result<(), ConfigError> {
        use crate::signatures::Secret;
        if let Some(path) = &self.amqp.url_file {
            self.amqp.url = AmqpUrl::new(read_secret_file("amqp.url_file", path)?.trim());
        }
        let secrets = |lines: Vec<String>| lines.into_iter().map(Secret::new).collect();
        for (vendor, v) in [
            ("entuitive", &mut self.signatures.entuitive),
            ("deel", &mut self.signatures.deel),
        ] {
            let key = format!("signatures.{vendor}.secrets");
            if let Some(path) = &v.secrets_file {
                if !v.secrets.is_empty() {
                    return Err(both(key));
                }
                v.secrets = secrets(read_secret_lines(&format!("{key}_file"), path)?);
            }
            let key = format!("signatures.{vendor}.labels");
            if let Some(path) = &v.labels_file {
                if !v.labels.is_empty() {
                    return Err(both(key));
                }
                let file_key = format!("{key}_file");
                for line in read_secret_lines(&file_key, path)? {
                    let Some((label, secret)) = line.split_once('=') else {
                        return Err(ConfigError::SecretFile {
                            key: file_key,
                            path: path.display().to_string(),
                            problem: "write each line as label=secret".into(),
                        });
                    };
                    v.labels
                        .insert(label.trim().to_owned(), Secret::new(secret));
                }
            }
        }
        for (vendor, v) in self.ingest.access.iter_mut() {
            let key = format!("ingest.access.{vendor}.path_tokens");
            if let Some(path) = &v.path_tokens_file {
                if !v.path_tokens.is_empty() {
                    return Err(both(key));
                }
                v.path_tokens = secrets(read_secret_lines(&format!("{key}_file"), path)?);
            }
            let key = format!("ingest.access.{vendor}.basic");
            if let Some(path) = &v.basic_file {
                if !v.basic.is_empty() {
                    return Err(both(key));
                }
                v.basic = secrets(read_secret_lines(&format!("{key}_file"), path)?);
            }
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let reject = |key, problem: &str| {
            Err(ConfigError::Rejected {
                key,
                problem: problem.to_owned(),
            })
        };
        let urls = self.amqp.url.each();
        for (i, url) in urls.iter().enumerate() {
            url.validate(self.amqp.tls.is_set()).map_err(|problem| {
                let key = if problem.starts_with("TLS files") {
                    "amqp.tls"
                } else {
                    "amqp.url"
                };
                ConfigError::Rejected {
                    key,
                    problem: if urls.len() > 1 {
                        format!("URL {} of {}: {problem}", i + 1, urls.len())
                    } else {
                        problem
                    },
                }
            })?;
        }
        if urls.iter().any(|u| u.is_tls() != urls[0].is_tls()) {
            return reject(
                "amqp.url",
                "its URLs mix amqp:// and amqps://; use one scheme for every node",
            );
        }
        // Durations are bounded: beyond an hour (a day for the retry budget) a value is a
        // mistake, and u64::MAX seconds overflows `Instant` arithmetic.
        within(
            "amqp.heartbeat_secs",
            self.amqp.heartbeat_secs.into(),
            1,
            HOUR_SECS,
            "seconds",
        )?;
        within(
            "amqp.connect_timeout_secs",
            self.amqp.connect_timeout_secs,
            1,
            HOUR_SECS,
            "seconds",
        )?;
        within(
            "amqp.confirm_timeout_secs",
            self.amqp.confirm_timeout_secs,
            1,
            HOUR_SECS,
            "seconds",
        )?;
        backoff_range(
            ("amqp.reconnect_initial_ms", self.amqp.reconnect_initial_ms),
            ("amqp.reconnect_max_ms", self.amqp.reconnect_max_ms),
        )?;
        if self.input.prefetch == 0 {
            return reject(
                "input.prefetch",
                "must be at least 1 (0 would mean unlimited)",
            );
        }
        if self.input.delivery_limit == 0 {
            return reject("input.delivery_limit", "must be at least 1");
        }
        let names: [(&'static str, &str); 9] = [
            ("input.exchange", &self.input.exchange),
            ("input.queue", &self.input.queue),
            ("input.binding_key", &self.input.binding_key),
            ("output.exchange", &self.output.exchange),
            ("output.tap_exchange", &self.output.tap_exchange),
            ("output.unrouted_exchange", &self.output.unrouted_exchange),
            ("output.unrouted_queue", &self.output.unrouted_queue),
            ("dead_letter.exchange", &self.dead_letter.exchange),
            ("dead_letter.queue", &self.dead_letter.queue),
        ];
        for (key, name) in names {
            if name.trim().is_empty() {
                return reject(key, "must not be empty");
            }
            if name.len() > 255 || name.starts_with("amq.") {
                return reject(key, "must be at most 255 bytes and not start with amq.");
            }
        }
        if self.amqp.tls.cert_file.is_some() != self.amqp.tls.key_file.is_some() {
            return reject(
                "amqp.tls",
                "cert_file and key_file go together (a client certificate and its key)",
            );
        }
        if let Some((key, problem)) = self.signatures.problem() {
            return reject(key, problem);
        }
        within(
            "ingest.request_timeout_secs",
            self.ingest.request_timeout_secs,
            1,
            HOUR_SECS,
            "seconds",
        )?;
        if !(1..=UNROUTED_MAX_LENGTH_LIMIT).contains(&self.output.unrouted_max_length) {
            return reject(
                "output.unrouted_max_length",
                "must be between 1 and 100000000",
            );
        }
        if !(60..=UNROUTED_MAX_AGE_LIMIT_SECS).contains(&self.output.unrouted_max_age_secs) {
            return reject(
                "output.unrouted_max_age_secs",
                "must be between 60 and 4294967 (RabbitMQ's message TTL is at most 2^32-1 ms)",
            );
        }
        // Two roles on one exchange or queue would loop or mix: a dead letter published
        // to the raw exchange comes back as a raw message, fails again, and so on.
        let exchanges: [(&'static str, &str); 5] = [
            ("input.exchange", &self.input.exchange),
            ("output.exchange", &self.output.exchange),
            ("output.tap_exchange", &self.output.tap_exchange),
            ("output.unrouted_exchange", &self.output.unrouted_exchange),
            ("dead_letter.exchange", &self.dead_letter.exchange),
        ];
        let queues: [(&'static str, &str); 3] = [
            ("input.queue", &self.input.queue),
            ("output.unrouted_queue", &self.output.unrouted_queue),
            ("dead_letter.queue", &self.dead_letter.queue),
        ];
        for names in [&exchanges[..], &queues[..]] {
            for (i, (key, name)) in names.iter().enumerate() {
                if let Some((earlier, _)) = names[..i].iter().find(|(_, n)| n == name) {
                    return reject(
                        key,
                        &format!(
                            "must differ from {earlier}: each has a role of its own, and sharing one would loop messages back (a dead letter to the raw exchange is consumed again, fails again, ...)"
                        ),
                    );
                }
            }
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.filter) {
            return reject("log.filter", &format!("not a log filter: {e}"));
        }
        // RabbitMQ's largest message is 128 MiB (3.x) and 16 MiB by default (4.x).
        let limits = &self.limits;
        if limits.max_body_bytes == 0 || limits.max_body_bytes > 16 * MIB {
            return reject("limits.max_body_bytes", "must be between 1 and 16777216");
        }
        if limits.max_events_per_message == 0 || limits.max_events_per_message > 100_000 {
            return reject(
                "limits.max_events_per_message",
                "must be between 1 and 100000",
            );
        }
        // An event holds its whole body plus fields read from it.
        if limits.max_output_bytes < 2 * limits.max_body_bytes
            || limits.max_output_bytes > 128 * MIB
        {
            return reject(
                "limits.max_output_bytes",
                "must be at least twice limits.max_body_bytes and at most 134217728",
            );
        }
        if limits.max_in_flight_bytes < limits.max_output_bytes {
            return reject(
                "limits.max_in_flight_bytes",
                "must be at least limits.max_output_bytes",
            );
        }
        backoff_range(
            ("retry.initial_ms", self.retry.initial_ms),
            ("retry.max_ms", self.retry.max_ms),
        )?;
        within(
            "retry.max_elapsed_secs",
            self.retry.max_elapsed_secs,
            0,
            24 * HOUR_SECS,
            "seconds",
        )?;
        within(
            "shutdown.drain_timeout_secs",
            self.shutdown.drain_timeout_secs,
            0,
            HOUR_SECS,
            "seconds",
        )?;
        within(
            "log.summary_secs",
            self.log.summary_secs,
            0,
            24 * HOUR_SECS,
            "seconds",
        )?;
        within(
            "ingest.max_concurrent_requests",
            self.ingest.max_concurrent_requests as u64,
            1,
            10_000,
            "requests",
        )?;
        within(
            "ingest.max_connections",
            self.ingest.max_connections as u64,
            1,
            1_000_000,
            "connections",
        )?;
        within(
            "ingest.header_timeout_secs",
            self.ingest.header_timeout_secs,
            1,
            HOUR_SECS,
            "seconds",
        )?;
        if let Some((key, problem)) = crate::gateway::access::problem(&self.ingest.access) {
            return Err(ConfigError::Invalid(format!("{key}: {problem}")));
        }
        within(
            "dead_letter.max_replays",
            self.dead_letter.max_replays.into(),
            1,
            1000,
            "replays of one message",
        )?;
        Ok(())
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_body_bytes: self.limits.max_body_bytes,
            max_events_per_message: self.limits.max_events_per_message,
            max_output_bytes: self.limits.max_output_bytes,
        }
    }
}

/// Refuses `value` outside `lo..=hi`, naming the key and the range.
fn within(key: &'static str, value: u64, lo: u64, hi: u64, unit: &str) -> Result<(), ConfigError> {
    if (lo..=hi).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::Rejected {
            key,
            problem: format!("{value} is out of range: must be between {lo} and {hi} ({unit})"),
        })
    }
}

/// A backoff's first and longest delay, in milliseconds: `1 <= initial <= max <= 1 hour`.
fn backoff_range(
    (initial_key, initial): (&'static str, u64),
    (max_key, max): (&'static str, u64),
) -> Result<(), ConfigError> {
    let hour_ms = HOUR_SECS * 1000;
    if max < initial || max > hour_ms {
        return Err(ConfigError::Rejected {
            key: max_key,
            problem: format!(
                "{max} is out of range: must be between {initial_key} ({initial}) and {hour_ms} (milliseconds)"
            ),
        });
    }
    if initial == 0 {
        return Err(ConfigError::Rejected {
            key: initial_key,
            problem: format!(
                "0 is out of range: must be between 1 and {max_key} ({max}) (milliseconds)"
            ),
        });
    }
    Ok(())
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
}

impl ShutdownSettings {
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout_secs)
    }
}

/// figment's message with the key path, which it already names ("for key
/// `default.input.prefetch`"); its "default." profile prefix is dropped. Where the value
/// came from follows: the file (a TOML syntax error has no key path, only a line) or
/// the environment variable.
fn describe_figment_error(e: figment::Error) -> String {
    e.into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let what = e.kind.to_string();
            let what = what.trim_end();
            let origin = match e.metadata.as_ref().map(|m| (m.source.as_ref(), &m.name)) {
                Some((Some(figment::Source::File(file)), _)) => Some(file.display().to_string()),
                Some((_, name)) if name.ends_with("environment variable(s)") && !key.is_empty() => {
                    Some(format!(
                        "{ENV_PREFIX}{}",
                        e.path.join("__").to_ascii_uppercase()
                    ))
                }
                _ => None,
            };
            match (key.is_empty(), origin) {
                (true, Some(origin)) => format!("{origin}: {what}"),
                (true, None) => what.to_owned(),
                (false, Some(origin)) => format!("{key}: {what} (in {origin})"),
                (false, None) => format!("{key}: {what}"),
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return figment::Error
mod tests {
    use super::*;

    /// Loads with these environment variables set, in figment's jail (a temporary
    /// directory and environment, restored afterwards, one test at a time).
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

    /// `webhook-normalizer config`: the layers merged, and no secret in what it prints.
    #[test]
    fn the_effective_settings_are_printed_with_every_secret_masked() {
        let mut out = None;
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "my.toml",
                r#"
[input]
prefetch = 7
[signatures.deel]
secrets = ["deel-secret-aaaaaaaaaaaa"]
labels = { v2 = "deel-label-secret-bbbbbbbb" }
[ingest.access.authenticate]
path_tokens = ["path-token-cccccccccccccc"]
basic = ["gateway:basic-password-dddddddd"]
"#,
            )?;
            jail.set_env(
                "NORMALIZER__AMQP__URL",
                "amqp://team:pa55word@rabbit:5672/team",
            );
            out = Some(Settings::masked_table(Some(Path::new("my.toml"))));
            Ok(())
        });
        let table = out.expect("jail ran").unwrap();
        let text = toml::to_string(&table).unwrap();
        for secret in [
            "pa55word",
            "deel-secret",
            "deel-label",
            "path-token",
            "basic-password",
        ] {
            assert!(!text.contains(secret), "{secret} shown in:\n{text}");
        }
        assert_eq!(
            table["amqp"]["url"].as_str(),
            Some("amqp://team:****@rabbit:5672/team")
        );
        assert_eq!(table["input"]["prefetch"].as_integer(), Some(7));
        assert_eq!(table["input"]["exchange"].as_str(), Some("webhooks.raw"));
        assert_eq!(
            table["ingest"]["access"]["authenticate"]["basic"][0].as_str(),
            Some("gateway:****")
        );
        assert_eq!(
            table["signatures"]["deel"]["labels"]["v2"].as_str(),
            Some("****")
        );
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let s = load_env(&[]).unwrap();
        assert_eq!(s.amqp.url.expose(), "amqp://guest:guest@127.0.0.1:5672/%2f");
        assert_eq!(s.input.exchange, "webhooks.raw");
        assert_eq!(s.input.queue, "normalizer.raw");
        assert_eq!(s.input.binding_key, "#");
        assert_eq!(s.input.prefetch, 256);
        assert_eq!(s.output.exchange, "events.canonical");
        assert_eq!(s.output.unrouted_exchange, "events.unrouted");
        assert_eq!(s.output.unrouted_queue, "events.unrouted");
        assert_eq!(s.output.unrouted_max_length, 100_000);
        assert_eq!(s.output.unrouted_max_age_secs, 7 * 24 * 3600);
        assert_eq!(s.dead_letter.exchange, "webhooks.dead-letter");
        assert_eq!(s.dead_letter.queue, "normalizer.dead-letter");
        assert_eq!(s.limits.max_body_bytes, 1024 * 1024);
        assert_eq!(s.limits(), Limits::default());
        assert_eq!(s.limits.max_in_flight_bytes, 64 * 1024 * 1024);
        assert_eq!(s.retry.initial_ms, 100);
        assert_eq!(s.retry.max_ms, 5000);
        assert_eq!(s.retry.max_elapsed_secs, 60);
        assert!(!s.input.single_active_consumer);
        assert_eq!(s.http.listen.to_string(), "127.0.0.1:9090");
        assert_eq!(s.log.format, LogFormat::Text);
    }

    #[test]
    fn unmapped_types_are_dead_letters_unless_a_vendor_passes_them_through() {
        use crate::canonical::Vendor;
        use crate::vendors::{Unmapped, UnmappedPolicy};
        let s = load_env(&[]).unwrap();
        assert_eq!(s.unmapped, Unmapped::default());
        assert_eq!(s.unmapped.of(Vendor::Deel), UnmappedPolicy::DeadLetter);
        let s = load_env(&[("NORMALIZER__UNMAPPED__DEEL", "passthrough")]).unwrap();
        assert_eq!(s.unmapped.of(Vendor::Deel), UnmappedPolicy::Passthrough);
        assert_eq!(s.unmapped.of(Vendor::Entuitive), UnmappedPolicy::DeadLetter);
        let e = load_env(&[("NORMALIZER__UNMAPPED__DEEL", "pass")]).unwrap_err();
        assert!(e.to_string().contains("unmapped.deel"), "{e}");
        assert!(e.to_string().contains("dead-letter"), "{e}");
        let e = load_env(&[("NORMALIZER__UNMAPPED__ACME", "passthrough")]).unwrap_err();
        assert!(e.to_string().contains("acme"), "{e}");
    }

    #[test]
    fn the_schema_base_is_the_repositorys_unless_set() {
        use crate::canonical::SchemaBase;
        let s = load_env(&[]).unwrap();
        assert_eq!(s.schemas.base_uri, SchemaBase::default());
        let s = load_env(&[(
            "NORMALIZER__SCHEMAS__BASE_URI",
            "https://schemas.example.com/hr/",
        )])
        .unwrap();
        assert_eq!(
            s.schemas.base_uri.data_schema_document(),
            "https://schemas.example.com/hr/event-data.v1.schema.json"
        );
        let e = load_env(&[(
            "NORMALIZER__SCHEMAS__BASE_URI",
            "https://schemas.example.com/hr",
        )])
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("schemas.base_uri: "), "{e}");
        assert!(e.contains("NORMALIZER__SCHEMAS__BASE_URI"), "{e}");
    }

    #[test]
    fn invalid_values_name_their_key() {
        let e = load_env(&[("NORMALIZER__INPUT__PREFETCH", "0")]).unwrap_err();
        assert!(e.to_string().starts_with("input.prefetch: "), "{e}");
        let e = load_env(&[("NORMALIZER__INPUT__PREFETCH", "many")]).unwrap_err();
        assert!(e.to_string().contains("input.prefetch"), "{e}");
        let e = load_env(&[("NORMALIZER__INPUT__PREFETCH", "70000")]).unwrap_err();
        assert!(e.to_string().contains("input.prefetch"), "{e}");
        let e = load_env(&[("NORMALIZER__HTTP__LISTEN", "nowhere")]).unwrap_err();
        assert!(e.to_string().contains("http.listen"), "{e}");
        let e = load_env(&[("NORMALIZER__LIMITS__MAX_BODY_BYTES", "0")]).unwrap_err();
        assert!(e.to_string().starts_with("limits.max_body_bytes: "), "{e}");
        let e = load_env(&[("NORMALIZER__LIMITS__MAX_OUTPUT_BYTES", "1048576")]).unwrap_err();
        assert!(
            e.to_string().starts_with("limits.max_output_bytes: "),
            "{e}"
        );
        let e = load_env(&[("NORMALIZER__LIMITS__MAX_IN_FLIGHT_BYTES", "1")]).unwrap_err();
        assert!(
            e.to_string().starts_with("limits.max_in_flight_bytes: "),
            "{e}"
        );
        let e = load_env(&[("NORMALIZER__LIMITS__MAX_EVENTS_PER_MESSAGE", "0")]).unwrap_err();
        assert!(
            e.to_string().starts_with("limits.max_events_per_message: "),
            "{e}"
        );
        let e = load_env(&[("NORMALIZER__RETRY__MAX_MS", "1")]).unwrap_err();
        assert!(e.to_string().starts_with("retry.max_ms: "), "{e}");
        let e = load_env(&[("NORMALIZER__AMQP__SURPRISE", "1")]).unwrap_err();
        assert!(e.to_string().contains("surprise"), "{e}");
    }

    /// Every duration is bounded: an absurd value (up to u64::MAX, which used to overflow
    /// `Duration`/`Instant` arithmetic and panic) is refused naming the key and the range.
    #[test]
    fn durations_out_of_range_name_the_key_and_the_range() {
        let max = u64::MAX.to_string();
        let cases: [(&str, &str, &str, &str); 16] = [
            (
                "SHUTDOWN__DRAIN_TIMEOUT_SECS",
                &max,
                "shutdown.drain_timeout_secs",
                "between 0 and 3600",
            ),
            (
                "SHUTDOWN__DRAIN_TIMEOUT_SECS",
                "3601",
                "shutdown.drain_timeout_secs",
                "between 0 and 3600",
            ),
            (
                "AMQP__HEARTBEAT_SECS",
                "3601",
                "amqp.heartbeat_secs",
                "between 1 and 3600",
            ),
            (
                "AMQP__CONNECT_TIMEOUT_SECS",
                &max,
                "amqp.connect_timeout_secs",
                "between 1 and 3600",
            ),
            (
                "AMQP__CONFIRM_TIMEOUT_SECS",
                &max,
                "amqp.confirm_timeout_secs",
                "between 1 and 3600",
            ),
            (
                "AMQP__CONFIRM_TIMEOUT_SECS",
                "0",
                "amqp.confirm_timeout_secs",
                "between 1 and 3600",
            ),
            (
                "AMQP__RECONNECT_INITIAL_MS",
                "0",
                "amqp.reconnect_initial_ms",
                "between 1 and amqp.reconnect_max_ms (30000)",
            ),
            (
                "AMQP__RECONNECT_MAX_MS",
                &max,
                "amqp.reconnect_max_ms",
                "and 3600000",
            ),
            (
                "RETRY__INITIAL_MS",
                "0",
                "retry.initial_ms",
                "between 1 and retry.max_ms (5000)",
            ),
            ("RETRY__MAX_MS", &max, "retry.max_ms", "and 3600000"),
            (
                "RETRY__MAX_ELAPSED_SECS",
                &max,
                "retry.max_elapsed_secs",
                "between 0 and 86400",
            ),
            (
                "INPUT__DELIVERY_LIMIT",
                "0",
                "input.delivery_limit",
                "at least 1",
            ),
            (
                "OUTPUT__UNROUTED_MAX_LENGTH",
                "0",
                "output.unrouted_max_length",
                "between 1 and 100000000",
            ),
            (
                "OUTPUT__UNROUTED_MAX_LENGTH",
                "100000001",
                "output.unrouted_max_length",
                "between 1 and 100000000",
            ),
            (
                "OUTPUT__UNROUTED_MAX_AGE_SECS",
                "59",
                "output.unrouted_max_age_secs",
                "between 60 and 4294967",
            ),
            (
                "OUTPUT__UNROUTED_MAX_AGE_SECS",
                "4294968",
                "output.unrouted_max_age_secs",
                "between 60 and 4294967",
            ),
        ];
        for (var, value, key, range) in cases {
            let e = load_env(&[(&format!("{ENV_PREFIX}{var}"), value)])
                .expect_err(&format!("{var}={value} must be refused"))
                .to_string();
            assert!(e.starts_with(&format!("{key}: ")), "{var}={value}: {e}");
            assert!(e.contains(range), "{var}={value}: {e}");
        }
        // The ends of each range are accepted.
        let s = load_env(&[
            ("NORMALIZER__SHUTDOWN__DRAIN_TIMEOUT_SECS", "0"),
            ("NORMALIZER__AMQP__HEARTBEAT_SECS", "3600"),
            ("NORMALIZER__AMQP__CONFIRM_TIMEOUT_SECS", "3600"),
            ("NORMALIZER__AMQP__RECONNECT_MAX_MS", "3600000"),
            ("NORMALIZER__RETRY__MAX_MS", "3600000"),
            ("NORMALIZER__RETRY__MAX_ELAPSED_SECS", "86400"),
            ("NORMALIZER__OUTPUT__UNROUTED_MAX_LENGTH", "100000000"),
            ("NORMALIZER__OUTPUT__UNROUTED_MAX_AGE_SECS", "4294967"),
        ])
        .unwrap();
        assert_eq!(s.output.unrouted_max_length, 100_000_000);
        assert_eq!(s.output.unrouted_max_age_secs, 4_294_967);
        assert_eq!(s.shutdown.drain_timeout(), Duration::ZERO);
        assert_eq!(s.retry.max(), Duration::from_secs(3600));
    }

    /// Each exchange and queue has one role: a dead-letter exchange that is the raw
    /// exchange would send every dead letter back to be consumed, fail again and loop.
    #[test]
    fn one_name_for_two_roles_is_refused_naming_both() {
        let cases = [
            (
                "DEAD_LETTER__EXCHANGE",
                "webhooks.raw",
                "dead_letter.exchange",
                "input.exchange",
            ),
            (
                "OUTPUT__EXCHANGE",
                "webhooks.raw",
                "output.exchange",
                "input.exchange",
            ),
            (
                "OUTPUT__TAP_EXCHANGE",
                "events.canonical",
                "output.tap_exchange",
                "output.exchange",
            ),
            (
                "OUTPUT__UNROUTED_EXCHANGE",
                "events.canonical",
                "output.unrouted_exchange",
                "output.exchange",
            ),
            (
                "DEAD_LETTER__QUEUE",
                "normalizer.raw",
                "dead_letter.queue",
                "input.queue",
            ),
            (
                "OUTPUT__UNROUTED_QUEUE",
                "normalizer.dead-letter",
                "dead_letter.queue",
                "output.unrouted_queue",
            ),
        ];
        for (var, value, key, other) in cases {
            let e = load_env(&[(&format!("{ENV_PREFIX}{var}"), value)])
                .expect_err(&format!("{var}={value} must be refused"))
                .to_string();
            assert!(
                e.starts_with(&format!("{key}: must differ from {other}")),
                "{var}={value}: {e}"
            );
        }
    }

    /// The same from a file, where TOML's integers are signed 64-bit: a value beyond them
    /// is a TOML error, still naming the key.
    #[test]
    fn durations_out_of_range_in_a_file_name_the_key() {
        for (value, wants) in [
            ("9223372036854775807", "between 0 and 3600"),
            ("18446744073709551615", ""),
            ("-1", ""),
        ] {
            figment::Jail::expect_with(|jail| {
                jail.create_file(
                    "normalizer.toml",
                    &format!("[shutdown]\ndrain_timeout_secs = {value}\n"),
                )?;
                let e = Settings::load(Some(Path::new("normalizer.toml")))
                    .expect_err(value)
                    .to_string();
                assert!(e.contains("drain_timeout_secs"), "{value}: {e}");
                assert!(e.contains(wants), "{value}: {e}");
                Ok(())
            });
        }
    }

    #[test]
    fn an_invalid_log_filter_names_log_filter() {
        let e = load_env(&[("NORMALIZER__LOG__FILTER", "info,[[[")]).unwrap_err();
        assert!(e.to_string().starts_with("log.filter: "), "{e}");
        assert!(load_env(&[("NORMALIZER__LOG__FILTER", "webhook_normalizer=debug,warn")]).is_ok());
    }

    /// `http.listen` takes `host:port` with a host name, resolved when the worker starts,
    /// as well as IP addresses; anything else is refused naming the key.
    #[test]
    fn http_listen_takes_a_host_name_and_refuses_garbage() {
        let s = load_env(&[("NORMALIZER__HTTP__LISTEN", "localhost:9090")]).unwrap();
        assert_eq!(s.http.listen.to_string(), "localhost:9090");
        let addrs = s.http.listen.resolve().unwrap();
        assert!(
            addrs.contains(&"127.0.0.1:9090".parse().unwrap()),
            "{addrs:?}"
        );
        for ok in [
            "127.0.0.1:0",
            "0.0.0.0:9090",
            "[::1]:9090",
            "health-1.internal:9090",
        ] {
            assert!(
                load_env(&[("NORMALIZER__HTTP__LISTEN", ok)]).is_ok(),
                "{ok}"
            );
        }
        let literal = load_env(&[("NORMALIZER__HTTP__LISTEN", "[::1]:9090")]).unwrap();
        assert_eq!(
            literal.http.listen.resolve().unwrap(),
            ["[::1]:9090".parse().unwrap()]
        );
        for garbage in [
            "nowhere",
            "localhost:",
            ":9090",
            "localhost:99999",
            "localhost:http",
            "local host:9090",
            "http://localhost:9090",
            "::1:9090",
            "[::1:9090",
        ] {
            let e = load_env(&[("NORMALIZER__HTTP__LISTEN", garbage)]).unwrap_err();
            assert!(e.to_string().starts_with("http.listen: "), "{garbage}: {e}");
        }
    }

    /// A figment error says where the bad value came from: the file (a TOML syntax error
    /// has no key to name) or the environment variable.
    #[test]
    fn errors_name_the_file_or_variable_they_come_from() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("broken.toml", "[amqp\n")?;
            let e = Settings::load(Some(Path::new("broken.toml")))
                .unwrap_err()
                .to_string();
            assert!(e.contains("broken.toml"), "{e}");
            jail.create_file("typo.toml", "[input]\nprefetch = \"many\"\n")?;
            let e = Settings::load(Some(Path::new("typo.toml")))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("input.prefetch: "), "{e}");
            assert!(e.contains("typo.toml"), "{e}");
            Ok(())
        });
        let e = load_env(&[("NORMALIZER__INPUT__PREFETCH", "many")]).unwrap_err();
        assert!(e.to_string().starts_with("input.prefetch: "), "{e}");
        assert!(e.to_string().contains("NORMALIZER__INPUT__PREFETCH"), "{e}");
        let e = load_env(&[("NORMALIZER__AMQP__SURPRISE", "1")]).unwrap_err();
        assert!(e.to_string().contains("NORMALIZER__AMQP__SURPRISE"), "{e}");
    }

    #[test]
    fn bad_url_errors_never_show_the_password() {
        for url in [
            "amqp//guest:s3cret@host",
            "amqp://guest:s3cret@host:5671/",
            "http://u:s3cret@[::1",
        ] {
            let e = load_env(&[("NORMALIZER__AMQP__URL", url)]).unwrap_err();
            assert!(e.to_string().starts_with("amqp.url: "), "{e}");
            assert!(!e.to_string().contains("s3cret"), "{e}");
        }
    }

    #[test]
    fn signature_secrets_come_as_lists_and_are_never_shown() {
        let s = load_env(&[
            (
                "NORMALIZER__SIGNATURES__DEEL__SECRETS",
                r#"["old-s3cret", "new-s3cret"]"#,
            ),
            (
                "NORMALIZER__SIGNATURES__DEEL__LABELS",
                r#"{k1 = "l4bel-s3cret"}"#,
            ),
            (
                "NORMALIZER__SIGNATURES__ENTUITIVE__SECRETS",
                r#"["e-s3cret"]"#,
            ),
        ])
        .unwrap();
        assert_eq!(s.signatures.deel.secrets.len(), 2);
        assert!(s.signatures.deel.labels.contains_key("k1"));
        assert_eq!(s.signatures.entuitive.secrets.len(), 1);
        assert!(!format!("{s:?}").contains("s3cret"));
        let e = load_env(&[("NORMALIZER__SIGNATURES__AUTHENTICATE__SECRETS", r#"["x"]"#)])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("signatures.authenticate: Authenticate publishes no signature scheme"),
            "{e}"
        );
        let e = load_env(&[("NORMALIZER__SIGNATURES__DEEL__SECRETS", r#"[""]"#)]).unwrap_err();
        assert!(e.to_string().contains("a secret is empty"), "{e}");
    }

    /// Every secret setting can come from a file instead (`*_file`): its trailing line
    /// ending taken off, one secret a line where the setting is a list; the secrets
    /// are never shown, not in `Debug` and not in an error.
    #[test]
    fn secrets_can_come_from_files() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("url", "amqp://ops:fr0m-a-f1le@rabbit:5672/prod\n")?;
            jail.create_file("deel", "old-s3cret\r\nnew-s3cret\n\n")?;
            jail.create_file("labels", "k1=l4bel=s3cret\n")?;
            jail.create_file("entuitive", "e-s3cret")?;
            jail.create_file("tokens", "t0ken-0123456789abcdef\n")?;
            jail.create_file("basic", "authn:a-long-passw0rd-123\n")?;
            let dir = jail.directory().to_owned();
            let at = |f: &str| dir.join(f).display().to_string();
            jail.set_env("NORMALIZER__AMQP__URL_FILE", at("url"));
            jail.set_env("NORMALIZER__SIGNATURES__DEEL__SECRETS_FILE", at("deel"));
            jail.set_env("NORMALIZER__SIGNATURES__DEEL__LABELS_FILE", at("labels"));
            jail.set_env(
                "NORMALIZER__SIGNATURES__ENTUITIVE__SECRETS_FILE",
                at("entuitive"),
            );
            jail.set_env(
                "NORMALIZER__INGEST__ACCESS__AUTHENTICATE__PATH_TOKENS_FILE",
                at("tokens"),
            );
            jail.set_env(
                "NORMALIZER__INGEST__ACCESS__AUTHENTICATE__BASIC_FILE",
                at("basic"),
            );
            let s = Settings::load(None).unwrap();
            assert_eq!(
                s.amqp.url.expose(),
                "amqp://ops:fr0m-a-f1le@rabbit:5672/prod"
            );
            let exposed = |list: &[crate::signatures::Secret]| -> Vec<String> {
                list.iter().map(|s| s.expose().to_owned()).collect()
            };
            assert_eq!(
                exposed(&s.signatures.deel.secrets),
                ["old-s3cret", "new-s3cret"]
            );
            assert_eq!(s.signatures.deel.labels["k1"].expose(), "l4bel=s3cret");
            assert_eq!(exposed(&s.signatures.entuitive.secrets), ["e-s3cret"]);
            let access = &s.ingest.access["authenticate"];
            assert_eq!(exposed(&access.path_tokens), ["t0ken-0123456789abcdef"]);
            assert_eq!(exposed(&access.basic), ["authn:a-long-passw0rd-123"]);
            let shown = format!("{s:?}");
            for secret in ["fr0m-a-f1le", "s3cret", "t0ken", "passw0rd"] {
                assert!(!shown.contains(secret), "{secret} in {shown}");
            }
            Ok(())
        });
    }

    /// A secret's file that cannot be used is named with its setting and path, never its
    /// content; a file and the value both set is refused.
    #[test]
    fn secret_file_errors_name_the_setting_and_the_path() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("empty", "\n")?;
            jail.create_file("blank", "\n  \n\n")?;
            jail.create_file("labels", "no-equals-s3cret\n")?;
            jail.create_file("deel", "s3cret\n")?;
            let dir = jail.directory().to_owned();
            let at = |f: &str| dir.join(f).display().to_string();
            let cases = [
                (
                    "NORMALIZER__AMQP__URL_FILE",
                    at("missing"),
                    format!(
                        "amqp.url_file: {}: cannot be read (No such file",
                        at("missing")
                    ),
                ),
                (
                    "NORMALIZER__AMQP__URL_FILE",
                    at("empty"),
                    format!("amqp.url_file: {}: is empty", at("empty")),
                ),
                (
                    "NORMALIZER__SIGNATURES__ENTUITIVE__SECRETS_FILE",
                    at("blank"),
                    format!(
                        "signatures.entuitive.secrets_file: {}: holds only blank lines",
                        at("blank")
                    ),
                ),
                (
                    "NORMALIZER__SIGNATURES__DEEL__LABELS_FILE",
                    at("labels"),
                    format!(
                        "signatures.deel.labels_file: {}: write each line as label=secret",
                        at("labels")
                    ),
                ),
                (
                    "NORMALIZER__INGEST__ACCESS__DEEL__BASIC_FILE",
                    at("missing"),
                    format!(
                        "ingest.access.deel.basic_file: {}: cannot be read",
                        at("missing")
                    ),
                ),
            ];
            for (var, value, want) in cases {
                jail.clear_env();
                jail.set_env(var, &value);
                let e = Settings::load(None).unwrap_err().to_string();
                assert!(e.starts_with(&want), "{e}\nwanted {want}");
                assert!(!e.contains("s3cret"), "{e}");
            }
            jail.clear_env();
            jail.set_env("NORMALIZER__SIGNATURES__DEEL__SECRETS", r#"["inline"]"#);
            jail.set_env("NORMALIZER__SIGNATURES__DEEL__SECRETS_FILE", at("deel"));
            let e = Settings::load(None).unwrap_err().to_string();
            assert!(
                e.starts_with(
                    "signatures.deel.secrets_file: (both set): set signatures.deel.secrets or signatures.deel.secrets_file, not both"
                ),
                "{e}"
            );
            // The file's secrets are checked like the setting's.
            jail.clear_env();
            jail.create_file("short", "short\n")?;
            jail.set_env(
                "NORMALIZER__INGEST__ACCESS__AUTHENTICATE__PATH_TOKENS_FILE",
                at("short"),
            );
            let e = Settings::load(None).unwrap_err().to_string();
            assert!(e.contains("ingest.access.authenticate.path_tokens"), "{e}");
            assert!(!e.contains("short\n"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn several_urls_each_checked_and_masked() {
        let two = "amqp://u:s3cret@a:5672/%2f, amqp://u:s3cret@b:5672/%2f";
        let s = load_env(&[("NORMALIZER__AMQP__URL", two)]).unwrap();
        let urls = s.amqp.url.each();
        assert_eq!(urls.len(), 2);
        assert_eq!(urls[1].expose(), "amqp://u:s3cret@b:5672/%2f");
        assert_eq!(
            s.amqp.url.masked(),
            "amqp://u:****@a:5672/%2f,amqp://u:****@b:5672/%2f"
        );
        let e = load_env(&[("NORMALIZER__AMQP__URL", "amqp://u:s3cret@a/%2f,amqp//b")])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("amqp.url: URL 2 of 2: not an AMQP URI"),
            "{e}"
        );
        assert!(!e.contains("s3cret"), "{e}");
        let e = load_env(&[(
            "NORMALIZER__AMQP__URL",
            "amqp://u:p@a/%2f,amqps://u:p@b/%2f",
        )])
        .unwrap_err();
        assert!(e.to_string().contains("mix amqp:// and amqps://"), "{e}");
    }

    #[test]
    fn tls_files_need_amqps_and_a_certificate_needs_its_key() {
        let e = load_env(&[("NORMALIZER__AMQP__TLS__CA_FILE", "/etc/ca.pem")]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("amqp.tls: TLS files are set but amqp.url is amqp://"),
            "{e}"
        );
        let amqps = ("NORMALIZER__AMQP__URL", "amqps://u:p@broker:5671/%2f");
        let e = load_env(&[amqps, ("NORMALIZER__AMQP__TLS__CERT_FILE", "/c.pem")]).unwrap_err();
        assert!(
            e.to_string().contains("cert_file and key_file go together"),
            "{e}"
        );
        let s = load_env(&[amqps, ("NORMALIZER__AMQP__TLS__CA_FILE", "/etc/ca.pem")]).unwrap();
        assert_eq!(
            s.amqp.tls.ca_file.as_deref(),
            Some(Path::new("/etc/ca.pem"))
        );
    }

    /// A trailing `/` names the empty vhost, which RabbitMQ never has: every connection
    /// would be refused. Said at start, with the way to name the default vhost.
    #[test]
    fn a_trailing_slash_naming_the_empty_vhost_is_refused() {
        for url in [
            "amqp://guest:s3cret@127.0.0.1:5672/",
            "amqp://guest:s3cret@rabbit/?heartbeat=5",
        ] {
            let e = load_env(&[("NORMALIZER__AMQP__URL", url)])
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("amqp.url: "), "{e}");
            assert!(e.contains("empty vhost") && e.contains("%2f"), "{e}");
            assert!(!e.contains("s3cret"), "{e}");
        }
        let e = load_env(&[("NORMALIZER__AMQP__URL", "amqp://guest:s3cret@rabbit:5672/")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("(amqp://guest:****@rabbit:5672/%2f)"), "{e}");
        for url in [
            "amqp://guest:s3cret@127.0.0.1:5672/%2f",
            "amqp://guest:s3cret@127.0.0.1:5672",
            "amqp://guest:s3cret@127.0.0.1:5672/prod",
        ] {
            assert!(load_env(&[("NORMALIZER__AMQP__URL", url)]).is_ok(), "{url}");
        }
    }

    #[test]
    fn ipv6_literal_hosts_are_refused_rather_than_misrouted() {
        let e = load_env(&[("NORMALIZER__AMQP__URL", "amqp://u:p@[::1]:5672/%2f")]).unwrap_err();
        assert!(e.to_string().starts_with("amqp.url: IPv6"), "{e}");
        assert!(load_env(&[("NORMALIZER__AMQP__URL", "amqp://u:p@rabbit:5672/%2f")]).is_ok());
    }

    #[test]
    fn urls_print_masked() {
        let cases = [
            (
                "amqp://guest:guest@127.0.0.1:5672/%2f",
                "amqp://guest:****@127.0.0.1:5672/%2f",
            ),
            (
                "amqp://user:p%40ss@host/vh?heartbeat=5",
                "amqp://user:****@host/vh?heartbeat=5",
            ),
            ("amqp://user@host/", "amqp://user@host/"),
            ("amqp://host:5672", "amqp://host:5672"),
            ("amqp://u:p@ss@host/", "amqp://u:****@host/"),
            ("garbage", "(not a URI)"),
        ];
        for (url, want) in cases {
            let u = AmqpUrl::new(url);
            assert_eq!(u.masked(), want);
            assert_eq!(format!("{u}"), want);
            assert_eq!(format!("{u:?}"), format!("AmqpUrl({want})"));
        }
    }

    #[test]
    fn file_overlays_defaults_and_env_overlays_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "normalizer.toml",
                "[input]\nprefetch = 32\nqueue = \"from-file\"\n",
            )?;
            jail.set_env("NORMALIZER__INPUT__QUEUE", "from-env");
            let s = Settings::load(Some(Path::new("normalizer.toml"))).expect("loads");
            assert_eq!(s.input.prefetch, 32);
            assert_eq!(s.input.queue, "from-env");
            assert_eq!(s.input.exchange, "webhooks.raw");
            Ok(())
        });
    }

    #[test]
    fn missing_config_file_is_an_error() {
        let e = Settings::load(Some(Path::new("/nonexistent/normalizer.toml"))).unwrap_err();
        assert!(matches!(e, ConfigError::MissingFile(_)), "{e}");
    }
}
