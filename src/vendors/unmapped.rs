//! The generic event of a vendor type we do not map, for vendors whose policy is
//! `passthrough`: the envelope's facts that every type of the vendor shares (time, the
//! vendor's event id, tenant, simulation) and the whole body as `payload`; nothing
//! about what the body is about.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{MapError, uncanonicalizable};
use crate::canonical::{
    CanonicalEvent, CanonicalType, Entity, EventData, EventFacts, GENERIC_ENTITY_KIND, IdName,
    Tenant, Vendor, id_from_any_content, id_from_vendor_event_id,
};

/// What becomes of a body whose vendor type is not in the type table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnmappedPolicy {
    /// A dead letter, `{vendor}.unknown_event_type`: replayed once a release maps it.
    #[default]
    DeadLetter,
    /// A generic canonical event, `{vendor}.unmapped.{vendor type, normalised}`.
    Passthrough,
}

/// The policy for each vendor (setting `unmapped.{vendor}`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Unmapped {
    pub entuitive: UnmappedPolicy,
    pub authenticate: UnmappedPolicy,
    pub deel: UnmappedPolicy,
}

impl Unmapped {
    /// Every vendor passed through.
    pub const PASSTHROUGH: Unmapped = Unmapped {
        entuitive: UnmappedPolicy::Passthrough,
        authenticate: UnmappedPolicy::Passthrough,
        deel: UnmappedPolicy::Passthrough,
    };

    pub fn of(&self, vendor: Vendor) -> UnmappedPolicy {
        match vendor {
            Vendor::Entuitive => self.entuitive,
            Vendor::Authenticate => self.authenticate,
            Vendor::Deel => self.deel,
        }
    }

    pub fn of_mut(&mut self, vendor: Vendor) -> &mut UnmappedPolicy {
        match vendor {
            Vendor::Entuitive => &mut self.entuitive,
            Vendor::Authenticate => &mut self.authenticate,
            Vendor::Deel => &mut self.deel,
        }
    }
}

/// What identifies one generic event, by the same rules as a mapped one of its vendor.
pub(super) enum Identity<'a> {
    /// The vendor's documented event id (Authenticate's envelope `id`).
    VendorEventId(&'a str),
    /// The JCS form of this value (Deel's `resource`, Entuitive's `data`), found at `path`.
    Content { value: &'a Value, path: String },
}

/// The envelope's facts of one body of an unmapped type.
pub(super) struct Envelope<'a> {
    pub vendor: Vendor,
    pub vendor_type: &'a str,
    pub identity: Identity<'a>,
    pub time: DateTime<Utc>,
    pub vendor_event_id: Option<String>,
    pub tenant: Option<Tenant>,
    pub simulation: bool,
}

/// A generic event but for its payload: everything that borrows the body is computed,
/// so the body itself can then be moved in as the payload.
pub(super) struct Generic {
    facts: EventFacts,
}

impl Generic {
    /// The generic type and id of a body. The type is the vendor type normalised; a type
    /// with no letter or digit has none and stays a dead letter (`unknown_event_type`).
    pub(super) fn new(envelope: Envelope<'_>) -> Result<Generic, MapError> {
        let event_type = CanonicalType::unmapped(envelope.vendor, envelope.vendor_type)
            .ok_or_else(|| MapError::UnknownEventType(envelope.vendor_type.to_owned()))?;
        let name = IdName::generic(event_type.clone(), envelope.vendor_type)
            .simulated(envelope.simulation);
        let id = match envelope.identity {
            Identity::VendorEventId(id) => id_from_vendor_event_id(name, id),
            Identity::Content { value, path } => {
                id_from_any_content(&name, value).map_err(uncanonicalizable(&path))?
            }
        };
        Ok(Generic {
            facts: EventFacts {
                event_type,
                id,
                time: envelope.time,
                vendor_event_type: envelope.vendor_type.to_owned(),
                vendor_event_id: envelope.vendor_event_id,
                simulation: envelope.simulation,
                data: EventData {
                    entity: Entity {
                        kind: GENERIC_ENTITY_KIND.into(),
                        id: id.to_string(),
                    },
                    status: None,
                    person: None,
                    tenant: envelope.tenant,
                    payload: Arc::new(Value::Null),
                },
            },
        })
    }

    /// The event, with the whole body as its payload.
    pub(super) fn event(mut self, body: Arc<Value>) -> CanonicalEvent {
        self.facts.data.payload = body;
        CanonicalEvent::new(self.facts)
    }
}
