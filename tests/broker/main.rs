//! The worker against the real RabbitMQ: each test in its own vhost, the worker as the
//! binary users run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod compose;
mod consumer;
mod dlq;
mod flow;
mod fuzz;
mod history;
mod ingest;
mod metrics;
mod neighbours;
mod ops;
mod ordering;
mod oversized;
mod permissions;
mod pipeline;
mod properties;
mod publish;
mod quickstart;
mod replay;
mod resilience;
mod returns;
mod signatures;
mod tail;
mod tls;
mod unmapped;
mod unrouted;

/// The test kit (`testkit/`), by the name these tests import it under.
use testkit as support;
