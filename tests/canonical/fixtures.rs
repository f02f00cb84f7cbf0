//! Golden outputs: every fixture's full result (events or error), reviewed by reading
//! `tests/canonical/snapshots/`.

use serde_json::json;
use webhook_normalizer::normalize::normalize_json;
use webhook_normalizer::{Limits, NormalizeError, SchemaBase, Unmapped, Vendor, normalize};

use crate::{all_fixtures, received_at, run};

fn render(result: &Result<Vec<webhook_normalizer::CanonicalEvent>, NormalizeError>) -> String {
    let value = match result {
        Ok(events) => serde_json::to_value(events).unwrap(),
        Err(e) => json!({"error": {
            "kind": e.kind(),
            "vendor": e.vendor(),
            "detail": e.to_string(),
        }}),
    };
    serde_json::to_string_pretty(&value).unwrap()
}

#[test]
fn every_fixture_matches_its_reviewed_output() {
    for (path, hint) in all_fixtures() {
        let body = std::fs::read(&path).unwrap();
        let rel = path
            .strip_prefix(crate::fixtures_dir())
            .unwrap()
            .to_string_lossy()
            .replace('/', "__");
        let name = rel.trim_end_matches(".json").to_owned();
        insta::with_settings!({
            snapshot_path => "snapshots",
            prepend_module_to_snapshot => false,
            omit_expression => true,
            description => format!("tests/fixtures/{} with vendor hint {hint:?}", rel.replace("__", "/")),
        }, {
            insta::assert_snapshot!(name, render(&run(&body, hint)));
        });
    }
}

/// Detection by shape agrees with the folder's vendor for every body that maps.
#[test]
fn shape_detection_agrees_with_the_hint() {
    for (path, hint) in all_fixtures() {
        let Some(hint) = hint else { continue };
        let body = std::fs::read(&path).unwrap();
        if let Ok(hinted) = run(&body, Some(hint)) {
            let detected = run(&body, None)
                .unwrap_or_else(|e| panic!("{}: detection failed: {e}", path.display()));
            assert_eq!(detected, hinted, "{}", path.display());
        }
    }
}

/// Every vendor fixture that is JSON is detected as its folder's vendor, whether it maps
/// or fails (the error then carries that vendor).
#[test]
fn every_vendor_fixture_is_detected_as_its_folders_vendor() {
    let mut checked = 0;
    for (path, hint) in all_fixtures() {
        let Some(hint) = hint else { continue };
        let body = std::fs::read(&path).unwrap();
        if serde_json::from_slice::<serde_json::Value>(&body).is_err() {
            continue;
        }
        let detected = match run(&body, None) {
            Ok(events) => Some(events[0].vendor),
            Err(e) => e.vendor(),
        };
        assert_eq!(detected.map(Vendor::key), Some(hint), "{}", path.display());
        checked += 1;
    }
    assert!(checked >= 52, "{checked}");
}

#[test]
fn every_canonical_type_is_produced_by_some_fixture() {
    let mut seen = std::collections::HashSet::new();
    for (path, hint) in all_fixtures() {
        if let Ok(events) = run(&std::fs::read(&path).unwrap(), hint) {
            seen.extend(events.iter().filter_map(|e| e.event_type.mapped()));
        }
    }
    for t in webhook_normalizer::EventType::ALL {
        assert!(seen.contains(t), "no fixture produces {t}");
    }
}

#[test]
fn bare_and_wrapped_compliance_updates_share_one_id() {
    let read =
        |name: &str| std::fs::read(crate::fixtures_dir().join("entuitive").join(name)).unwrap();
    let bare = run(&read("user.compliance_status.updated.json"), None).unwrap();
    let wrapped = run(&read("user.compliance_status.updated__wrapped.json"), None).unwrap();
    assert_eq!(bare[0].id, wrapped[0].id);
    assert_eq!(bare[0].data.entity, wrapped[0].data.entity);
}

#[test]
fn fan_out_gives_each_element_its_own_entity_and_id() {
    let body = std::fs::read(crate::fixtures_dir().join("deel/timesheet.reviewed__two_items.json"))
        .unwrap();
    let events = run(&body, Some("deel")).unwrap();
    assert_eq!(events.len(), 2);
    assert_ne!(events[0].id, events[1].id);
    assert_eq!(events[0].subject, "timesheet/10446275");
    assert_eq!(events[1].subject, "timesheet/10446290");
    assert_eq!(events[0].data.status.as_deref(), Some("approved"));
    assert_eq!(events[1].data.status.as_deref(), Some("declined"));
    // The same element in the single-item doc sample gets the same id: ids do not
    // depend on the element's position or its siblings.
    let single = std::fs::read(crate::fixtures_dir().join("deel/timesheet.reviewed.json")).unwrap();
    assert_eq!(run(&single, None).unwrap()[0].id, events[0].id);
}

