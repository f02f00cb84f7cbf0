//! Where a connection's frame filter leaves what it changed in a message's frames, for
//! the session to find by channel and delivery tag when the delivery reaches it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use lapin::BasicProperties;
use lapin::types::parsing::parse_value;
use lapin::types::{AMQPValue, FieldArray, FieldTable};

use super::properties::WireReport;
use crate::contract::headers;

/// One connection's reports. Filed before the client parses the frames, so always there
/// when the delivery is handed over; taken once; forgotten when the channel is opened or
/// closed, so a later channel with the same number never sees them.
#[derive(Debug, Clone, Default)]
pub struct WireReports(Arc<Mutex<HashMap<(u16, u64), WireReport>>>);

impl WireReports {
    pub fn file(&self, channel: u16, delivery_tag: u64, report: WireReport) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((channel, delivery_tag))
            .or_default()
            .merge(report);
    }

    /// The report on this delivery, if its frames had to change.
    pub fn take(&self, channel: u16, delivery_tag: u64) -> Option<WireReport> {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if map.is_empty() {
            return None;
        }
        map.remove(&(channel, delivery_tag))
    }

    pub fn forget_channel(&self, channel: u16) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if !map.is_empty() {
            map.retain(|(c, _), _| *c != channel);
        }
    }
}

impl WireReport {
    /// The delivery's properties with the repeated header entries kept under
    /// [`headers::DUPLICATE_HEADERS`] (so a dead letter carries them), and the problems
    /// that make it an `invalid_properties` dead letter. A repeated `x-vendor` is one: the
    /// vendor hint would be a guess.
    pub fn apply(self, mut properties: BasicProperties) -> (BasicProperties, Vec<String>) {
        let mut problems = self.problems;
        if self.duplicates.is_empty() {
            return (properties, problems);
        }
        let vendor_path = format!("headers.{}", headers::VENDOR);
        if self.duplicates.iter().any(|(path, _)| *path == vendor_path) {
            problems.push(format!("{vendor_path}: sent more than once"));
        }
        let mut kept = FieldArray::default();
        for (path, encoded) in self.duplicates {
            // Made safe by the frame check, so the client's parser takes it.
            let value = parse_value(encoded.as_slice())
                .map(|(_, v)| v)
                .unwrap_or(AMQPValue::Void);
            let mut entry = FieldTable::default();
            entry.insert("name".into(), AMQPValue::LongString(path.into()));
            entry.insert("value".into(), value);
            kept.push(AMQPValue::FieldTable(entry));
        }
        let mut table = properties.headers().clone().unwrap_or_default();
        table.insert(
            headers::DUPLICATE_HEADERS.into(),
            AMQPValue::FieldArray(kept),
        );
        properties = properties.with_headers(table);
        (properties, problems)
    }
}
