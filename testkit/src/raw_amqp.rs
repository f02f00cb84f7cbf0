//! A publisher that writes AMQP 0-9-1 frames byte by byte, for properties no client
//! library would send: short strings that are not UTF-8, headers nested thousands deep,
//! repeated keys, any field type; and a reader that takes messages as the broker sends
//! them, frames unparsed, to check them byte for byte. Just enough of the protocol for
//! one confirmed publish and `basic.get`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Property indexes in flag order (bit 15 first).
pub mod prop {
    pub const CONTENT_TYPE: usize = 0;
    pub const HEADERS: usize = 2;
    pub const DELIVERY_MODE: usize = 3;
    pub const PRIORITY: usize = 4;
    pub const CORRELATION_ID: usize = 5;
    pub const EXPIRATION: usize = 7;
    pub const MESSAGE_ID: usize = 8;
    pub const TIMESTAMP: usize = 9;
    pub const TYPE: usize = 10;
    pub const APP_ID: usize = 12;
}

/// A basic-class property list, each property as its encoded bytes.
#[derive(Debug, Clone, Default)]
pub struct RawProperties {
    fields: [Option<Vec<u8>>; 14],
}

impl RawProperties {
    /// A short-string property (any bytes, at most 255).
    pub fn short(mut self, index: usize, bytes: &[u8]) -> Self {
        self.fields[index] = Some(short_string(bytes));
        self
    }

    /// The `headers` property: an encoded table (see [`table`]).
    pub fn headers(mut self, table: Vec<u8>) -> Self {
        self.fields[prop::HEADERS] = Some(table);
        self
    }

    pub fn delivery_mode(mut self, mode: u8) -> Self {
        self.fields[prop::DELIVERY_MODE] = Some(vec![mode]);
        self
    }

    /// Flags then the properties, as a content header carries them.
    pub fn encode(&self) -> Vec<u8> {
        let mut flags = 0u16;
        let mut out = Vec::new();
        for (i, field) in self.fields.iter().enumerate() {
            if let Some(bytes) = field {
                flags |= 1 << (15 - i);
                out.extend_from_slice(bytes);
            }
        }
        let mut all = flags.to_be_bytes().to_vec();
        all.extend(out);
        all
    }
}

pub fn short_string(bytes: &[u8]) -> Vec<u8> {
    let len = u8::try_from(bytes.len()).expect("short string of at most 255 bytes");
    let mut out = vec![len];
    out.extend_from_slice(bytes);
    out
}

