//! The worker's outer loop: open a broker session, consume until it fails, back off,
//! reconnect, until shutdown. Shutdown is passed in, so tests and the binary share it.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::broker::{Session, SessionEnd};
use crate::config::Settings;
use crate::delivery::backoff_delay;
use crate::ops::{Health, WorkerState};

/// Runs until `shutdown` is cancelled; then drains and returns. Broker failures never
/// end it: they are logged and retried with backoff, with readiness down meanwhile.
pub async fn run(settings: &Settings, shutdown: CancellationToken, health: Health) {
    let mut backoff = Backoff::new(
        settings.amqp.reconnect_initial(),
        settings.amqp.reconnect_max(),
    );
    info!(broker = %settings.amqp.url, "starting");
    while !shutdown.is_cancelled() {
        let opened = tokio::select! {
            _ = shutdown.cancelled() => break,
            opened = Session::open(settings, &health) => opened,
        };
        match opened {
            Err(e) => warn!(error = %e, "cannot open a broker session"),
            Ok(session) => {
                health.add_session();
                let started = Instant::now();
                let end = session.run(settings, &shutdown, &health).await;
                health.set_disconnected();
                match end {
                    SessionEnd::Shutdown => break,
                    SessionEnd::Failed(e) => warn!(error = %e, "broker session ended"),
                }
                // A session that lasted a while was healthy: start backing off afresh.
                if started.elapsed() > settings.amqp.reconnect_max() {
                    backoff.reset();
                }
            }
        }
        health.set_state(WorkerState::Connecting, None);
        let delay = backoff.next_delay();
        info!(
            delay_ms = delay.as_millis() as u64,
            "reconnecting after a delay"
        );
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
    health.set_state(WorkerState::Draining, Some("stopped".into()));
    info!("stopped");
}

/// Reconnect backoff: [`backoff_delay`]'s schedule ("equal jitter", so a fleet of workers
/// does not reconnect in lockstep), counting attempts until reset.
#[derive(Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            attempt: 0,
        }
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn next_delay(&mut self) -> Duration {
        let delay = backoff_delay(self.initial, self.max, self.attempt, fastrand::f64());
        self.attempt = self.attempt.saturating_add(1);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter_in_the_upper_half() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let steps = [100, 200, 400, 800, 1000, 1000];
        for step in steps {
            let d = b.next_delay().as_millis();
            assert!(
                d >= step / 2 && d <= step,
                "{d} not in [{}, {step}]",
                step / 2
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
