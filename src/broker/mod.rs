//! All the AMQP client code: connections, topology, consuming and publishing. No lapin
//! type leaves this module; deliveries become [`crate::delivery::RawMessage`] at the edge.

mod connection;
mod consume;
mod publish;
mod topology;

pub use connection::{BrokerError, Role, connect};
pub use consume::{Session, SessionEnd};
pub use topology::{declare_topology, declare_topology_with, raw_queue_arguments};
