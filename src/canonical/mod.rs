//! The public contract: the CloudEvents 1.0 envelope every vendor event becomes, the
//! canonical type table and the stable ids. Strict types; nothing here parses vendor bodies.

mod data_schema;
mod id;
mod json;
mod schema_base;
mod types;
mod vendor;

use std::borrow::Cow;
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use uuid::Uuid;

pub use data_schema::{
    DATA_JSON_SCHEMA, DATA_SCHEMA_DOCUMENT, DATA_SCHEMA_VERSION, UNMAPPED_DEFINITION,
    any_case as any_case_pattern, data_schema_uri, document as data_schema_document,
};
pub use id::{
    EVENT_ID_NAMESPACE, IdName, SIMULATION_ID_NAMESPACE, USER_KEY_NAMESPACE, Uncanonicalizable,
    canonical_json, id_from_any_content, id_from_content, id_from_vendor_event_id, user_key,
};
pub use schema_base::{DEFAULT_SCHEMA_BASE, EVENT_SCHEMA_FILE, InvalidSchemaBase, SchemaBase};
pub use types::{
    CanonicalType, EventType, GENERIC_ENTITY_KIND, MAX_UNMAPPED_WORD_BYTES, NotACanonicalType,
    UNMAPPED_ENTITY, UnmappedType, markdown_table,
};
pub use vendor::{NotAVendor, Vendor};

/// The JSON Schema of [`CanonicalEvent`], as published in `schema/` (with the default
/// schema base).
pub const JSON_SCHEMA: &str = include_str!("../../schema/canonical-event.schema.json");

/// The JSON Schema of [`CanonicalEvent`] with `base`: its `$id`, and the `dataschema`
/// it takes, made from it. The default base gives [`JSON_SCHEMA`] as checked in.
pub fn event_schema(base: SchemaBase) -> Value {
    let mut schema: Value = serde_json::from_str(JSON_SCHEMA).unwrap_or_default();
    schema["$id"] = base.event_schema_document().into();
    schema["properties"]["dataschema"]["pattern"] = base.data_schema_pattern().into();
    schema
}

/// One canonical event: a CloudEvents 1.0 event in JSON structured mode.
///
/// The mapping's value, what the contract is written against: [`crate::normalize()`]
/// returns it, the snapshots, the schema and the consumers read it. The worker holds each
/// one only while serializing it into a [`crate::normalize::OutgoingEvent`], the form it
/// publishes.
///
/// Field order here is the order on the wire. Optional extension attributes are omitted
/// when absent rather than sent as `null`, as CloudEvents asks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanonicalEvent {
    pub specversion: SpecVersion,
    /// The stable id: the same vendor event always gets the same id (see `docs/stable-ids.md`).
    pub id: Uuid,
    /// `/vendors/{vendor}`.
    pub source: Cow<'static, str>,
    /// The canonical type; also the routing key.
    #[serde(rename = "type")]
    pub event_type: CanonicalType,
    /// `{entity kind}/{entity id}`.
    pub subject: String,
    /// When the vendor says the event happened, else when we received it.
    #[serde(with = "rfc3339_utc")]
    pub time: DateTime<Utc>,
    pub datacontenttype: DataContentType,
    /// The JSON Schema of `data` for this type, versioned (see `data_schema`). Always
    /// set on what we publish; absent on events from before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataschema: Option<Cow<'static, str>>,
    pub vendor: Vendor,
    /// The vendor's own event type string, as sent.
    pub vendoreventtype: String,
    /// The vendor's event or delivery id, when it sends one (Authenticate `id`, Deel
    /// `tracking_id`). Not the canonical id: Deel may change it between retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendoreventid: Option<String>,
    /// The vendor's organization or company id, as a string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenantid: Option<String>,
    /// Present, and `true`, only for Deel's simulated events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simulation: Option<bool>,
    pub data: EventData,
}

/// The CloudEvents spec version we emit; any other value fails to deserialize.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SpecVersion {
    #[serde(rename = "1.0")]
    V1_0,
}

