//! The canonical type table: the public routing contract, one row per canonical type.
//!
//! Changing a row's canonical string breaks every downstream binding on it; add rows,
//! never rename them.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::Vendor;

macro_rules! event_types {
    ($(
        $variant:ident => $canonical:literal {
            vendor: $vendor:ident,
            vendor_type: $vendor_type:literal,
            when: $when:literal,
            subject: $subject:literal,
        }
    )*) => {
        /// A canonical event type, `{vendor}.{entity}.{action}`. It is the CloudEvents
        /// `type` and the routing key on the canonical exchange.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum EventType {
            $(
                #[doc = concat!("`", $canonical, "`")]
                #[serde(rename = $canonical)]
                $variant,
            )*
        }

        impl EventType {
            /// Every canonical type, in table order.
            pub const ALL: &'static [EventType] = &[$(EventType::$variant),*];

            /// The canonical type string.
            pub const fn as_str(self) -> &'static str {
                match self { $(EventType::$variant => $canonical),* }
            }

            /// The vendor that sends it.
            pub const fn vendor(self) -> Vendor {
                match self { $(EventType::$variant => Vendor::$vendor),* }
            }

            /// The vendor's own event type string it maps from.
            pub const fn vendor_event_type(self) -> &'static str {
                match self { $(EventType::$variant => $vendor_type),* }
            }

            /// The extra condition, when one vendor type maps to several canonical types.
            pub const fn condition(self) -> &'static str {
                match self { $(EventType::$variant => $when),* }
            }

            /// How the CloudEvents `subject` is built (documentation).
            pub const fn subject_rule(self) -> &'static str {
                match self { $(EventType::$variant => $subject),* }
            }
        }
    };
}

