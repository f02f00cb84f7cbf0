//! The edge: a delivery's parts, as lapin hands them over, become our
//! [`RawMessage`]. No decision is made here; `crate::delivery` makes them.

use lapin::BasicProperties;

use super::publish::header_text;
use crate::delivery::{RawMessage, headers};

/// The raw message of one delivery. `property_problems` are what the frame check found
/// wrong with its properties.
pub(crate) fn raw_message(
    body: Vec<u8>,
    exchange: String,
    routing_key: String,
    properties: &BasicProperties,
    property_problems: Vec<String>,
) -> RawMessage {
    RawMessage {
        body,
        exchange,
        routing_key,
        vendor_header: header_text(properties, headers::VENDOR),
        received_at_header: header_text(properties, headers::RECEIVED_AT),
        timestamp: *properties.timestamp(),
        property_problems,
    }
}
