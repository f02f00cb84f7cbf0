//! Publishing raw webhook bodies as a gateway does (`webhook-normalizer publish`): the
//! bytes as given, persistent, `mandatory`, confirmed one by one, with the headers of
//! the raw-message contract.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};

use super::connection::connect;
use super::error::{BrokerError, Role};
use crate::config::Settings;

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
async fn publish_one(
    channel: &Channel,
    exchange: &str,
    raw: &RawBody,
) -> Result<Published, BrokerError> {
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
    let confirmation = channel
        .basic_publish(
            exchange.into(),
            raw.routing_key.as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            &raw.body,
            properties,
        )
        .await
        .map_err(BrokerError::amqp(format!("publishing to {exchange}")))?
        .await
        .map_err(BrokerError::amqp(format!("publishing to {exchange}")))?;
    Ok(
        match (confirmation.is_ack(), confirmation.take_message().is_some()) {
            (true, false) => Published::Confirmed,
            (true, true) => Published::Returned,
            (false, _) => Published::Nacked,
        },
    )
}

/// A long-lived publishing channel for the reference gateway, shared by its requests:
/// opened on first use and again after it is lost.
pub struct GatewayPublisher {
    settings: Settings,
    open: tokio::sync::Mutex<Option<(Connection, Channel)>>,
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
        let channel = self.channel().await?;
        let published = publish_one(&channel, &self.settings.input.exchange, raw).await;
        if published.is_err() {
            *self.open.lock().await = None;
        }
        published
    }

    /// Closes the connection, if open.
    pub async fn close(&self) {
        if let Some((connection, _)) = self.open.lock().await.take() {
            let _ = connection.close(200, "published".into()).await;
        }
    }

    /// The open channel, or a new one (on a new connection when the old one is gone).
    async fn channel(&self) -> Result<Channel, BrokerError> {
        let mut open = self.open.lock().await;
        if let Some((connection, channel)) = open.as_ref()
            && connection.status().connected()
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        let connection = connect(&self.settings.amqp, Role::Publisher).await?;
        let channel = connection
            .create_channel()
            .await
            .map_err(BrokerError::amqp("opening a channel"))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(BrokerError::amqp("turning on publisher confirms"))?;
        *open = Some((connection, channel.clone()));
        Ok(channel)
    }
}
