//! Deel: `{data: {meta, resource}, timestamp}` (or the older `{meta, resource}`), where
//! `resource` may be an array that fans out into one event per element.
//!
//! A fanned-out event's `payload` is the body with `resource` narrowed to that event's
//! own element (a one-element array, in its place; everything else verbatim): a review of
//! N items costs N small events, not N copies of the whole body.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::fields::{self, Obj, PayloadError, Problem};
use super::unmapped::{Envelope, Generic, Identity, UnmappedPolicy};
use super::{MapError, Mapped, uncanonicalizable};
use crate::canonical::{
    CanonicalEvent, Entity, EventData, EventFacts, EventType, IdName, Person, Tenant, Vendor,
    id_from_content,
};

pub(super) fn map(
    mut body: Value,
    received_at: DateTime<Utc>,
    max_events: usize,
    unmapped: UnmappedPolicy,
) -> Result<Mapped, MapError> {
    let root = fields::as_object(&body, "$".into())?;
    // The documented shape wraps meta and resource in `data`; an older one, still seen
    // in integrations, has them at the top.
    let top_level = root.has("meta");
    let envelope = if top_level {
        root.clone()
    } else {
        root.object("data")?
    };
    let meta = envelope.object("meta")?;
    let vendor_type = meta.required_str("event_type")?;
    let event_type = EventType::from_vendor_type(Vendor::Deel, vendor_type);
    if event_type.is_none() && unmapped == UnmappedPolicy::DeadLetter {
        return Err(MapError::UnknownEventType(vendor_type.to_owned()));
    }

    let common = Common {
        time: root.opt_timestamp("timestamp")?.unwrap_or(received_at),
        vendor_event_type: vendor_type.to_owned(),
        tracking_id: meta.opt_id("tracking_id"),
        simulation: match meta.get("is_simulation") {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => s.trim().eq_ignore_ascii_case("true"),
            _ => false,
        },
        tenant: meta.opt_id("organization_id").map(|id| Tenant {
            id,
            name: meta.opt_text("organization_name"),
        }),
    };

    let resource_path = fields::child_path(&envelope.path, "resource");
    let Some(resource) = envelope.get("resource") else {
        return Err(envelope.error("resource", Problem::Missing).into());
    };
    let Some(event_type) = event_type else {
        // Passed through: one event for the whole body, an array `resource` included
        // (what its elements are is unknown), identified by `resource` as mapped ones.
        let generic = Generic::new(Envelope {
            vendor: Vendor::Deel,
            vendor_type,
            identity: Identity::Content {
                value: resource,
                path: resource_path,
            },
            time: common.time,
            vendor_event_id: common.tracking_id,
            tenant: common.tenant,
            simulation: common.simulation,
        })?;
        return Ok(Mapped::one(generic.event(Arc::new(body))));
    };
    // Take `resource` out, leaving a `null` in its place so that key order is kept.
    let Some(slot) = resource_slot(&mut body, top_level) else {
        return Err(MapError::InvalidPayload(PayloadError {
            path: resource_path,
            problem: Problem::Missing,
        }));
    };
    match std::mem::take(slot) {
        Value::Array(items) if items.is_empty() => Err(PayloadError {
            path: resource_path,
            problem: Problem::EmptyArray,
        }
        .into()),
        Value::Array(items) if items.len() > max_events => Err(MapError::TooManyEvents {
            path: resource_path,
            count: items.len(),
            limit: max_events,
        }),
        Value::Array(items) => {
            // Every element is checked (and its id computed) before any event is built,
            // so a bad element fails the body whatever the output size.
            let elements = items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    element(
                        event_type,
                        common.simulation,
                        item,
                        format!("{resource_path}[{i}]"),
                    )
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Mapped::fan_out(FanOut {
                skeleton: body,
                top_level,
                items: items.into_iter(),
                elements: elements.into_iter(),
                event_type,
                common,
            }))
        }
        single => {
            let facts = element(event_type, common.simulation, &single, resource_path)?;
            if let Some(slot) = resource_slot(&mut body, top_level) {
                *slot = single;
            }
            Ok(Mapped::one(common.event(event_type, facts, Arc::new(body))))
        }
    }
}

/// What every event of one body shares.
struct Common {
    time: DateTime<Utc>,
    vendor_event_type: String,
    tracking_id: Option<String>,
    simulation: bool,
    tenant: Option<Tenant>,
}

impl Common {
    fn event(&self, event_type: EventType, facts: Element, payload: Arc<Value>) -> CanonicalEvent {
        CanonicalEvent::new(EventFacts {
            event_type: event_type.into(),
            id: facts.id,
            time: self.time,
            vendor_event_type: self.vendor_event_type.clone(),
            vendor_event_id: self.tracking_id.clone(),
            simulation: self.simulation,
            data: EventData {
                entity: facts.entity,
                status: facts.status,
                person: facts.person,
                tenant: self.tenant.clone(),
                payload,
            },
        })
    }
}

/// What one resource contributes to its event.
struct Element {
    id: uuid::Uuid,
    entity: Entity,
    status: Option<String>,
    person: Option<Person>,
}

fn element(
    event_type: EventType,
    simulation: bool,
    value: &Value,
    path: String,
) -> Result<Element, PayloadError> {
    let resource = fields::as_object(value, path)?;
    let id = id_from_content(
        IdName::mapped(event_type).simulated(simulation),
        resource.map,
    )
    .map_err(uncanonicalizable(&resource.path))?;
    Ok(Element {
        id,
        entity: entity(event_type, &resource)?,
        status: resource.opt_text(match event_type {
            EventType::DeelProfileKycChanged => "kyc_status",
            _ => "status",
        }),
        person: person(event_type, &resource),
    })
}

/// The events of an array `resource`, built one at a time.
pub(super) struct FanOut {
    /// The body with a `null` where the array was.
    skeleton: Value,
    top_level: bool,
    items: std::vec::IntoIter<Value>,
    elements: std::vec::IntoIter<Element>,
    event_type: EventType,
    common: Common,
}

impl FanOut {
    pub(super) fn len(&self) -> usize {
        self.elements.len()
    }

    pub(super) fn next_event(&mut self) -> Option<CanonicalEvent> {
        let (item, facts) = (self.items.next()?, self.elements.next()?);
        let mut payload = self.skeleton.clone();
        if let Some(slot) = resource_slot(&mut payload, self.top_level) {
            *slot = Value::Array(vec![item]);
        }
        Some(self.common.event(self.event_type, facts, Arc::new(payload)))
    }
}

/// `resource` inside the body: `$.resource` in the older shape, else `$.data.resource`.
fn resource_slot(body: &mut Value, top_level: bool) -> Option<&mut Value> {
    let envelope = if top_level {
        body
    } else {
        body.get_mut("data")?
    };
    envelope.get_mut("resource")
}

/// The entity kind is the type's entity word; its id is `resource.id`, except a KYC
/// change (about a profile) and an EOR quote (which has no id of its own in the docs).
fn entity(event_type: EventType, resource: &Obj<'_>) -> Result<Entity, PayloadError> {
    let (kind, id) = match event_type {
        EventType::DeelProfileKycChanged => ("profile", resource.entity_id("profile_id")?),
        EventType::DeelEorQuoteCreated if !resource.has("id") => {
            ("contract", resource.entity_id("contract_id")?)
        }
        other => (other.entity(), resource.entity_id("id")?),
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
