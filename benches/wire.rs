//! What checking inbound frames (`broker::wire`) costs, against reading the same bytes
//! without the check, in one run. The input is what the consuming connection receives
//! for 1,000 gateway messages: a `basic.deliver`, a content header with a gateway's
//! properties and headers, and the body (the fixtures, in turn).
//!
//! `cargo bench --bench wire`

#![allow(clippy::expect_used)]

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_lite::future::block_on;
use futures_lite::io::{AsyncReadExt, Cursor};
use lapin::BasicProperties;
use lapin::protocol::basic::gen_properties;
use lapin::types::{AMQPValue, FieldTable};
use webhook_normalizer::amqp::wire::{CheckedStream, FrameCheck};

const MESSAGES: usize = 1000;
/// lapin reads into a buffer the size of a frame.
const READ: usize = 128 * 1024;

fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![kind, 0, 1];
    out.extend_from_slice(&u32::try_from(payload.len()).expect("size").to_be_bytes());
    out.extend_from_slice(payload);
    out.push(0xCE);
    out
}

fn short(s: &[u8]) -> Vec<u8> {
    [vec![u8::try_from(s.len()).expect("short")], s.to_vec()].concat()
}

/// The bytes of `MESSAGES` deliveries on channel 1.
fn stream() -> Vec<u8> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/deel");
    let mut bodies: Vec<Vec<u8>> = std::fs::read_dir(root)
        .expect("fixtures")
        .map(|e| std::fs::read(e.expect("entry").path()).expect("fixture"))
        .collect();
    bodies.sort();
    let mut out = Vec::new();
    for i in 0..MESSAGES {
        let body = &bodies[i % bodies.len()];
        let deliver = [
            vec![0, 60, 0, 60],
            short(b"webhook-normalizer-1234"),
            (i as u64 + 1).to_be_bytes().to_vec(),
            vec![0],
            short(b"webhooks.raw"),
            short(b"deel"),
        ]
        .concat();
        let mut headers = FieldTable::default();
        headers.insert(
            "x-received-at".into(),
            AMQPValue::LongString("2026-01-02T03:04:05Z".into()),
        );
        headers.insert(
            "x-gateway".into(),
            AMQPValue::LongString("gateway-eu-1".into()),
        );
        headers.insert("x-vendor".into(), AMQPValue::LongString("deel".into()));
        let props = BasicProperties::default()
            .with_message_id(format!("gw-{i}").into())
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_headers(headers);
        let (encoded, _) =
            cookie_factory::r#gen(gen_properties(&props), Vec::new()).expect("properties");
        let mut header = vec![0, 60, 0, 0];
        header.extend_from_slice(&(body.len() as u64).to_be_bytes());
        header.extend(encoded);
        out.extend(frame(1, &deliver));
        out.extend(frame(2, &header));
        out.extend(frame(3, body));
    }
    out
}

fn read_all<R: futures_lite::AsyncRead + Unpin>(mut reader: R, buf: &mut [u8]) -> usize {
    block_on(async {
        let mut total = 0;
        loop {
            let n = reader.read(buf).await.expect("read");
            if n == 0 {
                return total;
            }
            total += n;
        }
    })
}

fn bench(c: &mut Criterion) {
    let bytes = stream();
    println!("{} bytes for {MESSAGES} deliveries", bytes.len());
    let mut buf = vec![0u8; READ];
    let mut group = c.benchmark_group("inbound");
    group.throughput(Throughput::Elements(MESSAGES as u64));
    group.bench_function("unchecked", |b| {
        b.iter(|| black_box(read_all(Cursor::new(bytes.as_slice()), &mut buf)));
    });
    group.bench_function("checked", |b| {
        b.iter(|| {
            let stream = CheckedStream::new(Cursor::new(bytes.as_slice()), FrameCheck::default());
            black_box(read_all(stream, &mut buf))
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
