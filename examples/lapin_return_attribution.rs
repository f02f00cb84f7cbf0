//! A reproduction of a lapin 4.12 defect, with nothing of this project in it: when one
//! broker ack covers several publishes, lapin hands a `basic.return` to whichever of
//! them it completes first, so `Confirmation::Ack(Some(_))` can come back on a publish
//! the broker stored, and `Ack(None)` on the one it returned.
//!
//! ```sh
//! AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f cargo run --example lapin_return_attribution
//! ```
//!
//! It declares a temporary queue bound to routing key `routed` on `amq.topic`, then
//! publishes, mandatory and without waiting, 2,000 messages alternating between
//! `routed` (stored) and `nowhere` (returned), and awaits every confirm. A confirm that
//! carries a returned message on a publish to `routed`, or none on a publish to
//! `nowhere`, is misattributed. Typical output on RabbitMQ 3.10: a few dozen of each
//! per run; with the publishes awaited one at a time, none.
//!
//! This is why the worker tells returned publishes by what they carried
//! (`docs/operations.md`, "Returned publishes").

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};

const PUBLISHES: usize = 2_000;

#[tokio::main]
async fn main() -> Result<(), lapin::Error> {
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let connection = Connection::connect(&url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            queue.name().clone(),
            "amq.topic".into(),
            "routed".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;

    let mut confirms = Vec::with_capacity(PUBLISHES);
    for i in 0..PUBLISHES {
        let routing_key = if i % 2 == 0 { "routed" } else { "nowhere" };
        let confirm = channel
            .basic_publish(
                "amq.topic".into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                format!("message {i}").as_bytes(),
                BasicProperties::default(),
            )
            .await?;
        confirms.push((routing_key, confirm));
    }
    let (mut stored_but_returned, mut returned_but_stored) = (0, 0);
    for (routing_key, confirm) in confirms {
        let returned = match confirm.await? {
            Confirmation::Ack(message) => message.is_some(),
            other => panic!("not an ack: {other:?}"),
        };
        match (routing_key, returned) {
            ("routed", true) => stored_but_returned += 1,
            ("nowhere", false) => returned_but_stored += 1,
            _ => {}
        }
    }
    println!(
        "{PUBLISHES} publishes: {stored_but_returned} stored ones came back with a return, \
         {returned_but_stored} returned ones came back without"
    );
    connection.close(200, "done".into()).await?;
    Ok(())
}
