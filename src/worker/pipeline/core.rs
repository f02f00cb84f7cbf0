//! The publish pipeline's decisions, with no I/O and no clock of its own: planned raw
//! messages, publish outcomes and the time go in; publishes, channel reopens and
//! settlements come out. The broker glue around it (`super`) runs the commands and feeds
//! back what the broker said, so every branch here is tested without a broker.
//!
//! # What one raw message's outputs go through
//!
//! Each output (an event, or the one dead letter) is published in steps, each confirmed
//! before the next:
//!
//! 1. **deliver**: to its exchange, `mandatory`. An event no queue is bound for comes
//!    back (the canonical exchange's alternate exchange has nothing bound to it), and
//! 2. **keep**: is then put on the unrouted queue (through the default exchange, so no
//!    binding can take it instead), stamped with when it was kept.
//! 3. **tap**: once stored, a copy goes to the tap exchange, routed `canonical.{type}`,
//!    `unrouted.{type}` or `dead-letter.{routing key}`, for observers (`tail`, history).
//!    Observers bind there and nowhere else, so they never change what a publish routes
//!    to: what is unroutable is decided by the teams' bindings alone. Taps go out in
//!    consumption order, except that a message held for retry does not hold back the
//!    taps of those behind it.
//!
//! A raw message is settled (acked) once every output went through every step.
//!
//! # Failures
//!
//! - **One output refused** (nacked: a queue bound for it refuses it, full with
//!   `reject-publish` or unavailable; returned with nowhere to keep it; or not confirmed
//!   in time): that message alone is held and its failed step retried with backoff, while
//!   the others go on. Past `retry.max_elapsed_secs`, or sooner when messages held for
//!   retry fill half the window, it is given up on: when other publishes to the same
//!   exchange were stored since it began failing, the failure is its own, and it is
//!   dead-lettered as `undeliverable` (a replay sends it again once the queue takes it);
//!   when nothing was, the broker refuses everything, and it is rejected for redelivery.
//!   A tap copy that keeps failing is given up on alone (observers miss it; counted).
//! - **A channel closed** (connection lost, an exchange missing, a refusal): nothing is
//!   published on it until it is reopened, with backoff; then the failed steps are
//!   retried. Dead letters go on a channel of their own ([`Lane`]): a publish in flight
//!   when its channel closes may have been stored all the same, and is published again;
//!   a refused event then never makes a dead letter go out twice.
//! - **The channel closed over a publish** (403, 406, ...: possibly one message's own):
//!   the suspects (every message whose publish failed with it) are tried again one at a
//!   time. One refused alone, while another publish to the same exchange is stored, is
//!   dead-lettered as `publish_refused`. When every suspect is refused, the next
//!   deliveries are tried alone as probes, until one to that exchange is stored; after
//!   [`MAX_PROBES`] refused in a row the broker refuses everything, and the next probe
//!   waits with backoff (nothing is dead-lettered for a lost permission).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::canonical::Vendor;
use crate::contract::DeadLetterKind;
use crate::delivery::{DeadLetter, Fault, Lane, PublishOutcome, RetryPolicy, Settle, fault_of};
use crate::ops::describe;

/// Probes refused in a row before the broker is taken to refuse everything.
pub(crate) const MAX_PROBES: u32 = 4;

/// What the core needs of a message, and the copies it asks for.
pub(crate) trait Messages {
    type Message;
    /// What a dead letter is made from.
    type Raw;
    fn exchange<'a>(&self, message: &'a Self::Message) -> &'a str;
    fn routing_key<'a>(&self, message: &'a Self::Message) -> &'a str;
    fn size(&self, message: &Self::Message) -> usize;
    /// An event nobody is bound for, as kept on the unrouted queue.
    fn kept(&self, event: &Self::Message) -> Self::Message;
    /// A stored message's copy for observers.
    fn tapped(&self, stored: &Self::Message, route: Route) -> Self::Message;
    /// The dead letter of a raw message, and its message (or why it cannot be published).
    fn dead_letter(
        &self,
        raw: &Self::Raw,
        kind: DeadLetterKind,
        vendor: Option<Vendor>,
        detail: &str,
    ) -> (DeadLetter, Result<Self::Message, String>);
}

/// Where a stored message was stored, for its tap copy's routing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// An event a team's queue took.
    Canonical,
    /// An event nobody is bound for, kept on the unrouted queue.
    Unrouted,
    DeadLetter,
}

/// One attempt at one step of one output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PublishId {
    pub(crate) seq: u64,
    pub(crate) output: usize,
    pub(crate) attempt: u64,
}

/// What the glue must do, in this order.
pub(crate) enum Command<M> {
    /// Publish now (mandatory unless a tap copy); the outcome comes back through
    /// [`Core::decided`].
    Publish {
        id: PublishId,
        lane: Lane,
        message: Arc<M>,
        mandatory: bool,
    },
    /// Open a new publishing channel for `lane` (declaring the topology again with
    /// `redeclare`); the result comes back through [`Core::reopened`].
    Reopen { lane: Lane, redeclare: bool },
}

/// What a raw message ends as, once its outputs are decided.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Fate {
    /// Its events, all of one vendor, with their canonical types (one per output).
    Events {
        vendor: Vendor,
        types: Vec<&'static str>,
    },
    DeadLetter(DeadLetter),
    /// Its dead letter cannot be published: rejected without requeue, so the raw
    /// queue's own dead-lettering keeps it.
    HandToBroker(String),
    /// It came back through one of the worker's own exchanges (a binding sends them to
    /// the raw queue): its one output puts it in the dead-letter queue as it is, so it
    /// loops no more. Says through which exchange.
    Looped(String),
    /// Its body was too large to read: rejected without requeue, so the raw queue's own
    /// dead-lettering keeps it, bytes and all. The dead letter says why (and is not
    /// published: it has no body).
    LeftToBroker(DeadLetter),
}

/// How a raw message was settled.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Finish {
    /// Every event stored: `delivered` to a team's queue, or `kept` on the unrouted
    /// queue (canonical types, one per event).
    Stored {
        vendor: Vendor,
        delivered: Vec<&'static str>,
        kept: Vec<&'static str>,
    },
    DeadLettered(DeadLetter),
    /// Failing for `failing_for` with nothing stored meanwhile: rejected for redelivery.
    Requeued {
        failing_for: Duration,
        last: PublishOutcome,
    },
    HandedToBroker(String),
    /// Came back through this exchange of the worker's own; put in the dead-letter queue.
    Looped(String),
    /// Rejected to the raw queue's dead-lettering, for this reason.
    LeftToBroker(DeadLetter),
}

/// A raw message settled.
pub(crate) struct Finished<R> {
    pub(crate) tag: u64,
    pub(crate) settle: Settle,
    pub(crate) finish: Finish,
    pub(crate) raw: R,
    pub(crate) admitted_at: Instant,
}

/// Counters the glue adds to the metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Publishes made again after a failure.
    pub(crate) retries: u64,
    /// Publishes returned with nowhere to keep them.
    pub(crate) unroutable: u64,
    /// Tap copies given up on.
    pub(crate) taps_given_up: u64,
    /// The history's tap copies returned: the history stream (or its binding) was
    /// missing.
    pub(crate) history_missing: u64,
}

/// What the pipeline is doing, for `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Status {
    /// Publishing; `held` messages are being retried (their own failures).
    Flowing { held: usize, last: Option<String> },
    /// The channel is closed or the broker refuses everything: publishes wait.
    Retrying {
        since: Instant,
        held: usize,
        last: String,
    },
    /// Trying suspects of a refused publish one at a time.
    Isolating { held: usize, last: String },
}

/// How the core is tuned.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tuning {
    pub(crate) retry: RetryPolicy,
    /// Raw messages consumed at once at most (the prefetch).
    pub(crate) window: usize,
    /// Output bytes held at once before no new delivery is taken.
    pub(crate) window_bytes: usize,
    /// The history keeps the tap copies of stored events: those copies are published
    /// `mandatory`, and one returned means the history stream (or its binding) is gone,
    /// so the topology is declared again and the copy retried.
    pub(crate) history: bool,
}

/// The publish pipeline.
pub(crate) struct Core<X: Messages> {
    messages: X,
    tuning: Tuning,
    /// Boxed: the map moves its values as it changes, and an entry holds the raw
    /// message's properties.
    entries: BTreeMap<u64, Box<Entry<X>>>,
    next_seq: u64,
    next_attempt: u64,
    held_bytes: usize,
    channels: [Channel; 2],
    isolation: Option<Isolation>,
    /// Per exchange, the latest attempt (they are numbered in the order sent) that was
    /// stored there.
    stored_after: HashMap<String, u64>,
    /// Per exchange and routing key, the latest failed attempt judged the message's own
    /// (refused among stored ones).
    refused_keys: HashMap<(String, String), u64>,
    rng: fastrand::Rng,
    commands: Vec<Command<X::Message>>,
    finished: Vec<Finished<X::Raw>>,
    counts: Counts,
    /// When the next tick is due, as of the last one.
    wake: Option<Instant>,
    /// Which entries a tick must look at, so that it never scans them all:
    index: Index,
}

/// Sets of entries by what a tick has to do with them, kept up to date for every entry
/// that changed ([`Core::touch`], then [`Core::reindex`]).
#[derive(Debug, Default)]
struct Index {
    /// Changed since the last tick.
    touched: BTreeSet<u64>,
    /// With an output being delivered (not failed): later keeps wait for them.
    delivering: BTreeSet<u64>,
    /// With an output being delivered or kept (not failed): later taps wait for them.
    storing: BTreeSet<u64>,
    /// With a keep or a tap ready to go (maybe waiting for one of the above).
    waiting: BTreeSet<u64>,
    /// With an output ready to be delivered that could not go yet (a channel closed,
    /// isolating).
    unsent: BTreeSet<u64>,
    /// Failing: held for a retry, or waiting for a closed channel.
    failing: BTreeSet<u64>,
}

/// The index sets an entry is in, one bit each ([`Index::sets_of`]).
const DELIVERING: u8 = 1;
const STORING: u8 = 1 << 1;
const WAITING: u8 = 1 << 2;
const UNSENT: u8 = 1 << 3;
const FAILING: u8 = 1 << 4;

impl Index {
    /// The sets `entry` belongs in, by what it holds now.
    fn sets_of<X: Messages>(entry: &Entry<X>) -> u8 {
        let mut sets = 0;
        for o in &entry.outputs {
            let live = !matches!(o.state, State::Failed(_));
            if live && o.step == Step::Deliver {
                sets |= DELIVERING;
            }
            if live && matches!(o.step, Step::Deliver | Step::Keep) {
                sets |= STORING;
            }
            if o.state == State::Ready && matches!(o.step, Step::Keep | Step::Tap) {
                sets |= WAITING;
            }
            if o.state == State::Ready && o.step == Step::Deliver {
                sets |= UNSENT;
            }
        }
        if entry.failing_since.is_some() {
            sets |= FAILING;
        }
        sets
    }

    /// Moves entry `seq` from the sets `was` to the sets `now`, touching only those that
    /// differ: most changes of an entry leave most of its sets as they were.
    fn refile(&mut self, seq: u64, was: u8, now: u8) {
        for (bit, set) in [
            (DELIVERING, &mut self.delivering),
            (STORING, &mut self.storing),
            (WAITING, &mut self.waiting),
            (UNSENT, &mut self.unsent),
            (FAILING, &mut self.failing),
        ] {
            match (was & bit != 0, now & bit != 0) {
                (false, true) => {
                    set.insert(seq);
                }
                (true, false) => {
                    set.remove(&seq);
                }
                _ => {}
            }
        }
    }
}

struct Entry<X: Messages> {
    tag: u64,
    raw: X::Raw,
    fate: Fate,
    outputs: Vec<Output<X::Message>>,
    bytes: usize,
    admitted_at: Instant,
    /// Since when one of its publishes fails (not counting a closed channel's).
    failing_since: Option<Instant>,
    /// When its failed steps are published again.
    retry_at: Option<Instant>,
    rounds: u32,
    /// The last failure, for logs and `/readyz`.
    last: Option<PublishOutcome>,
    /// The attempt that failed last.
    failed_attempt: Option<u64>,
    /// Whether, when it last failed, a publish sent after its previous failed attempt had
    /// been stored.
    refused_among_stored: bool,
    /// The attempt that failed first.
    first_failed_attempt: Option<u64>,
    /// The index sets it is filed in ([`Index::sets_of`] when last reindexed).
    filed: u8,
}

struct Output<M> {
    primary: Arc<M>,
    dead_letter: bool,
    step: Step,
    state: State,
    /// The current step's message when it is a copy (kept or tapped).
    copy: Option<Arc<M>>,
    kept: bool,
}

impl<M> Output<M> {
    /// Whether its current step asks for a return when nothing takes it: every step but
    /// a tap copy for observers; with `history` on, also an event's tap copy, which the
    /// history must keep (a dead letter's is not kept there).
    fn mandatory(&self, history: bool) -> bool {
        self.step != Step::Tap || (history && !self.dead_letter)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Deliver,
    Keep,
    Tap,
    Done,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// To be published at its step.
    Ready,
    InFlight(u64),
    /// Its step failed; waits for the entry's retry (or the channel).
    Failed(PublishOutcome),
}

#[derive(Debug)]
enum Channel {
    Up,
    Down {
        since: Instant,
        rounds: u32,
        next: Instant,
        redeclare: bool,
        reopening: bool,
        last: PublishOutcome,
    },
}

/// Trying the suspects of a refused publish one at a time.
#[derive(Debug, Default)]
struct Isolation {
    /// Suspects to try alone, in order; filled once nothing is in flight.
    queue: Option<VecDeque<u64>>,
    /// The message being tried alone, and the tries made so far (`step`).
    current: Option<u64>,
    step: u64,
    /// Messages refused alone.
    candidates: Vec<Candidate>,
    /// Exchanges a publish was stored to while isolating, and at which step first.
    vouched: HashMap<String, u64>,
    /// Candidates already tried again after a vouch.
    retried: Vec<u64>,
    /// The message tried alone is a probe (a new delivery), not a suspect.
    probing: bool,
    probes_refused: u32,
    /// Passes that ended with the broker refusing everything (the backoff's exponent).
    passes: u32,
    /// No probe before then.
    wait_until: Option<Instant>,
    reason: String,
}

impl<X: Messages> Core<X> {
    pub(crate) fn new(messages: X, tuning: Tuning, seed: u64) -> Core<X> {
        Core {
            messages,
            tuning,
            entries: BTreeMap::new(),
            next_seq: 0,
            next_attempt: 0,
            held_bytes: 0,
            channels: [Channel::Up, Channel::Up],
            isolation: None,
            stored_after: HashMap::new(),
            refused_keys: HashMap::new(),
            rng: fastrand::Rng::with_seed(seed),
            commands: Vec::new(),
            finished: Vec::new(),
            counts: Counts::default(),
            wake: None,
            index: Index::default(),
        }
    }

    /// The message maker, to update (a new frame size after a reconnect).
    pub(crate) fn messages_mut(&mut self) -> &mut X {
        &mut self.messages
    }

    /// Raw messages held: consumed, not yet settled.
    pub(crate) fn held(&self) -> usize {
        self.entries.len()
    }

    /// Whether to take another delivery: not while a channel is closed, not while
    /// isolating (but for a probe), not while the output held is over its budget.
    pub(crate) fn can_take(&self) -> bool {
        if self.held_bytes >= self.tuning.window_bytes || !self.all_up() {
            return false;
        }
        self.isolation.as_ref().is_none_or(Isolation::wants_probe)
    }

    fn all_up(&self) -> bool {
        self.channels.iter().all(|c| matches!(c, Channel::Up))
    }

    /// When the core next needs [`Core::tick`] at the latest (as of the last tick).
    pub(crate) fn wake_at(&self) -> Option<Instant> {
        self.wake
    }

