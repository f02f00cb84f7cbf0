//! `docs/consuming.md`'s local validation, run as written (Python `jsonschema` and
//! `referencing`) against what `normalize` makes: with the repository's schema files, and
//! with files printed for another schema base URI. No network: the schemas' `$id`s are
//! identifiers, resolved from the files alone.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::{RECEIVED_AT, fixtures_dir};

const BASE: &str = "https://schemas.example.com/normalizer/";

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_webhook-normalizer"))
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The first Python block after the section's heading, as written.
fn snippet() -> String {
    let doc = std::fs::read_to_string(repo().join("docs/consuming.md")).unwrap();
    let section = doc
        .find("\n## Validating events locally\n")
        .expect("a section on validating events locally");
    let rest = &doc[section..];
    let start = rest.find("```python\n").expect("a python block") + "```python\n".len();
    rest[start..start + rest[start..].find("```").unwrap()].to_owned()
}

fn ok(out: Output) -> Vec<u8> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The events of a few fixtures, JSON Lines, as `normalize` prints them.
fn events(extra: &[&str]) -> Vec<u8> {
    let mut lines = Vec::new();
    for (fixture, passthrough) in [
        ("deel/contract.created.json", None),
        ("deel/timesheet.reviewed__two_items.json", None),
        (
            "authenticate/USER_PDF_REPORT_GENERATION__completed.json",
            None,
        ),
        ("entuitive/user.created.json", None),
        ("deel/payslip.available.json", Some("deel")),
    ] {
        let mut c = bin();
        c.args(["normalize", "--received-at", RECEIVED_AT])
            .args(extra);
        if let Some(vendor) = passthrough {
            c.args(["--passthrough", vendor]);
        }
        lines.extend(ok(c.arg(fixtures_dir().join(fixture)).output().unwrap()));
    }
    lines
}

/// Runs the snippet with the schema files of `schemas`, the events on stdin.
fn validate(schemas: &Path, events: &[u8]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("validate.py");
    std::fs::write(&script, snippet()).unwrap();
    let mut child = Command::new("python3")
        .arg(&script)
        .arg(schemas)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3, with jsonschema (scripts/test.sh installs them)");
    child.stdin.take().unwrap().write_all(events).unwrap();
    testkit::output_within(child, std::time::Duration::from_secs(60))
}

fn lines(out: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(out)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_documented_validation_passes_the_workers_events_with_the_repositorys_schemas() {
    let events = events(&[]);
    let count = events
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .count();
    assert_eq!(count, 6);
    let out = validate(&repo().join("schema"), &events);
    let stdout = ok(out);
    let stdout = lines(&stdout);
    assert_eq!(stdout.len(), count, "{stdout:?}");
    assert!(stdout.iter().all(|l| l.starts_with("valid ")), "{stdout:?}");
}

#[test]
fn the_documented_validation_refuses_what_the_schemas_refuse() {
    let events = events(&[]);
    let first = events.split(|b| *b == b'\n').next().unwrap();
    let mut event: serde_json::Value = serde_json::from_slice(first).unwrap();
    // A kind the definition of deel.contract.created does not allow: the envelope
    // takes it, the data schema does not.
    event["data"]["entity"]["kind"] = "timesheet".into();
    let out = validate(&repo().join("schema"), &serde_json::to_vec(&event).unwrap());
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stdout = lines(&out.stdout);
    assert!(
        stdout
            .iter()
            .any(|l| l.starts_with("invalid ") && l.contains("data/entity/kind: ")),
        "{stdout:?}"
    );
}

/// With another base, the files the CLI prints carry it in their `$id`, the events in
/// their `dataschema`, and the snippet validates them from those files; the
/// repository's files (the default base) do not know them.
#[test]
fn the_documented_validation_follows_a_custom_schema_base() {
    let dir = tempfile::tempdir().unwrap();
    for (format, file) in [
        ("data-schema", "event-data.v1.schema.json"),
        ("event-schema", "canonical-event.schema.json"),
    ] {
        let doc = ok(bin()
            .args(["event-types", "--format", format, "--schema-base-uri", BASE])
            .output()
            .unwrap());
        std::fs::write(dir.path().join(file), doc).unwrap();
    }
    let events = events(&["--schema-base-uri", BASE]);
    for line in lines(&events) {
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert!(
            event["dataschema"].as_str().unwrap().starts_with(BASE),
            "{line}"
        );
    }
    let stdout = ok(validate(dir.path(), &events));
    assert!(lines(&stdout).iter().all(|l| l.starts_with("valid ")));

    let out = validate(&repo().join("schema"), &events);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stdout = lines(&out.stdout);
    assert!(
        stdout.iter().all(|l| l.starts_with("invalid ")
            && l.contains("dataschema: ")
            && l.contains("no schema file here has https://schemas.example.com/")),
        "{stdout:#?}"
    );
}
