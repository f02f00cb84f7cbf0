//! Checking one frame's properties before the AMQP client parses them. Pure: bytes in,
//! bytes (when they had to change) and a report out.
//!
//! The client's parser (amq-protocol's) recurses once per level of nested field tables and
//! arrays, and rejects a whole frame over one short string that is not UTF-8; either takes
//! down the connection, and with it every message in flight on it. The broker delivers
//! both as it received them. So every content header and delivery method is rewritten
//! here into something the client accepts, never longer than the original (the frame
//! must still fit `frame_max`), and what had to change is reported for the message alone:
//!
//! - a short string that is not UTF-8 (a property, a header name, the routing key) gets
//!   U+FFFD for each invalid sequence, cut to its original length;
//! - a table or array nested deeper than [`MAX_NESTING`] becomes `void`;
//! - a header table the client could not parse at all (an unknown field type, a length
//!   running past its end) becomes empty;
//! - bytes after the last property are dropped;
//! - a key repeated in one table is kept once, where the client would keep only the
//!   last; the later ones are reported with their values, so a dead letter can carry
//!   them.

use std::collections::HashSet;

use crate::redact::SafeName;

/// How deep tables and arrays may nest inside `headers` (the table itself is level 1).
/// RabbitMQ's own `x-death` is 3 deep; the client overflows its stack at about 1,300.
pub const MAX_NESTING: usize = 32;

/// What a message's frames carried that the client could not have taken as it was.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct WireReport {
    /// One line per problem, naming the property (`message_id`,
    /// `headers.trace[2].id`), never its value.
    pub problems: Vec<String>,
    /// Table entries whose key repeated an earlier one in the same table: their path and
    /// their value's encoding (type octet and value, already made safe).
    pub duplicates: Vec<(String, Vec<u8>)>,
    /// The size of a body over the connection's limit, which the client was not given
    /// (it got an empty one).
    pub body_omitted: Option<u64>,
    /// The content header payload as the broker sent it, when it had to be rewritten:
    /// kept only on connections that put messages back byte for byte
    /// ([`super::FrameCheck::verbatim`]), so a copy can carry it instead of what the
    /// client made of it.
    pub original_header: Option<Vec<u8>>,
}

impl WireReport {
    pub fn is_empty(&self) -> bool {
        self.problems.is_empty() && self.duplicates.is_empty() && self.body_omitted.is_none()
    }

    pub fn merge(&mut self, other: WireReport) {
        self.problems.extend(other.problems);
        self.duplicates.extend(other.duplicates);
        self.body_omitted = self.body_omitted.or(other.body_omitted);
        self.original_header = self.original_header.take().or(other.original_header);
    }
}

/// A content header payload announcing a body of `size` bytes instead; `None` for a
/// payload too short to be one.
pub fn with_body_size(payload: &[u8], size: u64) -> Option<Vec<u8>> {
    let mut out = payload.to_vec();
    out.get_mut(4..12)?.copy_from_slice(&size.to_be_bytes());
    Some(out)
}

/// A frame payload after the check: `rewritten` is `None` when it was fine as it was.
#[derive(Debug, Default)]
pub struct Checked {
    pub rewritten: Option<Vec<u8>>,
    pub report: WireReport,
}

/// The class and method ids of the methods this module looks at.
mod ids {
    pub const CHANNEL: u16 = 20;
    pub const CHANNEL_OPEN_OK: u16 = 11;
    pub const CHANNEL_CLOSE: u16 = 40;
    pub const CHANNEL_CLOSE_OK: u16 = 41;
    pub const BASIC: u16 = 60;
    pub const BASIC_RETURN: u16 = 50;
    pub const BASIC_DELIVER: u16 = 60;
    pub const BASIC_GET_OK: u16 = 71;
}

/// What a method frame means for the frames after it on its channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodKind {
    /// `basic.deliver` or `basic.get-ok`: a message with this delivery tag follows.
    Delivery(u64),
    /// `basic.return`: one of our own publishes comes back; it has no delivery tag.
    Return,
    /// The channel was opened or closed: nothing reported for it before still applies.
    ChannelReset,
    Other,
}

