//! Vendor webhook signatures, checked over the raw body bytes. Pure: the secrets, the
//! headers and the body in, valid or why not out.
//!
//! The schemes (`../shared/vendor-docs/FACTS.md`), forwarded by the gateway as headers:
//!
//! - Entuitive: `x-entuitive-signature` = lowercase hex HMAC-SHA256 of the raw body.
//! - Deel: `x-deel-signature` = lowercase hex HMAC-SHA256 of `POST` followed by the raw
//!   body; `x-deel-hmac-label` names the signing key.
//! - Authenticate publishes no scheme: nothing to check (protect the gateway instead).
//!
//! A signature is valid when any configured secret made it: during a rotation both the
//! old and the new secret are configured. For Deel, a label configured under
//! `signatures.deel.labels` pins the secret its `x-deel-hmac-label` names; a label not
//! configured there falls back to trying every secret. Hex is read in either case (the
//! vendors write lowercase). The comparison is constant-time (`Mac::verify_slice`).

use std::collections::BTreeMap;
use std::fmt;

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use crate::canonical::Vendor;

pub const ENTUITIVE_HEADER: &str = "x-entuitive-signature";
pub const DEEL_HEADER: &str = "x-deel-signature";
pub const DEEL_LABEL_HEADER: &str = "x-deel-hmac-label";
/// Every header this module reads, for the broker glue to pick out of a raw message.
pub const HEADERS: [&str; 3] = [ENTUITIVE_HEADER, DEEL_HEADER, DEEL_LABEL_HEADER];

/// A signing secret. Never shown: its `Debug` prints `****`.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(secret: impl Into<String>) -> Secret {
        Secret(secret.into())
    }

    fn bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// The secret itself, for a comparison; never for a log or an error.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(****)")
    }
}

/// One vendor's secrets.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VendorSecrets {
    #[serde(default)]
    pub secrets: Vec<Secret>,
    /// Deel only: the secret for each `x-deel-hmac-label`.
    #[serde(default)]
    pub labels: BTreeMap<String, Secret>,
    /// Whether a message without a signature fails; default: true once a secret is set.
    #[serde(default)]
    pub required: Option<bool>,
    /// A file holding the secrets, one a line, instead of `secrets` (read at start by
    /// [`crate::config`], which fills `secrets`).
    #[serde(default)]
    pub secrets_file: Option<std::path::PathBuf>,
    /// Deel only: a file of `label=secret` lines, instead of `labels`.
    #[serde(default)]
    pub labels_file: Option<std::path::PathBuf>,
}

impl VendorSecrets {
    fn configured(&self) -> bool {
        !self.secrets.is_empty() || !self.labels.is_empty()
    }

    fn required(&self) -> bool {
        self.required.unwrap_or_else(|| self.configured())
    }
}

/// The `[signatures]` settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signatures {
    #[serde(default)]
    pub entuitive: VendorSecrets,
    #[serde(default)]
    pub deel: VendorSecrets,
    /// Only so that setting it is refused with a reason (Authenticate has no scheme).
    #[serde(default)]
    pub authenticate: Option<serde::de::IgnoredAny>,
}

impl Signatures {
    /// What is wrong with the settings: the key, and why.
    pub fn problem(&self) -> Option<(&'static str, &'static str)> {
        if self.authenticate.is_some() {
            return Some((
                "signatures.authenticate",
                "Authenticate publishes no signature scheme: there is nothing to verify; protect the gateway endpoint instead (ingest.access.authenticate: a path token or basic auth; TLS; an allow-list of Authenticate's addresses)",
            ));
        }
        if !self.entuitive.labels.is_empty() || self.entuitive.labels_file.is_some() {
            return Some((
                "signatures.entuitive.labels",
                "labels are Deel's (x-deel-hmac-label); Entuitive signs with one secret at a time: list old and new in secrets",
            ));
        }
        for (key, vendor) in [
            ("signatures.entuitive", &self.entuitive),
            ("signatures.deel", &self.deel),
        ] {
            if vendor
                .secrets
                .iter()
                .chain(vendor.labels.values())
                .any(|s| s.0.is_empty())
            {
                return Some((key, "a secret is empty"));
            }
            if vendor.required == Some(true) && !vendor.configured() {
                return Some((key, "required = true, but no secret is set"));
            }
        }
        None
    }
}

