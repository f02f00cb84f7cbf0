//! The worker: the reconnect loop ([`run`]) around a session that consumes raw
//! messages, runs each through the pipeline (the plan, publishing with confirms, dead
//! letters) and settles it. The lapin deliveries become [`crate::delivery::RawMessage`]
//! at its edge ([`inbound`]); the decisions are pure (`pipeline::core`,
//! [`crate::delivery`]).

mod dead_letter;
mod inbound;
mod pipeline;
mod publisher;
mod reconnect;
mod session;
mod settler;

pub use reconnect::run;
pub use session::{Session, SessionEnd};
