//! A publisher that writes AMQP 0-9-1 frames byte by byte, for properties no client
//! library would send: short strings that are not UTF-8, headers nested thousands deep,
//! repeated keys, any field type. Just enough of the protocol for one confirmed publish.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Property indexes in flag order (bit 15 first).
pub mod prop {
    pub const CONTENT_TYPE: usize = 0;
    pub const HEADERS: usize = 2;
    pub const DELIVERY_MODE: usize = 3;
    pub const CORRELATION_ID: usize = 5;
    pub const MESSAGE_ID: usize = 8;
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
