//! Settling deliveries on the consuming channel, from the pipeline's own task:
//! settlements wait to be batched ([`AckPolicy`]), then go out as frames in their order
//! ([`coalesce`]: consecutive acks become one `multiple` ack), handed to the client at
//! once; their writes complete in the background and are counted here.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio::time::Instant;

use futures_util::stream::{FuturesUnordered, StreamExt};
use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicRejectOptions};

use crate::amqp::error::BrokerError;
use crate::amqp::ordered;
use crate::delivery::{AckPolicy, Settle, SettleFrame, coalesce};
use crate::ops::{Health, Occurrence};

/// One settlement frame written (or not).
type Write = Pin<Box<dyn Future<Output = Result<u64, lapin::Error>> + Send>>;

pub(crate) struct Settler {
    channel: Channel,
    health: Health,
    policy: AckPolicy,
    /// Settlements waiting for their batch, in order, and since when the oldest waits.
    pending: Vec<Settle>,
    oldest: Option<Instant>,
    writes: FuturesUnordered<Write>,
}

impl Settler {
    pub(crate) fn new(channel: Channel, health: Health) -> Settler {
        Settler {
            channel,
            health,
            policy: AckPolicy::DEFAULT,
            pending: Vec::new(),
            oldest: None,
            writes: FuturesUnordered::new(),
        }
    }

    /// Queues settlements, in order, behind those already waiting.
    pub(crate) fn queue(&mut self, settles: Vec<Settle>) {
        if settles.is_empty() {
            return;
        }
        self.oldest.get_or_insert_with(Instant::now);
        self.pending.extend(settles);
    }

    /// When the waiting settlements are due at the latest.
    pub(crate) fn due_at(&self) -> Option<Instant> {
        self.oldest.map(|t| t + self.policy.wait)
    }

    /// Sends the waiting settlements if they are due (all of them when `draining`).
    pub(crate) async fn send_due(&mut self, draining: bool) -> Result<(), BrokerError> {
        let waited = self.oldest.map_or(Duration::ZERO, |t| t.elapsed());
        if !self.policy.due(self.pending.len(), waited, draining) {
            return Ok(());
        }
        self.oldest = None;
        let settles = std::mem::take(&mut self.pending);
        self.send(&settles).await
    }

    /// Hands `settles` to the client as frames, in order. An error here means the
    /// consuming channel is gone: the session ends, and the broker requeues what was not
    /// settled.
    async fn send(&mut self, settles: &[Settle]) -> Result<(), BrokerError> {
        for frame in coalesce(settles) {
            let channel = self.channel.clone();
            let mut write: Write = match frame {
                SettleFrame::AckUpTo { tag, deliveries } => Box::pin(async move {
                    channel
                        .basic_ack(tag, BasicAckOptions { multiple: true })
                        .await
                        .map(|()| deliveries)
                }),
                SettleFrame::Ack { tag } => Box::pin(async move {
                    channel
                        .basic_ack(tag, BasicAckOptions { multiple: false })
                        .await
                        .map(|()| 1)
                }),
                SettleFrame::Reject { tag, requeue } => Box::pin(async move {
                    channel
                        .basic_reject(tag, BasicRejectOptions { requeue })
                        .await
                        .map(|()| 0)
                }),
            };
            match ordered::start(&mut write).await {
                Poll::Ready(written) => self.count(written)?,
                Poll::Pending => self.writes.push(write),
            }
        }
        Ok(())
    }

    /// The next settlement written; `None` when none is pending.
    pub(crate) async fn next_written(&mut self) -> Option<Result<(), BrokerError>> {
        let written = self.writes.next().await?;
        Some(self.count(written))
    }

    /// Waits (at most `within`) until every settlement handed over is written.
    pub(crate) async fn finish(&mut self, within: Duration) -> bool {
        let all = async { while let Some(Ok(())) = self.next_written().await {} };
        tokio::time::timeout(within, all).await.is_ok() && self.writes.is_empty()
    }

    fn count(&self, written: Result<u64, lapin::Error>) -> Result<(), BrokerError> {
        match written {
            Ok(0) => Ok(()),
            Ok(acked) => {
                self.health.record(Occurrence::AckFrame { messages: acked });
                Ok(())
            }
            Err(source) => {
                self.health.record(Occurrence::SettleFailed);
                Err(BrokerError::Amqp {
                    what: "settling deliveries".into(),
                    source,
                })
            }
        }
    }
}
