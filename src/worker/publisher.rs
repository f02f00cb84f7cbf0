//! The publishing side: one connection with two confirm-mode channels (one for dead
//! letters, one for the rest: [`Lane`]), each reopened in place
//! when the broker closes it; AMQP messages built and measured against the negotiated
//! frame before they are sent; each publish `mandatory`, each confirm awaited.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_lite::StreamExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, Event, PublisherConfirm};
use tracing::{info, warn};

use crate::amqp::confirm::judge;
use crate::amqp::connection::connect_checked;
use crate::amqp::error::{BrokerError, Role};
use crate::amqp::headers::{PERSISTENT, with_added_headers};
use crate::amqp::topology::prepare_topology;
use crate::amqp::wire::{FrameCheck, Returns, Sent};
use crate::config::{AmqpSettings, Topology};
use crate::contract::{APP_ID, EVENT_CONTENT_TYPE};
use crate::delivery::{Lane, PublishOutcome};
use crate::normalize::OutgoingEvent;
use crate::ops::Health;
use crate::trace_context::TRACEPARENT;

/// One AMQP message, built once and published as often as retries need: the wire form,
/// in the AMQP client's types, of an [`OutgoingEvent`] (with the output contract's
/// properties), of a dead letter, or of a copy (kept, tapped, looped). Only the worker
/// makes one.
#[derive(Debug)]
pub(crate) struct AmqpMessage {
    pub(crate) exchange: ShortString,
    pub(crate) routing_key: ShortString,
    pub(crate) body: Arc<Vec<u8>>,
    /// Shared by a message and its copies (kept, tapped): a copy's own headers are in
    /// `added`, so making one clones nothing but those.
    pub(crate) properties: Arc<BasicProperties>,
    /// Text headers a copy adds to `properties` (replacing any of the same name, the
    /// later of two winning): the table is made once, when it is published.
    pub(crate) added: Vec<(&'static str, String)>,
}

impl AmqpMessage {
    /// A message published with these properties as they are.
    pub(crate) fn new(
        exchange: ShortString,
        routing_key: ShortString,
        body: Arc<Vec<u8>>,
        properties: BasicProperties,
    ) -> AmqpMessage {
        AmqpMessage {
            exchange,
            routing_key,
            body,
            properties: Arc::new(properties),
            added: Vec::new(),
        }
    }

    /// A copy of this message, to `exchange` with `routing_key`, with these headers too.
    pub(crate) fn copy(
        &self,
        exchange: ShortString,
        routing_key: ShortString,
        added: impl IntoIterator<Item = (&'static str, String)>,
    ) -> AmqpMessage {
        let mut all = self.added.clone();
        all.extend(added);
        AmqpMessage {
            exchange,
            routing_key,
            body: self.body.clone(),
            properties: self.properties.clone(),
            added: all,
        }
    }

    /// The properties as published: `properties` with `added`.
    pub(crate) fn published_properties(&self) -> BasicProperties {
        if self.added.is_empty() {
            return (*self.properties).clone();
        }
        with_added_headers(
            &self.properties,
            self.added
                .iter()
                .map(|(name, value)| (*name, value.as_str())),
        )
    }

    /// A header as published, when it is text.
    pub(crate) fn header_text(&self, name: &str) -> Option<std::borrow::Cow<'_, str>> {
        if let Some((_, value)) = self.added.iter().rev().find(|(n, _)| *n == name) {
            return Some(std::borrow::Cow::Borrowed(value.as_str()));
        }
        match self.properties.headers().as_ref()?.inner().get(name) {
            Some(AMQPValue::LongString(v)) => Some(String::from_utf8_lossy(v.as_bytes())),
            _ => None,
        }
    }

