//! The JSON Schema of each canonical type's `data`: what the mapping knows beyond the
//! envelope (the entity kinds, where `status` comes from and the values it can take, which
//! parts of `person` are ever filled, whether a tenant is). One document,
//! `schema/event-data.v1.schema.json`, holds a definition per type; every event's
//! `dataschema` attribute points at its own (`…/event-data.v1.schema.json#/$defs/{type}`,
//! the `…` being the schema base: `schema_base`).
//!
//! The version is in the file name. A change after which an event could carry a `data`
//! that the published definition refuses (a new entity kind, a field that was always
//! `null` now filled, another stage) is a new version, a new file beside the old; a new
//! type is a new definition in the same version (`docs/contract.md`).
//! A test fails when the checked-in document is not what [`document`] makes.

use serde_json::{Map, Value, json};

use super::{CanonicalType, EventType, SchemaBase};

/// The version of the `data` schemas, in their file name and every `dataschema`.
pub const DATA_SCHEMA_VERSION: u32 = 1;

/// The document's file name, appended to the schema base for its `$id`.
pub(super) const DATA_SCHEMA_FILE: &str = "event-data.v1.schema.json";

/// The document's `$id` with the default schema base (an identifier, not a location:
/// `docs/contract.md`).
pub const DATA_SCHEMA_DOCUMENT: &str =
    "https://github.com/webhook-normalizer/webhook-normalizer/schema/event-data.v1.schema.json";

/// The definition name of the generic `data` of every unmapped type passed through.
pub const UNMAPPED_DEFINITION: &str = "unmapped";

/// The checked-in document, as published (with the default base).
pub const DATA_JSON_SCHEMA: &str = include_str!("../../schema/event-data.v1.schema.json");

/// The `dataschema` of an event of type `t` with the default schema base: the document
/// and a JSON Pointer to the type's definition ([`SchemaBase::data_schema_uri`]).
pub fn data_schema_uri(t: &CanonicalType) -> &'static str {
    SchemaBase::default().data_schema_uri(t)
}

/// The document, its `$id` made from `base`: one definition per canonical type, and one
/// for generic events.
pub fn document(base: SchemaBase) -> Value {
    let mut defs = Map::new();
    for t in EventType::ALL {
        defs.insert(t.as_str().into(), definition(*t));
    }
    defs.insert(UNMAPPED_DEFINITION.into(), unmapped_definition());
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": base.data_schema_document(),
        "title": "The data of each canonical event type, version 1",
        "description": "Each event's `dataschema` names its definition here (`#/$defs/{type}`). The envelope, `data` included in outline, is schema/canonical-event.schema.json.",
        "$defs": defs,
    })
}

/// Which parts of `person` a type ever fills.
enum PersonShape {
    /// Always `null`: the type names nobody.
    Never,
    /// `null`, or an object in which only these fields may be strings.
    Some(&'static [&'static str]),
    /// Always an object, with these fields possibly strings and `email` always one.
    AlwaysWithEmail(&'static [&'static str]),
}

/// Where `status` comes from, and what the mapping knows of its values.
struct Status {
    field: &'static str,
    /// The one value it can have, in any letter case (the report's stage).
    stage: Option<&'static str>,
}

fn status(t: EventType) -> Status {
    use EventType::*;
    let field = match t {
        AuthenticateBackgroundCheckUpdated => "order.orderDetails.search_status",
        AuthenticateUserUpdated
        | AuthenticateIdentityVerificationAttempted
        | AuthenticateIdDocumentReviewCompleted
        | AuthenticatePassportReviewCompleted
        | AuthenticateBackgroundCheckCompleted
        | AuthenticateReportInitiated
        | AuthenticateReportCompleted
        | AuthenticateReportFailed => "order.status",
        DeelProfileKycChanged => "resource.kyc_status",
        t if t.vendor() == super::Vendor::Deel => "resource.status",
        _ => "status of the event object",
    };
    let stage = match t {
        AuthenticateReportInitiated => Some("INITIATED"),
        AuthenticateReportCompleted => Some("COMPLETED"),
        AuthenticateReportFailed => Some("FAILED"),
        _ => None,
    };
    Status { field, stage }
}