/// Checks a method frame's payload: the short strings of the methods that carry a
/// message's exchange and routing key.
pub fn check_method(payload: &[u8]) -> (MethodKind, Checked) {
    let mut cur = Cursor::new(payload);
    let (Some(class), Some(method)) = (cur.u16(), cur.u16()) else {
        return (MethodKind::Other, Checked::default());
    };
    let mut out = Vec::new();
    let mut report = WireReport::default();
    out.extend_from_slice(&payload[..4]);
    let kind = match (class, method) {
        (ids::CHANNEL, ids::CHANNEL_OPEN_OK | ids::CHANNEL_CLOSE | ids::CHANNEL_CLOSE_OK) => {
            return (MethodKind::ChannelReset, Checked::default());
        }
        // deliver: consumer tag, then as get-ok: delivery tag, redelivered, exchange,
        // routing key (get-ok's message count follows, copied as the rest).
        (ids::BASIC, ids::BASIC_DELIVER | ids::BASIC_GET_OK) => {
            let tag = (|| {
                if method == ids::BASIC_DELIVER {
                    short_string(&mut cur, &mut out, "consumer_tag", &mut report)?;
                }
                let tag = cur.u64()?;
                out.extend_from_slice(&tag.to_be_bytes());
                copy(&mut cur, &mut out, 1)?;
                short_string(&mut cur, &mut out, "exchange", &mut report)?;
                short_string(&mut cur, &mut out, "routing_key", &mut report)?;
                Some(tag)
            })();
            match tag {
                Some(tag) => MethodKind::Delivery(tag),
                None => return (MethodKind::Other, Checked::default()),
            }
        }
        (ids::BASIC, ids::BASIC_RETURN) => {
            let ok = (|| {
                copy(&mut cur, &mut out, 2)?;
                short_string(&mut cur, &mut out, "reply_text", &mut report)?;
                short_string(&mut cur, &mut out, "exchange", &mut report)?;
                short_string(&mut cur, &mut out, "routing_key", &mut report)
            })();
            if ok.is_none() {
                return (MethodKind::Other, Checked::default());
            }
            MethodKind::Return
        }
        _ => return (MethodKind::Other, Checked::default()),
    };
    out.extend_from_slice(cur.rest());
    let rewritten = (!report.problems.is_empty()).then_some(out);
    (kind, Checked { rewritten, report })
}

/// The exchange and routing key of a `basic.return` payload (as checked: UTF-8).
pub fn returned_route(payload: &[u8]) -> Option<(String, String)> {
    let mut cur = Cursor::new(payload);
    cur.take(4 + 2)?; // class, method, reply code
    let mut short = || {
        let len = cur.u8()?;
        cur.take(usize::from(len))
    };
    let _reply_text = short()?;
    let exchange = short()?;
    let routing_key = short()?;
    Some((
        String::from_utf8_lossy(exchange).into_owned(),
        String::from_utf8_lossy(routing_key).into_owned(),
    ))
}

/// What a (checked) content header says of its message: the body size and the
/// `message_id`, if any. `None` for a payload too short to be a content header.
pub fn content_summary(payload: &[u8]) -> Option<(u64, Option<String>)> {
    let mut cur = Cursor::new(payload);
    cur.take(4)?; // class, weight
    let body_size = cur.u64()?;
    let flags = cur.u16()?;
    for (i, (name, encoding)) in PROPERTIES.iter().enumerate() {
        if flags & (1 << (15 - i)) == 0 {
            continue;
        }
        match encoding {
            Encoding::Fixed(n) => {
                cur.take(*n)?;
            }
            Encoding::ShortString => {
                let len = cur.u8()?;
                let bytes = cur.take(usize::from(len))?;
                if *name == "message_id" {
                    let id = String::from_utf8_lossy(bytes).into_owned();
                    return Some((body_size, Some(id)));
                }
            }
            Encoding::Table => {
                let len = cur.u32()? as usize;
                cur.take(len)?;
            }
        }
    }
    Some((body_size, None))
}

/// The short-string property at `index` (in flag order) of a content header payload, as
/// sent; `None` when it is absent or the payload cannot be walked to it.
pub fn short_property(payload: &[u8], index: usize) -> Option<&[u8]> {
    let mut cur = Cursor::new(payload.get(CONTENT_HEADER_PREFIX..)?);
    let flags = cur.u16()?;
    for (i, (_, encoding)) in PROPERTIES.iter().enumerate().take(index + 1) {
        if flags & (1 << (15 - i)) == 0 {
            if i == index {
                return None;
            }
            continue;
        }
        let encoded = cur.take_encoded(*encoding)?;
        if i == index {
            return match encoding {
                Encoding::ShortString => encoded.get(1..),
                _ => None,
            };
        }
    }
    None
}

