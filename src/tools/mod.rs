//! The operator tools behind the `dlq`, `unrouted`, `history`, `tail` and `permissions`
//! commands:
//! the queue walk that looks without changing ([`walk`]), each with its pure reader
//! beside it ([`dlq::stored`], [`unrouted::stored`]), and the audit line every replay
//! and purge leaves.

pub mod audit;
pub mod dlq;
pub mod history;
pub mod kept;
pub mod permissions;
pub mod tail;
pub mod trace;
pub mod unrouted;
pub mod walk;
