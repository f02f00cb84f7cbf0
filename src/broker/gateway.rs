//! Publishing raw webhook bodies as a gateway does (`webhook-normalizer publish`): the
//! bytes as given, persistent, `mandatory`, confirmed one by one, with the headers of
//! the raw-message contract.

use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};

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
    let connection = connect(&settings.amqp, Role::Publisher).await?;
    let channel = connection
        .create_channel()
        .await
        .map_err(BrokerError::amqp("opening a channel"))?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(BrokerError::amqp("turning on publisher confirms"))?;
    let exchange = settings.input.exchange.as_str();
    for (i, raw) in bodies.iter().enumerate() {
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
        each(
            i,
            match (confirmation.is_ack(), confirmation.take_message().is_some()) {
                (true, false) => Published::Confirmed,
                (true, true) => Published::Returned,
                (false, _) => Published::Nacked,
            },
        );
    }
    let _ = connection.close(200, "published".into()).await;
    Ok(())
}
