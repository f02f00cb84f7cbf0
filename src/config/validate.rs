//! Checking the loaded settings, once, at start: one function a section, called in one
//! order from [`Settings::validate`]; the first problem found is the one reported. Two
//! checks span sections (the exchange and queue names, and their roles) and have a
//! function each. Every error names the key.

use super::{
    AmqpSettings, ConfigError, DeadLetterSettings, HistorySettings, IngestSettings, InputSettings,
    LimitSettings, LogSettings, OutputSettings, RetrySettings, Settings, ShutdownSettings,
    TlsSettings, TracingSettings,
};

const MIB: usize = 1024 * 1024;
const UNROUTED_MAX_LENGTH_LIMIT: u64 = 100_000_000;
/// RabbitMQ takes a message TTL of at most 2^32-1 ms.
const UNROUTED_MAX_AGE_LIMIT_SECS: u64 = u32::MAX as u64 / 1000;
const HOUR_SECS: u64 = 3600;

impl Settings {
    /// Every check, section by section. With problems in several sections, the one
    /// reported is the first in this order (`docs/configuration.md` states it).
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        amqp(&self.amqp)?;
        input(&self.input)?;
        names(self)?;
        tls(&self.amqp.tls)?;
        if let Some((key, problem)) = self.signatures.problem() {
            return reject(key, problem);
        }
        output(&self.output)?;
        roles(self)?;
        log(&self.log)?;
        limits(&self.limits)?;
        retry(&self.retry)?;
        shutdown(&self.shutdown)?;
        ingest(&self.ingest)?;
        dead_letter(&self.dead_letter)?;
        history(&self.history)?;
        tracing(&self.tracing)
    }
}

fn reject(key: &'static str, problem: &str) -> Result<(), ConfigError> {
    Err(ConfigError::Rejected {
        key,
        problem: problem.to_owned(),
    })
}

