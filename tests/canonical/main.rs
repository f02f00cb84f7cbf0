//! Tests of the pure library against the vendor fixtures: golden outputs, schema,
//! properties and the offline command. No broker.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod architecture;
mod cli;
mod docs;
mod fixtures;
mod fuzz;
mod hostile;
mod local_validation;
mod monitoring_kit;
mod passthrough;
mod properties;
mod schema;
mod test_script;

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use webhook_normalizer::{CanonicalEvent, Limits, NormalizeError, Unmapped, normalize};

/// The receipt time every fixture is normalized with.
pub const RECEIVED_AT: &str = "2026-01-02T03:04:05Z";

pub fn received_at() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(RECEIVED_AT)
        .unwrap()
        .with_timezone(&Utc)
}

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Every fixture, with the vendor hint its folder implies (`unknown/` has none).
pub fn all_fixtures() -> Vec<(PathBuf, Option<&'static str>)> {
    let mut out = Vec::new();
    for (dir, hint) in [
        ("entuitive", Some("entuitive")),
        ("authenticate", Some("authenticate")),
        ("deel", Some("deel")),
        ("unknown", None),
    ] {
        let mut files: Vec<_> = std::fs::read_dir(fixtures_dir().join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        out.extend(files.into_iter().map(|p| (p, hint)));
    }
    assert!(out.len() >= 58, "fixtures went missing: {}", out.len());
    out
}

pub fn run(body: &[u8], hint: Option<&str>) -> Result<Vec<CanonicalEvent>, NormalizeError> {
    normalize(
        body,
        hint,
        received_at(),
        &Limits::default(),
        &Unmapped::default(),
        webhook_normalizer::SchemaBase::default(),
    )
}