event_types! {
    EntuitiveUserCreated => "entuitive.user.created" {
        vendor: Entuitive, vendor_type: "user.created", when: "",
        subject: "user/{user key}",
    }
    EntuitiveUserUpdated => "entuitive.user.updated" {
        vendor: Entuitive, vendor_type: "user.updated", when: "",
        subject: "user/{user key}",
    }
    EntuitiveUserDeactivated => "entuitive.user.deactivated" {
        vendor: Entuitive, vendor_type: "user.deactivated", when: "",
        subject: "user/{user key}",
    }
    EntuitiveComplianceStatusUpdated => "entuitive.compliance_status.updated" {
        vendor: Entuitive, vendor_type: "user.compliance_status.updated",
        when: "bare (no event_type) or wrapped",
        subject: "user/{user key}",
    }
    AuthenticateUserUpdated => "authenticate.user.updated" {
        vendor: Authenticate, vendor_type: "USER_PII_UPDATE", when: "",
        subject: "user/{order.userAccessCode}",
    }
    AuthenticateIdentityVerificationAttempted => "authenticate.identity_verification.attempted" {
        vendor: Authenticate, vendor_type: "SELF_VERIFICATION_TRY_STATUS", when: "",
        subject: "user/{order.userAccessCode}",
    }
    AuthenticateIdDocumentReviewCompleted => "authenticate.id_document_review.completed" {
        vendor: Authenticate, vendor_type: "UPLOAD_ID_ENHANCED_REVIEW_STATUS", when: "",
        subject: "user/{order.userAccessCode}",
    }
    AuthenticatePassportReviewCompleted => "authenticate.passport_review.completed" {
        vendor: Authenticate, vendor_type: "UPLOAD_PASSPORT_ENHANCED_REVIEW_STATUS", when: "",
        subject: "user/{order.userAccessCode}",
    }
    AuthenticateBackgroundCheckUpdated => "authenticate.background_check.updated" {
        vendor: Authenticate, vendor_type: "CRIMINAL_REQUEST_STATUS_UPDATE", when: "",
        subject: "criminal_search/{order.orderDetails.unique_identifier}",
    }
    AuthenticateBackgroundCheckCompleted => "authenticate.background_check.completed" {
        vendor: Authenticate, vendor_type: "ALL_CRIMINAL_REQUESTS_COMPLETE", when: "",
        subject: "user/{order.userAccessCode}",
    }
    AuthenticateReportInitiated => "authenticate.report.initiated" {
        vendor: Authenticate, vendor_type: "USER_PDF_REPORT_GENERATION", when: "order.status = INITIATED",
        subject: "report/{order.reportUUID}, else user/{order.userAccessCode}",
    }
    AuthenticateReportCompleted => "authenticate.report.completed" {
        vendor: Authenticate, vendor_type: "USER_PDF_REPORT_GENERATION", when: "order.status = COMPLETED",
        subject: "report/{order.reportUUID}, else user/{order.userAccessCode}",
    }
    AuthenticateReportFailed => "authenticate.report.failed" {
        vendor: Authenticate, vendor_type: "USER_PDF_REPORT_GENERATION", when: "order.status = FAILED",
        subject: "report/{order.reportUUID}, else user/{order.userAccessCode}",
    }
    DeelBackgroundCheckCompleted => "deel.background_check.completed" {
        vendor: Deel, vendor_type: "bgcheck.result.available", when: "",
        subject: "background_check/{resource.id}",
    }
    DeelContractCreated => "deel.contract.created" {
        vendor: Deel, vendor_type: "contract.created", when: "",
        subject: "contract/{resource.id}",
    }
    DeelContractStatusUpdated => "deel.contract.status_updated" {
        vendor: Deel, vendor_type: "contract.status.updated", when: "",
        subject: "contract/{resource.id}",
    }
    DeelContractTerminated => "deel.contract.terminated" {
        vendor: Deel, vendor_type: "contract.terminated", when: "",
        subject: "contract/{resource.id}",
    }
    DeelContractArchived => "deel.contract.archived" {
        vendor: Deel, vendor_type: "contract.archived", when: "",
        subject: "contract/{resource.id}",
    }
    DeelEorQuoteCreated => "deel.eor_quote.created" {
        vendor: Deel, vendor_type: "eor.quote.created", when: "",
        subject: "eor_quote/{resource.id}, else contract/{resource.contract_id}",
    }
    DeelInvoiceAdjustmentCreated => "deel.invoice_adjustment.created" {
        vendor: Deel, vendor_type: "invoice-adjustment.created", when: "",
        subject: "invoice_adjustment/{resource.id}",
    }
    DeelInvoiceAdjustmentReviewed => "deel.invoice_adjustment.reviewed" {
        vendor: Deel, vendor_type: "invoice-adjustment.reviewed", when: "resource array: one event per element",
        subject: "invoice_adjustment/{resource[i].id}",
    }
    DeelProfileKycChanged => "deel.profile.kyc_changed" {
        vendor: Deel, vendor_type: "profile.kyc.changed", when: "",
        subject: "profile/{resource.profile_id}",
    }
    DeelTimesheetCreated => "deel.timesheet.created" {
        vendor: Deel, vendor_type: "timesheet.created", when: "",
        subject: "timesheet/{resource.id}",
    }
    DeelTimesheetReviewed => "deel.timesheet.reviewed" {
        vendor: Deel, vendor_type: "timesheet.reviewed", when: "resource array: one event per element",
        subject: "timesheet/{resource[i].id}",
    }
    DeelTimeOffCreated => "deel.time_off.created" {
        vendor: Deel, vendor_type: "time-off.created", when: "",
        subject: "time_off/{resource.id}",
    }
    DeelTimeOffReviewed => "deel.time_off.reviewed" {
        vendor: Deel, vendor_type: "time-off.reviewed", when: "resource array: one event per element",
        subject: "time_off/{resource[i].id}",
    }
    DeelTimeOffUpdated => "deel.time_off.updated" {
        vendor: Deel, vendor_type: "time-off.updated", when: "",
        subject: "time_off/{resource.id}",
    }
}

impl EventType {
    /// The entity word of the type: `contract` in `deel.contract.created`.
    pub fn entity(self) -> &'static str {
        self.as_str().split('.').nth(1).unwrap_or_default()
    }

    /// The canonical type a vendor type maps to when it maps to exactly one. Vendor type
    /// strings are matched ignoring ASCII case: vendors are not consistent about it.
    pub fn from_vendor_type(vendor: Vendor, vendor_type: &str) -> Option<EventType> {
        let mut matches = EventType::ALL.iter().copied().filter(|t| {
            t.vendor() == vendor && t.vendor_event_type().eq_ignore_ascii_case(vendor_type)
        });
        let first = matches.next()?;
        // A vendor type with several rows needs its extra condition; the vendor
        // module decides those itself.
        matches.next().is_none().then_some(first)
    }
}

