//! Finding which message the broker refuses: after it closed the publishing channel over
//! a publish, the suspects (every publish that was in flight on it) are republished one
//! message at a time on a fresh channel; the one refused again is dead-lettered as
//! `publish_refused`. When every one of several suspects is refused, the broker refuses
//! everything, and the failures are retried as transient instead.

use std::collections::VecDeque;

use chrono::Utc;
use tokio::time::Instant;
use tracing::{error, info};

use super::Pipeline;
use super::entry::{Entry, Fate, PublishState, placeholder};
use crate::delivery::{DeadLetter, PublishOutcome};
use crate::normalize::ErrorKind;
use crate::ops::describe;

/// Republishing the suspects of a refused publish one message at a time.
pub(super) struct Isolation {
    /// Suspects not yet tried alone, in order; filled once nothing is in flight.
    pub(super) queue: Option<VecDeque<u64>>,
    /// The suspect being tried alone.
    pub(super) current: Option<u64>,
    pub(super) suspects: usize,
    /// Suspects refused again when alone, with the refusal.
    pub(super) culprits: Vec<(u64, PublishOutcome)>,
}

impl Isolation {
    pub(super) fn new() -> Isolation {
        Isolation {
            queue: None,
            current: None,
            suspects: 0,
            culprits: Vec::new(),
        }
    }
}

impl Pipeline<'_> {
    /// During isolation: when the suspect being tried alone is decided, judge it and
    /// move on to the next.
    pub(super) fn step_isolation_if_done(&mut self, seq: u64) {
        if self.isolation.as_ref().and_then(|iso| iso.current) != Some(seq) {
            return;
        }
        let position = self.position(seq);
        let entry = position.map(|i| &self.entries[i]);
        if entry.is_some_and(Entry::in_flight) {
            return;
        }
        let refusal = entry.and_then(Entry::refusal).cloned();
        let Some(isolation) = &mut self.isolation else {
            return;
        };
        if let Some(refusal) = refusal {
            isolation.culprits.push((seq, refusal));
        }
        isolation.current = None;
        if let Some(outage) = &mut self.outage {
            outage.next = Some(Instant::now());
        }
    }

    /// Tries the next suspect alone, or, when all have been tried, settles the verdict.
    pub(super) async fn isolation_step(&mut self) {
        let Some(isolation) = &mut self.isolation else {
            return;
        };
        if isolation.current.is_some() {
            return;
        }
        let queue = isolation.queue.get_or_insert_with(|| {
            self.entries
                .iter()
                .filter(|e| e.refusal().is_some())
                .map(|e| e.seq)
                .collect()
        });
        if isolation.suspects == 0 {
            isolation.suspects = queue.len();
        }
        match queue.pop_front() {
            Some(seq) => {
                isolation.current = Some(seq);
                self.publish_unsent(seq).await;
            }
            None => self.finish_isolation().await,
        }
    }

    async fn finish_isolation(&mut self) {
        let Some(isolation) = self.isolation.take() else {
            return;
        };
        let now = Utc::now();
        let culprits = isolation.culprits;
        if culprits.len() >= 2 && culprits.len() == isolation.suspects {
            let reason = culprits
                .first()
                .map(|(_, o)| describe(o))
                .unwrap_or_default();
            error!(
                suspects = isolation.suspects,
                %reason,
                "the broker refuses every publish, not one message's: holding them and retrying"
            );
            // Retried as transient: a lost permission must not dead-letter the stream.
            for (seq, _) in &culprits {
                if let Some(i) = self.position(*seq) {
                    for state in &mut self.entries[i].states {
                        if let PublishState::Failed(PublishOutcome::Closed { code, reason }) = state
                        {
                            *state = PublishState::Failed(PublishOutcome::Closed {
                                code: None,
                                reason: format!(
                                    "{reason} (refused for every message; code {code:?})"
                                ),
                            });
                        }
                    }
                }
            }
        } else {
            for (seq, refusal) in culprits {
                let Some(i) = self.position(seq) else {
                    continue;
                };
                let mut entry = std::mem::replace(&mut self.entries[i], placeholder(seq));
                let reason = match &refusal {
                    PublishOutcome::Closed { reason, .. } => reason.clone(),
                    other => describe(other),
                };
                match &entry.fate {
                    Fate::DeadLetter(_) | Fate::HandToBroker(_) => {
                        entry.fate = Fate::HandToBroker(format!(
                            "the broker refused the dead letter: {reason}"
                        ));
                        entry.set_messages(Vec::new());
                    }
                    Fate::Events { vendor, .. } => {
                        let dead_letter = DeadLetter::new(
                            &entry.raw,
                            ErrorKind::PublishRefused,
                            Some(*vendor),
                            &format!("the broker refused an event of this message: {reason}"),
                            now,
                        );
                        self.held_bytes = self.held_bytes.saturating_sub(entry.bytes);
                        self.set_dead_letter(&mut entry, dead_letter);
                        self.held_bytes += entry.bytes;
                    }
                }
                self.entries[i] = entry;
            }
        }
        info!("isolation done; retrying the rest in order");
        if let Some(outage) = &mut self.outage {
            outage.next = Some(Instant::now());
        }
    }
}
