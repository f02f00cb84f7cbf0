//! `webhook-normalizer topology`: declare the exchanges, queues and bindings, then exit.

use std::process::ExitCode;

use tracing::{error, info};

use crate::common::{ConfigFile, EXIT_UNAVAILABLE, runtime, with_settings};

/// Declares the topology: exit 0 once declared, 69 when the broker cannot be reached or
/// refuses.
pub(crate) fn run(config: ConfigFile) -> anyhow::Result<ExitCode> {
    with_settings(&config, |settings| {
        let runtime = runtime()?;
        match runtime.block_on(webhook_normalizer::amqp::declare_topology(
            &settings.amqp,
            &settings.topology(),
        )) {
            Ok(()) => {
                info!(broker = %settings.amqp.url, "topology declared");
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                error!(error = %e, "cannot declare the topology");
                Ok(ExitCode::from(EXIT_UNAVAILABLE))
            }
        }
    })
}
