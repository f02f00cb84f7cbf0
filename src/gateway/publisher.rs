//! Publishing raw webhook bodies as a gateway does (`webhook-normalizer publish`): the
//! bytes as given, persistent, `mandatory`, confirmed one by one, with the headers of
//! the raw-message contract.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};

use std::sync::Arc;
use std::task::Poll;

use crate::amqp::confirm::judge;
use crate::amqp::connection::connect_checked;
use crate::amqp::error::{BrokerError, Role};
use crate::amqp::ordered;
use crate::amqp::wire::{FrameCheck, Returns, Sent};
use crate::config::AmqpSettings;
use crate::delivery::PublishOutcome;

/// One raw webhook to publish to `input.exchange`.
#[derive(Debug, Clone)]
pub struct RawBody {
    pub body: Vec<u8>,
    pub routing_key: String,
    /// The `x-vendor` header, when given.
    pub vendor: Option<String>,
    pub message_id: Option<String>,
    /// The `x-received-at` header (RFC 3339).
    pub received_at: String,
    /// Other headers to send as they are (a vendor's signature headers).
    pub headers: Vec<(String, String)>,
}

/// What the broker did with one body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// Confirmed: stored in every queue it was routed to.
    Confirmed,
    /// Returned: no queue is bound for its routing key.
    Returned,
    /// Nacked: the broker could not take it.
    Nacked,
    /// Not sent: the broker blocks publishing on this connection (a memory or disk
    /// alarm). Sent, it would wait for the alarm to clear and be stored then, after the
    /// request was answered 503: a vendor's retry would make it twice.
    Blocked,
}

/// Publishes each body in turn, each confirmed (or not) before the next, and says what
/// became of each. A broker error ends it (the bodies before it have their outcome).
pub async fn publish_bodies(
    amqp: &AmqpSettings,
    exchange: &str,
    bodies: &[RawBody],
    mut each: impl FnMut(usize, Published),
) -> Result<(), BrokerError> {
    let publisher = GatewayPublisher::new(amqp.clone(), exchange.to_owned());
    for (i, raw) in bodies.iter().enumerate() {
        each(i, publisher.publish(raw).await?);
    }
    publisher.close().await;
    Ok(())
}

/// Publishes one body (persistent, mandatory, with the contract's headers) and waits for
/// the broker's answer.
async fn publish_one(link: &Link, exchange: &str, raw: &RawBody) -> Result<Published, BrokerError> {
    let mut headers = FieldTable::default();
    headers.insert(
        "x-received-at".into(),
        AMQPValue::LongString(raw.received_at.as_str().into()),
    );
    if let Some(vendor) = &raw.vendor {
        headers.insert(
            "x-vendor".into(),
            AMQPValue::LongString(vendor.as_str().into()),
        );
    }
    for (name, value) in &raw.headers {
        headers.insert(
            name.as_str().into(),
            AMQPValue::LongString(value.as_str().into()),
        );
    }
    let mut properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(headers);
    if let Some(id) = &raw.message_id {
        properties = properties.with_message_id(id.as_str().into());
    }
    let mut publish = std::pin::pin!(link.channel.basic_publish(
        exchange.into(),
        raw.routing_key.as_str().into(),
        BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        },
        &raw.body,
        properties,
    ));
    // The client numbers a publish and queues its frames in one step, but not atomically:
    // two requests publishing at once could go out in the other order than numbered, and
    // a confirm would then reach the other's publish. One at a time, in turn.
    let started = {
        let _turn = link.turn.lock().await;
        ordered::start(&mut publish).await
    };
    let confirm = match started {
        Poll::Ready(confirm) => confirm,
        Poll::Pending => publish.await,
    }
    .map_err(BrokerError::amqp(format!("publishing to {exchange}")))?;
    let confirmation = confirm
        .await
        .map_err(BrokerError::amqp(format!("publishing to {exchange}")))?;
    let sent = Sent {
        exchange,
        routing_key: &raw.routing_key,
        message_id: raw.message_id.as_deref(),
        body: &raw.body,
    };
    match judge(&confirmation, &link.returns, link.channel.id(), &sent) {
        PublishOutcome::Confirmed => Ok(Published::Confirmed),
        PublishOutcome::Returned => Ok(Published::Returned),
        PublishOutcome::Nacked => Ok(Published::Nacked),
        other => Err(BrokerError::ConnectionLost {
            role: Role::Publisher,
            reason: crate::ops::describe(&other),
        }),
    }
}

/// What [`GatewayPublisher::readiness`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Connected, not blocked: a request would be sent.
    Ready,
    /// Connected, but the broker blocks publishing (a resource alarm).
    Blocked,
    /// No connection yet; one is being made.
    Connecting,
    /// The last attempt failed, for this reason (no credentials in it); another is made.
    Unreachable(String),
}

/// A long-lived publishing channel for the reference gateway, shared by its requests:
/// opened on first use and again after it is lost. Connecting runs on its own task, so a
/// request that gives up waiting (its timeout) does not cut short an attempt that is
/// working through `amqp.url`: the next request finds the connection it made.
pub struct GatewayPublisher {
    shared: Arc<Shared>,
}

