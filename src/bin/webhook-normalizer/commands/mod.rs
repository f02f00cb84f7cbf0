//! One file per command: what it reads, what it does, what it prints and its exit code.
//! What several commands share is in `common` (and `walk` for the queue walks), never here.

pub(crate) mod config;
pub(crate) mod dlq;
pub(crate) mod event_types;
pub(crate) mod history;
pub(crate) mod ingest;
pub(crate) mod normalize;
pub(crate) mod permissions;
pub(crate) mod publish;
pub(crate) mod run;
pub(crate) mod tail;
pub(crate) mod topology;
pub(crate) mod trace;
pub(crate) mod unrouted;