/// The `type` of a canonical event: a row of the table, or the generic type of a vendor
/// type we do not map, passed through by choice (`unmapped.{vendor} = "passthrough"`).
///
/// Generic types are `{vendor}.unmapped.{word}`, the word being the vendor's type
/// normalised into one routing-key word ([`CanonicalType::unmapped`]): `deel.unmapped.*`
/// binds every one of a vendor's, and no table row can ever be one (no row's entity is
/// `unmapped`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CanonicalType {
    Mapped(EventType),
    Unmapped(UnmappedType),
}

/// The generic type of one unmapped vendor type: `{vendor}.unmapped.{word}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UnmappedType {
    vendor: Vendor,
    /// The whole type string, vendor and `unmapped` included.
    name: String,
}

/// The middle word of every generic type.
pub const UNMAPPED_ENTITY: &str = "unmapped";

/// The kind of `data.entity` in every generic event: the event itself (its subject is
/// `event/{id}`), since the mapping does not know what the body is about.
pub const GENERIC_ENTITY_KIND: &str = "event";

/// Longest word a vendor type is normalised into: a generic type stays well inside the
/// 255 bytes of an AMQP routing key whatever the vendor sends.
pub const MAX_UNMAPPED_WORD_BYTES: usize = 64;

impl CanonicalType {
    /// The generic type of `vendor_type`: ASCII letters lowercased; every run of other
    /// characters (`.`, `-`, spaces, anything not an ASCII letter or digit) becomes one
    /// `_`; leading and trailing `_` dropped; cut to [`MAX_UNMAPPED_WORD_BYTES`].
    /// `payslip.available` becomes `deel.unmapped.payslip_available`. `None` when nothing
    /// is left (a type of punctuation only).
    pub fn unmapped(vendor: Vendor, vendor_type: &str) -> Option<CanonicalType> {
        let mut word = String::with_capacity(vendor_type.len().min(MAX_UNMAPPED_WORD_BYTES));
        for c in vendor_type.chars() {
            if c.is_ascii_alphanumeric() {
                word.push(c.to_ascii_lowercase());
            } else if !word.is_empty() && !word.ends_with('_') {
                word.push('_');
            }
            if word.len() >= MAX_UNMAPPED_WORD_BYTES {
                break;
            }
        }
        word.truncate(MAX_UNMAPPED_WORD_BYTES);
        let word = word.trim_end_matches('_');
        (!word.is_empty()).then(|| {
            CanonicalType::Unmapped(UnmappedType {
                vendor,
                name: format!("{}.{UNMAPPED_ENTITY}.{word}", vendor.key()),
            })
        })
    }

    /// The type string: the CloudEvents `type` and the routing key.
    pub fn as_str(&self) -> &str {
        match self {
            CanonicalType::Mapped(t) => t.as_str(),
            CanonicalType::Unmapped(t) => &t.name,
        }
    }

    pub fn vendor(&self) -> Vendor {
        match self {
            CanonicalType::Mapped(t) => t.vendor(),
            CanonicalType::Unmapped(t) => t.vendor,
        }
    }

    /// The table row, for a mapped type.
    pub fn mapped(&self) -> Option<EventType> {
        match self {
            CanonicalType::Mapped(t) => Some(*t),
            CanonicalType::Unmapped(_) => None,
        }
    }

    /// A closed-set name for metrics labels: the type itself when mapped,
    /// `{vendor}.unmapped` for every generic type (vendors choose those names, so they
    /// must not become label values one by one).
    pub fn label(&self) -> &'static str {
        match self {
            CanonicalType::Mapped(t) => t.as_str(),
            CanonicalType::Unmapped(t) => match t.vendor {
                Vendor::Entuitive => "entuitive.unmapped",
                Vendor::Authenticate => "authenticate.unmapped",
                Vendor::Deel => "deel.unmapped",
            },
        }
    }
}

