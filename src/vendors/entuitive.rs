//! Entuitive Workforce: `{event_type, data}`, except `user.compliance_status.updated`,
//! which also comes bare (the event object at the top, no `event_type`). No event id.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::fields::{self, Problem};
use super::unmapped::{Envelope, Generic, Identity, UnmappedPolicy};
use super::{MapError, uncanonicalizable};
use crate::canonical::{
    CanonicalEvent, Entity, EventData, EventFacts, EventType, Person, Tenant, Vendor,
    id_from_content, user_key,
};

pub(super) fn map(
    body: Arc<Value>,
    received_at: DateTime<Utc>,
    unmapped: UnmappedPolicy,
) -> Result<CanonicalEvent, MapError> {
    let root = fields::as_object(&body, "$".into())?;
    if unmapped == UnmappedPolicy::Passthrough && root.has("event_type") {
        let vendor_type = root.required_str("event_type")?;
        if EventType::from_vendor_type(Vendor::Entuitive, vendor_type).is_none() {
            // `data` is the event, as for mapped types; its shape is unknown, so its
            // times are read only when it is an object.
            let Some(data) = root.get("data") else {
                return Err(root.error("data", Problem::Missing).into());
            };
            let data_path = fields::child_path(&root.path, "data");
            let time = match fields::as_object(data, data_path.clone()) {
                Ok(event) => event_time(&event, received_at)?,
                Err(_) => received_at,
            };
            return Generic::new(Envelope {
                vendor: Vendor::Entuitive,
                vendor_type,
                identity: Identity::Content {
                    value: data,
                    path: data_path,
                },
                time,
                vendor_event_id: None,
                tenant: None,
                simulation: false,
            })
            .map(|generic| generic.event(Arc::clone(&body)));
        }
    }
    let (vendor_type, event) = if root.has("event_type") {
        (root.required_str("event_type")?, root.object("data")?)
    } else if root.has("compliance_status_items") {
        (
            EventType::EntuitiveComplianceStatusUpdated.vendor_event_type(),
            root.clone(),
        )
    } else {
        return Err(root.error("event_type", Problem::Missing).into());
    };
    let event_type = EventType::from_vendor_type(Vendor::Entuitive, vendor_type)
        .ok_or_else(|| MapError::UnknownEventType(vendor_type.to_owned()))?;
    let compliance = event_type == EventType::EntuitiveComplianceStatusUpdated;

    // Entuitive's webhooks carry no user id (only `user.deactivated` has a
    // `profile_id`): the email is the one key common to all four events.
    let email = event.required_str(if compliance { "user_email" } else { "email" })?;
    let entity = Entity {
        kind: "user".into(),
        id: user_key(email).to_string(),
    };
    let time = event_time(&event, received_at)?;
    let tenant = if compliance {
        event
            .opt_id("compliance_company_id")
            .map(|id| Tenant { id, name: None })
    } else {
        event.opt_id("company_id").map(|id| Tenant {
            id,
            name: event.opt_text("company_name"),
        })
    };
    let person = Person {
        id: event.opt_id(if compliance {
            "external_user_id"
        } else {
            "profile_id"
        }),
        email: Some(email.to_owned()),
        first_name: event.opt_text("fname"),
        last_name: event.opt_text("lname"),
        full_name: event.opt_text("name"),
    };

    // The id covers the event object, not the envelope, so the bare and wrapped shapes
    // of one compliance update get one id.
    let id = id_from_content(event_type, event.map).map_err(uncanonicalizable(&event.path))?;

    Ok(CanonicalEvent::new(EventFacts {
        event_type: event_type.into(),
        id,
        time,
        vendor_event_type: vendor_type.to_owned(),
        vendor_event_id: None,
        simulation: false,
        data: EventData {
            entity,
            status: event.opt_text("status"),
            person: Some(person),
            tenant,
            payload: Arc::clone(&body),
        },
    }))
}

/// When an Entuitive event happened: `updated_on`, else `created_on`, else the receipt.
fn event_time(
    event: &fields::Obj<'_>,
    received_at: DateTime<Utc>,
) -> Result<DateTime<Utc>, fields::PayloadError> {
    match event.opt_timestamp("updated_on")? {
        Some(t) => Ok(t),
        None => Ok(event.opt_timestamp("created_on")?.unwrap_or(received_at)),
    }
}
