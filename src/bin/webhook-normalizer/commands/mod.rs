//! One file per command: what it reads, what it does, what it prints and its exit code.
//! What several commands share is in `common` (and `walk` for the queue walks), never here.

pub(crate) mod dlq;
pub(crate) mod publish;
pub(crate) mod tail;
pub(crate) mod unrouted;