/// `amqp`: each URL, one scheme for all, the timeouts and the reconnect backoff.
fn amqp(amqp: &AmqpSettings) -> Result<(), ConfigError> {
    let urls = amqp.url.each();
    for (i, url) in urls.iter().enumerate() {
        url.validate(amqp.tls.is_set()).map_err(|problem| {
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
        amqp.heartbeat_secs.into(),
        1,
        HOUR_SECS,
        "seconds",
    )?;
    within(
        "amqp.connect_timeout_secs",
        amqp.connect_timeout_secs,
        1,
        HOUR_SECS,
        "seconds",
    )?;
    within(
        "amqp.confirm_timeout_secs",
        amqp.confirm_timeout_secs,
        1,
        HOUR_SECS,
        "seconds",
    )?;
    backoff_range(
        ("amqp.reconnect_initial_ms", amqp.reconnect_initial_ms),
        ("amqp.reconnect_max_ms", amqp.reconnect_max_ms),
    )
}

/// `input`: the prefetch and the delivery limit.
fn input(input: &InputSettings) -> Result<(), ConfigError> {
    if input.prefetch == 0 {
        return reject(
            "input.prefetch",
            "must be at least 1 (0 would mean unlimited)",
        );
    }
    if input.delivery_limit == 0 {
        return reject("input.delivery_limit", "must be at least 1");
    }
    Ok(())
}

/// The names of `input`, `output` and `dead_letter`: each one RabbitMQ takes.
fn names(s: &Settings) -> Result<(), ConfigError> {
    let names: [(&'static str, &str); 10] = [
        ("input.exchange", &s.input.exchange),
        ("input.queue", &s.input.queue),
        ("input.binding_key", &s.input.binding_key),
        ("output.exchange", &s.output.exchange),
        ("output.tap_exchange", &s.output.tap_exchange),
        ("output.unrouted_exchange", &s.output.unrouted_exchange),
        ("output.unrouted_queue", &s.output.unrouted_queue),
        ("dead_letter.exchange", &s.dead_letter.exchange),
        ("dead_letter.queue", &s.dead_letter.queue),
        ("history.stream", &s.history.stream),
    ];
    for (key, name) in names {
        if name.trim().is_empty() {
            return reject(key, "must not be empty");
        }
        if name.len() > 255 || name.starts_with("amq.") {
            return reject(key, "must be at most 255 bytes and not start with amq.");
        }
    }
    Ok(())
}

/// `amqp.tls`: a client certificate comes with its key. (That TLS files need
/// `amqps://` is checked with the URL.)
fn tls(tls: &TlsSettings) -> Result<(), ConfigError> {
    if tls.cert_file.is_some() != tls.key_file.is_some() {
        return reject(
            "amqp.tls",
            "cert_file and key_file go together (a client certificate and its key)",
        );
    }
    Ok(())
}

impl TlsSettings {
    fn is_set(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()
    }
}

/// `output`: the unrouted queue's bounds.
fn output(output: &OutputSettings) -> Result<(), ConfigError> {
    if !(1..=UNROUTED_MAX_LENGTH_LIMIT).contains(&output.unrouted_max_length) {
        return reject(
            "output.unrouted_max_length",
            "must be between 1 and 100000000",
        );
    }
    if !(60..=UNROUTED_MAX_AGE_LIMIT_SECS).contains(&output.unrouted_max_age_secs) {
        return reject(
            "output.unrouted_max_age_secs",
            "must be between 60 and 4294967 (RabbitMQ's message TTL is at most 2^32-1 ms)",
        );
    }
    Ok(())
}

/// The exchanges and queues of `input`, `output` and `dead_letter`: one role each.
fn roles(s: &Settings) -> Result<(), ConfigError> {
    // Two roles on one exchange or queue would loop or mix: a dead letter published
    // to the raw exchange comes back as a raw message, fails again, and so on.
    let exchanges: [(&'static str, &str); 5] = [
        ("input.exchange", &s.input.exchange),
        ("output.exchange", &s.output.exchange),
        ("output.tap_exchange", &s.output.tap_exchange),
        ("output.unrouted_exchange", &s.output.unrouted_exchange),
        ("dead_letter.exchange", &s.dead_letter.exchange),
    ];
    let queues: [(&'static str, &str); 4] = [
        ("input.queue", &s.input.queue),
        ("output.unrouted_queue", &s.output.unrouted_queue),
        ("dead_letter.queue", &s.dead_letter.queue),
        ("history.stream", &s.history.stream),
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
    Ok(())
}

/// `log`: the filter parses, the summaries' interval.
fn log(log: &LogSettings) -> Result<(), ConfigError> {
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log.filter) {
        return reject("log.filter", &format!("not a log filter: {e}"));
    }
    within(
        "log.summary_secs",
        log.summary_secs,
        0,
        24 * HOUR_SECS,
        "seconds",
    )
}

/// `limits`: each within what RabbitMQ carries, and in the order they nest.
fn limits(limits: &LimitSettings) -> Result<(), ConfigError> {
    // RabbitMQ's largest message is 128 MiB (3.x) and 16 MiB by default (4.x).
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
    if limits.max_output_bytes < 2 * limits.max_body_bytes || limits.max_output_bytes > 128 * MIB {
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
    Ok(())
}

/// `retry`: the backoff and the budget.
fn retry(retry: &RetrySettings) -> Result<(), ConfigError> {
    backoff_range(
        ("retry.initial_ms", retry.initial_ms),
        ("retry.max_ms", retry.max_ms),
    )?;
    within(
        "retry.max_elapsed_secs",
        retry.max_elapsed_secs,
        0,
        24 * HOUR_SECS,
        "seconds",
    )
}

/// `shutdown`: the drain's deadline.
fn shutdown(shutdown: &ShutdownSettings) -> Result<(), ConfigError> {
    within(
        "shutdown.drain_timeout_secs",
        shutdown.drain_timeout_secs,
        0,
        HOUR_SECS,
        "seconds",
    )
}

/// `ingest`: the gateway's timeouts and bounds, and who may post.
fn ingest(ingest: &IngestSettings) -> Result<(), ConfigError> {
    within(
        "ingest.request_timeout_secs",
        ingest.request_timeout_secs,
        1,
        HOUR_SECS,
        "seconds",
    )?;
    within(
        "ingest.max_concurrent_requests",
        ingest.max_concurrent_requests as u64,
        1,
        10_000,
        "requests",
    )?;
    within(
        "ingest.max_connections",
        ingest.max_connections as u64,
        1,
        1_000_000,
        "connections",
    )?;
    within(
        "ingest.header_timeout_secs",
        ingest.header_timeout_secs,
        1,
        HOUR_SECS,
        "seconds",
    )?;
    if let Some((key, problem)) = super::access::problem(&ingest.access) {
        return Err(ConfigError::Invalid(format!("{key}: {problem}")));
    }
    Ok(())
}

/// `dead_letter`: how often `dlq replay` replays one message.
fn dead_letter(dead_letter: &DeadLetterSettings) -> Result<(), ConfigError> {
    within(
        "dead_letter.max_replays",
        dead_letter.max_replays.into(),
        1,
        1000,
        "replays of one message",
    )
}

/// `history`: the stream's retention, whether or not it is enabled (a setting that
/// would fail once enabled fails now).
fn history(history: &HistorySettings) -> Result<(), ConfigError> {
    within(
        "history.max_age_secs",
        history.max_age_secs,
        60,
        10 * 365 * 24 * HOUR_SECS,
        "seconds",
    )?;
    within(
        "history.max_bytes",
        history.max_bytes,
        1 << 20,
        1 << 40,
        "bytes",
    )?;
    // Segments are capped at 3 GB (about RabbitMQ's own cap; not tested here): a larger one
    // would only delay retention, which drops whole segments.
    within(
        "history.segment_bytes",
        history.segment_bytes,
        1024,
        history.max_bytes.min(3_000_000_000),
        "bytes, at most history.max_bytes",
    )
}

/// `tracing`: an endpoint the exporter can reach (plain HTTP), or none.
fn tracing(tracing: &TracingSettings) -> Result<(), ConfigError> {
    let endpoint = tracing.otlp_endpoint.as_str();
    if endpoint.starts_with("https://") {
        return reject(
            "tracing.otlp_endpoint",
            "https:// is not supported (the exporter speaks plain HTTP): export to a collector beside the process, e.g. http://127.0.0.1:4318/v1/traces",
        );
    }
    if !endpoint.is_empty()
        && (!endpoint.starts_with("http://") || endpoint.len() <= "http://".len())
    {
        return reject(
            "tracing.otlp_endpoint",
            "must be an http:// URL (OTLP over HTTP, e.g. http://127.0.0.1:4318/v1/traces), or empty for no export",
        );
    }
    if !(0.0..=1.0).contains(&tracing.sample_ratio) {
        return reject(
            "tracing.sample_ratio",
            "must be between 0 and 1 (the share of traces started here that are exported)",
        );
    }
    Ok(())
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

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return figment::Error
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::super::{ENV_PREFIX, load_env};
    use super::*;

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

    /// The history's retention: RabbitMQ's own bounds, and a segment no larger than the
    /// stream (retention drops whole segments: a larger one would never be dropped).
    #[test]
    fn history_retention_out_of_range_is_refused_naming_the_key() {
        for (env, key) in [
            (
                vec![("NORMALIZER__HISTORY__MAX_AGE_SECS", "59")],
                "history.max_age_secs",
            ),
            (
                vec![("NORMALIZER__HISTORY__MAX_BYTES", "1048575")],
                "history.max_bytes",
            ),
            (
                vec![("NORMALIZER__HISTORY__SEGMENT_BYTES", "1023")],
                "history.segment_bytes",
            ),
            (
                vec![
                    ("NORMALIZER__HISTORY__MAX_BYTES", "2000000"),
                    ("NORMALIZER__HISTORY__SEGMENT_BYTES", "2000001"),
                ],
                "history.segment_bytes",
            ),
            (
                vec![
                    ("NORMALIZER__HISTORY__MAX_BYTES", "4000000000"),
                    ("NORMALIZER__HISTORY__SEGMENT_BYTES", "3000000001"),
                ],
                "history.segment_bytes",
            ),
            (
                vec![("NORMALIZER__HISTORY__STREAM", "normalizer.raw")],
                "history.stream",
            ),
            (
                vec![("NORMALIZER__HISTORY__STREAM", "amq.history")],
                "history.stream",
            ),
        ] {
            let e = load_env(&env).unwrap_err().to_string();
            assert!(e.starts_with(&format!("{key}: ")), "{env:?}: {e}");
        }
        let s = load_env(&[
            ("NORMALIZER__HISTORY__MAX_BYTES", "2000000"),
            ("NORMALIZER__HISTORY__SEGMENT_BYTES", "2000000"),
        ])
        .unwrap();
        assert_eq!(s.history.segment_bytes, 2_000_000);
        assert!(!s.history.enabled, "off unless asked for");
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

    /// With problems in several sections, the one reported is the first in the order
    /// `docs/configuration.md` states: one problem a step, every pair tried.
    #[test]
    fn the_first_section_in_order_is_reported() {
        let amqps = ("NORMALIZER__AMQP__URL", "amqps://u:p@broker:5671/%2f");
        let steps: [(&[(&str, &str)], &str); 16] = [
            (
                &[("NORMALIZER__AMQP__HEARTBEAT_SECS", "0")],
                "amqp.heartbeat_secs",
            ),
            (&[("NORMALIZER__INPUT__PREFETCH", "0")], "input.prefetch"),
            (
                &[("NORMALIZER__OUTPUT__TAP_EXCHANGE", "")],
                "output.tap_exchange",
            ),
            (
                &[amqps, ("NORMALIZER__AMQP__TLS__CERT_FILE", "/c.pem")],
                "amqp.tls",
            ),
            (
                &[("NORMALIZER__SIGNATURES__DEEL__SECRETS", r#"[""]"#)],
                "signatures.deel",
            ),
            (
                &[("NORMALIZER__OUTPUT__UNROUTED_MAX_LENGTH", "0")],
                "output.unrouted_max_length",
            ),
            (
                &[("NORMALIZER__DEAD_LETTER__EXCHANGE", "webhooks.raw")],
                "dead_letter.exchange",
            ),
            (&[("NORMALIZER__LOG__FILTER", "info,[[[")], "log.filter"),
            (
                &[("NORMALIZER__LIMITS__MAX_BODY_BYTES", "0")],
                "limits.max_body_bytes",
            ),
            (
                &[("NORMALIZER__RETRY__INITIAL_MS", "0")],
                "retry.initial_ms",
            ),
            (
                &[("NORMALIZER__SHUTDOWN__DRAIN_TIMEOUT_SECS", "3601")],
                "shutdown.drain_timeout_secs",
            ),
            (
                &[("NORMALIZER__INGEST__REQUEST_TIMEOUT_SECS", "0")],
                "ingest.request_timeout_secs",
            ),
            (
                &[("NORMALIZER__DEAD_LETTER__MAX_REPLAYS", "0")],
                "dead_letter.max_replays",
            ),
            (
                &[("NORMALIZER__HISTORY__MAX_AGE_SECS", "59")],
                "history.max_age_secs",
            ),
            (
                &[(
                    "NORMALIZER__TRACING__OTLP_ENDPOINT",
                    "https://collector:4318",
                )],
                "tracing.otlp_endpoint",
            ),
            (
                &[("NORMALIZER__TRACING__SAMPLE_RATIO", "1.5")],
                "tracing.sample_ratio",
            ),
        ];
        for (i, (first, key)) in steps.iter().enumerate() {
            for (later, _) in &steps[i..] {
                let both: Vec<(&str, &str)> = first.iter().chain(later.iter()).copied().collect();
                let e = load_env(&both).unwrap_err().to_string();
                assert!(e.starts_with(&format!("{key}: ")), "{both:?}: {e}");
            }
        }
    }
}
