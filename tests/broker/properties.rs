//! Properties no client library would send, as RabbitMQ delivers them: short strings
//! that are not UTF-8, headers nested thousands deep, repeated header names. Each hostile
//! message goes out between ten neighbours on each side (see `pipeline`): it must become
//! exactly one dead letter, `invalid_properties` with its body and what else could be
//! kept, while the worker stays up, its consuming session is never restarted and every
//! neighbour comes out once.

use lapin::message::Delivery;
use lapin::types::AMQPValue;

use crate::pipeline::{HOSTILE_ID, Hostile, hostile_among_neighbours, long_header, start};
use crate::support::raw_amqp::{self, RawProperties, prop, table, value};
use crate::support::*;

/// A Deel webhook that normalizes: only its properties are hostile.
fn valid_body() -> Vec<u8> {
    fixture("deel/timesheet.reviewed.json")
}

/// The raw properties of a gateway's message (`message_id` "hostile", JSON,
/// persistent), with these headers.
fn gateway_properties(headers: &[(&[u8], Vec<u8>)]) -> RawProperties {
    let mut all: Vec<(&[u8], Vec<u8>)> = vec![
        (b"x-received-at", value::long_string(RECEIVED_AT.as_bytes())),
        (b"x-gateway", value::long_string(b"raw-test-gateway")),
    ];
    all.extend(headers.iter().cloned());
    RawProperties::default()
        .short(prop::MESSAGE_ID, HOSTILE_ID.as_bytes())
        .short(prop::CONTENT_TYPE, b"application/json")
        .delivery_mode(2)
        .headers(table(&all))
}

/// Publishes `properties` and `body` byte for byte among neighbours, and returns the
/// hostile message's one dead letter after checking that nobody else paid.
async fn hostile_properties(
    test: &str,
    routing_key: &[u8],
    properties: RawProperties,
    body: Vec<u8>,
    kind: &'static str,
) -> Delivery {
    let vhost = TestVhost::new(test);
    let (mut worker, _conn, channel) = start(&vhost).await;
    let hostile = Hostile {
        body: body.clone(),
        routing_key: match kind {
            "invalid_properties" => "unknown.invalid_properties",
            "invalid_json" => "unknown.invalid_json",
            other => panic!("no routing key for {other}"),
        },
        kind,
        neighbours_may_repeat: false,
    };
    let name = vhost.name.clone();
    let routing_key = routing_key.to_vec();
    let publish = async move {
        tokio::task::spawn_blocking(move || {
            raw_amqp::publish(
                "127.0.0.1:5672",
                &name,
                "webhooks.raw",
                &routing_key,
                &properties,
                &body,
            )
        })
        .await
        .expect("the publishing thread")
        .unwrap_or_else(|e| panic!("the broker did not take the hostile message: {e}"));
    };
    let letter = hostile_among_neighbours(&channel, &mut worker, test, &hostile, publish).await;
    assert_no_personal_data(&worker.logs());
    letter
}

fn error_detail(letter: &Delivery) -> String {
    header(letter, "x-normalizer-error").unwrap_or_default()
}

/// Headers nested 3,000 deep (tables under one header, arrays under another: 24 KB)
/// overflowed the client's stack: the process aborted on every delivery of the message.
#[tokio::test(flavor = "multi_thread")]
async fn headers_nested_thousands_deep_are_one_dead_letter() {
    let properties = gateway_properties(&[
        (b"x-deep-table", value::nested_tables(3000)),
        (b"x-deep-array", value::nested_arrays(3000)),
    ]);
    let letter = hostile_properties(
        "deep",
        b"gateway",
        properties,
        valid_body(),
        "invalid_properties",
    )
    .await;
    let detail = error_detail(&letter);
    assert!(
        detail.contains("headers.x-deep-table") && detail.contains("headers.x-deep-array[0]"),
        "names both headers: {detail}"
    );
    assert!(detail.contains("nested deeper than 32 levels"), "{detail}");
    // What could be kept is: the other headers, and the deep ones down to level 32.
    assert_eq!(
        header(&letter, "x-gateway").as_deref(),
        Some("raw-test-gateway")
    );
    let mut level = long_header(&letter, "x-deep-table");
    let mut depth = 1;
    while let Some(AMQPValue::FieldTable(t)) = level {
        level = t.inner().get("n").cloned();
        depth += 1;
    }
    assert_eq!(
        depth, 32,
        "levels kept under x-deep-table (the 32nd became void)"
    );
    assert_eq!(level, Some(AMQPValue::Void));
}