#[test]
fn deel_ids_ignore_tracking_id_and_timestamp() {
    let body = std::fs::read(crate::fixtures_dir().join("deel/contract.created.json")).unwrap();
    let mut retried: serde_json::Value = serde_json::from_slice(&body).unwrap();
    retried["data"]["meta"]["tracking_id"] = json!("another-delivery-0001");
    retried["timestamp"] = json!("2023-05-11T00:10:00.000Z");
    let a = run(&body, None).unwrap();
    let b = run(&serde_json::to_vec(&retried).unwrap(), None).unwrap();
    assert_eq!(a[0].id, b[0].id);
    assert_ne!(a[0].vendoreventid, b[0].vendoreventid);
}

#[test]
fn legacy_deel_shape_maps_like_the_documented_one() {
    let read = |name: &str| std::fs::read(crate::fixtures_dir().join("deel").join(name)).unwrap();
    let documented = run(&read("contract.terminated.json"), None).unwrap();
    let legacy = run(
        &read("contract.terminated__legacy_top_level_shape.json"),
        None,
    )
    .unwrap();
    assert_eq!(documented[0].id, legacy[0].id);
    assert_eq!(documented[0].subject, legacy[0].subject);
    assert_eq!(documented[0].time, legacy[0].time);
    assert_eq!(documented[0].tenantid, legacy[0].tenantid);
}

#[test]
fn errors_never_carry_personal_data_from_fixtures() {
    // Values that appear in fixtures and must never reach an error message.
    let personal = [
        "example.ca",
        "example.com",
        "Tremblay",
        "Amélie",
        "John",
        "Snow",
        "Doe",
        "b5a1c7e2",
    ];
    for (path, hint) in all_fixtures() {
        if let Err(e) = run(&std::fs::read(&path).unwrap(), hint) {
            let text = e.to_string();
            for p in personal {
                assert!(!text.contains(p), "{}: {text}", path.display());
            }
        }
    }
}

#[test]
fn vendors_of_errors_follow_hint_or_envelope() {
    let e = run(b"not json", Some("deel")).unwrap_err();
    assert_eq!(e.vendor(), Some(Vendor::Deel));
    let e = run(b"not json", None).unwrap_err();
    assert_eq!(e.vendor(), None);
}

/// The worker's path writes each event exactly as serde_json writes the event
/// `normalize` returns (the golden outputs above are of those), with the same id as its
/// `message_id`, and fails the same way: for every fixture, hinted and not, with unmapped
/// types dead-lettered and passed through.
#[test]
fn normalize_json_writes_what_serde_json_writes_of_the_events() {
    for (path, hint) in all_fixtures() {
        let body = std::fs::read(&path).unwrap();
        for hint in [hint, None] {
            for unmapped in [Unmapped::default(), Unmapped::PASSTHROUGH] {
                assert_same_output(&body, hint, &unmapped, &path.display().to_string());
            }
        }
    }
}

/// `normalize_json` and `normalize` agree on `body`, byte for byte.
pub fn assert_same_output(body: &[u8], hint: Option<&str>, unmapped: &Unmapped, what: &str) {
    let args = (received_at(), Limits::default(), SchemaBase::default());
    let events = normalize(body, hint, args.0, &args.1, unmapped, args.2);
    let written = normalize_json(body, hint, args.0, &args.1, unmapped, args.2);
    match (events, written) {
        (Ok(events), Ok(written)) => {
            assert_eq!(events.len(), written.len(), "{what}");
            for (event, out) in events.iter().zip(&written) {
                assert_eq!(
                    String::from_utf8_lossy(&out.body),
                    serde_json::to_string(event).unwrap(),
                    "{what}"
                );
                assert_eq!(out.message_id, event.id.to_string(), "{what}");
            }
        }
        (Err(a), Err(b)) => assert_eq!(a, b, "{what}"),
        (a, b) => panic!("{what}: normalize {a:?}, normalize_json {b:?}"),
    }
}
