//! The worker end to end under random raw messages: bodies mutated from the fixtures, and
//! properties and headers of every field type, nesting and size up to `frame_max`,
//! published byte for byte through the broker. Every message must be accounted for (its
//! events, or exactly one dead letter with a reason and its original body) and the
//! worker must stay up, on one session, throughout. (RabbitMQ itself refuses a header of
//! a field type it does not know, closing the publisher's channel, so that case is left
//! to the frame check's unit tests.)
//!
//! Deterministic: a fixed seed and count. A longer run is one command:
//!
//! ```sh
//! FUZZ_SEED=7 FUZZ_MESSAGES=20000 cargo test --release --test broker fuzz -- --nocapture
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use lapin::message::Delivery;
use lapin::types::AMQPValue;

use crate::pipeline::start;
use crate::support::raw_amqp::{RawProperties, RawPublisher, prop, table, value};
use crate::support::*;

/// What was done to a message's properties, and so what must become of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Twist {
    /// Well-formed properties: its fate is its body's (the library decides).
    None,
    /// Header names repeated: no problem in itself; the fate is still the body's.
    RepeatedHeaders,
    /// Headers of valid types filling most of a frame: still the body's fate.
    BigHeaders,
    /// A property's short string is not UTF-8.
    PropertyNotUtf8,
    /// A header's name is not UTF-8.
    HeaderNameNotUtf8,
    /// Tables or arrays nested far deeper than the client can take.
    DeepNesting,
    /// The routing key is not UTF-8.
    RoutingKeyNotUtf8,
}

impl Twist {
    const ALL: [Twist; 7] = [
        Twist::None,
        Twist::RepeatedHeaders,
        Twist::BigHeaders,
        Twist::PropertyNotUtf8,
        Twist::HeaderNameNotUtf8,
        Twist::DeepNesting,
        Twist::RoutingKeyNotUtf8,
    ];

    /// Whether the properties alone make the message `invalid_properties`.
    fn is_invalid(self) -> bool {
        !matches!(
            self,
            Twist::None | Twist::RepeatedHeaders | Twist::BigHeaders
        )
    }
}

/// One generated raw message.
struct Case {
    /// Unique; carried in `message_id` when that is intact, else in `x-fuzz-id`.
    id: String,
    twist: Twist,
    routing_key: Vec<u8>,
    properties: RawProperties,
    webhook: RawWebhook,
}

fn settings() -> (u64, usize) {
    let seed = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261123);
    let count = std::env::var("FUZZ_MESSAGES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(400);
    (seed, count)
}

