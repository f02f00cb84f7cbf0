//! The AsyncAPI 3.0 document of what the worker consumes and publishes, made from the
//! type table so that it cannot drift: `webhook-normalizer event-types --format asyncapi`,
//! checked in as `docs/asyncapi.json` (a test fails when the two differ).
//!
//! Channels: the raw exchange (what gateways publish, the worker receives), one channel
//! per canonical type on the canonical exchange (routing key = type), and the dead-letter
//! exchange (routing key `{vendor}.{kind}`), and the event history's stream (when
//! `history.enabled`). Names are the defaults of
//! `config/default.toml`.

use serde_json::{Map, Value, json};

use crate::canonical::{
    CanonicalType, EventType, SchemaBase, UNMAPPED_DEFINITION, Vendor, any_case_pattern,
    data_schema_document, event_schema,
};
use crate::contract::DeadLetterKind;

/// The document for this version of the worker, each event's `dataschema` made from
/// `base` (`docs/asyncapi.json` has the default).
pub fn document(version: &str, base: SchemaBase) -> Value {
    let mut channels = Map::new();
    let mut operations = Map::new();
    let mut messages = Map::new();

    channels.insert(
        "rawWebhooks".into(),
        json!({
            "address": "{routingKey}",
            "title": "Raw webhooks",
            "description": "What gateways publish: each vendor webhook body exactly as received. The worker's queue `normalizer.raw` binds `#`; a vendor key as the routing key's first word is a vendor hint. See docs/raw-message-contract.md.",
            "parameters": {"routingKey": {"description": "Anything; `deel`, `deel.prod` double as the vendor hint."}},
            "messages": {"rawWebhook": {"$ref": "#/components/messages/rawWebhook"}},
            "bindings": {"amqp": exchange("webhooks.raw", "topic")},
        }),
    );
    operations.insert(
        "consumeRawWebhooks".into(),
        json!({
            "action": "receive",
            "title": "The worker consumes raw webhooks",
            "channel": {"$ref": "#/channels/rawWebhooks"},
            "messages": [{"$ref": "#/channels/rawWebhooks/messages/rawWebhook"}],
            "bindings": {"amqp": {"ack": true, "bindingVersion": "0.3.0"}},
        }),
    );

    for t in EventType::ALL {
        let name = t.as_str();
        let key = message_key(name);
        channels.insert(
            name.into(),
            json!({
                "address": name,
                "title": name,
                "description": format!(
                    "{} `{}`{}. Subject: {}.",
                    vendor_name(t.vendor()),
                    t.vendor_event_type(),
                    if t.condition().is_empty() { String::new() } else { format!(" when {}", t.condition()) },
                    t.subject_rule()
                ),
                "messages": {key.clone(): {"$ref": format!("#/components/messages/{key}")}},
                "bindings": {"amqp": exchange("events.canonical", "topic")},
            }),
        );
        operations.insert(format!("publish_{key}"), sends(name, &key));
        messages.insert(
            key,
            event_message(
                name,
                name,
                json!({
                    "type": {"const": name},
                    "vendor": {"const": t.vendor().key()},
                    "vendoreventtype": {"pattern": any_case_pattern(t.vendor_event_type())},
                    "dataschema": {"const": base.data_schema_uri(&(*t).into())},
                    "data": {"$ref": format!("#/components/schemas/{}", data_key(name))},
                }),
            ),
        );
    }

    // Generic events: only from vendors configured `unmapped.{vendor} = "passthrough"`.
    let generic_example = CanonicalType::unmapped(Vendor::Deel, "x")
        .map(|t| base.data_schema_uri(&t))
        .unwrap_or_default();
    channels.insert(
        "unmapped".into(),
        json!({
            "address": "{vendor}.unmapped.{word}",
            "title": "Unmapped vendor types, passed through",
            "description": "Only for vendors configured `unmapped.{vendor} = \"passthrough\"` (the default is a dead letter `{vendor}.unknown_event_type`): one generic event per body of a vendor type not in the type table. `word` is the vendor type lowercased, each run of other characters than ASCII letters and digits one `_`, at most 64 characters (`payslip.available` is `deel.unmapped.payslip_available`). Bind `deel.unmapped.*` for all of a vendor's. The mapping knows nothing of the body: `data.payload` is the whole body, the subject is `event/{id}`, and a type's generic events stop once a release maps it (its events then come on the type's own channel, with other ids).",
            "parameters": {
                "vendor": {"enum": Vendor::ALL.iter().map(|v| v.key()).collect::<Vec<_>>()},
                "word": {"description": "The vendor type, normalised."},
            },
            "messages": {"unmappedEvent": {"$ref": "#/components/messages/unmappedEvent"}},
            "bindings": {"amqp": exchange("events.canonical", "topic")},
        }),
    );
    operations.insert(
        "publishUnmappedEvents".into(),
        sends("unmapped", "unmappedEvent"),
    );
    messages.insert(
        "unmappedEvent".into(),
        event_message(
            "unmappedEvent",
            "{vendor}.unmapped.{word}",
            json!({
                "type": {"pattern": "^(entuitive|authenticate|deel)\\.unmapped\\."},
                "dataschema": {"const": generic_example},
                "data": {"$ref": format!("#/components/schemas/{}", data_key(UNMAPPED_DEFINITION))},
            }),
        ),
    );

    let vendors: Vec<&str> = Vendor::ALL
        .iter()
        .map(|v| v.key())
        .chain(["unknown"])
        .collect();
    let kinds: Vec<&str> = DeadLetterKind::ALL.iter().map(|k| k.as_str()).collect();
    channels.insert(
        "deadLetters".into(),
        json!({
            "address": "{vendor}.{kind}",
            "title": "Dead letters",
            "description": "What cannot be normalized: the raw message as it came (body byte for byte, properties and headers) plus the reason in headers. `unknown.delivery_limit` is the broker's own dead letter (only `x-death`).",
            "parameters": {
                "vendor": {"enum": vendors},
                "kind": {"enum": kinds},
            },
            "messages": {"deadLetter": {"$ref": "#/components/messages/deadLetter"}},
            "bindings": {"amqp": exchange("webhooks.dead-letter", "topic")},
        }),
    );
    operations.insert(
        "publishDeadLetters".into(),
        sends("deadLetters", "deadLetter"),
    );

    channels.insert(
        "eventHistory".into(),
        json!({
            "address": "events.history",
            "title": "Event history",
            "description": "With `history.enabled` (off by default): a stream queue keeping a copy of every canonical event once it is stored, delivered to a team or kept because none was bound for it, for `history.max_age_secs` and at most `history.max_bytes`. Fed from the tap exchange `events.tap` (bindings `canonical.#` and `unrouted.#`), so it changes nothing about where events go. Each entry is the event as published (body, properties and headers) plus `x-normalizer-kept-at`; one kept in the unrouted queue also carries that queue's `x-normalizer-unrouted-routing-key`. Read it from an offset or a time (`x-stream-offset`) without taking anything away; only the worker writes to it. See docs/operations.md, \"Event history\".",
            "messages": {"historyEvent": {"$ref": "#/components/messages/historyEvent"}},
            "bindings": {"amqp": {
                "is": "queue",
                "queue": {"name": "events.history", "durable": true, "exclusive": false, "autoDelete": false, "vhost": "/"},
                "bindingVersion": "0.3.0",
            }},
        }),
    );
    operations.insert(
        "keepEventHistory".into(),
        json!({
            "action": "send",
            "title": "The worker keeps each stored event in the history",
            "channel": {"$ref": "#/channels/eventHistory"},
            "messages": [{"$ref": "#/channels/eventHistory/messages/historyEvent"}],
            "bindings": {"amqp": {"deliveryMode": 2, "timestamp": true, "bindingVersion": "0.3.0"}},
        }),
    );
    messages.insert(
        "historyEvent".into(),
        json!({
            "name": "historyEvent",
            "title": "A canonical event as it was stored, and when",
            "contentType": "application/cloudevents+json",
            "headers": {
                "type": "object",
                "properties": {
                    "x-normalizer-kept-at": {"type": "string", "format": "date-time", "description": "When the event was stored (delivered or kept); `--since` and `--until` select by it."},
                    "x-normalizer-unrouted-routing-key": {"type": "string", "description": "Only on an event no team was bound for: its type."},
                    "cloudEvents_subject": {"type": "string"},
                    "traceparent": traceparent("As the event was published."),
                },
            },
            "payload": {"$ref": "#/components/schemas/CanonicalEvent"},
        }),
    );

    messages.insert(
        "rawWebhook".into(),
        json!({
            "name": "rawWebhook",
            "title": "A vendor webhook body, as received",
            "contentType": "application/json",
            "headers": {
                "type": "object",
                "properties": {
                    "x-vendor": {"type": "string", "enum": Vendor::ALL.iter().map(|v| v.key()).collect::<Vec<_>>(), "description": "The vendor hint (any case); wins over the routing key."},
                    "x-received-at": {"type": "string", "format": "date-time", "description": "When the gateway received the webhook."},
                    "x-entuitive-signature": {"type": "string", "description": "Forwarded from Entuitive."},
                    "x-deel-signature": {"type": "string", "description": "Forwarded from Deel."},
                    "x-deel-hmac-label": {"type": "string", "description": "Forwarded from Deel."},
                    "traceparent": traceparent("The trace the gateway started for the request (`ingest` starts one per request). Optional: without a valid one, the worker starts a trace of its own."),
                },
            },
            "payload": {"description": "The body exactly as received: any bytes (JSON for every vendor)."},
        }),
    );
    messages.insert(
        "deadLetter".into(),
        json!({
            "name": "deadLetter",
            "title": "A raw message that could not be normalized",
            "headers": {
                "type": "object",
                "properties": {
                    "x-normalizer-error-kind": {"type": "string", "enum": DeadLetterKind::WORKER_MADE.iter().map(|k| k.as_str()).collect::<Vec<_>>()},
                    "x-normalizer-error": {"type": "string", "description": "A JSON path and what is wrong; never a value from the body."},
                    "x-normalizer-failed-at": {"type": "string", "format": "date-time"},
                    "x-normalizer-version": {"type": "string"},
                    "x-original-exchange": {"type": "string"},
                    "x-original-routing-key": {"type": "string"},
                    "traceparent": traceparent("The worker's span for the raw message, in the raw message's trace (in place of the raw message's own `traceparent`)."),
                },
            },
            "payload": {"description": "The raw body, byte for byte."},
        }),
    );

    let mut schema = event_schema(base);
    if let Some(map) = schema.as_object_mut() {
        // An AsyncAPI schema (JSON Schema draft-07 and more) is not a document of its own.
        map.remove("$schema");
        map.remove("$id");
    }

    let mut schemas = Map::new();
    schemas.insert("CanonicalEvent".into(), schema);
    let data = data_schema_document(base);
    if let Some(definitions) = data["$defs"].as_object() {
        for (name, definition) in definitions {
            schemas.insert(data_key(name), definition.clone());
        }
    }

    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "webhook-normalizer",
            "version": version,
            "description": "Vendor webhooks (Entuitive Workforce, Authenticate, Deel) in, one CloudEvents 1.0 stream out, on RabbitMQ. Bind a queue to `events.canonical` with a type or a pattern (`deel.contract.*`, `*.background_check.completed`). Delivery is at least once: deduplicate on `id` (the AMQP `message_id`), which is stable for a vendor event. Two versions: this document's is the worker's (a new type, channel or optional field is a minor change; removing or renaming a type or a field, or changing what an id is made of, is a major one), and each event's `dataschema` names the version of its `data` schema (`event-data.v1`), which changes only when an event could carry a `data` that its definition refuses. See docs/contract.md.",
        },
        "defaultContentType": "application/cloudevents+json",
        "servers": {
            "rabbitmq": {
                "host": "localhost:5672",
                "protocol": "amqp",
                "protocolVersion": "0.9.1",
                "description": "Any RabbitMQ 3.10+ (the worker's amqp.url).",
            },
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": messages,
            "schemas": schemas,
        },
    })
}

