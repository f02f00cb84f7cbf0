//! Operating the worker: health and readiness over HTTP, and the counters behind them.

mod health;

pub use health::{Health, HealthSnapshot, serve};
