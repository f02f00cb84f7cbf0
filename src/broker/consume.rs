//! One broker session: a consuming and a publishing connection, the consumer loop, and
//! the handling of each delivery (plan, publish, settle) as its own task.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::Utc;
use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions,
    ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, Consumer, Event};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::connection::{BrokerError, Role, connect};
use super::publish::{Publisher, header_text};
use super::topology::declare_topology_with;
use crate::config::Settings;
use crate::delivery::{Plan, RawMessage, Settlement, headers, plan, settle};
use crate::normalize::Limits;
use crate::ops::Health;

/// How a session ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// Shutdown was requested; in-flight work was drained (or its deadline passed).
    Shutdown,
    /// The broker connection failed or the consumer was cancelled: reconnect.
    Failed(BrokerError),
}

/// A connected session, consuming.
pub struct Session {
    consumer_connection: Connection,
    publisher_connection: Connection,
    consumer: Consumer,
    consumer_tag: String,
    consumer_channel: lapin::Channel,
    publisher: Arc<Publisher>,
    failures: mpsc::Receiver<BrokerError>,
    /// The tasks forwarding connection events; stopped with the session.
    watchers: Vec<tokio::task::JoinHandle<()>>,
}

impl Session {
    /// Connects both sides, declares the topology and starts consuming. On failure, what
    /// was opened is dropped, and lapin closes a dropped connection.
    pub async fn open(settings: &Settings, health: &Health) -> Result<Session, BrokerError> {
        let blocked = Arc::new(AtomicBool::new(false));
        let (fail_tx, failures) = mpsc::channel(4);

        let publisher_connection = connect(&settings.amqp, Role::Publisher).await?;
        let mut watchers = Vec::new();
        watchers.push(watch_connection(
            &publisher_connection,
            Role::Publisher,
            fail_tx.clone(),
            {
                let blocked = blocked.clone();
                let health = health.clone();
                move |is_blocked| {
                    blocked.store(is_blocked, Ordering::Relaxed);
                    health.set_blocked(is_blocked);
                }
            },
        ));
        let channel = publisher_connection
            .create_channel()
            .await
            .map_err(BrokerError::amqp("opening the publishing channel"))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(BrokerError::amqp("enabling publisher confirms"))?;
        declare_topology_with(&channel, settings).await?;

        let consumer_connection = connect(&settings.amqp, Role::Consumer).await?;
        watchers.push(watch_connection(
            &consumer_connection,
            Role::Consumer,
            fail_tx.clone(),
            |_| {},
        ));
        let consumer_channel = consumer_connection
            .create_channel()
            .await
            .map_err(BrokerError::amqp("opening the consuming channel"))?;
        consumer_channel
            .basic_qos(settings.input.prefetch, BasicQosOptions::default())
            .await
            .map_err(BrokerError::amqp("setting the prefetch"))?;
        let consumer_tag = format!("webhook-normalizer-{}", std::process::id());
        let consumer = consumer_channel
            .basic_consume(
                settings.input.queue.as_str().into(),
                consumer_tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(BrokerError::amqp(format!(
                "consuming from queue {}",
                settings.input.queue
            )))?;

        Ok(Session {
            consumer_connection,
            publisher_connection,
            consumer,
            consumer_tag,
            consumer_channel,
            publisher: Arc::new(Publisher {
                channel,
                output_exchange: settings.output.exchange.as_str().into(),
                dead_letter_exchange: settings.dead_letter.exchange.as_str().into(),
                confirm_timeout: settings.amqp.confirm_timeout(),
                blocked,
                lost: fail_tx,
            }),
            failures,
            watchers,
        })
    }

    /// Consumes until shutdown or failure, then drains in-flight deliveries (bounded by
    /// `shutdown.drain_timeout_secs`) and closes both connections. Deliveries still
    /// unacknowledged at close go back to the queue.
    pub async fn run(
        mut self,
        settings: &Settings,
        shutdown: &CancellationToken,
        health: &Health,
    ) -> SessionEnd {
        let limits = settings.limits();
        let in_flight = TaskTracker::new();
        health.set_ready(true);
        info!(queue = %settings.input.queue, prefetch = settings.input.prefetch, "consuming");

        let end = loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break SessionEnd::Shutdown,
                Some(failure) = self.failures.recv() => break SessionEnd::Failed(failure),
                next = self.consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        health.add_consumed();
                        in_flight.spawn(handle(delivery, self.publisher.clone(), limits, health.clone()));
                    }
                    Some(Err(e)) => break SessionEnd::Failed(BrokerError::Amqp {
                        what: "consuming".into(),
                        source: e,
                    }),
                    None => break SessionEnd::Failed(BrokerError::ConsumerCancelled),
                },
            }
        };
        health.set_ready(false);

        if let SessionEnd::Shutdown = end {
            // Stop new deliveries; the ones we hold are finished below.
            let _ = self
                .consumer_channel
                .basic_cancel(
                    self.consumer_tag.as_str().into(),
                    BasicCancelOptions::default(),
                )
                .await;
        }
        in_flight.close();
        let drain = settings.shutdown.drain_timeout();
        if tokio::time::timeout(drain, in_flight.wait()).await.is_err() {
            warn!(
                left = in_flight.len(),
                "in-flight deliveries not finished within {}s; they will be redelivered",
                drain.as_secs()
            );
        }
        for watcher in &self.watchers {
            watcher.abort();
        }
        // A close can hang on a dead or blocked broker; it is only a courtesy.
        let close_timeout = std::time::Duration::from_secs(5);
        let _ = tokio::time::timeout(
            close_timeout,
            self.consumer_connection.close(200, "bye".into()),
        )
        .await;
        let _ = tokio::time::timeout(
            close_timeout,
            self.publisher_connection.close(200, "bye".into()),
        )
        .await;
        end
    }
}

