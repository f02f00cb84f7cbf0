//! Text from outside (vendor type names, header names, gateway message ids) shown in
//! errors and logs only when it looks like an identifier, so that a field carrying
//! personal data or control characters is never echoed.

use std::fmt;

/// A name shown only when it is at most 64 letters, digits, `.`, `_`, `-` or `:`.
/// Displays quoted (`"deel"`) or as a note of its length.
pub struct SafeName<'a>(pub &'a str);

impl SafeName<'_> {
    /// Whether the name is shown.
    pub fn is_plain(&self) -> bool {
        let s = self.0;
        !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'))
    }

    /// Displays unquoted (`x-padding`), for lists and log fields.
    pub fn bare(&self) -> Bare<'_> {
        Bare(self)
    }
}

impl fmt::Display for SafeName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_plain() {
            write!(f, "\"{}\"", self.0)
        } else if self.0.is_empty() {
            f.write_str("(none)")
        } else {
            write!(f, "(not shown: {} bytes, not a plain name)", self.0.len())
        }
    }
}

/// [`SafeName`] without quotes.
pub struct Bare<'a>(&'a SafeName<'a>);

impl fmt::Display for Bare<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_plain() {
            f.write_str(self.0.0)
        } else if self.0.0.is_empty() {
            f.write_str("(none)")
        } else {
            write!(f, "(not shown: {} bytes)", self.0.0.len())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_are_shown() {
        let cases = [
            ("USER_PII_UPDATE", "\"USER_PII_UPDATE\"", "USER_PII_UPDATE"),
            ("gw-1:2.3", "\"gw-1:2.3\"", "gw-1:2.3"),
            (
                "jane@example.com",
                "(not shown: 16 bytes, not a plain name)",
                "(not shown: 16 bytes)",
            ),
            // Nothing to hide: a missing message id is said to be missing.
            ("", "(none)", "(none)"),
            (
                "a\nb",
                "(not shown: 3 bytes, not a plain name)",
                "(not shown: 3 bytes)",
            ),
        ];
        for (name, quoted, bare) in cases {
            assert_eq!(SafeName(name).to_string(), quoted);
            assert_eq!(SafeName(name).bare().to_string(), bare);
        }
        let long = "a".repeat(65);
        assert!(!SafeName(&long).is_plain());
        assert!(SafeName(&long[..64]).is_plain());
    }
}
