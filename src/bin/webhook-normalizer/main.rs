//! The `webhook-normalizer` binary: parses arguments and hands over to the library.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use webhook_normalizer::canonical::SchemaBase;
use webhook_normalizer::config::Settings;
use webhook_normalizer::normalize::{EventJson, normalize_json};
use webhook_normalizer::ops::{self, Health};
use webhook_normalizer::{
    ErrorKind, EventType, Limits, Unmapped, UnmappedPolicy, Vendor, broker, worker,
};

mod commands;
mod common;
mod progress;
mod walk;

use commands::{dlq, publish, tail, unrouted};
use common::{
    ConfigFile, EXIT_DATA_ERROR, EXIT_UNAVAILABLE, SchemaBaseArg, amqp_user_and_vhost,
    configuration_error, parse_rfc3339, report, runtime, with_settings, written_to_stdout,
};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        #[command(flatten)]
        config: ConfigFile,
    },
    /// Declare the exchanges, queues and bindings, then exit: for infrastructure pipelines.
    Topology {
        #[command(flatten)]
        config: ConfigFile,
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
        /// Pass this vendor's unmapped types through as generic events, as the setting
        /// `unmapped.{vendor} = "passthrough"` does (repeatable); otherwise they fail as
        /// unknown_event_type.
        #[arg(long, value_name = "VENDOR")]
        passthrough: Vec<Vendor>,
        #[command(flatten)]
        schemas: SchemaBaseArg,
        /// File holding the raw body; `-` or nothing reads stdin.
        file: Option<PathBuf>,
    },
    /// Look at, replay, export or purge dead letters (same configuration as `run`).
    Dlq {
        #[command(subcommand)]
        command: dlq::DlqCommand,
    },
    /// Send on events nobody was bound for, once a team binds for them (same configuration
    /// as `run`).
    Unrouted {
        #[command(subcommand)]
        command: unrouted::UnroutedCommand,
    },
    /// Publish raw webhook bodies to the raw exchange as a gateway does: byte for byte,
    /// persistent, mandatory, confirmed, with `x-received-at` (and `x-vendor`). Exit 1
    /// when one is returned (nothing bound) or nacked.
    Publish(publish::PublishArgs),
    /// The reference gateway: take vendors' webhooks over HTTP (`POST /webhooks/{vendor}`
    /// on `ingest.listen`) and publish each body as received, answering 200 only once the
    /// broker has confirmed it, 503 otherwise. Stops on SIGTERM or SIGINT.
    Ingest {
        #[command(flatten)]
        config: ConfigFile,
    },
    /// Watch canonical events go by (or dead letters, or unrouted events), from a
    /// temporary queue of its own: a line each on a terminal (time, type, subject, id),
    /// JSON Lines when piped.
    Tail(tail::TailArgs),
    /// Print the `rabbitmqctl set_permissions` lines the configured names need: for the
    /// worker's user, for an operator's user (the `dlq`, `unrouted` and `tail` commands), for
    /// one user doing both, for a gateway's user and for a consuming team's user.
    Permissions {
        /// The worker's user; default: the user in amqp.url.
        #[arg(long)]
        user: Option<String>,
        /// The operator's user.
        #[arg(long, default_value = "OPERATOR")]
        operator: String,
        /// A gateway's user (`ingest`, `publish`): publishes to the raw exchange only.
        #[arg(long, default_value = "GATEWAY")]
        gateway: String,
        /// A consuming team's user: declares, binds and consumes its own queues.
        #[arg(long, default_value = "CONSUMER")]
        consumer: String,
        /// The start of every queue name the consuming team's user may declare; default:
        /// its user name and a dot (`CONSUMER.`).
        #[arg(long, value_name = "PREFIX")]
        consumer_queues: Option<String>,
        #[command(flatten)]
        config: ConfigFile,
    },
    /// Print the effective settings (config/default.toml, the --config file, the
    /// `NORMALIZER__{SECTION}__{KEY}` variables) as TOML, secrets masked: passwords in
    /// amqp.url, every signature secret, path token and basic-auth password. Exit 78 when
    /// they are invalid, as `run` would.
    Config {
        /// Print only this setting (e.g. `amqp.url`): a string as it is, anything else
        /// as TOML; a key that names no setting exits 2.
        #[arg(long, value_name = "KEY")]
        get: Option<String>,
        #[command(flatten)]
        config: ConfigFile,
    },
    /// Print the canonical type table: vendor, vendor type, condition, canonical type, subject.
    EventTypes {
        /// What to print: the table, or a document made from it.
        #[arg(long, value_enum, default_value_t = TableFormat::Text)]
        format: TableFormat,
        #[command(flatten)]
        schemas: SchemaBaseArg,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum TableFormat {
    /// Aligned columns.
    Text,
    /// One JSON object per line.
    Json,
    /// A Markdown table.
    Markdown,
    /// The AsyncAPI 3.0 document of every channel (as `docs/asyncapi.json`).
    Asyncapi,
    /// The JSON Schema of each type's `data` (as `schema/event-data.v1.schema.json`),
    /// which every event's `dataschema` points into.
    DataSchema,
    /// The JSON Schema of the envelope (as `schema/canonical-event.schema.json`).
    EventSchema,
}

/// A limit: 0 would refuse every body.
fn at_least_1(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{e}; must be a whole number, at least 1")),
    }
}