impl From<EventType> for CanonicalType {
    fn from(t: EventType) -> Self {
        CanonicalType::Mapped(t)
    }
}

impl PartialEq<EventType> for CanonicalType {
    fn eq(&self, other: &EventType) -> bool {
        self.mapped() == Some(*other)
    }
}

impl fmt::Display for CanonicalType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is neither a table row nor a generic type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a canonical type: neither in the type table nor {{vendor}}.unmapped.{{word}}")]
pub struct NotACanonicalType;

impl std::str::FromStr for CanonicalType {
    type Err = NotACanonicalType;

    /// Exactly the strings [`CanonicalType::as_str`] gives: a row's type, or a generic
    /// type already in normal form.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(t) = EventType::ALL.iter().find(|t| t.as_str() == s) {
            return Ok(CanonicalType::Mapped(*t));
        }
        let mut parts = s.splitn(3, '.');
        let (Some(vendor), Some(UNMAPPED_ENTITY), Some(word)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(NotACanonicalType);
        };
        let vendor = Vendor::ALL
            .into_iter()
            .find(|v| v.key() == vendor)
            .ok_or(NotACanonicalType)?;
        match CanonicalType::unmapped(vendor, word) {
            Some(t) if t.as_str() == s => Ok(t),
            _ => Err(NotACanonicalType),
        }
    }
}

