//! Putting messages back byte for byte: the content headers a connection sends in place of
//! the client's own, each found by the marker the client sends in `cluster_id`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// One connection's substitutes. Set in [`super::FrameCheck::verbatim`] only on a
/// connection that puts messages back (a queue walk): there the frame check keeps the
/// content header of each delivery it had to rewrite as it was sent
/// ([`super::WireReport::original_header`]), and the stream swaps marked content
/// headers on the way out. Other connections (the worker's) pay for neither.
#[derive(Debug, Clone)]
pub struct Verbatim {
    /// Unique to the connection, so no message's own `cluster_id` is taken for a marker.
    prefix: Arc<str>,
    next: Arc<AtomicU64>,
    /// By marker: the content header payload to send instead (its body size is the
    /// client's).
    substitutes: Arc<Mutex<HashMap<Vec<u8>, Vec<u8>>>>,
}

impl Default for Verbatim {
    fn default() -> Self {
        Verbatim {
            prefix: format!("wn.{:016x}", fastrand::u64(..)).into(),
            next: Arc::default(),
            substitutes: Arc::default(),
        }
    }
}

impl Verbatim {
    /// The length of every marker, so the size of a marked publish is known before.
    pub const MARKER_LEN: usize = 3 + 16 + 1 + 16;

    /// Registers `payload` (a content header) to go out in place of that of the publish
    /// whose `cluster_id` is the marker returned.
    pub fn register(&self, payload: Vec<u8>) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let marker = format!("{}.{n:016x}", self.prefix);
        self.lock().insert(marker.as_bytes().to_vec(), payload);
        marker
    }

    /// Forgets a marker that will not go out (its publish failed).
    pub fn forget(&self, marker: &str) {
        self.lock().remove(marker.as_bytes());
    }

    /// The substitute registered under `marker`, taken.
    pub(super) fn take(&self, marker: &[u8]) -> Option<Vec<u8>> {
        self.lock().remove(marker)
    }

    /// Whether any marked publish is still to go out.
    pub(super) fn is_waiting(&self) -> bool {
        !self.lock().is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, Vec<u8>>> {
        self.substitutes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_unique_of_one_length_and_taken_once() {
        let verbatim = Verbatim::default();
        let a = verbatim.register(b"a".to_vec());
        let b = verbatim.register(b"b".to_vec());
        assert_ne!(a, b);
        assert_eq!(a.len(), Verbatim::MARKER_LEN);
        assert_ne!(
            Verbatim::default().register(Vec::new()),
            a,
            "per connection"
        );
        assert_eq!(verbatim.take(a.as_bytes()), Some(b"a".to_vec()));
        assert_eq!(verbatim.take(a.as_bytes()), None);
        verbatim.forget(&b);
        assert!(!verbatim.is_waiting());
    }
}
