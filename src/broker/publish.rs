//! Publishing with publisher confirms: canonical events to the output exchange and dead
//! letters to the dead-letter exchange, each `mandatory`, each confirm awaited.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, PublisherConfirm};

use crate::delivery::{APP_ID, DeadLetter, EVENT_CONTENT_TYPE, OutgoingEvent, PublishOutcome};

/// AMQP delivery mode 2: the broker writes the message to disk.
const PERSISTENT: u8 = 2;

/// The publishing side of a session: one confirm-mode channel shared by all in-flight
/// deliveries, so many publishes and their confirms are in flight at once.
pub(crate) struct Publisher {
    pub(crate) channel: Channel,
    pub(crate) output_exchange: ShortString,
    pub(crate) dead_letter_exchange: ShortString,
    pub(crate) confirm_timeout: Duration,
    /// Set while the broker blocks the publishing connection (memory or disk alarm).
    pub(crate) blocked: Arc<AtomicBool>,
    /// Where a lost channel is reported, to end the session.
    pub(crate) lost: tokio::sync::mpsc::Sender<super::BrokerError>,
}

impl Publisher {
    /// Ends the session: the publishing channel is gone (a connection error, or the
    /// broker closed the channel, e.g. because the output exchange was deleted).
    pub(crate) fn report_lost(&self) {
        let _ = self.lost.try_send(super::BrokerError::ChannelLost {
            role: super::Role::Publisher,
        });
    }

    /// Publishes every event, then awaits every confirm: the events of one fanned-out
    /// body travel together instead of one round trip each.
    pub(crate) async fn publish_events(
        &self,
        events: &[OutgoingEvent],
        correlation_id: Option<&ShortString>,
    ) -> Vec<PublishOutcome> {
        let mut pending = Vec::with_capacity(events.len());
        for event in events {
            let mut properties = BasicProperties::default()
                .with_content_type(EVENT_CONTENT_TYPE.into())
                .with_delivery_mode(PERSISTENT)
                .with_message_id(event.message_id.as_str().into())
                .with_type(event.kind.into())
                .with_timestamp(event.timestamp)
                .with_app_id(APP_ID.into())
                .with_headers(text_headers(FieldTable::default(), &event.headers));
            if let Some(id) = correlation_id {
                properties = properties.with_correlation_id(id.clone());
            }
            pending.push(
                self.send(
                    &self.output_exchange,
                    event.routing_key,
                    &event.body,
                    properties,
                )
                .await,
            );
        }
        let mut outcomes = Vec::with_capacity(pending.len());
        for confirm in pending {
            outcomes.push(match confirm {
                Some(confirm) => self.await_confirm(confirm).await,
                None => PublishOutcome::Failed,
            });
        }
        outcomes
    }

    /// Publishes the original body with its original properties and headers, plus the
    /// dead-letter headers, persistent whatever the original said.
    pub(crate) async fn publish_dead_letter(
        &self,
        dead_letter: &DeadLetter,
        body: &[u8],
        original: &BasicProperties,
    ) -> PublishOutcome {
        let headers = text_headers(
            original.headers().clone().unwrap_or_default(),
            &dead_letter.headers,
        );
        let properties = original
            .clone()
            .with_headers(headers)
            .with_delivery_mode(PERSISTENT);
        match self
            .send(
                &self.dead_letter_exchange,
                &dead_letter.routing_key,
                body,
                properties,
            )
            .await
        {
            Some(confirm) => self.await_confirm(confirm).await,
            None => PublishOutcome::Failed,
        }
    }

    async fn send(
        &self,
        exchange: &ShortString,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Option<PublisherConfirm> {
        let options = BasicPublishOptions {
            // Unroutable is not success: the broker returns it and we requeue.
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        self.channel
            .basic_publish(
                exchange.clone(),
                routing_key.into(),
                options,
                body,
                properties,
            )
            .await
            .ok()
    }

    /// Waits for the confirm. The timeout does not run while the broker blocks us: an
    /// alarm is waited out (holding the delivery) rather than turned into redeliveries
    /// that would use up its delivery limit.
    async fn await_confirm(&self, confirm: PublisherConfirm) -> PublishOutcome {
        let mut confirm = std::pin::pin!(confirm);
        loop {
            match tokio::time::timeout(self.confirm_timeout, &mut confirm).await {
                Ok(Ok(Confirmation::Ack(None))) => return PublishOutcome::Confirmed,
                // An unroutable mandatory publish is still acked, with the message back.
                Ok(Ok(Confirmation::Ack(Some(_)))) => return PublishOutcome::Returned,
                Ok(Ok(Confirmation::Nack(_))) => return PublishOutcome::Nacked,
                // Confirms were not enabled on the channel: nothing proves it is stored.
                Ok(Ok(Confirmation::NotRequested)) | Ok(Err(_)) => return PublishOutcome::Failed,
                Err(_) if self.blocked.load(Ordering::Relaxed) => continue,
                Err(_) => return PublishOutcome::TimedOut,
            }
        }
    }
}

/// Adds text headers to a table (replacing same-named ones).
fn text_headers(mut table: FieldTable, headers: &[(&'static str, String)]) -> FieldTable {
    for (name, value) in headers {
        table.insert((*name).into(), AMQPValue::LongString(value.as_str().into()));
    }
    table
}

/// A header's value as text, when it is a string.
pub(crate) fn header_text(properties: &BasicProperties, name: &str) -> Option<String> {
    let value = properties.headers().as_ref()?.inner().get(name)?;
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        AMQPValue::ByteArray(b) => Some(String::from_utf8_lossy(b.as_slice()).into_owned()),
        _ => None,
    }
}
