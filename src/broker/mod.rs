//! All the AMQP client code: connections, topology, the session and its per-delivery
//! pipeline, publishing, dead letters. No lapin type leaves this module; deliveries
//! become [`crate::delivery::RawMessage`] at the edge.

mod confirm;
mod connection;
mod dead_letter;
mod dlq;
mod error;
mod gateway;
mod ordered;
mod pipeline;
mod publish;
mod raw;
mod session;
mod settler;
mod tail;
mod tls;
mod topology;
mod unrouted;
mod walk;
pub mod wire;

pub use connection::{connect, prefer_next_url};
pub use dlq::{REPLAY_COUNT, walk_dead_letters};
pub use error::{BrokerError, Role};
pub use gateway::{
    GatewayPublisher, Published, RawBody, Readiness as GatewayReadiness, publish_bodies,
};
pub use session::{Session, SessionEnd};
pub use tail::{TailSource, Tailed, tail};
pub use tls::{TlsHandshakeError, TlsSettingsError, client_config as tls_client_config};
pub use topology::{
    check_topology, declare_topology, declare_topology_with, prepare_topology, raw_queue_arguments,
};
pub use unrouted::walk_unrouted;
pub use walk::{Action, Progress, WINDOW, WalkError, WalkSummary};