fn main() -> ExitCode {
    match dispatch(Cli::parse().command) {
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

/// Runs the command given; an `Err` is printed as `error: …` and exits 1.
fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run { config } => with_settings(&config, |settings| {
            // What this worker runs with, as `config` prints it: secrets masked.
            if let Ok(effective) = Settings::masked_table(config.path.as_deref()) {
                let effective = serde_json::to_value(&effective).unwrap_or_default();
                info!(settings = %effective, "effective settings");
            }
            let health_addrs = match settings.http.listen.resolve() {
                Ok(addrs) => addrs,
                Err(e) => return Ok(configuration_error(&e)),
            };
            runtime()?.block_on(run_worker(settings, &health_addrs))
        }),
        Command::Topology { config } => with_settings(&config, |settings| {
            let runtime = runtime()?;
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
        }),
        Command::Normalize {
            vendor,
            received_at,
            max_body_bytes,
            max_events_per_message,
            max_output_bytes,
            passthrough,
            schemas,
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
            let mut unmapped = Unmapped::default();
            for vendor in passthrough {
                *unmapped.of_mut(vendor) = UnmappedPolicy::Passthrough;
            }
            // Serialized (and bounded) before anything is printed: an error prints nothing
            // on stdout.
            match normalize_json(
                &body,
                vendor.as_deref(),
                received_at,
                &limits,
                &unmapped,
                schemas.base,
            ) {
                Ok(events) => written_to_stdout(print_events(&events)),
                Err(e) => {
                    report(format_args!("error: {}: {e}", e.kind()));
                    Ok(ExitCode::from(EXIT_DATA_ERROR))
                }
            }
        }
        Command::Config { get, config } => {
            let table = match Settings::masked_table(config.path.as_deref()) {
                Ok(table) => table,
                Err(e) => return Ok(configuration_error(&e)),
            };
            let text = match get {
                None => toml::to_string(&table)?,
                Some(key) => {
                    let mut value = Some(&toml::Value::Table(table.clone()));
                    for part in key.split('.') {
                        value = value.and_then(|v| v.get(part));
                    }
                    match value {
                        Some(toml::Value::String(s)) => format!("{s}\n"),
                        Some(toml::Value::Table(t)) => toml::to_string(t)?,
                        Some(other) => format!("{other}\n"),
                        None => {
                            report(format_args!("error: no setting named {key:?}"));
                            return Ok(ExitCode::from(2));
                        }
                    }
                }
            };
            written_to_stdout(io::stdout().lock().write_all(text.as_bytes()))
        }
        Command::EventTypes { format, schemas } => {
            written_to_stdout(print_event_types(format, schemas.base))
        }
        Command::Dlq { command } => dlq::dlq(command),
        Command::Unrouted { command } => unrouted::unrouted(command),
        Command::Publish(args) => publish::publish(args),
        Command::Ingest { config } => with_settings(&config, |settings| {
            let addrs = match settings.ingest.listen.resolve() {
                Ok(addrs) => addrs,
                Err(e) => return Ok(configuration_error(&e)),
            };
            runtime()?.block_on(run_ingest(settings, &addrs))
        }),
        Command::Tail(args) => tail::tail(args),
        Command::Permissions {
            user,
            operator,
            gateway,
            consumer,
            consumer_queues,
            config,
        } => with_settings(&config, |settings| {
            let prefix = consumer_queues.unwrap_or_else(|| format!("{consumer}."));
            let team = match webhook_normalizer::permissions::consumer(&settings, &prefix) {
                Ok(team) => team,
                Err(e) => {
                    eprintln!("error: {e}");
                    return Ok(ExitCode::from(2));
                }
            };
            let users = PermissionUsers {
                worker: user,
                operator: &operator,
                gateway: &gateway,
                consumer: (&consumer, &prefix, team),
            };
            written_to_stdout(print_permissions(&settings, users))
        }),
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
        ran = worker::run(&settings, shutdown, health) => match ran {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                error!(error = %e, "cannot start: the broker's TLS handshake failed");
                report(format_args!("error: {e}"));
                ExitCode::from(EXIT_UNAVAILABLE)
            }
        },
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

/// Serves the reference gateway on every address until a signal; requests in progress
/// finish.
async fn run_ingest(settings: Settings, addrs: &[SocketAddr]) -> anyhow::Result<ExitCode> {
    let shutdown = CancellationToken::new();
    let listeners = ops::listen(addrs)
        .await
        .context("ingest.listen: cannot listen")?;
    let ingest = std::sync::Arc::new(webhook_normalizer::ingest::Ingest::new(settings));
    let mut servers = Vec::new();
    for listener in listeners {
        info!(address = %listener.local_addr()?, "ingest: POST /webhooks/{{vendor}}");
        let ingest = ingest.clone();
        let shutdown = shutdown.clone();
        servers.push(tokio::spawn(async move {
            ingest.serve(listener, shutdown).await
        }));
    }
    tokio::spawn(watch_signals(shutdown.clone()));
    for server in servers {
        server.await??;
    }
    Ok(ExitCode::SUCCESS)
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

/// JSON Lines.
fn print_events(events: &[EventJson]) -> io::Result<()> {
    let mut out = io::stdout().lock();
    for event in events {
        out.write_all(&event.json)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// Who `permissions` prints lines for.
struct PermissionUsers<'a> {
    worker: Option<String>,
    operator: &'a str,
    gateway: &'a str,
    /// The team's user, its queue prefix and what that gives it.
    consumer: (
        &'a str,
        &'a str,
        webhook_normalizer::permissions::Permissions,
    ),
}

fn print_permissions(settings: &Settings, users: PermissionUsers<'_>) -> io::Result<()> {
    use webhook_normalizer::permissions;
    let PermissionUsers {
        worker: user,
        operator,
        gateway,
        consumer: (consumer, prefix, team),
    } = users;
    let (url_user, vhost) = amqp_user_and_vhost(settings);
    let vhost = vhost.unwrap_or_else(|| "/".to_owned());
    let user = user.or(url_user).unwrap_or_else(|| "USER".to_owned());
    let worker = permissions::worker(settings);
    let ops = permissions::operator(settings);
    let declares = if settings.amqp.declare_topology {
        "declares the topology (amqp.declare_topology = true)"
    } else {
        "checks a topology declared beforehand (amqp.declare_topology = false)"
    };
    let mut out = io::stdout().lock();
    writeln!(out, "# webhook-normalizer run, which {declares}:")?;
    writeln!(out, "{}", worker.command(&vhost, &user))?;
    writeln!(
        out,
        "# the dlq, unrouted and tail commands, as another user:"
    )?;
    writeln!(out, "{}", ops.command(&vhost, operator))?;
    writeln!(out, "# both, as one user:")?;
    writeln!(out, "{}", worker.union(&ops).command(&vhost, &user))?;
    writeln!(
        out,
        "# a gateway (ingest, publish), as its own user: publishes to {} only:",
        settings.input.exchange
    )?;
    writeln!(
        out,
        "{}",
        permissions::gateway(settings).command(&vhost, gateway)
    )?;
    writeln!(
        out,
        "# a consuming team, as its own user: its queues (names starting {prefix}), bound to {}:",
        settings.output.exchange
    )?;
    writeln!(out, "{}", team.command(&vhost, consumer))?;
    out.flush()
}

fn print_event_types(format: TableFormat, base: SchemaBase) -> io::Result<()> {
    let mut out = io::stdout().lock();
    if let TableFormat::DataSchema = format {
        let doc = webhook_normalizer::canonical::data_schema_document(base);
        serde_json::to_writer_pretty(&mut out, &doc).map_err(io::Error::from)?;
        out.write_all(b"\n")?;
    } else if let TableFormat::EventSchema = format {
        let doc = webhook_normalizer::canonical::event_schema(base);
        serde_json::to_writer_pretty(&mut out, &doc).map_err(io::Error::from)?;
        out.write_all(b"\n")?;
    } else if let TableFormat::Asyncapi = format {
        let doc = webhook_normalizer::asyncapi::document(env!("CARGO_PKG_VERSION"), base);
        serde_json::to_writer_pretty(&mut out, &doc).map_err(io::Error::from)?;
        out.write_all(b"\n")?;
    } else if let TableFormat::Markdown = format {
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    /// `--help` explains every option and argument of every command.
    #[test]
    fn every_argument_has_help() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if !matches!(id, "help" | "version") && arg.get_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in command.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "webhook-normalizer", &mut missing);
        assert!(missing.is_empty(), "without help: {missing:?}");
    }
}
