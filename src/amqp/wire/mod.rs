//! What the broker sends, checked before the AMQP client parses it.
//!
//! A publisher controls a raw message's properties, and the broker delivers them as it
//! received them. The client's parser cannot take every one of them: header tables
//! nested a few thousand deep overflow its stack (the process aborts), and a short string
//! that is not UTF-8 fails the frame (the connection drops). Either way every neighbour
//! in flight pays, on every redelivery. So the client reads its socket through a
//! [`CheckedStream`], which rewrites such frames into ones it accepts and files a
//! [`WireReport`] for the message; the session dead-letters that message alone as
//! `invalid_properties`. What the client accepts is in `docs/raw-message-contract.md`.
//!
//! A queue walk puts messages back, and must put them back as they were: its connection
//! keeps each rewritten content header as it was sent ([`Verbatim`]), the walk edits
//! those bytes as it edits the properties ([`edit`]), and the stream swaps the result in
//! for what the client writes.

pub(crate) mod edit;
mod frames;
mod outbound;
mod properties;
mod reports;
mod returns;
mod runtime;
mod stream;
mod verbatim;

pub use frames::FrameCheck;
pub use properties::{MAX_NESTING, WireReport};
pub use reports::WireReports;
pub use returns::{Returns, Sent};
pub use runtime::CheckedTokio;
pub use stream::CheckedStream;
pub use verbatim::Verbatim;

/// Driving a frame check from unit tests elsewhere in the broker glue.
#[cfg(test)]
pub(crate) mod test_support {
    use super::frames::{FrameCheck, FrameFilter};

    pub(crate) fn filter(check: &FrameCheck) -> FrameFilter {
        FrameFilter::new(check.clone())
    }

    /// Feeds `bytes` and returns what the client would read.
    pub(crate) fn feed_all(filter: &mut FrameFilter, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        filter.feed(bytes, &mut out);
        out
    }
}
