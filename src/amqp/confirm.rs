//! How a publish on a confirm-mode channel ended: nacked, returned as unroutable, or
//! stored. The client matches the broker's `basic.ack`/`basic.nack` to the right publish
//! by delivery tag; it does not do so for `basic.return` (see [`super::wire::Returns`]),
//! so whether a publish came back is looked up by what it carried, and the returned
//! message the client attaches to a confirm is ignored.

use lapin::Confirmation;

use super::wire::{Returns, Sent};
use crate::delivery::PublishOutcome;

/// The outcome of a publish of `sent` on `channel` whose confirm arrived.
pub(crate) fn judge(
    confirmation: &Confirmation,
    returns: &Returns,
    channel: u16,
    sent: &Sent<'_>,
) -> PublishOutcome {
    match confirmation {
        Confirmation::Ack(_) => judge_confirm(true, returns, channel, sent),
        Confirmation::Nack(_) => judge_confirm(false, returns, channel, sent),
        // Confirms not enabled on the channel: nothing proves it is stored.
        Confirmation::NotRequested => PublishOutcome::Closed {
            code: None,
            reason: "publisher confirms are not enabled on the channel".into(),
        },
    }
}

/// [`judge`], for an ack (`acked`) or a nack.
fn judge_confirm(acked: bool, returns: &Returns, channel: u16, sent: &Sent<'_>) -> PublishOutcome {
    // Claimed whatever the confirm says, so that no return outlives its publish.
    let returned = returns.take(channel, sent);
    match (acked, returned) {
        (true, true) => PublishOutcome::Returned,
        (true, false) => PublishOutcome::Confirmed,
        (false, _) => PublishOutcome::Nacked,
    }
}

#[cfg(test)]
mod tests {
    //! The broker's frames for a run of publishes (returns and acks, in an order the
    //! broker may send them) go through the frame check; the client is modelled as lapin
    //! 4.12 behaves (each publish an ack completes takes the oldest waiting return, the
    //! publishes visited in any order); each publish is then judged, in any order.
    use std::collections::{BTreeSet, VecDeque};

    use proptest::prelude::*;

    use super::*;
    use crate::amqp::wire::FrameCheck;
    use crate::amqp::wire::test_support::feed_all;

    const CHANNEL: u16 = 1;