    fn next_wake(&self) -> Option<Instant> {
        let mut at: Option<Instant> = None;
        let mut earliest = |t: Instant| at = Some(at.map_or(t, |a| a.min(t)));
        for lane in Lane::ALL {
            // A channel with publishes still in flight is reopened once they are back,
            // which wakes the core anyway: waking for its time would be a busy loop.
            if let Channel::Down {
                next, reopening, ..
            } = self.channels[lane as usize]
                && !reopening
                && !self.entries.values().any(|e| e.in_flight_on(lane))
            {
                earliest(next);
            }
        }
        if let Some(wait) = self.isolation.as_ref().and_then(|i| i.wait_until) {
            earliest(wait);
        }
        for entry in self
            .index
            .failing
            .iter()
            .filter_map(|s| self.entries.get(s))
        {
            // While isolating, retries wait for the isolation to end, which a decided
            // publish or a reopen brings: waking for them would be a busy loop.
            if let Some(retry) = entry.retry_at
                && self.isolation.is_none()
            {
                earliest(retry);
            }
            // Given up at the budget even with a retry still to come.
            if let Some(since) = entry.failing_since
                && !entry.in_flight()
            {
                earliest(since + self.tuning.retry.max_elapsed);
            }
        }
        at
    }

    /// Notes that an entry changed: the next tick looks at it.
    fn touch(&mut self, seq: u64) {
        self.index.touched.insert(seq);
    }

    /// Files an entry in the index sets by what it holds now.
    fn reindex(&mut self, seq: u64) {
        // A removed entry was taken out of its sets when it was removed ([`Core::remove`]).
        let Some(entry) = self.entries.get_mut(&seq) else {
            return;
        };
        let now = Index::sets_of(entry);
        if now != entry.filed {
            self.index.refile(seq, entry.filed, now);
            entry.filed = now;
        }
    }

    /// Takes entry `seq` out of the entries and the index sets.
    fn remove(&mut self, seq: u64) -> Option<Box<Entry<X>>> {
        let entry = self.entries.remove(&seq)?;
        self.index.refile(seq, entry.filed, 0);
        Some(entry)
    }

    /// Asserts that the index sets say what a scan of every entry says.
    #[cfg(test)]
    fn check_index(&self) {
        assert!(self.index.touched.is_empty(), "touched after a tick");
        let mut scanned = Index::default();
        for (seq, entry) in &self.entries {
            scanned.refile(*seq, 0, Index::sets_of(entry));
            assert_eq!(entry.filed, Index::sets_of(entry), "entry {seq} filed");
        }
        assert_eq!(self.index.unsent, scanned.unsent, "unsent");
        assert_eq!(self.index.delivering, scanned.delivering, "delivering");
        assert_eq!(self.index.storing, scanned.storing, "storing");
        assert_eq!(self.index.waiting, scanned.waiting, "waiting");
        assert_eq!(self.index.failing, scanned.failing, "failing");
        for entry in self.entries.values() {
            let sizes = entry.outputs.iter().map(|o| self.messages.size(&o.primary));
            assert_eq!(entry.bytes, sizes.sum::<usize>(), "an entry's bytes");
        }
        let held: usize = self.entries.values().map(|e| e.bytes).sum();
        assert_eq!(self.held_bytes, held, "held bytes");
    }

    /// Reindexes every entry touched since.
    fn reindex_touched(&mut self) {
        let touched: Vec<u64> = self.index.touched.iter().copied().collect();
        for seq in touched {
            self.reindex(seq);
        }
    }

    /// Takes a planned raw message: `messages` are its events (for [`Fate::Events`]) or
    /// its dead letter. Publishes them at once unless the channel is closed.
    pub(crate) fn admit(
        &mut self,
        now: Instant,
        tag: u64,
        raw: X::Raw,
        fate: Fate,
        messages: Vec<X::Message>,
    ) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let dead_letter = matches!(fate, Fate::DeadLetter(_) | Fate::Looped(_));
        let outputs: Vec<Output<X::Message>> = messages
            .into_iter()
            .map(|m| Output::new(Arc::new(m), dead_letter))
            .collect();
        let bytes = outputs.iter().map(|o| self.messages.size(&o.primary)).sum();
        self.held_bytes += bytes;
        self.entries.insert(
            seq,
            Box::new(Entry {
                tag,
                raw,
                fate,
                outputs,
                bytes,
                admitted_at: now,
                failing_since: None,
                retry_at: None,
                rounds: 0,
                last: None,
                failed_attempt: None,
                refused_among_stored: false,
                first_failed_attempt: None,
                filed: 0,
            }),
        );
        if let Some(isolation) = &mut self.isolation
            && isolation.wants_probe()
        {
            isolation.try_alone(seq);
            isolation.probing = true;
        }
        self.touch(seq);
    }

    /// How a publish ended.
    pub(crate) fn decided(&mut self, now: Instant, id: PublishId, outcome: PublishOutcome) {
        let Some(entry) = self.entries.get_mut(&id.seq) else {
            return;
        };
        let Some(output) = entry.outputs.get_mut(id.output) else {
            return;
        };
        if output.state != State::InFlight(id.attempt) {
            return; // A stale outcome of an attempt given up on.
        }
        let step = output.step;
        let lane = output.lane();
        let mut closed = None;
        match (step, &outcome) {
            (Step::Deliver | Step::Keep, PublishOutcome::Confirmed) => {
                let exchange = self.messages.exchange(output.current_message());
                let latest = self.stored_after.entry(exchange.to_owned()).or_default();
                *latest = (*latest).max(id.attempt);
                output.kept |= step == Step::Keep;
                let route = match (output.dead_letter, output.kept) {
                    (true, _) => Route::DeadLetter,
                    (false, true) => Route::Unrouted,
                    (false, false) => Route::Canonical,
                };
                let tapped = self.messages.tapped(output.current_message(), route);
                output.copy = Some(Arc::new(tapped));
                output.step = Step::Tap;
                output.state = State::Ready;
            }
            (Step::Deliver, PublishOutcome::Returned) if !output.dead_letter => {
                // Nobody is bound for it: keep it.
                output.copy = Some(Arc::new(self.messages.kept(&output.primary)));
                output.step = Step::Keep;
                output.state = State::Ready;
            }
            (Step::Tap, PublishOutcome::Confirmed) => {
                output.copy = None;
                output.step = Step::Done;
                output.state = State::Ready;
            }
            (Step::Tap, PublishOutcome::Returned) => {
                // Only the history's copies are mandatory: the history stream or its
                // binding is gone. Declared again, then the copy is retried with
                // backoff (and given up on alone, as any tap, if that never works).
                output.state = State::Failed(PublishOutcome::Returned);
                entry.last = Some(PublishOutcome::Returned);
                entry.failing_since.get_or_insert(now);
                self.counts.history_missing += 1;
                closed = Some(Fault::Topology);
            }
            (_, failed) => {
                if *failed == PublishOutcome::Returned {
                    self.counts.unroutable += 1;
                }
                if step == Step::Keep {
                    // Kept nowhere: deliver again (a team may have bound meanwhile).
                    output.step = Step::Deliver;
                    output.copy = None;
                }
                let exchange = self.messages.exchange(&output.primary);
                let stored_after = self.stored_after.get(exchange).copied();
                output.state = State::Failed(failed.clone());
                entry.last = Some(failed.clone());
                entry.failing_since.get_or_insert(now);
                entry.first_failed_attempt.get_or_insert(id.attempt);
                // Something sent after its previous failed attempt was stored before this
                // one failed: the broker refused it again while taking others.
                entry.refused_among_stored = entry
                    .failed_attempt
                    .zip(stored_after)
                    .is_some_and(|(previous, stored)| stored > previous);
                entry.failed_attempt = Some(id.attempt);
                if entry.refused_among_stored && !matches!(failed, PublishOutcome::Closed { .. }) {
                    let key = (
                        exchange.to_owned(),
                        self.messages.routing_key(&output.primary).to_owned(),
                    );
                    self.refused_keys.insert(key, id.attempt);
                }
                if let PublishOutcome::Closed { code, .. } = failed {
                    closed = Some(code.map_or(Fault::Broker, fault_of));
                }
            }
        }
        self.touch(id.seq);
        if let Some(fault) = closed {
            self.channel_closed(now, lane, fault, &outcome);
        }
        if let Some(isolation) = &mut self.isolation
            && isolation.current == Some(id.seq)
            && let Some(entry) = self.entries.get(&id.seq)
            && !entry.in_flight()
        {
            isolation.judge(id.seq, entry, &self.messages);
        }
    }

    /// The glue reopened `lane`'s channel (`Ok`), or could not.
    pub(crate) fn reopened(&mut self, now: Instant, lane: Lane, result: Result<(), String>) {
        let channel = &mut self.channels[lane as usize];
        let Channel::Down {
            since,
            rounds,
            redeclare,
            last,
            ..
        } = channel
        else {
            return;
        };
        match result {
            Ok(()) => *channel = Channel::Up,
            Err(reason) => {
                let rounds = *rounds + 1;
                *channel = Channel::Down {
                    since: *since,
                    rounds,
                    next: now + self.tuning.retry.delay(rounds, self.rng.f64()),
                    redeclare: *redeclare,
                    reopening: false,
                    // Why it cannot be reopened (a queue or exchange missing, say) is
                    // what `/readyz` should say now.
                    last: PublishOutcome::Closed {
                        code: match last {
                            PublishOutcome::Closed { code, .. } => *code,
                            _ => None,
                        },
                        reason,
                    },
                };
            }
        }
    }

    /// Does everything that can be done at `now` after what was fed in (admitted,
    /// decided, reopened) and what fell due: call it once per batch of those, then take
    /// the commands. Feeding in does nothing on its own, so that a burst of confirms is
    /// handled in one pass.
    pub(crate) fn tick(&mut self, now: Instant) {
        self.pump(now);
        self.wake = self.next_wake();
    }

    /// The commands to run, in order.
    pub(crate) fn take_commands(&mut self) -> Vec<Command<X::Message>> {
        std::mem::take(&mut self.commands)
    }

    /// The raw messages settled since the last call.
    pub(crate) fn take_finished(&mut self) -> Vec<Finished<X::Raw>> {
        std::mem::take(&mut self.finished)
    }

    pub(crate) fn take_counts(&mut self) -> Counts {
        std::mem::take(&mut self.counts)
    }

    pub(crate) fn status(&self) -> Status {
        let held = self.entries.len();
        if let Some(isolation) = &self.isolation {
            return Status::Isolating {
                held,
                last: isolation.reason.clone(),
            };
        }
        if let Some(Channel::Down { since, last, .. }) = self
            .channels
            .iter()
            .find(|c| matches!(c, Channel::Down { .. }))
        {
            return Status::Retrying {
                since: *since,
                held,
                last: describe(last),
            };
        }
        let failing: Vec<(u64, Instant, Option<&PublishOutcome>)> = self
            .index
            .failing
            .iter()
            .filter_map(|s| self.entries.get(s).map(|e| (*s, e)))
            .filter_map(|(s, e)| e.failing_since.map(|t| (s, t, e.last.as_ref())))
            .collect();
        let last = failing.iter().find_map(|(_, _, l)| *l).map(describe);
        // A failure nothing else escapes (no other publish to its exchange stored since):
        // the broker refuses everything there.
        if let Some(since) = failing
            .iter()
            .filter(|(s, _, _)| !self.own_failure(*s))
            .map(|(_, t, _)| *t)
            .min()
        {
            return Status::Retrying {
                since,
                held,
                last: last.unwrap_or_default(),
            };
        }
        Status::Flowing {
            held: failing.len(),
            last,
        }
    }

    fn channel_closed(&mut self, now: Instant, lane: Lane, fault: Fault, outcome: &PublishOutcome) {
        if fault == Fault::Message && self.isolation.is_none() {
            self.isolation = Some(Isolation {
                reason: describe(outcome),
                ..Isolation::default()
            });
        }
        let channel = &mut self.channels[lane as usize];
        match channel {
            Channel::Up => {
                let delay = if fault == Fault::Message {
                    Duration::ZERO
                } else {
                    self.tuning.retry.delay(0, self.rng.f64())
                };
                *channel = Channel::Down {
                    since: now,
                    rounds: 0,
                    next: now + delay,
                    redeclare: fault == Fault::Topology,
                    reopening: false,
                    last: outcome.clone(),
                };
            }
            Channel::Down {
                redeclare, last, ..
            } => {
                *redeclare |= fault == Fault::Topology;
                *last = outcome.clone();
            }
        }
    }

    /// Does everything that can be done now: reopen, isolate, retry, publish, give up,
    /// settle.
    fn pump(&mut self, now: Instant) {
        self.reindex_touched();
        for lane in Lane::ALL {
            let down = matches!(self.channels[lane as usize], Channel::Down { .. });
            let in_flight = down && self.entries.values().any(|e| e.in_flight_on(lane));
            if let Channel::Down {
                next,
                reopening,
                redeclare,
                ..
            } = &mut self.channels[lane as usize]
                && !*reopening
                && *next <= now
                && !in_flight
            {
                *reopening = true;
                self.commands.push(Command::Reopen {
                    lane,
                    redeclare: *redeclare,
                });
            }
        }
        self.give_up_where_due(now);
        if self.isolation.is_some() && self.all_up() {
            self.isolate(now);
            if let Some(seq) = self.isolation.as_ref().and_then(|i| i.current) {
                self.publish_entry(seq, now);
            }
        }
        if self.isolation.is_none() {
            self.publish_due(now);
        }
        self.reindex_touched();
        self.settle_done();
        let touched = std::mem::take(&mut self.index.touched);
        for seq in touched {
            self.reindex(seq);
        }
    }

    /// Publishes, in order, every step that is ready: new messages and retries due go at
    /// once; a keep only when no earlier output is still being delivered, a tap only when
    /// none is still being delivered or kept, so that the unrouted queue and the tap see
    /// consumption order (publishes on one channel are stored in the order sent; an output
    /// waiting for its retry holds nothing back).
    fn publish_due(&mut self, now: Instant) {
        let up = self.channels.each_ref().map(|c| matches!(c, Channel::Up));
        let history = self.tuning.history;
        // The entries with something to publish: changed ones, failing ones (a retry due,
        // a channel back), and ones whose keeps or taps wait, up to the first that can
        // let none through.
        let keeps_before = self.index.delivering.first().copied().unwrap_or(u64::MAX);
        let mut candidates: Vec<u64> = self.index.touched.iter().copied().collect();
        candidates.extend(self.index.failing.iter().copied());
        candidates.extend(self.index.unsent.iter().copied());
        candidates.extend(self.index.waiting.range(..=keeps_before).copied());
        candidates.sort_unstable();
        candidates.dedup();
        for seq in candidates {
            let before = |set: &BTreeSet<u64>| set.first().is_some_and(|first| *first < seq);
            let keeps_wait = before(&self.index.delivering);
            let taps_wait = before(&self.index.storing);
            let Some(entry) = self.entries.get_mut(&seq) else {
                continue;
            };
            let (mut keeps_wait, mut taps_wait) = (keeps_wait, taps_wait);
            let mut changed = false;
            if let Some(at) = entry.retry_at
                && at <= now
            {
                entry.retry_at = None;
                entry.rounds += 1;
                for output in &mut entry.outputs {
                    if matches!(output.state, State::Failed(_)) {
                        output.state = State::Ready;
                        self.counts.retries += 1;
                        changed = true;
                    }
                }
            }
            for (index, output) in entry.outputs.iter_mut().enumerate() {
                // Failed steps wait for their retry; a closed channel's go again now.
                if let State::Failed(PublishOutcome::Closed { .. }) = output.state {
                    output.state = State::Ready;
                    self.counts.retries += 1;
                    changed = true;
                }
                let go = up[output.lane() as usize]
                    && match (output.step, &output.state) {
                        (Step::Deliver, State::Ready) => true,
                        (Step::Keep, State::Ready) => !keeps_wait,
                        (Step::Tap, State::Ready) => !taps_wait,
                        _ => false,
                    };
                if go {
                    let attempt = self.next_attempt;
                    self.next_attempt += 1;
                    output.state = State::InFlight(attempt);
                    changed = true;
                    self.commands.push(Command::Publish {
                        id: PublishId {
                            seq,
                            output: index,
                            attempt,
                        },
                        lane: output.lane(),
                        message: output.current_message().clone(),
                        mandatory: output.mandatory(history),
                    });
                }
                if !matches!(output.state, State::Failed(_)) {
                    keeps_wait |= output.step == Step::Deliver;
                    taps_wait |= matches!(output.step, Step::Deliver | Step::Keep);
                }
            }
            if changed {
                // What later entries wait for may have changed with it.
                self.reindex(seq);
                self.touch(seq);
            }
        }
        self.schedule_retries(now);
    }

