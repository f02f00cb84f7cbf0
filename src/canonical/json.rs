//! JSON written by hand where serde's generic path costs more than the bytes: strings
//! escaped as serde_json (and RFC 8785) escape them. Byte for byte what `serde_json`
//! writes of the same values; tests hold the two equal.

/// A JSON string as serde_json writes it, which is also RFC 8785's escaping: `"` and `\`
/// escaped, `\b \f \n \r \t` by name, other control characters as `\u00xx` (lowercase),
/// everything else as is.
pub(super) fn string(s: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut plain = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            0x0c => b"\\f",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x00..=0x1f => &[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ],
            _ => continue,
        };
        out.extend_from_slice(&bytes[plain..i]);
        out.extend_from_slice(escape);
        plain = i + 1;
    }
    out.extend_from_slice(&bytes[plain..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let every: String = (0u32..0x3000).filter_map(char::from_u32).collect();
        for s in ["", "plain", "\"\\", &every] {
            let mut ours = Vec::new();
            string(s, &mut ours);
            assert_eq!(ours, serde_json::to_vec(s).unwrap());
        }
    }
}