/// A message key: the type with `.` as `_` (component keys allow letters, digits, `.`,
/// `_`, `-`, but a message's key reads better without dots).
fn message_key(event_type: &str) -> String {
    event_type.replace('.', "_")
}

/// The component key of a `data` schema: `data_` and the definition, dots as `_`.
fn data_key(definition: &str) -> String {
    format!("data_{}", definition.replace('.', "_"))
}

fn vendor_name(v: Vendor) -> &'static str {
    match v {
        Vendor::Entuitive => "Entuitive Workforce",
        Vendor::Authenticate => "Authenticate",
        Vendor::Deel => "Deel",
    }
}

/// The operation of publishing `message` on `channel` (keys in the document).
fn sends(channel: &str, message: &str) -> Value {
    json!({
        "action": "send",
        "channel": {"$ref": format!("#/channels/{channel}")},
        "messages": [{"$ref": format!("#/channels/{channel}/messages/{message}")}],
        "bindings": published(),
    })
}

/// A canonical event message: the envelope schema with these attributes `fixed`.
fn event_message(name: &str, title: &str, fixed: Value) -> Value {
    json!({
        "name": name,
        "title": title,
        "contentType": "application/cloudevents+json",
        "correlationId": {"location": "$message.header#/correlation_id"},
        "headers": {
            "type": "object",
            "properties": {
                "cloudEvents_subject": {"type": "string", "description": "The event's `subject`, for header-based routing."},
                "traceparent": traceparent("The worker's span for the raw message the event came from, in the trace the gateway started: continue it in your consumer. The CloudEvents distributed-tracing extension, carried as a header only: the body (and so a duplicate's bytes) does not change with the trace."),
            },
        },
        "payload": {
            "allOf": [
                {"$ref": "#/components/schemas/CanonicalEvent"},
                {"properties": fixed},
            ],
        }
    })
}