/// The basic class's properties in flag order (bit 15 first), with how each is encoded.
pub(super) const PROPERTIES: [(&str, Encoding); 14] = [
    ("content_type", Encoding::ShortString),
    ("content_encoding", Encoding::ShortString),
    ("headers", Encoding::Table),
    ("delivery_mode", Encoding::Fixed(1)),
    ("priority", Encoding::Fixed(1)),
    ("correlation_id", Encoding::ShortString),
    ("reply_to", Encoding::ShortString),
    ("expiration", Encoding::ShortString),
    ("message_id", Encoding::ShortString),
    ("timestamp", Encoding::Fixed(8)),
    ("type", Encoding::ShortString),
    ("user_id", Encoding::ShortString),
    ("app_id", Encoding::ShortString),
    ("cluster_id", Encoding::ShortString),
];

#[derive(Clone, Copy)]
pub(super) enum Encoding {
    ShortString,
    Table,
    Fixed(usize),
}

/// Length of a content header's fixed part: class id, weight, body size.
pub(super) const CONTENT_HEADER_PREFIX: usize = 2 + 2 + 8;

/// Checks a content header frame's payload (the client parses any class's properties
/// as the basic class's).
pub fn check_content_header(payload: &[u8]) -> Checked {
    let Some(prefix) = payload.get(..CONTENT_HEADER_PREFIX) else {
        return Checked::default();
    };
    let mut cur = Cursor::new(&payload[CONTENT_HEADER_PREFIX..]);
    let Some(flags) = cur.u16() else {
        return Checked::default();
    };
    let mut out = Vec::with_capacity(payload.len());
    out.extend_from_slice(prefix);
    out.extend_from_slice(&flags.to_be_bytes());
    let mut report = WireReport::default();
    let mut changed = false;
    for (i, (name, encoding)) in PROPERTIES.iter().enumerate() {
        if flags & (1 << (15 - i)) == 0 {
            continue;
        }
        let ok = match encoding {
            Encoding::Fixed(n) => copy(&mut cur, &mut out, *n),
            Encoding::ShortString => {
                let before = report.problems.len();
                let ok = short_string(&mut cur, &mut out, name, &mut report);
                changed |= report.problems.len() > before;
                ok
            }
            Encoding::Table => {
                let start = out.len();
                match table_value(&mut cur, &mut out, &Path::Property(name), 1, &mut report) {
                    Ok(()) => {
                        changed |= !report.is_empty();
                        Some(())
                    }
                    Err(Malformed(at)) => {
                        out.truncate(start);
                        out.extend_from_slice(&0u32.to_be_bytes());
                        report.problems.push(format!(
                            "{name}: not a valid field table (at {at}); emptied"
                        ));
                        changed = true;
                        // The table's own length is trusted to find the next property.
                        skip_table(&mut cur)
                    }
                }
            }
        };
        if ok.is_none() {
            // Properties that run past the frame: the client would reject the frame.
            // Nothing after the fixed part can be trusted; keep none of it.
            let mut out = prefix.to_vec();
            out.extend_from_slice(&0u16.to_be_bytes());
            report.problems.push(format!(
                "{name}: runs past the end of the frame; properties dropped"
            ));
            return Checked {
                rewritten: Some(out),
                report,
            };
        }
    }
    let trailing = cur.rest().len();
    if trailing > 0 {
        // The client takes nothing after the last property (nor a second flag word).
        report.problems.push(format!(
            "properties: {trailing} bytes after the last property; dropped"
        ));
        changed = true;
    }
    Checked {
        rewritten: changed.then_some(out),
        report,
    }
}

/// Moves `cur` past a table whose content could not be walked, using only its length.
fn skip_table(cur: &mut Cursor<'_>) -> Option<()> {
    let len = cur.u32_at_mark()?;
    cur.skip_from_mark(4 + len)
}

/// A field table or array whose structure the client could not parse; where.
struct Malformed(String);

/// Where a value is, rendered only when a report names it: `headers.trace[2].id`.
#[derive(Clone, Copy)]
enum Path<'a> {
    Property(&'a str),
    Key(&'a Path<'a>, &'a [u8]),
    Index(&'a Path<'a>, usize),
}

impl std::fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Path::Property(name) => f.write_str(name),
            Path::Key(parent, key) => {
                let key = String::from_utf8_lossy(key);
                write!(f, "{parent}.{}", SafeName(&key).bare())
            }
            Path::Index(parent, i) => write!(f, "{parent}[{i}]"),
        }
    }
}

/// Tables with more keys than this look for repeats in a hash set instead of a scan.
const SCANNED_KEYS: usize = 16;