struct Shared {
    amqp: AmqpSettings,
    /// `input.exchange`.
    exchange: String,
    state: std::sync::Mutex<State>,
    /// Woken when a connection attempt ends.
    attempt_ended: tokio::sync::Notify,
}

#[derive(Default)]
struct State {
    open: Option<Open>,
    connecting: bool,
    /// Connection attempts started so far.
    attempts: u64,
    /// The last attempt that failed, and why: for the requests that waited for it.
    failed: Option<(u64, String)>,
}

/// The open connection and what requests publish through.
struct Open {
    connection: Connection,
    link: Link,
}

/// A confirm-mode channel, the returns its connection's frame check files, and the turn
/// requests take to start a publish on it.
#[derive(Clone)]
struct Link {
    channel: Channel,
    returns: Returns,
    turn: Arc<tokio::sync::Mutex<()>>,
}

impl GatewayPublisher {
    pub fn new(amqp: AmqpSettings, exchange: String) -> GatewayPublisher {
        GatewayPublisher {
            shared: Arc::new(Shared {
                amqp,
                exchange,
                state: std::sync::Mutex::new(State::default()),
                attempt_ended: tokio::sync::Notify::new(),
            }),
        }
    }

    /// Publishes one body and waits for the broker's answer; an error when the broker
    /// cannot be reached (the next call tries to connect again). Nothing is sent while
    /// the broker blocks the connection ([`Published::Blocked`]).
    pub async fn publish(&self, raw: &RawBody) -> Result<Published, BrokerError> {
        let (link, blocked) = self.link().await?;
        if blocked {
            return Ok(Published::Blocked);
        }
        let published = publish_one(&link, &self.shared.exchange, raw).await;
        if published.is_err() {
            self.shared.lock().open = None;
        }
        published
    }

    /// Whether a request now would be sent, for `/readyz`. With no connection open and
    /// none being made, starts an attempt (at most one at a time), so that probing a
    /// gateway that has had no request yet connects it.
    pub fn readiness(&self) -> Readiness {
        let mut state = self.shared.lock();
        if let Some(open) = state.open.as_ref() {
            let status = open.connection.status();
            if status.connected() && open.link.channel.status().connected() {
                return if status.blocked() {
                    Readiness::Blocked
                } else {
                    Readiness::Ready
                };
            }
            state.open = None;
        }
        let failed = state.failed.as_ref().map(|(_, reason)| reason.clone());
        if !state.connecting {
            state.connecting = true;
            state.attempts += 1;
            tokio::spawn(Shared::connect(self.shared.clone(), state.attempts));
        }
        match failed {
            Some(reason) => Readiness::Unreachable(reason),
            None => Readiness::Connecting,
        }
    }

    /// Closes the connection, if open.
    pub async fn close(&self) {
        let open = self.shared.lock().open.take();
        if let Some(open) = open {
            let _ = open.connection.close(200, "published".into()).await;
        }
    }

    /// The open channel and whether the broker blocks it, or one on a new connection
    /// (started, or joined when another request started it).
    async fn link(&self) -> Result<(Link, bool), BrokerError> {
        let mut waited_for = None;
        loop {
            let ended = self.shared.attempt_ended.notified();
            let mut ended = std::pin::pin!(ended);
            ended.as_mut().enable();
            {
                let mut state = self.shared.lock();
                if let Some(open) = state.open.as_ref() {
                    let status = open.connection.status();
                    if status.connected() && open.link.channel.status().connected() {
                        return Ok((open.link.clone(), status.blocked()));
                    }
                    state.open = None;
                }
                if !state.connecting {
                    if let Some((attempt, reason)) = &state.failed
                        && waited_for == Some(*attempt)
                    {
                        return Err(BrokerError::ConnectionLost {
                            role: Role::Publisher,
                            reason: reason.clone(),
                        });
                    }
                    state.connecting = true;
                    state.attempts += 1;
                    tokio::spawn(Shared::connect(self.shared.clone(), state.attempts));
                }
                waited_for = Some(state.attempts);
            }
            ended.await;
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// One connection attempt (through every URL of `amqp.url`), to its end.
    async fn connect(self: Arc<Self>, attempt: u64) {
        let opened = open(&self.amqp).await;
        {
            let mut state = self.lock();
            state.connecting = false;
            match opened {
                Ok(open) => {
                    state.open = Some(open);
                    state.failed = None;
                }
                Err(e) => state.failed = Some((attempt, e.to_string())),
            }
        }
        self.attempt_ended.notify_waiters();
    }
}

/// A new connection and confirm-mode channel.
async fn open(amqp: &AmqpSettings) -> Result<Open, BrokerError> {
    let check = FrameCheck::default();
    let returns = check.returns.clone();
    let connection = connect_checked(amqp, Role::Publisher, check).await?;
    let channel = connection
        .create_channel()
        .await
        .map_err(BrokerError::amqp("opening a channel"))?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(BrokerError::amqp("turning on publisher confirms"))?;
    Ok(Open {
        connection,
        link: Link {
            channel,
            returns,
            turn: Arc::default(),
        },
    })
}