/// A `message_id` that is not UTF-8 failed the client's parser: the consuming connection
/// dropped on every delivery of the message, and its neighbours in flight with it.
#[tokio::test(flavor = "multi_thread")]
async fn a_message_id_that_is_not_utf8_is_one_dead_letter() {
    // "hostile" and a byte that is never UTF-8: U+FFFD does not fit in the byte it
    // replaces, so the dead letter's message_id is cut to "hostile".
    let properties = gateway_properties(&[]).short(prop::MESSAGE_ID, b"hostile\xff");
    let letter = hostile_properties(
        "msgid",
        b"gateway",
        properties,
        valid_body(),
        "invalid_properties",
    )
    .await;
    assert_eq!(error_detail(&letter), "message_id: not UTF-8");
}

/// The same for a header's name, and for `content_type` and `type` together.
#[tokio::test(flavor = "multi_thread")]
async fn a_header_name_and_properties_that_are_not_utf8_are_one_dead_letter() {
    let properties = gateway_properties(&[(b"x-\xc3(bad", value::long_int(1))])
        .short(prop::CONTENT_TYPE, b"application/\xe2\x28\xa1json")
        .short(prop::TYPE, b"\xf0\x28\x8c\x28");
    let letter = hostile_properties(
        "names",
        b"gateway",
        properties,
        valid_body(),
        "invalid_properties",
    )
    .await;
    let detail = error_detail(&letter);
    for named in [
        "content_type: not UTF-8",
        "headers.",
        "name is not UTF-8",
        "type: not UTF-8",
    ] {
        assert!(detail.contains(named), "{named:?} in {detail:?}");
    }
    assert_eq!(
        header(&letter, "x-gateway").as_deref(),
        Some("raw-test-gateway")
    );
}

/// A routing key that is not UTF-8 reaches the raw queue through the `#` binding, and
/// the client's parser failed on the delivery method itself.
#[tokio::test(flavor = "multi_thread")]
async fn a_routing_key_that_is_not_utf8_is_one_dead_letter() {
    let letter = hostile_properties(
        "rkey",
        // Three invalid bytes: U+FFFD for each would not fit, one does.
        b"gateway.\xff\xfe\xfd",
        gateway_properties(&[]),
        valid_body(),
        "invalid_properties",
    )
    .await;
    assert_eq!(error_detail(&letter), "routing_key: not UTF-8");
    assert_eq!(
        header(&letter, "x-original-routing-key").as_deref(),
        Some("gateway.\u{FFFD}"),
        "the routing key as far as it could be kept"
    );
}

/// A header name sent twice: the client keeps one value, and the other was lost from
/// the dead letter. Both are kept now: the first in place, the second in
/// `x-normalizer-duplicate-headers`. Repeated names alone do not dead-letter a message
/// (this one is dead-lettered for its body).
#[tokio::test(flavor = "multi_thread")]
async fn repeated_header_names_are_kept_on_the_dead_letter() {
    let properties = gateway_properties(&[
        (b"x-trace", value::long_string(b"first")),
        (b"x-trace", value::long_string(b"second")),
    ]);
    let letter = hostile_properties(
        "dupes",
        b"gateway",
        properties,
        b"{not json".to_vec(),
        "invalid_json",
    )
    .await;
    assert_eq!(header(&letter, "x-trace").as_deref(), Some("first"));
    let Some(AMQPValue::FieldArray(kept)) = long_header(&letter, "x-normalizer-duplicate-headers")
    else {
        panic!("x-normalizer-duplicate-headers missing or not an array");
    };
    let kept: Vec<_> = kept
        .as_slice()
        .iter()
        .map(|v| match v {
            AMQPValue::FieldTable(t) => (
                t.inner().get("name").cloned(),
                t.inner().get("value").cloned(),
            ),
            other => panic!("not a table: {other:?}"),
        })
        .collect();
    assert_eq!(
        kept,
        vec![(
            Some(AMQPValue::LongString("headers.x-trace".into())),
            Some(AMQPValue::LongString("second".into()))
        )]
    );
}

/// Two `x-vendor` headers: which vendor the gateway meant cannot be known.
#[tokio::test(flavor = "multi_thread")]
async fn a_repeated_vendor_hint_is_one_dead_letter() {
    let properties = gateway_properties(&[
        (b"x-vendor", value::long_string(b"deel")),
        (b"x-vendor", value::long_string(b"entuitive")),
    ]);
    let letter = hostile_properties(
        "dupvendor",
        b"gateway",
        properties,
        valid_body(),
        "invalid_properties",
    )
    .await;
    assert_eq!(
        error_detail(&letter),
        "headers.x-vendor: sent more than once"
    );
}