/// An encoded field table (length, then key and typed value per entry, in this order,
/// repeats kept).
pub fn table(entries: &[(&[u8], Vec<u8>)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (key, value) in entries {
        body.extend(short_string(key));
        body.extend_from_slice(value);
    }
    let mut out = u32::try_from(body.len())
        .expect("table size")
        .to_be_bytes()
        .to_vec();
    out.extend(body);
    out
}

/// Typed field values.
pub mod value {
    pub fn long_string(bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![b'S'];
        out.extend_from_slice(&u32::try_from(bytes.len()).expect("size").to_be_bytes());
        out.extend_from_slice(bytes);
        out
    }

    pub fn table(encoded: Vec<u8>) -> Vec<u8> {
        let mut out = vec![b'F'];
        out.extend(encoded);
        out
    }

    pub fn array(values: &[Vec<u8>]) -> Vec<u8> {
        let body: Vec<u8> = values.concat();
        let mut out = vec![b'A'];
        out.extend_from_slice(&u32::try_from(body.len()).expect("size").to_be_bytes());
        out.extend(body);
        out
    }

    pub fn long_int(v: i32) -> Vec<u8> {
        let mut out = vec![b'I'];
        out.extend_from_slice(&v.to_be_bytes());
        out
    }

    /// Tables nested `depth` deep under the key `n`, innermost empty.
    pub fn nested_tables(depth: usize) -> Vec<u8> {
        let mut inner = super::table(&[]);
        for _ in 1..depth {
            inner = super::table(&[(b"n", table(inner))]);
        }
        table(inner)
    }

    /// Arrays nested `depth` deep, innermost empty.
    pub fn nested_arrays(depth: usize) -> Vec<u8> {
        let mut inner = array(&[]);
        for _ in 1..depth {
            inner = array(&[inner]);
        }
        inner
    }
}

/// One connection and channel, in confirm mode, publishing frames exactly as given.
pub struct RawPublisher {
    socket: TcpStream,
    frame_max: u32,
}

impl RawPublisher {
    /// Connects to the broker at `addr` as guest and opens channel 1 on `vhost`.
    pub fn connect(addr: &str, vhost: &str) -> Result<RawPublisher, String> {
        let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .map_err(|e| e.to_string())?;
        s.write_all(b"AMQP\x00\x00\x09\x01")
            .map_err(|e| e.to_string())?;
        expect_method(&mut s, 10, 10)?;
        let mut start_ok = method(10, 11);
        start_ok.extend(table(&[]));
        start_ok.extend(short_string(b"PLAIN"));
        start_ok.extend(value::long_string(b"\0guest\0guest")[1..].to_vec());
        start_ok.extend(short_string(b"en_US"));
        send(&mut s, 1, 0, &start_ok)?;
        let tune = expect_method(&mut s, 10, 30)?;
        let frame_max = u32::from_be_bytes(tune[6..10].try_into().map_err(|_| "tune")?);
        let mut tune_ok = method(10, 31);
        tune_ok.extend_from_slice(&tune[4..10]);
        tune_ok.extend_from_slice(&0u16.to_be_bytes());
        send(&mut s, 1, 0, &tune_ok)?;
        let mut open = method(10, 40);
        open.extend(short_string(vhost.as_bytes()));
        open.extend(short_string(b""));
        open.push(0);
        send(&mut s, 1, 0, &open)?;
        expect_method(&mut s, 10, 41)?;
        let mut channel_open = method(20, 10);
        channel_open.extend(short_string(b""));
        send(&mut s, 1, 1, &channel_open)?;
        expect_method(&mut s, 20, 11)?;
        let mut select = method(85, 10);
        select.push(0);
        send(&mut s, 1, 1, &select)?;
        expect_method(&mut s, 85, 11)?;
        Ok(RawPublisher {
            socket: s,
            frame_max,
        })
    }

    /// The frame size the broker allows.
    pub fn frame_max(&self) -> u32 {
        self.frame_max
    }

    /// Publishes one message (mandatory) and waits for its confirm. `Err` says what the
    /// broker did instead of acking; after a close the publisher is unusable.
    pub fn publish(
        &mut self,
        exchange: &str,
        routing_key: &[u8],
        properties: &RawProperties,
        body: &[u8],
    ) -> Result<(), String> {
        let s = &mut self.socket;
        let mut publish = method(60, 40);
        publish.extend_from_slice(&0u16.to_be_bytes());
        publish.extend(short_string(exchange.as_bytes()));
        publish.extend(short_string(routing_key));
        publish.push(1); // mandatory
        send(s, 1, 1, &publish)?;
        let mut header = Vec::new();
        header.extend_from_slice(&60u16.to_be_bytes());
        header.extend_from_slice(&0u16.to_be_bytes());
        header.extend_from_slice(&(body.len() as u64).to_be_bytes());
        header.extend(properties.encode());
        send(s, 2, 1, &header)?;
        let chunk = (self.frame_max as usize).saturating_sub(8).max(1);
        for part in body.chunks(chunk) {
            send(s, 3, 1, part)?;
        }
        let mut returned = false;
        loop {
            let (kind, _, payload) = read_frame(s)?;
            if kind != 1 {
                continue;
            }
            match class_method(&payload)? {
                (60, 80) if returned => return Err("returned: unroutable".to_owned()),
                (60, 80) => return Ok(()),
                (60, 50) => returned = true,
                (60, 120) => return Err("nacked".to_owned()),
                (20, 40) | (10, 50) => return Err(close_text(&payload)),
                _ => {}
            }
        }
    }

    /// Takes the message at the head of `queue` (`basic.get`, no-ack: it leaves the
    /// queue), as the broker sent it; `None` when the queue is empty.
    pub fn get(&mut self, queue: &str) -> Result<Option<RawMessage>, String> {
        let s = &mut self.socket;
        let mut get = method(60, 70);
        get.extend_from_slice(&0u16.to_be_bytes());
        get.extend(short_string(queue.as_bytes()));
        get.push(1); // no-ack
        send(s, 1, 1, &get)?;
        let get_ok = loop {
            let (kind, _, payload) = read_frame(s)?;
            if kind != 1 {
                continue;
            }
            match class_method(&payload)? {
                (60, 71) => break payload,
                (60, 72) => return Ok(None),
                (20, 40) | (10, 50) => return Err(close_text(&payload)),
                _ => {}
            }
        };
        // Delivery tag, redelivered, then the exchange and routing key.
        let mut at = 4 + 8 + 1;
        let mut short = || -> Result<Vec<u8>, String> {
            let len = *get_ok.get(at).ok_or("short get-ok")? as usize;
            let bytes = get_ok.get(at + 1..at + 1 + len).ok_or("short get-ok")?;
            at += 1 + len;
            Ok(bytes.to_vec())
        };
        let exchange = short()?;
        let routing_key = short()?;
        let (kind, _, header) = read_frame(s)?;
        if kind != 2 || header.len() < 12 {
            return Err(format!(
                "expected a content header, got a frame of type {kind}"
            ));
        }
        let size = u64::from_be_bytes(header[4..12].try_into().map_err(|_| "header")?);
        let mut body = Vec::new();
        while (body.len() as u64) < size {
            let (kind, _, part) = read_frame(s)?;
            if kind != 3 {
                return Err(format!("expected a body frame, got a frame of type {kind}"));
            }
            body.extend(part);
        }
        Ok(Some(RawMessage {
            exchange,
            routing_key,
            properties: header[12..].to_vec(),
            body,
        }))
    }

    /// Closes the connection politely.
    pub fn close(mut self) {
        let mut close = method(10, 50);
        close.extend_from_slice(&200u16.to_be_bytes());
        close.extend(short_string(b""));
        close.extend_from_slice(&[0, 0, 0, 0]);
        if send(&mut self.socket, 1, 0, &close).is_ok() {
            let _ = expect_method(&mut self.socket, 10, 51);
        }
    }
}

/// Publishes one message with exactly these frames to `exchange` in `vhost` on the broker
/// at `addr` (as guest), mandatory and with a publisher confirm. `Ok` once the broker
/// acked it and did not return it; `Err` says what the broker did instead. Blocking.
pub fn publish(
    addr: &str,
    vhost: &str,
    exchange: &str,
    routing_key: &[u8],
    properties: &RawProperties,
    body: &[u8],
) -> Result<(), String> {
    let mut publisher = RawPublisher::connect(addr, vhost)?;
    publisher.publish(exchange, routing_key, properties, body)?;
    publisher.close();
    Ok(())
}

/// Takes every message in `queue` (in `vhost` on the broker at `addr`, as guest), in
/// order, as the broker sent them. Blocking.
pub fn take_all(addr: &str, vhost: &str, queue: &str) -> Result<Vec<RawMessage>, String> {
    let mut reader = RawPublisher::connect(addr, vhost)?;
    let mut all = Vec::new();
    while let Some(message) = reader.get(queue)? {
        all.push(message);
    }
    reader.close();
    Ok(all)
}

/// A message as the broker delivered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage {
    pub exchange: Vec<u8>,
    pub routing_key: Vec<u8>,
    /// The property flags and the properties, as the content header carried them.
    pub properties: Vec<u8>,
    pub body: Vec<u8>,
}

