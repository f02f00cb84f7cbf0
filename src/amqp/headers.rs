//! Measuring and reading AMQP properties and headers: the size a content header frame
//! takes (checked against the negotiated `frame_max` before publishing) and header
//! values as text. Used by the worker, the queue walks and the gateway alike.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};

/// AMQP delivery mode 2: the broker writes the message to disk.
pub(crate) const PERSISTENT: u8 = 2;

/// The bytes a content header frame with these properties takes beyond the frame's own
/// 8 bytes of overhead: class, weight, body size (12) and the encoded properties. The
/// broker closes the connection (FRAME_ERROR) when this exceeds `frame_max - 8`, so it
/// is checked before publishing.
pub(crate) fn header_payload_size(properties: &BasicProperties) -> usize {
    let encoded = cookie_factory::gen_simple(
        lapin::protocol::basic::gen_properties(properties),
        Vec::with_capacity(256),
    );
    // Writing to a Vec cannot fail; should it, nothing fits.
    12 + encoded.map_or(usize::MAX - 12, |bytes| bytes.len())
}

/// [`header_payload_size`] found without encoding, for the common case of properties
/// whose headers are all text (the worker's events): `None` when a header holds another
/// type, whose size only the encoder knows.
pub(crate) fn header_payload_bound(properties: &BasicProperties) -> Option<usize> {
    let short = |s: &Option<ShortString>| s.as_ref().map_or(0, |s| 1 + s.as_str().len());
    let mut size = 12 + 2 // class, weight, body size; property flags
        + short(properties.content_type())
        + short(properties.content_encoding())
        + short(properties.correlation_id())
        + short(properties.reply_to())
        + short(properties.expiration())
        + short(properties.message_id())
        + short(properties.kind())
        + short(properties.user_id())
        + short(properties.app_id())
        + short(properties.cluster_id())
        + properties.delivery_mode().map_or(0, |_| 1)
        + properties.priority().map_or(0, |_| 1)
        + properties.timestamp().map_or(0, |_| 8);
    if let Some(headers) = properties.headers() {
        size += 4;
        for (name, value) in headers.inner() {
            let AMQPValue::LongString(text) = value else {
                return None;
            };
            size += 1 + name.as_str().len() + 1 + 4 + text.len();
        }
    }
    Some(size)
}

/// The largest header payload a frame of `frame_max` bytes carries.
pub(crate) fn header_room(frame_max: u32) -> usize {
    // frame_max 0 means "no limit" in AMQP; RabbitMQ never negotiates it.
    if frame_max == 0 {
        usize::MAX
    } else {
        (frame_max as usize).saturating_sub(8)
    }
}

/// The encoded size of one header entry (name and value) in a field table.
pub(crate) fn header_entry_size(name: &ShortString, value: &AMQPValue) -> usize {
    let mut table = FieldTable::default();
    table.insert(name.clone(), value.clone());
    let encoded = cookie_factory::gen_simple(
        lapin::types::generation::gen_field_table(&table),
        Vec::new(),
    );
    // Minus the table's own 4-byte length.
    encoded.map_or(usize::MAX, |bytes| bytes.len().saturating_sub(4))
}

/// Adds text headers to a table (replacing same-named ones).
pub(crate) fn text_headers(
    mut table: FieldTable,
    headers: &[(&'static str, String)],
) -> FieldTable {
    for (name, value) in headers {
        table.insert((*name).into(), AMQPValue::LongString(value.as_str().into()));
    }
    table
}

/// A header's value as text, when it is a string.
pub(crate) fn header_text(properties: &BasicProperties, name: &str) -> Option<String> {
    let value = properties.headers().as_ref()?.inner().get(name)?;
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        AMQPValue::ByteArray(b) => Some(String::from_utf8_lossy(b.as_slice()).into_owned()),
        _ => None,
    }
}

/// `properties` with these text headers added (replacing any of the same name), the
/// header table cloned once.
pub(crate) fn with_added_headers<'a>(
    properties: &BasicProperties,
    added: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> BasicProperties {
    let mut table = properties.headers().clone().unwrap_or_default();
    for (name, value) in added {
        table.insert(name.into(), AMQPValue::LongString(value.into()));
    }
    rebuilt(properties, Some(table), LeftOut::default())
}

/// Which properties [`rebuilt`] leaves out.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct LeftOut {
    pub(crate) expiration: bool,
    pub(crate) user_id: bool,
}