impl Serialize for CanonicalType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for CanonicalType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The type table as a Markdown table, as `docs/events.md` shows it.
pub fn markdown_table() -> String {
    let mut out = String::from(
        "| vendor | vendor type | condition | canonical type | subject |\n|---|---|---|---|---|\n",
    );
    for t in EventType::ALL {
        out.push_str(&format!(
            "| {} | `{}` | {} | `{}` | `{}` |\n",
            t.vendor(),
            t.vendor_event_type(),
            t.condition(),
            t.as_str(),
            t.subject_rule()
        ));
    }
    out
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn table_has_27_canonical_types_from_25_vendor_types() {
        assert_eq!(EventType::ALL.len(), 27);
        let vendor_types: HashSet<_> = EventType::ALL
            .iter()
            .map(|t| (t.vendor(), t.vendor_event_type()))
            .collect();
        assert_eq!(vendor_types.len(), 25);
    }

    #[test]
    fn canonical_strings_are_unique_and_shaped_vendor_entity_action() {
        let mut seen = HashSet::new();
        for t in EventType::ALL {
            assert!(seen.insert(t.as_str()), "duplicate {t}");
            let parts: Vec<_> = t.as_str().split('.').collect();
            assert_eq!(parts.len(), 3, "{t}");
            assert_eq!(parts[0], t.vendor().key(), "{t}");
            for part in parts {
                assert!(
                    !part.is_empty() && part.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                    "{t}: routing-key words must be lowercase letters and _"
                );
            }
        }
    }

    #[test]
    fn entity_is_the_middle_word() {
        assert_eq!(EventType::DeelTimeOffReviewed.entity(), "time_off");
        assert_eq!(
            EventType::EntuitiveComplianceStatusUpdated.entity(),
            "compliance_status"
        );
    }

    #[test]
    fn serde_uses_the_canonical_string() {
        for t in EventType::ALL {
            let json = serde_json::to_string(t).unwrap();
            assert_eq!(json, format!("\"{}\"", t.as_str()));
            assert_eq!(serde_json::from_str::<EventType>(&json).unwrap(), *t);
        }
        assert!(serde_json::from_str::<EventType>("\"deel.contract.exploded\"").is_err());
    }

    #[test]
    fn unmapped_types_are_one_lowercase_word_after_vendor_and_unmapped() {
        let t = |vendor, s: &str| CanonicalType::unmapped(vendor, s).map(|t| t.to_string());
        assert_eq!(
            t(Vendor::Deel, "payslip.available").as_deref(),
            Some("deel.unmapped.payslip_available")
        );
        assert_eq!(
            t(Vendor::Deel, " Time-Off..Cancelled! ").as_deref(),
            Some("deel.unmapped.time_off_cancelled")
        );
        assert_eq!(
            t(Vendor::Authenticate, "MVR_STATUS_UPDATE").as_deref(),
            Some("authenticate.unmapped.mvr_status_update")
        );
        // Non-ASCII letters are separators, never routing-key bytes.
        assert_eq!(
            t(Vendor::Entuitive, "usér.créé").as_deref(),
            Some("entuitive.unmapped.us_r_cr")
        );
        assert_eq!(t(Vendor::Deel, "...").as_deref(), None);
        assert_eq!(t(Vendor::Deel, "").as_deref(), None);
        let long = "a".repeat(1000);
        let got = t(Vendor::Deel, &long).unwrap();
        assert_eq!(got.len(), "deel.unmapped.".len() + MAX_UNMAPPED_WORD_BYTES);
        // A cut that lands on a separator leaves no trailing `_`.
        let edge = format!("{}.b", "a".repeat(MAX_UNMAPPED_WORD_BYTES - 1));
        assert!(!t(Vendor::Deel, &edge).unwrap().ends_with('_'));
    }

    #[test]
    fn canonical_types_parse_back_only_from_their_own_strings() {
        for t in EventType::ALL {
            assert_eq!(t.as_str().parse::<CanonicalType>(), Ok((*t).into()));
        }
        let generic = CanonicalType::unmapped(Vendor::Deel, "payslip.available").unwrap();
        assert_eq!(
            generic.as_str().parse::<CanonicalType>(),
            Ok(generic.clone())
        );
        assert_eq!(generic.vendor(), Vendor::Deel);
        assert_eq!(generic.label(), "deel.unmapped");
        assert_eq!(generic.mapped(), None);
        for bad in [
            "deel.contract.exploded",
            "deel.unmapped.Payslip",
            "deel.unmapped.a.b",
            "deel.unmapped._a",
            "deel.unmapped.",
            "acme.unmapped.x",
            "deel.unmapped",
        ] {
            assert!(bad.parse::<CanonicalType>().is_err(), "{bad}");
        }
        let json = serde_json::to_string(&generic).unwrap();
        assert_eq!(json, "\"deel.unmapped.payslip_available\"");
        assert_eq!(
            serde_json::from_str::<CanonicalType>(&json).unwrap(),
            generic
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config {
            cases: 2000,
            failure_persistence: None,
            ..proptest::test_runner::Config::default()
        })]

        /// Whatever a vendor sends as its type, the generic type is one routing-key word
        /// that parses back to itself, or there is none because nothing was a letter or
        /// digit.
        #[test]
        fn any_vendor_type_gives_one_word_or_none(vendor_type in "\\PC{0,200}") {
            match CanonicalType::unmapped(Vendor::Authenticate, &vendor_type) {
                Some(t) => {
                    let word = t.as_str().strip_prefix("authenticate.unmapped.").unwrap();
                    proptest::prop_assert!(!word.is_empty() && word.len() <= MAX_UNMAPPED_WORD_BYTES);
                    proptest::prop_assert!(word.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
                    proptest::prop_assert!(!word.starts_with('_') && !word.ends_with('_') && !word.contains("__"));
                    proptest::prop_assert_eq!(t.as_str().parse::<CanonicalType>(), Ok(t.clone()));
                }
                None => proptest::prop_assert!(!vendor_type.chars().any(|c| c.is_ascii_alphanumeric())),
            }
        }
    }

    #[test]
    fn no_table_row_looks_like_a_generic_type() {
        for t in EventType::ALL {
            assert_ne!(t.entity(), UNMAPPED_ENTITY, "{t}");
        }
    }

    #[test]
    fn vendor_type_lookup_ignores_case_and_leaves_multi_row_types_to_the_vendor() {
        assert_eq!(
            EventType::from_vendor_type(Vendor::Deel, "Contract.Created"),
            Some(EventType::DeelContractCreated)
        );
        assert_eq!(
            EventType::from_vendor_type(Vendor::Authenticate, "user_pii_update"),
            Some(EventType::AuthenticateUserUpdated)
        );
        assert_eq!(
            EventType::from_vendor_type(Vendor::Authenticate, "USER_PDF_REPORT_GENERATION"),
            None
        );
        assert_eq!(
            EventType::from_vendor_type(Vendor::Entuitive, "contract.created"),
            None
        );
    }
}