/// A property list taken apart, every part as its bytes: each property present (by index,
/// as encoded) but `headers`, whose top-level entries are listed in order (name, then
/// type octet and value), and any bytes after the last property.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PropertyParts {
    pub fields: Vec<(usize, Vec<u8>)>,
    pub headers: Option<Vec<HeaderEntry>>,
    pub trailing: Vec<u8>,
}

impl PropertyParts {
    /// Takes `properties` (flags, then the properties) apart.
    pub fn of(properties: &[u8]) -> Result<PropertyParts, String> {
        let mut cur = properties;
        let mut take = |n: usize| take(&mut cur, n);
        let flags = u16::from_be_bytes(take(2)?.try_into().map_err(|_| "flags")?);
        let mut fields = Vec::new();
        let mut headers = None;
        for i in 0..14 {
            if flags & (1 << (15 - i)) == 0 {
                continue;
            }
            match i {
                prop::HEADERS => {
                    let len = u32::from_be_bytes(take(4)?.try_into().map_err(|_| "len")?);
                    headers = Some(table_entries(&take(len as usize)?)?);
                }
                prop::DELIVERY_MODE | prop::PRIORITY => fields.push((i, take(1)?)),
                prop::TIMESTAMP => fields.push((i, take(8)?)),
                _ => {
                    let len = take(1)?[0] as usize;
                    let mut field = vec![len as u8];
                    field.extend(take(len)?);
                    fields.push((i, field));
                }
            }
        }
        let trailing = cur.to_vec();
        Ok(PropertyParts {
            fields,
            headers,
            trailing,
        })
    }

