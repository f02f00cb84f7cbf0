//! `ingest.access`: who may post each vendor's webhooks to the gateway, as settings (path
//! tokens, basic-auth pairs, or files of them), and what makes them unusable. The check
//! of a request against them is the gateway's (`crate::gateway::access`).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::canonical::Vendor;
use crate::signatures::Secret;

/// One vendor's `ingest.access` settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VendorAccess {
    /// Secret path tokens: `POST /webhooks/{vendor}/{token}`.
    #[serde(default)]
    pub path_tokens: Vec<Secret>,
    /// `user:password` pairs for `Authorization: Basic`.
    #[serde(default)]
    pub basic: Vec<Secret>,
    /// A file of path tokens, one a line, instead of `path_tokens` (read at start by
    /// [`crate::config`], which fills `path_tokens`).
    #[serde(default)]
    pub path_tokens_file: Option<std::path::PathBuf>,
    /// A file of `user:password` pairs, one a line, instead of `basic`.
    #[serde(default)]
    pub basic_file: Option<std::path::PathBuf>,
}

impl VendorAccess {
    /// Whether a lock is set: a request must then present one of its keys.
    pub fn configured(&self) -> bool {
        !self.path_tokens.is_empty() || !self.basic.is_empty()
    }
}

/// Shortest secret accepted: a path token or password a person could guess is no lock.
pub const MIN_SECRET_CHARS: usize = 16;

/// The `ingest.access` settings: by vendor key.
pub type Access = BTreeMap<String, VendorAccess>;

/// What is wrong with `ingest.access`: the key, and why.
pub(super) fn problem(access: &Access) -> Option<(String, String)> {
    for (vendor, settings) in access {
        let key = format!("ingest.access.{vendor}");
        if vendor.parse::<Vendor>().is_err() {
            return Some((key, "not a vendor: entuitive, authenticate or deel".into()));
        }
        for token in &settings.path_tokens {
            let t = token.expose();
            if t.chars().count() < MIN_SECRET_CHARS {
                return Some((
                    format!("{key}.path_tokens"),
                    format!("a token is shorter than {MIN_SECRET_CHARS} characters"),
                ));
            }
            if !t
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~'))
            {
                return Some((
                    format!("{key}.path_tokens"),
                    "a token holds a character a URL path would have to escape: use letters, digits, - _ . ~".into(),
                ));
            }
        }
        for pair in &settings.basic {
            let Some((user, password)) = pair.expose().split_once(':') else {
                return Some((format!("{key}.basic"), "write each as user:password".into()));
            };
            if user.is_empty() || password.chars().count() < MIN_SECRET_CHARS {
                return Some((
                    format!("{key}.basic"),
                    format!(
                        "a user is empty or a password shorter than {MIN_SECRET_CHARS} characters"
                    ),
                ));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access() -> Access {
        let mut access = Access::new();
        access.insert(
            "authenticate".into(),
            VendorAccess {
                path_tokens: vec![
                    Secret::new("old-token-0123456789"),
                    Secret::new("new-token-0123456789"),
                ],
                basic: vec![Secret::new("authn:a-long-password-1")],
                ..VendorAccess::default()
            },
        );
        access
    }

    #[test]
    fn weak_or_misspelt_settings_are_refused() {
        let mut access = access();
        assert_eq!(problem(&access), None);
        access.insert("acme".into(), VendorAccess::default());
        assert!(problem(&access).unwrap().0.contains("acme"));
        access.remove("acme");
        access.get_mut("authenticate").unwrap().path_tokens = vec![Secret::new("short")];
        assert!(problem(&access).unwrap().1.contains("shorter"));
        access.get_mut("authenticate").unwrap().path_tokens =
            vec![Secret::new("has/slash-0123456789")];
        assert!(problem(&access).unwrap().1.contains("escape"));
        access.get_mut("authenticate").unwrap().path_tokens = vec![];
        access.get_mut("authenticate").unwrap().basic = vec![Secret::new("no-colon")];
        assert!(problem(&access).unwrap().1.contains("user:password"));
    }
}
