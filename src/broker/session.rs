//! One broker session: the consuming connection and its consumer, the publishing side,
//! the task that settles deliveries, and the loop that feeds the pipeline until shutdown
//! or until the consuming connection is lost (the only failure that ends a session:
//! without it, no delivery can be settled).

use std::time::Duration;

use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer, Event};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::connection::connect;
use super::error::{BrokerError, Role};
use super::pipeline::Pipeline;
use super::publish::Publisher;
use crate::config::Settings;
use crate::delivery::{Settle, SettleFrame, coalesce};
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
    publisher: Publisher,
    failures: mpsc::Receiver<BrokerError>,
    failure_tx: mpsc::Sender<BrokerError>,
    watcher: tokio::task::JoinHandle<()>,
}

impl Session {
    /// Opens the publishing side (declaring the topology), then the consuming
    /// connection, and starts consuming. On failure, what was opened is dropped, and
    /// lapin closes a dropped connection.
    pub async fn open(settings: &Settings, health: &Health) -> Result<Session, BrokerError> {
        let publisher = Publisher::open(settings, health).await?;
        let connection = connect(&settings.amqp, Role::Consumer).await?;
        let (failure_tx, failures) = mpsc::channel(4);
        let watcher = watch_consumer_connection(&connection, failure_tx.clone());
        let channel = connection
            .create_channel()
            .await
            .map_err(BrokerError::amqp("opening the consuming channel"))?;
        channel
            .basic_qos(settings.input.prefetch, BasicQosOptions::default())
            .await
            .map_err(BrokerError::amqp("setting the prefetch"))?;
        let consumer_tag = format!("webhook-normalizer-{}", std::process::id());
        let consumer = channel
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
            connection,
            channel,
            consumer,
            consumer_tag,
            publisher,
            failures,
            failure_tx,
            watcher,
        })
    }

    /// Feeds deliveries to the pipeline until shutdown or failure. On shutdown it stops
    /// consuming and drains what it holds (bounded by `shutdown.drain_timeout_secs`);
    /// then it closes both connections. Deliveries still unacknowledged at close go back
    /// to the queue.
    pub async fn run(
        mut self,
        settings: &Settings,
        shutdown: &CancellationToken,
        health: &Health,
    ) -> SessionEnd {
        let (settle_tx, settler) = spawn_settler(
            self.channel.clone(),
            health.clone(),
            self.failure_tx.clone(),
        );
        let mut pipeline = Pipeline::new(settings, self.publisher, settle_tx, health.clone());
        health.set_state(WorkerState::Consuming, None);
        info!(queue = %settings.input.queue, prefetch = settings.input.prefetch, "consuming");

        let mut drain_deadline: Option<Instant> = None;
        let end = loop {
            let can_take = drain_deadline.is_none() && pipeline.can_take();
            let retry_at = pipeline.retry_at();
            tokio::select! {
                biased;
                _ = shutdown.cancelled(), if drain_deadline.is_none() => {
                    drain_deadline = Some(Instant::now() + settings.shutdown.drain_timeout());
                    health.set_state(WorkerState::Draining, None);
                    // Stop new deliveries; the ones we hold are finished below.
                    let _ = self
                        .channel
                        .basic_cancel(self.consumer_tag.as_str().into(), BasicCancelOptions::default())
                        .await;
                }
                Some(failure) = self.failures.recv() => break SessionEnd::Failed(failure),
                Some(decided) = pipeline.next_decided() => pipeline.on_decided(decided),
                _ = sleep_until(retry_at), if retry_at.is_some() => pipeline.retry().await,
                next = self.consumer.next(), if can_take => match next {
                    Some(Ok(delivery)) => pipeline.admit(delivery).await,
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
                        settings.shutdown.drain_timeout().as_secs()
                    );
                    break SessionEnd::Shutdown;
                }
            }
            pipeline.advance();
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

        // Closing the settle queue lets the settler send what it has, then stop.
        let publisher = pipeline.into_publisher();
        if tokio::time::timeout(Duration::from_secs(5), settler)
            .await
            .is_err()
        {
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
            if let Event::Error(e) = event {
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

/// Sends settlements on the consuming channel in the order the pipeline makes them,
/// batching whatever has queued up meanwhile ([`coalesce`]): under load many acks
/// become one `multiple` ack, and an idle worker acks at once. Ends when the pipeline
/// drops its sender, or at the first failure (the consuming channel is gone: the
/// session ends and the broker requeues what was not settled).
fn spawn_settler(
    channel: Channel,
    health: Health,
    failures: mpsc::Sender<BrokerError>,
) -> (mpsc::UnboundedSender<Settle>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Settle>();
    let task = tokio::spawn(async move {
        let mut batch = Vec::new();
        while let Some(first) = rx.recv().await {
            batch.clear();
            batch.push(first);
            while let Ok(next) = rx.try_recv() {
                batch.push(next);
            }
            for frame in coalesce(&batch) {
                let sent = match frame {
                    SettleFrame::AckUpTo { tag } => {
                        channel
                            .basic_ack(tag, BasicAckOptions { multiple: true })
                            .await
                    }
                    SettleFrame::Reject { tag, requeue } => {
                        channel
                            .basic_reject(tag, BasicRejectOptions { requeue })
                            .await
                    }
                };
                if let Err(e) = sent {
                    health.add_settle_failed();
                    let _ = failures
                        .send(BrokerError::Amqp {
                            what: "settling deliveries".into(),
                            source: e,
                        })
                        .await;
                    return;
                }
            }
            let acked = batch
                .iter()
                .filter(|s| matches!(s, Settle::Ack { .. }))
                .count();
            health.add_acked(acked as u64);
        }
    });
    (tx, task)
}