/// A fixture body, unchanged or mutated: a byte flipped, cut short, a key repeated,
/// nested deep, a byte that is never UTF-8, spliced with another fixture.
fn body(rng: &mut fastrand::Rng, fixtures: &[RawWebhook]) -> (Vec<u8>, Option<&'static str>) {
    let base = &fixtures[rng.usize(..fixtures.len())];
    let mut b = base.body.clone();
    let vendor = if rng.bool() { base.vendor } else { None };
    match rng.u8(..10) {
        0..=4 => {}
        5 if !b.is_empty() => {
            let i = rng.usize(..b.len());
            b[i] ^= 1 << rng.u8(..8);
        }
        6 if !b.is_empty() => b.truncate(rng.usize(..b.len())),
        7 => {
            if let Some(i) = b.iter().position(|c| *c == b'{') {
                b.splice(i + 1..i + 1, br#""event":"x","id":1,"#.iter().copied());
            }
        }
        8 => {
            let depth = rng.usize(100..200);
            b = [vec![b'['; depth], b, vec![b']'; depth]].concat();
        }
        _ => {
            let other = &fixtures[rng.usize(..fixtures.len())].body;
            let cut = rng.usize(..=b.len());
            b.truncate(cut);
            b.extend_from_slice(&other[rng.usize(..=other.len())..]);
            if rng.bool() {
                b.push(0xff);
            }
        }
    }
    (b, vendor)
}

/// A random field value of a valid type, nested at most `depth`.
fn field(rng: &mut fastrand::Rng, depth: usize) -> Vec<u8> {
    match rng.u8(..if depth == 0 { 10 } else { 12 }) {
        0 => vec![b't', rng.u8(..2)],
        1 => vec![b'b', rng.u8(..)],
        2 => [vec![b's'], rng.i16(..).to_be_bytes().to_vec()].concat(),
        3 => [vec![b'I'], rng.i32(..).to_be_bytes().to_vec()].concat(),
        4 => [vec![b'l'], rng.i64(..).to_be_bytes().to_vec()].concat(),
        5 => [vec![b'd'], rng.f64().to_be_bytes().to_vec()].concat(),
        6 => [vec![b'T'], rng.u64(..).to_be_bytes().to_vec()].concat(),
        7 => vec![b'V'],
        8 => [vec![b'D', rng.u8(..)], rng.u32(..).to_be_bytes().to_vec()].concat(),
        // Long strings are bytes: any bytes are fine.
        9 => value::long_string(&random_bytes(rng, 40)),
        10 => {
            let entries: Vec<(Vec<u8>, Vec<u8>)> = (0..rng.usize(..4))
                .map(|i| (format!("k{i}").into_bytes(), field(rng, depth - 1)))
                .collect();
            let e: Vec<(&[u8], Vec<u8>)> = entries
                .iter()
                .map(|(k, v)| (k.as_slice(), v.clone()))
                .collect();
            value::table(table(&e))
        }
        _ => {
            let items: Vec<Vec<u8>> = (0..rng.usize(..4)).map(|_| field(rng, depth - 1)).collect();
            value::array(&items)
        }
    }
}

fn random_bytes(rng: &mut fastrand::Rng, max: usize) -> Vec<u8> {
    (0..rng.usize(..max)).map(|_| rng.u8(..)).collect()
}

/// Bytes that are never valid UTF-8, with some text around them.
fn not_utf8(rng: &mut fastrand::Rng) -> Vec<u8> {
    let bad: &[&[u8]] = &[
        b"\xff",
        b"\xc3\x28",
        b"\xe2\x28\xa1",
        b"\xf0\x28\x8c\x28",
        b"\xed\xa0\x80",
    ];
    [
        b"id-".to_vec(),
        bad[rng.usize(..bad.len())].to_vec(),
        random_bytes(rng, 8),
    ]
    .concat()
}

fn case(
    rng: &mut fastrand::Rng,
    i: usize,
    seed: u64,
    fixtures: &[RawWebhook],
    frame_max: usize,
) -> Case {
    let id = format!("fuzz-{seed}-{i}");
    let twist = Twist::ALL[rng.usize(..Twist::ALL.len())];
    let (body, vendor) = body(rng, fixtures);
    let mut headers: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (b"x-fuzz-id".to_vec(), value::long_string(id.as_bytes())),
        (
            b"x-received-at".to_vec(),
            value::long_string(RECEIVED_AT.as_bytes()),
        ),
    ];
    if let Some(v) = vendor {
        headers.push((b"x-vendor".to_vec(), value::long_string(v.as_bytes())));
    }
    for n in 0..rng.usize(..5) {
        headers.push((format!("x-fuzz-{n}").into_bytes(), field(rng, 3)));
    }
    let mut message_id = id.clone().into_bytes();
    let mut routing_key = b"gateway".to_vec();
    let mut properties = RawProperties::default()
        .short(prop::CONTENT_TYPE, b"application/json")
        .delivery_mode(2);
    match twist {
        Twist::None => {}
        Twist::RepeatedHeaders => {
            // Any name but x-vendor, whose repeat is a problem of its own.
            let names: Vec<Vec<u8>> = headers
                .iter()
                .map(|(k, _)| k.clone())
                .filter(|k| k != b"x-vendor")
                .collect();
            let k = names[rng.usize(..names.len())].clone();
            headers.push((k, field(rng, 2)));
            headers.push((b"x-fuzz-twice".to_vec(), field(rng, 0)));
            headers.push((b"x-fuzz-twice".to_vec(), field(rng, 0)));
        }
        Twist::BigHeaders => {
            // Most of a frame, in a few long strings.
            let room = frame_max - 1024;
            let mut left = rng.usize(room / 2..room);
            let mut n = 0;
            while left > 64 {
                let len = left.min(rng.usize(1000..40_000));
                headers.push((
                    format!("x-fuzz-big-{n}").into_bytes(),
                    value::long_string(&vec![b'a'; len - 32]),
                ));
                left -= len;
                n += 1;
            }
        }
        Twist::PropertyNotUtf8 => {
            let which = [
                prop::MESSAGE_ID,
                prop::CONTENT_TYPE,
                prop::TYPE,
                prop::APP_ID,
                prop::CORRELATION_ID,
            ];
            let p = which[rng.usize(..which.len())];
            if p == prop::MESSAGE_ID {
                message_id = not_utf8(rng);
            } else {
                properties = properties.short(p, &not_utf8(rng));
            }
        }
        Twist::HeaderNameNotUtf8 => {
            headers.push((not_utf8(rng), field(rng, 1)));
        }
        Twist::DeepNesting => {
            let depth = rng.usize(40..4000);
            let deep = if rng.bool() {
                value::nested_tables(depth)
            } else {
                value::nested_arrays(depth)
            };
            headers.push((b"x-fuzz-deep".to_vec(), deep));
        }
        Twist::RoutingKeyNotUtf8 => routing_key = [b"gateway.".to_vec(), not_utf8(rng)].concat(),
    }
    let e: Vec<(&[u8], Vec<u8>)> = headers
        .iter()
        .map(|(k, v)| (k.as_slice(), v.clone()))
        .collect();
    properties = properties
        .short(prop::MESSAGE_ID, &message_id)
        .headers(table(&e));
    Case {
        id: id.clone(),
        twist,
        routing_key,
        properties,
        webhook: RawWebhook::new(body, vendor, id),
    }
}