    /// A canonical event with the output contract's properties and headers.
    pub(crate) fn event(
        event: OutgoingEvent,
        exchange: &ShortString,
        correlation_id: Option<&ShortString>,
        traceparent: &[u8],
    ) -> AmqpMessage {
        // The type is both the routing key and the `type` property.
        let event_type: ShortString = event.routing_key().into();
        let mut headers = FieldTable::default();
        for (name, value) in event.headers {
            headers.insert(name.into(), AMQPValue::LongString(value.into()));
        }
        // The worker's span for the raw message: a consumer's work joins the trace.
        headers.insert(
            TRACEPARENT.into(),
            AMQPValue::LongString(traceparent.into()),
        );
        let mut properties = BasicProperties::default()
            .with_content_type(EVENT_CONTENT_TYPE.into())
            .with_delivery_mode(PERSISTENT)
            .with_message_id(event.message_id.into())
            .with_type(event_type.clone())
            .with_timestamp(event.timestamp)
            .with_app_id(APP_ID.into())
            .with_headers(headers);
        if let Some(id) = correlation_id {
            properties = properties.with_correlation_id(id.clone());
        }
        AmqpMessage::new(
            exchange.clone(),
            event_type,
            Arc::new(event.body),
            properties,
        )
    }
}

/// The publishing connection and its confirm-mode channels, one per [`Lane`].
pub(crate) struct Publisher {
    connection: Connection,
    channels: [Channel; 2],
    /// The connection's returned publishes, filed by its frame check.
    returns: Returns,
    confirm_timeout: Duration,
    /// Set while the broker blocks the connection (memory or disk alarm).
    blocked: Arc<AtomicBool>,
    /// Set when the connection failed; the next reopen reconnects.
    connection_lost: Arc<AtomicBool>,
    watcher: tokio::task::JoinHandle<()>,
    health: Health,
}

impl Publisher {
    /// Connects, opens the confirm-mode channels and declares the topology.
    pub(crate) async fn open(
        amqp: &AmqpSettings,
        topology: &Topology,
        health: &Health,
    ) -> Result<Publisher, BrokerError> {
        let check = FrameCheck::default();
        let returns = check.returns.clone();
        let connection = connect_checked(amqp, Role::Publisher, check).await?;
        // A new connection starts unblocked; the broker says so if it is not.
        health.set_blocked(None);
        let blocked = Arc::new(AtomicBool::new(false));
        let connection_lost = Arc::new(AtomicBool::new(false));
        let watcher = watch(
            &connection,
            blocked.clone(),
            connection_lost.clone(),
            health.clone(),
        );
        let channels = [
            confirm_channel(&connection).await?,
            confirm_channel(&connection).await?,
        ];
        prepare_topology(&channels[0], topology).await?;
        check_writable(&channels[0], &topology.output.tap_exchange, &blocked).await?;
        Ok(Publisher {
            connection,
            channels,
            returns,
            confirm_timeout: amqp.confirm_timeout(),
            blocked,
            connection_lost,
            watcher,
            health: health.clone(),
        })
    }

    /// Replaces `lane`'s channel the broker closed: a new channel on the same connection
    /// when it is still up, else a new connection (and both channels). `redeclare`
    /// declares the topology again (after an exchange or the history stream went
    /// missing; the channel is then closed here if the broker did not).
    pub(crate) async fn reopen(
        &mut self,
        amqp: &AmqpSettings,
        topology: &Topology,
        lane: Lane,
        redeclare: bool,
    ) -> Result<(), BrokerError> {
        let connected =
            self.connection.status().connected() && !self.connection_lost.load(Ordering::Relaxed);
        if !connected {
            let fresh = Publisher::open(amqp, topology, &self.health).await?;
            let stale = std::mem::replace(self, fresh);
            info!("publishing connection reopened");
            tokio::spawn(stale.close());
            return Ok(());
        }
        let channel = confirm_channel(&self.connection).await?;
        if redeclare {
            prepare_topology(&channel, topology).await?;
        }
        let replaced = std::mem::replace(&mut self.channels[lane as usize], channel);
        // Still open when it was replaced over a returned copy, not closed by the broker.
        if replaced.status().connected() {
            tokio::spawn(async move {
                let _ = replaced.close(200, "replaced".into()).await;
            });
        }
        Ok(())
    }

    /// The negotiated largest frame.
    pub(crate) fn frame_max(&self) -> u32 {
        self.connection.configuration().frame_max()
    }

