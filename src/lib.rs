//! webhook-normalizer: vendor webhooks in, one CloudEvents stream out.
//!
//! The data flow, and where each part lives:
//!
//! ```text
//! RabbitMQ webhooks.raw -> normalizer.raw
//!   -> worker::Session             consume (its own connection); feed the pipeline
//!   -> worker pipeline             one task: deliveries in consumption order
//!      -> delivery::plan           RawMessage -> bounded events to publish, or a dead letter
//!         -> normalize             size limit, JSON parse, vendor detection, bounds
//!            -> body               strict JSON: no repeated keys
//!         -> vendors::{entuitive, authenticate, deel}
//!                                  pure mapping of one vendor's envelope
//!         -> canonical::CanonicalEvent
//!                                  CloudEvents 1.0, canonical type, stable id
//!      -> worker pipeline core     no I/O: each output delivered (events.canonical,
//!                                  webhooks.dead-letter), kept (events.unrouted, when no
//!                                  team binds it), tapped (events.tap, for observers);
//!                                  refusals retried in place, or isolated
//!      -> worker publisher         frame check; confirmed, returns told by content
//!   -> delivery::coalesce          acks batched with `multiple` where nothing is held
//! ```
//!
//! - [`canonical`]: the public contract (envelope, type table, stable ids, JSON Schema);
//!   [`asyncapi`]: the same as an AsyncAPI document, made from the type table.
//! - [`vendors`]: one module per vendor; lenient private readers of their bodies.
//! - [`mod@normalize`]: the single entry point of the mapping and its errors.
//! - [`body`]: the strict JSON reader of webhook bodies.
//! - [`contract`]: the names the contract fixes (header names, routing keys, the
//!   worker's properties, the dead-letter kinds), which every part imports and which
//!   imports no role.
//! - [`delivery`]: the pure decisions about one raw message (bounds, faults, retry
//!   schedule, ack batching), and the delivery policy; [`backoff`]: the schedule that
//!   retries and reconnects wait by.
//! - [`amqp`]: the AMQP plumbing (connections, TLS, the frame check, topology, header
//!   helpers) that the three roles build on: [`worker`] (the reconnect loop, session,
//!   pipeline, publisher, settler), [`tools`] (the operator tools: queue walks, `dlq`,
//!   `unrouted`, `tail`, permissions, audit) and [`gateway`] (the reference gateway,
//!   HTTP in, raw messages out). No role imports from another.
//! - [`config`], [`telemetry`], [`ops`]: settings, logging, health and outcomes.
//! - [`redact`]: what outside text may be shown in errors and logs.
//! - [`signatures`]: the vendors' webhook signatures, checked over the raw bytes.
//! - [`trace_context`]: W3C `traceparent`, read from raw messages and written on what
//!   the worker publishes (ids drawn by the caller); [`spans`]: the spans of the worker
//!   and of `ingest`, exported over OTLP when configured.
//! - `tools::dlq::stored`, `tools::unrouted::stored`: reading, filtering and grouping
//!   what the dead-letter and unrouted queues keep, pure, beside the walks that fetch it.
//!
//! `canonical`, `asyncapi`, `vendors`, `body`, `normalize`, `contract`, `delivery`,
//! `backoff`, `tools::dlq::stored`, `tools::unrouted::stored`, `tools::permissions`,
//! `signatures`, `trace_context` and `redact` are pure: no I/O, no clock, no randomness. The broker glue is
//! built on top of them, never the other way round.

pub mod amqp;
pub mod asyncapi;
pub mod backoff;
pub mod body;
pub mod canonical;
pub mod config;
pub mod contract;
pub mod delivery;
pub mod gateway;
pub mod http;
pub mod normalize;
pub mod ops;
pub mod redact;
pub mod signatures;
pub mod spans;
pub mod telemetry;
pub mod tools;
pub mod trace_context;
pub mod vendors;
pub mod worker;

pub use canonical::{CanonicalEvent, CanonicalType, EventType, SchemaBase, Vendor};
pub use contract::DeadLetterKind;
pub use normalize::{Limits, NormalizeError, normalize};
pub use vendors::{Unmapped, UnmappedPolicy};
