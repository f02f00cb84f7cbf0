//! Fixing the order of frames on the wire: the AMQP client queues a publish's (or an
//! ack's) frames the first time its future is polled, before it waits for anything.
//! Polling each future once, in order, as it is made fixes the order in which the broker
//! sees them, while the futures themselves may complete in any order.

use std::future::Future;
use std::task::Poll;

/// Polls `future` once, now. `Poll::Pending` means its frames are queued and it waits
/// for the broker; keep polling it (from any task) to learn how it ends.
pub(crate) async fn start<F: Future + Unpin>(future: &mut F) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(std::pin::Pin::new(&mut *future).poll(cx))).await
}