/// Copies a field table (length and entries) from `cur` to `out`, made safe.
fn table_value(
    cur: &mut Cursor<'_>,
    out: &mut Vec<u8>,
    path: &Path<'_>,
    depth: usize,
    report: &mut WireReport,
) -> Result<(), Malformed> {
    cur.mark();
    within_length(cur, out, path, |inner, out| {
        // The keys kept so far, as they were written (ranges of `out`).
        let mut kept: Vec<(usize, usize)> = Vec::new();
        let mut many: Option<HashSet<Vec<u8>>> = None;
        while !inner.rest().is_empty() {
            let malformed = || Malformed(path.to_string());
            let raw_key = inner.peek_short_string().ok_or_else(malformed)?;
            let key_start = out.len();
            let fixed = short_string_into(inner, out).ok_or_else(malformed)?;
            let key_path = Path::Key(path, raw_key);
            if fixed {
                report
                    .problems
                    .push(format!("{key_path}: name is not UTF-8"));
            }
            let key = (key_start + 1, out.len());
            let repeated = match &mut many {
                Some(set) => !set.insert(out[key.0..key.1].to_vec()),
                None => {
                    let repeated = kept.iter().any(|&(s, e)| out[s..e] == out[key.0..key.1]);
                    if !repeated {
                        kept.push(key);
                        if kept.len() > SCANNED_KEYS {
                            many = Some(kept.iter().map(|&(s, e)| out[s..e].to_vec()).collect());
                        }
                    }
                    repeated
                }
            };
            if repeated {
                out.truncate(key_start);
                let mut value = Vec::new();
                field_value(inner, &mut value, &key_path, depth, report)?;
                report.duplicates.push((key_path.to_string(), value));
            } else {
                field_value(inner, out, &key_path, depth, report)?;
            }
        }
        Ok(())
    })
}

/// Copies a field array (length and values) from `cur` to `out`, made safe.
fn array_value(
    cur: &mut Cursor<'_>,
    out: &mut Vec<u8>,
    path: &Path<'_>,
    depth: usize,
    report: &mut WireReport,
) -> Result<(), Malformed> {
    within_length(cur, out, path, |inner, out| {
        let mut index = 0usize;
        while !inner.rest().is_empty() {
            field_value(inner, out, &Path::Index(path, index), depth, report)?;
            index += 1;
        }
        Ok(())
    })
}

