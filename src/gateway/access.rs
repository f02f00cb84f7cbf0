//! Who may post a vendor's webhooks to the gateway, for vendors whose requests prove
//! nothing themselves (Authenticate signs nothing, so anyone who knows the URL could
//! post a background-check result), or as a second lock for the others. Pure: the
//! settings and what a request presented in, let in or not out.
//!
//! Per vendor, `ingest.access.{vendor}` may list secret path tokens (the vendor is
//! given `https://…/webhooks/{vendor}/{token}`) and basic-auth credentials
//! (`user:password`, sent as `Authorization: Basic …`). Once either is set, a request
//! must present one of them; several may be listed at once, so a new one can be given to
//! the vendor before the old one is removed. Comparisons take the same time whatever
//! matches (`subtle`), so timing tells nothing about a secret. The settings, and what
//! makes them unusable, are [`crate::config`]'s.

use base64::Engine as _;
use subtle::ConstantTimeEq as _;

use crate::canonical::Vendor;
use crate::config::Access;
use crate::signatures::Secret;

/// What a request presented.
#[derive(Debug, Clone, Copy, Default)]
pub struct Presented<'a> {
    /// The path segment after `/webhooks/{vendor}/`, if any.
    pub path_token: Option<&'a str>,
    /// The `Authorization` header, if any.
    pub authorization: Option<&'a [u8]>,
}

/// Why a request is not let in. Names what is missing, never what was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("no valid path token or basic-auth credential (ingest.access.{0})")]
    NoCredential(&'static str),
    #[error("a path token was given, but ingest.access.{0}.path_tokens is not set")]
    UnexpectedToken(&'static str),
}

/// Whether a request for `vendor` that presented this may come in.
pub fn check(access: &Access, vendor: Vendor, presented: Presented<'_>) -> Result<(), Denied> {
    let Some(settings) = access.get(vendor.key()).filter(|s| s.configured()) else {
        // No lock configured: a token in the path is a mistake, not a credential.
        return match presented.path_token {
            Some(_) => Err(Denied::UnexpectedToken(vendor.key())),
            None => Ok(()),
        };
    };
    let token_ok = presented.path_token.is_some_and(|given| {
        any_equal(
            settings.path_tokens.iter().map(Secret::expose),
            given.as_bytes(),
        )
    });
    let basic_ok = presented
        .authorization
        .and_then(basic_credential)
        .is_some_and(|given| any_equal(settings.basic.iter().map(Secret::expose), &given));
    if token_ok || basic_ok {
        Ok(())
    } else {
        Err(Denied::NoCredential(vendor.key()))
    }
}

/// Whether `given` equals any of `secrets`, comparing every one in full.
fn any_equal<'s>(secrets: impl Iterator<Item = &'s str>, given: &[u8]) -> bool {
    let mut found = subtle::Choice::from(0);
    for secret in secrets {
        found |= secret.as_bytes().ct_eq(given);
    }
    found.into()
}

/// The `user:password` of an `Authorization: Basic …` header.
fn basic_credential(header: &[u8]) -> Option<Vec<u8>> {
    let header = std::str::from_utf8(header).ok()?.trim();
    let (scheme, encoded) = header.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::VendorAccess;

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

    fn basic(pair: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    }

    #[test]
    fn a_vendor_with_a_lock_needs_a_key() {
        let access = access();
        let a = Vendor::Authenticate;
        let token = |t| Presented {
            path_token: Some(t),
            authorization: None,
        };
        assert_eq!(
            check(&access, a, Presented::default()),
            Err(Denied::NoCredential("authenticate"))
        );
        assert!(check(&access, a, token("old-token-0123456789")).is_ok());
        assert!(check(&access, a, token("new-token-0123456789")).is_ok());
        assert!(check(&access, a, token("new-token-012345678")).is_err());
        let good = basic("authn:a-long-password-1");
        let auth = |h: &'static str| Presented {
            path_token: None,
            authorization: Some(h.as_bytes()),
        };
        assert!(check(&access, a, auth(good.leak())).is_ok());
        assert!(check(&access, a, auth(basic("authn:guess").leak())).is_err());
        assert!(check(&access, a, auth("Bearer x")).is_err());
        assert!(check(&access, a, auth("Basic !!!")).is_err());
    }

    #[test]
    fn a_vendor_without_a_lock_takes_no_token() {
        let access = access();
        assert!(check(&access, Vendor::Deel, Presented::default()).is_ok());
        let with_token = Presented {
            path_token: Some("anything"),
            authorization: None,
        };
        assert_eq!(
            check(&access, Vendor::Deel, with_token),
            Err(Denied::UnexpectedToken("deel"))
        );
    }
}