fn person(t: EventType) -> PersonShape {
    use EventType::*;
    const NAMES: &[&str] = &["id", "first_name", "last_name", "full_name"];
    match t {
        EntuitiveUserCreated
        | EntuitiveUserUpdated
        | EntuitiveUserDeactivated
        | EntuitiveComplianceStatusUpdated => PersonShape::AlwaysWithEmail(NAMES),
        DeelBackgroundCheckCompleted => PersonShape::Some(&["email"]),
        DeelContractCreated
        | DeelContractStatusUpdated
        | DeelContractTerminated
        | DeelContractArchived => {
            PersonShape::Some(&["id", "email", "first_name", "last_name", "full_name"])
        }
        DeelProfileKycChanged => PersonShape::Some(&["id", "email", "first_name", "last_name"]),
        DeelTimeOffCreated | DeelTimeOffReviewed | DeelTimeOffUpdated => {
            PersonShape::Some(&["id", "full_name"])
        }
        DeelEorQuoteCreated
        | DeelInvoiceAdjustmentCreated
        | DeelInvoiceAdjustmentReviewed
        | DeelTimesheetCreated
        | DeelTimesheetReviewed => PersonShape::Never,
        // Authenticate: the order's user access code, when it has one.
        _ => PersonShape::Some(&["id"]),
    }
}

/// The entity kinds of a type, read off its subject rule (`report/{…}, else user/{…}`).
fn kinds(t: EventType) -> Vec<&'static str> {
    t.subject_rule()
        .split(", else ")
        .filter_map(|alternative| alternative.split_once('/').map(|(kind, _)| kind))
        .collect()
}

fn definition(t: EventType) -> Value {
    let kinds = kinds(t);
    let kind = match kinds.as_slice() {
        [one] => json!({"const": one}),
        many => json!({"enum": many}),
    };
    let status = status(t);
    let status_schema = match status.stage {
        Some(stage) => json!({
            "description": format!("From `{}`: the report's stage, in the vendor's letter case.", status.field),
            "type": "string",
            "pattern": any_case(stage),
        }),
        None => json!({
            "description": format!("From `{}`, as the vendor wrote it (text; numbers and booleans as text); null when absent.", status.field),
            "type": ["string", "null"],
        }),
    };
    let tenant = if t.vendor() == super::Vendor::Authenticate {
        json!({"description": "Authenticate sends no tenant.", "type": "null"})
    } else {
        json!({"oneOf": [{"type": "null"}, tenant_object()]})
    };
    data_definition(DataParts {
        title: format!("data of {}", t.as_str()),
        description: format!(
            "{} `{}`{}.",
            t.vendor(),
            t.vendor_event_type(),
            if t.condition().is_empty() {
                String::new()
            } else {
                format!(" when {}", t.condition())
            }
        ),
        kind,
        id: json!({
            "description": format!("As in the subject: {}.", t.subject_rule()),
            "type": "string",
            "minLength": 1,
        }),
        status: status_schema,
        person: person_schema(person(t)),
        tenant,
        payload: "The vendor's body as parsed (for a fanned-out array, narrowed to this event's element).",
    })
}

fn unmapped_definition() -> Value {
    data_definition(DataParts {
        title: "data of a generic event ({vendor}.unmapped.{word})".into(),
        description: "An unmapped vendor type passed through: the mapping knows nothing of the body beyond its vendor's envelope.".into(),
        kind: json!({"const": super::GENERIC_ENTITY_KIND}),
        id: json!({"description": "The event's own id.", "type": "string", "format": "uuid"}),
        status: json!({"type": "null"}),
        person: json!({"type": "null"}),
        tenant: json!({"description": "Deel's meta.organization_id and name; null for the others.", "oneOf": [{"type": "null"}, tenant_object()]}),
        payload: "The vendor's whole body as parsed.",
    })
}

/// The schemas of a definition's parts; the object around them is the same for all.
struct DataParts {
    title: String,
    description: String,
    kind: Value,
    id: Value,
    status: Value,
    person: Value,
    tenant: Value,
    payload: &'static str,
}

fn data_definition(parts: DataParts) -> Value {
    json!({
        "title": parts.title,
        "description": parts.description,
        "type": "object",
        "additionalProperties": false,
        "required": ["entity", "status", "person", "tenant", "payload"],
        "properties": {
            "entity": {
                "type": "object",
                "additionalProperties": false,
                "required": ["kind", "id"],
                "properties": {"kind": parts.kind, "id": parts.id},
            },
            "status": parts.status,
            "person": parts.person,
            "tenant": parts.tenant,
            "payload": {"description": parts.payload, "type": "object"},
        },
    })
}

