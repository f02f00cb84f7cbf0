//! Which of our own publishes the broker returned as unroutable, told by what each
//! returned message carries, never by which confirm the client attached it to.
//!
//! The broker sends a mandatory publish's `basic.return` before the `basic.ack` that
//! covers it, and one ack may cover many publishes (`multiple`). lapin 4.12 queues the
//! returns and hands the oldest to each publish it completes, in its hash map's order:
//! when one ack covers several publishes, a return can be pinned on a publish that was
//! stored, while the publish that was returned reads as confirmed (see
//! `docs/operations.md`, "Returned publishes", for a reproduction). So the frame check
//! files each return here, by channel, as its frames go by (before the client reads the
//! ack that follows it), and a publish is judged returned when a return carrying exactly
//! what it sent was filed ([`Returns::take`]). Two publishes that carry exactly the same
//! exchange, routing key, `message_id` and body are interchangeable: whichever of them is
//! judged returned, the same bytes are published again.

use std::collections::VecDeque;
use std::hash::Hasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Returns kept per connection at most; a return nobody asks about (its publish timed
/// out, say) is forgotten, oldest first, past this many.
const MAX_KEPT: usize = 65_536;

/// One connection's returned publishes, not yet claimed.
#[derive(Debug, Clone, Default)]
pub struct Returns(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    /// How many are kept: the common case (none) is told without the lock.
    kept: AtomicUsize,
    entries: Mutex<VecDeque<(u16, Returned)>>,
}

/// What a returned message carried that tells it apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Returned {
    pub exchange: String,
    pub routing_key: String,
    pub message_id: Option<String>,
    pub body: BodyDigest,
}

/// A body's length and a 64-bit digest of its bytes, computed as they go by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyDigest {
    pub len: u64,
    pub digest: u64,
}

impl BodyDigest {
    pub fn of(body: &[u8]) -> BodyDigest {
        let mut digesting = Digesting::default();
        digesting.update(body);
        digesting.finish()
    }
}

/// A [`BodyDigest`] being computed over a body's frames.
#[derive(Debug, Default)]
pub struct Digesting {
    hasher: std::hash::DefaultHasher,
    len: u64,
}

impl Digesting {
    pub fn update(&mut self, bytes: &[u8]) {
        self.hasher.write(bytes);
        self.len += bytes.len() as u64;
    }

    pub fn finish(&self) -> BodyDigest {
        BodyDigest {
            len: self.len,
            digest: self.hasher.finish(),
        }
    }
}

/// What one publish sent, to look for among the returns.
#[derive(Debug, Clone, Copy)]
pub struct Sent<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub message_id: Option<&'a str>,
    pub body: &'a [u8],
}

impl Returns {
    /// Files a return that came on `channel`.
    pub fn file(&self, channel: u16, returned: Returned) {
        let mut entries = self.lock();
        if entries.len() >= MAX_KEPT {
            entries.pop_front();
        }
        entries.push_back((channel, returned));
        self.0.kept.store(entries.len(), Ordering::Release);
    }

    /// Forgets the returns of a channel opened or closed: its publishes are all decided.
    pub fn forget_channel(&self, channel: u16) {
        if self.0.kept.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut entries = self.lock();
        entries.retain(|(c, _)| *c != channel);
        self.0.kept.store(entries.len(), Ordering::Release);
    }

    /// Whether a return of exactly what `sent` carried came on `channel`; if so it is
    /// claimed (each return answers for one publish). Ask once the publish is confirmed:
    /// its return, if any, came before the confirm.
    pub fn take(&self, channel: u16, sent: &Sent<'_>) -> bool {
        if self.0.kept.load(Ordering::Acquire) == 0 {
            return false;
        }
        let mut entries = self.lock();
        let mut digest = None;
        let found = entries.iter().position(|(c, r)| {
            *c == channel
                && r.exchange == sent.exchange
                && r.routing_key == sent.routing_key
                && r.message_id.as_deref() == sent.message_id
                && r.body.len == sent.body.len() as u64
                && r.body == *digest.get_or_insert_with(|| BodyDigest::of(sent.body))
        });
        let Some(at) = found else {
            return false;
        };
        entries.remove(at);
        self.0.kept.store(entries.len(), Ordering::Release);
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(u16, Returned)>> {
        self.0
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn returned(routing_key: &str, id: &str, body: &[u8]) -> Returned {
        Returned {
            exchange: "events.canonical".into(),
            routing_key: routing_key.into(),
            message_id: Some(id.into()),
            body: BodyDigest::of(body),
        }
    }

    fn sent<'a>(routing_key: &'a str, id: &'a str, body: &'a [u8]) -> Sent<'a> {
        Sent {
            exchange: "events.canonical",
            routing_key,
            message_id: Some(id),
            body,
        }
    }

    #[test]
    fn a_return_answers_for_the_one_publish_that_carried_the_same() {
        let returns = Returns::default();
        returns.file(1, returned("entuitive.user.created", "e-1", b"{}"));
        // Another body, id, routing key or channel is another publish.
        assert!(!returns.take(1, &sent("entuitive.user.created", "e-1", b"{ }")));
        assert!(!returns.take(1, &sent("entuitive.user.created", "e-2", b"{}")));
        assert!(!returns.take(1, &sent("deel.contract.created", "e-1", b"{}")));
        assert!(!returns.take(2, &sent("entuitive.user.created", "e-1", b"{}")));
        assert!(returns.take(1, &sent("entuitive.user.created", "e-1", b"{}")));
        // Claimed once.
        assert!(!returns.take(1, &sent("entuitive.user.created", "e-1", b"{}")));
    }

    #[test]
    fn identical_publishes_each_claim_one_return() {
        let returns = Returns::default();
        returns.file(1, returned("k", "same", b"x"));
        returns.file(1, returned("k", "same", b"x"));
        assert!(returns.take(1, &sent("k", "same", b"x")));
        assert!(returns.take(1, &sent("k", "same", b"x")));
        assert!(!returns.take(1, &sent("k", "same", b"x")));
    }

    #[test]
    fn a_channel_opened_again_forgets_its_returns() {
        let returns = Returns::default();
        returns.file(1, returned("k", "a", b"x"));
        returns.file(2, returned("k", "a", b"x"));
        returns.forget_channel(1);
        assert!(!returns.take(1, &sent("k", "a", b"x")));
        assert!(returns.take(2, &sent("k", "a", b"x")));
    }

    #[test]
    fn returns_nobody_claims_are_bounded() {
        let returns = Returns::default();
        for i in 0..MAX_KEPT + 10 {
            returns.file(1, returned("k", &i.to_string(), b"x"));
        }
        assert_eq!(returns.0.kept.load(Ordering::Acquire), MAX_KEPT);
        assert!(
            !returns.take(1, &sent("k", "0", b"x")),
            "the oldest went first"
        );
        assert!(returns.take(1, &sent("k", &(MAX_KEPT + 9).to_string(), b"x")));
    }

    #[test]
    fn a_digest_over_pieces_is_the_digest_of_the_whole() {
        let mut d = Digesting::default();
        d.update(b"hello, ");
        d.update(b"world");
        assert_eq!(d.finish(), BodyDigest::of(b"hello, world"));
        assert_ne!(
            BodyDigest::of(b"hello, world"),
            BodyDigest::of(b"hello, world!")
        );
    }
}
