//! Unmapped vendor types passed through (`unmapped.{vendor} = "passthrough"`): one generic
//! event each, with a stable id by the vendor's own rules, and nothing else changed.

use serde_json::{Value, json};
use uuid::Uuid;
use webhook_normalizer::canonical::{
    DATA_JSON_SCHEMA, DATA_SCHEMA_DOCUMENT, EVENT_ID_NAMESPACE, JSON_SCHEMA,
};
use webhook_normalizer::{
    CanonicalEvent, DeadLetterKind, Limits, NormalizeError, Unmapped, UnmappedPolicy, Vendor,
    normalize,
};

use crate::{all_fixtures, fixtures_dir, received_at, run};

fn passthrough(body: &[u8], hint: Option<&str>) -> Result<Vec<CanonicalEvent>, NormalizeError> {
    normalize(
        body,
        hint,
        received_at(),
        &Limits::default(),
        &Unmapped::PASSTHROUGH,
        webhook_normalizer::SchemaBase::default(),
    )
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixtures_dir().join(name)).unwrap()
}

fn one(events: Result<Vec<CanonicalEvent>, NormalizeError>) -> CanonicalEvent {
    let mut events = events.unwrap();
    assert_eq!(events.len(), 1);
    events.pop().unwrap()
}

/// Golden outputs of the fixtures whose type is unmapped, reviewed by reading; every
/// other fixture gives exactly what it gives without passthrough.
#[test]
fn unmapped_fixtures_become_generic_events_and_nothing_else_changes() {
    let mut generic = 0;
    for (path, hint) in all_fixtures() {
        let body = std::fs::read(&path).unwrap();
        let default = run(&body, hint);
        let passed = passthrough(&body, hint);
        match &default {
            Err(e) if e.kind() == DeadLetterKind::UnknownEventType => {
                let rel = path.strip_prefix(fixtures_dir()).unwrap().to_string_lossy();
                let name = rel.replace('/', "__");
                let events = passed.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                insta::with_settings!({
                    snapshot_path => "snapshots",
                    prepend_module_to_snapshot => false,
                    omit_expression => true,
                    description => format!("tests/fixtures/{rel} passed through, vendor hint {hint:?}"),
                }, {
                    insta::assert_snapshot!(
                        format!("passthrough__{}", name.trim_end_matches(".json")),
                        serde_json::to_string_pretty(&events).unwrap()
                    );
                });
                generic += 1;
            }
            _ => assert_eq!(passed, default, "{}", path.display()),
        }
    }
    assert_eq!(generic, 3, "one unmapped fixture per vendor");
}

#[test]
fn a_deel_generic_id_is_the_jcs_of_resource_under_the_generic_type() {
    let event = one(passthrough(&fixture("deel/payslip.available.json"), None));
    assert_eq!(event.event_type.as_str(), "deel.unmapped.payslip_available");
    // JCS of `resource`, written by hand: keys sorted, no whitespace.
    let name = "deel\ndeel.unmapped.payslip_available\n\"payslip.available\"\n\
        {\"created\":true,\"created_at\":\"2023-05-11T12:21:52.439Z\",\"id\":10446275,\
        \"public_id\":\"86ea6346-e5d3-491c-a065-1aa14cf7e3a6\",\"status\":\"pending\"}";
    assert_eq!(event.id, Uuid::new_v5(&EVENT_ID_NAMESPACE, name.as_bytes()));
    assert_eq!(event.subject, format!("event/{}", event.id));
    assert_eq!(
        event.vendoreventid.as_deref(),
        Some("xGt7b5_uCVenTFN_88IsU52ztxXg")
    );
    assert_eq!(event.tenantid.as_deref(), Some("112546"));
    assert_eq!(event.time.to_rfc3339(), "2023-05-11T12:22:24.801+00:00");
}

#[test]
fn a_deel_generic_id_survives_retries_and_reformatting_but_not_other_content() {
    let body: Value = serde_json::from_slice(&fixture("deel/payslip.available.json")).unwrap();
    let id = |v: &Value| one(passthrough(v.to_string().as_bytes(), Some("deel"))).id;
    let original = id(&body);

    // A retry: new tracking id and timestamp, keys in another order, reindented.
    let mut retry = body.clone();
    retry["data"]["meta"]["tracking_id"] = json!("another-delivery");
    retry["timestamp"] = json!("2023-05-11T12:30:00.000Z");
    let reordered: serde_json::Map<String, Value> = retry
        .as_object()
        .unwrap()
        .iter()
        .rev()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let pretty = serde_json::to_string_pretty(&reordered).unwrap();
    assert_eq!(
        one(passthrough(pretty.as_bytes(), Some("deel"))).id,
        original
    );

    let mut changed = body.clone();
    changed["data"]["resource"]["status"] = json!("paid");
    assert_ne!(id(&changed), original);

    // The same resource under another unmapped type is another event.
    let mut other_type = body;
    other_type["data"]["meta"]["event_type"] = json!("payslip.updated");
    assert_ne!(id(&other_type), original);
}

/// Vendor types normalised alike share a generic type (and routing key), never an id:
/// a consumer deduplicating on ids keeps each of them.
#[test]
fn vendor_types_sharing_a_generic_type_never_share_an_id() {
    let body: Value = serde_json::from_slice(&fixture("deel/payslip.available.json")).unwrap();
    let long = "x".repeat(64);
    let mut ids = std::collections::BTreeMap::new();
    for vendor_type in [
        "payslip.available".to_owned(),
        "PAYSLIP_AVAILABLE".to_owned(),
        "payslip--available!!".to_owned(),
        format!("{long}.first"),
        format!("{long}.second"),
    ] {
        let mut typed = body.clone();
        typed["data"]["meta"]["event_type"] = json!(vendor_type);
        let event = one(passthrough(typed.to_string().as_bytes(), Some("deel")));
        if let Some(other) = ids.insert(event.id, vendor_type.clone()) {
            panic!("{vendor_type:?} and {other:?} share the id {}", event.id);
        }
    }
    let types: std::collections::BTreeSet<String> = ids
        .values()
        .map(|t| {
            let mut typed = body.clone();
            typed["data"]["meta"]["event_type"] = json!(t);
            one(passthrough(typed.to_string().as_bytes(), Some("deel")))
                .event_type
                .to_string()
        })
        .collect();
    assert_eq!(types.len(), 2, "two routing keys for five types: {types:?}");
}