/// The fuzz id a delivery carries: the raw `message_id` (events carry it as
/// `correlation_id`), else the `x-fuzz-id` header.
fn fuzz_id(d: &Delivery, is_event: bool) -> Option<String> {
    let from_property = if is_event {
        d.properties
            .correlation_id()
            .as_ref()
            .map(|s| s.to_string())
    } else {
        d.properties.message_id().as_ref().map(|s| s.to_string())
    };
    if let Some(id) = from_property.filter(|s| s.starts_with("fuzz-")) {
        return Some(id);
    }
    match d.properties.headers().as_ref()?.inner().get("x-fuzz-id")? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        _ => None,
    }
}

/// What came out, by fuzz id.
#[derive(Default)]
struct Seen {
    /// Event ids per raw message.
    events: BTreeMap<String, BTreeSet<String>>,
    dead: BTreeMap<String, Vec<Delivery>>,
    /// Outputs that carry no fuzz id.
    untracked: usize,
}

impl Seen {
    /// Takes the next event or dead letter, or nothing within 200 ms.
    async fn take_next(&mut self, events: &mut lapin::Consumer, dead: &mut lapin::Consumer) {
        tokio::select! {
            Some(d) = events.next() => {
                let d = d.expect("reading events");
                match fuzz_id(&d, true) {
                    Some(id) => { self.events.entry(id).or_default().insert(message_id(&d)); }
                    None => self.untracked += 1,
                }
            }
            Some(d) = dead.next() => {
                let d = d.expect("reading dead letters");
                match fuzz_id(&d, false) {
                    Some(id) => self.dead.entry(id).or_default().push(d),
                    None => self.untracked += 1,
                }
            }
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn random_raw_messages_are_each_accounted_for_and_the_worker_stays_up() {
    let (seed, count) = settings();
    let vhost = TestVhost::new("fuzz");
    let (mut worker, _conn, channel) = start(&vhost).await;
    let fixtures = fixture_webhooks();
    let mut rng = fastrand::Rng::with_seed(seed);

    // Publish, noting what the broker itself refused (it never reaches the worker).
    let name = vhost.name.clone();
    let (published, refused) = tokio::task::spawn_blocking(move || {
        let mut publisher = RawPublisher::connect("127.0.0.1:5672", &name).expect("raw connection");
        let frame_max = publisher.frame_max() as usize;
        let mut published = Vec::new();
        let mut refused: BTreeMap<Twist, usize> = BTreeMap::new();
        for i in 0..count {
            let c = case(&mut rng, i, seed, &fixtures, frame_max);
            match publisher.publish(
                "webhooks.raw",
                &c.routing_key,
                &c.properties,
                &c.webhook.body,
            ) {
                Ok(()) => published.push(c),
                Err(_) => {
                    *refused.entry(c.twist).or_default() += 1;
                    publisher =
                        RawPublisher::connect("127.0.0.1:5672", &name).expect("raw connection");
                }
            }
        }
        publisher.close();
        (published, refused)
    })
    .await
    .expect("the publishing thread");

    // Every kind of twist reached the worker, or the test proves nothing about it.
    for twist in Twist::ALL {
        let n = published.iter().filter(|c| c.twist == twist).count();
        assert!(
            n > 0 || count < 100,
            "no {twist:?} message got through the broker (refused: {refused:?})"
        );
    }

    // What each must become: events (their ids, from the library) or a dead letter of
    // this kind.
    let mut want_events: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut want_dead: BTreeMap<String, String> = BTreeMap::new();
    for c in &published {
        if c.twist.is_invalid() {
            want_dead.insert(c.id.clone(), "invalid_properties".into());
            continue;
        }
        match expected(&c.webhook) {
            Ok(events) => {
                want_events.insert(
                    c.id.clone(),
                    events.iter().map(|e| e.id.to_string()).collect(),
                );
            }
            Err(e) => {
                want_dead.insert(c.id.clone(), e.kind().to_string());
            }
        }
    }

    let mut events_in = take_from(&channel, "test.events").await;
    let mut dead_in = take_from(&channel, "normalizer.dead-letter").await;
    let mut seen = Seen::default();
    let deadline = Instant::now() + Duration::from_secs(60 + count as u64 / 20);
    let done = |seen: &Seen| {
        want_dead.keys().all(|id| seen.dead.contains_key(id))
            && want_events
                .iter()
                .all(|(id, ids)| seen.events.get(id).is_some_and(|got| ids.is_subset(got)))
    };
    while !done(&seen) && Instant::now() < deadline {
        seen.take_next(&mut events_in, &mut dead_in).await;
        assert_alive(&mut worker, "while fuzzed messages were in flight");
    }
    // A moment more for duplicates and strays.
    let quiet_until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < quiet_until {
        seen.take_next(&mut events_in, &mut dead_in).await;
    }
    let Seen {
        events,
        dead,
        untracked,
    } = seen;

    let mut failures = Vec::new();
    for c in &published {
        let got_events = events.get(&c.id);
        let got_dead = dead.get(&c.id).map_or(&[][..], Vec::as_slice);
        if let Some(kind) = want_dead.get(&c.id) {
            let kinds: Vec<_> = got_dead
                .iter()
                .map(|d| header(d, "x-normalizer-error-kind"))
                .collect();
            if got_dead.len() != 1
                || kinds[0].as_deref() != Some(kind.as_str())
                || got_events.is_some()
            {
                failures.push(format!(
                    "{} ({:?}): want one {kind} dead letter, got {kinds:?} and {} events",
                    c.id,
                    c.twist,
                    got_events.map_or(0, BTreeSet::len)
                ));
            } else if got_dead[0].data != c.webhook.body {
                failures.push(format!(
                    "{} ({:?}): dead letter body is not the original",
                    c.id, c.twist
                ));
            } else if header(&got_dead[0], "x-normalizer-error").is_none_or(|e| e.is_empty()) {
                failures.push(format!(
                    "{} ({:?}): dead letter without a reason",
                    c.id, c.twist
                ));
            }
        } else {
            let want = &want_events[&c.id];
            if got_events != Some(want) || !got_dead.is_empty() {
                failures.push(format!(
                    "{} ({:?}): want {} events, got {} and {} dead letters",
                    c.id,
                    c.twist,
                    want.len(),
                    got_events.map_or(0, BTreeSet::len),
                    got_dead.len()
                ));
            }
        }
    }
    assert!(
        failures.is_empty() && untracked == 0,
        "seed {seed}: {} of {} messages not accounted for ({untracked} outputs untracked): {:#?}",
        failures.len(),
        published.len(),
        &failures[..failures.len().min(20)]
    );
    let (_, doc) = worker.readiness();
    assert_eq!(doc["sessions"], 1, "one session throughout: {doc}");
    assert_no_personal_data(&worker.logs());
    let by_twist: BTreeMap<Twist, usize> = published.iter().fold(BTreeMap::new(), |mut m, c| {
        *m.entry(c.twist).or_default() += 1;
        m
    });
    eprintln!(
        "seed {seed}: {} messages accounted for ({} refused by the broker: {refused:?}); by twist: {by_twist:?}",
        published.len(),
        refused.values().sum::<usize>()
    );
}
