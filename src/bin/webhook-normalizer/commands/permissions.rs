//! `webhook-normalizer permissions`: the `rabbitmqctl set_permissions` lines each user needs.

use std::io::{self, Write};
use std::process::ExitCode;

use webhook_normalizer::config::{AmqpSettings, Topology};

use crate::common::{ConfigFile, amqp_user_and_vhost, report, with_settings, written_to_stdout};

/// The arguments of `permissions` (its description is on its `Command` variant).
#[derive(clap::Args)]
pub(crate) struct PermissionsArgs {
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
}

/// Prints the lines; exit 2 when the consuming team's queue prefix is refused.
pub(crate) fn run(args: PermissionsArgs) -> anyhow::Result<ExitCode> {
    let PermissionsArgs {
        user,
        operator,
        gateway,
        consumer,
        consumer_queues,
        config,
    } = args;
    with_settings(&config, |settings| {
        let topology = settings.topology();
        let prefix = consumer_queues.unwrap_or_else(|| format!("{consumer}."));
        let team = match webhook_normalizer::tools::permissions::consumer(&topology, &prefix) {
            Ok(team) => team,
            Err(e) => {
                report(format_args!("error: {e}"));
                return Ok(ExitCode::from(2));
            }
        };
        let users = PermissionUsers {
            worker: user,
            operator: &operator,
            gateway: &gateway,
            consumer: (&consumer, &prefix, team),
        };
        written_to_stdout(print_permissions(&settings.amqp, &topology, users))
    })
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
        webhook_normalizer::tools::permissions::Permissions,
    ),
}

fn print_permissions(
    amqp: &AmqpSettings,
    topology: &Topology,
    users: PermissionUsers<'_>,
) -> io::Result<()> {
    use webhook_normalizer::tools::permissions;
    let PermissionUsers {
        worker: user,
        operator,
        gateway,
        consumer: (consumer, prefix, team),
    } = users;
    let (url_user, vhost) = amqp_user_and_vhost(amqp);
    let vhost = vhost.unwrap_or_else(|| "/".to_owned());
    let user = user.or(url_user).unwrap_or_else(|| "USER".to_owned());
    let worker = permissions::worker(topology);
    let ops = permissions::operator(topology);
    let declares = if topology.declare {
        "declares the topology (amqp.declare_topology = true)"
    } else {
        "checks a topology declared beforehand (amqp.declare_topology = false)"
    };
    let mut out = io::stdout().lock();
    writeln!(out, "# webhook-normalizer run, which {declares}:")?;
    writeln!(out, "{}", worker.command(&vhost, &user))?;
    writeln!(
        out,
        "# the dlq, unrouted, history and tail commands, as another user:"
    )?;
    writeln!(out, "{}", ops.command(&vhost, operator))?;
    writeln!(out, "# both, as one user:")?;
    writeln!(out, "{}", worker.union(&ops).command(&vhost, &user))?;
    writeln!(
        out,
        "# a gateway (ingest, publish), as its own user: publishes to {} only:",
        topology.input.exchange
    )?;
    writeln!(
        out,
        "{}",
        permissions::gateway(topology).command(&vhost, gateway)
    )?;
    writeln!(
        out,
        "# a consuming team, as its own user: its queues (names starting {prefix}), bound to {}:",
        topology.output.exchange
    )?;
    writeln!(out, "{}", team.command(&vhost, consumer))?;
    out.flush()
}
