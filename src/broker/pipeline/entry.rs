//! One raw delivery held by the pipeline: its AMQP messages, where each stands, and what
//! the delivery ends as.

use std::sync::Arc;

use lapin::BasicProperties;
use tokio::time::Instant;

use crate::broker::publish::AmqpMessage;
use crate::canonical::Vendor;
use crate::delivery::{DeadLetter, Fault, PublishOutcome, RawMessage};
use crate::ops::Delivery;

/// Where one AMQP message of a delivery stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum PublishState {
    /// To be published (a dead letter that replaced the events, say).
    Waiting,
    /// Published; `attempt` tells its confirm from a stale one.
    InFlight {
        attempt: u64,
    },
    Confirmed,
    Failed(PublishOutcome),
}

/// What a delivery ends as once its publishes are confirmed.
#[derive(Debug)]
pub(super) enum Fate {
    /// Its events (`messages`), all of one vendor, and their canonical types.
    Events {
        vendor: Vendor,
        types: Vec<&'static str>,
    },
    DeadLetter(DeadLetter),
    /// Its dead letter cannot be published: reject without requeue.
    HandToBroker(String),
}

/// One raw delivery held by the pipeline.
pub(super) struct Entry {
    pub(super) seq: u64,
    pub(super) tag: u64,
    pub(super) raw: RawMessage,
    pub(super) original: BasicProperties,
    pub(super) messages: Vec<Arc<AmqpMessage>>,
    pub(super) states: Vec<PublishState>,
    pub(super) fate: Fate,
    pub(super) bytes: usize,
    pub(super) failing_since: Option<Instant>,
    /// When the delivery was taken, for `normalizer_processing_seconds`.
    pub(super) admitted_at: Instant,
}

impl Entry {
    /// Who the delivery is, for its outcome's log.
    pub(super) fn delivery(&self) -> Delivery<'_> {
        Delivery {
            tag: self.tag,
            message_id: self.original.message_id().as_ref().map(|id| id.as_str()),
        }
    }

    pub(super) fn in_flight(&self) -> bool {
        self.states
            .iter()
            .any(|s| matches!(s, PublishState::InFlight { .. }))
    }

    pub(super) fn unsent(&self) -> bool {
        self.states
            .iter()
            .any(|s| matches!(s, PublishState::Waiting) || matches!(s, PublishState::Failed(_)))
    }

    /// Failed at some point and not yet all confirmed: still part of an outage, even
    /// while its retry is in flight.
    pub(super) fn troubled(&self) -> bool {
        self.failing_since.is_some() && !self.states.iter().all(|s| *s == PublishState::Confirmed)
            || self.states.contains(&PublishState::Waiting)
    }

    /// The first failure that is possibly this message's own.
    pub(super) fn refusal(&self) -> Option<&PublishOutcome> {
        self.states.iter().find_map(|s| match s {
            PublishState::Failed(o) if o.fault() == Some(Fault::Message) => Some(o),
            _ => None,
        })
    }
}

impl Entry {
    pub(super) fn set_messages(&mut self, messages: Vec<Arc<AmqpMessage>>) {
        self.bytes = messages.iter().map(|m| m.body.len()).sum();
        self.states = vec![PublishState::Waiting; messages.len()];
        self.messages = messages;
    }
}

/// An empty entry standing in while one is rebuilt.
pub(super) fn placeholder(seq: u64) -> Entry {
    Entry {
        seq,
        tag: 0,
        raw: RawMessage::default(),
        original: BasicProperties::default(),
        messages: Vec::new(),
        states: Vec::new(),
        fate: Fate::HandToBroker(String::new()),
        bytes: 0,
        failing_since: None,
        admitted_at: Instant::now(),
    }
}
