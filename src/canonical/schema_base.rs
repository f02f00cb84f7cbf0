//! The schema base URI: the identifier the schema documents' `$id`s and every event's
//! `dataschema` are made from. An identifier, not a location: nothing fetches it, and a
//! consumer validates from the files (`docs/consuming.md`). Must not do I/O.

use std::fmt;
use std::str::FromStr;
use std::sync::{LazyLock, Mutex, PoisonError};

use serde::Deserialize;

use super::data_schema::{DATA_SCHEMA_FILE, UNMAPPED_DEFINITION};
use super::{CanonicalType, EventType};

/// The default base: the repository's `schema/` folder. The checked-in documents and the
/// snapshots carry it.
pub const DEFAULT_SCHEMA_BASE: &str =
    "https://github.com/webhook-normalizer/webhook-normalizer/schema/";

/// The file name of the envelope's schema, appended to the base for its `$id`.
pub const EVENT_SCHEMA_FILE: &str = "canonical-event.schema.json";

/// A base URI, checked, with the `dataschema` of every definition made from it once.
///
/// `Copy`, and the strings live as long as the process: events borrow their `dataschema`
/// instead of allocating one each. Each distinct base is made once (a second
/// [`SchemaBase::new`] with the same text returns the first), so the memory kept is a
/// few kilobytes per base a process was ever given: in practice, one.
#[derive(Clone, Copy)]
pub struct SchemaBase(&'static Uris);

struct Uris {
    base: String,
    data_document: String,
    event_document: String,
    /// One per [`EventType::ALL`], in its order.
    mapped: Vec<String>,
    unmapped: String,
}

impl Uris {
    fn new(base: &str) -> Uris {
        let data_document = format!("{base}{DATA_SCHEMA_FILE}");
        let uri = |definition: &str| format!("{data_document}#/$defs/{definition}");
        Uris {
            base: base.to_owned(),
            event_document: format!("{base}{EVENT_SCHEMA_FILE}"),
            mapped: EventType::ALL.iter().map(|t| uri(t.as_str())).collect(),
            unmapped: uri(UNMAPPED_DEFINITION),
            data_document,
        }
    }
}

/// A schema base that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0}; expected an absolute URI ending in `/`, without `?` or `#`, e.g. https://schemas.example.com/normalizer/ (an identifier: nothing fetches it)"
)]
pub struct InvalidSchemaBase(&'static str);

impl SchemaBase {
    /// Checks `base` and makes its `dataschema` strings (or returns those already made).
    pub fn new(base: &str) -> Result<SchemaBase, InvalidSchemaBase> {
        check(base)?;
        if base == DEFAULT_SCHEMA_BASE {
            return Ok(SchemaBase::default());
        }
        static MADE: Mutex<Vec<&'static Uris>> = Mutex::new(Vec::new());
        let mut made = MADE.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(uris) = made.iter().find(|u| u.base == base) {
            return Ok(SchemaBase(uris));
        }
        let uris: &'static Uris = Box::leak(Box::new(Uris::new(base)));
        made.push(uris);
        Ok(SchemaBase(uris))
    }

    /// The base, as given.
    pub fn as_str(&self) -> &'static str {
        &self.0.base
    }

    pub fn is_default(&self) -> bool {
        self.as_str() == DEFAULT_SCHEMA_BASE
    }

    /// The `$id` of the data schema document (`{base}event-data.v1.schema.json`).
    pub fn data_schema_document(&self) -> &'static str {
        &self.0.data_document
    }

    /// The `$id` of the envelope's schema (`{base}canonical-event.schema.json`).
    pub fn event_schema_document(&self) -> &'static str {
        &self.0.event_document
    }

    /// The `dataschema` of an event of type `t`: the data schema document and a JSON
    /// Pointer to the type's definition. Made once per definition: every event carries
    /// one.
    pub fn data_schema_uri(&self, t: &CanonicalType) -> &'static str {
        match t {
            // `ALL` lists the variants in declaration order, so a variant's index is its
            // place.
            CanonicalType::Mapped(t) => &self.0.mapped[*t as usize],
            CanonicalType::Unmapped(_) => &self.0.unmapped,
        }
    }

    /// The ECMA-262 pattern every `dataschema` of this base (any version) matches, for
    /// the envelope's schema.
    pub fn data_schema_pattern(&self) -> String {
        let mut pattern = String::from("^");
        for c in self.as_str().chars() {
            if "\\^$.|?*+()[]{}".contains(c) {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push_str("event-data\\.v[1-9][0-9]*\\.schema\\.json#/\\$defs/[a-z0-9_.]+$");
        pattern
    }
}

/// What a base may be: an absolute URI (a scheme, then URI characters only, ASCII,
/// percent-encoded otherwise) ending in `/`, since the file names are appended to it, and
/// without a query or fragment, which would swallow them.
fn check(base: &str) -> Result<(), InvalidSchemaBase> {
    let Some((scheme, rest)) = base.split_once(':') else {
        return Err(InvalidSchemaBase("no scheme"));
    };
    let mut scheme_chars = scheme.chars();
    let scheme_ok = scheme_chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && scheme_chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    if !scheme_ok {
        return Err(InvalidSchemaBase("no scheme"));
    }
    if rest.is_empty() {
        return Err(InvalidSchemaBase("nothing after the scheme"));
    }
    if rest.contains(['?', '#']) {
        return Err(InvalidSchemaBase("a query or fragment"));
    }
    if !rest
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-._~:/[]@!$&'()*+,;=%".contains(c))
    {
        return Err(InvalidSchemaBase(
            "a character a URI cannot hold (a space, a quote, non-ASCII: percent-encode it)",
        ));
    }
    if !rest.ends_with('/') {
        return Err(InvalidSchemaBase("no `/` at the end"));
    }
    Ok(())
}

impl Default for SchemaBase {
    fn default() -> SchemaBase {
        static DEFAULT: LazyLock<Uris> = LazyLock::new(|| Uris::new(DEFAULT_SCHEMA_BASE));
        SchemaBase(&DEFAULT)
    }
}

impl PartialEq for SchemaBase {
    fn eq(&self, other: &SchemaBase) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for SchemaBase {}

impl fmt::Debug for SchemaBase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SchemaBase").field(&self.as_str()).finish()
    }
}

