//! Opening connections: heartbeat, connect timeout and a connection name that says
//! which side of the worker it is, so `rabbitmqctl list_connections` is readable.

use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{Connection, ConnectionProperties};

use super::error::{BrokerError, Role};
use super::tls::TlsTarget;
use super::wire::{CheckedTokio, WireReports};
use crate::config::AmqpSettings;

/// Connects with the configured heartbeat and timeout (a `heartbeat` or
/// `connection_timeout` in the URI's query wins).
pub async fn connect(amqp: &AmqpSettings, role: Role) -> Result<Connection, BrokerError> {
    connect_checked(amqp, role, WireReports::default()).await
}

/// [`connect`], filing what its frame checks find in `reports` (see [`super::wire`]).
pub async fn connect_checked(
    amqp: &AmqpSettings,
    role: Role,
    reports: WireReports,
) -> Result<Connection, BrokerError> {
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
    // The vhost as a URL names it (`/` is `%2f`), so the default one does not read `//`.
    let target = format!(
        "{}:{}/{}",
        uri.authority.host,
        uri.authority.port,
        uri.vhost.replace('%', "%25").replace('/', "%2f")
    );
    // TLS is done under the frame check (see `tls`); the client gets plain `amqp://`.
    let tls = match uri.scheme {
        AMQPScheme::AMQPS => {
            uri.scheme = AMQPScheme::AMQP;
            Some(TlsTarget::new(&amqp.tls, &uri.authority.host).map_err(|e| {
                BrokerError::ConnectionLost {
                    role,
                    reason: e.to_string(),
                }
            })?)
        }
        AMQPScheme::AMQP => None,
    };
    uri.query.heartbeat.get_or_insert(amqp.heartbeat_secs);
    let timeout = amqp.connect_timeout();
    uri.query
        .connection_timeout
        .get_or_insert(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
    let properties = ConnectionProperties::default()
        .with_connection_name(format!("webhook-normalizer {role} {}", std::process::id()).into());
    let runtime = async_rs::Runtime::new(CheckedTokio::current(reports).with_tls(tls));
    let connecting = Connection::connect_uri_with_runtime(uri, properties, runtime);
    match tokio::time::timeout(timeout, connecting).await {
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
