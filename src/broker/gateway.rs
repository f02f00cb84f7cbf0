//! Publishing raw webhook bodies as a gateway does (`webhook-normalizer publish`): the
//! bytes as given, persistent, `mandatory`, confirmed one by one, with the headers of
//! the raw-message contract.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};

use std::sync::Arc;
use std::task::Poll;

use super::confirm::judge;
use super::connection::connect_checked;
use super::error::{BrokerError, Role};
use super::ordered;
use super::wire::{FrameCheck, Returns, Sent};
use crate::config::Settings;
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
}

/// Publishes each body in turn, each confirmed (or not) before the next, and says what
/// became of each. A broker error ends it (the bodies before it have their outcome).
pub async fn publish_bodies(
    settings: &Settings,
    bodies: &[RawBody],
    mut each: impl FnMut(usize, Published),
) -> Result<(), BrokerError> {
    let publisher = GatewayPublisher::new(settings.clone());
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

/// A long-lived publishing channel for the reference gateway, shared by its requests:
/// opened on first use and again after it is lost.
pub struct GatewayPublisher {
    settings: Settings,
    open: tokio::sync::Mutex<Option<Open>>,
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
    pub fn new(settings: Settings) -> GatewayPublisher {
        GatewayPublisher {
            settings,
            open: tokio::sync::Mutex::new(None),
        }
    }

    /// Publishes one body and waits for the broker's answer; an error when the broker
    /// cannot be reached (the next call tries to connect again).
    pub async fn publish(&self, raw: &RawBody) -> Result<Published, BrokerError> {
        let link = self.link().await?;
        let published = publish_one(&link, &self.settings.input.exchange, raw).await;
        if published.is_err() {
            *self.open.lock().await = None;
        }
        published
    }

    /// Closes the connection, if open.
    pub async fn close(&self) {
        if let Some(open) = self.open.lock().await.take() {
            let _ = open.connection.close(200, "published".into()).await;
        }
    }

    /// The open channel, or a new one (on a new connection when the old one is gone).
    async fn link(&self) -> Result<Link, BrokerError> {
        let mut open = self.open.lock().await;
        if let Some(open) = open.as_ref()
            && open.connection.status().connected()
            && open.link.channel.status().connected()
        {
            return Ok(open.link.clone());
        }
        let check = FrameCheck::default();
        let returns = check.returns.clone();
        let connection = connect_checked(&self.settings.amqp, Role::Publisher, check).await?;
        let channel = connection
            .create_channel()
            .await
            .map_err(BrokerError::amqp("opening a channel"))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(BrokerError::amqp("turning on publisher confirms"))?;
        let link = Link {
            channel,
            returns,
            turn: Arc::default(),
        };
        *open = Some(Open {
            connection,
            link: link.clone(),
        });
        Ok(link)
    }
}
