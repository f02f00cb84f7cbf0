//! Publishing as a gateway does: mandatory, with publisher confirms, every publish acked
//! and routed.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel};

use crate::webhooks::{RawWebhook, raw_properties};

/// Unconfirmed publishes at most, so a large batch does not queue them all.
const WINDOW: usize = 500;

/// Publishes each `(body, properties)` to `exchange` with `routing_key`, mandatory, with
/// publisher confirms (at most 500 unconfirmed at a time); fails unless every publish is
/// acked and routed to a queue.
pub async fn publish_confirmed<'a>(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    messages: impl IntoIterator<Item = (&'a [u8], BasicProperties)>,
) {
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let mut messages = messages.into_iter().peekable();
    while messages.peek().is_some() {
        let mut confirms = Vec::with_capacity(WINDOW);
        for (body, properties) in messages.by_ref().take(WINDOW) {
            let options = BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            };
            confirms.push(
                channel
                    .basic_publish(
                        exchange.into(),
                        routing_key.into(),
                        options,
                        body,
                        properties,
                    )
                    .await
                    .expect("publish"),
            );
        }
        for confirm in confirms {
            let confirmation = confirm.await.expect("confirm");
            assert!(confirmation.is_ack(), "publish to {exchange} nacked");
            assert!(
                confirmation.take_message().is_none(),
                "publish to {exchange} returned: no queue bound (no topology?)"
            );
        }
    }
}

/// Publishes raw webhooks to `webhooks.raw` (routing key `gateway`, vendor in `x-vendor`)
/// with confirms, as a gateway would.
pub async fn publish_raw(channel: &Channel, webhooks: &[RawWebhook]) {
    let messages = webhooks
        .iter()
        .map(|w| (w.body.as_slice(), raw_properties(w)));
    publish_confirmed(channel, "webhooks.raw", "gateway", messages).await;
}

/// Publishes one message with exactly `properties` (for unusual ones: `user_id`,
/// `expiration`, huge headers), mandatory and confirmed; fails unless acked and routed.
pub async fn publish_raw_with(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) {
    publish_confirmed(channel, exchange, routing_key, [(body, properties)]).await;
}
