//! The vendors we normalize, by the key that names them everywhere (source, routing keys, hints).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A webhook vendor. The lowercase key is part of the public contract: it is the
/// `vendor` attribute, the last segment of `source`, the first segment of every
/// canonical type and dead-letter routing key, and the value gateways put in `x-vendor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Vendor {
    /// Entuitive Workforce: contractor compliance.
    Entuitive,
    /// Authenticate: background checks and identity verification.
    Authenticate,
    /// Deel: contracts, time off, timesheets and more.
    Deel,
}

impl Vendor {
    /// Every vendor, in the order the docs list them.
    pub const ALL: [Vendor; 3] = [Vendor::Entuitive, Vendor::Authenticate, Vendor::Deel];

    /// The vendor key: `entuitive`, `authenticate` or `deel`.
    pub const fn key(self) -> &'static str {
        match self {
            Vendor::Entuitive => "entuitive",
            Vendor::Authenticate => "authenticate",
            Vendor::Deel => "deel",
        }
    }

    /// The CloudEvents `source` of this vendor's events.
    pub const fn source(self) -> &'static str {
        match self {
            Vendor::Entuitive => "/vendors/entuitive",
            Vendor::Authenticate => "/vendors/authenticate",
            Vendor::Deel => "/vendors/deel",
        }
    }
}

impl fmt::Display for Vendor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

/// A string that names no vendor we know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a vendor key (expected one of: entuitive, authenticate, deel)")]
pub struct NotAVendor;

impl FromStr for Vendor {
    type Err = NotAVendor;

    /// Accepts the key in any case and with surrounding whitespace, because hints come
    /// from hand-configured gateways and headers.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        Vendor::ALL
            .into_iter()
            .find(|v| v.key().eq_ignore_ascii_case(s))
            .ok_or(NotAVendor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_keys_leniently_and_rejects_others() {
        assert_eq!("deel".parse(), Ok(Vendor::Deel));
        assert_eq!(" Authenticate ".parse(), Ok(Vendor::Authenticate));
        assert_eq!("ENTUITIVE".parse(), Ok(Vendor::Entuitive));
        assert_eq!("".parse::<Vendor>(), Err(NotAVendor));
        assert_eq!("deel.contract".parse::<Vendor>(), Err(NotAVendor));
    }

    #[test]
    fn key_source_and_serde_agree() {
        for v in Vendor::ALL {
            assert_eq!(v.source(), format!("/vendors/{}", v.key()));
            assert_eq!(
                serde_json::to_string(&v).unwrap(),
                format!("\"{}\"", v.key())
            );
        }
    }
}