/// Reads a `u32` length and that many bytes from `cur`; `copy` writes them (made safe)
/// to `out` after a length that is then set to what it wrote.
fn within_length(
    cur: &mut Cursor<'_>,
    out: &mut Vec<u8>,
    path: &Path<'_>,
    copy: impl FnOnce(&mut Cursor<'_>, &mut Vec<u8>) -> Result<(), Malformed>,
) -> Result<(), Malformed> {
    let malformed = || Malformed(path.to_string());
    let len = cur.u32().ok_or_else(malformed)?;
    let body = cur.take(len as usize).ok_or_else(malformed)?;
    let len_at = out.len();
    out.extend_from_slice(&[0; 4]);
    copy(&mut Cursor::new(body), out)?;
    let written = u32::try_from(out.len() - len_at - 4).unwrap_or(u32::MAX);
    out[len_at..len_at + 4].copy_from_slice(&written.to_be_bytes());
    Ok(())
}

/// Copies one typed field value (type octet and value). `depth` is the nesting level of
/// the table or array holding it.
fn field_value(
    cur: &mut Cursor<'_>,
    out: &mut Vec<u8>,
    path: &Path<'_>,
    depth: usize,
    report: &mut WireReport,
) -> Result<(), Malformed> {
    let malformed = || Malformed(path.to_string());
    let kind = cur.u8().ok_or_else(malformed)?;
    let fixed = match kind {
        b'S' | b'x' => {
            let len = cur.u32().ok_or_else(malformed)?;
            let bytes = cur.take(len as usize).ok_or_else(malformed)?;
            out.push(kind);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(bytes);
            return Ok(());
        }
        b'F' | b'A' if depth >= MAX_NESTING => {
            let len = cur.u32().ok_or_else(malformed)?;
            cur.take(len as usize).ok_or_else(malformed)?;
            out.push(b'V');
            report.problems.push(format!(
                "{path}: nested deeper than {MAX_NESTING} levels; replaced by void"
            ));
            return Ok(());
        }
        b'F' => {
            out.push(kind);
            return table_value(cur, out, path, depth + 1, report);
        }
        b'A' => {
            out.push(kind);
            return array_value(cur, out, path, depth + 1, report);
        }
        _ => fixed_size(kind),
    };
    let Some(n) = fixed else {
        return Err(Malformed(format!("{path}, field type {kind:#04x}")));
    };
    out.push(kind);
    copy(cur, out, n).ok_or_else(malformed)
}

/// The size of a field value of type `kind` that has a fixed size (after its type octet).
pub(super) fn fixed_size(kind: u8) -> Option<usize> {
    match kind {
        b'V' => Some(0),
        b't' | b'b' | b'B' => Some(1),
        b's' | b'U' | b'u' => Some(2),
        b'I' | b'i' | b'f' => Some(4),
        b'D' => Some(5),
        b'L' | b'l' | b'd' | b'T' => Some(8),
        _ => None,
    }
}

/// Copies a short string, made valid UTF-8 (reported under `name`) without growing.
fn short_string(
    cur: &mut Cursor<'_>,
    out: &mut Vec<u8>,
    name: &str,
    report: &mut WireReport,
) -> Option<()> {
    if short_string_into(cur, out)? {
        report.problems.push(format!("{name}: not UTF-8"));
    }
    Some(())
}

/// Copies a short string, made valid UTF-8 without growing; `true` when it had to be.
fn short_string_into(cur: &mut Cursor<'_>, out: &mut Vec<u8>) -> Option<bool> {
    let len = cur.u8()?;
    let bytes = cur.take(len as usize)?;
    if std::str::from_utf8(bytes).is_ok() {
        out.push(len);
        out.extend_from_slice(bytes);
        return Some(false);
    }
    let fixed = lossy_within(bytes);
    out.push(u8::try_from(fixed.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(fixed.as_bytes());
    Some(true)
}

/// `bytes` as UTF-8 with U+FFFD for each invalid sequence, cut at a character boundary
/// to at most `bytes.len()` bytes: what the client gets of a short string.
pub(super) fn lossy_within(bytes: &[u8]) -> String {
    let mut s = String::from_utf8_lossy(bytes).into_owned();
    let mut end = s.len().min(bytes.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s
}

fn copy(cur: &mut Cursor<'_>, out: &mut Vec<u8>, n: usize) -> Option<()> {
    out.extend_from_slice(cur.take(n)?);
    Some(())
}

/// A read position in a frame payload; every read checks the bounds.
pub(super) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    mark: usize,
}

impl<'a> Cursor<'a> {
    pub(super) fn new(buf: &'a [u8]) -> Self {
        Cursor {
            buf,
            pos: 0,
            mark: 0,
        }
    }

    pub(super) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let bytes = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(bytes)
    }

    pub(super) fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }

    pub(super) fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    pub(super) fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }

    pub(super) fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }

    /// One property encoded as `encoding` (with its length, for a string or table).
    pub(super) fn take_encoded(&mut self, encoding: Encoding) -> Option<&'a [u8]> {
        let start = self.pos;
        match encoding {
            Encoding::Fixed(n) => self.take(n)?,
            Encoding::ShortString => {
                let len = self.u8()?;
                self.take(usize::from(len))?
            }
            Encoding::Table => {
                let len = self.u32()?;
                self.take(len as usize)?
            }
        };
        self.buf.get(start..self.pos)
    }

    /// One field value (type octet and value), as it is: a table or array is skipped by
    /// its length, never walked. `None` for a type without a known size.
    pub(super) fn take_field_value(&mut self) -> Option<&'a [u8]> {
        let start = self.pos;
        let kind = self.u8()?;
        match kind {
            b'S' | b'x' | b'F' | b'A' => {
                let len = self.u32()?;
                self.take(len as usize)?
            }
            _ => self.take(fixed_size(kind)?)?,
        };
        self.buf.get(start..self.pos)
    }

    /// The bytes of the short string at the current position, without moving.
    fn peek_short_string(&self) -> Option<&'a [u8]> {
        let len = *self.buf.get(self.pos)? as usize;
        self.buf.get(self.pos + 1..self.pos + 1 + len)
    }

    /// Remembers the current position (the start of a table).
    fn mark(&mut self) {
        self.mark = self.pos;
    }

    /// The big-endian `u32` at the mark.
    fn u32_at_mark(&self) -> Option<usize> {
        let bytes = self.buf.get(self.mark..self.mark.checked_add(4)?)?;
        Some(u32::from_be_bytes(bytes.try_into().ok()?) as usize)
    }

    /// Moves to `n` bytes after the mark.
    fn skip_from_mark(&mut self, n: usize) -> Option<()> {
        let end = self.mark.checked_add(n)?;
        if end > self.buf.len() {
            return None;
        }
        self.pos = end;
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use lapin::BasicProperties;
    use lapin::protocol::basic::{gen_properties, parse_properties};
    use lapin::types::{AMQPValue, FieldTable, LongString};
    use proptest::prelude::*;

    use super::*;

    /// A content header payload: class 60, weight 0, body size 7, then `properties`.
    fn header(properties: &[u8]) -> Vec<u8> {
        let mut out = vec![0, 60, 0, 0];
        out.extend_from_slice(&7u64.to_be_bytes());
        out.extend_from_slice(properties);
        out
    }

    /// Flags and properties as lapin encodes them.
    fn encoded(props: &BasicProperties) -> Vec<u8> {
        let (bytes, _) = cookie_factory::r#gen(gen_properties(props), Vec::new()).unwrap();
        bytes
    }

    /// What the client makes of a checked payload: its properties, or why it refuses.
    fn client_parse(payload: &[u8]) -> Result<BasicProperties, String> {
        match parse_properties(&payload[CONTENT_HEADER_PREFIX..]) {
            Ok(([], props)) => Ok(props),
            Ok((rest, _)) => Err(format!("{} bytes left over", rest.len())),
            Err(e) => Err(format!("{e:?}")),
        }
    }

    /// The payload the client gets after the check.
    fn after_check(payload: &[u8]) -> (Vec<u8>, WireReport) {
        let checked = check_content_header(payload);
        let out = checked.rewritten.unwrap_or_else(|| payload.to_vec());
        (out, checked.report)
    }

    fn short(bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![u8::try_from(bytes.len()).unwrap()];
        out.extend_from_slice(bytes);
        out
    }

    fn table(entries: &[(&[u8], Vec<u8>)]) -> Vec<u8> {
        let body: Vec<u8> = entries
            .iter()
            .flat_map(|(k, v)| short(k).into_iter().chain(v.iter().copied()))
            .collect();
        let mut out = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
        out.extend(body);
        out
    }

    fn nested(depth: usize) -> Vec<u8> {
        let mut t = table(&[]);
        for _ in 1..depth {
            let mut v = vec![b'F'];
            v.extend(t);
            t = table(&[(b"n", v)]);
        }
        t
    }

    /// Flags with the given property indexes set.
    fn flags(indexes: &[usize]) -> Vec<u8> {
        let f = indexes.iter().fold(0u16, |f, i| f | (1 << (15 - i)));
        f.to_be_bytes().to_vec()
    }

    #[test]
    fn properties_the_client_takes_pass_unchanged() {
        let mut headers = FieldTable::default();
        headers.insert("x-vendor".into(), AMQPValue::LongString("deel".into()));
        let mut inner = FieldTable::default();
        inner.insert(
            "k".into(),
            AMQPValue::FieldArray(vec![AMQPValue::LongLongInt(-1)].into()),
        );
        headers.insert("t".into(), AMQPValue::FieldTable(inner));
        headers.insert("v".into(), AMQPValue::Void);
        headers.insert("b".into(), AMQPValue::ByteArray(vec![0xff, 0].into()));
        headers.insert(
            "s".into(),
            AMQPValue::LongString(LongString::from(vec![0xff_u8])),
        );
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_headers(headers)
            .with_delivery_mode(2)
            .with_message_id("m-1".into())
            .with_timestamp(1_700_000_000)
            .with_user_id("guest".into())
            .with_cluster_id("c".into());
        let payload = header(&encoded(&props));
        let checked = check_content_header(&payload);
        assert!(checked.rewritten.is_none());
        assert!(checked.report.is_empty());
        assert_eq!(client_parse(&payload).unwrap(), props);
    }

    #[test]
    fn a_short_string_that_is_not_utf8_gets_replacement_characters_in_its_length() {
        let payload = header(&[flags(&[0, 8]), short(b"a\xffb"), short(b"id-\xc3")].concat());
        assert!(
            client_parse(&payload).is_err(),
            "the client refuses it as sent"
        );
        let (out, report) = after_check(&payload);
        let props = client_parse(&out).unwrap();
        // "a\u{FFFD}b" is 5 bytes, over the 3 sent: cut to "a".
        assert_eq!(props.content_type().as_ref().unwrap().as_str(), "a");
        assert_eq!(props.message_id().as_ref().unwrap().as_str(), "id-");
        assert_eq!(
            report.problems,
            ["content_type: not UTF-8", "message_id: not UTF-8"]
        );
        // Three invalid bytes in six: "ab", then one U+FFFD of the three fits.
        let fits = header(&[flags(&[8]), short(b"ab\xff\xff\xffc")].concat());
        let props = client_parse(&after_check(&fits).0).unwrap();
        assert_eq!(props.message_id().as_ref().unwrap().as_str(), "ab\u{FFFD}");
    }

    #[test]
    fn tables_nested_past_the_limit_become_void_at_the_limit() {
        let mut deep = vec![b'F'];
        deep.extend(nested(MAX_NESTING + 8));
        let payload = header(&[flags(&[2]), table(&[(b"x-deep", deep)])].concat());
        let (out, report) = after_check(&payload);
        assert!(out.len() <= payload.len());
        let props = client_parse(&out).unwrap();
        let mut level = props
            .headers()
            .as_ref()
            .unwrap()
            .inner()
            .get("x-deep")
            .cloned();
        let mut depth = 1; // the headers table
        while let Some(AMQPValue::FieldTable(t)) = level {
            depth += 1;
            level = t.inner().get("n").cloned();
        }
        assert_eq!(depth, MAX_NESTING, "levels kept");
        assert_eq!(level, Some(AMQPValue::Void));
        assert_eq!(report.problems.len(), 1);
        assert!(
            report.problems[0].starts_with("headers.x-deep.n.n."),
            "{report:?}"
        );
        assert!(report.problems[0].ends_with("nested deeper than 32 levels; replaced by void"));

        let at_limit = header(&[flags(&[2]), nested(MAX_NESTING)].concat());
        assert!(
            check_content_header(&at_limit).rewritten.is_none(),
            "32 levels are fine"
        );
    }

    #[test]
    fn a_repeated_key_is_kept_once_in_place_and_reported_with_its_value() {
        let mut inner_dupe = vec![b'F'];
        inner_dupe.extend(table(&[(b"k", vec![b't', 1]), (b"k", vec![b't', 0])]));
        let entries: Vec<(&[u8], Vec<u8>)> = vec![
            (
                b"x-trace",
                [b"S".as_slice(), &1u32.to_be_bytes(), b"1"].concat(),
            ),
            (
                b"x-trace",
                [b"S".as_slice(), &1u32.to_be_bytes(), b"2"].concat(),
            ),
            (b"nested", inner_dupe),
        ];
        let payload = header(&[flags(&[2]), table(&entries)].concat());
        let (out, report) = after_check(&payload);
        let props = client_parse(&out).unwrap();
        let headers = props.headers().as_ref().unwrap().inner();
        assert_eq!(
            headers.get("x-trace"),
            Some(&AMQPValue::LongString("1".into()))
        );
        assert!(report.problems.is_empty(), "repeats alone are no problem");
        let paths: Vec<_> = report.duplicates.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["headers.x-trace", "headers.nested.k"]);
        assert_eq!(
            report.duplicates[0].1,
            [b"S".as_slice(), &1u32.to_be_bytes(), b"2"].concat()
        );
        assert_eq!(report.duplicates[1].1, [b't', 0]);
    }

    #[test]
    fn a_table_the_client_cannot_parse_is_emptied_and_the_rest_kept() {
        let payload = header(
            &[
                flags(&[2, 8]),
                table(&[(b"ok", vec![b't', 1]), (b"bad", vec![b'Z', 1, 2])]),
                short(b"m-1"),
            ]
            .concat(),
        );
        assert!(client_parse(&payload).is_err());
        let (out, report) = after_check(&payload);
        let props = client_parse(&out).unwrap();
        assert_eq!(props.headers().as_ref().unwrap().inner().len(), 0);
        assert_eq!(props.message_id().as_ref().unwrap().as_str(), "m-1");
        assert_eq!(
            report.problems,
            ["headers: not a valid field table (at headers.bad, field type 0x5a); emptied"]
        );
    }

    #[test]
    fn properties_running_past_the_frame_are_all_dropped() {
        let payload = header(&[flags(&[0, 8]), short(b"json"), vec![200, b'x']].concat());
        let (out, report) = after_check(&payload);
        assert_eq!(client_parse(&out).unwrap(), BasicProperties::default());
        assert_eq!(
            report.problems,
            ["message_id: runs past the end of the frame; properties dropped"]
        );
    }

    #[test]
    fn bytes_after_the_last_property_are_dropped() {
        let payload = header(&[flags(&[8]), short(b"m"), vec![1, 2, 3]].concat());
        assert!(client_parse(&payload).is_err());
        let (out, report) = after_check(&payload);
        assert_eq!(
            client_parse(&out)
                .unwrap()
                .message_id()
                .as_ref()
                .unwrap()
                .as_str(),
            "m"
        );
        assert_eq!(
            report.problems,
            ["properties: 3 bytes after the last property; dropped"]
        );
    }

    #[test]
    fn a_delivery_names_its_tag_and_its_routing_key_is_made_utf8() {
        let mut payload = vec![0, 60, 0, 60];
        payload.extend(short(b"ctag"));
        payload.extend_from_slice(&42u64.to_be_bytes());
        payload.push(0);
        payload.extend(short(b"webhooks.raw"));
        payload.extend(short(b"gw.\xff\xfe\xfd"));
        let (kind, checked) = check_method(&payload);
        assert_eq!(kind, MethodKind::Delivery(42));
        let out = checked.rewritten.unwrap();
        assert_eq!(out.len(), payload.len());
        assert!(out.ends_with(&short("gw.\u{FFFD}".as_bytes())));
        assert_eq!(checked.report.problems, ["routing_key: not UTF-8"]);
        let (_, parsed) = lapin::protocol::parse_class(out.as_slice()).unwrap();
        assert!(matches!(parsed, lapin::protocol::AMQPClass::Basic(_)));
    }

    /// A typed field value of any kind, nested up to `depth`, with arbitrary bytes where
    /// strings go.
    fn field_value(depth: u32) -> impl Strategy<Value = Vec<u8>> {
        let leaf = prop_oneof![
            (
                prop::sample::select(b"tbBsUuIifDLldTVS".to_vec()),
                prop::collection::vec(any::<u8>(), 0..9)
            )
                .prop_map(|(t, bytes)| [vec![t], bytes].concat()),
            prop::collection::vec(any::<u8>(), 0..12).prop_map(|b| [
                vec![b'S'],
                u32::try_from(b.len()).unwrap().to_be_bytes().to_vec(),
                b
            ]
            .concat()),
        ];
        leaf.prop_recursive(depth, 64, 4, |inner| {
            prop_oneof![
                prop::collection::vec(
                    (prop::collection::vec(any::<u8>(), 0..4), inner.clone()),
                    0..4
                )
                .prop_map(|entries| {
                    let e: Vec<(&[u8], Vec<u8>)> = entries
                        .iter()
                        .map(|(k, v)| (k.as_slice(), v.clone()))
                        .collect();
                    [vec![b'F'], table(&e)].concat()
                }),
                prop::collection::vec(inner, 0..4).prop_map(|items| {
                    let body = items.concat();
                    [
                        vec![b'A'],
                        u32::try_from(body.len()).unwrap().to_be_bytes().to_vec(),
                        body,
                    ]
                    .concat()
                }),
            ]
        })
    }

    /// Flags and properties built from parts that are mostly well formed and often not.
    fn properties_bytes() -> impl Strategy<Value = Vec<u8>> {
        (
            any::<u16>(),
            prop::collection::vec(prop::collection::vec(any::<u8>(), 0..10), 0..6),
            prop::collection::vec(
                (prop::collection::vec(any::<u8>(), 0..5), field_value(6)),
                0..5,
            ),
            prop::collection::vec(any::<u8>(), 0..3),
        )
            .prop_map(|(flags, shorts, entries, tail)| {
                let mut out = flags.to_be_bytes().to_vec();
                let e: Vec<(&[u8], Vec<u8>)> = entries
                    .iter()
                    .map(|(k, v)| (k.as_slice(), v.clone()))
                    .collect();
                let headers = table(&e);
                for (i, s) in shorts.iter().enumerate() {
                    if i == 2 {
                        out.extend_from_slice(&headers);
                    }
                    out.extend(short(s));
                }
                out.extend(tail);
                out
            })
    }

    proptest! {
        // PROPTEST_CASES=1000000 for a longer run.
        #![proptest_config(ProptestConfig {
            cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        /// Whatever a publisher sends, the client can parse what it gets after the check,
        /// and it is never longer than what was sent (so it still fits `frame_max`).
        #[test]
        fn whatever_was_sent_the_client_parses_what_it_gets(props in properties_bytes()) {
            let payload = header(&props);
            let (out, report) = after_check(&payload);
            prop_assert!(out.len() <= payload.len());
            let parsed = client_parse(&out);
            prop_assert!(parsed.is_ok(), "{:?} ({:?})", parsed, report);
            if report.is_empty() {
                prop_assert_eq!(client_parse(&payload).ok(), parsed.ok(), "unchanged when nothing was wrong");
            }
        }
    }
}
