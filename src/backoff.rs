//! Exponential backoff with jitter: the worker's reconnect loop and the retries in place
//! ([`crate::delivery::RetryPolicy`]) wait by it. Pure: the jitter is passed in.

use std::time::Duration;

/// Exponential backoff with "equal jitter": step `min(initial * 2^attempt, max)`, delay
/// `step/2 + jitter * step/2` with `jitter` in `[0, 1)`.
pub fn backoff_delay(initial: Duration, max: Duration, attempt: u32, jitter: f64) -> Duration {
    let step = initial
        .checked_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
        .unwrap_or(max)
        .min(max);
    let half = step / 2;
    half + half.mul_f64(jitter.clamp(0.0, 1.0))
}