/// A simulated unmapped event is not the real one either.
#[test]
fn a_simulated_generic_event_never_shares_an_id_with_the_real_one() {
    let body: Value = serde_json::from_slice(&fixture("deel/payslip.available.json")).unwrap();
    let real = one(passthrough(body.to_string().as_bytes(), Some("deel")));
    let mut simulated = body;
    simulated["data"]["meta"]["is_simulation"] = json!(true);
    let simulated = one(passthrough(simulated.to_string().as_bytes(), Some("deel")));
    assert_eq!(simulated.simulation, Some(true));
    assert_ne!(simulated.id, real.id);
}

#[test]
fn a_deel_array_resource_is_one_generic_event_holding_the_whole_body() {
    let mut body: Value = serde_json::from_slice(&fixture("deel/payslip.available.json")).unwrap();
    let item = body["data"]["resource"].take();
    body["data"]["resource"] = json!([item.clone(), item]);
    let event = one(passthrough(body.to_string().as_bytes(), None));
    assert_eq!(*event.data.payload, body);
}

#[test]
fn an_authenticate_generic_id_is_its_envelope_id() {
    let event = one(passthrough(
        &fixture("authenticate/SEX_OFFENDER_CHECK_STATUS_UPDATE.json"),
        None,
    ));
    let name = "authenticate\nauthenticate.unmapped.sex_offender_check_status_update\n\
        \"SEX_OFFENDER_CHECK_STATUS_UPDATE\"\n1a2b3c4d-0000-4000-8000-000000000009";
    assert_eq!(event.id, Uuid::new_v5(&EVENT_ID_NAMESPACE, name.as_bytes()));
    assert_eq!(
        event.vendoreventid.as_deref(),
        Some("1a2b3c4d-0000-4000-8000-000000000009")
    );
}

#[test]
fn only_the_vendors_that_pass_through_do() {
    let deel = fixture("deel/payslip.available.json");
    let entuitive = fixture("entuitive/user.password_reset.json");
    let policy = Unmapped {
        deel: UnmappedPolicy::Passthrough,
        ..Unmapped::default()
    };
    let limits = Limits::default();
    assert!(
        normalize(
            &deel,
            None,
            received_at(),
            &limits,
            &policy,
            webhook_normalizer::SchemaBase::default()
        )
        .is_ok()
    );
    let refused = normalize(
        &entuitive,
        None,
        received_at(),
        &limits,
        &policy,
        webhook_normalizer::SchemaBase::default(),
    )
    .unwrap_err();
    assert_eq!(refused.kind(), DeadLetterKind::UnknownEventType);
    assert_eq!(refused.vendor(), Some(Vendor::Entuitive));
}

#[test]
fn a_type_with_no_letter_or_digit_stays_a_dead_letter() {
    let body = br#"{"data": {"meta": {"event_type": "..."}, "resource": {"id": 1}}}"#;
    let e = passthrough(body, None).unwrap_err();
    assert_eq!(e.kind(), DeadLetterKind::UnknownEventType);
}

#[test]
fn a_generic_event_still_needs_what_identifies_it() {
    // Deel without `resource` (`null` counts as absent, as everywhere), Authenticate
    // without `id`: invalid_payload, by path.
    for deel in [
        &br#"{"data": {"meta": {"event_type": "payslip.available"}}}"#[..],
        br#"{"data": {"meta": {"event_type": "payslip.available"}, "resource": null}}"#,
    ] {
        let e = passthrough(deel, Some("deel")).unwrap_err();
        assert_eq!(e.kind(), DeadLetterKind::InvalidPayload);
        assert_eq!(e.to_string(), "$.data.resource: missing");
    }
    let authenticate = br#"{"event": "NEW_THING", "eventDate": "2025-06-20T11:00:00Z"}"#;
    let e = passthrough(authenticate, None).unwrap_err();
    assert_eq!(e.kind(), DeadLetterKind::InvalidPayload);
    assert!(e.to_string().contains("$.id"), "{e}");
}

#[test]
fn generic_events_validate_against_the_published_schema() {
    let schema: Value = serde_json::from_str(JSON_SCHEMA).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    for name in [
        "deel/payslip.available.json",
        "authenticate/SEX_OFFENDER_CHECK_STATUS_UPDATE.json",
        "entuitive/user.password_reset.json",
    ] {
        let event = serde_json::to_value(one(passthrough(&fixture(name), None))).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&event)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{name}: {errors:#?}");
        let data: Value = serde_json::from_str(DATA_JSON_SCHEMA).unwrap();
        let uri = event["dataschema"].as_str().unwrap();
        assert_eq!(uri, format!("{DATA_SCHEMA_DOCUMENT}#/$defs/unmapped"));
        let definition = data.pointer("/$defs/unmapped").unwrap();
        let data_validator = jsonschema::validator_for(definition).unwrap();
        assert!(data_validator.is_valid(&event["data"]), "{name}");
        let back: CanonicalEvent = serde_json::from_value(event).unwrap();
        assert!(back.event_type.mapped().is_none());
    }
}
