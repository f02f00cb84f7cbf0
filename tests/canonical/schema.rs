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
    let mutations: [(&str, Mutation); 6] = [
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
    let listed: Vec<&str> = schema["properties"]["type"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let table: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
    assert_eq!(listed, table);
}
