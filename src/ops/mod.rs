//! Operating the worker: its state and counters, the HTTP endpoints that serve them
//! (health, readiness, metrics), and the one place that records what became of each raw
//! message.

mod health;
mod metrics;
mod outcome;
mod server;

pub use health::{Health, HealthSnapshot, WorkerState};
pub use metrics::{CONTENT_TYPE as METRICS_CONTENT_TYPE, Metrics};
pub(crate) use outcome::describe;
pub use outcome::{Delivery, Outcome};
pub use server::{listen, serve};