    /// The value of the first header entry named `name` (type octet and value).
    pub fn header(&self, name: &[u8]) -> Option<&[u8]> {
        self.headers
            .as_ref()?
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }

    /// These parts without the header entries named in `names` (all of them) and without
    /// the properties numbered in `indexes`.
    pub fn without(mut self, names: &[&[u8]], indexes: &[usize]) -> PropertyParts {
        if let Some(headers) = &mut self.headers {
            headers.retain(|(k, _)| !names.contains(&k.as_slice()));
        }
        self.fields.retain(|(i, _)| !indexes.contains(i));
        self
    }
}

/// Asserts that a walk put back each message of `before` (as the broker gave it back from
/// a queue nothing walked) byte for byte, in `after` (matched by body): every property
/// and header entry as it was, but `routing_key_header` set to `routing_key`, the
/// `x-delivery-count` of a message never delivered, and the header entries named in `also` and the properties numbered
/// in `indexes` left out of the comparison (what a walk of a queue with a TTL adds).
pub fn assert_put_back_byte_for_byte(
    before: &[RawMessage],
    after: &[RawMessage],
    routing_key_header: &str,
    routing_key: &[u8],
    also: &[&[u8]],
    indexes: &[usize],
) {
    let mut ignored: Vec<&[u8]> = vec![routing_key_header.as_bytes(), b"x-delivery-count"];
    ignored.extend_from_slice(also);
    for was in before {
        let name = String::from_utf8_lossy(&was.body);
        let now = after
            .iter()
            .find(|m| m.body == was.body)
            .unwrap_or_else(|| panic!("{name}: not in the queue after the walk"));
        let parts = PropertyParts::of(&now.properties).expect("properties after");
        assert_eq!(
            parts.header(routing_key_header.as_bytes()),
            Some(value::long_string(routing_key).as_slice()),
            "{name}: the routing key kept in {routing_key_header}"
        );
        let was_parts = PropertyParts::of(&was.properties).expect("properties before");
        // RabbitMQ 3.10 writes a count into what `basic.get` takes from a quorum queue,
        // 0 for a message never delivered before.
        assert_eq!(
            parts.header(b"x-delivery-count"),
            was_parts.header(b"x-delivery-count"),
            "{name}: the delivery count of a message delivered before"
        );
        assert_eq!(
            parts.without(&ignored, indexes),
            was_parts.without(&ignored, indexes),
            "{name}: properties changed"
        );
    }
}

/// The first `n` bytes of `cur`, moving past them.
fn take(cur: &mut &[u8], n: usize) -> Result<Vec<u8>, String> {
    if cur.len() < n {
        return Err("properties run past their end".to_owned());
    }
    let (taken, rest) = cur.split_at(n);
    *cur = rest;
    Ok(taken.to_vec())
}

