//! Opening connections: heartbeat, connect timeout and a connection name that says
//! which side of the worker it is, so `rabbitmqctl list_connections` is readable.

use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{Connection, ConnectionProperties};

use super::error::{BrokerError, Role};
use super::tls::TlsTarget;
use super::wire::{CheckedTokio, FrameCheck};
use std::sync::atomic::{AtomicUsize, Ordering};

use tracing::warn;

use crate::config::{AmqpSettings, AmqpUrl};

/// Connects with the configured heartbeat and timeout (a `heartbeat` or
/// `connection_timeout` in the URI's query wins).
pub async fn connect(amqp: &AmqpSettings, role: Role) -> Result<Connection, BrokerError> {
    connect_checked(amqp, role, FrameCheck::default()).await
}

/// Which of `amqp.url`'s URLs a connection tries first: the one that answered last, or,
/// after a lost session, the one after it ([`prefer_next_url`]).
static FIRST_URL: AtomicUsize = AtomicUsize::new(0);

/// After a lost session: try the next URL of `amqp.url` first (another node of the
/// cluster), then the others in turn.
pub fn prefer_next_url() {
    FIRST_URL.fetch_add(1, Ordering::Relaxed);
}

/// [`connect`], filing what its frame checks find in `check` (see [`super::wire`]).
/// With several URLs in `amqp.url`, tries each in turn from [`FIRST_URL`] and connects
/// to the first that answers.
pub async fn connect_checked(
    amqp: &AmqpSettings,
    role: Role,
    check: FrameCheck,
) -> Result<Connection, BrokerError> {
    let urls = amqp.url.each();
    let first = FIRST_URL.load(Ordering::Relaxed) % urls.len();
    let mut failed = None;
    for i in 0..urls.len() {
        let at = (first + i) % urls.len();
        match connect_to(&urls[at], amqp, role, check.clone()).await {
            Ok(connection) => {
                FIRST_URL.store(at, Ordering::Relaxed);
                return Ok(connection);
            }
            Err(e) => {
                if urls.len() > 1 {
                    warn!(error = %e, node = at + 1, nodes = urls.len(), "a node of amqp.url did not answer; trying the next");
                }
                failed = Some(e);
            }
        }
    }
    Err(failed.unwrap_or_else(|| BrokerError::ConnectionLost {
        role,
        reason: "amqp.url names no broker".into(),
    }))
}

async fn connect_to(
    url: &AmqpUrl,
    amqp: &AmqpSettings,
    role: Role,
    check: FrameCheck,
) -> Result<Connection, BrokerError> {
    // Validated at start; the parser's error text could quote the password, so it is
    // not passed on.
    let mut uri: AMQPUri = url
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
    let runtime = async_rs::Runtime::new(CheckedTokio::current(check).with_tls(tls));
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
