//! Personal data in logs: every e-mail address and person name of the fixtures, looked
//! for in log lines as text and as the byte lists lapin's `Debug` output prints.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::webhooks::fixtures_dir;

/// Whether a JSON key names an e-mail address or a person's name.
fn is_personal_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key == "email"
        || key.ends_with("_email")
        || matches!(
            key.as_str(),
            "first_name" | "middle_name" | "last_name" | "fname" | "lname" | "name" | "full_name"
        )
}

/// Every e-mail address and person name in `tests/fixtures/**.json`: the string values
/// (or strings in array values) of keys such as `email`, `*_email`, `first_name`,
/// `last_name`, `fname`, `lname`, `name`, `full_name`, at least 4 characters long and
/// with a letter; deduplicated. Files that are not JSON are skipped.
pub fn personal_data_in_fixtures() -> Vec<String> {
    fn strings(v: &Value, out: &mut BTreeSet<String>) {
        match v {
            Value::String(s) if s.chars().count() >= 4 && s.chars().any(char::is_alphabetic) => {
                out.insert(s.clone());
            }
            Value::Array(items) => items.iter().for_each(|i| strings(i, out)),
            _ => {}
        }
    }
    fn walk(v: &Value, out: &mut BTreeSet<String>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    if is_personal_key(k) {
                        strings(v, out);
                    }
                    walk(v, out);
                }
            }
            Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            _ => {}
        }
    }
    fn files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("fixtures dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                files(&path, out);
            } else if path.extension().is_some_and(|e| e == "json") {
                out.push(path);
            }
        }
    }
    let mut paths = Vec::new();
    files(&fixtures_dir(), &mut paths);
    let mut found = BTreeSet::new();
    for path in paths {
        let bytes = std::fs::read(&path).expect("fixture");
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
        if let Ok(v) = serde_json::from_slice::<Value>(bytes) {
            walk(&v, &mut found);
        }
    }
    found.into_iter().collect()
}

/// `text` as Rust's `Debug` prints a byte slice's contents (`74, 111, 104, 110`), which is
/// how lapin logs message bodies and header values.
fn debug_bytes(text: &str) -> String {
    text.bytes()
        .map(|b| b.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether `line` contains `needle` as a whole list of numbers (not inside a longer
/// number at either end).
fn contains_byte_list(line: &str, needle: &str) -> bool {
    line.match_indices(needle).any(|(at, _)| {
        let before = line[..at].chars().next_back();
        let after = line[at + needle.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_digit()) && !after.is_some_and(|c| c.is_ascii_digit())
    })
}

/// Fails if any log line contains an e-mail address or person name from the fixtures,
/// as text or as the decimal byte list lapin's `Debug` output prints bodies and headers
/// as; names the string found and shows only the start of the line.
pub fn assert_no_personal_data(logs: &[String]) {
    let personal: Vec<(String, String)> = personal_data_in_fixtures()
        .into_iter()
        .map(|p| {
            let bytes = debug_bytes(&p);
            (p, bytes)
        })
        .collect();
    assert!(
        !personal.is_empty(),
        "no personal data found in the fixtures"
    );
    for (n, line) in logs.iter().enumerate() {
        for (text, bytes) in &personal {
            let form = if line.contains(text.as_str()) {
                "as text"
            } else if contains_byte_list(line, bytes) {
                "as bytes"
            } else {
                continue;
            };
            let start: String = line.chars().take(40).collect();
            panic!(
                "personal data {text:?} ({form}) in log line {n} of {}: {start}...",
                logs.len()
            );
        }
    }
}