    fn short(s: &str) -> Vec<u8> {
        let mut out = vec![u8::try_from(s.len()).unwrap()];
        out.extend_from_slice(s.as_bytes());
        out
    }

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![kind];
        out.extend_from_slice(&CHANNEL.to_be_bytes());
        out.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
        out.extend_from_slice(payload);
        out.push(0xCE);
        out
    }

    /// One publish of the run: tag `i + 1`.
    struct Publish {
        routing_key: String,
        message_id: String,
        body: Vec<u8>,
    }

    impl Publish {
        fn new(i: usize) -> Publish {
            // Two types, so that a routing key alone does not tell them apart.
            Publish {
                routing_key: ["entuitive.user.created", "deel.contract.created"][i % 2].into(),
                message_id: format!("id-{i}"),
                body: format!("{{\"n\":{i}}}").repeat(1 + i % 3).into_bytes(),
            }
        }

        fn sent(&self) -> Sent<'_> {
            Sent {
                exchange: "events.canonical",
                routing_key: &self.routing_key,
                message_id: Some(&self.message_id),
                body: &self.body,
            }
        }

        /// `basic.return`, the content header, the body in two frames.
        fn returned_frames(&self) -> Vec<u8> {
            let mut method = vec![0, 60, 0, 50, 0x01, 0x38];
            method.extend(short("NO_ROUTE"));
            method.extend(short("events.canonical"));
            method.extend(short(&self.routing_key));
            let mut header = vec![0, 60, 0, 0];
            header.extend_from_slice(&(self.body.len() as u64).to_be_bytes());
            header.extend_from_slice(&0x0080u16.to_be_bytes()); // message_id only
            header.extend(short(&self.message_id));
            let (a, b) = self.body.split_at(self.body.len() / 2);
            [
                frame(1, &method),
                frame(2, &header),
                frame(3, a),
                frame(3, b),
            ]
            .concat()
        }
    }

    fn ack_frame(tag: u64, multiple: bool) -> Vec<u8> {
        let mut method = vec![0, 60, 0, 80];
        method.extend_from_slice(&tag.to_be_bytes());
        method.push(u8::from(multiple));
        frame(1, &method)
    }

    /// A run: which publishes are returned, the acks in the order sent (tag, multiple),
    /// and where each return is sent (before the ack with that index).
    #[derive(Debug, Clone)]
    struct Run {
        returned: Vec<bool>,
        acks: Vec<(u64, bool)>,
        return_before: Vec<usize>,
    }

    /// What the model of the client and our judgement made of a run: per publish, the
    /// returned message the client attached (by message id) and our outcome.
    fn play(
        run: &Run,
        visit: &mut dyn FnMut(usize) -> usize,
    ) -> Vec<(Option<String>, PublishOutcome)> {
        let publishes: Vec<Publish> = (0..run.returned.len()).map(Publish::new).collect();
        let check = FrameCheck::default();
        let mut filter = crate::amqp::wire::test_support::filter(&check);
        let mut pending: BTreeSet<u64> = (1..=publishes.len() as u64).collect();
        let mut waiting: VecDeque<String> = VecDeque::new();
        let mut attached: Vec<Option<Option<String>>> = vec![None; publishes.len()];
        let mut outcomes: Vec<Option<PublishOutcome>> = vec![None; publishes.len()];
        let mut returns_sent = 0;
        let returned_order: Vec<usize> =
            (0..publishes.len()).filter(|i| run.returned[*i]).collect();
        for (a, &(tag, multiple)) in run.acks.iter().enumerate() {
            while returns_sent < returned_order.len() && run.return_before[returns_sent] <= a {
                let p = &publishes[returned_order[returns_sent]];
                feed_all(&mut filter, &p.returned_frames());
                // The client queues the return as it reads it.
                waiting.push_back(p.message_id.clone());
                returns_sent += 1;
            }
            feed_all(&mut filter, &ack_frame(tag, multiple));
            let mut completed: Vec<u64> = if multiple {
                pending.iter().copied().filter(|t| *t <= tag).collect()
            } else {
                pending.iter().copied().filter(|t| *t == tag).collect()
            };
            for t in &completed {
                pending.remove(t);
            }
            // lapin visits the completed publishes in its hash map's order, each taking
            // the oldest waiting return.
            let mut order = Vec::new();
            while !completed.is_empty() {
                order.push(completed.remove(visit(completed.len())));
            }
            for t in &order {
                attached[(*t - 1) as usize] = Some(waiting.pop_front());
            }
            // Our futures are polled in yet another order.
            let mut order = order.clone();
            while !order.is_empty() {
                let t = order.remove(visit(order.len()));
                let i = (t - 1) as usize;
                // Acked, with whatever return the client attached: not looked at.
                outcomes[i] = Some(judge_confirm(
                    true,
                    &check.returns,
                    CHANNEL,
                    &publishes[i].sent(),
                ));
            }
        }
        attached
            .into_iter()
            .zip(outcomes)
            .map(|(a, o)| (a.flatten(), o.expect("every publish is acked")))
            .collect()
    }

    /// Publishes 1 (stored) and 2 (returned), one ack for both: lapin visits 1 first and
    /// pins 2's return on it. Judged by what they carried, 1 is stored and 2 returned.
    #[test]
    fn a_return_pinned_on_the_wrong_publish_is_judged_by_what_it_carried() {
        let run = Run {
            returned: vec![false, true],
            acks: vec![(2, true)],
            return_before: vec![0],
        };
        let played = play(&run, &mut |_| 0);
        assert_eq!(
            played[0].0.as_deref(),
            Some("id-1"),
            "the client pinned 2's return on 1"
        );
        assert_eq!(played[1].0, None);
        assert_eq!(
            played.iter().map(|p| p.1.clone()).collect::<Vec<_>>(),
            [PublishOutcome::Confirmed, PublishOutcome::Returned]
        );
    }

    /// A return sent before an earlier publish's single ack is taken by that publish in
    /// the client, even with no hash map involved.
    #[test]
    fn a_return_ahead_of_an_earlier_ack_is_judged_by_what_it_carried() {
        let run = Run {
            returned: vec![false, true],
            acks: vec![(1, false), (2, false)],
            return_before: vec![0],
        };
        let played = play(&run, &mut |_| 0);
        assert_eq!(played[0].0.as_deref(), Some("id-1"));
        assert_eq!(
            played.iter().map(|p| p.1.clone()).collect::<Vec<_>>(),
            [PublishOutcome::Confirmed, PublishOutcome::Returned]
        );
    }

    fn runs() -> impl Strategy<Value = (Run, Vec<usize>)> {
        (1usize..14)
            .prop_flat_map(|n| {
                (
                    prop::collection::vec(any::<bool>(), n),
                    prop::collection::vec((any::<prop::sample::Index>(), any::<bool>()), n),
                    prop::collection::vec(any::<prop::sample::Index>(), n),
                    prop::collection::vec(any::<prop::sample::Index>(), 64),
                )
            })
            .prop_map(|(returned, ack_picks, return_picks, visits)| {
                let n = returned.len();
                // Acks: pick any pending tag; `multiple` covers every pending tag up to it.
                let mut pending: Vec<u64> = (1..=n as u64).collect();
                let mut acks = Vec::new();
                for (pick, multiple) in ack_picks {
                    if pending.is_empty() {
                        break;
                    }
                    let tag = pending[pick.index(pending.len())];
                    pending.retain(|t| if multiple { *t > tag } else { *t != tag });
                    acks.push((tag, multiple));
                }
                if let Some(last) = pending.last() {
                    acks.push((*last, true));
                }
                // A return comes before any ack of its own tag or a later one, and after
                // the returns of earlier publishes.
                let mut return_before = Vec::new();
                let mut earliest = 0;
                for (i, pick) in return_picks.iter().enumerate() {
                    if !returned[i] {
                        continue;
                    }
                    let tag = i as u64 + 1;
                    let latest = first_ack_covering_at_least(&acks, tag);
                    let at = earliest + pick.index(latest - earliest + 1);
                    return_before.push(at);
                    earliest = at;
                }
                let visits = visits.iter().map(|v| v.index(1 << 16)).collect();
                (
                    Run {
                        returned,
                        acks,
                        return_before,
                    },
                    visits,
                )
            })
    }

    /// The index of the first ack that completes a publish with a tag of `tag` or more.
    fn first_ack_covering_at_least(acks: &[(u64, bool)], tag: u64) -> usize {
        let mut acked = BTreeSet::new();
        for (a, &(t, multiple)) in acks.iter().enumerate() {
            let newly: Vec<u64> = if multiple {
                (1..=t).filter(|x| !acked.contains(x)).collect()
            } else {
                vec![t]
            };
            if newly.iter().any(|x| *x >= tag) {
                return a;
            }
            acked.extend(newly);
        }
        acks.len()
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 2000,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]
        /// Whatever the broker's acks cover and wherever its returns fall, and whatever
        /// order the client and our futures visit the publishes in, each publish is
        /// judged returned exactly when it was.
        #[test]
        fn every_publish_is_judged_returned_exactly_when_it_was((run, visits) in runs()) {
            let mut next = visits.into_iter().cycle();
            let played = play(&run, &mut |len| next.next().unwrap_or(0) % len);
            for (i, (_, outcome)) in played.iter().enumerate() {
                let want = if run.returned[i] { PublishOutcome::Returned } else { PublishOutcome::Confirmed };
                prop_assert_eq!(outcome, &want, "publish {} in {:?}", i + 1, run);
            }
        }
    }
}
