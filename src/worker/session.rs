//! One broker session: the consuming connection and its consumer, the publishing side,
//! and the loop that feeds the pipeline and settles what it decides, until shutdown or
//! until the consuming connection is lost (the only failure that ends a session: without
//! it, no delivery can be settled).

use std::time::Duration;

use futures_lite::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer, Event};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::pipeline::Pipeline;
use super::publisher::Publisher;
use super::settler::Settler;
use crate::amqp::connection::connect_checked;
use crate::amqp::error::{BrokerError, Role};
use crate::amqp::wire::{FrameCheck, WireReports};
use crate::config::WorkerSettings;
use crate::ops::{Health, WorkerState};

/// How a session ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// Shutdown was requested; in-flight work was drained (or its deadline passed).
    Shutdown,
    /// The consuming connection failed or the consumer was cancelled: reconnect.
    Failed(BrokerError),
}

/// A connected session, consuming.
pub struct Session {
    connection: Connection,
    channel: Channel,
    consumer: Consumer,
    consumer_tag: String,
    /// What the consuming connection's frame checks found, by channel and delivery tag.
    reports: WireReports,
    publisher: Publisher,
    failures: mpsc::Receiver<BrokerError>,
    watcher: tokio::task::JoinHandle<()>,
}

impl Session {
    /// Opens the publishing side (declaring the topology), then the consuming
    /// connection, and starts consuming. On failure, what was opened is dropped, and
    /// lapin closes a dropped connection.
    pub async fn open(settings: &WorkerSettings, health: &Health) -> Result<Session, BrokerError> {
        let publisher = Publisher::open(&settings.amqp, &settings.topology, health).await?;
        // A body over the limit would be a dead letter anyway: the worker never holds it.
        let check = FrameCheck {
            max_body_bytes: u64::try_from(settings.pipeline.limits.max_body_bytes).ok(),
            ..FrameCheck::default()
        };
        let reports = check.reports.clone();
        let connection = connect_checked(&settings.amqp, Role::Consumer, check).await?;
        let (failure_tx, failures) = mpsc::channel(4);
        let watcher = watch_consumer_connection(&connection, failure_tx);
        let channel = connection
            .create_channel()
            .await
            .map_err(BrokerError::amqp("opening the consuming channel"))?;
        channel
            .basic_qos(settings.pipeline.prefetch, BasicQosOptions::default())
            .await
            .map_err(BrokerError::amqp("setting the prefetch"))?;
        let consumer_tag = format!("webhook-normalizer-{}", std::process::id());
        let consumer = channel
            .basic_consume(
                settings.topology.input.queue.as_str().into(),
                consumer_tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(BrokerError::amqp(format!(
                "consuming from queue {}",
                settings.topology.input.queue
            )))?;
        Ok(Session {
            connection,
            channel,
            consumer,
            consumer_tag,
            reports,
            publisher,
            failures,
            watcher,
        })
    }

    /// Feeds deliveries to the pipeline until shutdown or failure. On shutdown it stops
    /// consuming and drains what it holds (bounded by `shutdown.drain_timeout_secs`);
    /// then it closes both connections. Deliveries still unacknowledged at close go back
    /// to the queue.
    pub async fn run(
        mut self,
        settings: &WorkerSettings,
        shutdown: &CancellationToken,
        health: &Health,
    ) -> SessionEnd {
        let mut pipeline = Pipeline::new(settings, self.publisher, health.clone());
        let mut settler = Settler::new(self.channel.clone(), health.clone());
        health.set_state(WorkerState::Consuming, None);
        info!(queue = %settings.topology.input.queue, prefetch = settings.pipeline.prefetch, "consuming");

        let mut drain_deadline: Option<Instant> = None;
        let end = loop {
            let can_take = drain_deadline.is_none() && pipeline.can_take();
            let wake_at = pipeline.wake_at();
            let settle_at = settler.due_at();
            tokio::select! {
                biased;
                _ = shutdown.cancelled(), if drain_deadline.is_none() => {
                    drain_deadline = Some(Instant::now() + settings.drain_timeout);
                    health.set_state(WorkerState::Draining, None);
                    // Stop new deliveries; the ones we hold are finished below.
                    let _ = self
                        .channel
                        .basic_cancel(self.consumer_tag.as_str().into(), BasicCancelOptions::default())
                        .await;
                }
                Some(failure) = self.failures.recv() => break SessionEnd::Failed(failure),
                Some(decided) = pipeline.next_decided() => pipeline.on_decided(decided),
                Some(written) = settler.next_written() => {
                    if let Err(failure) = written {
                        break SessionEnd::Failed(failure);
                    }
                }
                _ = sleep_until(wake_at), if wake_at.is_some() => pipeline.tick(),
                // Settlements waited long enough: sent below.
                _ = sleep_until(settle_at), if settle_at.is_some() => {}
                next = self.consumer.next(), if can_take => match next {
                    Some(Ok(delivery)) => {
                        let report = self.reports.take(self.channel.id(), delivery.delivery_tag);
                        pipeline.admit(delivery, report);
                    }
                    Some(Err(e)) => break SessionEnd::Failed(BrokerError::Amqp {
                        what: "consuming".into(),
                        source: e,
                    }),
                    None => break SessionEnd::Failed(BrokerError::ConsumerCancelled),
                },
                _ = sleep_until(drain_deadline), if drain_deadline.is_some() => {
                    warn!(
                        left = pipeline.held(),
                        "in-flight deliveries not finished within {}s; they will be redelivered",
                        settings.drain_timeout.as_secs()
                    );
                    break SessionEnd::Shutdown;
                }
            }
            // Hand the core everything already decided, run what it asks for, and settle
            // what it finished; acks go out in batches.
            pipeline.drain_decided();
            pipeline.run_commands().await;
            settler.queue(pipeline.take_settled());
            if let Err(failure) = settler.send_due(drain_deadline.is_some()).await {
                break SessionEnd::Failed(failure);
            }
            if drain_deadline.is_some() && pipeline.held() == 0 {
                break SessionEnd::Shutdown;
            }
        };
        health.set_state(
            match end {
                SessionEnd::Shutdown => WorkerState::Draining,
                SessionEnd::Failed(_) => WorkerState::Connecting,
            },
            None,
        );

        let publisher = pipeline.into_publisher();
        // After a failure the channel is usually gone; settling is then best effort.
        if !settler.finish(Duration::from_secs(5)).await && matches!(end, SessionEnd::Shutdown) {
            warn!("settling deliveries did not finish; they will be redelivered");
        }
        self.watcher.abort();
        // A close can hang on a dead or blocked broker; it is only a courtesy.
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            self.connection.close(200, "bye".into()),
        )
        .await;
        publisher.close().await;
        end
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Reports a failure of the consuming connection to the session.
fn watch_consumer_connection(
    connection: &Connection,
    failures: mpsc::Sender<BrokerError>,
) -> tokio::task::JoinHandle<()> {
    let mut events = connection.events_listener();
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            if let Event::Error(e) = event
                && !crate::amqp::error::is_channel_error(&e)
            {
                let _ = failures
                    .send(BrokerError::ConnectionLost {
                        role: Role::Consumer,
                        reason: e.to_string(),
                    })
                    .await;
                return;
            }
        }
    })
}
