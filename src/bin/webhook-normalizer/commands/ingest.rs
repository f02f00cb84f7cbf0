//! `webhook-normalizer ingest`: the reference gateway, until a signal.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::info;
use webhook_normalizer::config::Settings;
use webhook_normalizer::ops;

use crate::common::{ConfigFile, configuration_error, runtime, watch_signals, with_settings};

/// Serves `ingest.listen` until a signal.
pub(crate) fn run(config: ConfigFile) -> anyhow::Result<ExitCode> {
    with_settings(&config, |settings| {
        let addrs = match settings.ingest.listen.resolve() {
            Ok(addrs) => addrs,
            Err(e) => return Ok(configuration_error(&e)),
        };
        runtime()?.block_on(run_ingest(settings, &addrs))
    })
}

/// Serves the reference gateway on every address until a signal; requests in progress
/// finish.
async fn run_ingest(settings: Settings, addrs: &[SocketAddr]) -> anyhow::Result<ExitCode> {
    let shutdown = CancellationToken::new();
    let listeners = ops::listen(addrs)
        .await
        .context("ingest.listen: cannot listen")?;
    let mut gateway = settings.gateway();
    gateway.spans = match settings.tracing.spans("webhook-normalizer-ingest") {
        Ok(spans) => spans,
        Err(e) => anyhow::bail!("tracing.otlp_endpoint: {e}"),
    };
    let spans = gateway.spans.clone();
    let ingest = std::sync::Arc::new(webhook_normalizer::gateway::Ingest::new(gateway));
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
    let _ = tokio::task::spawn_blocking(move || spans.shutdown()).await;
    Ok(ExitCode::SUCCESS)
}
