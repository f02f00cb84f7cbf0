//! W3C Trace Context (`traceparent`, level 1): where a message's trace continues. The
//! gateway starts a trace per request and puts its `traceparent` on the raw message; the
//! worker continues it, one span per raw message, and puts its own span's `traceparent`
//! on every event and dead letter it publishes, so a consumer's work joins the trace.
//! Pure: ids come from a source of randomness passed in.

/// The AMQP header (and HTTP header) that carries it.
pub const TRACEPARENT: &str = "traceparent";

/// The length of a version-00 `traceparent`.
pub const HEADER_LEN: usize = 55;

/// A `traceparent`: version 00, a trace id, the id of the span the message was sent
/// from, and the flags (bit 0: sampled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: u128,
    pub span_id: u64,
    pub flags: u8,
}

impl TraceParent {
    /// Reads a `traceparent` header: `00-{32 hex}-{16 hex}-{2 hex}`, lowercase, neither id
    /// all zeros. Anything else (another version included) is no context at all: the
    /// receiver starts a new trace, as the W3C recommendation says for one it cannot
    /// parse.
    pub fn parse(text: &str) -> Option<TraceParent> {
        let b = text.as_bytes();
        if b.len() != 55 || &b[..3] != b"00-" || b[35] != b'-' || b[52] != b'-' {
            return None;
        }
        fn hex(s: &[u8]) -> Option<&str> {
            s.iter()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
                .then(|| std::str::from_utf8(s).ok())
                .flatten()
        }
        let trace_id = u128::from_str_radix(hex(&b[3..35])?, 16).ok()?;
        let span_id = u64::from_str_radix(hex(&b[36..52])?, 16).ok()?;
        let flags = u8::from_str_radix(hex(&b[53..55])?, 16).ok()?;
        (trace_id != 0 && span_id != 0).then_some(TraceParent {
            trace_id,
            span_id,
            flags,
        })
    }

    /// A new trace, sampled, its first span `span_id`; `random` gives 64 random bits a
    /// call (a zero id is redrawn: W3C makes it invalid).
    pub fn start(mut random: impl FnMut() -> u64) -> TraceParent {
        let high = nonzero(&mut random);
        let trace_id = (u128::from(high) << 64) | u128::from(random());
        TraceParent {
            trace_id,
            span_id: nonzero(&mut random),
            flags: 1,
        }
    }

    /// The context of a span in the same trace, as its children see it.
    pub fn child(self, mut random: impl FnMut() -> u64) -> TraceParent {
        TraceParent {
            span_id: nonzero(&mut random),
            ..self
        }
    }

    /// The header's text.
    pub fn header(&self) -> String {
        String::from_utf8_lossy(&self.header_bytes()).into_owned()
    }

    /// The header's text as bytes, with no allocation: what the worker puts on each
    /// event. Written two digits a byte from a table: formatting machinery would cost
    /// more than the rest of propagating the context.
    pub fn header_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..3].copy_from_slice(b"00-");
        hex_bytes(&self.trace_id.to_be_bytes(), &mut out[3..35]);
        out[35] = b'-';
        hex_bytes(&self.span_id.to_be_bytes(), &mut out[36..52]);
        out[52] = b'-';
        hex_bytes(&[self.flags], &mut out[53..55]);
        out
    }

    /// The trace id as W3C writes it (32 lowercase hex digits).
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

/// `bytes` in lowercase hex, two digits each, into `out` (twice as long).
fn hex_bytes(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (byte, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0xf)];
    }
}

/// A draw of `random` that is not zero.
fn nonzero(random: &mut impl FnMut() -> u64) -> u64 {
    loop {
        let n = random();
        if n != 0 {
            break n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_w3c_example_reads_and_writes_back() {
        let p = TraceParent::parse(EXAMPLE).unwrap();
        assert_eq!(p.trace_id, 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736);
        assert_eq!(p.span_id, 0x00f0_67aa_0ba9_02b7);
        assert_eq!(p.flags, 1);
        assert_eq!(p.header(), EXAMPLE);
        assert_eq!(p.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn anything_else_is_no_context() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "00-4bf92f3577b34da6a3ce929d0e0e473+-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-é",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_child_keeps_the_trace_and_a_start_makes_nonzero_ids() {
        let parent = TraceParent::parse(EXAMPLE).unwrap();
        let mut draws = [0u64, 7].into_iter();
        let child = parent.child(|| draws.next().unwrap());
        assert_eq!(child.trace_id, parent.trace_id);
        assert_eq!(child.span_id, 7, "a zero span id is redrawn");
        assert_eq!(child.flags, parent.flags);
        let mut draws = [0u64, 0, 3, 0, 5].into_iter();
        let root = TraceParent::start(|| draws.next().unwrap());
        assert_eq!(root.trace_id, 3u128 << 64);
        assert_eq!(root.span_id, 5);
        assert_eq!(TraceParent::parse(&root.header()), Some(root));
    }
}
