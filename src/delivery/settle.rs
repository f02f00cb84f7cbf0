//! How a raw message is settled with the broker, when settlements go, and how a run of
//! them becomes as few frames as the order allows.

use std::time::Duration;

/// How one raw message is settled with the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Everything it produced is stored. `multiple`: every earlier delivery is settled
    /// already (here or before), so an ack up to this tag acks nothing else.
    Ack { tag: u64, multiple: bool },
    /// Give it back: `requeue` for a redelivery, else the raw queue's dead-letter
    /// exchange takes it (the last resort for an unpublishable dead letter).
    Reject { tag: u64, requeue: bool },
}

/// What goes on the wire for a run of settlements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettleFrame {
    /// `basic.ack` with `multiple`: every unsettled delivery up to `tag`; `deliveries`
    /// of them were settled by this batch.
    AckUpTo { tag: u64, deliveries: u64 },
    /// `basic.ack` of one delivery, with earlier ones still held.
    Ack { tag: u64 },
    /// `basic.reject` of one delivery.
    Reject { tag: u64, requeue: bool },
}

/// When settled deliveries go to the broker. Every ack costs the broker a write to the
/// queue's log, so acks wait to be batched: until `batch` settlements are pending, or
/// the oldest has waited `wait`. Waiting costs no latency downstream (events are
/// published before their raw message is settled); it only holds prefetch slots a little
/// longer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckPolicy {
    pub batch: usize,
    pub wait: Duration,
}

impl AckPolicy {
    /// The worker's policy: 64 deliveries or 1 ms, whichever comes first.
    pub const DEFAULT: AckPolicy = AckPolicy {
        batch: 64,
        wait: Duration::from_millis(1),
    };

    /// Whether to send the `pending` settlements now; `draining` sends at once.
    pub fn due(&self, pending: usize, oldest_waited: Duration, draining: bool) -> bool {
        pending > 0 && (draining || pending >= self.batch || oldest_waited >= self.wait)
    }
}

/// Batches settlements, kept in their order: consecutive acks that may cover every
/// earlier delivery become one `multiple` ack of the highest tag; an ack with an earlier
/// delivery still held goes alone (a `multiple` ack would settle that one too); a reject
/// ends a batch, since acking past it first would ack the rejected delivery.
pub fn coalesce(settles: &[Settle]) -> Vec<SettleFrame> {
    let mut frames: Vec<SettleFrame> = Vec::new();
    for settle in settles {
        match *settle {
            Settle::Ack {
                tag,
                multiple: true,
            } => match frames.last_mut() {
                Some(SettleFrame::AckUpTo {
                    tag: last,
                    deliveries,
                }) => {
                    *last = (*last).max(tag);
                    *deliveries += 1;
                }
                _ => frames.push(SettleFrame::AckUpTo { tag, deliveries: 1 }),
            },
            Settle::Ack {
                tag,
                multiple: false,
            } => frames.push(SettleFrame::Ack { tag }),
            Settle::Reject { tag, requeue } => frames.push(SettleFrame::Reject { tag, requeue }),
        }
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settlements_wait_for_a_batch_or_a_millisecond_unless_draining() {
        let policy = AckPolicy::DEFAULT;
        let ms = Duration::from_millis;
        let cases = [
            (0, ms(5), true, false),
            (1, ms(0), false, false),
            (63, Duration::from_micros(999), false, false),
            (64, ms(0), false, true),
            (1, ms(1), false, true),
            (1, ms(0), true, true),
        ];
        for (pending, waited, draining, due) in cases {
            assert_eq!(
                policy.due(pending, waited, draining),
                due,
                "{pending} pending, {waited:?}, draining {draining}"
            );
        }
    }

    #[test]
    fn acks_behind_a_held_delivery_go_alone_and_the_rest_batch_again_after_it() {
        let ack = |tag| Settle::Ack {
            tag,
            multiple: true,
        };
        let single = |tag| Settle::Ack {
            tag,
            multiple: false,
        };
        // 3 is held: 4 and 5 go alone; once 3 is settled, one multiple ack covers it
        // and 6.
        assert_eq!(
            coalesce(&[ack(1), ack(2), single(4), single(5), ack(3), ack(6)]),
            [
                SettleFrame::AckUpTo {
                    tag: 2,
                    deliveries: 2
                },
                SettleFrame::Ack { tag: 4 },
                SettleFrame::Ack { tag: 5 },
                SettleFrame::AckUpTo {
                    tag: 6,
                    deliveries: 2
                },
            ]
        );
    }

    #[test]
    fn consecutive_acks_become_one_multiple_ack_and_rejects_end_a_batch() {
        use Settle::Reject;
        #[allow(non_snake_case)]
        let Ack = |tag: u64| Settle::Ack {
            tag,
            multiple: true,
        };
        let ack = |tag, deliveries| SettleFrame::AckUpTo { tag, deliveries };
        let cases: [(&[Settle], Vec<SettleFrame>); 5] = [
            (&[], vec![]),
            (&[Ack(1)], vec![ack(1, 1)]),
            (&[Ack(1), Ack(2), Ack(3)], vec![ack(3, 3)]),
            (
                &[
                    Ack(4),
                    Ack(5),
                    Reject {
                        tag: 6,
                        requeue: true,
                    },
                    Ack(7),
                    Ack(8),
                ],
                vec![
                    ack(5, 2),
                    SettleFrame::Reject {
                        tag: 6,
                        requeue: true,
                    },
                    ack(8, 2),
                ],
            ),
            (
                &[
                    Reject {
                        tag: 1,
                        requeue: false,
                    },
                    Reject {
                        tag: 2,
                        requeue: true,
                    },
                ],
                vec![
                    SettleFrame::Reject {
                        tag: 1,
                        requeue: false,
                    },
                    SettleFrame::Reject {
                        tag: 2,
                        requeue: true,
                    },
                ],
            ),
        ];
        for (settles, want) in cases {
            assert_eq!(coalesce(settles), want, "{settles:?}");
        }
    }
}
