//! Deel: `{data: {meta, resource}, timestamp}` (or the older `{meta, resource}`), where
//! `resource` may be an array that fans out into one event per element.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::fields::{self, Obj, PayloadError, Problem};
use super::{MapError, uncanonicalizable};
use crate::canonical::{
    CanonicalEvent, Entity, EventData, EventFacts, EventType, Person, Tenant, Vendor,
    id_from_content,
};

pub(super) fn map(
    body: Arc<Value>,
    received_at: DateTime<Utc>,
) -> Result<Vec<CanonicalEvent>, MapError> {
    let root = fields::as_object(&body, "$".into())?;
    // The documented shape wraps meta and resource in `data`; an older one, still seen
    // in integrations, has them at the top.
    let envelope = if root.has("meta") {
        root.clone()
    } else {
        root.object("data")?
    };
    let meta = envelope.object("meta")?;
    let vendor_type = meta.required_str("event_type")?;
    let event_type = EventType::from_vendor_type(Vendor::Deel, vendor_type)
        .ok_or_else(|| MapError::UnknownEventType(vendor_type.to_owned()))?;

    let time = root.opt_timestamp("timestamp")?.unwrap_or(received_at);
    let tenant = meta.opt_id("organization_id").map(|id| Tenant {
        id,
        name: meta.opt_text("organization_name"),
    });
    let simulation = match meta.get("is_simulation") {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.trim().eq_ignore_ascii_case("true"),
        _ => false,
    };
    let tracking_id = meta.opt_id("tracking_id");

    let resource_path = fields::child_path(&envelope.path, "resource");
    let resources: Vec<(&Value, String)> = match envelope.get("resource") {
        None => return Err(envelope.error("resource", Problem::Missing).into()),
        Some(Value::Array(items)) if items.is_empty() => {
            return Err(envelope.error("resource", Problem::EmptyArray).into());
        }
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| (item, format!("{resource_path}[{i}]")))
            .collect(),
        Some(single) => vec![(single, resource_path)],
    };

    let mut events = Vec::with_capacity(resources.len());
    for (value, path) in resources {
        let resource = fields::as_object(value, path)?;
        let id = id_from_content(event_type, resource.map)
            .map_err(uncanonicalizable(resource.path.clone()))?;
        events.push(CanonicalEvent::new(EventFacts {
            event_type,
            id,
            time,
            vendor_event_type: vendor_type.to_owned(),
            vendor_event_id: tracking_id.clone(),
            simulation,
            data: EventData {
                entity: entity(event_type, &resource)?,
                status: resource.opt_text(match event_type {
                    EventType::DeelProfileKycChanged => "kyc_status",
                    _ => "status",
                }),
                person: person(event_type, &resource),
                tenant: tenant.clone(),
                payload: Arc::clone(&body),
            },
        }));
    }
    Ok(events)
}

/// The entity kind is the type's entity word; its id is `resource.id`, except a KYC
/// change (about a profile) and an EOR quote (which has no id of its own in the docs).
fn entity(event_type: EventType, resource: &Obj<'_>) -> Result<Entity, PayloadError> {
    let (kind, id) = match event_type {
        EventType::DeelProfileKycChanged => ("profile", resource.required_id("profile_id")?),
        EventType::DeelEorQuoteCreated if !resource.has("id") => {
            ("contract", resource.required_id("contract_id")?)
        }
        other => (other.entity(), resource.required_id("id")?),
    };
    Ok(Entity {
        kind: kind.to_owned(),
        id,
    })
}

/// The person an event concerns: a contract's worker, a time-off requester, a KYC
/// profile, a background-check candidate.
fn person(event_type: EventType, resource: &Obj<'_>) -> Option<Person> {
    use EventType::*;
    let person = match event_type {
        DeelBackgroundCheckCompleted => Person {
            email: resource.opt_text("candidate_email"),
            ..Person::default()
        },
        DeelContractCreated
        | DeelContractStatusUpdated
        | DeelContractTerminated
        | DeelContractArchived => {
            let worker = resource.opt_object("worker")?;
            Person {
                id: worker.opt_id("id"),
                email: worker.opt_text("email"),
                first_name: worker.opt_text("first_name"),
                last_name: worker.opt_text("last_name"),
                full_name: worker.opt_text("full_name"),
            }
        }
        DeelProfileKycChanged => Person {
            id: resource.opt_id("profile_id"),
            email: resource.opt_text("email"),
            first_name: resource.opt_text("first_name"),
            last_name: resource.opt_text("last_name"),
            full_name: None,
        },
        DeelTimeOffCreated | DeelTimeOffReviewed | DeelTimeOffUpdated => {
            let requester = resource.opt_object("requester")?;
            Person {
                id: requester.opt_id("id"),
                full_name: requester.opt_text("name"),
                ..Person::default()
            }
        }
        _ => return None,
    };
    person.non_empty()
}
