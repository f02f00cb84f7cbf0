//! Operating the worker: health, readiness and metrics over HTTP, the counters behind
//! them, and
//! the one place that records what became of each raw message.

mod health;
mod metrics;
mod outcome;

pub use health::{Health, HealthSnapshot, WorkerState, listen, serve};
pub use metrics::{CONTENT_TYPE as METRICS_CONTENT_TYPE, Metrics};
pub(crate) use outcome::describe;
pub use outcome::{Delivery, Outcome};
