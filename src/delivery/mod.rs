//! What happens to one raw delivery, decided without a broker: what to publish for it,
//! how a failed publish is judged, when to retry, and how settlements reach the broker.
//!
//! # Delivery policy
//!
//! - **One message, one fate.** Every raw message ends as its canonical events or as
//!   exactly one dead letter with a reason. A failure caused by one message (its body,
//!   its properties, its size) is settled for that message alone: it never restarts the
//!   session, requeues a neighbour or spends a neighbour's delivery attempt.
//! - **Bounded before anything is published.** [`plan`] builds a message's output within
//!   [`Limits`](crate::normalize::Limits): events per message, bytes of JSON per
//!   message, entity id length. The broker glue then checks each publish's properties
//!   against the negotiated `frame_max`. Over any bound: one dead letter (`too_many_events`, `output_too_large`,
//!   `invalid_payload`), nothing published.
//! - **Ack only after everything is confirmed.** A raw message is acknowledged only once
//!   every message it produced has been confirmed by the broker (`basic.ack` from
//!   publisher confirms, not returned). A crash before that leaves it unacknowledged, the
//!   broker redelivers it, and its events are published again with the same stable ids.
//! - **Normalization errors are permanent and never requeued.** The same bytes fail the
//!   same way every time. The raw message goes to the dead-letter exchange with its
//!   original bytes and its properties, made safe to publish (see the broker's
//!   `dead_letter` module), plus the reason.
//! - **We publish the dead letter ourselves** instead of `basic.reject(requeue=false)`
//!   into the queue's dead-letter exchange: a broker-made dead letter cannot say why, and
//!   ops need the reason to triage and replay. Only a dead letter that itself cannot be
//!   published is handed to the broker that way, as a last resort that still loses
//!   nothing.
//! - **Permanent or transient is decided per publish** ([`fault_of`]): the broker closing
//!   the channel over a publish (access refused, precondition failed, frame error) may be
//!   that message's fault; the worker finds which message by republishing the suspects
//!   one at a time and dead-letters it as `publish_refused`. A lost connection or a
//!   missing exchange is about the broker.
//! - **A refused output is retried in place, holding no one else** ([`RetryPolicy`]): a
//!   nacked, returned or unconfirmed publish is republished with jittered exponential
//!   backoff while the other deliveries go on. Refused again while others to the same
//!   exchange are stored, the refusal is the message's own: past `retry.max_elapsed_secs`
//!   (or sooner, when held messages fill half the window) it is dead-lettered as
//!   `undeliverable`. When nothing is stored either, the broker refuses everything: past
//!   the budget the message is rejected with `requeue=true` (`basic.reject`, which
//!   RabbitMQ 4.3+ counts toward the delivery limit, unlike `basic.nack`), so the delivery
//!   limit counts real redeliveries. The steps are in the broker glue's pipeline core.
//! - **Order.** Within one worker, messages are published in the order they were
//!   consumed. They are settled as they finish: acks are batched with `multiple` while
//!   nothing earlier is held, one by one behind a held delivery ([`coalesce`]). A message
//!   held for retry comes out after those consumed behind it.
//! - **Bounded retries.** The raw queue's `x-delivery-limit` moves a message whose output
//!   fails every time to the dead-letter exchange (broker-side, at-least-once strategy,
//!   routing key `unknown.delivery_limit`), so nothing loops forever.

mod outcome;
mod plan;
mod raw;
mod settle;

pub use outcome::{Fault, Lane, PublishOutcome, RetryPolicy, fault_of};
pub use plan::{DeadLetter, Plan, plan};
pub use raw::{PassedOver, RawMessage, VendorHeader};
pub use settle::{AckPolicy, Settle, SettleFrame, coalesce};

#[cfg(test)]
pub(crate) use plan::tests::plan_with_defaults;
