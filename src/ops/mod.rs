//! Operating the worker: health and readiness over HTTP, the counters behind them, and
//! the one place that records what became of each raw message.

mod health;
mod outcome;

pub use health::{Health, HealthSnapshot, WorkerState, listen, serve};
pub(crate) use outcome::describe;
pub use outcome::{Delivery, Outcome};