/// The media type of `data`; always JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DataContentType {
    #[serde(rename = "application/json")]
    Json,
}

/// The canonical `data`: what downstream teams read instead of the vendor's body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventData {
    /// What the event is about.
    pub entity: Entity,
    /// The vendor's status string for the entity, when the event carries one.
    pub status: Option<String>,
    /// The person the event concerns, when the vendor names one.
    pub person: Option<Person>,
    /// The vendor's organization or company, when present.
    pub tenant: Option<Tenant>,
    /// The vendor's body exactly as parsed: every key, in order, with numbers as written.
    /// Shared (not copied) between the events of a fanned-out body.
    pub payload: Arc<Value>,
}

/// The entity an event is about; `id` is always a string, whatever the vendor sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entity {
    pub kind: String,
    pub id: String,
}

/// A person named by the event. Every field is nullable; the object itself is `null`
/// when the vendor names nobody.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Person {
    /// The vendor's own id for the person.
    pub id: Option<String>,
    pub email: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub full_name: Option<String>,
}

impl Person {
    /// `None` when no field is known, so `person` is `null` rather than all-null.
    pub fn non_empty(self) -> Option<Person> {
        (self != Person::default()).then_some(self)
    }
}

/// The vendor's organization or company.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    pub id: String,
    pub name: Option<String>,
}

/// What a vendor mapping knows about one event; [`CanonicalEvent::new`] fills in the rest.
#[derive(Debug, Clone)]
pub struct EventFacts {
    pub event_type: CanonicalType,
    pub id: Uuid,
    pub time: DateTime<Utc>,
    pub vendor_event_type: String,
    pub vendor_event_id: Option<String>,
    pub simulation: bool,
    pub data: EventData,
}

impl CanonicalEvent {
    /// Builds the envelope, deriving `source`, `subject`, `vendor` and `tenantid` from
    /// the facts so that they can never disagree with `type` and `data`.
    pub fn new(facts: EventFacts) -> CanonicalEvent {
        let vendor = facts.event_type.vendor();
        let dataschema = Some(Cow::Borrowed(data_schema_uri(&facts.event_type)));
        CanonicalEvent {
            specversion: SpecVersion::V1_0,
            id: facts.id,
            source: Cow::Borrowed(vendor.source()),
            event_type: facts.event_type,
            subject: [facts.data.entity.kind.as_str(), "/", &facts.data.entity.id].concat(),
            time: facts.time,
            datacontenttype: DataContentType::Json,
            dataschema,
            vendor,
            vendoreventtype: facts.vendor_event_type,
            vendoreventid: facts.vendor_event_id,
            tenantid: facts.data.tenant.as_ref().map(|t| t.id.clone()),
            simulation: facts.simulation.then_some(true),
            data: facts.data,
        }
    }

    /// The routing key on the canonical exchange.
    pub fn routing_key(&self) -> &str {
        self.event_type.as_str()
    }

    /// `time` as it appears on the wire.
    pub fn time_rfc3339(&self) -> String {
        rfc3339_utc::format(&self.time)
    }
}

/// RFC 3339 in UTC with a `Z`, keeping as many fractional digits as are non-zero.
pub mod rfc3339_utc {
    use chrono::{Datelike, Timelike};

    use super::*;

    /// Whether RFC 3339 can write `t` in UTC: a year of four digits (0000 to 9999) and a
    /// second of 00 to 59. Every `time` we emit passes; times that do not are refused
    /// where they come in (a body's time is `invalid_payload`, a receipt time from the
    /// gateway is passed over).
    ///
    /// chrono holds more than RFC 3339 writes, and writes it anyway: years beyond four
    /// digits (`-0001-12-31T10:00:00Z` for `0000-01-01T00:00:00+14:00`, `+10000-…`)
    /// and leap seconds, which its parser accepts at *any* minute (`08:32:60`) and keeps
    /// through offset conversion. Leap seconds are refused rather than accepted at
    /// `23:59:60Z` only: vendors stamp events with Unix time, which has no leap seconds,
    /// so a `:60` is a broken clock, not a real one; none has been inserted since 2016
    /// and they are to be abolished by 2035; and common consumers (JavaScript `Date`,
    /// Python `datetime`) cannot read one.
    pub fn writable(t: &DateTime<Utc>) -> bool {
        (0..=9999).contains(&t.naive_utc().year()) && t.nanosecond() < 1_000_000_000
    }