/// A header table entry: its name, then its value's type octet and value.
pub type HeaderEntry = (Vec<u8>, Vec<u8>);

/// The top-level entries of a field table's content, each value skipped by its type.
fn table_entries(mut table: &[u8]) -> Result<Vec<HeaderEntry>, String> {
    let mut entries = Vec::new();
    while !table.is_empty() {
        let len = table[0] as usize;
        let key = table.get(1..1 + len).ok_or("a key past the table's end")?;
        let rest = &table[1 + len..];
        let kind = *rest.first().ok_or("an entry without a value")?;
        let size = match kind {
            b'V' => 0,
            b't' | b'b' | b'B' => 1,
            b's' | b'U' | b'u' => 2,
            b'I' | b'i' | b'f' => 4,
            b'D' => 5,
            b'L' | b'l' | b'd' | b'T' => 8,
            b'S' | b'x' | b'F' | b'A' => {
                let n = rest.get(1..5).ok_or("a length past the table's end")?;
                4 + u32::from_be_bytes(n.try_into().map_err(|_| "len")?) as usize
            }
            other => return Err(format!("field type {other:#04x}")),
        };
        let value = rest.get(..1 + size).ok_or("a value past the table's end")?;
        entries.push((key.to_vec(), value.to_vec()));
        table = &rest[1 + size..];
    }
    Ok(entries)
}

fn method(class: u16, method: u16) -> Vec<u8> {
    let mut out = class.to_be_bytes().to_vec();
    out.extend_from_slice(&method.to_be_bytes());
    out
}

fn class_method(payload: &[u8]) -> Result<(u16, u16), String> {
    if payload.len() < 4 {
        return Err("short method frame".to_owned());
    }
    Ok((
        u16::from_be_bytes([payload[0], payload[1]]),
        u16::from_be_bytes([payload[2], payload[3]]),
    ))
}

/// The reply code and text of a `channel.close` or `connection.close`.
fn close_text(payload: &[u8]) -> String {
    let code = payload
        .get(4..6)
        .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
    let len = payload.get(6).copied().unwrap_or(0) as usize;
    let text = payload.get(7..7 + len).unwrap_or_default();
    format!(
        "closed by the broker: {code} {}",
        String::from_utf8_lossy(text)
    )
}

fn send(s: &mut TcpStream, kind: u8, channel: u16, payload: &[u8]) -> Result<(), String> {
    let mut frame = vec![kind];
    frame.extend_from_slice(&channel.to_be_bytes());
    frame.extend_from_slice(
        &u32::try_from(payload.len())
            .map_err(|_| "frame size")?
            .to_be_bytes(),
    );
    frame.extend_from_slice(payload);
    frame.push(0xCE);
    s.write_all(&frame).map_err(|e| e.to_string())
}

fn read_frame(s: &mut TcpStream) -> Result<(u8, u16, Vec<u8>), String> {
    let mut head = [0u8; 7];
    s.read_exact(&mut head)
        .map_err(|e| format!("reading: {e}"))?;
    let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
    let mut payload = vec![0u8; size + 1];
    s.read_exact(&mut payload)
        .map_err(|e| format!("reading: {e}"))?;
    payload.pop();
    Ok((head[0], u16::from_be_bytes([head[1], head[2]]), payload))
}

/// Reads frames until a method frame; fails unless it is `class.method`.
fn expect_method(s: &mut TcpStream, class: u16, method: u16) -> Result<Vec<u8>, String> {
    loop {
        let (kind, _, payload) = read_frame(s)?;
        if kind != 1 {
            continue;
        }
        let got = class_method(&payload)?;
        if got == (class, method) {
            return Ok(payload);
        }
        if matches!(got, (10, 50) | (20, 40)) {
            return Err(close_text(&payload));
        }
        return Err(format!(
            "expected {class}.{method}, got {}.{}",
            got.0, got.1
        ));
    }
}