impl fmt::Display for SchemaBase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SchemaBase {
    type Err = InvalidSchemaBase;

    fn from_str(s: &str) -> Result<SchemaBase, InvalidSchemaBase> {
        SchemaBase::new(s)
    }
}

impl<'de> Deserialize<'de> for SchemaBase {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<SchemaBase, D::Error> {
        let text = String::deserialize(d)?;
        SchemaBase::new(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::Vendor;

    const OTHER: &str = "https://schemas.example.com/hr/";

    #[test]
    fn the_default_is_the_published_documents_base() {
        let base = SchemaBase::default();
        assert!(base.is_default());
        assert_eq!(
            base.data_schema_document(),
            super::super::DATA_SCHEMA_DOCUMENT
        );
        assert_eq!(SchemaBase::new(DEFAULT_SCHEMA_BASE).unwrap(), base);
        assert_eq!(
            base.data_schema_uri(&EventType::DeelContractCreated.into()),
            "https://github.com/webhook-normalizer/webhook-normalizer/schema/event-data.v1.schema.json#/$defs/deel.contract.created"
        );
    }

    #[test]
    fn every_uri_follows_the_base() {
        let base = SchemaBase::new(OTHER).unwrap();
        assert!(!base.is_default());
        assert_eq!(
            base.data_schema_document(),
            format!("{OTHER}event-data.v1.schema.json")
        );
        assert_eq!(
            base.event_schema_document(),
            format!("{OTHER}canonical-event.schema.json")
        );
        for t in EventType::ALL {
            let uri = base.data_schema_uri(&(*t).into());
            assert_eq!(uri, format!("{OTHER}event-data.v1.schema.json#/$defs/{t}"));
        }
        let generic = CanonicalType::unmapped(Vendor::Deel, "x").unwrap();
        assert!(base.data_schema_uri(&generic).ends_with("#/$defs/unmapped"));
    }

    #[test]
    fn the_same_base_twice_is_made_once() {
        let a = SchemaBase::new("https://twice.example.com/").unwrap();
        let b = SchemaBase::new("https://twice.example.com/").unwrap();
        assert!(std::ptr::eq(a.0, b.0));
        assert!(std::ptr::eq(
            a.data_schema_uri(&EventType::DeelContractCreated.into()),
            b.data_schema_uri(&EventType::DeelContractCreated.into())
        ));
    }

    #[test]
    fn the_pattern_escapes_what_regexes_read() {
        let base = SchemaBase::new("urn:x:a.b+(c)/").unwrap();
        assert!(
            base.data_schema_pattern()
                .starts_with(r"^urn:x:a\.b\+\(c\)/event-data\.v")
        );
        assert_eq!(
            SchemaBase::default().data_schema_pattern(),
            r"^https://github\.com/webhook-normalizer/webhook-normalizer/schema/event-data\.v[1-9][0-9]*\.schema\.json#/\$defs/[a-z0-9_.]+$"
        );
    }

    #[test]
    fn what_is_not_a_base_is_refused_saying_why() {
        for (bad, why) in [
            ("", "no scheme"),
            ("schemas.example.com/hr/", "no scheme"),
            ("1http://x/", "no scheme"),
            ("https:", "nothing after"),
            ("https://schemas.example.com/hr", "no `/` at the end"),
            ("https://x/?v=1/", "query or fragment"),
            ("https://x/#/", "query or fragment"),
            ("https://x/h r/", "a character"),
            ("https://x/\"/", "a character"),
            ("https://x/é/", "a character"),
        ] {
            let e = SchemaBase::new(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
            assert!(e.contains("an identifier"), "{e}");
        }
        for good in [
            "https://schemas.example.com/hr/",
            "http://localhost:8000/schemas/",
            "urn:example:schemas/",
            "file:///srv/schemas/",
        ] {
            assert_eq!(SchemaBase::new(good).unwrap().as_str(), good);
        }
    }
}
