//! Publishing raw messages as a gateway does: mandatory, persistent, confirmed.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel};

use crate::webhooks::{RawWebhook, raw_properties};

/// Publishes raw webhooks to `webhooks.raw` (routing key `gateway`, vendor in `x-vendor`)
/// with confirms, as a gateway would.
pub async fn publish_raw(channel: &Channel, webhooks: &[RawWebhook]) {
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let mut confirms = Vec::new();
    for w in webhooks {
        confirms.push(
            channel
                .basic_publish(
                    "webhooks.raw".into(),
                    "gateway".into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &w.body,
                    raw_properties(w),
                )
                .await
                .expect("publish"),
        );
    }
    for c in confirms {
        let confirmation = c.await.expect("confirm");
        assert!(confirmation.is_ack(), "raw publish not acked");
        assert!(
            confirmation.take_message().is_none(),
            "raw publish returned: no topology?"
        );
    }
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
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let confirmation = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            body,
            properties,
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(confirmation.is_ack(), "publish to {exchange} not acked");
    assert!(
        confirmation.take_message().is_none(),
        "publish to {exchange} returned: no topology?"
    );
}