    /// Publishes every ready step of one message, in order (while isolating, it is the
    /// one tried alone).
    fn publish_entry(&mut self, seq: u64, now: Instant) {
        if let Some(entry) = self.entries.get_mut(&seq) {
            for output in &mut entry.outputs {
                if let State::Failed(_) = output.state {
                    output.state = State::Ready;
                    self.counts.retries += 1;
                }
            }
        }
        self.publish_steps(seq);
        self.touch(seq);
        self.schedule_retries(now);
    }

    /// Publishes every output of message `seq` ready to go, at its step.
    fn publish_steps(&mut self, seq: u64) {
        let history = self.tuning.history;
        let Some(entry) = self.entries.get_mut(&seq) else {
            return;
        };
        for (index, output) in entry.outputs.iter_mut().enumerate() {
            if output.state != State::Ready || output.step == Step::Done {
                continue;
            }
            let attempt = self.next_attempt;
            self.next_attempt += 1;
            output.state = State::InFlight(attempt);
            self.commands.push(Command::Publish {
                id: PublishId {
                    seq,
                    output: index,
                    attempt,
                },
                lane: output.lane(),
                message: output.current_message().clone(),
                mandatory: output.mandatory(history),
            });
        }
    }

    /// Gives each message whose failed steps wait a time to retry them.
    fn schedule_retries(&mut self, now: Instant) {
        let failing: Vec<u64> = self.index.failing.iter().copied().collect();
        for seq in failing {
            let Some(entry) = self.entries.get_mut(&seq) else {
                continue;
            };
            let waiting = entry
                .outputs
                .iter()
                .any(|o| matches!(o.state, State::Failed(ref f) if !matches!(f, PublishOutcome::Closed { .. })));
            if waiting && entry.retry_at.is_none() && !entry.in_flight() {
                entry.retry_at = Some(now + self.tuning.retry.delay(entry.rounds, self.rng.f64()));
            }
        }
    }

    /// Gives up on messages failing past the budget, or, when messages held for retry
    /// fill half the window, on the one failing longest whose failure is its own.
    fn give_up_where_due(&mut self, now: Instant) {
        let max_elapsed = self.tuning.retry.max_elapsed;
        let failing: Vec<(u64, Instant)> = self
            .index
            .failing
            .iter()
            .filter_map(|s| self.entries.get(s).map(|e| (*s, e)))
            .filter(|(_, e)| !e.in_flight())
            .filter_map(|(s, e)| e.failing_since.map(|t| (s, t)))
            .collect();
        let held_bytes: usize = failing
            .iter()
            .filter_map(|(s, _)| self.entries.get(s))
            .map(|e| e.bytes)
            .sum();
        let crowded =
            failing.len() * 2 > self.tuning.window || held_bytes * 2 > self.tuning.window_bytes;
        let mut crowding = crowded
            .then(|| {
                failing
                    .iter()
                    .filter(|(s, _)| self.own_failure(*s))
                    .min_by_key(|(_, t)| *t)
                    .map(|(s, _)| *s)
            })
            .flatten();
        for (seq, since) in failing {
            if now.duration_since(since) >= max_elapsed || crowding == Some(seq) {
                crowding = None;
                self.give_up(now, seq);
                self.touch(seq);
            }
        }
    }

    /// Whether the failure of message `seq` is its own: it was refused again, on a retry,
    /// after a publish to the same exchange sent after its previous attempt had been
    /// stored (the broker took that one and still refused this one). Publishes are
    /// numbered in the order sent, so a confirm that merely arrives later does not count
    /// (it may be of a publish taken before the refusals began), and neither do stores
    /// while it waits for its retry (a queue draining takes new publishes; the retry then
    /// succeeds).
    ///
    /// A message with the same routing key judged so since this one began failing speaks
    /// for it too: the last messages of a burst have no later ones to compare with.
    fn own_failure(&self, seq: u64) -> bool {
        let Some(entry) = self.entries.get(&seq) else {
            return false;
        };
        if entry.refused_among_stored {
            return true;
        }
        let Some(first) = entry.first_failed_attempt else {
            return false;
        };
        entry
            .outputs
            .iter()
            .filter(|o| matches!(o.state, State::Failed(ref f) if !matches!(f, PublishOutcome::Closed { .. })))
            .any(|o| {
                let key = (
                    self.messages.exchange(&o.primary).to_owned(),
                    self.messages.routing_key(&o.primary).to_owned(),
                );
                self.refused_keys.get(&key).is_some_and(|at| *at >= first)
            })
    }

    fn give_up(&mut self, now: Instant, seq: u64) {
        let own = self
            .entries
            .get(&seq)
            .and_then(|e| e.failing_since)
            .is_some_and(|_| self.own_failure(seq));
        let Some(entry) = self.entries.get_mut(&seq) else {
            return;
        };
        let failing_for = entry
            .failing_since
            .map_or(Duration::ZERO, |t| now.duration_since(t));
        let last = entry.last.clone().unwrap_or(PublishOutcome::TimedOut);
        // Only tap copies failing: the message is stored; observers miss it.
        let only_taps = entry
            .outputs
            .iter()
            .all(|o| o.step == Step::Done || o.step == Step::Tap);
        if only_taps {
            self.counts.taps_given_up += entry.give_up_failed_taps();
            entry.failing_since = None;
            entry.retry_at = None;
            return;
        }
        match (&entry.fate, own) {
            (Fate::Events { vendor, types }, true) => {
                let vendor = *vendor;
                let (index, failed) = entry
                    .outputs
                    .iter()
                    .enumerate()
                    .find_map(|(i, o)| match &o.state {
                        State::Failed(f) => Some((i, f.clone())),
                        _ => None,
                    })
                    .unwrap_or((0, last.clone()));
                let detail = format!(
                    "event {} of {} ({}) not stored for {:.1} s: {}; other messages to {} were stored meanwhile",
                    index + 1,
                    entry.outputs.len(),
                    types.get(index).copied().unwrap_or("?"),
                    failing_for.as_secs_f64(),
                    describe(&failed),
                    self.messages.exchange(&entry.outputs[index].primary),
                );
                self.replace_with_dead_letter(
                    seq,
                    DeadLetterKind::Undeliverable,
                    Some(vendor),
                    &detail,
                );
            }
            _ => {
                let entry = self.remove(seq);
                if let Some(entry) = entry {
                    self.held_bytes = self.held_bytes.saturating_sub(entry.bytes);
                    self.finished.push(Finished {
                        tag: entry.tag,
                        settle: Settle::Reject {
                            tag: entry.tag,
                            requeue: true,
                        },
                        finish: Finish::Requeued { failing_for, last },
                        raw: entry.raw,
                        admitted_at: entry.admitted_at,
                    });
                }
            }
        }
    }

    /// Makes a message's output its dead letter (or, when that cannot be published, hands
    /// it to the broker).
    fn replace_with_dead_letter(
        &mut self,
        seq: u64,
        kind: DeadLetterKind,
        vendor: Option<Vendor>,
        detail: &str,
    ) {
        let Some(entry) = self.entries.get_mut(&seq) else {
            return;
        };
        let (dead_letter, message) = self.messages.dead_letter(&entry.raw, kind, vendor, detail);
        self.held_bytes = self.held_bytes.saturating_sub(entry.bytes);
        match message {
            Ok(message) => {
                let output = Output::new(Arc::new(message), true);
                entry.bytes = self.messages.size(&output.primary);
                entry.outputs = vec![output];
                entry.fate = Fate::DeadLetter(dead_letter);
            }
            Err(why) => {
                entry.bytes = 0;
                entry.outputs = Vec::new();
                entry.fate = Fate::HandToBroker(format!("{kind}: {why}"));
            }
        }
        self.held_bytes += entry.bytes;
        entry.failing_since = None;
        entry.retry_at = None;
        entry.rounds = 0;
        entry.last = None;
        self.touch(seq);
    }

    /// Settles every message whose outputs are all done, in any order; an ack covers
    /// every earlier delivery (`multiple`) only when none of them is still held.
    fn settle_done(&mut self) {
        let done: Vec<u64> = self
            .index
            .touched
            .iter()
            .filter(|s| self.entries.get(s).is_some_and(|e| e.done()))
            .copied()
            .collect();
        for seq in done {
            let first = self.entries.keys().next() == Some(&seq);
            let Some(entry) = self.remove(seq) else {
                continue;
            };
            self.held_bytes = self.held_bytes.saturating_sub(entry.bytes);
            let (settle, finish) = match entry.fate {
                Fate::HandToBroker(why) => (
                    Settle::Reject {
                        tag: entry.tag,
                        requeue: false,
                    },
                    Finish::HandedToBroker(why),
                ),
                Fate::LeftToBroker(dead_letter) => (
                    Settle::Reject {
                        tag: entry.tag,
                        requeue: false,
                    },
                    Finish::LeftToBroker(dead_letter),
                ),
                Fate::DeadLetter(dead_letter) => (
                    Settle::Ack {
                        tag: entry.tag,
                        multiple: first,
                    },
                    Finish::DeadLettered(dead_letter),
                ),
                Fate::Looped(through) => (
                    Settle::Ack {
                        tag: entry.tag,
                        multiple: first,
                    },
                    Finish::Looped(through),
                ),
                Fate::Events { vendor, types } => {
                    let (mut delivered, mut kept) = (Vec::new(), Vec::new());
                    for (output, t) in entry.outputs.iter().zip(types) {
                        if output.kept {
                            kept.push(t);
                        } else {
                            delivered.push(t);
                        }
                    }
                    (
                        Settle::Ack {
                            tag: entry.tag,
                            multiple: first,
                        },
                        Finish::Stored {
                            vendor,
                            delivered,
                            kept,
                        },
                    )
                }
            };
            self.finished.push(Finished {
                tag: entry.tag,
                settle,
                finish,
                raw: entry.raw,
                admitted_at: entry.admitted_at,
            });
        }
    }

    /// One isolation step: fill the suspects, try the next alone, or decide.
    fn isolate(&mut self, now: Instant) {
        let any_in_flight = self.entries.values().any(|e| e.in_flight());
        let Some(isolation) = &mut self.isolation else {
            return;
        };
        if isolation.current.is_some() {
            return;
        }
        if isolation.queue.is_none() {
            if any_in_flight {
                // The closed channel's publishes come back failed, all at once.
                return;
            }
            isolation.queue = Some(
                self.entries
                    .iter()
                    .filter(|(_, e)| e.refused())
                    .map(|(s, _)| *s)
                    .collect(),
            );
        }
        let queue = isolation.queue.get_or_insert_with(VecDeque::new);
        if let Some(seq) = queue.pop_front() {
            isolation.try_alone(seq);
            return;
        }
        // Refusals that need no proof of being the message's own: a tap copy is given up
        // (observers miss it; the message is stored), and a dead letter is handed to the
        // raw queue's own dead-lettering, which does not need our permissions.
        let (unproven, events): (Vec<Candidate>, Vec<Candidate>) = isolation
            .candidates
            .drain(..)
            .partition(|c| c.refused != Refused::Event);
        isolation.candidates = events;
        // Event candidates refused before their exchange was vouched for are tried once
        // more: the broker may have changed its mind since.
        let retry = isolation
            .candidates
            .iter()
            .find(|c| {
                isolation
                    .vouched
                    .get(&c.exchange)
                    .is_some_and(|v| *v > c.at)
                    && !isolation.retried.contains(&c.seq)
            })
            .map(|c| c.seq);
        let unvouched = isolation
            .candidates
            .iter()
            .any(|c| !isolation.vouched.contains_key(&c.exchange));
        let mut finish = false;
        if let Some(seq) = retry {
            isolation.retried.push(seq);
            isolation.candidates.retain(|c| c.seq != seq);
            isolation.try_alone(seq);
        } else if unvouched {
            let allowed = if isolation.passes == 0 { MAX_PROBES } else { 1 };
            if isolation.probes_refused >= allowed {
                let delay = self.tuning.retry.delay(isolation.passes, self.rng.f64());
                isolation.passes += 1;
                isolation.probes_refused = 0;
                isolation.wait_until = Some(now + delay);
            } else if isolation.wait_until.is_some_and(|t| t <= now) {
                isolation.wait_until = None;
            }
            // Waiting for a probe (a new delivery).
        } else {
            finish = true;
        }
        for candidate in unproven {
            self.refused_without_proof(candidate);
        }
        if finish {
            self.finish_isolation();
        }
    }

    /// A tap copy or a dead letter refused alone.
    fn refused_without_proof(&mut self, candidate: Candidate) {
        self.index.touched.insert(candidate.seq);
        let Some(entry) = self.entries.get_mut(&candidate.seq) else {
            return;
        };
        match candidate.refused {
            Refused::Tap => {
                self.counts.taps_given_up += entry.give_up_failed_taps();
                // Its other outputs may still be failing, and wait for their retry.
                if !entry
                    .outputs
                    .iter()
                    .any(|o| matches!(o.state, State::Failed(_)))
                {
                    entry.failing_since = None;
                    entry.retry_at = None;
                }
            }
            Refused::DeadLetter | Refused::Event => {
                let reason = refusal_reason(entry);
                self.held_bytes = self.held_bytes.saturating_sub(entry.bytes);
                entry.bytes = 0;
                entry.outputs = Vec::new();
                entry.fate =
                    Fate::HandToBroker(format!("the broker refused the dead letter: {reason}"));
                entry.failing_since = None;
                entry.retry_at = None;
            }
        }
    }

    /// Every event candidate refused alone while another publish to its exchange was
    /// stored: dead-lettered as `publish_refused`.
    fn finish_isolation(&mut self) {
        let Some(isolation) = self.isolation.take() else {
            return;
        };
        for candidate in isolation.candidates {
            let Some(entry) = self.entries.get(&candidate.seq) else {
                continue;
            };
            let reason = refusal_reason(entry);
            if let Fate::Events { vendor, .. } = &entry.fate {
                let vendor = *vendor;
                self.replace_with_dead_letter(
                    candidate.seq,
                    DeadLetterKind::PublishRefused,
                    Some(vendor),
                    &format!("the broker refused an event of this message: {reason}"),
                );
            }
        }
    }
}

