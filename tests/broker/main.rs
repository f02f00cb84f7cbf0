//! The worker against the real RabbitMQ: each test in its own vhost, the worker as the
//! binary users run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod flow;
mod ops;
mod resilience;
mod support;

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use support::{RECEIVED_AT, RawWebhook};
use webhook_normalizer::{CanonicalEvent, Limits, NormalizeError, normalize};

/// What the library says should come out of one raw webhook.
pub fn expected(w: &RawWebhook) -> Result<Vec<CanonicalEvent>, NormalizeError> {
    let at: DateTime<Utc> = DateTime::parse_from_rfc3339(RECEIVED_AT)
        .unwrap()
        .with_timezone(&Utc);
    normalize(&w.body, w.vendor, at, &Limits::default())
}

/// Per input: the event ids it must produce, or the dead-letter routing key it must get.
#[derive(Default)]
pub struct Expectations {
    pub event_ids: BTreeSet<String>,
    pub dead_letters: BTreeMap<String, String>,
}

pub fn expectations(webhooks: &[RawWebhook]) -> Expectations {
    let mut e = Expectations::default();
    for w in webhooks {
        match expected(w) {
            Ok(events) => e
                .event_ids
                .extend(events.iter().map(|ev| ev.id.to_string())),
            Err(err) => {
                let key = format!(
                    "{}.{}",
                    err.vendor().map_or("unknown", |v| v.key()),
                    err.kind()
                );
                e.dead_letters.insert(w.message_id.clone(), key);
            }
        }
    }
    e
}
