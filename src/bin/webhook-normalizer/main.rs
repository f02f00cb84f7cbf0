//! The `webhook-normalizer` binary: the command line and which command runs. Each
//! command is a file of `commands/`; what they share (loading the settings, exit codes,
//! writing output) is in `common`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod commands;
mod common;
mod progress;
mod walk;

use commands::{
    config, dlq, event_types, history, ingest, normalize, permissions, publish, run, tail,
    topology, trace, unrouted,
};
use common::{ConfigFile, report};

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
    Normalize(normalize::NormalizeArgs),
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
    /// Read the event history (with `history.enabled`): counts by type, and copies of past
    /// events into a team's queue; takes nothing from it (same configuration as `run`).
    History {
        #[command(subcommand)]
        command: history::HistoryCommand,
    },
    /// What happened to one webhook: given a raw message's id, a vendor's event id or a
    /// canonical event's id, the events it became (from the event history, in a window
    /// of the last 24 hours by default) and the dead letter it ended as (from the
    /// dead-letter queue), one line each; every queue is left as it was. Exit 1 when
    /// nothing is found.
    Trace(trace::TraceArgs),
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
    /// worker's user, for an operator's user (the `dlq`, `unrouted`, `history` and `tail` commands), for
    /// one user doing both, for a gateway's user and for a consuming team's user.
    Permissions(permissions::PermissionsArgs),
    /// Print the effective settings (config/default.toml, the --config file, the
    /// `NORMALIZER__{SECTION}__{KEY}` variables) as TOML, secrets masked: passwords in
    /// amqp.url, every signature secret, path token and basic-auth password. Exit 78 when
    /// they are invalid, as `run` would.
    Config(config::ConfigArgs),
    /// Print the canonical type table: vendor, vendor type, condition, canonical type, subject.
    EventTypes(event_types::EventTypesArgs),
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
        Command::Run { config } => run::run(config),
        Command::Topology { config } => topology::run(config),
        Command::Normalize(args) => normalize::run(args),
        Command::Config(args) => config::run(args),
        Command::EventTypes(args) => event_types::run(args),
        Command::Dlq { command } => dlq::run(command),
        Command::Unrouted { command } => unrouted::run(command),
        Command::History { command } => history::run(command),
        Command::Trace(args) => trace::run(args),
        Command::Publish(args) => publish::run(args),
        Command::Ingest { config } => ingest::run(config),
        Command::Tail(args) => tail::run(args),
        Command::Permissions(args) => permissions::run(args),
    }
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