    /// Publishes `message` (`mandatory`: unroutable is not success, the broker returns
    /// it) and resolves when it is confirmed, returned, nacked, timed out or its channel
    /// closed. The frames are handed to the client the first time the future is polled:
    /// poll it at once to fix the order of publishes.
    pub(crate) fn publish(
        &self,
        message: Arc<AmqpMessage>,
        lane: Lane,
        mandatory: bool,
    ) -> impl Future<Output = PublishOutcome> + Send + 'static {
        let channel = self.channels[lane as usize].clone();
        let blocked = self.blocked.clone();
        let returns = self.returns.clone();
        let timeout = self.confirm_timeout;
        async move {
            let options = BasicPublishOptions {
                mandatory,
                ..BasicPublishOptions::default()
            };
            let published = channel
                .basic_publish(
                    message.exchange.clone(),
                    message.routing_key.clone(),
                    options,
                    &message.body,
                    message.published_properties(),
                )
                .await;
            let confirm = match published {
                Ok(confirm) => confirm,
                Err(e) => return closed(&e),
            };
            let sent = Sent {
                exchange: message.exchange.as_str(),
                routing_key: message.routing_key.as_str(),
                message_id: message.properties.message_id().as_ref().map(|m| m.as_str()),
                body: &message.body,
            };
            match await_confirm(confirm, timeout, &blocked).await {
                Ok(confirmation) => judge(&confirmation, &returns, channel.id(), &sent),
                Err(outcome) => outcome,
            }
        }
    }

    /// Closes the connection; a courtesy, bounded, since the broker may be gone.
    pub(crate) async fn close(self) {
        self.watcher.abort();
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            self.connection.close(200, "bye".into()),
        )
        .await;
    }
}

/// Publishes, where nobody receives them, an empty message to each place the worker
/// puts copies that its user may not be allowed to write to (the tap exchange, and the
/// default exchange it keeps unrouted events through), so that a missing permission
/// fails the session here, with the broker's words, not every message later.
async fn check_writable(
    channel: &Channel,
    tap_exchange: &str,
    blocked: &AtomicBool,
) -> Result<(), BrokerError> {
    for (exchange, routing_key) in [(tap_exchange, PROBE_ROUTING_KEY), ("", PROBE_ROUTING_KEY)] {
        let what = || {
            format!(
                "checking that the worker may publish to {} (a probe nobody receives)",
                if exchange.is_empty() {
                    "the default exchange (amq.default)"
                } else {
                    exchange
                }
            )
        };
        let probe = async {
            let confirm = channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions::default(),
                    &[],
                    BasicProperties::default(),
                )
                .await
                .map_err(BrokerError::amqp(what()))?;
            confirm.await.map_err(BrokerError::amqp(what()))?;
            Ok::<(), BrokerError>(())
        };
        // A broker alarm blocks the publishing connection (the client then sends nothing):
        // the probe would wait for it to clear, and the session with it. Checked again at
        // the next session.
        let mut probe = std::pin::pin!(probe);
        loop {
            tokio::select! {
                probed = &mut probe => {
                    probed?;
                    break;
                }
                () = tokio::time::sleep(Duration::from_millis(50)) => {
                    if blocked.load(Ordering::Relaxed) {
                        info!("the broker blocks publishing (an alarm): write permissions not checked this session");
                        return Ok(());
                    }
                }
            }
        }
    }
    Ok(())
}

/// The routing key of [`check_writable`]'s probes: no queue has this name, and the tap's
/// own keys start with `canonical.`, `unrouted.` or `dead-letter.`.
pub(crate) const PROBE_ROUTING_KEY: &str = "probe.webhook-normalizer";

async fn confirm_channel(connection: &Connection) -> Result<Channel, BrokerError> {
    let channel = connection
        .create_channel()
        .await
        .map_err(BrokerError::amqp("opening the publishing channel"))?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(BrokerError::amqp("enabling publisher confirms"))?;
    Ok(channel)
}

/// Follows the connection's events: blocked and unblocked (alarms) into the flag and
/// health, a failure into `lost`.
fn watch(
    connection: &Connection,
    blocked: Arc<AtomicBool>,
    lost: Arc<AtomicBool>,
    health: Health,
) -> tokio::task::JoinHandle<()> {
    let mut events = connection.events_listener();
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            match event {
                // The client reports a channel the broker closed here too: that one
                // channel's publishes fail and it is reopened, not the connection.
                Event::Error(e) if crate::amqp::error::is_channel_error(&e) => {}
                Event::Error(e) => {
                    warn!(error = %e, "publishing connection failed");
                    lost.store(true, Ordering::Relaxed);
                    return;
                }
                Event::ConnectionBlocked(reason) => {
                    warn!(%reason, "broker blocked the publishing connection");
                    blocked.store(true, Ordering::Relaxed);
                    health.set_blocked(Some(reason.to_string()));
                }
                Event::ConnectionUnblocked => {
                    info!("broker unblocked the publishing connection");
                    blocked.store(false, Ordering::Relaxed);
                    health.set_blocked(None);
                }
                _ => {}
            }
        }
    })
}

