//! Every event the fixtures produce validates against the published JSON Schema, and
//! the schema's type list is the type table.

use webhook_normalizer::{EventType, canonical::JSON_SCHEMA};

use crate::{all_fixtures, run};

fn schema() -> serde_json::Value {
    serde_json::from_str(JSON_SCHEMA).unwrap()
}

#[test]
fn every_fixture_event_validates() {
    let validator = jsonschema::validator_for(&schema()).unwrap();
    let mut checked = 0;
    for (path, hint) in all_fixtures() {
        let Ok(events) = run(&std::fs::read(&path).unwrap(), hint) else {
            continue;
        };
        for event in events {
            let json = serde_json::to_value(&event).unwrap();
            let errors: Vec<String> = validator
                .iter_errors(&json)
                .map(|e| format!("{} at {}", e, e.instance_path()))
                .collect();
            assert!(errors.is_empty(), "{}: {errors:#?}", path.display());
            checked += 1;
        }
    }
    assert!(checked >= 39, "only {checked} events checked");
}

#[test]
fn schema_rejects_what_the_contract_forbids() {
    let validator = jsonschema::validator_for(&schema()).unwrap();
    let body = std::fs::read(crate::fixtures_dir().join("deel/contract.created.json")).unwrap();
    let good = serde_json::to_value(&run(&body, None).unwrap()[0]).unwrap();
    assert!(validator.is_valid(&good));
    type Mutation = fn(&mut serde_json::Value);
    let mutations: [(&str, Mutation); 7] = [
        ("unknown attribute", |v| v["extra"] = 1.into()),
        ("time with offset", |v| {
            v["time"] = "2023-05-10T23:57:49+02:00".into()
        }),
        ("source of another vendor", |v| {
            v["source"] = "/vendors/entuitive".into()
        }),
        ("type not in table", |v| {
            v["type"] = "deel.contract.exploded".into()
        }),
        ("generic type not in normal form", |v| {
            v["type"] = "deel.unmapped.Payslip.Available".into()
        }),
        ("entity id a number", |v| {
            v["data"]["entity"]["id"] = 5.into()
        }),
        ("payload missing", |v| {
            v["data"].as_object_mut().unwrap().remove("payload");
        }),
    ];
    for (what, mutate) in mutations {
        let mut bad = good.clone();
        mutate(&mut bad);
        assert!(!validator.is_valid(&bad), "schema accepted {what}");
    }
}

#[test]
fn schema_type_enum_is_the_type_table() {
    let schema = schema();
    let listed: Vec<&str> = schema["properties"]["type"]["anyOf"][0]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let table: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
    assert_eq!(listed, table);
}

/// Every fixture event's `data` validates against the definition its `dataschema` points
/// at, and the data schemas refuse what the mapping never makes.
#[test]
fn every_fixture_event_data_validates_against_its_dataschema() {
    let document: serde_json::Value =
        serde_json::from_str(webhook_normalizer::canonical::DATA_JSON_SCHEMA).unwrap();
    let validator_for = |uri: &str| {
        let (file, pointer) = uri.split_once('#').unwrap();
        assert_eq!(file, webhook_normalizer::canonical::DATA_SCHEMA_DOCUMENT);
        let definition = document.pointer(pointer).unwrap_or_else(|| panic!("{uri}"));
        jsonschema::validator_for(definition).unwrap()
    };
    let mut checked = std::collections::HashSet::new();
    for (path, hint) in all_fixtures() {
        let Ok(events) = run(&std::fs::read(&path).unwrap(), hint) else {
            continue;
        };
        for event in events {
            let uri = event.dataschema.clone().expect("dataschema is always set");
            let data = serde_json::to_value(&event.data).unwrap();
            let errors: Vec<String> = validator_for(&uri)
                .iter_errors(&data)
                .map(|e| format!("{} at {}", e, e.instance_path()))
                .collect();
            assert!(errors.is_empty(), "{}: {errors:#?}", path.display());
            checked.insert(event.event_type.to_string());
        }
    }
    assert_eq!(checked.len(), EventType::ALL.len(), "every type checked");

    // What the definitions know beyond the envelope.
    let data = |fixture: &str| {
        let body = std::fs::read(crate::fixtures_dir().join(fixture)).unwrap();
        let event = run(&body, None).unwrap().remove(0);
        (
            event.dataschema.unwrap(),
            serde_json::to_value(&event.data).unwrap(),
        )
    };
    type Mutation = fn(&mut serde_json::Value);
    let cases: [(&str, &str, Mutation); 6] = [
        (
            "deel/contract.created.json",
            "a kind of another type",
            |d| d["entity"]["kind"] = "timesheet".into(),
        ),
        (
            "deel/timesheet.created.json",
            "a person on a type that names nobody",
            |d| d["person"] = serde_json::json!({"id": "1", "email": null, "first_name": null, "last_name": null, "full_name": null}),
        ),
        (
            "authenticate/USER_PDF_REPORT_GENERATION__completed.json",
            "another stage in a completed report",
            |d| d["status"] = "FAILED".into(),
        ),
        (
            "authenticate/USER_PII_UPDATE.json",
            "a tenant from Authenticate",
            |d| d["tenant"] = serde_json::json!({"id": "1", "name": null}),
        ),
        (
            "entuitive/user.created.json",
            "an Entuitive person without email",
            |d| d["person"]["email"] = serde_json::Value::Null,
        ),
        (
            "deel/time-off.created.json",
            "a field time off never fills",
            |d| d["person"]["email"] = "x@example.com".into(),
        ),
    ];
    for (fixture, what, mutate) in cases {
        let (uri, good) = data(fixture);
        let validator = validator_for(&uri);
        assert!(validator.is_valid(&good), "{fixture}");
        let mut bad = good;
        mutate(&mut bad);
        assert!(!validator.is_valid(&bad), "{fixture}: accepted {what}");
    }
    // The stage matches in any letter case, as the mapping does.
    let (uri, mut good) = data("authenticate/USER_PDF_REPORT_GENERATION__completed.json");
    good["status"] = "completed".into();
    assert!(validator_for(&uri).is_valid(&good));
}

/// One contract, one answer: the worker matches a vendor type in any case and keeps it
/// as sent in `vendoreventtype`; the AsyncAPI message of the type takes the event as
/// the JSON Schema does.
#[test]
fn a_type_sent_in_another_case_validates_against_both_contracts() {
    let path = crate::fixtures_dir().join("deel/contract.created.json");
    let mut body: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    body["data"]["meta"]["event_type"] = "CONTRACT.Created".into();
    let events = run(&serde_json::to_vec(&body).unwrap(), None).unwrap();
    let event = serde_json::to_value(&events[0]).unwrap();
    assert_eq!(event["vendoreventtype"], "CONTRACT.Created");
    assert!(
        jsonschema::validator_for(&schema())
            .unwrap()
            .is_valid(&event)
    );

    let doc =
        webhook_normalizer::asyncapi::document("0.0.0", webhook_normalizer::SchemaBase::default());
    let message = serde_json::json!({
        "components": doc["components"],
        "$ref": "#/components/messages/deel_contract_created/payload",
    });
    let validator = jsonschema::validator_for(&message).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&event)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    // And still only that type: another one's spelling is refused.
    let mut other = event.clone();
    other["vendoreventtype"] = "contract.status.updated".into();
    assert!(!validator.is_valid(&other));
}
