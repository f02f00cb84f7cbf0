//! webhook-normalizer: vendor webhooks in, one CloudEvents stream out.
//!
//! The data flow, and where each part lives:
//!
//! ```text
//! raw body bytes (+ vendor hint, receipt time)
//!   -> normalize::normalize        size limit, JSON parse, vendor detection
//!   -> vendors::{entuitive, authenticate, deel}
//!                                  pure mapping of one vendor's envelope
//!   -> canonical::CanonicalEvent   CloudEvents 1.0, canonical type, stable id
//! ```
//!
//! - [`canonical`]: the public contract (envelope, type table, stable ids, JSON Schema).
//! - [`vendors`]: one module per vendor; lenient private readers of their bodies.
//! - [`normalize`]: the single entry point and its error kinds.
//!
//! Everything here is pure: no I/O, no clock, no randomness. The broker glue is built on
//! top of [`normalize`] and never the other way round.

pub mod broker;
pub mod canonical;
pub mod config;
pub mod delivery;
pub mod normalize;
pub mod ops;
pub mod telemetry;
pub mod vendors;
pub mod worker;

pub use canonical::{CanonicalEvent, EventType, Vendor};
pub use normalize::{ErrorKind, Limits, NormalizeError, normalize};