/// Waits for the confirm; the outcome when none came. The timeout does not run while the
/// broker blocks us: an alarm is waited out (holding the delivery) rather than turned
/// into retries. The confirm's returned message, if any, is dropped here unlooked-at
/// (it holds personal data, and may be another publish's: see [`judge`]).
async fn await_confirm(
    confirm: PublisherConfirm,
    timeout: Duration,
    blocked: &AtomicBool,
) -> Result<Confirmation, PublishOutcome> {
    let mut confirm = std::pin::pin!(confirm);
    loop {
        match tokio::time::timeout(timeout, &mut confirm).await {
            Ok(Ok(confirmation)) => return Ok(confirmation),
            Ok(Err(e)) => return Err(closed(&e)),
            Err(_) if blocked.load(Ordering::Relaxed) => continue,
            Err(_) => return Err(PublishOutcome::TimedOut),
        }
    }
}

/// A publish whose channel or connection failed, with the broker's reply code when it
/// closed it.
fn closed(error: &lapin::Error) -> PublishOutcome {
    match error.kind() {
        // "406 PRECONDITION_FAILED - message size 65582 is larger than ...": the broker's
        // reply text starts with the code's name.
        lapin::ErrorKind::ProtocolError(amqp) => PublishOutcome::Closed {
            code: Some(amqp.kind().get_id()),
            reason: format!("{} {}", amqp.kind().get_id(), amqp.get_message()),
        },
        _ => PublishOutcome::Closed {
            code: None,
            reason: error.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amqp::headers::{header_payload_bound, header_payload_size};
    use crate::delivery::{Plan, RawMessage, plan_with_defaults};
    use crate::normalize::Limits;

    /// The cheap bound is exact for what the worker publishes: every fixture's events.
    #[test]
    fn the_header_bound_is_exact_for_every_fixture_event() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let now = chrono::Utc::now();
        let mut checked = 0;
        for vendor in ["entuitive", "authenticate", "deel"] {
            for entry in std::fs::read_dir(root.join(vendor)).unwrap() {
                let raw = RawMessage {
                    body: std::fs::read(entry.unwrap().path()).unwrap(),
                    vendor_header: crate::delivery::VendorHeader::Text(vendor.into()),
                    ..RawMessage::default()
                };
                let Plan::Publish { events, .. } =
                    plan_with_defaults(&raw, &Limits::default(), now)
                else {
                    continue;
                };
                for event in events {
                    let m = AmqpMessage::event(
                        event,
                        &"x".into(),
                        Some(&"gw-1".into()),
                        b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                    );
                    assert_eq!(
                        header_payload_bound(&m.properties),
                        Some(header_payload_size(&m.properties))
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked >= 39, "{checked}");
    }

    /// A copy publishes its original's properties with its own headers added (the later
    /// of two of one name winning), and reads its headers as published; the original is
    /// left as it was.
    #[test]
    fn a_copy_publishes_the_original_properties_with_its_own_headers() {
        let mut table = lapin::types::FieldTable::default();
        table.insert("a".into(), AMQPValue::LongString("1".into()));
        let original = AmqpMessage::new(
            "events.canonical".into(),
            "deel.contract.created".into(),
            Arc::new(b"{}".to_vec()),
            BasicProperties::default()
                .with_message_id("ev-1".into())
                .with_headers(table),
        );
        let kept = original.copy("".into(), "events.unrouted".into(), [("b", "2".into())]);
        let tapped = kept.copy(
            "events.tap".into(),
            "unrouted.deel.contract.created".into(),
            [("a", "3".into())],
        );
        let p = tapped.published_properties();
        assert_eq!(p.message_id().as_ref().map(|m| m.as_str()), Some("ev-1"));
        let h = p.headers().as_ref().unwrap().inner();
        assert_eq!(h.get("a"), Some(&AMQPValue::LongString("3".into())));
        assert_eq!(h.get("b"), Some(&AMQPValue::LongString("2".into())));
        assert_eq!(tapped.header_text("a").as_deref(), Some("3"));
        assert_eq!(tapped.header_text("b").as_deref(), Some("2"));
        assert_eq!(tapped.header_text("c"), None);
        assert_eq!(tapped.body, original.body);
        assert_eq!(original.header_text("a").as_deref(), Some("1"));
        assert_eq!(original.published_properties(), *original.properties);
        assert_eq!(kept.header_text("a").as_deref(), Some("1"));
    }
}