/// Forwards a connection's errors to the session and its blocked state to `on_blocked`.
fn watch_connection(
    connection: &Connection,
    role: Role,
    failures: mpsc::Sender<BrokerError>,
    on_blocked: impl Fn(bool) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let mut events = connection.events_listener();
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            match event {
                Event::Error(e) => {
                    let _ = failures
                        .send(BrokerError::ConnectionLost {
                            role,
                            reason: e.to_string(),
                        })
                        .await;
                    return;
                }
                Event::ConnectionBlocked(reason) => {
                    warn!(%role, %reason, "broker blocked the connection");
                    on_blocked(true);
                }
                Event::ConnectionUnblocked => {
                    info!(%role, "broker unblocked the connection");
                    on_blocked(false);
                }
                _ => {}
            }
        }
    })
}

/// Handles one delivery: plan, publish, then ack or requeue (see `crate::delivery`).
async fn handle(delivery: Delivery, publisher: Arc<Publisher>, limits: Limits, health: Health) {
    let Delivery {
        data,
        exchange,
        routing_key,
        properties,
        acker,
        ..
    } = delivery;
    let raw = RawMessage {
        body: data,
        exchange: exchange.to_string(),
        routing_key: routing_key.to_string(),
        vendor_header: header_text(&properties, headers::VENDOR),
        received_at_header: header_text(&properties, headers::RECEIVED_AT),
        timestamp: *properties.timestamp(),
    };
    let message_id = properties.message_id().as_ref().map(|id| id.as_str());

    let (outcomes, dead_letter) = match plan(&raw, &limits, Utc::now()) {
        Plan::Publish(events) => {
            let outcomes = publisher
                .publish_events(&events, properties.message_id().as_ref())
                .await;
            (outcomes, None)
        }
        Plan::DeadLetter(dl) => {
            let outcome = publisher
                .publish_dead_letter(&dl, &raw.body, &properties)
                .await;
            (vec![outcome], Some(dl))
        }
    };

    let settlement = settle(&outcomes);
    let settled = match settlement {
        Settlement::Ack => acker.ack(Default::default()).await,
        Settlement::Requeue => acker.reject(BasicRejectOptions { requeue: true }).await,
        Settlement::Release => {
            publisher.report_lost();
            warn!(
                message_id,
                "publishing channel lost; the delivery returns to the queue"
            );
            return;
        }
    };
    if !matches!(settled, Ok(true)) {
        // The channel is gone (or the acker was used): the broker redelivers it.
        health.add_settle_failed();
        warn!(
            message_id,
            ?settlement,
            "could not settle a delivery; it will be redelivered"
        );
        return;
    }
    if settlement == Settlement::Ack {
        health.add_acked();
    }
    match (settlement, dead_letter) {
        (Settlement::Ack, None) => {
            health.add_events_published(outcomes.len() as u64);
            debug!(message_id, events = outcomes.len(), "published");
        }
        (Settlement::Ack, Some(dl)) => {
            health.add_dead_lettered();
            warn!(
                message_id,
                kind = %dl.kind,
                vendor = dl.vendor.map(|v| v.key()),
                detail = %dl.detail,
                "dead-lettered"
            );
        }
        (Settlement::Requeue, _) => {
            health.add_requeued();
            warn!(message_id, ?outcomes, "publish not confirmed; requeued");
        }
        (Settlement::Release, _) => {}
    }
}