fn tenant_object() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["id", "name"],
        "properties": {
            "id": {"type": "string", "minLength": 1},
            "name": {"type": ["string", "null"]},
        },
    })
}

fn person_schema(shape: PersonShape) -> Value {
    const FIELDS: [&str; 5] = ["id", "email", "first_name", "last_name", "full_name"];
    let object = |filled: &[&str], email_required: bool| {
        let properties: Map<String, Value> = FIELDS
            .iter()
            .map(|f| {
                let schema = if *f == "email" && email_required {
                    json!({"type": "string"})
                } else if filled.contains(f) {
                    json!({"type": ["string", "null"]})
                } else {
                    json!({"type": "null"})
                };
                ((*f).to_owned(), schema)
            })
            .collect();
        json!({
            "type": "object",
            "additionalProperties": false,
            "required": FIELDS,
            "properties": properties,
        })
    };
    match shape {
        PersonShape::Never => json!({"type": "null"}),
        PersonShape::Some(filled) => json!({"oneOf": [{"type": "null"}, object(filled, false)]}),
        PersonShape::AlwaysWithEmail(filled) => object(filled, true),
    }
}

/// A pattern matching exactly `word` in any ASCII letter case: `^[Ff][Aa]…$` (JSON
/// Schema has no case-insensitive flag). Regex syntax characters are escaped.
pub fn any_case(word: &str) -> String {
    let mut pattern = String::from("^");
    for c in word.chars() {
        if c.is_ascii_alphabetic() {
            pattern.push('[');
            pattern.push(c.to_ascii_uppercase());
            pattern.push(c.to_ascii_lowercase());
            pattern.push(']');
        } else {
            if "^$\\.*+?()[]{}|/".contains(c) {
                pattern.push('\\');
            }
            pattern.push(c);
        }
    }
    pattern.push('$');
    pattern
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checked_in_document_is_the_generated_one() {
        let generated =
            serde_json::to_string_pretty(&document(SchemaBase::default())).unwrap() + "\n";
        assert!(
            DATA_JSON_SCHEMA == generated,
            "schema/event-data.v1.schema.json is stale: `cargo run -- event-types --format data-schema > schema/event-data.v1.schema.json`"
        );
    }

    #[test]
    fn kinds_come_from_the_subject_rule() {
        assert_eq!(
            kinds(EventType::AuthenticateReportCompleted),
            ["report", "user"]
        );
        assert_eq!(
            kinds(EventType::DeelEorQuoteCreated),
            ["eor_quote", "contract"]
        );
        assert_eq!(kinds(EventType::DeelTimesheetReviewed), ["timesheet"]);
        for t in EventType::ALL {
            let kinds = kinds(*t);
            assert!(!kinds.is_empty(), "{t}");
            assert!(
                kinds.iter().all(
                    |k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                ),
                "{t}: {kinds:?}"
            );
        }
    }

    #[test]
    fn any_case_spells_each_letter_both_ways() {
        assert_eq!(any_case("FAILED"), "^[Ff][Aa][Ii][Ll][Ee][Dd]$");
    }

    #[test]
    fn every_type_points_at_its_own_definition() {
        let doc = document(SchemaBase::default());
        for t in EventType::ALL {
            let uri = data_schema_uri(&(*t).into());
            let (document, pointer) = uri.split_once('#').unwrap();
            assert_eq!(document, DATA_SCHEMA_DOCUMENT);
            assert!(document.ends_with(&format!(".v{DATA_SCHEMA_VERSION}.schema.json")));
            assert!(DATA_SCHEMA_FILE.ends_with(&format!(".v{DATA_SCHEMA_VERSION}.schema.json")));
            let definition = doc.pointer(pointer).unwrap();
            assert_eq!(definition["title"], format!("data of {t}"));
        }
        let generic = CanonicalType::unmapped(super::super::Vendor::Deel, "x").unwrap();
        assert!(
            doc.pointer(data_schema_uri(&generic).split_once('#').unwrap().1)
                .is_some()
        );
    }
}
