//! `webhook-normalizer publish`: raw webhook bodies to the raw exchange, as a gateway
//! publishes them, for trying the worker out and for gateway teams' tests.

use std::io::{self, Read};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use webhook_normalizer::canonical::{Vendor, rfc3339_utc};
use webhook_normalizer::config::Settings;
use webhook_normalizer::gateway::{self, Published, RawBody};

use crate::common::{ConfigFile, EXIT_UNAVAILABLE, report, runtime, with_settings};

/// The arguments of `publish` (its description is on its `Command` variant).
#[derive(clap::Args)]
pub(crate) struct PublishArgs {
    /// The vendor key (entuitive, authenticate, deel): sent as the `x-vendor` header and,
    /// without --routing-key, as the routing key.
    #[arg(long)]
    vendor: Option<String>,
    /// The routing key; default: the vendor key, else `gateway`.
    #[arg(long)]
    routing_key: Option<String>,
    /// The `message_id` (with several files, `-1`, `-2`, … are appended).
    #[arg(long)]
    message_id: Option<String>,
    /// Files, each one raw body, sent byte for byte; `-` or nothing reads one body from
    /// stdin.
    files: Vec<PathBuf>,
    #[command(flatten)]
    config: ConfigFile,
}

/// Publishes each body, confirmed; exit 0 when the broker took every one, 1 when one was
/// returned (no queue bound) or nacked or the exchange does not exist (the broker was
/// reached and refused it: the fix is the topology or the settings, not the network),
/// 69 when the broker cannot be reached.
pub(crate) fn run(args: PublishArgs) -> anyhow::Result<ExitCode> {
    if let Some(vendor) = &args.vendor
        && vendor.parse::<Vendor>().is_err()
    {
        report(format_args!(
            "error: --vendor {vendor:?} is no vendor key (entuitive, authenticate, deel)"
        ));
        return Ok(ExitCode::from(2));
    }
    with_settings(&args.config, |settings| send(settings, &args))
}

/// Reads every body, then publishes them one by one.
fn send(settings: Settings, args: &PublishArgs) -> anyhow::Result<ExitCode> {
    let sources: Vec<Option<PathBuf>> = if args.files.is_empty() {
        vec![None]
    } else {
        args.files
            .iter()
            .map(|f| (f.as_os_str() != "-").then(|| f.clone()))
            .collect()
    };
    let routing_key = args
        .routing_key
        .clone()
        .or_else(|| args.vendor.clone())
        .unwrap_or_else(|| "gateway".into());
    let several = sources.len() > 1;
    let mut bodies = Vec::with_capacity(sources.len());
    for (i, source) in sources.iter().enumerate() {
        let body = match source {
            Some(path) => {
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
            }
            None => {
                let mut body = Vec::new();
                io::stdin()
                    .lock()
                    .read_to_end(&mut body)
                    .context("cannot read stdin")?;
                body
            }
        };
        bodies.push(RawBody {
            body,
            routing_key: routing_key.clone(),
            vendor: args.vendor.clone(),
            message_id: args.message_id.as_ref().map(|id| {
                if several {
                    format!("{id}-{}", i + 1)
                } else {
                    id.clone()
                }
            }),
            received_at: rfc3339_utc::format(&chrono::Utc::now()),
            headers: Vec::new(),
        });
    }
    let name = |i: usize| {
        sources[i]
            .as_ref()
            .map_or_else(|| "stdin".to_owned(), |p| p.display().to_string())
    };
    let exchange = &settings.input.exchange;
    let mut refused = 0;
    let mut answered = 0;
    let runtime = runtime()?;
    let sent = runtime.block_on(gateway::publish_bodies(&settings.amqp, exchange, &bodies, |i, outcome| {
        let bytes = bodies[i].body.len();
        answered += 1;
        match outcome {
            Published::Confirmed => report(format_args!(
                "{}: {bytes} bytes to {exchange} (routing key {routing_key}), confirmed",
                name(i)
            )),
            Published::Returned => {
                refused += 1;
                report(format_args!(
                    "error: {}: returned: no queue is bound to {exchange} for routing key {routing_key} (has the worker declared its topology? `webhook-normalizer topology`)",
                    name(i)
                ));
            }
            Published::Nacked => {
                refused += 1;
                report(format_args!("error: {}: nacked by the broker", name(i)));
            }
            Published::Blocked => {
                refused += 1;
                report(format_args!(
                    "error: {}: not sent: the broker blocks publishing (a memory or disk alarm); try again once it clears",
                    name(i)
                ));
            }
        }
    }));
    if let Err(e) = sent {
        if e.is_not_found() {
            let vhost = settings
                .amqp
                .url
                .expose()
                .parse::<lapin::uri::AMQPUri>()
                .map_or_else(|_| "/".to_owned(), |u| u.vhost);
            report(format_args!(
                "error: {}: not sent: exchange {exchange} does not exist in vhost {vhost:?}",
                name(answered)
            ));
            report(format_args!(
                "hint: declare it (start the worker once, or `webhook-normalizer topology`), or check input.exchange and the vhost in amqp.url (--config, NORMALIZER__INPUT__EXCHANGE, NORMALIZER__AMQP__URL)"
            ));
            return Ok(ExitCode::FAILURE);
        }
        report(format_args!("error: {e}"));
        return Ok(ExitCode::from(EXIT_UNAVAILABLE));
    }
    Ok(if refused == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
