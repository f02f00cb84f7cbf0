//! Opening connections: heartbeat, connect timeout and a connection name that says
//! which side of the worker it is, so `rabbitmqctl list_connections` is readable.

use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{Connection, ConnectionProperties};

use super::error::{BrokerError, Role};
use super::tls::TlsTarget;
use super::wire::{CheckedTokio, FrameCheck};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tracing::warn;

use crate::config::{AmqpSettings, AmqpUrl};

/// Connects with the configured heartbeat and timeout (a `heartbeat` or
/// `connection_timeout` in the URI's query wins).
pub async fn connect(amqp: &AmqpSettings, role: Role) -> Result<Connection, BrokerError> {
    connect_checked(amqp, role, FrameCheck::default()).await
}

/// Which of `amqp.url`'s URLs a connection tries first: the one that answered last, or,
/// after a lost session, the next one that has not failed lately ([`prefer_next_url`]).
static FIRST_URL: AtomicUsize = AtomicUsize::new(0);

/// When each URL (by index) last failed to connect, if it did since it last answered.
static FAILED_AT: Mutex<Vec<Option<Instant>>> = Mutex::new(Vec::new());

/// How long a URL that failed to connect is tried after the others.
const FAILED_LATELY: Duration = Duration::from_secs(60);

/// URL indexes that failed to connect within [`FAILED_LATELY`].
fn failed_lately(n: usize) -> Vec<bool> {
    let failed = FAILED_AT.lock().unwrap_or_else(PoisonError::into_inner);
    (0..n)
        .map(|i| {
            failed
                .get(i)
                .copied()
                .flatten()
                .is_some_and(|t| t.elapsed() < FAILED_LATELY)
        })
        .collect()
}

fn mark(at: usize, failed: bool) {
    let mut all = FAILED_AT.lock().unwrap_or_else(PoisonError::into_inner);
    if all.len() <= at {
        all.resize(at + 1, None);
    }
    all[at] = failed.then(Instant::now);
}

/// The order to try `failed.len()` URLs in: from `first` on, in turn, those that failed
/// lately last (a black hole costs a whole connect timeout each time it is tried).
fn try_order(first: usize, failed: &[bool]) -> Vec<usize> {
    let n = failed.len();
    let turn = (0..n).map(|i| (first + i) % n);
    turn.clone()
        .filter(|&i| !failed[i])
        .chain(turn.filter(|&i| failed[i]))
        .collect()
}

/// After a lost session: try the next URL of `amqp.url` first (another node of the
/// cluster) unless it failed lately, then the others in turn. With every other URL
/// failing lately, the one that answered last stays first.
pub fn prefer_next_url(urls: usize) {
    if urls < 2 {
        return;
    }
    let failed = failed_lately(urls);
    let first = FIRST_URL.load(Ordering::Relaxed) % urls;
    if let Some(next) = (1..urls).map(|i| (first + i) % urls).find(|&i| !failed[i]) {
        FIRST_URL.store(next, Ordering::Relaxed);
    }
}

/// [`connect`], filing what its frame checks find in `check` (see [`super::wire`]).
/// With several URLs in `amqp.url`, tries each in [`try_order`] and connects to the
/// first that answers.
pub async fn connect_checked(
    amqp: &AmqpSettings,
    role: Role,
    check: FrameCheck,
) -> Result<Connection, BrokerError> {
    let urls = amqp.url.each();
    let first = FIRST_URL.load(Ordering::Relaxed) % urls.len();
    let mut failed = None;
    for at in try_order(first, &failed_lately(urls.len())) {
        match connect_to(&urls[at], amqp, role, check.clone()).await {
            Ok(connection) => {
                FIRST_URL.store(at, Ordering::Relaxed);
                mark(at, false);
                return Ok(connection);
            }
            Err(e) => {
                mark(at, true);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_that_failed_lately_are_tried_last() {
        assert_eq!(try_order(0, &[false, false, false]), [0, 1, 2]);
        assert_eq!(try_order(1, &[false, false, false]), [1, 2, 0]);
        assert_eq!(try_order(0, &[true, false, false]), [1, 2, 0]);
        assert_eq!(try_order(2, &[false, true, true]), [0, 2, 1]);
        assert_eq!(try_order(0, &[true, true]), [0, 1]);
    }
}