/// Why a message's signature does not hold. Names the header, never its value or a
/// secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing {header} (signatures.{vendor}.required)")]
    Missing {
        header: &'static str,
        vendor: &'static str,
    },
    #[error("{header} is not a hex HMAC-SHA256 (64 hex digits)")]
    Malformed { header: &'static str },
    #[error("{header} does not match the body under any configured secret")]
    Mismatch { header: &'static str },
}

/// Checks the signature of a raw message from `vendor`: `header` looks a header up by
/// its lowercase name.
pub fn verify<'h>(
    signatures: &Signatures,
    vendor: Vendor,
    header: impl Fn(&str) -> Option<&'h str>,
    body: &[u8],
) -> Result<(), SignatureError> {
    let (name, prefix, secrets): (&'static str, &[u8], &VendorSecrets) = match vendor {
        Vendor::Entuitive => (ENTUITIVE_HEADER, b"", &signatures.entuitive),
        Vendor::Deel => (DEEL_HEADER, b"POST", &signatures.deel),
        Vendor::Authenticate => return Ok(()),
    };
    if !secrets.configured() {
        return Ok(());
    }
    let Some(signature) = header(name) else {
        return if secrets.required() {
            Err(SignatureError::Missing {
                header: name,
                vendor: vendor.key(),
            })
        } else {
            Ok(())
        };
    };
    // 64 hex digits, either case; anything else is no signature.
    let mut digest = [0u8; 32];
    hex::decode_to_slice(signature, &mut digest)
        .map_err(|_| SignatureError::Malformed { header: name })?;
    let pinned = match vendor {
        Vendor::Deel => header(DEEL_LABEL_HEADER).and_then(|label| secrets.labels.get(label)),
        _ => None,
    };
    let mut candidates: Box<dyn Iterator<Item = &Secret>> = match pinned {
        Some(secret) => Box::new(std::iter::once(secret)),
        None => Box::new(secrets.secrets.iter().chain(secrets.labels.values())),
    };
    let signed = candidates.any(|secret| {
        // HMAC takes a key of any length.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.bytes()) else {
            return false;
        };
        mac.update(prefix);
        mac.update(body);
        mac.verify_slice(&digest).is_ok()
    });
    if signed {
        Ok(())
    } else {
        Err(SignatureError::Mismatch { header: name })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const BODY: &[u8] = b"{\"event_type\":\"user.created\",\"data\":{\"id\":1}}\n";

    /// The documented scheme, computed here with the same crates (an independent vector
    /// is in `fixed_vectors_made_by_openssl`).
    pub(crate) fn sign(secret: &str, prefix: &[u8], body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(prefix);
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    }

    fn secrets(list: &[&str]) -> VendorSecrets {
        VendorSecrets {
            secrets: list.iter().map(|s| Secret::new(*s)).collect(),
            ..VendorSecrets::default()
        }
    }

    fn with(vendor: Vendor, s: VendorSecrets) -> Signatures {
        let mut all = Signatures::default();
        match vendor {
            Vendor::Entuitive => all.entuitive = s,
            _ => all.deel = s,
        }
        all
    }

    fn check(
        signatures: &Signatures,
        vendor: Vendor,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(), SignatureError> {
        verify(
            signatures,
            vendor,
            |name| headers.iter().find(|(n, _)| *n == name).map(|(_, v)| *v),
            body,
        )
    }

    /// Made with OpenSSL, an implementation independent of ours:
    /// `printf '%s' "$BODY" | openssl dgst -sha256 -hmac s3cret` (Entuitive) and
    /// `{ printf POST; printf '%s' "$BODY"; } | openssl dgst -sha256 -hmac s3cret` (Deel),
    /// where $BODY is `{"id":1}` followed by a newline.
    #[test]
    fn fixed_vectors_made_by_openssl() {
        let body = b"{\"id\":1}\n";
        let entuitive = with(Vendor::Entuitive, secrets(&["s3cret"]));
        let sig = "12b34d3c7e20e93f3f80ba417d49863ad3c294791b9d3f85ff630b745835b6b5";
        assert_eq!(
            check(
                &entuitive,
                Vendor::Entuitive,
                &[(ENTUITIVE_HEADER, sig)],
                body
            ),
            Ok(())
        );
        let deel = with(Vendor::Deel, secrets(&["s3cret"]));
        let sig = "a2c98776840a60ffebbc463d96caedc751b42dc99af91d0afc084fe2086a34bc";
        assert_eq!(
            check(&deel, Vendor::Deel, &[(DEEL_HEADER, sig)], body),
            Ok(())
        );
    }

    #[test]
    fn entuitive_signs_the_body_and_any_configured_secret_will_do() {
        let s = with(Vendor::Entuitive, secrets(&["old", "new"]));
        for secret in ["old", "new"] {
            let sig = sign(secret, b"", BODY);
            assert_eq!(
                check(&s, Vendor::Entuitive, &[(ENTUITIVE_HEADER, &sig)], BODY),
                Ok(())
            );
            // Uppercase hex is the same signature.
            let upper = sig.to_uppercase();
            assert_eq!(
                check(&s, Vendor::Entuitive, &[(ENTUITIVE_HEADER, &upper)], BODY),
                Ok(())
            );
        }
        // The trailing newline is signed: without it, no match.
        let sig = sign("new", b"", BODY);
        let cut = &BODY[..BODY.len() - 1];
        assert_eq!(
            check(&s, Vendor::Entuitive, &[(ENTUITIVE_HEADER, &sig)], cut),
            Err(SignatureError::Mismatch {
                header: ENTUITIVE_HEADER
            })
        );
        let other = sign("retired", b"", BODY);
        assert_eq!(
            check(&s, Vendor::Entuitive, &[(ENTUITIVE_HEADER, &other)], BODY),
            Err(SignatureError::Mismatch {
                header: ENTUITIVE_HEADER
            })
        );
    }

    #[test]
    fn deel_signs_post_then_the_body() {
        let s = with(Vendor::Deel, secrets(&["k"]));
        let sig = sign("k", b"POST", BODY);
        assert_eq!(
            check(&s, Vendor::Deel, &[(DEEL_HEADER, &sig)], BODY),
            Ok(())
        );
        let body_only = sign("k", b"", BODY);
        assert_eq!(
            check(&s, Vendor::Deel, &[(DEEL_HEADER, &body_only)], BODY),
            Err(SignatureError::Mismatch {
                header: DEEL_HEADER
            })
        );
    }

    #[test]
    fn a_deel_label_pins_its_secret_and_an_unknown_label_tries_them_all() {
        let mut s = secrets(&["plain"]);
        s.labels.insert("k1".into(), Secret::new("labelled"));
        let s = with(Vendor::Deel, s);
        let by_label = sign("labelled", b"POST", BODY);
        let by_plain = sign("plain", b"POST", BODY);
        let ok = |sig: &str, label: &str| {
            check(
                &s,
                Vendor::Deel,
                &[(DEEL_HEADER, sig), (DEEL_LABEL_HEADER, label)],
                BODY,
            )
        };
        assert_eq!(ok(&by_label, "k1"), Ok(()));
        assert!(ok(&by_plain, "k1").is_err(), "k1 pins its secret");
        assert_eq!(ok(&by_plain, "k9"), Ok(()));
        assert_eq!(ok(&by_label, "k9"), Ok(()));
        assert_eq!(
            check(&s, Vendor::Deel, &[(DEEL_HEADER, &by_label)], BODY),
            Ok(())
        );
    }

    #[test]
    fn missing_and_malformed_signatures() {
        let s = with(Vendor::Entuitive, secrets(&["k"]));
        assert_eq!(
            check(&s, Vendor::Entuitive, &[], BODY),
            Err(SignatureError::Missing {
                header: ENTUITIVE_HEADER,
                vendor: "entuitive"
            })
        );
        let mut optional = secrets(&["k"]);
        optional.required = Some(false);
        let optional = with(Vendor::Entuitive, optional);
        assert_eq!(check(&optional, Vendor::Entuitive, &[], BODY), Ok(()));
        let good = sign("k", b"", BODY);
        for bad in [
            "zz",
            &good[..63],
            &format!("{good}0"),
            &good.replace('a', "g"),
            "",
        ] {
            if bad == good {
                continue;
            }
            assert_eq!(
                check(&s, Vendor::Entuitive, &[(ENTUITIVE_HEADER, bad)], BODY),
                Err(SignatureError::Malformed {
                    header: ENTUITIVE_HEADER
                }),
                "{bad}"
            );
        }
        // Nothing configured: nothing checked; Authenticate: never.
        assert_eq!(
            check(&Signatures::default(), Vendor::Deel, &[], BODY),
            Ok(())
        );
        assert_eq!(check(&s, Vendor::Authenticate, &[], BODY), Ok(()));
    }

    #[test]
    fn errors_and_debug_never_show_a_secret_or_a_signature() {
        let s = with(Vendor::Entuitive, secrets(&["hunter2"]));
        assert!(!format!("{s:?}").contains("hunter2"));
        let wrong = sign("other", b"", BODY);
        let e = check(&s, Vendor::Entuitive, &[(ENTUITIVE_HEADER, &wrong)], BODY).unwrap_err();
        assert!(!e.to_string().contains(&wrong) && !e.to_string().contains("hunter2"));
    }

    #[test]
    fn settings_problems_are_named() {
        let mut s = Signatures::default();
        assert_eq!(s.problem(), None);
        s.deel.required = Some(true);
        assert_eq!(s.problem().unwrap().0, "signatures.deel");
        s.deel = secrets(&[""]);
        assert_eq!(s.problem(), Some(("signatures.deel", "a secret is empty")));
    }
}
