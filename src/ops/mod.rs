//! Operating the worker: what it is doing and what it counted (one occurrence counted
//! once, read by both `/readyz` and Prometheus), the HTTP endpoints that serve them, and
//! the one place that records what became of each raw message.

mod health;
mod metrics;
mod occurrence;
mod outcome;
mod server;

pub use health::{Health, HealthSnapshot, WorkerState};
pub use metrics::{CONTENT_TYPE as METRICS_CONTENT_TYPE, Counts, Metrics};
pub use occurrence::Occurrence;
pub(crate) use outcome::describe;
pub use outcome::{DeliveryId, Outcome};
pub use server::{listen, serve};
