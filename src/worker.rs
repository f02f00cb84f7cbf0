//! The worker's outer loop: open a broker session, consume until it fails, back off,
//! reconnect, until shutdown. Shutdown is passed in, so tests and the binary share it.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::broker::{Session, SessionEnd};
use crate::config::Settings;
use crate::ops::Health;

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
                match session.run(settings, &shutdown, &health).await {
                    SessionEnd::Shutdown => break,
                    SessionEnd::Failed(e) => warn!(error = %e, "broker session ended"),
                }
                // A session that lasted a while was healthy: start backing off afresh.
                if started.elapsed() > settings.amqp.reconnect_max() {
                    backoff.reset();
                }
            }
        }
        health.set_ready(false);
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
    health.set_ready(false);
    info!("stopped");
}

/// Exponential backoff with "equal jitter": half the current step fixed, half random, so
/// retries never come faster than half a step and a fleet of workers does not reconnect
/// in lockstep.
#[derive(Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            step: initial,
        }
    }

    pub fn reset(&mut self) {
        self.step = self.initial;
    }

    pub fn next_delay(&mut self) -> Duration {
        let step = self.step.min(self.max);
        self.step = (step * 2).min(self.max);
        let half = step / 2;
        half + half.mul_f64(fastrand::f64())
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
