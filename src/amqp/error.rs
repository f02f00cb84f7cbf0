//! What can go wrong talking to the broker, and which connection it happened on.

use std::fmt;

use super::tls::TlsHandshakeError;

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

/// AMQP reply codes the broker refuses a connection with for good, until someone
/// changes the configuration or the broker.
const ACCESS_REFUSED: u16 = 403;
const NOT_ALLOWED: u16 = 530;
/// At session open, only a declaration meets it: a queue or exchange exists with other
/// arguments than the configuration declares.
const PRECONDITION_FAILED: u16 = 406;
/// At session open: with `amqp.declare_topology` off, an exchange or queue is missing.
const NOT_FOUND: u16 = 404;

impl BrokerError {
    /// The broker's reply code, when it refused or closed something.
    fn reply_code(&self) -> Option<u16> {
        match self {
            BrokerError::Connect { source, .. } | BrokerError::Amqp { source, .. } => {
                match source.kind() {
                    lapin::ErrorKind::ProtocolError(amqp) => Some(amqp.kind().get_id()),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// Whether retrying cannot help until the configuration or the broker changes
    /// (wrong credentials, no access to the vhost, a queue declared with other
    /// arguments). Meant for errors opening a session.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self.reply_code(),
            Some(ACCESS_REFUSED | NOT_ALLOWED | PRECONDITION_FAILED)
        )
    }

    /// The broker answered that something named does not exist (404 NOT_FOUND): on a
    /// publish, the exchange. The broker was reached; retrying cannot help until it is
    /// declared.
    pub fn is_not_found(&self) -> bool {
        self.reply_code() == Some(NOT_FOUND)
    }

    /// A TLS handshake that failed (see [`TlsHandshakeError`]).
    pub fn is_tls_handshake(&self) -> bool {
        let BrokerError::Connect { source, .. } = self else {
            return false;
        };
        matches!(source.kind(), lapin::ErrorKind::IOError(io)
            if io.get_ref().is_some_and(|e| e.is::<TlsHandshakeError>()))
    }

    /// What an operator can do about it, when we know.
    pub fn hint(&self) -> Option<&'static str> {
        match self.reply_code() {
            // Refused at login: the credentials. Refused later: a permission.
            Some(ACCESS_REFUSED) if matches!(self, BrokerError::Connect { .. }) => Some(
                "check the user name and password in amqp.url (RabbitMQ refuses guest from other hosts than localhost)",
            ),
            Some(ACCESS_REFUSED) => Some(
                "the user lacks a permission (the error names the resource): `webhook-normalizer permissions` prints the `rabbitmqctl set_permissions` line it needs",
            ),
            Some(NOT_FOUND) => Some(
                "an exchange or queue the worker expects does not exist: declare the topology (`webhook-normalizer topology`, as a user with configure permission) or set amqp.declare_topology = true",
            ),
            Some(PRECONDITION_FAILED) => Some(
                "a queue or exchange exists with other arguments than this configuration declares (the error names it and the argument): a changed setting or an older version declared it; see docs/operations.md, \"Changing a queue's arguments\"",
            ),
            Some(NOT_ALLOWED) => Some(
                "the user has no access to the vhost, or it does not exist: `rabbitmqctl add_vhost` and `rabbitmqctl set_permissions -p VHOST USER '.*' '.*' '.*'`",
            ),
            _ => match self {
                BrokerError::Connect { source, .. } if matches!(source.kind(), lapin::ErrorKind::IOError(e) if e.kind() == std::io::ErrorKind::ConnectionRefused) => {
                    Some("nothing listens at that host and port: is RabbitMQ running?")
                }
                _ => None,
            },
        }
    }
}

/// Whether the client's error is the broker closing one channel (a soft error: 403 on a
/// publish, 404 for a missing exchange, ...), not the connection.
pub(crate) fn is_channel_error(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        lapin::ErrorKind::ProtocolError(amqp)
            if matches!(amqp.kind(), lapin::protocol::AMQPErrorKind::Soft(_))
    )
}
