//! What can go wrong talking to the broker, and which connection it happened on.

use std::fmt;

/// Which side of the worker a connection serves. Consuming and publishing use separate
/// connections: a memory or disk alarm blocks publishing connections, and acks (sent on
/// the consuming connection) must not queue behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Consumer,
    Publisher,
    Admin,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Consumer => "consumer",
            Role::Publisher => "publisher",
            Role::Admin => "admin",
        })
    }
}

/// A broker operation that failed. Messages never include the AMQP URI.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("{role} connection to {target} failed: {source}")]
    Connect {
        role: Role,
        target: String,
        #[source]
        source: lapin::Error,
    },
    #[error("{role} connection to {target} timed out after {secs}s")]
    ConnectTimeout {
        role: Role,
        target: String,
        secs: u64,
    },
    #[error("{what}: {source}")]
    Amqp {
        what: String,
        #[source]
        source: lapin::Error,
    },
    #[error("the consumer was cancelled by the broker (queue deleted or consumer removed)")]
    ConsumerCancelled,
    #[error("{role} connection failed: {reason}")]
    ConnectionLost { role: Role, reason: String },
}

impl BrokerError {
    /// Wraps a client error with what we were doing (names of queues and exchanges are
    /// fine to show; URIs are not).
    pub(crate) fn amqp(what: impl Into<String>) -> impl FnOnce(lapin::Error) -> BrokerError {
        let what = what.into();
        move |source| BrokerError::Amqp { what, source }
    }
}
