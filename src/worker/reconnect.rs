//! The worker's outer loop: open a broker session, consume until it fails, back off,
//! reconnect, until shutdown. Shutdown is passed in, so tests and the binary share it.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::session::{Session, SessionEnd};
use crate::amqp::BrokerError;
use crate::backoff::backoff_delay;
use crate::config::WorkerSettings;
use crate::ops::{Health, Occurrence, WorkerState};

/// Runs until `shutdown` is cancelled; then drains and returns. Broker failures are
/// logged and retried with backoff, with readiness down meanwhile; except a failed TLS
/// handshake before any session ever opened (a wrong CA, an expired or mismatched
/// certificate, a plain-text port): a deployment mistake, returned at once.
pub async fn run(
    settings: &WorkerSettings,
    shutdown: CancellationToken,
    health: Health,
) -> Result<(), BrokerError> {
    let mut ever_opened = false;
    let mut tls_failure = None;
    let mut backoff = Backoff::new(
        settings.amqp.reconnect_initial(),
        settings.amqp.reconnect_max(),
    );
    info!(broker = %settings.amqp.url, "starting");
    let summaries = settings
        .summary_every
        .map(|every| tokio::spawn(log_summaries(health.clone(), every)));
    // The permanent refusal last logged at error, so a refusal that persists is logged
    // once, not once per attempt.
    let mut refusal_logged: Option<String> = None;
    while !shutdown.is_cancelled() {
        let opened = tokio::select! {
            _ = shutdown.cancelled() => break,
            opened = Session::open(settings, &health) => opened,
        };
        let reason = match opened {
            Err(e) if !ever_opened && e.is_tls_handshake() => {
                tls_failure = Some(e);
                break;
            }
            Err(e) => {
                let why = e.to_string();
                if e.is_permanent() {
                    if refusal_logged.as_deref() != Some(why.as_str()) {
                        error!(
                            error = %e,
                            hint = e.hint(),
                            "the broker refuses the worker; retrying every {}s until this is fixed",
                            settings.amqp.reconnect_max().as_secs_f64()
                        );
                        refusal_logged = Some(why.clone());
                    } else {
                        debug!(error = %e, "the broker still refuses the worker");
                    }
                    // Retrying sooner cannot help.
                    backoff.exhaust();
                } else {
                    warn!(error = %e, hint = e.hint(), "cannot open a broker session");
                }
                with_hint(format!("cannot open a broker session: {why}"), e.hint())
            }
            Ok(session) => {
                ever_opened = true;
                refusal_logged = None;
                health.record(Occurrence::SessionOpened);
                let started = Instant::now();
                let end = session.run(settings, &shutdown, &health).await;
                health.record(Occurrence::SessionEnded);
                // A session that lasted a while was healthy: start backing off afresh.
                if started.elapsed() > settings.amqp.reconnect_max() {
                    backoff.reset();
                }
                match end {
                    SessionEnd::Shutdown => break,
                    SessionEnd::Failed(e) => {
                        warn!(error = %e, "broker session ended");
                        // With several nodes in amqp.url, the next one first, unless it failed lately.
                        crate::amqp::prefer_next_url(settings.amqp.url.each().len());
                        with_hint(format!("broker session ended: {e}"), e.hint())
                    }
                }
            }
        };
        let delay = backoff.next_delay();
        health.set_state(
            WorkerState::Connecting,
            Some(format!(
                "{reason}; reconnecting in {:.1} s",
                delay.as_secs_f64()
            )),
        );
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
    if let Some(task) = summaries {
        task.abort();
    }
    let total = health.snapshot().counts;
    info!(
        consumed = total.consumed,
        events_published = total.events_published,
        dead_lettered = total.dead_lettered,
        requeued = total.requeued,
        sessions = total.sessions,
        "stopped"
    );
    tls_failure.map_or(Ok(()), Err)
}

/// Every `every`, while messages flow, one `info` line: what came in and went out since
/// the last one, the rate, and the totals. Quiet while nothing flows.
async fn log_summaries(health: Health, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    let mut last = health.snapshot().counts;
    loop {
        ticks.tick().await;
        let now = health.snapshot().counts;
        let consumed = now.consumed.saturating_sub(last.consumed);
        if consumed > 0 {
            info!(
                consumed,
                per_second = format_args!("{:.1}", consumed as f64 / every.as_secs_f64()),
                events_published = now.events_published.saturating_sub(last.events_published),
                dead_lettered = now.dead_lettered.saturating_sub(last.dead_lettered),
                requeued = now.requeued.saturating_sub(last.requeued),
                total_consumed = now.consumed,
                total_events_published = now.events_published,
                total_dead_lettered = now.dead_lettered,
                in_flight = now.in_flight,
                "in the last {}s",
                every.as_secs()
            );
        }
        last = now;
    }
}

/// `reason`, then what to do about it when known.
fn with_hint(reason: String, hint: Option<&str>) -> String {
    match hint {
        Some(hint) => format!("{reason} (hint: {hint})"),
        None => reason,
    }
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

    /// Goes straight to the longest delay.
    pub fn exhaust(&mut self) {
        self.attempt = u32::MAX;
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
        b.exhaust();
        for _ in 0..3 {
            let d = b.next_delay().as_millis();
            assert!((500..=1000).contains(&d), "{d} not in [500, 1000]");
        }
    }
}
