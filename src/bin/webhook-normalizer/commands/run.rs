//! `webhook-normalizer run`: the worker and its health endpoints, until a signal.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};
use webhook_normalizer::config::Settings;
use webhook_normalizer::ops::{self, Health};
use webhook_normalizer::worker;

use crate::common::{
    ConfigFile, EXIT_UNAVAILABLE, configuration_error, report, runtime, watch_signals,
    with_settings,
};

/// Logs the effective settings, then runs the worker until a signal.
pub(crate) fn run(config: ConfigFile) -> anyhow::Result<ExitCode> {
    with_settings(&config, |settings| {
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
    })
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
    let mut worker_settings = settings.worker();
    worker_settings.spans = match settings.tracing.spans("webhook-normalizer") {
        Ok(spans) => spans,
        Err(e) => return Ok(configuration_error(&format!("tracing.otlp_endpoint: {e}"))),
    };
    let code = tokio::select! {
        ran = worker::run(&worker_settings, shutdown, health) => match ran {
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
    // The spans not yet exported (the SDK's thread blocks: not on the runtime's).
    let spans = worker_settings.spans.clone();
    let _ = tokio::task::spawn_blocking(move || spans.shutdown()).await;
    Ok(code)
}