/// `properties` with `headers` in place of its own table (none with `None`), without
/// those `left_out` names, and every other property as it was. Made property by
/// property: `properties.clone().with_headers(..)` would clone the old table too, only
/// to drop it, a few allocations per header.
pub(crate) fn rebuilt(
    properties: &BasicProperties,
    headers: Option<FieldTable>,
    left_out: LeftOut,
) -> BasicProperties {
    let p = properties;
    let mut out = BasicProperties::default();
    if let Some(table) = headers {
        out = out.with_headers(table);
    }
    // Every basic property but `headers`, as AMQP 0-9-1 defines them (the list is fixed;
    // a test checks that none is left behind).
    if let Some(v) = p.content_type() {
        out = out.with_content_type(v.clone());
    }
    if let Some(v) = p.content_encoding() {
        out = out.with_content_encoding(v.clone());
    }
    if let Some(v) = p.delivery_mode() {
        out = out.with_delivery_mode(*v);
    }
    if let Some(v) = p.priority() {
        out = out.with_priority(*v);
    }
    if let Some(v) = p.correlation_id() {
        out = out.with_correlation_id(v.clone());
    }
    if let Some(v) = p.reply_to() {
        out = out.with_reply_to(v.clone());
    }
    if let Some(v) = p.expiration().as_ref().filter(|_| !left_out.expiration) {
        out = out.with_expiration(v.clone());
    }
    if let Some(v) = p.message_id() {
        out = out.with_message_id(v.clone());
    }
    if let Some(v) = p.timestamp() {
        out = out.with_timestamp(*v);
    }
    if let Some(v) = p.kind() {
        out = out.with_type(v.clone());
    }
    if let Some(v) = p.user_id().as_ref().filter(|_| !left_out.user_id) {
        out = out.with_user_id(v.clone());
    }
    if let Some(v) = p.app_id() {
        out = out.with_app_id(v.clone());
    }
    if let Some(v) = p.cluster_id() {
        out = out.with_cluster_id(v.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_sizes_match_the_wire_encoding() {
        // Flags (2), content type (1 + 16), delivery mode (1).
        let p = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2);
        assert_eq!(header_payload_size(&p), 12 + 2 + 17 + 1);
        // Headers: table length (4), name (1 + 3), type (1), long string (4 + 5).
        let p = BasicProperties::default().with_headers(text_headers(
            FieldTable::default(),
            &[("x-a", "hello".into())],
        ));
        assert_eq!(header_payload_size(&p), 12 + 2 + 4 + 4 + 1 + 4 + 5);
        assert!(header_payload_bound(&p).unwrap() >= header_payload_size(&p));
        let entry = header_entry_size(&"x-a".into(), &AMQPValue::LongString("hello".into()));
        assert_eq!(entry, 4 + 1 + 4 + 5);
        assert_eq!(header_room(131_072), 131_064);
        let table = FieldTable::from(std::collections::BTreeMap::from([(
            "n".into(),
            AMQPValue::LongLongInt(1),
        )]));
        assert_eq!(header_payload_bound(&p.with_headers(table)), None);
        assert_eq!(header_room(0), usize::MAX);
    }

    /// Every property but the headers comes through, and the headers get the added
    /// ones: the same as cloning and replacing the table.
    #[test]
    fn added_headers_keep_every_other_property() {
        let mut table = FieldTable::default();
        table.insert("a".into(), AMQPValue::LongString("1".into()));
        table.insert("b".into(), AMQPValue::LongString("2".into()));
        let p = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("identity".into())
            .with_headers(table.clone())
            .with_delivery_mode(2)
            .with_priority(3)
            .with_correlation_id("corr".into())
            .with_reply_to("reply".into())
            .with_expiration("60000".into())
            .with_message_id("id".into())
            .with_timestamp(1_700_000_000)
            .with_type("deel.contract.created".into())
            .with_user_id("guest".into())
            .with_app_id("app".into())
            .with_cluster_id("cluster".into());
        let mut want_table = table;
        want_table.insert("b".into(), AMQPValue::LongString("3".into()));
        want_table.insert("c".into(), AMQPValue::LongString("4".into()));
        let want = p.clone().with_headers(want_table);
        assert_eq!(with_added_headers(&p, [("b", "3"), ("c", "4")]), want);
        // Left out as asked, and no table when none is given.
        let bare_of = rebuilt(
            &p,
            None,
            LeftOut {
                expiration: true,
                user_id: true,
            },
        );
        assert_eq!(bare_of.headers(), &None);
        assert_eq!(bare_of.expiration(), &None);
        assert_eq!(bare_of.user_id(), &None);
        assert_eq!(bare_of.cluster_id(), p.cluster_id());
        // With no headers at all, the table is made.
        let bare = BasicProperties::default().with_message_id("id".into());
        let mut one = FieldTable::default();
        one.insert("c".into(), AMQPValue::LongString("4".into()));
        assert_eq!(
            with_added_headers(&bare, [("c", "4")]),
            bare.clone().with_headers(one)
        );
    }
}