/// A W3C `traceparent` header, as the worker reads and writes it.
fn traceparent(description: &str) -> Value {
    json!({
        "type": "string",
        "pattern": "^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
        "description": format!("W3C Trace Context (level 1). {description}"),
    })
}

/// How the worker publishes: persistent, `mandatory` (with publisher confirms), stamped.
fn published() -> Value {
    json!({"amqp": {"deliveryMode": 2, "mandatory": true, "timestamp": true, "bindingVersion": "0.3.0"}})
}

/// The AMQP channel binding of a routing key on `name`.
fn exchange(name: &str, kind: &str) -> Value {
    json!({
        "is": "routingKey",
        "exchange": {"name": name, "type": kind, "durable": true, "autoDelete": false, "vhost": "/"},
        "bindingVersion": "0.3.0",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `docs/asyncapi.json` is what `event-types --format asyncapi` prints: a change to
    /// the type table fails here until the document is made again.
    #[test]
    fn the_checked_in_document_is_the_generated_one() {
        let generated = serde_json::to_string_pretty(&document(
            env!("CARGO_PKG_VERSION"),
            SchemaBase::default(),
        ))
        .unwrap()
            + "\n";
        assert!(
            include_str!("../docs/asyncapi.json") == generated,
            "docs/asyncapi.json is stale: `cargo run -- event-types --format asyncapi > docs/asyncapi.json`"
        );
    }

    #[test]
    fn every_type_has_its_channel_message_and_operation() {
        let doc = document("0.0.0", SchemaBase::default());
        for t in EventType::ALL {
            assert_eq!(doc["channels"][t.as_str()]["address"], t.as_str());
            let key = message_key(t.as_str());
            assert_eq!(doc["components"]["messages"][&key]["name"], t.as_str());
            assert_eq!(
                doc["operations"][format!("publish_{key}")]["action"],
                "send"
            );
        }
        assert!(
            doc["components"]["schemas"]["CanonicalEvent"]
                .get("$schema")
                .is_none()
        );
    }

    #[test]
    fn every_message_carries_its_types_data_schema() {
        let doc = document("0.0.0", SchemaBase::default());
        for t in EventType::ALL {
            let message = &doc["components"]["messages"][message_key(t.as_str())];
            let fixed = &message["payload"]["allOf"][1]["properties"];
            assert_eq!(
                fixed["dataschema"]["const"],
                crate::canonical::data_schema_uri(&(*t).into())
            );
            let reference = fixed["data"]["$ref"].as_str().unwrap();
            let name = reference.strip_prefix("#/components/schemas/").unwrap();
            assert_eq!(
                doc["components"]["schemas"][name]["title"],
                format!("data of {t}")
            );
        }
        assert_eq!(
            doc["channels"]["unmapped"]["address"],
            "{vendor}.unmapped.{word}"
        );
        let generic = &doc["components"]["messages"]["unmappedEvent"]["payload"]["allOf"][1];
        let reference = generic["properties"]["data"]["$ref"].as_str().unwrap();
        assert!(reference.ends_with("/data_unmapped"), "{reference}");
    }
}
