//! `normalize`: raw webhook bytes (and an optional vendor hint) in, canonical events or
//! one precise error out. Pure: the receipt time is an argument, nothing is read or sent.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::canonical::{CanonicalEvent, Vendor};
use crate::vendors::{self, MapError, PayloadError};

/// Limits on what `normalize` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bodies larger than this are refused before parsing.
    pub max_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 1024 * 1024,
        }
    }
}

/// The machine-readable kind of a [`NormalizeError`]. Its string is part of the public
/// contract: dead-letter routing keys and headers carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    InvalidJson,
    BodyTooLarge,
    UnknownVendor,
    UnknownEventType,
    InvalidPayload,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 5] = [
        ErrorKind::InvalidJson,
        ErrorKind::BodyTooLarge,
        ErrorKind::UnknownVendor,
        ErrorKind::UnknownEventType,
        ErrorKind::InvalidPayload,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidJson => "invalid_json",
            ErrorKind::BodyTooLarge => "body_too_large",
            ErrorKind::UnknownVendor => "unknown_vendor",
            ErrorKind::UnknownEventType => "unknown_event_type",
            ErrorKind::InvalidPayload => "invalid_payload",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a body cannot be normalized. Every variant is permanent: the same bytes fail the
/// same way every time, so retrying is pointless. Messages name fields by JSON path and
/// never include a value from the body (beyond a vendor type name, shown only when it
/// looks like one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NormalizeError {
    #[error("body is {size} bytes, over the limit of {limit}")]
    BodyTooLarge {
        vendor: Option<Vendor>,
        size: usize,
        limit: usize,
    },
    #[error("{detail}")]
    InvalidJson {
        vendor: Option<Vendor>,
        detail: String,
    },
    #[error("vendor hint {} is not a vendor key (expected entuitive, authenticate or deel)", SafeName(.hint))]
    UnknownVendorHint { hint: String },
    #[error(
        "the body fits no vendor's envelope (Deel data.meta, Authenticate event and order, Entuitive event_type and data or compliance_status_items)"
    )]
    UnknownShape,
    #[error("{vendor} event type {} is not in the canonical type table", SafeName(.event_type))]
    UnknownEventType { vendor: Vendor, event_type: String },
    #[error("{error}")]
    InvalidPayload { vendor: Vendor, error: PayloadError },
    /// A mapped event could not be written as JSON. Not expected to happen; a variant
    /// rather than a panic so that even a bug dead-letters instead of losing the message.
    #[error("the canonical event could not be serialized")]
    Unserializable { vendor: Option<Vendor> },
}

impl NormalizeError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            NormalizeError::BodyTooLarge { .. } => ErrorKind::BodyTooLarge,
            NormalizeError::InvalidJson { .. } => ErrorKind::InvalidJson,
            NormalizeError::UnknownVendorHint { .. } | NormalizeError::UnknownShape => {
                ErrorKind::UnknownVendor
            }
            NormalizeError::UnknownEventType { .. } => ErrorKind::UnknownEventType,
            NormalizeError::InvalidPayload { .. } | NormalizeError::Unserializable { .. } => {
                ErrorKind::InvalidPayload
            }
        }
    }

    /// The vendor, when known (from the hint or the envelope).
    pub fn vendor(&self) -> Option<Vendor> {
        match self {
            NormalizeError::BodyTooLarge { vendor, .. }
            | NormalizeError::InvalidJson { vendor, .. }
            | NormalizeError::Unserializable { vendor } => *vendor,
            NormalizeError::UnknownVendorHint { .. } | NormalizeError::UnknownShape => None,
            NormalizeError::UnknownEventType { vendor, .. }
            | NormalizeError::InvalidPayload { vendor, .. } => Some(*vendor),
        }
    }
}

/// Shows a vendor-supplied name only when it looks like an identifier (at most 64
/// letters, digits, `.`, `_`, `-`, `:`), so a header or type field that carries personal
/// data or control characters is never echoed.
struct SafeName<'a>(&'a str);

impl fmt::Display for SafeName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        let safe = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'));
        if safe {
            write!(f, "\"{s}\"")
        } else {
            write!(f, "(not shown: {} bytes, not a plain name)", s.len())
        }
    }
}