    pub fn format(t: &DateTime<Utc>) -> String {
        t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
    }

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        if !s.ends_with('Z') {
            return Err(serde::de::Error::custom("time must be UTC with a Z"));
        }
        let t = DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)?;
        if !writable(&t) {
            return Err(serde::de::Error::custom(
                "time must be in the years 0000 to 9999 with a second of 00 to 59",
            ));
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn sample() -> CanonicalEvent {
        CanonicalEvent::new(EventFacts {
            event_type: EventType::DeelContractCreated.into(),
            id: Uuid::nil(),
            time: DateTime::parse_from_rfc3339("2023-05-10T23:57:49.274Z")
                .unwrap()
                .with_timezone(&Utc),
            vendor_event_type: "contract.created".into(),
            vendor_event_id: Some("t1".into()),
            simulation: false,
            data: EventData {
                entity: Entity {
                    kind: "contract".into(),
                    id: "meq8zvz".into(),
                },
                status: None,
                person: None,
                tenant: Some(Tenant {
                    id: "112546".into(),
                    name: None,
                }),
                payload: Arc::new(json!({"k": 1})),
            },
        })
    }

    #[test]
    fn the_event_schema_with_the_default_base_is_the_checked_in_file() {
        let printed =
            serde_json::to_string_pretty(&event_schema(SchemaBase::default())).unwrap() + "\n";
        assert!(printed == JSON_SCHEMA, "schema/canonical-event.schema.json");
        let other = SchemaBase::new("https://schemas.example.com/hr/").unwrap();
        let schema = event_schema(other);
        assert_eq!(
            schema["$id"],
            "https://schemas.example.com/hr/canonical-event.schema.json"
        );
        assert_eq!(
            schema["properties"]["dataschema"]["pattern"],
            other.data_schema_pattern()
        );
    }

    #[test]
    fn derived_attributes_follow_type_and_data() {
        let e = sample();
        assert_eq!(e.source, "/vendors/deel");
        assert_eq!(e.vendor, Vendor::Deel);
        assert_eq!(e.subject, "contract/meq8zvz");
        assert_eq!(e.tenantid.as_deref(), Some("112546"));
        assert_eq!(e.simulation, None);
        assert_eq!(e.routing_key(), "deel.contract.created");
    }

    #[test]
    fn round_trips_and_rejects_unknown_attributes() {
        let e = sample();
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["time"], "2023-05-10T23:57:49.274Z");
        assert!(json.get("simulation").is_none());
        let back: CanonicalEvent = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back, e);

        let mut extra = json.clone();
        extra["surprise"] = json!(1);
        assert!(serde_json::from_value::<CanonicalEvent>(extra).is_err());

        let mut wrong_version = json;
        wrong_version["specversion"] = json!("0.3");
        assert!(serde_json::from_value::<CanonicalEvent>(wrong_version).is_err());
    }

    #[test]
    fn time_keeps_only_nonzero_fraction_digits() {
        let t = |s: &str| {
            rfc3339_utc::format(&DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc))
        };
        assert_eq!(t("2024-08-09T10:13:36.000000Z"), "2024-08-09T10:13:36Z");
        assert_eq!(
            t("2024-08-09T10:13:36.120+01:00"),
            "2024-08-09T09:13:36.120Z"
        );
        assert_eq!(
            t("2024-08-09T10:13:36.123456Z"),
            "2024-08-09T10:13:36.123456Z"
        );
    }
}
