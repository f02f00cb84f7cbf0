//! All the AMQP client code: connections, topology, the session and its per-delivery
//! pipeline, publishing, dead letters. No lapin type leaves this module; deliveries
//! become [`crate::delivery::RawMessage`] at the edge.

mod connection;
mod dead_letter;
mod dlq;
mod error;
mod ordered;
mod pipeline;
mod publish;
mod raw;
mod session;
mod settler;
mod topology;
pub mod wire;

pub use connection::connect;
pub use dlq::{
    Action, REPLAY_COUNT, WalkError, WalkSummary, walk_and_replay, walk_dead_letters,
    walk_with_properties,
};
pub use error::{BrokerError, Role};
pub use session::{Session, SessionEnd};
pub use topology::{declare_topology, declare_topology_with, raw_queue_arguments};