/// Normalizes one webhook body.
///
/// `vendor_hint` is the vendor key from the gateway (`x-vendor` header or routing key);
/// blank counts as absent, and without one the vendor is detected from the envelope's
/// shape. `received_at` is used as `time` for events whose body carries no time.
///
/// On success there is at least one event (Deel array resources give one per element).
pub fn normalize(
    body: &[u8],
    vendor_hint: Option<&str>,
    received_at: DateTime<Utc>,
    limits: &Limits,
) -> Result<Vec<CanonicalEvent>, NormalizeError> {
    let hinted = match vendor_hint.map(str::trim).filter(|h| !h.is_empty()) {
        None => None,
        Some(hint) => {
            Some(
                hint.parse::<Vendor>()
                    .map_err(|_| NormalizeError::UnknownVendorHint {
                        hint: hint.to_owned(),
                    })?,
            )
        }
    };
    if body.len() > limits.max_body_bytes {
        return Err(NormalizeError::BodyTooLarge {
            vendor: hinted,
            size: body.len(),
            limit: limits.max_body_bytes,
        });
    }
    let value = parse_json(body).map_err(|detail| NormalizeError::InvalidJson {
        vendor: hinted,
        detail,
    })?;
    let vendor = hinted
        .or_else(|| vendors::detect(&value))
        .ok_or(NormalizeError::UnknownShape)?;
    vendors::map(vendor, value, received_at).map_err(|e| match e {
        MapError::UnknownEventType(event_type) => {
            NormalizeError::UnknownEventType { vendor, event_type }
        }
        MapError::InvalidPayload(error) => NormalizeError::InvalidPayload { vendor, error },
    })
}

/// Parses JSON, tolerating a UTF-8 byte-order mark (some gateways add one). The error
/// text is serde_json's syntax message and position, which never quotes the input.
fn parse_json(body: &[u8]) -> Result<Value, String> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => e.to_string(),
        // Not reachable when parsing into a Value; kept generic so no value can leak.
        _ => format!("not valid JSON at line {} column {}", e.line(), e.column()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn err(body: &[u8], hint: Option<&str>) -> NormalizeError {
        normalize(body, hint, at(), &Limits::default()).unwrap_err()
    }

    #[test]
    fn hint_that_is_no_vendor_is_unknown_vendor_and_not_echoed_when_odd() {
        let e = err(b"{}", Some("stripe"));
        assert_eq!(e.kind(), ErrorKind::UnknownVendor);
        assert_eq!(
            e.to_string(),
            "vendor hint \"stripe\" is not a vendor key (expected entuitive, authenticate or deel)"
        );
        let e = err(b"{}", Some("jane doe <jane@example.com>"));
        assert!(!e.to_string().contains("jane"), "{e}");
    }

    #[test]
    fn blank_hint_means_detect() {
        let body = br#"{"id":"1","event":"USER_PII_UPDATE","order":{"userAccessCode":"u"}}"#;
        let events = normalize(body, Some("  "), at(), &Limits::default()).unwrap();
        assert_eq!(events[0].vendor, Vendor::Authenticate);
    }

    #[test]
    fn size_limit_is_checked_before_parsing_and_keeps_the_hinted_vendor() {
        let limits = Limits { max_body_bytes: 4 };
        let e = normalize(b"{   }", Some("deel"), at(), &limits).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::BodyTooLarge);
        assert_eq!(e.vendor(), Some(Vendor::Deel));
        assert_eq!(e.to_string(), "body is 5 bytes, over the limit of 4");
        assert!(
            normalize(b"[]", None, at(), &limits)
                .is_err_and(|e| e.kind() == ErrorKind::UnknownVendor)
        );
    }

    #[test]
    fn invalid_json_reports_position_not_content() {
        let e = err(b"{\"email\": \"jane@example.com\",}", None);
        assert_eq!(e.kind(), ErrorKind::InvalidJson);
        assert_eq!(e.to_string(), "trailing comma at line 1 column 30");
        let e = err(b"{\"name\": \"\xff\xfe\"}", Some("deel"));
        assert_eq!(e.kind(), ErrorKind::InvalidJson);
        assert_eq!(e.vendor(), Some(Vendor::Deel));
    }

    #[test]
    fn byte_order_mark_is_tolerated() {
        let body = b"\xEF\xBB\xBF{\"id\":\"1\",\"event\":\"USER_PII_UPDATE\",\"order\":{\"userAccessCode\":\"u\"}}";
        assert!(normalize(body, None, at(), &Limits::default()).is_ok());
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let mut body = "[".repeat(100_000);
        body.push_str(&"]".repeat(100_000));
        assert_eq!(err(body.as_bytes(), None).kind(), ErrorKind::InvalidJson);
    }

    #[test]
    fn unknown_event_type_names_vendor_and_safe_type() {
        let e = err(
            br#"{"id":"1","event":"SEX_OFFENDER_CHECK_STATUS_UPDATE","order":{}}"#,
            None,
        );
        assert_eq!(e.kind(), ErrorKind::UnknownEventType);
        assert_eq!(e.vendor(), Some(Vendor::Authenticate));
        assert_eq!(
            e.to_string(),
            "authenticate event type \"SEX_OFFENDER_CHECK_STATUS_UPDATE\" is not in the canonical type table"
        );
    }

    #[test]
    fn kind_strings_are_the_contract() {
        let strings: Vec<_> = ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            strings,
            [
                "invalid_json",
                "body_too_large",
                "unknown_vendor",
                "unknown_event_type",
                "invalid_payload"
            ]
        );
        for k in ErrorKind::ALL {
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
    }
}