/// The broker's words for the refusal of one of `entry`'s publishes.
fn refusal_reason<X: Messages>(entry: &Entry<X>) -> String {
    entry
        .outputs
        .iter()
        .find_map(|o| match &o.state {
            State::Failed(PublishOutcome::Closed { reason, .. }) => Some(reason.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

/// A message refused when tried alone.
#[derive(Debug)]
struct Candidate {
    seq: u64,
    /// The exchange its refused publish went to.
    exchange: String,
    refused: Refused,
    /// The isolation step it was refused at.
    at: u64,
}

/// Which of a message's publishes was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    Event,
    DeadLetter,
    Tap,
}

impl Isolation {
    /// Tries message `seq` alone, as the next step.
    fn try_alone(&mut self, seq: u64) {
        self.current = Some(seq);
        self.step += 1;
    }

    fn wants_probe(&self) -> bool {
        let allowed = if self.passes == 0 { MAX_PROBES } else { 1 };
        self.current.is_none()
            && self.queue.as_ref().is_some_and(VecDeque::is_empty)
            && self.wait_until.is_none()
            && self.probes_refused < allowed
            && !self.candidates.is_empty()
    }

    /// The message tried alone is decided: refused again (a candidate) or not (its
    /// stores vouch for their exchanges).
    fn judge<X: Messages>(&mut self, seq: u64, entry: &Entry<X>, messages: &X) {
        self.current = None;
        let probe = std::mem::take(&mut self.probing);
        let refused = entry.outputs.iter().find_map(|o| match &o.state {
            State::Failed(PublishOutcome::Closed {
                code: Some(code), ..
            }) if fault_of(*code) == Fault::Message => Some(Candidate {
                seq,
                exchange: messages.exchange(o.current_message()).to_owned(),
                refused: match (o.step, o.dead_letter) {
                    (Step::Tap, _) => Refused::Tap,
                    (_, true) => Refused::DeadLetter,
                    (_, false) => Refused::Event,
                },
                at: self.step,
            }),
            _ => None,
        });
        match refused {
            Some(candidate) => {
                if probe && candidate.refused == Refused::Event {
                    self.probes_refused += 1;
                }
                self.candidates.push(candidate);
            }
            None => {
                for output in &entry.outputs {
                    if matches!(output.step, Step::Keep | Step::Tap | Step::Done) {
                        let exchange = messages.exchange(&output.primary).to_owned();
                        self.vouched.entry(exchange).or_insert(self.step);
                        self.probes_refused = 0;
                    }
                }
            }
        }
    }
}

impl<M> Output<M> {
    fn new(primary: Arc<M>, dead_letter: bool) -> Self {
        Output {
            primary,
            dead_letter,
            step: Step::Deliver,
            state: State::Ready,
            copy: None,
            kept: false,
        }
    }

    fn current_message(&self) -> &Arc<M> {
        self.copy.as_ref().unwrap_or(&self.primary)
    }

    /// The channel its current step goes on.
    fn lane(&self) -> Lane {
        if self.dead_letter && self.step == Step::Deliver {
            Lane::DeadLetters
        } else {
            Lane::Events
        }
    }
}

impl<X: Messages> Entry<X> {
    /// Gives up its failed tap copies (observers miss them; the message is stored);
    /// returns how many.
    fn give_up_failed_taps(&mut self) -> u64 {
        let mut given_up = 0;
        for output in &mut self.outputs {
            if output.step == Step::Tap && matches!(output.state, State::Failed(_)) {
                output.step = Step::Done;
                output.copy = None;
                output.state = State::Ready;
                given_up += 1;
            }
        }
        given_up
    }

    fn in_flight(&self) -> bool {
        self.outputs
            .iter()
            .any(|o| matches!(o.state, State::InFlight(_)))
    }

    fn in_flight_on(&self, lane: Lane) -> bool {
        self.outputs
            .iter()
            .any(|o| matches!(o.state, State::InFlight(_)) && o.lane() == lane)
    }

    fn done(&self) -> bool {
        self.outputs.iter().all(|o| o.step == Step::Done)
    }

    /// Whether the channel closed over one of its publishes, possibly its own fault.
    fn refused(&self) -> bool {
        self.outputs.iter().any(|o| {
            matches!(&o.state, State::Failed(PublishOutcome::Closed { code: Some(code), .. })
                if fault_of(*code) == Fault::Message)
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A message as the tests see it: where it goes, and what it is.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Msg {
        exchange: String,
        key: String,
        what: String,
    }

    struct Make;

    const CANONICAL: &str = "events.canonical";
    const DLX: &str = "webhooks.dead-letter";

    impl Messages for Make {
        type Message = Msg;
        type Raw = &'static str;
        fn exchange<'a>(&self, m: &'a Msg) -> &'a str {
            &m.exchange
        }
        fn routing_key<'a>(&self, m: &'a Msg) -> &'a str {
            &m.key
        }
        fn size(&self, _: &Msg) -> usize {
            100
        }
        fn kept(&self, m: &Msg) -> Msg {
            Msg {
                exchange: String::new(),
                key: "events.unrouted".into(),
                what: format!("kept {}", m.what),
            }
        }
        fn tapped(&self, m: &Msg, route: Route) -> Msg {
            Msg {
                exchange: "events.tap".into(),
                key: format!("{route:?}"),
                what: format!("tap {}", m.what),
            }
        }
        fn dead_letter(
            &self,
            raw: &&'static str,
            kind: DeadLetterKind,
            vendor: Option<Vendor>,
            detail: &str,
        ) -> (DeadLetter, Result<Msg, String>) {
            let dl = DeadLetter {
                routing_key: format!("{}.{kind}", vendor.map_or("unknown", Vendor::key)),
                kind,
                vendor,
                detail: detail.to_owned(),
                headers: Vec::new(),
            };
            let m = Msg {
                exchange: DLX.into(),
                key: dl.routing_key.clone(),
                what: format!("dead letter of {raw}"),
            };
            (dl, Ok(m))
        }
    }

    fn event(what: &str) -> Msg {
        Msg {
            exchange: CANONICAL.into(),
            key: "deel.contract.created".into(),
            what: what.into(),
        }
    }

    fn closed(code: u16) -> PublishOutcome {
        PublishOutcome::Closed {
            code: Some(code),
            reason: format!("{code} refused"),
        }
    }

    /// The core, the test's clock, and what it asked to publish.
    struct Run {
        core: Core<Make>,
        now: Instant,
        next_tag: u64,
        /// Publishes asked for and not yet answered, in order.
        published: Vec<(PublishId, Msg)>,
        /// Reopens asked for and not yet answered, by lane.
        reopens: Vec<Lane>,
        /// Whether each reopen asked for (answered or not) declares the topology again.
        redeclares: Vec<bool>,
        /// Every attempt number used.
        attempts: std::collections::HashSet<u64>,
        finished: Vec<(u64, Settle, Finish)>,
        /// Every publish asked for, in order: the message, its channel, and `mandatory`.
        sent: Vec<(Msg, Lane, bool)>,
    }

    impl Run {
        fn new() -> Run {
            Run::with_window(16)
        }

        fn with_window(window: usize) -> Run {
            Run::with_windows(window, 1 << 30)
        }

        fn with_windows(window: usize, window_bytes: usize) -> Run {
            let tuning = Tuning {
                retry: RetryPolicy {
                    initial: Duration::from_millis(100),
                    max: Duration::from_secs(5),
                    max_elapsed: Duration::from_secs(60),
                },
                window,
                window_bytes,
                history: false,
            };
            Run {
                core: Core::new(Make, tuning, 7),
                now: Instant::now(),
                next_tag: 1,
                published: Vec::new(),
                reopens: Vec::new(),
                redeclares: Vec::new(),
                attempts: Default::default(),
                finished: Vec::new(),
                sent: Vec::new(),
            }
        }

        fn collect(&mut self) {
            self.core.tick(self.now);
            self.core.check_index();
            // A wake-up not in the future would have the shell tick in a busy loop.
            if let Some(at) = self.core.wake_at() {
                assert!(at > self.now, "asks to be woken {:?} ago", self.now - at);
            }
            for c in self.core.take_commands() {
                match c {
                    Command::Publish {
                        id,
                        lane,
                        message,
                        mandatory,
                    } => {
                        // Attempts are numbered apart, so a late outcome is told apart.
                        assert!(self.attempts.insert(id.attempt), "attempt {id:?} reused");
                        // Nothing goes on a closed channel (it changes only between ticks).
                        assert!(
                            matches!(self.core.channels[lane as usize], Channel::Up),
                            "{message:?} published on a closed {lane:?} channel"
                        );
                        // Returns are asked for on everything but the copies to the tap,
                        // and on those too that the history keeps (events').
                        let tap = message.what.starts_with("tap ");
                        let kept_by_history = self.core.tuning.history
                            && tap
                            && !message.what.starts_with("tap dead letter");
                        assert_eq!(mandatory, !tap || kept_by_history, "{message:?}");
                        self.published.push((id, (*message).clone()));
                        self.sent.push(((*message).clone(), lane, mandatory));
                    }
                    Command::Reopen { lane, redeclare } => {
                        self.reopens.push(lane);
                        self.redeclares.push(redeclare);
                    }
                }
            }
            let finished = self.core.take_finished();
            for (i, f) in finished.iter().enumerate() {
                // An ack with `multiple` acks every earlier delivery: none may be held.
                if let Settle::Ack {
                    tag,
                    multiple: true,
                } = f.settle
                {
                    let held = self.core.entries.values().map(|e| e.tag);
                    let later = finished[i + 1..].iter().map(|f| f.tag);
                    let covered: Vec<u64> = held.chain(later).filter(|t| *t < tag).collect();
                    assert!(
                        covered.is_empty(),
                        "ack up to {tag} covers held {covered:?}"
                    );
                }
            }
            for f in finished {
                self.finished.push((f.tag, f.settle, f.finish));
            }
        }

        /// Admits a raw message with these events; returns its tag.
        fn events(&mut self, whats: &[&str]) -> u64 {
            let tag = self.next_tag;
            self.next_tag += 1;
            let fate = Fate::Events {
                vendor: Vendor::Deel,
                types: whats.iter().map(|_| "deel.contract.created").collect(),
            };
            let raw: &'static str = Box::leak(format!("raw {tag}").into_boxed_str());
            self.core.admit(
                self.now,
                tag,
                raw,
                fate,
                whats.iter().map(|w| event(w)).collect(),
            );
            self.collect();
            tag
        }

        /// Admits a raw message planned as its dead letter; returns its tag.
        fn dead_letter(&mut self) -> u64 {
            let tag = self.next_tag;
            self.next_tag += 1;
            let raw: &'static str = Box::leak(format!("raw {tag}").into_boxed_str());
            let (dl, msg) = Make.dead_letter(&raw, DeadLetterKind::InvalidJson, None, "bad");
            let msg = msg.expect("the test maker makes every dead letter");
            self.core
                .admit(self.now, tag, raw, Fate::DeadLetter(dl), vec![msg]);
            self.collect();
            tag
        }

        /// Takes the oldest pending publish whose description is `what`.
        fn take(&mut self, what: &str) -> PublishId {
            let at = self
                .published
                .iter()
                .position(|(_, m)| m.what == what)
                .unwrap_or_else(|| panic!("{what} was not published: {:?}", self.pending()));
            self.published.remove(at).0
        }

        /// Answers the oldest pending publish whose description is `what`.
        fn answer(&mut self, what: &str, outcome: PublishOutcome) {
            let id = self.take(what);
            self.core.decided(self.now, id, outcome);
            self.collect();
        }

        /// Answers several pending publishes before the next tick, as a burst of confirms
        /// read at once.
        fn answer_together(&mut self, whats: &[&str], outcome: PublishOutcome) {
            for what in whats {
                let id = self.take(what);
                self.core.decided(self.now, id, outcome.clone());
            }
            self.collect();
        }

        /// Lets the broker answer until nothing is held: every reopen succeeds, the
        /// oldest pending publish gets `broker`'s answer, and time passes when nothing is
        /// pending (retries fall due).
        fn run_until_settled(&mut self, broker: impl Fn(&str) -> PublishOutcome) {
            for _ in 0..2000 {
                if self.core.held() == 0 {
                    return;
                }
                if !self.reopens.is_empty() {
                    self.reopen(Ok(()));
                } else if let Some(what) = self.pending().first().cloned() {
                    self.answer(&what, broker(&what));
                } else {
                    self.advance(Duration::from_millis(100));
                }
            }
            panic!("still held: {}", self.core.held());
        }

        /// How many times `what` was published.
        fn times_sent(&self, what: &str) -> usize {
            self.sent.iter().filter(|(m, _, _)| m.what == what).count()
        }

        /// The tap copies published, in order.
        fn taps_sent(&self) -> Vec<String> {
            self.sent
                .iter()
                .filter(|(m, _, _)| m.what.starts_with("tap "))
                .map(|(m, _, _)| m.what.clone())
                .collect()
        }

        /// Confirms everything pending, oldest first, until nothing is.
        fn confirm_all(&mut self) {
            while let Some((id, _)) = self.published.first().cloned() {
                self.published.remove(0);
                self.core.decided(self.now, id, PublishOutcome::Confirmed);
                self.collect();
            }
        }

        fn pending(&self) -> Vec<String> {
            self.published.iter().map(|(_, m)| m.what.clone()).collect()
        }

        /// Lets time pass as the shell does: it ticks the core only once the time the
        /// core asked for ([`Core::wake_at`]) has come, so a retry, a reopen or a
        /// give-up the core forgot to ask for never happens here either.
        fn advance(&mut self, by: Duration) {
            let wake = self.core.wake_at();
            self.now += by;
            if wake.is_some_and(|at| at <= self.now) {
                self.collect();
            }
        }

        fn reopen(&mut self, result: Result<(), String>) {
            let lane = self.reopens.pop().expect("a reopen was asked for");
            self.core.reopened(self.now, lane, result);
            self.collect();
        }

        fn settled(&self) -> Vec<(u64, Settle)> {
            self.finished.iter().map(|(t, s, _)| (*t, *s)).collect()
        }

        fn finish_of(&self, tag: u64) -> &Finish {
            &self
                .finished
                .iter()
                .find(|(t, _, _)| *t == tag)
                .unwrap_or_else(|| panic!("{tag} not settled"))
                .2
        }
    }

    /// What the broker may answer, in a random run.
    #[derive(Debug, Clone)]
    enum Op {
        /// A raw message with this many events (0: its dead letter).
        Admit(usize),
        /// Answer the pending publish at this index.
        Answer(prop::sample::Index, u8),
        Advance(u64),
        Reopen(bool),
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        prop::collection::vec(
            prop_oneof![
                3 => (0usize..3).prop_map(Op::Admit),
                8 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, o)| Op::Answer(i, o)),
                2 => (1u64..3000).prop_map(Op::Advance),
                1 => any::<bool>().prop_map(Op::Reopen),
            ],
            1..120,
        )
    }

    fn outcome(o: u8) -> PublishOutcome {
        match o % 16 {
            0 => PublishOutcome::Nacked,
            1 => PublishOutcome::Returned,
            2 => PublishOutcome::TimedOut,
            3 => closed(403),
            4 => PublishOutcome::Closed {
                code: None,
                reason: "lost".into(),
            },
            _ => PublishOutcome::Confirmed,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 500,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]
        /// Whatever the broker answers and whenever: the index always agrees with a scan
        /// (checked at every tick), a message is acknowledged only once each of its events
        /// was stored (delivered or kept) or its dead letter was, and once the broker takes
        /// everything again every message is settled exactly once.
        #[test]
        fn every_message_is_settled_once_and_acked_only_when_stored(ops in ops()) {
            let mut run = Run::new();
            let mut admitted: Vec<(u64, Vec<String>)> = Vec::new();
            let mut stored: std::collections::HashSet<String> = Default::default();
            let answer = |run: &mut Run, at: usize, o: PublishOutcome, stored: &mut std::collections::HashSet<String>| {
                let (id, m) = run.published.remove(at);
                if o == PublishOutcome::Confirmed && !m.what.starts_with("tap ") {
                    stored.insert(m.what.strip_prefix("kept ").unwrap_or(&m.what).to_owned());
                }
                run.core.decided(run.now, id, o);
                run.collect();
            };
            for op in ops {
                match op {
                    Op::Admit(0) => {
                        let tag = run.next_tag;
                        run.next_tag += 1;
                        let raw: &'static str = Box::leak(format!("raw {tag}").into_boxed_str());
                        let (dl, msg) = Make.dead_letter(&raw, DeadLetterKind::InvalidJson, None, "x");
                        run.core.admit(run.now, tag, raw, Fate::DeadLetter(dl), vec![msg.unwrap()]);
                        run.collect();
                        admitted.push((tag, vec![]));
                    }
                    Op::Admit(n) => {
                        let names: Vec<String> = (0..n).map(|i| format!("e{}.{i}", run.next_tag)).collect();
                        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                        let tag = run.events(&refs);
                        admitted.push((tag, names));
                    }
                    Op::Answer(i, o) if !run.published.is_empty() => {
                        let at = i.index(run.published.len());
                        answer(&mut run, at, outcome(o), &mut stored);
                    }
                    Op::Answer(..) => {}
                    Op::Advance(ms) => run.advance(Duration::from_millis(ms)),
                    Op::Reopen(ok) => {
                        if !run.reopens.is_empty() {
                            run.reopen(if ok { Ok(()) } else { Err("no".into()) });
                        }
                    }
                }
            }
            // The broker takes everything from now on; probes come when wanted.
            for _ in 0..2000 {
                if run.finished.len() == admitted.len() {
                    break;
                }
                if !run.reopens.is_empty() {
                    run.reopen(Ok(()));
                } else if !run.published.is_empty() {
                    answer(&mut run, 0, PublishOutcome::Confirmed, &mut stored);
                } else if run.core.can_take() && run.core.isolation.is_some() {
                    let name = format!("probe{}", run.next_tag);
                    let tag = run.events(&[&name]);
                    admitted.push((tag, vec![name]));
                } else {
                    run.advance(Duration::from_secs(1));
                }
            }
            let mut settled: Vec<u64> = run.finished.iter().map(|(t, _, _)| *t).collect();
            settled.sort_unstable();
            let want: Vec<u64> = admitted.iter().map(|(t, _)| *t).collect();
            prop_assert_eq!(&settled, &want, "each settled exactly once");
            for (tag, settle, finish) in &run.finished {
                let names = &admitted.iter().find(|(t, _)| t == tag).unwrap().1;
                let dead_letter = format!("dead letter of raw {tag}");
                match (settle, finish) {
                    (Settle::Ack { .. }, Finish::Stored { .. }) => {
                        for n in names {
                            prop_assert!(stored.contains(n), "{} acked, {} not stored", tag, n);
                        }
                    }
                    (Settle::Ack { .. }, Finish::DeadLettered(_)) => {
                        prop_assert!(stored.contains(&dead_letter), "{} acked, its dead letter not stored", tag);
                    }
                    (Settle::Reject { .. }, Finish::Requeued { .. } | Finish::HandedToBroker(_)) => {}
                    other => prop_assert!(false, "{}: {:?}", tag, other),
                }
            }
        }
    }

    #[test]
    fn a_channel_is_reopened_after_its_backoff_declaring_the_topology_only_when_missing() {
        let mut run = Run::new();
        run.events(&["a"]);
        // The connection's fault, not a message's: the reopen waits out a backoff step.
        run.answer("a", closed(320));
        assert!(run.reopens.is_empty(), "reopened at once");
        let at = run.core.wake_at().expect("a reopen to wake for");
        assert!(at >= run.now + Duration::from_millis(50), "no backoff");
        run.advance(at - run.now);
        assert_eq!(run.redeclares, [false], "nothing was missing");
        run.reopen(Ok(()));
        run.confirm_all();
        assert_eq!(run.core.held(), 0);
    }

    #[test]
    fn a_missing_exchange_reported_while_the_channel_is_down_is_declared_again() {
        let mut run = Run::new();
        run.events(&["a"]);
        run.events(&["b"]);
        run.answer("a", closed(320));
        run.answer("b", closed(404));
        let at = run.core.wake_at().expect("a reopen to wake for");
        run.advance(at - run.now);
        assert_eq!(run.redeclares, [true]);
    }

    #[test]
    fn a_channel_closed_over_a_missing_exchange_declares_it_again() {
        let mut run = Run::new();
        run.events(&["a"]);
        run.answer("a", closed(404));
        let at = run.core.wake_at().expect("a reopen to wake for");
        run.advance(at - run.now);
        assert_eq!(run.redeclares, [true]);
    }

    #[test]
    fn isolating_says_which_refusal_it_is_looking_for() {
        let mut run = Run::new();
        run.events(&["a"]);
        run.events(&["b"]);
        run.answer("a", closed(406));
        match run.core.status() {
            Status::Isolating { held, last } => {
                assert_eq!(held, 2);
                assert!(last.contains("406 refused"), "{last}");
            }
            other => panic!("not isolating: {other:?}"),
        }
    }

    #[test]
    fn retries_back_off_exponentially() {
        let mut run = Run::new();
        run.events(&["a"]);
        let mut waits = Vec::new();
        for _ in 0..4 {
            run.answer("a", PublishOutcome::Nacked);
            let at = run.core.wake_at().expect("a retry to wake for");
            waits.push(at - run.now);
            run.advance(at - run.now);
        }
        // Equal jitter over 100 ms doubling: each wait in [step/2, step).
        for (round, wait) in waits.iter().enumerate() {
            let step = Duration::from_millis(100 << round);
            assert!(
                *wait >= step / 2 && *wait < step,
                "retry {round} after {wait:?}"
            );
        }
    }

    #[test]
    fn the_output_held_bounds_what_is_taken_until_it_is_settled() {
        // Each test message counts 100 bytes: 250 bytes hold two messages' outputs.
        let mut run = Run::with_windows(16, 250);
        run.events(&["a1", "a2"]);
        assert!(run.core.can_take(), "200 bytes held of 250");
        run.events(&["b1"]);
        assert!(!run.core.can_take(), "300 bytes held of 250");
        run.confirm_all();
        assert_eq!(run.core.held(), 0);
        assert!(run.core.can_take(), "settled outputs are no longer held");
    }

    #[test]
    fn a_tick_looks_only_at_entries_with_something_to_do() {
        let mut run = Run::new();
        run.events(&["a1"]);
        // Delivering: nothing ready to go, nothing failing.
        assert!(run.core.index.unsent.is_empty(), "in flight is not unsent");
        assert!(
            run.core.index.waiting.is_empty(),
            "in flight is not waiting"
        );
        assert_eq!(run.core.index.delivering, BTreeSet::from([0]));
        run.answer("a1", PublishOutcome::Confirmed);
        // Its tap is in flight: still nothing ready.
        assert_eq!(run.pending(), ["tap a1"]);
        assert!(
            run.core.index.waiting.is_empty(),
            "a tap in flight is not waiting"
        );
        assert!(run.core.index.storing.is_empty());
        run.confirm_all();
        assert_eq!(
            run.core.wake_at(),
            None,
            "nothing held, nothing to wake for"
        );
    }

    #[test]
    fn the_core_asks_to_be_woken_for_each_thing_that_falls_due() {
        let mut run = Run::new();
        run.events(&["a1"]);
        assert_eq!(
            run.core.wake_at(),
            None,
            "a publish in flight has no deadline here"
        );
        // A nack: the retry is due within the first backoff step (100 ms, jittered).
        run.answer("a1", PublishOutcome::Nacked);
        let retry = run.core.wake_at().expect("a retry to wake for");
        assert!(retry > run.now && retry <= run.now + Duration::from_millis(100));
        run.advance(retry - run.now);
        assert_eq!(run.pending(), ["a1"], "published again when woken");
        // A closed channel: the reopen waits for its backoff, and is asked for once due.
        run.answer("a1", closed(504));
        let reopen = run.core.wake_at().expect("a reopen to wake for");
        assert!(run.reopens.is_empty(), "not before its time");
        run.advance(reopen - run.now);
        assert_eq!(run.reopens.len(), 1);
        // While the reopen is under way, its time is not a reason to wake again.
        assert!(
            run.core.wake_at().is_none_or(|at| at > reopen),
            "woken again for a reopen under way"
        );
    }

    #[test]
    fn a_message_failing_with_no_retry_due_is_woken_for_at_its_budget() {
        let mut run = Run::new();
        let started = run.now;
        run.events(&["a1"]);
        run.answer("a1", PublishOutcome::Nacked);
        run.run_until_settled(|_| PublishOutcome::Nacked);
        // Given up no later than a retry step past the budget: the core woke for it.
        let budget = Duration::from_secs(60);
        let settled_at = run.now - started;
        assert!(
            settled_at >= budget && settled_at <= budget + Duration::from_secs(5),
            "given up after {settled_at:?}"
        );
    }

    #[test]
    fn events_are_delivered_then_tapped_in_order_then_acked() {
        let mut run = Run::new();
        run.events(&["a1", "a2"]);
        run.events(&["b1"]);
        assert_eq!(run.pending(), ["a1", "a2", "b1"]);
        // b1's confirm comes first: its tap still waits for a's.
        run.answer("b1", PublishOutcome::Confirmed);
        assert_eq!(run.pending(), ["a1", "a2"]);
        run.answer("a2", PublishOutcome::Confirmed);
        run.answer("a1", PublishOutcome::Confirmed);
        assert_eq!(run.pending(), ["tap a1", "tap a2", "tap b1"]);
        assert!(run.published.iter().all(|(_, m)| m.key == "Canonical"));
        run.confirm_all();
        assert_eq!(
            run.settled(),
            [
                (
                    1,
                    Settle::Ack {
                        tag: 1,
                        multiple: true
                    }
                ),
                (
                    2,
                    Settle::Ack {
                        tag: 2,
                        multiple: true
                    }
                )
            ]
        );
        assert_eq!(
            run.finish_of(1),
            &Finish::Stored {
                vendor: Vendor::Deel,
                delivered: vec!["deel.contract.created"; 2],
                kept: vec![]
            }
        );
        assert_eq!(run.core.held(), 0);
    }

    #[test]
    fn an_event_nobody_is_bound_for_is_kept_and_tapped_as_unrouted() {
        let mut run = Run::new();
        run.events(&["a"]);
        run.answer("a", PublishOutcome::Returned);
        assert_eq!(
            run.published[0].1,
            Msg {
                exchange: String::new(),
                key: "events.unrouted".into(),
                what: "kept a".into()
            }
        );
        run.answer("kept a", PublishOutcome::Confirmed);
        assert_eq!(run.published[0].1.key, "Unrouted");
        run.confirm_all();
        assert_eq!(
            run.finish_of(1),
            &Finish::Stored {
                vendor: Vendor::Deel,
                delivered: vec![],
                kept: vec!["deel.contract.created"]
            }
        );
        assert_eq!(run.core.take_counts().unroutable, 0, "kept, not unroutable");
    }

    /// Events nobody is bound for are kept in consumption order, whatever order their
    /// returns are read in.
    #[test]
    fn events_are_kept_in_consumption_order() {
        let mut run = Run::new();
        run.events(&["a"]);
        run.events(&["b"]);
        run.answer("b", PublishOutcome::Returned);
        assert!(
            run.pending() == ["a"],
            "b's keep waits for a: {:?}",
            run.pending()
        );
        run.answer("a", PublishOutcome::Returned);
        assert_eq!(run.pending(), ["kept a", "kept b"]);
        run.answer("kept b", PublishOutcome::Confirmed);
        assert_eq!(run.pending(), ["kept a"], "b's tap waits for a's keep");
        run.answer("kept a", PublishOutcome::Confirmed);
        assert_eq!(run.pending(), ["tap kept a", "tap kept b"]);
    }

    /// `events.unrouted` missing: the keep is returned too. While other events to the
    /// canonical exchange are stored, the message is held and retried alone, and past the
    /// budget dead-lettered as `undeliverable`; nothing behind it waits.
    #[test]
    fn an_event_kept_nowhere_is_retried_then_dead_lettered_while_others_flow() {
        let mut run = Run::new();
        run.events(&["lost"]);
        run.answer("lost", PublishOutcome::Returned);
        run.answer("kept lost", PublishOutcome::Returned);
        assert!(run.pending().is_empty(), "held for a retry");
        run.events(&["ok"]);
        run.answer("ok", PublishOutcome::Confirmed);
        run.confirm_all();
        assert_eq!(
            run.settled(),
            [(
                2,
                Settle::Ack {
                    tag: 2,
                    multiple: false
                }
            )]
        );
        run.advance(Duration::from_millis(200));
        assert_eq!(run.pending(), ["lost"], "delivered again, not kept again");
        run.answer("lost", PublishOutcome::Returned);
        run.answer("kept lost", PublishOutcome::Returned);
        // Keep the canonical exchange busy, then let the budget run out.
        for _ in 0..30 {
            run.advance(Duration::from_secs(2));
            while run.pending().first().map(String::as_str) == Some("lost") {
                run.answer("lost", PublishOutcome::Returned);
                run.answer("kept lost", PublishOutcome::Returned);
            }
            run.events(&["more"]);
            run.confirm_all();
        }
        run.confirm_all();
        let Finish::DeadLettered(dl) = run.finish_of(1) else {
            panic!("{:?}", run.finish_of(1));
        };
        assert_eq!(dl.kind, DeadLetterKind::Undeliverable);
        assert!(
            dl.detail
                .starts_with("event 1 of 1 (deel.contract.created) not stored for 6"),
            "{}",
            dl.detail
        );
        assert!(
            dl.detail.contains("returned as unroutable"),
            "{}",
            dl.detail
        );
        assert!(run.settled().contains(&(
            1,
            Settle::Ack {
                tag: 1,
                multiple: true
            }
        )));
        assert!(run.core.take_counts().unroutable >= 2);
    }

    /// The same with nothing stored anywhere meanwhile: the broker refuses everything,
    /// and the message is rejected for redelivery, not dead-lettered.
    #[test]
    fn a_failure_nothing_else_escapes_is_requeued_past_the_budget() {
        let mut run = Run::new();
        run.events(&["a"]);
        run.answer("a", PublishOutcome::Nacked);
        for _ in 0..200 {
            run.advance(Duration::from_millis(500));
            if run.pending() == ["a"] {
                run.answer("a", PublishOutcome::Nacked);
            }
        }
        assert_eq!(
            run.settled(),
            [(
                1,
                Settle::Reject {
                    tag: 1,
                    requeue: true
                }
            )]
        );
        assert!(matches!(
            run.finish_of(1),
            Finish::Requeued {
                last: PublishOutcome::Nacked,
                ..
            }
        ));
        assert!(matches!(run.core.status(), Status::Flowing { held: 0, .. }));
    }

    /// One team's full queue (its publishes nacked) never holds back the others: later
    /// messages are settled at once, and once the held ones fill half the window the one
    /// failing longest is dead-lettered early.
    #[test]
    fn nacked_messages_never_stall_the_rest() {
        let mut run = Run::with_window(8);
        for i in 0..14 {
            run.events(&[&format!("m{i}")]);
            if i == 11 {
                // Retries of the held ones fail again, while later ones are stored.
                run.advance(Duration::from_millis(200));
            }
            // The full team's (even) events are nacked; everything else is stored.
            while let Some(what) = run.pending().first().cloned() {
                let nacked = what
                    .strip_prefix('m')
                    .and_then(|n| n.parse::<u32>().ok())
                    .is_some_and(|n| n % 2 == 0);
                let outcome = if nacked {
                    PublishOutcome::Nacked
                } else {
                    PublishOutcome::Confirmed
                };
                run.answer(&what, outcome);
            }
        }
        let settled: Vec<u64> = run.settled().iter().map(|(t, _)| *t).collect();
        for tag in [2, 4, 6, 8, 10, 12, 14] {
            assert!(settled.contains(&tag), "{tag} not settled: {settled:?}");
        }
        // Seven failing in a window of eight: once they failed again, the oldest given up
        // until half the window is left.
        let early: Vec<u64> = run
            .finished
            .iter()
            .filter(|(_, _, f)| matches!(f, Finish::DeadLettered(dl) if dl.kind == DeadLetterKind::Undeliverable))
            .map(|(t, _, _)| *t)
            .collect();
        assert_eq!(early, [1, 3, 5], "{:?}", run.finished);
        assert_eq!(run.core.held(), 4, "{}", run.core.held());
    }

    /// Copies to the tap (another exchange) being stored does not make a canonical
    /// failure the message's own: only stores to the exchange it failed on count.
    #[test]
    fn stores_elsewhere_do_not_make_a_failure_a_messages_own() {
        let mut run = Run::new();
        run.events(&["a"]);
        run.answer("a", PublishOutcome::Confirmed);
        run.events(&["b"]);
        run.answer("b", PublishOutcome::Nacked);
        run.answer("tap a", PublishOutcome::Confirmed);
        run.advance(Duration::from_millis(200));
        run.answer("b", PublishOutcome::Nacked);
        run.events(&["c"]);
        run.answer("c", PublishOutcome::Nacked);
        run.advance(Duration::from_millis(200));
        run.answer("c", PublishOutcome::Nacked);
        assert!(
            matches!(run.core.status(), Status::Retrying { .. }),
            "{:?}",
            run.core.status()
        );
    }

    /// A queue fills up: a message sent before the refusals began may be confirmed after
    /// one is refused, and one draining takes new messages while a refused one waits for
    /// its retry. Neither makes a refusal the message's own; refused again on a retry
    /// while others sent around it are stored, it is.
    #[test]
    fn a_refusal_is_a_messages_own_once_refused_again_among_stored_ones() {
        let mut run = Run::new();
        run.events(&["before"]);
        run.events(&["refused"]);
        run.answer("refused", PublishOutcome::Nacked);
        run.answer("before", PublishOutcome::Confirmed);
        assert!(matches!(run.core.status(), Status::Retrying { .. }));
        run.events(&["between"]);
        run.answer("between", PublishOutcome::Confirmed);
        assert!(
            matches!(run.core.status(), Status::Retrying { .. }),
            "one round is not enough: {:?}",
            run.core.status()
        );
        run.advance(Duration::from_millis(200));
        run.answer("refused", PublishOutcome::Nacked);
        run.events(&["after"]);
        run.answer("after", PublishOutcome::Confirmed);
        assert!(
            matches!(run.core.status(), Status::Flowing { held: 1, .. }),
            "{:?}",
            run.core.status()
        );
    }

    #[test]
    fn with_history_an_events_tap_copy_asks_for_returns_and_a_dead_letters_does_not() {
        let mut run = Run::new();
        run.core.tuning.history = true;
        run.events(&["a"]);
        run.dead_letter();
        run.run_until_settled(|_| PublishOutcome::Confirmed);
        let taps: Vec<(String, bool)> = run
            .sent
            .iter()
            .filter(|(m, _, _)| m.what.starts_with("tap "))
            .map(|(m, _, mandatory)| (m.what.clone(), *mandatory))
            .collect();
        assert_eq!(
            taps,
            [
                ("tap a".to_owned(), true),
                ("tap dead letter of raw 2".to_owned(), false)
            ]
        );
    }

    /// The history stream deleted under the worker: its copy comes back, the topology is
    /// declared again (which makes the stream anew), and the copy is retried; the raw
    /// message is acked only once the history took it.
    #[test]
    fn a_history_copy_returned_declares_the_topology_again_and_is_retried() {
        let mut run = Run::new();
        run.core.tuning.history = true;
        run.events(&["a"]);
        run.answer("a", PublishOutcome::Confirmed);
        run.answer("tap a", PublishOutcome::Returned);
        assert!(
            run.settled().is_empty(),
            "acked with the history's copy lost"
        );
        for _ in 0..10 {
            let at = run.core.wake_at().expect("a reopen to wake for");
            run.advance(at - run.now);
            if !run.redeclares.is_empty() {
                break;
            }
        }
        assert_eq!(
            run.redeclares,
            [true],
            "the history's stream not declared again"
        );
        assert!(run.pending().is_empty(), "retried before the reopen");
        run.reopen(Ok(()));
        for _ in 0..100 {
            if !run.pending().is_empty() {
                break;
            }
            run.advance(Duration::from_millis(100));
        }
        assert_eq!(run.pending(), ["tap a"]);
        run.answer("tap a", PublishOutcome::Confirmed);
        assert_eq!(
            run.settled(),
            [(
                1,
                Settle::Ack {
                    tag: 1,
                    multiple: true
                }
            )]
        );
        assert_eq!(run.times_sent("a"), 1, "the team's event sent again");
        let counts = run.core.take_counts();
        assert_eq!(counts.history_missing, 1);
        assert_eq!(counts.unroutable, 0, "a history copy counted as an event");
    }

    #[test]
    fn a_tap_copy_that_keeps_failing_is_given_up_and_the_message_acked() {
        let mut run = Run::new();
        run.events(&["a"]);
        run.answer("a", PublishOutcome::Confirmed);
        run.answer("tap a", PublishOutcome::Nacked);
        for _ in 0..200 {
            run.advance(Duration::from_millis(500));
            if run.pending() == ["tap a"] {
                run.answer("tap a", PublishOutcome::Nacked);
            }
        }
        assert_eq!(
            run.settled(),
            [(
                1,
                Settle::Ack {
                    tag: 1,
                    multiple: true
                }
            )]
        );
        assert_eq!(run.core.take_counts().taps_given_up, 1);
    }

    /// The channel lost: nothing is published until it is reopened, with backoff; then
    /// the failed publishes go again, in order.
    #[test]
    fn a_closed_channel_is_reopened_with_backoff_and_publishes_resume_in_order() {
        let mut run = Run::new();
        run.events(&["a"]);
        run.events(&["b"]);
        let lost = PublishOutcome::Closed {
            code: None,
            reason: "connection reset".into(),
        };
        run.answer("a", lost.clone());
        run.answer("b", lost);
        assert!(!run.core.can_take());
        assert!(matches!(run.core.status(), Status::Retrying { .. }));
        run.advance(Duration::from_millis(100));
        assert_eq!(run.reopens, [Lane::Events]);
        run.reopen(Err("refused".into()));
        run.advance(Duration::from_millis(50));
        assert!(run.reopens.is_empty(), "not again at once");
        run.advance(Duration::from_secs(1));
        assert_eq!(run.reopens, [Lane::Events]);
        run.reopen(Ok(()));
        assert_eq!(run.pending(), ["a", "b"]);
        assert!(run.core.can_take());
    }

    /// Three messages in flight when the channel closes over one of them (403): each is
    /// tried alone; the one refused again is dead-lettered once, the others go on.
    #[test]
    fn a_refused_publish_is_found_by_trying_the_suspects_alone() {
        let mut run = Run::new();
        run.events(&["a"]);
        run.events(&["bad"]);
        run.events(&["c"]);
        for what in ["a", "bad", "c"] {
            run.answer(what, closed(403));
        }
        assert!(matches!(run.core.status(), Status::Isolating { .. }));
        run.reopen(Ok(()));
        assert_eq!(run.pending(), ["a"], "alone");
        run.answer("a", PublishOutcome::Confirmed);
        assert_eq!(run.pending(), ["bad"]);
        run.answer("bad", closed(403));
        run.reopen(Ok(()));
        assert_eq!(run.pending(), ["c"]);
        run.answer("c", PublishOutcome::Confirmed);
        // In order: c's tap waits for the dead letter in its place to be stored.
        assert_eq!(run.pending(), ["tap a", "dead letter of raw 2"]);
        run.answer("dead letter of raw 2", PublishOutcome::Confirmed);
        assert_eq!(
            run.pending(),
            ["tap a", "tap dead letter of raw 2", "tap c"]
        );
        run.confirm_all();
        let Finish::DeadLettered(dl) = run.finish_of(2) else {
            panic!()
        };
        assert_eq!(dl.kind, DeadLetterKind::PublishRefused);
        assert_eq!(run.settled().len(), 3);
        assert!(run.pending().is_empty(), "one dead letter, published once");
        // a, bad and c tried again alone; bad's second refusal made its dead letter.
        assert_eq!(run.core.take_counts().retries, 3);
    }

    /// A suspect refused alone before anything to its exchange was stored alone is tried
    /// once more after that: the broker may have refused it for a reason since gone.
    #[test]
    fn a_suspect_refused_before_its_exchange_was_vouched_for_is_tried_once_more() {
        let mut run = Run::new();
        run.events(&["a"]);
        run.events(&["b"]);
        run.answer("a", closed(403));
        run.answer("b", closed(403));
        run.reopen(Ok(()));
        assert_eq!(run.pending(), ["a"], "alone");
        run.answer("a", closed(403));
        run.reopen(Ok(()));
        assert_eq!(run.pending(), ["b"]);
        run.answer("b", PublishOutcome::Confirmed);
        assert_eq!(
            run.pending(),
            ["a"],
            "tried again, once b vouched for the exchange"
        );
        run.answer("a", closed(403));
        run.reopen(Ok(()));
        run.confirm_all();
        assert_eq!(run.times_sent("a"), 3);
        let Finish::DeadLettered(dl) = run.finish_of(1) else {
            panic!("{:?}", run.finish_of(1))
        };
        assert_eq!(dl.kind, DeadLetterKind::PublishRefused);
    }

    /// A tap copy refused alone is given up, and the message's other outputs still
    /// failing go on being retried until stored.
    #[test]
    fn a_tap_refused_alone_is_given_up_while_the_rest_is_retried() {
        let mut run = Run::new();
        run.events(&["e1", "e2"]);
        run.answer("e1", PublishOutcome::Confirmed);
        run.answer("e2", PublishOutcome::Nacked);
        run.answer("tap e1", closed(403));
        run.reopen(Ok(()));
        assert_eq!(run.pending(), ["tap e1", "e2"], "the message alone");
        let (tap, e2) = (run.take("tap e1"), run.take("e2"));
        run.core.decided(run.now, tap, closed(403));
        run.core.decided(run.now, e2, PublishOutcome::Nacked);
        run.collect();
        run.reopen(Ok(()));
        run.run_until_settled(|_| PublishOutcome::Confirmed);
        assert_eq!(run.times_sent("tap e1"), 2, "given up once refused alone");
        assert_eq!(run.core.take_counts().taps_given_up, 1);
        assert_eq!(run.settled(), [ack(1, true)]);
        assert_eq!(run.taps_sent(), ["tap e1", "tap e1", "tap e2"]);
    }

    /// Tried alone, a message publishes again only what was refused: an event of it
    /// already stored and tapped is not sent twice.
    #[test]
    fn a_message_tried_alone_sends_again_only_what_was_refused() {
        let mut run = Run::new();
        run.events(&["done", "refused"]);
        run.answer("done", PublishOutcome::Confirmed);
        run.answer("tap done", PublishOutcome::Confirmed);
        run.answer("refused", closed(403));
        run.reopen(Ok(()));
        assert_eq!(
            run.pending(),
            ["refused"],
            "alone, and only the refused event"
        );
        run.answer("refused", PublishOutcome::Confirmed);
        run.confirm_all();
        assert_eq!(run.times_sent("done"), 1);
        assert_eq!(run.times_sent("tap done"), 1);
        assert_eq!(run.settled().len(), 1);
    }

    /// Held messages filling half the window's bytes crowd it: the one failing longest
    /// by its own fault is dead-lettered early. Half or less does not.
    #[test]
    fn held_bytes_over_half_the_window_give_up_the_oldest_own_failure() {
        let crowd = |window_bytes: usize| -> Vec<u64> {
            let mut run = Run::with_windows(16, window_bytes);
            let answer_all = |run: &mut Run| {
                while let Some(what) = run.pending().first().cloned() {
                    let nacked = what == "m0" || what == "m2";
                    let outcome = if nacked {
                        PublishOutcome::Nacked
                    } else {
                        PublishOutcome::Confirmed
                    };
                    run.answer(&what, outcome);
                }
            };
            for i in 0..4 {
                run.events(&[&format!("m{i}")]);
                answer_all(&mut run);
            }
            // Their retries are refused again, after m1 and m3 were stored: their own.
            run.advance(Duration::from_millis(200));
            answer_all(&mut run);
            let given_up: Vec<(u64, String)> = run
                .finished
                .iter()
                .filter_map(|(t, _, f)| match f {
                    Finish::DeadLettered(dl) if dl.kind == DeadLetterKind::Undeliverable => {
                        Some((*t, dl.detail.clone()))
                    }
                    _ => None,
                })
                .collect();
            for (_, detail) in &given_up {
                assert!(
                    detail.starts_with("event 1 of 1 (deel.contract.created)"),
                    "{detail}"
                );
            }
            given_up.into_iter().map(|(t, _)| t).collect::<Vec<u64>>()
        };
        // Two held messages of 100 bytes each.
        assert_eq!(crowd(350), [1], "400 bytes doubled is over 350");
        assert_eq!(
            crowd(400),
            [] as [u64; 0],
            "400 bytes doubled is not over 400"
        );
    }

    /// The dead letter of a message given up on names the event that was not stored.
    #[test]
    fn an_undeliverable_dead_letter_names_the_event_not_stored() {
        let mut run = Run::new();
        run.events(&["stored", "refused"]);
        run.answer("stored", PublishOutcome::Confirmed);
        run.answer("tap stored", PublishOutcome::Confirmed);
        run.answer("refused", PublishOutcome::Nacked);
        run.events(&["other"]);
        run.answer("other", PublishOutcome::Confirmed);
        run.answer("tap other", PublishOutcome::Confirmed);
        run.advance(Duration::from_millis(200));
        run.answer("refused", PublishOutcome::Nacked);
        run.run_until_settled(|what| {
            if what == "refused" {
                PublishOutcome::Nacked
            } else {
                PublishOutcome::Confirmed
            }
        });
        let Finish::DeadLettered(dl) = run.finish_of(1) else {
            panic!("{:?}", run.finish_of(1))
        };
        assert_eq!(dl.kind, DeadLetterKind::Undeliverable);
        assert!(
            dl.detail
                .starts_with("event 2 of 2 (deel.contract.created)")
                && dl.detail.contains("nacked by the broker"),
            "{}",
            dl.detail
        );
    }

    /// Tap copies waiting for a closed channel are not failing: past the budget, only
    /// the copies refused are given up, and the waiting ones go once it is back.
    #[test]
    fn taps_waiting_for_a_closed_channel_are_not_given_up() {
        let mut run = Run::new();
        run.events(&["a1", "a2"]);
        run.answer("a1", PublishOutcome::Confirmed);
        run.answer("a2", PublishOutcome::Confirmed);
        run.answer("tap a1", PublishOutcome::Nacked);
        run.answer("tap a2", closed(320));
        // The channel stays closed past the budget.
        for _ in 0..150 {
            run.advance(Duration::from_millis(500));
            while !run.reopens.is_empty() {
                run.reopen(Err("connection refused".into()));
            }
        }
        assert!(run.settled().is_empty());
        assert_eq!(
            run.core.take_counts().taps_given_up,
            0,
            "none was refused at the end"
        );
        let at = run.core.wake_at().expect("a reopen to wake for");
        run.advance(at - run.now);
        run.reopen(Ok(()));
        assert_eq!(run.pending(), ["tap a1", "tap a2"]);
        run.confirm_all();
        assert_eq!(run.settled().len(), 1);
    }

    /// Within one message too, an event's keep waits for the events before it.
    #[test]
    fn a_keep_waits_for_earlier_events_of_the_same_message() {
        let mut run = Run::new();
        run.events(&["a1", "a2"]);
        run.answer("a2", PublishOutcome::Returned);
        assert_eq!(run.pending(), ["a1"], "a2's keep waits for a1");
        run.answer("a1", PublishOutcome::Confirmed);
        assert_eq!(run.pending(), ["tap a1", "kept a2"]);
    }

    /// Every suspect refused alone: that alone does not prove it is theirs. The next
    /// delivery is tried alone as a probe; once one to the same exchange is stored, the
    /// suspects are dead-lettered.
    #[test]
    fn when_every_suspect_is_refused_a_probe_decides() {
        let mut run = Run::new();
        run.events(&["bad1"]);
        run.events(&["bad2"]);
        run.answer("bad1", closed(403));
        run.answer("bad2", closed(403));
        run.reopen(Ok(()));
        run.answer("bad1", closed(403));
        run.reopen(Ok(()));
        run.answer("bad2", closed(403));
        run.reopen(Ok(()));
        assert!(run.pending().is_empty());
        assert!(run.core.can_take(), "a probe is wanted");
        run.events(&["good"]);
        assert_eq!(run.pending(), ["good"]);
        assert!(!run.core.can_take(), "one probe at a time");
        run.answer("good", PublishOutcome::Confirmed);
        // Refused before anything was stored: each is tried once more, and refused again.
        for bad in ["bad1", "bad2"] {
            assert_eq!(run.pending(), [bad]);
            run.answer(bad, closed(403));
            run.reopen(Ok(()));
        }
        assert_eq!(
            run.pending(),
            ["dead letter of raw 1", "dead letter of raw 2"]
        );
        run.confirm_all();
        assert_eq!(run.settled().len(), 3);
        for tag in [1, 2] {
            assert!(
                matches!(run.finish_of(tag), Finish::DeadLettered(dl) if dl.kind == DeadLetterKind::PublishRefused)
            );
        }
    }

    /// However many suspects were refused alone, a probe is still wanted: only refused
    /// probes count toward waiting the broker out.
    #[test]
    fn refused_suspects_do_not_count_as_refused_probes() {
        let mut run = Run::new();
        let bad: Vec<String> = (1..=6).map(|i| format!("bad{i}")).collect();
        for what in &bad {
            run.events(&[what]);
        }
        for what in &bad {
            run.answer(what, closed(403));
        }
        for what in &bad {
            run.reopen(Ok(()));
            assert_eq!(run.pending(), [what.as_str()], "alone");
            run.answer(what, closed(403));
        }
        run.reopen(Ok(()));
        assert!(run.pending().is_empty());
        assert!(run.core.can_take(), "a probe is wanted");
    }

    /// Tried alone, a message whose channel is closed for the broker's own reason (not
    /// a refusal of it) is not a suspect any more: it is tried again, not dead-lettered.
    #[test]
    fn a_message_tried_alone_is_not_blamed_for_the_brokers_own_close() {
        let mut run = Run::new();
        run.events(&["a"]);
        run.answer("a", closed(403));
        run.reopen(Ok(()));
        assert_eq!(run.pending(), ["a"], "alone");
        run.answer("a", closed(320));
        let at = run.core.wake_at().expect("a reopen to wake for");
        run.advance(at - run.now);
        run.reopen(Ok(()));
        // No suspect left: publishing goes on, a first.
        assert!(
            !matches!(run.core.status(), Status::Isolating { .. }),
            "{:?}",
            run.core.status()
        );
        assert_eq!(run.pending(), ["a"]);
        run.confirm_all();
        assert_eq!(run.settled(), [ack(1, true)]);
        assert!(matches!(run.finish_of(1), Finish::Stored { .. }));
    }

    /// A message past its budget while a publish of it is in flight waits for that
    /// publish: it may yet be stored.
    #[test]
    fn a_message_is_not_given_up_while_a_publish_of_it_is_in_flight() {
        let mut run = Run::new();
        run.events(&["a"]);
        run.answer("a", PublishOutcome::Nacked);
        let at = run.core.wake_at().expect("a retry to wake for");
        run.advance(at - run.now);
        assert_eq!(run.pending(), ["a"], "retried, and in flight");
        // Far past the budget with the retry unanswered (the confirm timeout is the
        // shell's): the core does not give up on it, nor asks to be woken for it.
        run.advance(Duration::from_secs(120));
        run.collect();
        assert!(run.settled().is_empty(), "given up while in flight");
        run.answer("a", PublishOutcome::Confirmed);
        run.confirm_all();
        assert_eq!(run.settled(), [ack(1, true)]);
    }

    /// The broker refuses everything (a permission lost): suspects and probes all
    /// refused. After a few probes the next waits with backoff; nothing is dead-lettered
    /// and the channel is not reopened in a loop.
    #[test]
    fn a_broker_refusing_everything_is_waited_out_not_looped_on() {
        let mut run = Run::with_window(64);
        run.events(&["s1"]);
        run.events(&["s2"]);
        run.answer("s1", closed(403));
        run.answer("s2", closed(403));
        let mut probes = 0;
        for step in 0..400 {
            run.advance(Duration::from_millis(50));
            while !run.reopens.is_empty() {
                run.reopen(Ok(()));
            }
            if let Some(what) = run.pending().first().cloned() {
                run.answer(&what, closed(403));
            } else if run.core.can_take() {
                probes += 1;
                run.events(&[&format!("p{step}")]);
            }
        }
        // 20 s: a handful of probes, not hundreds, and every message still held.
        assert!((4..=16).contains(&probes), "{probes} probes");
        assert!(run.finished.is_empty(), "{:?}", run.finished);
        assert!(matches!(run.core.status(), Status::Isolating { .. }));
    }

    #[test]
    fn a_refused_dead_letter_is_handed_to_the_broker() {
        let mut run = Run::new();
        // A dead letter admitted as such.
        let (dl, msg) = Make.dead_letter(&"raw 1", DeadLetterKind::InvalidJson, None, "bad");
        run.core.admit(
            run.now,
            1,
            "raw 1",
            Fate::DeadLetter(dl),
            vec![msg.unwrap()],
        );
        run.next_tag = 2;
        run.collect();
        run.events(&["ok"]);
        // On a channel of its own: the event goes on.
        run.answer("dead letter of raw 1", closed(403));
        run.answer("ok", PublishOutcome::Confirmed);
        assert_eq!(run.reopens, [Lane::DeadLetters]);
        run.reopen(Ok(()));
        run.answer("dead letter of raw 1", closed(403));
        // Handed to the broker once refused alone: its own dead-lettering needs no
        // permission of ours.
        run.reopen(Ok(()));
        run.confirm_all();
        assert_eq!(
            run.settled()[0],
            (
                1,
                Settle::Reject {
                    tag: 1,
                    requeue: false
                }
            )
        );
        assert!(matches!(run.finish_of(1), Finish::HandedToBroker(why) if why.contains("403")));
    }

    /// The last messages of a burst have no later ones to compare with: one with the same
    /// routing key refused among stored ones speaks for them.
    #[test]
    fn a_routing_key_refused_among_stored_speaks_for_the_last_of_a_burst() {
        let mut run = Run::new();
        let admit = |run: &mut Run, what: &str, key: &str| {
            let tag = run.next_tag;
            run.next_tag += 1;
            let mut m = event(what);
            m.key = key.into();
            let fate = Fate::Events {
                vendor: Vendor::Deel,
                types: vec!["deel.contract.created"],
            };
            run.core.admit(run.now, tag, "raw", fate, vec![m]);
            run.collect();
        };
        admit(&mut run, "a", "full");
        admit(&mut run, "b", "other");
        admit(&mut run, "c", "full");
        run.answer("a", PublishOutcome::Nacked);
        run.answer("b", PublishOutcome::Confirmed);
        run.answer("c", PublishOutcome::Nacked);
        run.advance(Duration::from_millis(200));
        run.answer("a", PublishOutcome::Nacked);
        run.answer("c", PublishOutcome::Nacked);
        assert!(
            matches!(run.core.status(), Status::Flowing { held: 2, .. }),
            "{:?}",
            run.core.status()
        );
    }

    /// A dead letter in flight when an event is refused (its channel closed) goes on, on
    /// its own channel: it is not published again (it may have been stored already).
    #[test]
    fn a_refused_event_never_makes_a_dead_letter_go_out_twice() {
        let mut run = Run::new();
        let (dl, msg) = Make.dead_letter(&"raw 1", DeadLetterKind::InvalidJson, None, "bad");
        run.core.admit(
            run.now,
            1,
            "raw 1",
            Fate::DeadLetter(dl),
            vec![msg.unwrap()],
        );
        run.next_tag = 2;
        run.collect();
        run.events(&["refused"]);
        run.answer("refused", closed(403));
        assert_eq!(run.reopens, [Lane::Events]);
        run.answer("dead letter of raw 1", PublishOutcome::Confirmed);
        run.reopen(Ok(()));
        run.answer("refused", closed(403));
        run.reopen(Ok(()));
        // Nothing else was stored to the canonical exchange: a probe is wanted.
        run.events(&["probe"]);
        run.answer("probe", PublishOutcome::Confirmed);
        run.answer("refused", closed(403));
        run.reopen(Ok(()));
        run.confirm_all();
        let dead_letters = run
            .finished
            .iter()
            .filter(|(_, _, f)| matches!(f, Finish::DeadLettered(_)))
            .count();
        assert_eq!(dead_letters, 2, "raw 1's, once, and the refused one's");
        assert_eq!(run.settled().len(), 3);
    }

    /// A message held for retry does not hold back the taps of those behind it.
    #[test]
    fn a_held_message_does_not_hold_back_later_taps() {
        let mut run = Run::new();
        run.events(&["held"]);
        run.events(&["next"]);
        run.answer("held", PublishOutcome::Nacked);
        run.answer("next", PublishOutcome::Confirmed);
        assert_eq!(run.pending(), ["tap next"]);
    }

    fn lost() -> PublishOutcome {
        PublishOutcome::Closed {
            code: None,
            reason: "connection reset".into(),
        }
    }

    fn stored(delivered: usize, kept: usize) -> Finish {
        Finish::Stored {
            vendor: Vendor::Deel,
            delivered: vec!["deel.contract.created"; delivered],
            kept: vec!["deel.contract.created"; kept],
        }
    }

    fn ack(tag: u64, multiple: bool) -> (u64, Settle) {
        (tag, Settle::Ack { tag, multiple })
    }

    /// Per-publish identity: an outcome counts only for the attempt in flight. The late
    /// outcome of an attempt given up on (its confirm timed out, and it was published
    /// again), whatever it says, changes nothing: no publish, no reopen, no count, no keep.
    /// Neither does an outcome for a message already settled.
    #[test]
    fn an_outcome_of_an_attempt_given_up_on_is_ignored() {
        for late in [
            PublishOutcome::Confirmed,
            PublishOutcome::Returned,
            PublishOutcome::Nacked,
            PublishOutcome::TimedOut,
            closed(403),
            lost(),
        ] {
            let mut run = Run::new();
            run.events(&["a"]);
            let (first, _) = run.published[0].clone();
            run.answer("a", PublishOutcome::TimedOut);
            run.advance(Duration::from_millis(100));
            assert_eq!(run.pending(), ["a"], "published again");
            let (retry, _) = run.published[0].clone();
            assert_ne!(first, retry, "each attempt has an identity of its own");
            let status = run.core.status();
            run.core.take_counts();
            run.core.decided(run.now, first, late.clone());
            run.collect();
            assert_eq!(
                run.pending(),
                ["a"],
                "{late:?}: still waiting for the retry's own"
            );
            assert!(run.reopens.is_empty(), "{late:?}");
            assert_eq!(run.core.status(), status, "{late:?}");
            assert_eq!(run.core.take_counts(), Counts::default(), "{late:?}");
            run.confirm_all();
            assert_eq!(run.settled(), [ack(1, true)], "{late:?}");
            assert_eq!(
                run.finish_of(1),
                &stored(1, 0),
                "{late:?}: delivered, not kept"
            );
            // The retry's outcome once more, after settlement.
            run.core.decided(run.now, retry, late.clone());
            run.collect();
            assert!(
                run.pending().is_empty() && run.reopens.is_empty(),
                "{late:?}"
            );
            assert_eq!(run.settled().len(), 1, "{late:?}: settled once");
        }
    }

    /// One step failing once is held and published again after the first backoff (half
    /// to all of `retry.initial`, 100 ms here), and the message then settles as if
    /// nothing had happened. A returned dead letter is retried, never kept.
    #[test]
    fn a_step_failing_once_is_published_again_after_backoff() {
        struct Row {
            case: &'static str,
            dead_letter: bool,
            fails: Vec<(&'static str, PublishOutcome)>,
            again: &'static str,
            finish: Finish,
            unroutable: u64,
        }
        let dead_letter = |kind| {
            let (dl, _) = Make.dead_letter(&"raw 1", kind, None, "bad");
            Finish::DeadLettered(dl)
        };
        let rows = [
            Row {
                case: "nacked",
                dead_letter: false,
                fails: vec![("a", PublishOutcome::Nacked)],
                again: "a",
                finish: stored(1, 0),
                unroutable: 0,
            },
            Row {
                case: "confirm timed out",
                dead_letter: false,
                fails: vec![("a", PublishOutcome::TimedOut)],
                again: "a",
                finish: stored(1, 0),
                unroutable: 0,
            },
            Row {
                case: "returned, then kept nowhere: delivered again (a team may have bound)",
                dead_letter: false,
                fails: vec![
                    ("a", PublishOutcome::Returned),
                    ("kept a", PublishOutcome::Returned),
                ],
                again: "a",
                finish: stored(1, 0),
                unroutable: 1,
            },
            Row {
                case: "keep nacked",
                dead_letter: false,
                fails: vec![
                    ("a", PublishOutcome::Returned),
                    ("kept a", PublishOutcome::Nacked),
                ],
                again: "a",
                finish: stored(1, 0),
                unroutable: 0,
            },
            Row {
                case: "tap nacked",
                dead_letter: false,
                fails: vec![
                    ("a", PublishOutcome::Confirmed),
                    ("tap a", PublishOutcome::Nacked),
                ],
                again: "tap a",
                finish: stored(1, 0),
                unroutable: 0,
            },
            Row {
                case: "dead letter nacked",
                dead_letter: true,
                fails: vec![("dead letter of raw 1", PublishOutcome::Nacked)],
                again: "dead letter of raw 1",
                finish: dead_letter(DeadLetterKind::InvalidJson),
                unroutable: 0,
            },
            Row {
                case: "dead letter returned (nothing bound for its key)",
                dead_letter: true,
                fails: vec![("dead letter of raw 1", PublishOutcome::Returned)],
                again: "dead letter of raw 1",
                finish: dead_letter(DeadLetterKind::InvalidJson),
                unroutable: 1,
            },
        ];
        for row in rows {
            let case = row.case;
            let mut run = Run::new();
            if row.dead_letter {
                run.dead_letter();
            } else {
                run.events(&["a"]);
            }
            for (what, outcome) in row.fails {
                run.answer(what, outcome);
            }
            assert!(run.pending().is_empty(), "{case}: held");
            run.advance(Duration::from_millis(49));
            assert!(run.pending().is_empty(), "{case}: not before half the step");
            run.advance(Duration::from_millis(51));
            assert_eq!(run.pending(), [row.again], "{case}");
            run.confirm_all();
            assert_eq!(run.settled(), [ack(1, true)], "{case}");
            assert_eq!(run.finish_of(1), &row.finish, "{case}");
            let counts = run.core.take_counts();
            assert_eq!(counts.retries, 1, "{case}");
            assert_eq!(counts.unroutable, row.unroutable, "{case}");
            assert_eq!(counts.taps_given_up, 0, "{case}");
        }
    }

    /// A message failing past `retry.max_elapsed` (60 s here) is given up on: an event
    /// whose failure is its own (others to its exchange stored meanwhile) is dead-lettered
    /// as `undeliverable`; when nothing was stored (the broker refuses everything), or the
    /// channel never came back, or it is a dead letter already, it is rejected for
    /// redelivery. Never both, and never before the budget.
    #[test]
    fn a_message_failing_past_the_budget_is_dead_lettered_or_requeued() {
        enum Expect {
            DeadLettered,
            Requeued,
        }
        let rows = [
            (
                "event nacked, others stored",
                false,
                PublishOutcome::Nacked,
                true,
                Expect::DeadLettered,
            ),
            (
                "event timed out, others stored",
                false,
                PublishOutcome::TimedOut,
                true,
                Expect::DeadLettered,
            ),
            (
                "event timed out, nothing stored",
                false,
                PublishOutcome::TimedOut,
                false,
                Expect::Requeued,
            ),
            (
                "dead letter nacked, others stored",
                true,
                PublishOutcome::Nacked,
                true,
                Expect::Requeued,
            ),
            (
                "channel never reopened",
                false,
                lost(),
                false,
                Expect::Requeued,
            ),
        ];
        for (case, dead_letter, failure, others, expect) in rows {
            let mut run = Run::new();
            let start = run.now;
            let subject = if dead_letter {
                run.dead_letter()
            } else {
                run.events(&["a"])
            };
            let what = if dead_letter {
                "dead letter of raw 1".to_owned()
            } else {
                "a".to_owned()
            };
            run.answer(&what, failure.clone());
            for round in 0..200 {
                let settled = run.finished.iter().any(|(t, _, _)| *t == subject);
                let dead_lettered = !dead_letter && run.times_sent("dead letter of raw 1") > 0;
                if settled || dead_lettered {
                    break;
                }
                run.advance(Duration::from_millis(500));
                while !run.reopens.is_empty() {
                    run.reopen(Err("connection refused".into()));
                }
                if run.pending().contains(&what) {
                    if others {
                        // Sent after the retry, stored before it fails.
                        let name = if dead_letter {
                            let tag = run.dead_letter();
                            format!("dead letter of raw {tag}")
                        } else {
                            let name = format!("o{round}");
                            run.events(&[&name]);
                            name
                        };
                        run.answer(&name, PublishOutcome::Confirmed);
                    }
                    run.answer(&what, failure.clone());
                    run.confirm_all();
                }
            }
            let waited = run.now.duration_since(start);
            assert!(
                (Duration::from_secs(60)..=Duration::from_millis(60_500)).contains(&waited),
                "{case}: given up after {waited:?}"
            );
            run.confirm_all();
            let (_, settle, finish) = run
                .finished
                .iter()
                .find(|(t, _, _)| *t == subject)
                .unwrap_or_else(|| panic!("{case}: not settled"));
            match expect {
                Expect::DeadLettered => {
                    assert_eq!(
                        *settle,
                        Settle::Ack {
                            tag: 1,
                            multiple: true
                        },
                        "{case}"
                    );
                    let Finish::DeadLettered(dl) = finish else {
                        panic!("{case}: {finish:?}")
                    };
                    assert_eq!(dl.kind, DeadLetterKind::Undeliverable, "{case}");
                    assert!(
                        dl.detail.contains(&describe(&failure)),
                        "{case}: {}",
                        dl.detail
                    );
                }
                Expect::Requeued => {
                    assert_eq!(
                        *settle,
                        Settle::Reject {
                            tag: 1,
                            requeue: true
                        },
                        "{case}"
                    );
                    assert!(
                        matches!(finish, Finish::Requeued { failing_for, last }
                            if *failing_for >= Duration::from_secs(60) && *last == failure),
                        "{case}: {finish:?}"
                    );
                    if !dead_letter {
                        assert_eq!(run.times_sent("dead letter of raw 1"), 0, "{case}");
                    }
                }
            }
            assert_eq!(run.core.held(), 0, "{case}: the others settled too");
            let tags: BTreeSet<u64> = run.finished.iter().map(|(t, _, _)| *t).collect();
            assert_eq!(tags.len(), run.finished.len(), "{case}: each settled once");
        }
    }

    /// The connection is lost with three publishes in flight; their outcomes come back one
    /// by one, one of them a confirm read before the loss. The channel is reopened only
    /// once nothing is in flight on it; then only the failed ones go again, in order, with
    /// a delivery taken meanwhile behind them. The confirmed one is not published twice.
    #[test]
    fn a_channel_closed_mid_flight_is_reopened_once_its_publishes_are_back() {
        let mut run = Run::new();
        run.events(&["a"]);
        run.events(&["b"]);
        run.events(&["c"]);
        run.answer("a", lost());
        assert!(!run.core.can_take());
        run.answer("b", PublishOutcome::Confirmed);
        assert!(
            run.pending() == ["c"],
            "b's tap waits for a: {:?}",
            run.pending()
        );
        run.advance(Duration::from_secs(1));
        assert!(run.reopens.is_empty(), "c is still in flight on it");
        run.answer("c", lost());
        assert_eq!(run.reopens, [Lane::Events], "the backoff is past");
        run.events(&["d"]);
        assert!(run.pending().is_empty(), "nothing goes on a closed channel");
        run.reopen(Ok(()));
        assert_eq!(run.pending(), ["a", "c", "d"]);
        run.confirm_all();
        assert_eq!(run.times_sent("b"), 1);
        assert_eq!(run.taps_sent(), ["tap a", "tap b", "tap c", "tap d"]);
        assert_eq!(
            run.settled(),
            [ack(1, true), ack(2, true), ack(3, true), ack(4, true)]
        );
        assert_eq!(run.core.take_counts().retries, 2, "a and c");
    }

    /// An outage that ends before the budget: nothing is settled during it, and once the
    /// broker is back every message is stored, tapped and acked exactly once, none
    /// dead-lettered or requeued. A closed channel resends in consumption order, so taps
    /// and acks keep it; publishes refused one by one are each retried on its own backoff,
    /// and a message held for retry holds nothing back, so they settle in any order.
    #[test]
    fn an_outage_that_ends_loses_nothing() {
        for (case, failure, in_order) in [
            ("connection lost", lost(), true),
            ("every publish nacked", PublishOutcome::Nacked, false),
            ("no confirm in time", PublishOutcome::TimedOut, false),
        ] {
            let mut run = Run::new();
            let names: Vec<String> = (0..6).map(|i| format!("m{i}")).collect();
            for name in &names {
                run.events(&[name]);
            }
            let start = run.now;
            let mut reopens = 0;
            while run.now < start + Duration::from_secs(20) {
                if !run.reopens.is_empty() {
                    reopens += 1;
                    run.reopen(Err("connection refused".into()));
                } else if let Some(what) = run.pending().first().cloned() {
                    run.answer(&what, failure.clone());
                } else {
                    run.advance(Duration::from_millis(250));
                }
            }
            assert!(run.finished.is_empty(), "{case}: {:?}", run.finished);
            assert!(
                matches!(run.core.status(), Status::Retrying { held: 6, .. }),
                "{case}: {:?}",
                run.core.status()
            );
            if in_order {
                assert!((5..=20).contains(&reopens), "{case}: {reopens} reopens");
                while run.reopens.is_empty() {
                    run.advance(Duration::from_millis(250));
                }
                run.reopen(Ok(()));
                assert_eq!(run.pending(), names, "{case}: resent in order");
            }
            run.run_until_settled(|_| PublishOutcome::Confirmed);
            let mut tags: Vec<u64> = run.settled().iter().map(|(t, _)| *t).collect();
            if in_order {
                assert_eq!(
                    run.settled(),
                    (1..=6).map(|t| ack(t, true)).collect::<Vec<_>>(),
                    "{case}"
                );
            }
            tags.sort_unstable();
            assert_eq!(tags, [1, 2, 3, 4, 5, 6], "{case}: each settled once");
            for tag in 1..=6 {
                assert_eq!(run.finish_of(tag), &stored(1, 0), "{case}: {tag}");
            }
            let taps: Vec<String> = names.iter().map(|n| format!("tap {n}")).collect();
            let mut sent = run.taps_sent();
            if !in_order {
                sent.sort();
            }
            assert_eq!(sent, taps, "{case}: each tapped once");
        }
    }

    /// Eight messages in flight when the channel closes over one of them (403). Wherever
    /// the refused one sits, the suspects are tried one at a time; it alone is
    /// dead-lettered as `publish_refused`, once, and the seven others are stored.
    #[test]
    fn isolation_finds_the_one_refused_message_among_many() {
        for bad in [0, 3, 7] {
            let mut run = Run::new();
            let names: Vec<String> = (0..8)
                .map(|i| {
                    if i == bad {
                        "bad".into()
                    } else {
                        format!("m{i}")
                    }
                })
                .collect();
            for name in &names {
                run.events(&[name]);
            }
            for name in &names {
                run.answer(name, closed(403));
            }
            assert!(matches!(run.core.status(), Status::Isolating { .. }));
            let mut alone = 0;
            while run.core.isolation.is_some() {
                assert!(run.pending().len() <= 1, "{bad}: {:?}", run.pending());
                if !run.reopens.is_empty() {
                    run.reopen(Ok(()));
                } else if let Some(what) = run.pending().first().cloned() {
                    alone += 1;
                    let refused = what == "bad";
                    run.answer(
                        &what,
                        if refused {
                            closed(403)
                        } else {
                            PublishOutcome::Confirmed
                        },
                    );
                } else {
                    panic!("{bad}: isolation stalled");
                }
            }
            assert!((8..=9).contains(&alone), "{bad}: {alone} tried alone");
            run.run_until_settled(|_| PublishOutcome::Confirmed);
            for (i, _) in names.iter().enumerate() {
                let tag = i as u64 + 1;
                if i == bad {
                    let Finish::DeadLettered(dl) = run.finish_of(tag) else {
                        panic!("{bad}: {:?}", run.finish_of(tag))
                    };
                    assert_eq!(dl.kind, DeadLetterKind::PublishRefused);
                    assert!(dl.detail.contains("403 refused"), "{}", dl.detail);
                    assert_eq!(run.times_sent(&format!("dead letter of raw {tag}")), 1);
                } else {
                    assert_eq!(run.finish_of(tag), &stored(1, 0), "{bad}: {tag}");
                }
            }
            assert_eq!(run.settled().len(), 8, "{bad}: each settled once");
        }
    }

    /// Three messages stored, their taps confirmed in various orders. A message settled
    /// before an earlier one is acked alone (`multiple` false: its ack must not cover the
    /// earlier one); one with nothing earlier held is acked with `multiple`, so consecutive
    /// ones make one `basic.ack` for the settler. A burst of confirms read at once settles
    /// in delivery order. (Every test checks that no `multiple` ack covers a held
    /// delivery, in `Run::collect`.)
    #[test]
    fn acks_cover_earlier_deliveries_only_once_they_are_settled() {
        use crate::delivery::{SettleFrame, coalesce};
        /// Taps confirmed in this order, all read at once or not, then the acks (tag,
        /// `multiple`) and the frames they make.
        type Row = (
            &'static [&'static str],
            bool,
            &'static [(u64, bool)],
            &'static [SettleFrame],
        );
        let rows: [Row; 5] = [
            (
                &["a", "b", "c"],
                false,
                &[(1, true), (2, true), (3, true)],
                &[SettleFrame::AckUpTo {
                    tag: 3,
                    deliveries: 3,
                }],
            ),
            (
                &["c", "b", "a"],
                false,
                &[(3, false), (2, false), (1, true)],
                &[
                    SettleFrame::Ack { tag: 3 },
                    SettleFrame::Ack { tag: 2 },
                    SettleFrame::AckUpTo {
                        tag: 1,
                        deliveries: 1,
                    },
                ],
            ),
            (
                &["b", "a", "c"],
                false,
                &[(2, false), (1, true), (3, true)],
                &[
                    SettleFrame::Ack { tag: 2 },
                    SettleFrame::AckUpTo {
                        tag: 3,
                        deliveries: 2,
                    },
                ],
            ),
            (
                &["a", "c", "b"],
                false,
                &[(1, true), (3, false), (2, true)],
                &[
                    SettleFrame::AckUpTo {
                        tag: 1,
                        deliveries: 1,
                    },
                    SettleFrame::Ack { tag: 3 },
                    SettleFrame::AckUpTo {
                        tag: 2,
                        deliveries: 1,
                    },
                ],
            ),
            (
                &["c", "b", "a"],
                true,
                &[(1, true), (2, true), (3, true)],
                &[SettleFrame::AckUpTo {
                    tag: 3,
                    deliveries: 3,
                }],
            ),
        ];
        for (order, together, acks, frames) in rows {
            let mut run = Run::new();
            for what in ["a", "b", "c"] {
                run.events(&[what]);
            }
            run.answer_together(&["a", "b", "c"], PublishOutcome::Confirmed);
            assert_eq!(run.pending(), ["tap a", "tap b", "tap c"]);
            let taps: Vec<String> = order.iter().map(|w| format!("tap {w}")).collect();
            if together {
                let taps: Vec<&str> = taps.iter().map(String::as_str).collect();
                run.answer_together(&taps, PublishOutcome::Confirmed);
            } else {
                for tap in &taps {
                    run.answer(tap, PublishOutcome::Confirmed);
                }
            }
            let want: Vec<(u64, Settle)> = acks.iter().map(|(t, m)| ack(*t, *m)).collect();
            assert_eq!(run.settled(), want, "{order:?} together: {together}");
            let settles: Vec<Settle> = run.settled().iter().map(|(_, s)| *s).collect();
            assert_eq!(coalesce(&settles), frames, "{order:?} together: {together}");
        }
    }

    /// Once a message is stored, its copy goes to the tap, routed by where it was stored,
    /// never `mandatory` (observers bind there, and none bound is no failure), on the
    /// events' channel; a dead letter's own publish goes on the dead letters' channel.
    #[test]
    fn a_stored_message_is_tapped_by_where_it_was_stored() {
        let tap = |what: &str, key: &str| Msg {
            exchange: "events.tap".into(),
            key: key.into(),
            what: what.into(),
        };
        let delivered = |run: &mut Run| {
            run.events(&["a"]);
            run.answer("a", PublishOutcome::Confirmed);
        };
        let kept = |run: &mut Run| {
            run.events(&["a"]);
            run.answer("a", PublishOutcome::Returned);
            run.answer("kept a", PublishOutcome::Confirmed);
        };
        let dead_letter = |run: &mut Run| {
            run.dead_letter();
            run.answer("dead letter of raw 1", PublishOutcome::Confirmed);
        };
        /// How it is stored, the publishes that makes (on which lane, `mandatory`), and its
        /// tap copy.
        type Row<'a> = (
            &'static str,
            &'a dyn Fn(&mut Run),
            &'static [(&'static str, Lane, bool)],
            Msg,
        );
        let rows: [Row; 3] = [
            (
                "delivered",
                &delivered,
                &[("a", Lane::Events, true), ("tap a", Lane::Events, false)],
                tap("tap a", "Canonical"),
            ),
            (
                "kept",
                &kept,
                &[
                    ("a", Lane::Events, true),
                    ("kept a", Lane::Events, true),
                    ("tap kept a", Lane::Events, false),
                ],
                tap("tap kept a", "Unrouted"),
            ),
            (
                "dead letter",
                &dead_letter,
                &[
                    ("dead letter of raw 1", Lane::DeadLetters, true),
                    ("tap dead letter of raw 1", Lane::Events, false),
                ],
                tap("tap dead letter of raw 1", "DeadLetter"),
            ),
        ];
        for (case, store, sent, copy) in rows {
            let mut run = Run::new();
            store(&mut run);
            let got: Vec<(&str, Lane, bool)> = run
                .sent
                .iter()
                .map(|(m, lane, mandatory)| (m.what.as_str(), *lane, *mandatory))
                .collect();
            assert_eq!(got, sent, "{case}");
            assert_eq!(run.published[0].1, copy, "{case}");
            run.confirm_all();
            assert_eq!(run.settled(), [ack(1, true)], "{case}");
        }
    }
}
