//! The AMQP plumbing every role builds on: connections (the frame check under the
//! client, TLS, trying each URL), the topology, judging publisher confirms, the size
//! and text of properties and headers, AMQP values as JSON. Nothing here knows about
//! one role: the worker ([`crate::worker`]), the operator tools ([`crate::tools`]) and
//! the gateway ([`crate::gateway`]) import from here, never from each other.

pub(crate) mod confirm;
pub(crate) mod connection;
pub(crate) mod error;
pub(crate) mod headers;
pub(crate) mod json;
pub(crate) mod ordered;
pub(crate) mod tls;
pub(crate) mod topology;
pub mod wire;

pub use connection::{connect, prefer_next_url};
pub use error::{BrokerError, Role};
pub use tls::{TlsHandshakeError, TlsSettingsError, client_config as tls_client_config};
pub use topology::{
    check_topology, declare_topology, declare_topology_with, prepare_topology, raw_queue_arguments,
};
