//! Opening connections: heartbeat, connect timeout and a connection name that says
//! which side of the worker it is, so `rabbitmqctl list_connections` is readable.

use std::fmt;

use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties};

use crate::config::AmqpSettings;

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
    #[error("the {role} channel was closed")]
    ChannelLost { role: Role },
}

impl BrokerError {
    /// Wraps a client error with what we were doing (names of queues and exchanges are
    /// fine to show; URIs are not).
    pub(crate) fn amqp(what: impl Into<String>) -> impl FnOnce(lapin::Error) -> BrokerError {
        let what = what.into();
        move |source| BrokerError::Amqp { what, source }
    }
}

/// Connects with the configured heartbeat and timeout (a `heartbeat` or
/// `connection_timeout` in the URI's query wins).
pub async fn connect(amqp: &AmqpSettings, role: Role) -> Result<Connection, BrokerError> {
    // Validated at start; the parser's error text could quote the password, so it is
    // not passed on.
    let mut uri: AMQPUri = amqp
        .url
        .expose()
        .parse()
        .map_err(|_| BrokerError::ConnectionLost {
            role,
            reason: "amqp.url is not an AMQP URI".into(),
        })?;
    let target = format!(
        "{}:{}/{}",
        uri.authority.host, uri.authority.port, uri.vhost
    );
    uri.query.heartbeat.get_or_insert(amqp.heartbeat_secs);
    let timeout = amqp.connect_timeout();
    uri.query
        .connection_timeout
        .get_or_insert(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
    let properties = ConnectionProperties::default()
        .with_connection_name(format!("webhook-normalizer {role} {}", std::process::id()).into());
    match tokio::time::timeout(timeout, Connection::connect_uri(uri, properties)).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(source)) => Err(BrokerError::Connect {
            role,
            target,
            source,
        }),
        Err(_) => Err(BrokerError::ConnectTimeout {
            role,
            target,
            secs: timeout.as_secs(),
        }),
    }
}
