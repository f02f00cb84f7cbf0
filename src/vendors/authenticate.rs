//! Authenticate: `{id, event, eventDate, order}`. The envelope `id` is the event's identity.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::MapError;
use super::fields::{self, Problem};
use super::unmapped::{Envelope, Generic, Identity, UnmappedPolicy};
use crate::canonical::{
    CanonicalEvent, Entity, EventData, EventFacts, EventType, Person, Vendor,
    id_from_vendor_event_id,
};

const PDF_REPORT: &str = "USER_PDF_REPORT_GENERATION";

pub(super) fn map(
    body: Arc<Value>,
    received_at: DateTime<Utc>,
    unmapped: UnmappedPolicy,
) -> Result<CanonicalEvent, MapError> {
    let root = fields::as_object(&body, "$".into())?;
    let vendor_type = root.required_str("event")?;
    if unmapped == UnmappedPolicy::Passthrough
        && !vendor_type.eq_ignore_ascii_case(PDF_REPORT)
        && EventType::from_vendor_type(Vendor::Authenticate, vendor_type).is_none()
    {
        // The envelope `id` is the event's identity whatever its type; `order` is not
        // needed.
        let envelope_id = root.required_id("id")?;
        return Generic::new(Envelope {
            vendor: Vendor::Authenticate,
            vendor_type,
            identity: Identity::VendorEventId(&envelope_id),
            time: root.opt_timestamp("eventDate")?.unwrap_or(received_at),
            vendor_event_id: Some(envelope_id.clone()),
            tenant: None,
            simulation: false,
        })
        .map(|generic| generic.event(Arc::clone(&body)));
    }
    let order = root.object("order")?;

    let event_type = if vendor_type.eq_ignore_ascii_case(PDF_REPORT) {
        // One vendor type, three canonical types: the report's stage decides.
        let stage = order.required_str("status")?;
        [
            ("INITIATED", EventType::AuthenticateReportInitiated),
            ("COMPLETED", EventType::AuthenticateReportCompleted),
            ("FAILED", EventType::AuthenticateReportFailed),
        ]
        .into_iter()
        .find(|(name, _)| stage.eq_ignore_ascii_case(name))
        .map(|(_, t)| t)
        .ok_or_else(|| order.error("status", Problem::NotOneOf("INITIATED, COMPLETED, FAILED")))?
    } else {
        EventType::from_vendor_type(Vendor::Authenticate, vendor_type)
            .ok_or_else(|| MapError::UnknownEventType(vendor_type.to_owned()))?
    };

    let envelope_id = root.required_id("id")?;
    let id = id_from_vendor_event_id(event_type, &envelope_id);
    let time = root.opt_timestamp("eventDate")?.unwrap_or(received_at);
    let user_access_code = order.opt_id("userAccessCode");

    let (entity, status) = match event_type {
        EventType::AuthenticateBackgroundCheckUpdated => {
            let details = order.object("orderDetails")?;
            (
                Entity {
                    kind: "criminal_search".into(),
                    id: details.entity_id("unique_identifier")?,
                },
                details.opt_text("search_status"),
            )
        }
        EventType::AuthenticateReportInitiated
        | EventType::AuthenticateReportCompleted
        | EventType::AuthenticateReportFailed
            if order.has("reportUUID") =>
        {
            (
                Entity {
                    kind: "report".into(),
                    id: order.entity_id("reportUUID")?,
                },
                order.opt_text("status"),
            )
        }
        _ => (
            Entity {
                kind: "user".into(),
                id: order.entity_id("userAccessCode")?,
            },
            order.opt_text("status"),
        ),
    };

    Ok(CanonicalEvent::new(EventFacts {
        event_type: event_type.into(),
        id,
        time,
        vendor_event_type: vendor_type.to_owned(),
        vendor_event_id: Some(envelope_id),
        simulation: false,
        data: EventData {
            entity,
            status,
            person: Person {
                id: user_access_code,
                ..Person::default()
            }
            .non_empty(),
            tenant: None,
            payload: Arc::clone(&body),
        },
    }))
}
